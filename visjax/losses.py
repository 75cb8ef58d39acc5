"""Losses and box utilities shared by the VIS heads (IDOL first; VITA, VISOLO and IAI reuse them).

Every function is elementwise or per instance (no hidden reduction) unless its name says otherwise, jittable and
differentiable. Boxes are `[..., 4]`, either `cxcywh` or `xyxy` as each function's name says.

Definitions follow the official code the methods were trained with:

* `sigmoid_focal_loss`: RetinaNet focal loss on logits (`alpha_t (1 - p_t)^gamma BCE`), as in DETR-family
  `segmentation.py`.
* `dice_loss`: `1 - (2 sum(p t) + 1) / (sum p + sum t + 1)` on sigmoid probabilities (DETR / IDOL form).
* `dice_loss_squared`: `1 - 2 sum(p t) / (sum p^2 + sum t^2 + eps)` on probabilities (SOLO / VISOLO form).
* `box_iou` / `generalized_box_iou`: pairwise, DETR `util/box_ops.py` (IoU without epsilon, GIoU enclosing term
  with `+1e-7` as IDOL's copy).
* `giou_loss`: elementwise `1 - GIoU`, fvcore's `giou_loss` (epsilon 1e-7 on both divisions), used by IDOL.
* `contrastive_loss` / `contrastive_aux_loss`: IDOL's `loss_reid` / `loss_reid_aux` for one anchor embedding.
"""

import jax
import jax.numpy as jnp
import numpy as np

_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize


def _xp(x):
  """The array namespace of `x`: the box utilities run on NumPy arrays on the host (trackers) as they are."""
  return np if isinstance(x, np.ndarray) else jnp


def box_cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """`[..., 4]` (cx, cy, w, h) -> (x0, y0, x1, y1) (jax or NumPy arrays)."""
  xp = _xp(boxes)
  cx, cy, w, h = xp.moveaxis(boxes, -1, 0)
  return xp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """`[..., 4]` (x0, y0, x1, y1) -> (cx, cy, w, h) (jax or NumPy arrays)."""
  xp = _xp(boxes)
  x0, y0, x1, y1 = xp.moveaxis(boxes, -1, 0)
  return xp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
  """`[..., 4]` xyxy -> `[...]` area."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pairwise IoU and union of xyxy boxes (torchvision / DETR form, no epsilon; jax or NumPy arrays).

  Args:
    boxes1: `[..., N, 4]` xyxy.
    boxes2: `[..., M, 4]` xyxy.

  Returns:
    `(iou, union)`, each `[..., N, M]`.
  """
  xp = _xp(boxes1)
  area1 = box_area(boxes1)[..., :, None]
  area2 = box_area(boxes2)[..., None, :]
  lt = xp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = xp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = xp.maximum(rb - lt, 0.)
  inter = wh[..., 0] * wh[..., 1]
  union = area1 + area2 - inter
  return inter / union, union


def generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise generalized IoU of xyxy boxes, `[..., N, 4] x [..., M, 4] -> [..., N, M]` (IDOL's box_ops)."""
  iou, union = box_iou(boxes1, boxes2)
  lt = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.)
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / (area + 1e-7)


def giou_loss(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Elementwise `1 - GIoU` of matching xyxy boxes `[..., 4]` -> `[...]` (fvcore `giou_loss`, no reduction)."""
  x1, y1, x2, y2 = jnp.moveaxis(boxes1, -1, 0)
  x1g, y1g, x2g, y2g = jnp.moveaxis(boxes2, -1, 0)
  xk1, yk1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
  xk2, yk2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
  overlaps = (yk2 > yk1) & (xk2 > xk1)
  inter = jnp.where(overlaps, (xk2 - xk1) * (yk2 - yk1), 0.)
  union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
  iou = inter / (union + eps)
  area_c = (jnp.maximum(x2, x2g) - jnp.minimum(x1, x1g)) * (jnp.maximum(y2, y2g) - jnp.minimum(y1, y1g))
  return 1. - (iou - (area_c - union) / (area_c + eps))


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """`[..., D]` x `[..., D]` -> `[...]`: L1 distance summed over the last axis (DETR's `loss_bbox` per box)."""
  return jnp.sum(jnp.abs(pred - target), axis=-1)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.) -> jax.Array:
  """Elementwise sigmoid focal loss (no reduction).

  Args:
    logits: `[...]` float logits.
    targets: `[...]` targets in [0, 1] (same shape).
    alpha: positive-class weight; < 0 disables the alpha weighting (as the reference code).
    gamma: focusing exponent.

  Returns:
    `[...]` loss.
  """
  targets = targets.astype(logits.dtype)
  prob = jax.nn.sigmoid(logits)
  # binary_cross_entropy_with_logits, the stable form.
  ce = jnp.maximum(logits, 0.) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = prob * targets + (1. - prob) * (1. - targets)
  loss = ce * (1. - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1. - alpha) * (1. - targets)) * loss
  return loss


