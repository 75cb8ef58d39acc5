"""Helpers shared by the per-method tests (not collected by pytest)."""

from typing import Any

from flax import nnx
import jax
import numpy as np
import optax


def adam_losses(method: Any, model: nnx.Module, batch: dict[str, Any], *, steps: int = 6,
                lr: float = 1e-3) -> tuple[list[float], dict[str, jax.Array]]:
  """Total losses of `steps` jitted Adam steps of `method.loss_fn` on one batch (each asserted finite), and the last
  step's weighted terms."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    def loss(p):
      return method.loss_fn(nnx.merge(graphdef, p, rest), batch, rng=rng, train=True)
    (total, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total, terms

  history = []
  for i in range(steps):
    params, opt_state, total, terms = step(params, opt_state, jax.random.key(i))
    assert np.isfinite(float(total)), terms
    history.append(float(total))
  return history, terms
