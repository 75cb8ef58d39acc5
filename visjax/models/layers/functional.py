"""Small stateless functions shared by the heads of several methods."""

import jax
import jax.numpy as jnp


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """`log(x / (1 - x))` with x clamped to [0, 1] and both terms to >= eps (Deformable-DETR `inverse_sigmoid`)."""
  x = jnp.clip(x, 0., 1.)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1. - x, eps))
