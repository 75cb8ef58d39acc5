"""IDOL training criterion (the official `SetCriterion` + SimOTA `HungarianMatcher` + `select_pos_neg`), in-graph.

One call handles a batch of B two-frame clips (key frame, reference frame) with static shapes: gts are padded to N
slots with validity masks, and every selection (matched queries, positives, sampled negatives) is a mask.

Per decoder layer l (all layers when `deep_supervision`, names suffixed `_l` except the last):
  * SimOTA assignment on the key frame (`simota_cost` + `visjax.matching.simota_assign`, candidate k 10);
  * `loss_ce`: sigmoid focal over all queries and classes, summed, / #matched queries in the batch;
  * `loss_bbox` (L1 on cxcywh) and `loss_giou` (fvcore GIoU loss), summed over matched queries / #matched;
  * `loss_mask` (focal, mean over pixels per query) and `loss_dice`, summed over matched queries / #matched; the
    targets are the key-frame gt masks padded to /32 and sampled at `[2::4, 2::4]`.
Last layer only:
  * `loss_reid`: contrastive loss anchored at each gt's cheapest key-frame query (`matched_query` of the last
    layer), positives = SimOTA (k from the top-10 IoUs) on the reference frame's last-layer boxes and class
    probabilities, negatives = queries *not* selected by SimOTA with 100 candidates; mean over the gts valid in
    both frames of the batch;
  * `loss_reid_aux`: cosine-MSE over the positives and at most 10·#pos randomly sampled negatives (10 if no
    positive).

Only the key frame gets detection and mask losses; instances absent (or crowd) in the key frame are dropped from
both frames. Normalisation: the official code divides by the number of matched queries on each GPU (its
`num_boxes` argument is overwritten in every loss); here the count is over the whole (global) batch, clamped ≥ 1.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from visjax import losses
from visjax import matching
from visjax.models import settings


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """The fields of `config.loss` (official values and meaning in `configs/idol_common.py`)."""
  class_weight: float
  bbox_weight: float
  giou_weight: float
  mask_weight: float
  dice_weight: float
  reid_weight: float
  reid_aux_weight: float
  focal_alpha: float
  focal_gamma: float
  deep_supervision: bool
  mask_out_stride: int
  simota_giou_cost: float
  simota_center_cost: float
  simota_fg_cost: float
  simota_center_radius: float
  simota_expanded_stride: int
  simota_candidate_k: int
  contrast_pos_candidate_k: int
  contrast_neg_candidate_k: int
  contrast_aux_neg_ratio: int


def loss_settings(section: ml_collections.ConfigDict | None) -> LossSettings:
  """`LossSettings` from `config.loss`; every field is required (one error lists the missing / unknown ones)."""
  return settings.from_config(LossSettings, section, 'config.loss')


# ----------------------------------------------------------------------------------------------------------------
# SimOTA cost (matcher.py / pos_neg_select.py).
# ----------------------------------------------------------------------------------------------------------------


def simota_cost(probs: jax.Array, boxes: jax.Array, gt_boxes: jax.Array, gt_labels: jax.Array, gt_valid: jax.Array,
                cfg: LossSettings) -> tuple[jax.Array, jax.Array]:
  """IDOL's SimOTA cost and IoUs for one frame.

  cost = focal_cls + giou_cost·(−GIoU) + center_cost·¬(in box ∧ in centre) + fg_cost·¬(in any box ∨ in any centre)
  with the focal class cost `α(1−p)^γ(−log(p+1e-8)) − (1−α)p^γ(−log(1−p+1e-8))` at the gt label, "in box" =
  the query's box centre strictly inside the gt box, "in centre" = within radius/stride (2.5/32) of the gt centre,
  all in normalised coordinates. Padding gts do not count for the foreground test.

  Args:
    probs: `[Q, C]` class probabilities (sigmoid).
    boxes: `[Q, 4]` predicted cxcywh.
    gt_boxes: `[G, 4]` gt cxcywh (anything in padding slots).
    gt_labels: int `[G]` (anything in padding slots).
    gt_valid: bool `[G]`.
    cfg: loss config (`simota_*`, `focal_alpha`, `focal_gamma`).

  Returns:
    `(cost [Q, G], ious [Q, G])`; padding columns hold finite junk (`simota_assign` ignores them).
  """
  dummy = jnp.asarray([0.5, 0.5, 1., 1.], gt_boxes.dtype)
  gt_boxes = jnp.where(gt_valid[:, None], gt_boxes, dummy)
  gt_labels = jnp.where(gt_valid, gt_labels, 0)
  alpha, gamma = cfg.focal_alpha, cfg.focal_gamma
  neg = (1 - alpha) * probs ** gamma * -jnp.log(1 - probs + 1e-8)
  pos = alpha * (1 - probs) ** gamma * -jnp.log(probs + 1e-8)
  cost_class = (pos - neg)[:, gt_labels]  # [Q, G]

  pred_xyxy = losses.box_cxcywh_to_xyxy(boxes)
  gt_xyxy = losses.box_cxcywh_to_xyxy(gt_boxes)
  ious, _ = losses.box_iou(pred_xyxy, gt_xyxy)
  cost_giou = -losses.generalized_box_iou(pred_xyxy, gt_xyxy)

  cx, cy = boxes[:, 0:1], boxes[:, 1:2]  # [Q, 1]
  in_box = (cx > gt_xyxy[None, :, 0]) & (cx < gt_xyxy[None, :, 2]) & (cy > gt_xyxy[None, :, 1]) & (
      cy < gt_xyxy[None, :, 3])
  radius = cfg.simota_center_radius / cfg.simota_expanded_stride
  in_center = ((cx > gt_boxes[None, :, 0] - radius) & (cx < gt_boxes[None, :, 0] + radius)
               & (cy > gt_boxes[None, :, 1] - radius) & (cy < gt_boxes[None, :, 1] + radius))
  fg = jnp.any((in_box | in_center) & gt_valid[None, :], axis=1)  # [Q]
  cost = cost_class + cfg.simota_giou_cost * cost_giou + cfg.simota_center_cost * (~(in_box & in_center))
  cost = cost + cfg.simota_fg_cost * (~fg)[:, None]
  return cost, ious


def _assign(logits, boxes, gt_boxes, gt_labels, gt_valid, cfg, candidate_k):
  """Batched SimOTA on `[B, Q, C]` logits / `[B, Q, 4]` boxes (no gradient)."""
  logits, boxes = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(boxes)

  def one(lg, bx, gb, gl, gv):
    cost, ious = simota_cost(jax.nn.sigmoid(lg), bx, gb, gl, gv, cfg)
    return matching.simota_assign(cost, ious, gv, candidate_k=candidate_k)

  return jax.vmap(one)(logits, boxes, gt_boxes, gt_labels, gt_valid)


# ----------------------------------------------------------------------------------------------------------------
# Targets.
# ----------------------------------------------------------------------------------------------------------------


def mask_targets(masks: jax.Array, out_hw: tuple[int, int], stride: int = 4, divisibility: int = 32) -> jax.Array:
  """Gt masks `[..., H, W]` → `[..., h, w]`: zero-padded to a multiple of `divisibility`, sampled at
  `[stride//2::stride, stride//2::stride]` (the official target), then cropped / zero-padded to `out_hw`."""
  h, w = masks.shape[-2:]
  ph, pw = -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility
  pad = [(0, 0)] * (masks.ndim - 2) + [(0, ph - h), (0, pw - w)]
  start = stride // 2
  sampled = jnp.pad(masks, pad)[..., start::stride, start::stride]
  sampled = sampled[..., :out_hw[0], :out_hw[1]]
  pad = [(0, 0)] * (masks.ndim - 2) + [(0, out_hw[0] - sampled.shape[-2]), (0, out_hw[1] - sampled.shape[-1])]
  return jnp.pad(sampled, pad)


def batched_take(x: jax.Array, idx: jax.Array) -> jax.Array:
  """Per-batch gather: `x [B, K, ...]`, `idx int [B, M]` -> `[B, M, ...]`."""
  return jax.vmap(lambda a, i: a[i])(x, idx)


# ----------------------------------------------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------------------------------------------


def max_matched_queries(num_queries: int, num_gts: int, candidate_k: int) -> int:
  """Static bound on the queries SimOTA selects in one frame: each gt takes `k <= candidate_k` queries (k is the
  integer part of a sum of `candidate_k` IoUs, at least 1) and a query serves one gt, so at most
  `min(Q, candidate_k * G)`."""
  return min(num_queries, max(1, candidate_k) * num_gts)


def _detection_losses(logits, boxes, mask_fn, assign, gt_boxes, gt_labels, gt_masks, cfg):
  """Class, box and mask losses of one layer on the key frame.

  Args:
    logits: `[B, Q, C]`; boxes: `[B, Q, 4]`.
    mask_fn: `queries int [B, M] -> [B, M, h, w]` mask logits of those key-frame queries of this layer.
    assign: batched `SimOTAResult` (`query_gt [B, Q]`).
    gt_boxes: `[B, G, 4]`; gt_labels: `[B, G]`; gt_masks: `[B, G, h, w]` float targets.
    cfg: loss config.

  Returns:
    dict of unweighted `loss_ce, loss_bbox, loss_giou, loss_mask, loss_dice`.
  """
  num_classes = logits.shape[-1]
  query_gt = assign.query_gt  # [B, Q]
  selected = query_gt >= 0
  safe_gt = jnp.maximum(query_gt, 0)
  num_matched = jnp.maximum(jnp.sum(selected), 1).astype(jnp.float32)

  labels = jnp.take_along_axis(gt_labels, safe_gt, axis=1)  # [B, Q]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype) * selected[..., None]
  focal = losses.sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma)
  loss_ce = jnp.sum(focal) / num_matched

  tgt_boxes = batched_take(gt_boxes, safe_gt)  # [B, Q, 4]
  loss_bbox = jnp.sum(losses.l1_loss(boxes, tgt_boxes) * selected) / num_matched
  giou = losses.giou_loss(losses.box_cxcywh_to_xyxy(boxes), losses.box_cxcywh_to_xyxy(tgt_boxes))
  loss_giou = jnp.sum(jnp.where(selected, giou, 0.)) / num_matched

  # Masks only for the matched queries (at most `max_matched_queries`, padded with unselected ones), as the
  # official criterion: the mask head and the pixel losses run on [B, M] instead of [B, Q] instances.
  cap = max_matched_queries(logits.shape[1], gt_boxes.shape[1], cfg.simota_candidate_k)
  order = jnp.argsort(~selected, axis=1, stable=True)[:, :cap]  # selected queries first
  sel = jnp.take_along_axis(selected, order, axis=1)  # [B, M]
  pred = mask_fn(order)  # [B, M, h, w]
  tgt = batched_take(gt_masks, jnp.take_along_axis(safe_gt, order, axis=1)).astype(pred.dtype)
  mask_focal = jnp.mean(losses.sigmoid_focal_loss(pred, tgt, cfg.focal_alpha, cfg.focal_gamma), axis=(-2, -1))
  loss_mask = jnp.sum(jnp.where(sel, mask_focal, 0.)) / num_matched
  dice = losses.dice_loss(pred, tgt, num_batch_dims=2)
  loss_dice = jnp.sum(jnp.where(sel, dice, 0.)) / num_matched
  return {'loss_ce': loss_ce, 'loss_bbox': loss_bbox, 'loss_giou': loss_giou, 'loss_mask': loss_mask,
          'loss_dice': loss_dice}


def _sample_negatives(rng: jax.Array, pos: jax.Array, neg: jax.Array, ratio: int) -> jax.Array:
  """IDOL's aux-loss negative subsampling, uniformly without replacement.

  Args:
    rng: PRNG key.
    pos, neg: bool `[B, G, Q]` positives / negatives per gt.
    ratio: keep `min(#neg, ratio·#pos)` negatives, or `min(#neg, 10)` when there is no positive.

  Returns:
    bool `[B, G, Q]` sampled negatives.
  """
  num_pos = jnp.sum(pos, axis=-1, keepdims=True)
  num_neg = jnp.sum(neg, axis=-1, keepdims=True)
  want = jnp.where(num_pos == 0, 10, jnp.minimum(num_neg, ratio * num_pos))
  want = jnp.minimum(want, num_neg)
  keys = jnp.where(neg, jax.random.uniform(rng, neg.shape), 2.)
  ranks = jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1)
  return neg & (ranks < want)


def _reid_losses(embeds_key, embeds_ref, logits_ref, boxes_ref, matched_query, gt_boxes_ref, gt_labels,
                 valid_ref, rng, cfg):
  """`loss_reid` and `loss_reid_aux` (unweighted), see the module docstring.

  Args:
    embeds_key, embeds_ref: `[B, Q, E]` re-ID embeddings of the key / reference frame.
    logits_ref, boxes_ref: `[B, Q, C]` / `[B, Q, 4]` last-layer outputs on the reference frame.
    matched_query: int `[B, G]` cheapest key-frame query per gt (last layer).
    gt_boxes_ref: `[B, G, 4]` reference-frame gt boxes; gt_labels `[B, G]`.
    valid_ref: bool `[B, G]` gts valid in both frames.
    rng: PRNG key for the negative sampling.
    cfg: loss config.
  """
  pos = _assign(logits_ref, boxes_ref, gt_boxes_ref, gt_labels, valid_ref, cfg,
                cfg.contrast_pos_candidate_k).matching  # [B, Q, G]
  neg = ~_assign(logits_ref, boxes_ref, gt_boxes_ref, gt_labels, valid_ref, cfg,
                 cfg.contrast_neg_candidate_k).matching
  pos, neg = jnp.swapaxes(pos, 1, 2), jnp.swapaxes(neg, 1, 2)  # [B, G, Q]
  anchors = batched_take(embeds_key, jnp.maximum(matched_query, 0))  # [B, G, E]
  cands = embeds_ref[:, None]  # [B, 1, Q, E]
  contrast = losses.contrastive_loss(anchors, cands, pos, neg)  # [B, G]
  sampled = _sample_negatives(rng, pos, neg, cfg.contrast_aux_neg_ratio)
  aux = losses.contrastive_aux_loss(anchors, cands, pos, sampled)
  num_items = jnp.maximum(jnp.sum(valid_ref), 1).astype(jnp.float32)
  return {'loss_reid': jnp.sum(jnp.where(valid_ref, contrast, 0.)) / num_items,
          'loss_reid_aux': jnp.sum(jnp.where(valid_ref, aux, 0.)) / num_items}


_WEIGHT_FIELDS = {'loss_ce': 'class_weight', 'loss_bbox': 'bbox_weight', 'loss_giou': 'giou_weight',
                  'loss_mask': 'mask_weight', 'loss_dice': 'dice_weight', 'loss_reid': 'reid_weight',
                  'loss_reid_aux': 'reid_aux_weight'}


def clip_targets(batch: dict[str, Any]) -> dict[str, jax.Array]:
  """Key / reference gts of a `[B, 2, ...]` IDOL batch (docs/INTERFACES.md §1).

  Returns:
    dict with `labels [B, N]`, `valid_key [B, N]` (real, non-crowd, present in the key frame), `valid_ref [B, N]`
    (also present in the reference frame), `boxes_key`, `boxes_ref [B, N, 4]`, `masks_key [B, N, H, W]`.
  """
  for name in ('boxes', 'masks', 'present', 'labels', 'instance_valid'):
    if name not in batch:
      raise KeyError(f'IDOL criterion: batch lacks {name!r} (see docs/INTERFACES.md §1).')
  if batch['boxes'].shape[1] != 2:
    raise ValueError(f'IDOL criterion: clips must have T=2 frames (key, reference), got boxes of shape '
                     f'{batch["boxes"].shape}.')
  valid_key = batch['instance_valid'] & batch['present'][:, 0]
  if 'is_crowd' in batch:
    valid_key = valid_key & ~batch['is_crowd']
  return {'labels': jnp.maximum(batch['labels'], 0), 'valid_key': valid_key,
          'valid_ref': valid_key & batch['present'][:, 1], 'boxes_key': batch['boxes'][:, 0],
          'boxes_ref': batch['boxes'][:, 1], 'masks_key': batch['masks'][:, 0]}


# `(layer, queries int [B, M]) -> [B, M, h, w]`: mask logits of the given queries of the B key frames.
KeyMaskFn = Callable[[int, jax.Array], jax.Array]


def idol_loss(outputs: dict[str, jax.Array], batch: dict[str, Any], *, rng: jax.Array,
              loss_config: LossSettings, mask_fn: KeyMaskFn | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The IDOL training loss of one batch of clips.

  Args:
    outputs: the model outputs (docs/INTERFACES.md §4) on the `2B` frames `[b0 key, b0 ref, b1 key, ...]`:
      `pred_logits [L, 2B, Q, C]`, `pred_boxes [L, 2B, Q, 4]`, `pred_embeds [2B, Q, E]`, and `pred_masks
      [L, 2B, Q, h, w]` unless `mask_fn` is given.
    batch: the `[B, 2, ...]` training batch (docs/INTERFACES.md §1).
    rng: PRNG key (aux-loss negative sampling).
    loss_config: the loss settings (`loss_settings(config.loss)`).
    mask_fn: computes key-frame mask logits of the matched queries only (`KeyMaskFn`, at stride
      `mask_out_stride` of the batch's frames); None reads them from `outputs['pred_masks']`.

  Returns:
    `(total, terms)`: the weighted sum and every weighted term (`loss_ce`, ..., `loss_reid_aux`, `loss_ce_0`, ...).
  """
  cfg = loss_config
  gts = clip_targets(batch)
  logits, boxes = outputs['pred_logits'], outputs['pred_boxes']
  num_layers = logits.shape[0]
  if logits.shape[1] != 2 * gts['labels'].shape[0]:
    raise ValueError(f'IDOL criterion: outputs hold {logits.shape[1]} frames, expected 2 x {gts["labels"].shape[0]}'
                     ' clips (key, reference interleaved).')
  if mask_fn is None:
    mask_fn = lambda layer, queries: batched_take(outputs['pred_masks'][layer, 0::2], queries)
    out_hw = outputs['pred_masks'].shape[-2:]
  else:
    out_hw = tuple(-(-n // cfg.mask_out_stride) for n in gts['masks_key'].shape[-2:])
  gt_masks = mask_targets(gts['masks_key'], out_hw, cfg.mask_out_stride)

  terms = {}
  layers = range(num_layers) if cfg.deep_supervision else [num_layers - 1]
  matched_query = None
  for layer in layers:
    key_logits, key_boxes = logits[layer, 0::2], boxes[layer, 0::2]
    assign = _assign(key_logits, key_boxes, gts['boxes_key'], gts['labels'], gts['valid_key'], cfg,
                     cfg.simota_candidate_k)
    layer_terms = _detection_losses(key_logits, key_boxes, functools.partial(mask_fn, layer), assign,
                                    gts['boxes_key'], gts['labels'], gt_masks, cfg)
    suffix = '' if layer == num_layers - 1 else f'_{layer}'
    terms.update({k + suffix: v for k, v in layer_terms.items()})
    matched_query = assign.matched_query

  embeds = outputs['pred_embeds']
  terms.update(_reid_losses(embeds[0::2], embeds[1::2], logits[-1, 1::2], boxes[-1, 1::2], matched_query,
                            gts['boxes_ref'], gts['labels'], gts['valid_ref'], rng, cfg))
  weighted = {}
  for name, value in terms.items():
    base = name if name in _WEIGHT_FIELDS else name.rsplit('_', 1)[0]
    weighted[name] = value * getattr(cfg, _WEIGHT_FIELDS[base])
  total = sum(weighted.values())
  return total, weighted
