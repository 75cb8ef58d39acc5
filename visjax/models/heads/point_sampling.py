"""Point sampling of mask logits / targets (detectron2 `projects/point_rend/point_features.py`), as Mask2Former's
matcher and point-sampled mask losses use it; jittable with static shapes.

* `point_sample(x [N, H, W, ...], coords [N, P, 2])` = `grid_sample(x, 2 * coords - 1, bilinear, zeros padding,
  align_corners=False)`: coords are (x, y) in [0, 1] of the map, pixel = coord * size - 0.5, corners outside the
  map contribute 0. Differentiable in `x` (the coords are sampling positions, not trained).
* `uncertain_point_coords(logits, over_coords, random_coords, num_uncertain)`: the deterministic half of
  `get_uncertain_point_coords_with_randomness`: keep the `num_uncertain` most uncertain (-|logit|) of the
  oversampled points, then append the random points. `sample_uncertain_point_coords` draws both sets from a key.
"""

import jax
import jax.numpy as jnp


def point_sample(x: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear samples of `x [N, H, W, ...]` at `coords [N, P, 2]` ((x, y) in [0, 1]) -> `[N, P, ...]`.

  The corners are gathered in `x`'s dtype (e.g. uint8 target masks) and interpolated in float32.
  """
  n, h, w = x.shape[:3]
  flat = x.reshape((n, h * w) + x.shape[3:])
  coords = jax.lax.stop_gradient(coords.astype(jnp.float32))
  px = coords[..., 0] * w - 0.5
  py = coords[..., 1] * h - 0.5
  x0, y0 = jnp.floor(px), jnp.floor(py)
  out = 0.
  for dy in (0, 1):
    for dx in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      weight = (1. - jnp.abs(px - xi)) * (1. - jnp.abs(py - yi))
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      index = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
      index = index.reshape(index.shape + (1,) * (flat.ndim - 2))
      values = jnp.take_along_axis(flat, index, axis=1).astype(jnp.float32)
      weight = jnp.where(inside, weight, 0.)
      out = out + values * weight.reshape(weight.shape + (1,) * (flat.ndim - 2))
  return out


def uncertain_point_coords(logits: jax.Array, over_coords: jax.Array, random_coords: jax.Array,
                           num_uncertain: int) -> jax.Array:
  """Importance sampling of points on mask logits (uncertainty = -|logit|), from given random draws.

  Args:
    logits: `[N, H, W]` mask logits (not differentiated).
    over_coords: `[N, S, 2]` uniformly drawn candidates (S = num_points * oversample_ratio).
    random_coords: `[N, R, 2]` uniformly drawn extra points (R = num_points - num_uncertain).
    num_uncertain: points kept from the candidates (`int(importance_sample_ratio * num_points)`).

  Returns:
    `[N, num_uncertain + R, 2]`: the most uncertain candidates (descending uncertainty), then the random points.
  """
  uncertainty = -jnp.abs(point_sample(jax.lax.stop_gradient(logits), over_coords))
  _, idx = jax.lax.top_k(uncertainty, num_uncertain)
  picked = jnp.take_along_axis(over_coords, idx[..., None], axis=1)
  return jnp.concatenate([picked, random_coords.astype(picked.dtype)], axis=1)


def num_sampled_points(num_points: int, oversample_ratio: float,
                       importance_sample_ratio: float) -> tuple[int, int, int]:
  """(oversampled candidates S, uncertain points kept, random points R) as detectron2 computes them."""
  num_uncertain = int(importance_sample_ratio * num_points)
  return int(num_points * oversample_ratio), num_uncertain, num_points - num_uncertain


def sample_uncertain_point_coords(rng: jax.Array, logits: jax.Array, num_points: int, oversample_ratio: float,
                                  importance_sample_ratio: float) -> jax.Array:
  """`get_uncertain_point_coords_with_randomness` with `calculate_uncertainty`: `logits [N, H, W]` ->
  `[N, num_points, 2]`, the random draws taken from `rng`."""
  s, k, r = num_sampled_points(num_points, oversample_ratio, importance_sample_ratio)
  over_rng, random_rng = jax.random.split(rng)
  n = logits.shape[0]
  over = jax.random.uniform(over_rng, (n, s, 2))
  extra = jax.random.uniform(random_rng, (n, r, 2))
  return uncertain_point_coords(logits, over, extra, k)
