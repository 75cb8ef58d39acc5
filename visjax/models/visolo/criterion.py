"""VISOLO training loss (official `SetCriterion` of `visolo_model.py` with `models/loss.py`, targets from
`DataUtils.getGridGT`), jittable with static shapes.

Targets per frame (`visjax.models.heads.grid_targets`): every grid cell in an instance's centre region is positive
for that instance (conflicts to the nearer centre). Terms, summed:

  loss_cat       sigmoid focal loss over all cells and classes, divided per frame by its number of positive cells
                 (at least 1), averaged over clips and frames.
  loss_mask      dice with squared denominators (eps `dice_eps`) between each positive cell's mask
                 `sigmoid(upsample x4(mask_f . kernel))` and its instance mask; averaged over the cells of a frame,
                 summed over clips and divided by the clips with positives, summed over frames and divided by the
                 frames with positives (in any clip); times `mask_weight`.
  loss_tracking  sigmoid focal loss on the `[S, S]` tracking logits of the frame pairs (0, 1), (0, 2), (1, 2), target
                 1 for cells of the same instance; summed over rows with a positive, divided by their count per
                 (clip, pair), summed and divided by the (clip, pair)s with positives.

Batch format: docs/INTERFACES.md §1 (`masks [B, T, N, H, W]`, `labels [B, N]`, `instance_valid [B, N]`), T = 3.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from visjax import losses
from visjax.models import settings
from visjax.models.heads import grid_targets
from visjax.models.visolo.model import mask_probs


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """The fields of `config.loss` (official values and sources in `configs/visolo_common.py`)."""
  focal_alpha: float
  focal_gamma: float
  dice_eps: float
  mask_weight: float
  sampling_eps: float
  max_mask_cells: int  # 0: masks for every grid cell (exact); k > 0: the first k positive cells of each frame


def loss_settings(section: ml_collections.ConfigDict | None) -> LossSettings:
  """`LossSettings` from `config.loss`; every field is required (one error lists the missing / unknown ones)."""
  return settings.from_config(LossSettings, section, 'config.loss')


def _safe_div(x: jax.Array, n: jax.Array) -> jax.Array:
  return x / jnp.maximum(n, 1.)


def frame_pairs(num_frames: int) -> list[tuple[int, int]]:
  """Frame pairs of the tracking loss, in the model's `pred_tracking` order: (0, 1), (0, 2), (1, 2) for T = 3."""
  return [(a, b) for a in range(num_frames) for b in range(a + 1, num_frames)]


def build_targets(batch: dict[str, jax.Array], cfg: LossSettings, *, grid: tuple[int, int],
                  num_classes: int) -> dict[str, jax.Array]:
  """{'owner': int `[B, T, S]` instance per cell (-1: none), 'cls': `[B, T, S, C]`, 'matching': `[B, P, S, S]`}."""
  masks = batch['masks'] * batch['instance_valid'][:, None, :, None, None].astype(batch['masks'].dtype)
  assign = lambda m: grid_targets.assign_cells(m, grid=grid, eps=cfg.sampling_eps)
  owner = jax.vmap(jax.vmap(assign))(masks)
  cls = jax.vmap(lambda o, lab: grid_targets.category_targets(o, lab, num_classes))(owner, batch['labels'])
  pairs = frame_pairs(masks.shape[1])
  matching = jnp.stack([jax.vmap(grid_targets.matching_targets)(owner[:, a], owner[:, b]) for a, b in pairs], 1)
  return dict(owner=owner, cls=cls, matching=matching)


def category_loss(logits: jax.Array, targets: jax.Array, cfg: LossSettings) -> jax.Array:
  """`logits`, `targets` `[B, T, S1, S2, C]` / `[B, T, S, C]` -> scalar (official `CategoryLoss`, 5-d case)."""
  b, t = targets.shape[:2]
  logits = logits.reshape(b, t, -1)
  targets = targets.reshape(b, t, -1)
  focal = losses.sigmoid_focal_loss(logits, targets, cfg.focal_alpha, cfg.focal_gamma).sum(-1)
  return jnp.mean(_safe_div(focal, targets.sum(-1)))


