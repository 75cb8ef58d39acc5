"""IAI training loss, in-graph with static shapes (the official repository releases no training code path beyond
`IAICondInst.forward_train` / `IAICondInstHead.loss`, which this follows).

Per clip (batch format `docs/INTERFACES.md` §1, T frames, 5 officially):
  * instances are ordered by track id and renumbered 0..n-1 per clip (the dataset's per-clip `np.unique` remap),
    so a slot index is the instance's id; ids index the one-hot id masks (background channel `max_obj`) that are
    teacher-forced into the LSTT (`gt_id_masks`: per pixel the smallest-area instance covering it; outside a
    frame's own /32-padded size the official batch padding writes id 0, kept here);
  * identity targets: an instance's first appearance in the clip is labelled "new" (`max_obj - 1`), later ones by
    its id (official `process_id`, which relabels by set iteration order; that is ascending id order for ids < 8);
  * per frame, FCOS targets (`visjax.models.heads.fcos_targets`, centre sampling radius 1.5 around the mask's centre
    of mass) and, with `num_pos` the positives of the frame over the batch (min 1):
      loss_cls = sigmoid focal(cls, one-hot labels).sum() / num_pos
      loss_id = sigmoid focal(id, one-hot ids; background all zero).sum() / num_pos
      loss_bbox = sum_pos ctr_t * GIoU loss(decoded pred, decoded target) / max(sum_pos ctr_t, 1e-6)
      loss_centerness = sum_pos BCE(ctr logit, ctr_t) / num_pos
      loss_mask = mean over positives of dice 1 - 2 sum(p t) / (sum p^2 + sum t^2 + 1e-5), p the stride-4 dynamic
        mask (relative coordinates / (stride * 8)) and t the gt mask sampled at [2::4, 2::4] of the padded frame;
  * every loss is averaged over the frames and multiplied by its weight (all 1 officially).

Static-shape deviation: the mask loss uses at most `max_mask_points` positives per image, a uniformly random subset
when there are more (the official code uses all; the expectation is the same).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from visjax import losses
from visjax.models.heads import dynamic_mask, fcos, fcos_targets
from visjax.models.layers import preprocess


def sort_instances(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Reorders the instance slots of every clip by (invalid, track id): slot index == per-clip id for valid ones."""
  key = jnp.where(batch['instance_valid'], batch['track_ids'], jnp.iinfo(jnp.int32).max)
  order = jnp.argsort(key, axis=1, stable=True)
  take = lambda x, axis: jnp.take_along_axis(x, order.reshape(order.shape[:1] + (1,) * (axis - 1) + order.shape[1:]
                                                              + (1,) * (x.ndim - axis - 1)), axis=axis)
  out = dict(batch)
  for k in ('labels', 'track_ids', 'instance_valid'):
    out[k] = take(batch[k], 1)
  for k in ('boxes', 'present', 'masks'):
    out[k] = take(batch[k], 2)
  return out


def padded_masks(masks: jax.Array, size_divisibility: int = 32) -> jax.Array:
  """`[..., H, W]` -> bool `[..., Hp, Wp]`, zero-padded to a multiple of `size_divisibility`."""
  h, w = masks.shape[-2:]
  hp, wp = preprocess.round_up(h, size_divisibility), preprocess.round_up(w, size_divisibility)
  pad = [(0, 0)] * (masks.ndim - 2) + [(0, hp - h), (0, wp - w)]
  return jnp.pad(masks.astype(bool), pad)


def gt_id_masks(masks: jax.Array, visible: jax.Array, max_obj_num: int) -> jax.Array:
  """Official `get_new_masks` one-hot: per pixel the smallest-area visible instance covering it (first slot on
  ties), its slot index as id, background `max_obj_num` elsewhere.

  Args:
    masks: bool `[..., N, H, W]`; visible: bool `[..., N]`.

  Returns:
    float32 `[..., H, W, max_obj_num + 1]`.
  """
  m = masks & visible[..., None, None]
  area = m.sum((-2, -1)).astype(jnp.float32)
  cost = jnp.where(m, area[..., None, None], jnp.inf)
  idx = jnp.argmin(cost, axis=-3)
  covered = m.any(-3)
  ids = jnp.where(covered, idx, max_obj_num)
  return jax.nn.one_hot(ids, max_obj_num + 1, dtype=jnp.float32)