def dice_loss(logits: jax.Array, targets: jax.Array, num_batch_dims: int = 1) -> jax.Array:
  """Per-instance dice loss `1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`, p = sigmoid(logits).

  Args:
    logits: `[*batch, ...]` mask logits; the first `num_batch_dims` axes index instances, the rest are summed.
    targets: same shape, in [0, 1].
    num_batch_dims: how many leading axes to keep.

  Returns:
    `[*batch]` loss per instance.
  """
  prob = jax.nn.sigmoid(logits)
  targets = targets.astype(prob.dtype)
  axes = tuple(range(num_batch_dims, logits.ndim))
  numerator = 2. * jnp.sum(prob * targets, axis=axes)
  denominator = jnp.sum(prob, axis=axes) + jnp.sum(targets, axis=axes)
  return 1. - (numerator + 1.) / (denominator + 1.)


def dice_loss_squared(probs: jax.Array, targets: jax.Array, eps: float = 1e-7, num_batch_dims: int = 1) -> jax.Array:
  """Per-instance dice loss with squared denominators, `1 - 2 sum(p t) / (sum p^2 + sum t^2 + eps)` (SOLO,
  VISOLO `MaskLoss`).

  Args:
    probs: `[*batch, ...]` mask probabilities (already sigmoid-ed: VISOLO upsamples logits before the sigmoid).
    targets: same shape, in [0, 1].
    eps: added to the denominator (VISOLO `DICE_LOSS_EPS` 1e-7).
    num_batch_dims: how many leading axes to keep.

  Returns:
    `[*batch]` loss per instance.
  """
  targets = targets.astype(probs.dtype)
  axes = tuple(range(num_batch_dims, probs.ndim))
  numerator = 2. * jnp.sum(probs * targets, axis=axes)
  denominator = jnp.sum(probs**2, axis=axes) + jnp.sum(targets**2, axis=axes)
  return 1. - numerator / (denominator + eps)


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """`log(sum(exp(x[mask])))` over the last axis, −inf (with zero gradient) where the mask is empty."""
  any_valid = jnp.any(mask, axis=-1)
  x_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1)
  x_max = jax.lax.stop_gradient(jnp.where(any_valid, x_max, 0.))
  total = jnp.sum(jnp.where(mask, jnp.exp(x - x_max[..., None]), 0.), axis=-1)
  total = jnp.where(any_valid, total, 1.)
  return jnp.where(any_valid, jnp.log(total) + x_max, -jnp.inf)


def contrastive_loss(anchor: jax.Array, candidates: jax.Array, pos_mask: jax.Array,
                     neg_mask: jax.Array) -> jax.Array:
  """IDOL's contrastive loss `log(1 + sum_{k+, k-} exp(v.k- - v.k+))` for one or more anchors.

  Raw dot products, no temperature. A candidate may be both positive and negative (IDOL's positive and negative
  sets come from different assignments); every (positive, negative) pair counts. Computed in O(K) as
  `softplus(LSE_neg(v.k) + LSE_pos(-v.k))`, which equals the pairwise sum. 0 if either set is empty.

  Args:
    anchor: `[..., E]` anchor embedding v (key frame).
    candidates: `[..., K, E]` candidate embeddings k (reference frame).
    pos_mask: bool `[..., K]` positives.
    neg_mask: bool `[..., K]` negatives.

  Returns:
    `[...]` loss per anchor.
  """
  sim = jnp.einsum('...ke,...e->...k', candidates, anchor)
  lse = _masked_logsumexp(sim, neg_mask) + _masked_logsumexp(-sim, pos_mask)
  return jax.nn.softplus(lse)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """`x / max(||x||, 1e-12)` (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, _NORMALIZE_EPS)


def contrastive_aux_loss(anchor: jax.Array, candidates: jax.Array, pos_mask: jax.Array,
                         neg_mask: jax.Array) -> jax.Array:
  """IDOL's auxiliary re-ID loss: mean over the candidates of `(cos(v, k) - label)^2`, label 1 / 0 for pos / neg.

  A candidate in both masks counts twice (once per label), as in the reference. 0 if both sets are empty.

  Args:
    anchor: `[..., E]`.
    candidates: `[..., K, E]`.
    pos_mask: bool `[..., K]`.
    neg_mask: bool `[..., K]` (IDOL passes the subsampled negatives).

  Returns:
    `[...]` loss per anchor.
  """
  cos = jnp.einsum('...ke,...e->...k', l2_normalize(candidates), l2_normalize(anchor))
  total = jnp.sum(jnp.where(pos_mask, (cos - 1.) ** 2, 0.) + jnp.where(neg_mask, cos ** 2, 0.), axis=-1)
  count = jnp.sum(pos_mask, axis=-1) + jnp.sum(neg_mask, axis=-1)
  return total / jnp.maximum(count, 1).astype(total.dtype)