def mask_loss(mask_f: jax.Array, kernels: jax.Array, masks: jax.Array, owner: jax.Array,
              cfg: LossSettings) -> jax.Array:
  """Official `MaskLoss`.

  Args:
    mask_f: `[B, T, h, w, D]` mask features (stride 4 of the padded input).
    kernels: `[B, T, S1, S2, D]`.
    masks: `[B, T, N, H, W]` instance masks (H <= 4h, W <= 4w; zero-padded to the mask size).
    owner: `[B, T, S]` from `build_targets`.
    cfg: settings.

  Returns:
    Weighted scalar loss.
  """
  b, t, h, w, d = mask_f.shape
  s = owner.shape[-1]
  positive = owner >= 0
  if cfg.max_mask_cells:
    k = min(cfg.max_mask_cells, s)
    cells = jnp.argsort(jnp.where(positive, 0, 1), axis=-1, stable=True)[..., :k]  # positives first, cell order
  else:
    k = s
    cells = jnp.broadcast_to(jnp.arange(s), owner.shape)
  take = lambda x: jnp.take_along_axis(x, cells, axis=-1)
  cell_pos, cell_owner = take(positive), take(owner)
  flat = lambda x: x.reshape((b * t,) + x.shape[2:])
  cell_kernels = jnp.take_along_axis(flat(kernels).reshape(b * t, s, d), flat(cells)[..., None], axis=1)
  probs = mask_probs(flat(mask_f), cell_kernels).reshape(b, t, k, 4 * h, 4 * w)
  hm, wm = masks.shape[-2:]
  masks = jnp.pad(masks, ((0, 0),) * 3 + ((0, 4 * h - hm), (0, 4 * w - wm)))
  target = jnp.take_along_axis(masks, jnp.maximum(cell_owner, 0)[..., None, None], axis=2)  # [B, T, K, H, W]
  dice = losses.dice_loss_squared(probs, target, cfg.dice_eps, num_batch_dims=3)
  per_clip = _safe_div(jnp.sum(dice * cell_pos, -1), cell_pos.sum(-1))  # [B, T]
  clip_has = positive.any(-1)  # [B, T]
  per_frame = _safe_div(per_clip.sum(0), clip_has.sum(0))  # [T]
  return cfg.mask_weight * _safe_div(per_frame.sum(), clip_has.any(0).sum())


def tracking_loss(logits: jax.Array, targets: jax.Array, cfg: LossSettings) -> jax.Array:
  """`logits`, `targets` `[B, P, S, S]` -> scalar (official `TrackingLoss` without `gt_cat`)."""
  rows = (targets.sum(-1) != 0).astype(logits.dtype)  # [B, P, S]
  focal = losses.sigmoid_focal_loss(logits, targets, cfg.focal_alpha, cfg.focal_gamma).sum(-1)
  count = rows.sum(-1)
  per_pair = _safe_div(jnp.sum(focal * rows, -1), count)
  return _safe_div(per_pair.sum(), (count > 0).sum())


def visolo_loss(outputs: dict[str, jax.Array], batch: dict[str, jax.Array],
                cfg: LossSettings) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss and its terms {'loss_cat', 'loss_mask', 'loss_tracking'} for `VISOLO.__call__`'s outputs (grid
  and number of classes read from `pred_cats [B, T, S1, S2, C]`)."""
  grid, num_classes = tuple(outputs['pred_cats'].shape[2:4]), outputs['pred_cats'].shape[-1]
  targets = build_targets(batch, cfg, grid=grid, num_classes=num_classes)
  terms = dict(
      loss_cat=category_loss(outputs['pred_cats'], targets['cls'], cfg),
      loss_mask=mask_loss(outputs['pred_masks'], outputs['pred_kernels'], batch['masks'].astype(jnp.float32),
                          targets['owner'], cfg),
      loss_tracking=tracking_loss(outputs['pred_tracking'], targets['matching'], cfg))
  return sum(terms.values()), terms


def model_loss(model, batch: dict[str, jax.Array], cfg: LossSettings) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`visolo_loss` of `model(batch['image'], batch['image_size'])` on a batch of 3-frame clips (INTERFACES §1)."""
  return visolo_loss(model(batch['image'], batch['image_size']), batch, cfg)
