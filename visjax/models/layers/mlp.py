"""The DETR-style MLP (`MLP` in Deformable-DETR / IDOL) and PyTorch's default Linear/Conv initialisers."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# torch.nn.Linear / Conv2d default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nnx.initializers.variance_scaling(1. / 3., 'fan_in', 'uniform')


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
  """PyTorch's default bias init, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`."""
  bound = 1. / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class MLP(nnx.Module):
  """`num_layers` Linear layers `input_dim -> hidden_dim -> ... -> output_dim`, ReLU after all but the last.

  Parameters live at `layers.{i}.{kernel,bias}` (torch `layers.{i}.{weight,bias}`); torch's default init unless
  `kernel_init` / `bias_init` are given.
  """

  def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, *,
               dtype: Any = None, kernel_init: nnx.Initializer | None = None,
               bias_init: nnx.Initializer | None = None, rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f'MLP: num_layers must be >= 1, got {num_layers}.')
    dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
    self.layers = nnx.List([
        nnx.Linear(d_in, d_out, dtype=dtype, kernel_init=kernel_init or torch_default_kernel_init,
                   bias_init=bias_init or torch_default_bias_init(d_in), rngs=rngs)
        for d_in, d_out in zip(dims[:-1], dims[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [..., input_dim]` -> `[..., output_dim]`."""
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x