def _boxes_xyxy(boxes: jax.Array, image_size: jax.Array) -> jax.Array:
  """cxcywh normalised by the unpadded `(w, h)` -> xyxy pixels. `boxes [..., 4]`, `image_size [..., 2]` (h, w)."""
  wh = image_size[..., ::-1].astype(jnp.float32)[..., None, :]
  xy, bwh = boxes[..., :2] * wh, boxes[..., 2:] * wh
  return jnp.concatenate([xy - bwh / 2, xy + bwh / 2], axis=-1)


def dice_squared(probs: jax.Array, targets: jax.Array) -> jax.Array:
  """CondInst `dice_coefficient` loss: `1 - 2 sum(p t) / (sum p^2 + sum t^2 + 1e-5)` over the last two axes."""
  inter = jnp.sum(probs * targets, axis=(-2, -1))
  union = jnp.sum(probs ** 2, axis=(-2, -1)) + jnp.sum(targets ** 2, axis=(-2, -1)) + 1e-5
  return 1. - 2. * inter / union


def frame_losses(out: dict[str, jax.Array], gt: dict[str, jax.Array], points: np.ndarray, strides: np.ndarray,
                 regress_ranges: np.ndarray, rng: jax.Array, *, num_classes: int, max_obj_num: int,
                 focal_alpha: float = 0.25, focal_gamma: float = 2., center_sample_radius: float = 1.5,
                 max_mask_points: int = 64) -> dict[str, jax.Array]:
  """Unweighted losses of one frame over the batch (module docstring).

  Args:
    out: head outputs of the frame (`IAIHead.__call__`, leading axis B).
    gt: `boxes` xyxy `[B, N, 4]`, `labels [B, N]`, `ids [B, N]` (identity targets), `visible [B, N]`,
      `masks` bool `[B, N, Hp, Wp]` (padded frame).
    points, strides, regress_ranges: the FCOS point table of the padded frame.
  """
  targets = jax.vmap(lambda b, l, i, v, c: fcos_targets.fcos_targets(
      points, strides, regress_ranges, b, l, i, v, c, num_classes=num_classes, background_id=max_obj_num,
      radius=center_sample_radius))(gt['boxes'], gt['labels'], gt['ids'], gt['visible'],
                                     jax.vmap(fcos_targets.mask_centers)(gt['masks']))
  pos = targets['pos']
  posf = pos.astype(jnp.float32)
  num_pos = jnp.maximum(posf.sum(), 1.)
  focal = lambda logits, labels, n: losses.sigmoid_focal_loss(
      logits.astype(jnp.float32), jax.nn.one_hot(labels, n, dtype=jnp.float32), focal_alpha, focal_gamma).sum()
  loss_cls = focal(out['cls_logits'], targets['labels'], num_classes) / num_pos
  loss_id = focal(out['id_logits'], targets['ids'], max_obj_num) / num_pos

  safe_t = jnp.where(pos[..., None], targets['bbox_targets'], 1.)
  ctr_t = jnp.where(pos, fcos.centerness_target(safe_t), 0.)
  pred_boxes = fcos.distance2bbox(points, out['bbox_ltrb'].astype(jnp.float32))
  target_boxes = fcos.distance2bbox(points, safe_t)
  giou = losses.giou_loss(pred_boxes, target_boxes)
  loss_bbox = jnp.sum(giou * ctr_t) / jnp.maximum(ctr_t.sum(), 1e-6)
  ctr_logits = out['centerness_logits'].astype(jnp.float32)
  bce = jnp.maximum(ctr_logits, 0.) - ctr_logits * ctr_t + jnp.log1p(jnp.exp(-jnp.abs(ctr_logits)))
  loss_centerness = jnp.sum(bce * posf) / num_pos

  # Mask loss on up to `max_mask_points` positives per image (uniform random subset when there are more).
  k = min(max_mask_points, points.shape[0])
  priority = jnp.where(pos, jax.random.uniform(rng, pos.shape), -1.)
  prio, sel = jax.lax.top_k(priority, k)
  sel_valid = prio >= 0.
  take = lambda x: jnp.take_along_axis(x, sel.reshape(sel.shape + (1,) * (x.ndim - 2)), axis=1)
  kernels = take(out['kernels'])
  sel_points = jnp.asarray(points)[sel]
  sel_strides = jnp.asarray(strides)[sel]
  logits = dynamic_mask.dynamic_mask_logits(out['mask_feat'], sel_points, kernels, mask_feat_stride=8,
                                            mask_out_stride=4, rel_coord_scale=sel_strides * 8.)
  gt_small = gt['masks'][..., 2::4, 2::4].astype(jnp.float32)  # [B, N, Hp/4, Wp/4]
  gt_sel = jnp.take_along_axis(gt_small, take(targets['gt_inds'][..., None])[..., 0][..., None, None], axis=1)
  dice = dice_squared(jax.nn.sigmoid(logits.astype(jnp.float32)), gt_sel)
  loss_mask = jnp.sum(dice * sel_valid) / jnp.maximum(sel_valid.sum(), 1)
  return dict(loss_cls=loss_cls, loss_id=loss_id, loss_bbox=loss_bbox, loss_centerness=loss_centerness,
              loss_mask=loss_mask)


