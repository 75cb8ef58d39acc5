"""Torch CPU port of VITA's training losses, for parity tests: `Vita.prepare_targets`, Mask2Former's
`HungarianMatcher` / `SetCriterion` (VITA's copy, returning the last `vita_last_layer_num` matchings) and
`VitaHungarianMatcher` / `VitaSetCriterion` (sukjunhwang/VITA `vita/vita_model.py`, `mask2former/modeling/
{matcher,criterion}.py`, `vita/modeling/vita_{matcher,criterion}.py`), written from the official behaviour.

The only change: the random draws (`torch.rand` of the matchers, the uniform candidates and random points of
`get_uncertain_point_coords_with_randomness`) are read from given arrays indexed by (layer, entry, target slot,
frame), so a test can feed the same points to visjax's criterion. Matching uses scipy's `linear_sum_assignment`.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def point_sample(x, coords):
  """detectron2 `point_sample(x [N, C, H, W], coords [N, P, 2], align_corners=False)` -> `[N, C, P]`."""
  return F.grid_sample(x, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def uncertain_coords(src, over, extra, num_uncertain):
  """`get_uncertain_point_coords_with_randomness(src [M, 1, h, w], -abs, ...)` with the draws given."""
  m, s = over.shape[:2]
  unc = -torch.abs(point_sample(src, over))
  idx = torch.topk(unc[:, 0, :], k=num_uncertain, dim=1)[1] + s * torch.arange(m)[:, None]
  picked = over.view(-1, 2)[idx.view(-1), :].view(m, num_uncertain, 2)
  return torch.cat([picked, extra], dim=1)


def batch_dice_loss(inputs, targets):
  inputs = inputs.sigmoid().flatten(1)
  numerator = 2 * torch.einsum('nc,mc->nm', inputs, targets)
  denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
  return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_loss(inputs, targets):
  hw = inputs.shape[1]
  pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction='none')
  neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction='none')
  return (torch.einsum('nc,mc->nm', pos, targets) + torch.einsum('nc,mc->nm', neg, 1 - targets)) / hw


def dice_loss(inputs, targets, num_masks):
  inputs = inputs.sigmoid().flatten(1)
  loss = 1 - (2 * (inputs * targets).sum(-1) + 1) / (inputs.sum(-1) + targets.sum(-1) + 1)
  return loss.sum() / num_masks


def sigmoid_ce_loss(inputs, targets, num_masks):
  return F.binary_cross_entropy_with_logits(inputs, targets, reduction='none').mean(1).sum() / num_masks


def prepare_targets(masks, present, labels, track_ids, instance_valid):
  """`Vita.prepare_targets` from batch arrays (masks `[B, T, N, Hp, Wp]` already in the padded frame).

  Returns frame targets (B*T dicts), clip targets (B dicts) and, per target list, its slot indices (for the draws).
  """
  frame_targets, clip_targets, frame_slots, clip_slots = [], [], [], []
  b, t, n = present.shape
  for i in range(b):
    slots = np.nonzero(instance_valid[i])[0]
    m = torch.from_numpy(masks[i][:, slots].transpose(1, 0, 2, 3).astype(bool))  # [n, T, H, W]
    cls = torch.from_numpy(labels[i][slots].astype(np.int64))
    ids = torch.from_numpy(np.repeat(track_ids[i][slots][:, None], t, 1).astype(np.int64))
    ids[m.sum(dim=(2, 3)) == 0] = -1
    valid_frame = ids != -1
    valid_clip = valid_frame.any(dim=-1)
    cls, ids, m, valid_frame = cls[valid_clip], ids[valid_clip], m[valid_clip].float(), valid_frame[valid_clip]
    slots = slots[valid_clip.numpy()]
    if len(ids) > 0:
      ids[valid_frame] -= max(ids[valid_frame].min(), 0)
    clip_targets.append({'labels': cls, 'ids': ids, 'masks': m})
    clip_slots.append(slots)
    for f in range(t):
      valid = ids[:, f] != -1
      frame_targets.append({'labels': cls[valid], 'ids': ids[:, f][valid], 'masks': m[:, f][valid]})
      frame_slots.append(slots[valid.numpy()])
  return frame_targets, clip_targets, frame_slots, clip_slots


def _src_idx(indices):
  return (torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]),
          torch.cat([src for src, _ in indices]))


class Criteria:
  """Both criteria with the official weights (CLASS 2, MASK 5, DICE 5, no-object 0.1, SIM 0.5)."""

  def __init__(self, num_classes, num_points, draws, oversample_ratio=3.0, importance_sample_ratio=0.75,
               last_layer_num=3, weights=(2.0, 5.0, 5.0), eos_coef=0.1, sim_weight=0.5):
    self.num_classes, self.num_points = num_classes, num_points
    self.num_uncertain = int(importance_sample_ratio * num_points)
    self.draws = {k: torch.from_numpy(np.asarray(v)) for k, v in draws.items()}
    self.last_layer_num = last_layer_num
    self.cost_class, self.cost_mask, self.cost_dice = weights
    self.eos_coef, self.sim_weight = eos_coef, sim_weight
    self.empty_weight = torch.ones(num_classes + 1)
    self.empty_weight[-1] = eos_coef

  # ---- frame level (Mask2Former) ----
  def frame_matcher(self, logits, masks, targets, layer):
    indices = []
    for b in range(logits.shape[0]):
      out_prob = logits[b].softmax(-1)
      cost_class = -out_prob[:, targets[b]['labels']]
      out_mask, tgt_mask = masks[b][:, None], targets[b]['masks'][:, None]
      point_coords = self.draws['frame_match'][layer, b][None]
      tgt = point_sample(tgt_mask, point_coords.repeat(tgt_mask.shape[0], 1, 1)).squeeze(1)
      out = point_sample(out_mask, point_coords.repeat(out_mask.shape[0], 1, 1)).squeeze(1)
      c = (self.cost_mask * batch_sigmoid_ce_loss(out, tgt) + self.cost_class * cost_class
           + self.cost_dice * batch_dice_loss(out, tgt))
      indices.append(linear_sum_assignment(c.reshape(logits.shape[1], -1).numpy()))
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]

  def labels_loss(self, logits, targets, indices):
    idx = _src_idx(indices)
    target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64)
    target_classes[idx] = torch.cat([t['labels'][j] for t, (_, j) in zip(targets, indices)])
    return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)

  def point_coords(self, src, key, layer, indices, slots, frames):
    """Per matched (entry, target j, frame) the given draws of that target's slot."""
    over, extra = [], []
    for e, (_, j) in enumerate(indices):
      for jj in j.tolist():
        for f in range(frames):
          over.append(self.draws[f'{key}_over'][layer, e, slots[e % len(slots)][jj], f])
          extra.append(self.draws[f'{key}_extra'][layer, e, slots[e % len(slots)][jj], f])
    return uncertain_coords(src, torch.stack(over), torch.stack(extra), self.num_uncertain)

  def frame_masks_loss(self, masks, targets, indices, num_masks, layer, slots):
    src_masks = masks[_src_idx(indices)][:, None]
    target_masks = torch.cat([t['masks'][j] for t, (_, j) in zip(targets, indices)])[:, None]
    coords = self.point_coords(src_masks, 'frame', layer, indices, slots, 1)
    labels = point_sample(target_masks, coords).squeeze(1)
    logits = point_sample(src_masks, coords).squeeze(1)
    return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

  def frame_criterion(self, pred_logits, pred_masks, targets, slots):
    num_masks = max(float(sum(len(t['labels']) for t in targets)), 1.)
    losses, fg_indices = {}, []
    last = pred_logits.shape[0] - 1
    for layer in list(range(last)) + [last]:
      indices = self.frame_matcher(pred_logits[layer], pred_masks[layer], targets, layer)
      suffix = '' if layer == last else f'_{layer}'
      losses['loss_ce' + suffix] = self.labels_loss(pred_logits[layer], targets, indices)
      losses['loss_mask' + suffix], losses['loss_dice' + suffix] = self.frame_masks_loss(
          pred_masks[layer], targets, indices, num_masks, layer, slots)
      fg_indices.append(indices)
    return losses, fg_indices[-self.last_layer_num:]

  # ---- video level (VITA) ----
  def vita_matcher(self, logits, masks, targets, layer):
    l, b, cq, t, h, w = masks.shape
    out_prob = logits.softmax(-1).reshape(l * b, cq, -1)
    out_mask = masks.reshape(l * b, cq, t, h, w)
    targets = targets * l
    indices = []
    for e in range(l * b):
      cost_class = -out_prob[e][:, targets[e]['labels']]
      tgt_mask = targets[e]['masks']
      point_coords = self.draws['video_match'][layer, e][None]
      tgt = point_sample(tgt_mask, point_coords.repeat(tgt_mask.shape[0], 1, 1)).flatten(1)
      out = point_sample(out_mask[e], point_coords.repeat(cq, 1, 1)).flatten(1)
      c = (self.cost_mask * batch_sigmoid_ce_loss(out, tgt) + self.cost_class * cost_class
           + self.cost_dice * batch_dice_loss(out, tgt))
      indices.append(linear_sum_assignment(c.reshape(cq, -1).numpy()))
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]

  def vita_labels_loss(self, logits, targets, indices):
    l, b, cq, _ = logits.shape
    return self.labels_loss(logits.reshape(l * b, cq, -1), targets * l, indices)

  def vita_masks_loss(self, masks, targets, indices, num_masks, layer, slots):
    idx = _src_idx(indices)
    l, b, cq, t, h, w = masks.shape
    src_masks = masks.reshape(l * b, cq, t, h, w)[idx]
    target_masks = torch.cat([tg['masks'][i] for tg, (_, i) in zip(targets * l, indices)])
    src_masks = src_masks.flatten(0, 1)[:, None]
    target_masks = target_masks.flatten(0, 1)[:, None]
    coords = self.point_coords(src_masks, 'video', layer, indices, slots, t)
    labels = point_sample(target_masks, coords).squeeze(1)
    logits = point_sample(src_masks, coords).squeeze(1)
    logits = logits.view(len(idx[0]), t * self.num_points)
    labels = labels.view(len(idx[0]), t * self.num_points)
    return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

  def fg_sim_loss(self, fq_embed, cq_embed, clip_targets, frame_targets, clip_indices, frame_indices):
    l, b, t, fq, c = fq_embed.shape
    src_fq = fq_embed.flatten(0, 2)
    frame_indices = sum(frame_indices, [])
    frame_src_idx = _src_idx(frame_indices)
    src_fq = src_fq[frame_src_idx]
    frame_ids = torch.cat([tg['ids'][j] for tg, (_, j) in zip(frame_targets * l, frame_indices)])
    frame_batch_idx = torch.div(frame_src_idx[0], t, rounding_mode='floor')
    valid = frame_ids != -1
    frame_ids = frame_ids + frame_batch_idx * 1000
    src_cq = cq_embed.flatten(0, 1)
    clip_src_idx = _src_idx(clip_indices)
    src_cq = src_cq[clip_src_idx]
    clip_ids = torch.cat([tg['ids'][j] for tg, (_, j) in zip(clip_targets * l, clip_indices)]).amax(dim=1)
    clip_batch_idx = clip_src_idx[0]
    clip_valid = clip_ids != -1
    clip_ids = clip_ids + clip_batch_idx * 1000
    q = torch.cat([src_fq[valid], src_cq[clip_valid]])
    ids = torch.cat([frame_ids[valid], clip_ids[clip_valid]])
    batch = torch.cat([frame_batch_idx[valid], clip_batch_idx[clip_valid]])
    logits = q @ q.T
    tgt = (ids[:, None] == ids[None]).float()
    same = (batch[:, None] == batch[None]).float()
    loss = F.binary_cross_entropy_with_logits(logits, tgt, reduction='none') * same
    return loss.sum() / (same.sum() + 1e-6)

  def vita_criterion(self, video, clip_targets, frame_targets, fg_indices, slots):
    d, l = video['pred_logits'].shape[:2]
    num_masks = max(float(sum(len(t['labels']) for t in clip_targets) * l), 1.)
    losses = {}
    for layer in [d - 1] + list(range(d - 1)):
      indices = self.vita_matcher(video['pred_logits'][layer], video['pred_masks'][layer], clip_targets, layer)
      suffix = '' if layer == d - 1 else f'_{layer}'
      losses['loss_vita_ce' + suffix] = self.vita_labels_loss(video['pred_logits'][layer], clip_targets, indices)
      losses['loss_vita_mask' + suffix], losses['loss_vita_dice' + suffix] = self.vita_masks_loss(
          video['pred_masks'][layer], clip_targets, indices, num_masks, layer, slots)
      if layer == d - 1:
        losses['loss_vita_sim'] = self.fg_sim_loss(video['pred_fq_embed'], video['pred_cq_embed'][layer],
                                                   clip_targets, frame_targets, indices, fg_indices)
    return losses

  def __call__(self, frame, video, batch):
    """Weighted losses as `Vita.train_model` returns them."""
    frame_targets, clip_targets, frame_slots, clip_slots = prepare_targets(**batch)
    losses, fg_indices = self.frame_criterion(frame['pred_logits'], frame['pred_masks'], frame_targets, frame_slots)
    losses.update(self.vita_criterion(video, clip_targets, frame_targets, fg_indices, clip_slots))
    weights = {'ce': self.cost_class, 'mask': self.cost_mask, 'dice': self.cost_dice, 'sim': self.sim_weight}
    return {k: v * weights[k.split('_')[-1] if not k.split('_')[-1].isdigit() else k.split('_')[-2]]
            for k, v in losses.items()}
