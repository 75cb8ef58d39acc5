"""VITA's training losses, in-graph and jittable with static shapes.

Two set criteria (sukjunhwang/VITA `mask2former/modeling/{criterion,matcher}.py`, `vita/modeling/vita_{criterion,
matcher}.py`), both Hungarian-matched on `class_weight * (-prob) + mask_weight * sigmoid-BCE + dice_weight * dice`
costs over random points:

* frame level (Mask2Former `SetCriterion`) on every frame and every one of the `dec_layers` predictions of the frame
  decoder: `loss_ce` (cross-entropy, no-object weight 0.1, PyTorch's weighted mean), `loss_mask` / `loss_dice` on
  `train_num_points` importance-sampled points (oversample 3, importance 0.75) per matched mask; aux layers `_i`.
* video level (`VitaSetCriterion`) on each VITA decoder layer, per (frame-decoder layer, clip) entry with the clip
  targets repeated over the layers: the matcher shares one point set over all frames of an entry (T * points), the
  mask losses sample points per instance and frame; `loss_vita_ce`, `loss_vita_mask`, `loss_vita_dice`, aux
  layers `_i`, and `loss_vita_sim` (last layer only): BCE-with-logits of all pairwise dot products of the matched
  frame embeddings (`pred_fq_embed`, matched by the matchings of the L frame-decoder layers VITA read) and clip
  embeddings (`pred_cq_embed`), target "same instance", counted within the same (layer, clip) group only.

Targets are padded to N instance slots with validity masks (docs/INTERFACES.md §1). The random points are explicit
inputs of `criterion` (`PointDraws`), drawn from a key by `draw_points`; `vita_loss` does both.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from visjax import matching
from visjax.models import settings
from visjax.models.heads import point_sampling
from visjax.models.layers import preprocess


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """The fields of `config.loss` (official values: `configs/vita_common.py:loss_config`).

  The class count comes from the logits and the number of frame-decoder layers fed to VITA from the outputs.
  """
  class_weight: float
  mask_weight: float
  dice_weight: float
  no_object_weight: float
  vita_no_object_weight: float
  sim_weight: float
  deep_supervision: bool
  vita_deep_supervision: bool
  train_num_points: int
  oversample_ratio: float
  importance_sample_ratio: float


def loss_settings(section: ml_collections.ConfigDict | None) -> LossSettings:
  """`LossSettings` from `config.loss`; every field is required (one error lists the missing / unknown ones)."""
  return settings.from_config(LossSettings, section, 'config.loss')


class Targets(NamedTuple):
  """Clip targets, N instance slots.

  labels: int32 `[B, N]`; masks: uint8 `[B, T, N, Hp, Wp]` in the padded frame of the model input;
  frame_valid: bool `[B, T, N]` (instance visible in the frame: a frame target); clip_valid: bool `[B, N]`
  (a real instance visible in at least one frame of the clip: a clip target).
  """
  labels: jax.Array
  masks: jax.Array
  frame_valid: jax.Array
  clip_valid: jax.Array


class PointDraws(NamedTuple):
  """Uniform random points of one set criterion (leading axis: the prediction layers).

  match: `[Ly, E, P, 2]` matcher points shared by all queries / targets (and frames) of an entry;
  over: `[Ly, E, N, T, S, 2]` importance-sampling candidates per target slot and frame;
  extra: `[Ly, E, N, T, R, 2]` random points appended to the kept candidates.
  """
  match: jax.Array
  over: jax.Array
  extra: jax.Array


def prepare_targets(batch: dict[str, jax.Array], size_divisibility: int = 32) -> Targets:
  """Targets from a training batch (masks zero-padded to the model's padded input size).

  As the official `prepare_targets`: a frame target is an instance with a non-empty mask in that frame, a clip
  target one with a non-empty mask in some frame; the clip's class is the instance's label.
  """
  masks = batch['masks']
  h, w = masks.shape[-2:]
  hp, wp = preprocess.round_up(h, size_divisibility), preprocess.round_up(w, size_divisibility)
  masks = jnp.pad(masks, ((0, 0),) * 3 + ((0, hp - h), (0, wp - w)))
  frame_valid = batch['present'] & batch['instance_valid'][:, None] & jnp.any(masks > 0, axis=(-2, -1))
  return Targets(labels=batch['labels'].astype(jnp.int32), masks=masks, frame_valid=frame_valid,
                 clip_valid=jnp.any(frame_valid, axis=1))


def _point_counts(s: LossSettings) -> tuple[int, int, int]:
  return point_sampling.num_sampled_points(s.train_num_points, s.oversample_ratio, s.importance_sample_ratio)


def draw_points(rng: jax.Array, layers: int, entries: int, slots: int, frames: int, s: LossSettings) -> PointDraws:
  """Draws the uniform points of one set criterion."""
  num_s, _, num_r = _point_counts(s)
  k1, k2, k3 = jax.random.split(rng, 3)
  return PointDraws(
      match=jax.random.uniform(k1, (layers, entries, s.train_num_points, 2)),
      over=jax.random.uniform(k2, (layers, entries, slots, frames, num_s, 2)),
      extra=jax.random.uniform(k3, (layers, entries, slots, frames, num_r, 2)))


# ----------------------------------------------------------------------------------------------------------------
# One set criterion on one prediction layer.


def _sample_frames(masks: jax.Array, coords: jax.Array) -> jax.Array:
  """`masks [M, T, H, W]` at shared `coords [P, 2]` -> `[M, T * P]` (frames as channels, as the matchers)."""
  m, t = masks.shape[:2]
  pts = point_sampling.point_sample(jnp.moveaxis(masks, 1, -1), jnp.broadcast_to(coords, (m,) + coords.shape))
  return jnp.moveaxis(pts, -1, 1).reshape(m, -1)  # [M, P, T] -> [M, T, P] -> [M, T * P]


def mask_costs(out_points: jax.Array, tgt_points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Matcher costs `batch_sigmoid_ce_loss` and `batch_dice_loss`: `[Q, M]` logits, `[N, M]` labels -> `[Q, N]`."""
  m = out_points.shape[-1]
  hp = jax.lax.Precision.HIGHEST
  pos, neg = jax.nn.softplus(-out_points), jax.nn.softplus(out_points)
  bce = (jnp.einsum('qm,nm->qn', pos, tgt_points, precision=hp)
         + jnp.einsum('qm,nm->qn', neg, 1. - tgt_points, precision=hp)) / m
  prob = jax.nn.sigmoid(out_points)
  numerator = 2. * jnp.einsum('qm,nm->qn', prob, tgt_points, precision=hp)
  denominator = prob.sum(-1)[:, None] + tgt_points.sum(-1)[None, :]
  return bce, 1. - (numerator + 1.) / (denominator + 1.)


def hungarian(logits: jax.Array, masks: jax.Array, labels: jax.Array, tgt_masks: jax.Array, valid: jax.Array,
              coords: jax.Array, s: LossSettings) -> jax.Array:
  """Matches one entry; returns int32 `[N]`, the query matched to each target slot (meaningless where invalid).

  Args:
    logits: `[Q, K+1]`; masks: `[Q, T, h, w]` logits; labels: `[N]`; tgt_masks: `[N, T, H, W]`; valid: `[N]`;
    coords: `[P, 2]` points shared by all frames.
  """
  logits, masks = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(masks)
  prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  cost_class = -jnp.take(prob, jnp.clip(labels, 0), axis=1)
  bce, dice = mask_costs(_sample_frames(masks.astype(jnp.float32), coords), _sample_frames(tgt_masks, coords))
  cost = s.mask_weight * bce + s.class_weight * cost_class + s.dice_weight * dice
  # Constant columns for padding slots do not change the assignment of the real ones (Q >= N).
  cost = jnp.where(valid[None], cost, 0.)
  rows, cols = matching.hungarian_match(cost)
  return jnp.zeros(labels.shape, jnp.int32).at[cols].set(rows)


def weighted_cross_entropy(logits: jax.Array, target: jax.Array, no_object_weight: float) -> jax.Array:
  """`F.cross_entropy(logits, target, weight=empty_weight)`: sum of w[y] * CE / sum of w[y] over all queries."""
  num_classes = logits.shape[-1] - 1
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  weight = jnp.where(target == num_classes, no_object_weight, 1.)
  return jnp.sum(weight * nll) / jnp.sum(weight)


def set_losses(logits: jax.Array, masks: jax.Array, labels: jax.Array, tgt_masks: jax.Array, valid: jax.Array,
               draws: PointDraws, num_masks: jax.Array, no_object_weight: float,
               s: LossSettings) -> tuple[dict[str, jax.Array], jax.Array]:
  """Matching, class and point-sampled mask losses of one prediction layer over E entries.

  Args:
    logits: `[E, Q, K+1]`; masks: `[E, Q, T, h, w]`; labels: `[E, N]`; tgt_masks: `[E, N, T, H, W]`;
    valid: `[E, N]`; draws: one layer's `PointDraws` (no layer axis); num_masks: the normaliser.

  Returns:
    ({'ce', 'mask', 'dice'} unweighted losses, matched query per target slot int32 `[E, N]`).
  """
  num_classes = logits.shape[-1] - 1
  if labels.shape[-1] > logits.shape[-2]:
    raise ValueError(f'VITA criterion: {labels.shape[-1]} instance slots (input.max_instances) exceed the '
                     f'{logits.shape[-2]} queries; every target must be matchable.')
  match_q = jax.vmap(hungarian, in_axes=(0, 0, 0, 0, 0, 0, None))(logits, masks, labels, tgt_masks, valid,
                                                                   draws.match, s)
  e, q = logits.shape[:2]
  target = jnp.full((e, q), num_classes, jnp.int32)
  entry = jnp.broadcast_to(jnp.arange(e)[:, None], match_q.shape)
  target = target.at[entry, jnp.where(valid, match_q, q)].set(labels, mode='drop')
  ce = weighted_cross_entropy(logits, target, no_object_weight)

  src = jnp.take_along_axis(masks, match_q[:, :, None, None, None], axis=1)  # [E, N, T, h, w]
  n, t = src.shape[1:3]
  flat_src = src.reshape((e * n * t,) + src.shape[3:]).astype(jnp.float32)
  flat_tgt = tgt_masks.reshape((e * n * t,) + tgt_masks.shape[3:])
  _, num_uncertain, _ = _point_counts(s)
  coords = point_sampling.uncertain_point_coords(flat_src, draws.over.reshape((e * n * t,) + draws.over.shape[3:]),
                                                 draws.extra.reshape((e * n * t,) + draws.extra.shape[3:]),
                                                 num_uncertain)
  coords = jax.lax.stop_gradient(coords)
  point_labels = point_sampling.point_sample(flat_tgt, coords).reshape(e, n, -1)
  point_logits = point_sampling.point_sample(flat_src, coords).reshape(e, n, -1)
  bce = jnp.mean(jnp.maximum(point_logits, 0.) - point_logits * point_labels
                 + jnp.log1p(jnp.exp(-jnp.abs(point_logits))), axis=-1)
  prob = jax.nn.sigmoid(point_logits)
  dice = 1. - (2. * jnp.sum(prob * point_labels, -1) + 1.) / (prob.sum(-1) + point_labels.sum(-1) + 1.)
  return {'ce': ce, 'mask': jnp.sum(jnp.where(valid, bce, 0.)) / num_masks,
          'dice': jnp.sum(jnp.where(valid, dice, 0.)) / num_masks}, match_q


def _layers(values: dict[str, jax.Array], prefix: str, keep_aux: bool) -> dict[str, jax.Array]:
  """Per-layer losses `[Ly]` -> {'loss_{prefix}{name}': last, 'loss_{prefix}{name}_{i}': layer i < Ly - 1}."""
  out = {}
  for name, v in values.items():
    out[f'loss_{prefix}{name}'] = v[-1]
    if keep_aux:
      out.update({f'loss_{prefix}{name}_{i}': v[i] for i in range(v.shape[0] - 1)})
  return out


# ----------------------------------------------------------------------------------------------------------------
# Both criteria.


def similarity_loss(fq_embed: jax.Array, cq_embed: jax.Array, frame_match: jax.Array, clip_match: jax.Array,
                    targets: Targets) -> jax.Array:
  """`loss_vita_sim`.

  Args:
    fq_embed: `[L, B, T, fQ, C]` frame-query embeddings; cq_embed: `[L, B, cQ, C]` (last VITA layer).
    frame_match: `[L, B, T, N]` frame query matched to each target (the last L frame-layer matchings).
    clip_match: `[L, B, N]` clip query matched to each clip target (last VITA layer).
  """
  l, b, t, _, c = fq_embed.shape
  n = frame_match.shape[-1]
  frame = jnp.take_along_axis(fq_embed, frame_match[..., None], axis=3)  # [L, B, T, N, C]
  clip = jnp.take_along_axis(cq_embed, clip_match[..., None], axis=2)  # [L, B, N, C]
  emb = jnp.concatenate([frame.reshape(l, b, t * n, c), clip], axis=2).astype(jnp.float32)
  ids = jnp.concatenate([jnp.tile(jnp.arange(n), t), jnp.arange(n)])
  valid = jnp.concatenate([targets.frame_valid.reshape(b, t * n), targets.clip_valid], axis=1)  # [B, TN + N]
  logits = jnp.einsum('lbic,lbjc->lbij', emb, emb, precision=jax.lax.Precision.HIGHEST)
  same = (ids[:, None] == ids[None, :]).astype(jnp.float32)
  pair = (valid[:, :, None] & valid[:, None, :]).astype(jnp.float32)[None]
  bce = jnp.maximum(logits, 0.) - logits * same + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  pair = jnp.broadcast_to(pair, bce.shape)
  return jnp.sum(bce * pair) / (jnp.sum(pair) + 1e-6)


def criterion(outputs: dict[str, Any], targets: Targets, frame_draws: PointDraws, video_draws: PointDraws,
              s: LossSettings) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Both criteria with given random points.

  Args:
    outputs: `VITA.__call__(..., train=True)` outputs: `frame` (`pred_logits [Lf, B*T, fQ, K+1]`,
      `pred_masks [Lf, B*T, fQ, h, w]`) and `video` (`pred_logits [D, L, B, cQ, K+1]`,
      `pred_masks [D, L, B, cQ, T, h, w]`, `pred_fq_embed [L, B, T, fQ, C]`, `pred_cq_embed [D, L, B, cQ, C]`).
    targets: `prepare_targets` output.
    frame_draws: `PointDraws` with `[Lf, B*T, ...]`, N slots, 1 frame; video_draws: `[D, L*B, ...]`, T frames.

  Returns:
    (total weighted loss, every weighted term by name).
  """
  b, t, n = targets.frame_valid.shape
  frame, video = outputs['frame'], outputs['video']

  # Frame level: entries are the B*T frames (clip-major).
  f_labels = jnp.repeat(targets.labels, t, axis=0)  # [BT, N]
  f_masks = targets.masks.reshape((b * t, n, 1) + targets.masks.shape[-2:])
  f_valid = targets.frame_valid.reshape(b * t, n)
  f_num = jnp.maximum(jnp.sum(f_valid).astype(jnp.float32), 1.)
  f_logits, f_pred = frame['pred_logits'], frame['pred_masks'][:, :, :, None]
  if not s.deep_supervision:
    f_logits, f_pred = f_logits[-1:], f_pred[-1:]
    frame_draws = jax.tree.map(lambda x: x[-1:], frame_draws)
  per_layer = lambda lg, pm, dr: set_losses(lg, pm, f_labels, f_masks, f_valid, dr, f_num, s.no_object_weight, s)
  f_losses, f_match = jax.vmap(per_layer)(f_logits, f_pred, frame_draws)

  # Video level: entries are (frame-decoder layer l, clip b), l-major; clip targets repeated over l.
  d, l = video['pred_logits'].shape[:2]
  v_logits = video['pred_logits'].reshape((d, l * b) + video['pred_logits'].shape[3:])
  v_pred = video['pred_masks'].reshape((d, l * b) + video['pred_masks'].shape[3:])
  v_labels = jnp.tile(targets.labels, (l, 1))
  v_masks = jnp.tile(jnp.swapaxes(targets.masks, 1, 2), (l, 1, 1, 1, 1))  # [LB, N, T, H, W]
  v_valid = jnp.tile(targets.clip_valid, (l, 1))
  v_num = jnp.maximum(jnp.sum(targets.clip_valid).astype(jnp.float32) * l, 1.)
  if not s.vita_deep_supervision:
    v_logits, v_pred = v_logits[-1:], v_pred[-1:]
    video_draws = jax.tree.map(lambda x: x[-1:], video_draws)
  per_layer = lambda lg, pm, dr: set_losses(lg, pm, v_labels, v_masks, v_valid, dr, v_num, s.vita_no_object_weight,
                                            s)
  v_losses, v_match = jax.vmap(per_layer)(v_logits, v_pred, video_draws)

  weights = {'ce': s.class_weight, 'mask': s.mask_weight, 'dice': s.dice_weight}
  losses = _layers({k: v * weights[k] for k, v in f_losses.items()}, '', s.deep_supervision)
  losses.update(_layers({k: v * weights[k] for k, v in v_losses.items()}, 'vita_', s.vita_deep_supervision))
  if s.sim_weight > 0:  # the frame matchings of the frame-decoder layers VITA read (the last L)
    if f_match.shape[0] < l:
      raise ValueError(f'VITA criterion: loss_vita_sim needs the frame matchings of the {l} frame-decoder layers '
                       'VITA reads; set loss.deep_supervision=True or loss.sim_weight=0.')
    frame_match = f_match[-l:].reshape(l, b, t, n)
    sim = similarity_loss(video['pred_fq_embed'], video['pred_cq_embed'][-1], frame_match,
                          v_match[-1].reshape(l, b, n), targets)
    losses['loss_vita_sim'] = sim * s.sim_weight
  total = sum(losses.values())
  return total, losses


def vita_loss(outputs: dict[str, Any], batch: dict[str, jax.Array], *, rng: jax.Array, s: LossSettings,
              size_divisibility: int = 32) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`criterion` on a training batch (docs/INTERFACES.md §1) with points drawn from `rng`."""
  targets = prepare_targets(batch, size_divisibility)
  b, t, n = targets.frame_valid.shape
  lf, d, l = outputs['frame']['pred_logits'].shape[0], *outputs['video']['pred_logits'].shape[:2]
  frame_rng, video_rng = jax.random.split(rng)
  frame_draws = draw_points(frame_rng, lf, b * t, n, 1, s)
  video_draws = draw_points(video_rng, d, l * b, n, t, s)
  return criterion(outputs, targets, frame_draws, video_draws, s)