def clip_targets(batch: dict[str, jax.Array], max_obj_num: int, size_divisibility: int = 32) -> dict[str, jax.Array]:
  """Per-frame gt in the layout `frame_losses` and the model need, all with a leading T axis after B:
  `boxes [B, T, N, 4]` xyxy px, `labels`, `ids` (identity targets), `visible` `[B, T, N]`, `masks` bool
  `[B, T, N, Hp, Wp]`, `id_masks [B, T, Hp, Wp, max_obj + 1]` (teacher forcing). `batch` must be `sort_instances`ed.
  """
  visible = batch['present'] & batch['instance_valid'][:, None]
  n = visible.shape[-1]
  slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), visible.shape)
  seen_before = jnp.cumsum(visible, axis=1) - visible > 0
  ids = jnp.where(seen_before, slot, max_obj_num - 1)
  masks = padded_masks(batch['masks'], size_divisibility)
  labels = jnp.broadcast_to(batch['labels'][:, None], visible.shape)
  id_masks = gt_id_masks(masks, visible, max_obj_num)
  # Official quirk (`pad_mask` fills with 0): beyond a frame's own padded size (its content rounded up to
  # `size_divisibility`) the batch-padded id map holds id 0, not background.
  hp, wp = masks.shape[-2:]
  own = -(-batch['image_size'] // size_divisibility) * size_divisibility
  outside = preprocess.pad_mask(own.reshape(-1, 2), hp, wp).reshape(own.shape[:2] + (hp, wp))
  id_masks = jnp.where(outside[..., None], jax.nn.one_hot(0, max_obj_num + 1, dtype=jnp.float32), id_masks)
  return dict(boxes=_boxes_xyxy(batch['boxes'], batch['image_size']), labels=jnp.maximum(labels, 0), ids=ids,
              visible=visible, masks=masks, id_masks=id_masks)


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """`config.loss` (official values: `configs/iai_common.py:loss_config`)."""

  cls_weight: float
  id_weight: float
  bbox_weight: float
  centerness_weight: float
  mask_weight: float
  focal_alpha: float
  focal_gamma: float
  center_sample_radius: float
  max_mask_points: int  # positives per image in the mask loss (static shape; official: all)


def iai_loss(model, batch: dict[str, jax.Array], rng: jax.Array, settings: LossSettings, *, train: bool = True
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total weighted loss and each weighted term (`loss_cls`, `loss_id`, `loss_bbox`, `loss_centerness`,
  `loss_mask`) of a batch of clips `[B, T, ...]` (docs/INTERFACES.md §1). Jittable."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from visjax.models.iai.model import fcos_point_table  # pylint: disable=g-import-not-at-top
  batch = sort_instances(batch)
  gt = clip_targets(batch, model.max_obj_num, model.size_divisibility)
  drop_rng, mask_rng = jax.random.split(rng)
  out = model(batch['image'], batch['image_size'], gt['id_masks'], train=train, rngs=nnx.Rngs(dropout=drop_rng))
  t = batch['image'].shape[1]
  hp, wp = gt['masks'].shape[-2:]
  points, strides, level = fcos_point_table(hp, wp)
  ranges = fcos_targets.point_regress_ranges(level)
  per_frame = []
  for i, key in enumerate(jax.random.split(mask_rng, t)):
    frame_out = {k: v[i] for k, v in out.items()}
    frame_gt = {k: gt[k][:, i] for k in ('boxes', 'labels', 'ids', 'visible', 'masks')}
    per_frame.append(frame_losses(frame_out, frame_gt, points, strides, ranges, key, num_classes=model.num_classes,
                                  max_obj_num=model.max_obj_num, focal_alpha=settings.focal_alpha,
                                  focal_gamma=settings.focal_gamma,
                                  center_sample_radius=settings.center_sample_radius,
                                  max_mask_points=settings.max_mask_points))
  weights = dict(loss_cls=settings.cls_weight, loss_id=settings.id_weight, loss_bbox=settings.bbox_weight,
                 loss_centerness=settings.centerness_weight, loss_mask=settings.mask_weight)
  terms = {k: weights[k] * sum(f[k] for f in per_frame) / t for k in per_frame[0]}
  return sum(terms.values()), terms
