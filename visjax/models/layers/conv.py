"""`ConvNorm`: Conv2d (+ optional norm, + optional ReLU), the conv block every method builds its necks and heads
from (Deformable-DETR `input_proj` levels, detectron2 `Conv2d(norm=..., activation=...)`, VISOLO's branch convs,
Mask2Former's FPN convs, mmdet `ConvModule`).

Submodules: `conv` (`nnx.Conv`, kernel `[kh, kw, in, out]`, the transpose of torch's `weight`) and `norm` (absent
when `norm=None`), so conversion rules map `<prefix>.weight|bias` / `<prefix>.norm.*` (detectron2) or
`<prefix>.0.*` / `<prefix>.1.*` (nn.Sequential) onto `conv` / `norm` (`visjax.convert.rules.conv_norm_rules`).
"""

from typing import Any

import jax
from flax import nnx

from visjax.models.layers import norms

_xavier = nnx.initializers.xavier_uniform()


class ConvNorm(nnx.Module):
  """`conv -> norm -> activation` on NHWC maps, symmetric `kernel_size // 2 * dilation` padding.

  Attributes:
    norm: None, 'GN' (GroupNorm(`num_groups`), eps 1e-5), 'BN' (`norms.BatchNorm2d`, trainable statistics) or
      'FrozenBN'.
    activation: None or 'relu'.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
               norm: str | None = 'GN', num_groups: int = 32, activation: str | None = None,
               use_bias: bool = True, dilation: int = 1, groups: int = 1,
               kernel_init: nnx.Initializer = _xavier, bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
               dtype: Any = None, rngs: nnx.Rngs):
    if activation not in (None, 'relu'):
      raise ValueError(f"ConvNorm: activation must be None or 'relu', got {activation!r}.")
    pad = kernel_size // 2 * dilation
    self.activation = activation
    self.conv = nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
                         padding=((pad, pad), (pad, pad)), kernel_dilation=dilation, feature_group_count=groups,
                         use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)
    if norm == 'GN':
      self.norm = norms.group_norm(out_channels, num_groups=num_groups, dtype=dtype, rngs=rngs)
    elif norm == 'BN':
      self.norm = norms.BatchNorm2d(out_channels)
    elif norm == 'FrozenBN':
      self.norm = norms.FrozenBatchNorm2d(out_channels)
    elif norm is not None:
      raise ValueError(f"ConvNorm: norm must be None, 'GN', 'BN' or 'FrozenBN', got {norm!r}.")

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """`x [B, H, W, in]` -> `[B, H', W', out]`; `train` makes a 'BN' norm use (and update) batch statistics."""
    x = self.conv(x)
    norm = getattr(self, 'norm', None)
    if isinstance(norm, norms.BatchNorm2d):
      x = norm(x, use_running_average=not train)
    elif norm is not None:
      x = norm(x)
    return jax.nn.relu(x) if self.activation == 'relu' else x
