"""FCOS point targets, in-graph with static shapes (mmdet 2.11 `FCOSHead._get_target_single` as CondInst / IAI
use it: centre sampling around the mask's centre of mass).

For every point (all FPN levels concatenated, level-major) and every padded gt slot:
  * regression targets `(left, top, right, bottom)` = distances from the point to the gt box sides;
  * candidate if inside the centre region: the box `centre +- stride * radius` clipped to the gt box, where the
    centre is the gt mask's centre of mass in pixel indices (`sum(m * x) / max(sum(m), 1e-6)`; no +0.5), and the
    point strictly inside (all four distances > 0); without centre sampling, strictly inside the gt box;
  * and if `lo <= max(ltrb) <= hi` for the point's level range `regress_ranges`;
  * among candidates the gt of smallest box area wins (first index on ties, as torch's `min`); points without
    one are background: label `num_classes`, id `background_id`.
Padded gt slots (`gt_valid` False) never win.
"""

import jax
import jax.numpy as jnp
import numpy as np

INF = 1e8
REGRESS_RANGES = ((-1., 64.), (64., 128.), (128., 256.), (256., 512.), (512., INF))


def point_regress_ranges(level: np.ndarray, regress_ranges=REGRESS_RANGES) -> np.ndarray:
  """float32 `[P, 2]` range of every point from its level index `[P]`."""
  return np.asarray(regress_ranges, np.float32)[level]


def mask_centers(masks: jax.Array) -> jax.Array:
  """Centre of mass `(x, y)` in pixel indices of `masks [N, H, W]` (0/1) -> float32 `[N, 2]`."""
  m = masks.astype(jnp.float32)
  h, w = m.shape[-2:]
  m00 = jnp.maximum(m.sum((-2, -1)), 1e-6)
  m10 = (m * jnp.arange(w, dtype=jnp.float32)).sum((-2, -1))
  m01 = (m * jnp.arange(h, dtype=jnp.float32)[:, None]).sum((-2, -1))
  return jnp.stack([m10 / m00, m01 / m00], axis=-1)


def fcos_targets(points: jax.Array, point_strides: jax.Array, regress_ranges: jax.Array, gt_boxes: jax.Array,
                 gt_labels: jax.Array, gt_ids: jax.Array, gt_valid: jax.Array, gt_centers: jax.Array | None, *,
                 num_classes: int, background_id: int, radius: float = 1.5) -> dict[str, jax.Array]:
  """Targets of one image.

  Args:
    points: `[P, 2]` `(x, y)` pixel positions (`visjax.models.heads.fcos.multilevel_points`).
    point_strides: `[P]` stride of each point's level.
    regress_ranges: `[P, 2]` `(lo, hi)` of each point's level.
    gt_boxes: `[N, 4]` xyxy in pixels.
    gt_labels: int `[N]` class indices.
    gt_ids: int `[N]` identity targets.
    gt_valid: bool `[N]` real gt slots.
    gt_centers: `[N, 2]` centre of mass (`mask_centers`) for centre sampling, or None for none.
    num_classes: background label.
    background_id: background identity (IAI: max_obj).
    radius: centre sampling radius in strides.

  Returns:
    dict: `labels` int32 `[P]`, `ids` int32 `[P]`, `bbox_targets` `[P, 4]` ltrb of the assigned gt, `gt_inds` int32
    `[P]` assigned gt slot (0 on background), `pos` bool `[P]`.
  """
  xs, ys = points[:, 0:1], points[:, 1:2]
  ltrb = jnp.stack([xs - gt_boxes[None, :, 0], ys - gt_boxes[None, :, 1],
                    gt_boxes[None, :, 2] - xs, gt_boxes[None, :, 3] - ys], axis=-1)  # [P, N, 4]
  if gt_centers is None:
    inside = ltrb.min(-1) > 0
  else:
    r = (point_strides * radius)[:, None]
    cx, cy = gt_centers[None, :, 0], gt_centers[None, :, 1]
    x0 = jnp.where(cx - r > gt_boxes[None, :, 0], cx - r, gt_boxes[None, :, 0])
    y0 = jnp.where(cy - r > gt_boxes[None, :, 1], cy - r, gt_boxes[None, :, 1])
    x1 = jnp.where(cx + r > gt_boxes[None, :, 2], gt_boxes[None, :, 2], cx + r)
    y1 = jnp.where(cy + r > gt_boxes[None, :, 3], gt_boxes[None, :, 3], cy + r)
    inside = jnp.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], -1).min(-1) > 0
  max_dist = ltrb.max(-1)
  in_range = (max_dist >= regress_ranges[:, 0:1]) & (max_dist <= regress_ranges[:, 1:2])
  areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
  areas = jnp.where(inside & in_range & gt_valid[None], areas[None], INF)
  gt_inds = jnp.argmin(areas, axis=1).astype(jnp.int32)
  pos = jnp.take_along_axis(areas, gt_inds[:, None], axis=1)[:, 0] != INF
  labels = jnp.where(pos, gt_labels[gt_inds], num_classes).astype(jnp.int32)
  ids = jnp.where(pos, gt_ids[gt_inds], background_id).astype(jnp.int32)
  bbox_targets = jnp.take_along_axis(ltrb, gt_inds[:, None, None], axis=1)[:, 0]
  return dict(labels=labels, ids=ids, bbox_targets=bbox_targets, gt_inds=gt_inds, pos=pos)
