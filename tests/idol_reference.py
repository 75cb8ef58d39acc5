"""Straightforward torch (CPU, float64) re-implementation of IDOL's training criterion, for parity tests.

Written from the official VNext `projects/IDOL` code (`matcher.py`, `pos_neg_select.py`, `deformable_detr.py`
SetCriterion, `segmentation_condInst.py` losses, fvcore `giou_loss`) in its own list-of-targets, boolean-indexing
style, so that it shares nothing with the static-shape JAX implementation under test. torchvision ops are replaced
by their formulas. The aux-loss negative sampling is replaced by "all negatives" (tests choose a ratio large
enough for the JAX side to keep all of them too).
"""

import numpy as np
import torch


def cxcywh_to_xyxy(x):
  xc, yc, w, h = x.unbind(-1)
  return torch.stack([xc - 0.5 * w, yc - 0.5 * h, xc + 0.5 * w, yc + 0.5 * h], dim=-1)


def box_iou(b1, b2):
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  lt = torch.max(b1[:, None, :2], b2[:, :2])
  rb = torch.min(b1[:, None, 2:], b2[:, 2:])
  wh = (rb - lt).clamp(min=0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[:, None] + area2 - inter
  return inter / union, union


def generalized_box_iou(b1, b2):
  iou, union = box_iou(b1, b2)
  lt = torch.min(b1[:, None, :2], b2[:, :2])
  rb = torch.max(b1[:, None, 2:], b2[:, 2:])
  wh = (rb - lt).clamp(min=0)
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / (area + 1e-7)


def fvcore_giou_loss(b1, b2, eps=1e-7):
  x1, y1, x2, y2 = b1.unbind(-1)
  x1g, y1g, x2g, y2g = b2.unbind(-1)
  xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
  xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
  intsctk = torch.zeros_like(x1)
  mask = (ykis2 > ykis1) & (xkis2 > xkis1)
  intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
  unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
  iouk = intsctk / (unionk + eps)
  xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
  xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
  area_c = (xc2 - xc1) * (yc2 - yc1)
  return 1 - (iouk - (area_c - unionk) / (area_c + eps))


def in_boxes_info(boxes, gts, stride=32, radius=2.5):
  xy = cxcywh_to_xyxy(gts)
  cx, cy = boxes[:, 0].unsqueeze(1), boxes[:, 1].unsqueeze(1)
  in_box = (cx > xy[:, 0]) & (cx < xy[:, 2]) & (cy > xy[:, 1]) & (cy < xy[:, 3])
  r = radius / stride
  in_ctr = (cx > gts[:, 0] - r) & (cx < gts[:, 0] + r) & (cy > gts[:, 1] - r) & (cy < gts[:, 1] + r)
  return in_box.any(1) | in_ctr.any(1), in_box & in_ctr


def simota_cost(probs, boxes, gt_boxes, labels):
  fg, in_bc = in_boxes_info(boxes, gt_boxes)
  ious, _ = box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
  neg = 0.75 * probs ** 2 * (-(1 - probs + 1e-8).log())
  pos = 0.25 * (1 - probs) ** 2 * (-(probs + 1e-8).log())
  cost = (pos[:, labels] - neg[:, labels]) + 3.0 * -generalized_box_iou(cxcywh_to_xyxy(boxes),
                                                                       cxcywh_to_xyxy(gt_boxes))
  cost = cost + 100.0 * (~in_bc)
  cost[~fg] = cost[~fg] + 10000.0
  return cost, ious


def dynamic_k(cost, ious, k_cand):
  """The official loop; returns (matching matrix, mutated cost)."""
  cost = cost.clone()
  mm = torch.zeros_like(cost)
  topk, _ = torch.topk(ious, min(k_cand, ious.shape[0]), dim=0)
  ks = torch.clamp(topk.sum(0).int(), min=1)
  for g in range(cost.shape[1]):
    _, pos = torch.topk(cost[:, g], k=int(ks[g]), largest=False)
    mm[:, g][pos] = 1.0
  anchor = mm.sum(1)
  if (anchor > 1).sum() > 0:
    _, am = torch.min(cost[anchor > 1], dim=1)
    mm[anchor > 1] *= 0
    mm[anchor > 1, am] = 1
  while (mm.sum(0) == 0).any():
    cost[mm.sum(1) > 0] += 100000.0
    for g in torch.nonzero(mm.sum(0) == 0, as_tuple=False).squeeze(1):
      mm[:, g][torch.argmin(cost[:, g])] = 1.0
    if (mm.sum(1) > 1).sum() > 0:
      _, am = torch.min(cost[anchor > 1], dim=1)
      mm[anchor > 1] *= 0
      mm[anchor > 1, am] = 1
  return mm, cost


def matcher(logits, boxes, targets):
  """Per clip: ((selected_query, gt_indices), matched_query_ids)."""
  indices, matched = [], []
  for b, t in enumerate(targets):
    if len(t['labels']) == 0:
      indices.append((torch.zeros(logits.shape[1], dtype=torch.bool), torch.zeros(0, dtype=torch.long)))
      matched.append(torch.zeros(0, dtype=torch.long))
      continue
    cost, ious = simota_cost(logits[b].sigmoid(), boxes[b], t['boxes'], t['labels'])
    mm, cost = dynamic_k(cost, ious, 10)
    sel = mm.sum(1) > 0
    indices.append((sel, mm[sel].max(1)[1]))
    cost[mm == 0] = cost[mm == 0] + float('inf')
    matched.append(torch.min(cost, dim=0)[1])
  return indices, matched


def focal(x, t, alpha=0.25, gamma=2):
  p = x.sigmoid()
  ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction='none')
  p_t = p * t + (1 - p) * (1 - t)
  return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def layer_losses(logits, boxes, masks, targets, indices):
  """loss_labels / loss_boxes / loss_masks of SetCriterion for one layer (key frame)."""
  num_classes = logits.shape[-1]
  target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.long)
  pred_boxes, tgt_boxes, pred_masks, tgt_masks, n = [], [], [], [], 0
  for b, (sel, gt_idx) in enumerate(indices):
    if len(gt_idx) == 0:
      continue
    target_classes[b, sel] = targets[b]['labels'][gt_idx]
    pred_boxes.append(boxes[b][sel])
    tgt_boxes.append(targets[b]['boxes'][gt_idx])
    pred_masks.append(masks[b][sel])
    tgt_masks.append(targets[b]['masks'][gt_idx])
    n += len(gt_idx)
  num = n if n else 1
  onehot = torch.zeros(logits.shape[0], logits.shape[1], num_classes + 1, dtype=logits.dtype)
  onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
  onehot = onehot[..., :-1]
  out = {'loss_ce': focal(logits, onehot).mean(1).sum() / num * logits.shape[1]}
  if n:
    src, tgt = torch.cat(pred_boxes), torch.cat(tgt_boxes)
    out['loss_bbox'] = (src - tgt).abs().sum() / n
    out['loss_giou'] = fvcore_giou_loss(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)).sum() / n
    sm, tm = torch.cat(pred_masks).flatten(1), torch.cat(tgt_masks).flatten(1)
    out['loss_mask'] = focal(sm, tm).mean(1).sum() / n
    p = sm.sigmoid()
    out['loss_dice'] = (1 - (2 * (p * tm).sum(1) + 1) / (p.sum(-1) + tm.sum(-1) + 1)).sum() / n
  else:
    out.update({k: logits.sum() * 0 for k in ('loss_bbox', 'loss_giou', 'loss_mask', 'loss_dice')})
  return out


def reid_losses(embeds_key, embeds_ref, logits_ref, boxes_ref, matched, ref_targets):
  """select_pos_neg + loss_reid with every negative kept for the aux loss."""
  items = []
  for b, t in enumerate(ref_targets):
    valid = t['valid']
    if valid.sum() == 0:
      continue
    cost, ious = simota_cost(logits_ref[b].sigmoid(), boxes_ref[b], t['boxes'][valid], t['labels'][valid])
    pos_mm, _ = dynamic_k(cost, ious, 10)
    neg_mm, _ = dynamic_k(cost, ious, 100)
    vi = 0
    for i in range(len(valid)):
      if not valid[i]:
        continue
      pos_e = embeds_ref[b][pos_mm[:, vi] > 0]
      neg_e = embeds_ref[b][~(neg_mm[:, vi] > 0)]
      vi += 1
      key = embeds_key[b, matched[b][i]].unsqueeze(0)
      emb = torch.cat([pos_e, neg_e])
      label = torch.cat([torch.ones(len(pos_e)), torch.zeros(len(neg_e))]).unsqueeze(0)
      pred = torch.einsum('nc,kc->nk', emb, key).permute(1, 0)
      pos_i, neg_i = label == 1, label == 0
      pp = torch.where(neg_i, pred * pos_i + float('inf'), pred * pos_i)
      pn = torch.where(pos_i, pred * neg_i + float('-inf'), pred * neg_i)
      x = torch.nn.functional.pad(pn.repeat(1, pred.shape[1]) - torch.repeat_interleave(pp, pred.shape[1], 1),
                                  (0, 1), 'constant', 0)
      contrast = torch.logsumexp(x, dim=1)
      cos = torch.einsum('nc,kc->nk', torch.nn.functional.normalize(emb, dim=1),
                         torch.nn.functional.normalize(key, dim=1)).permute(1, 0)
      aux = ((cos - label) ** 2).mean()
      items.append((contrast, aux))
  if not items:
    return {'loss_reid': torch.zeros(()), 'loss_reid_aux': torch.zeros(())}
  return {'loss_reid': sum(c.sum() for c, _ in items) / len(items),
          'loss_reid_aux': sum(a for _, a in items) / len(items)}


WEIGHTS = {'loss_ce': 2., 'loss_bbox': 5., 'loss_giou': 2., 'loss_mask': 2., 'loss_dice': 5., 'loss_reid': 2.,
           'loss_reid_aux': 3.}


def idol_reference_loss(outputs, batch):
  """Weighted loss dict, official style, for numpy `outputs` (INTERFACES §4) and a numpy batch (§1)."""
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)
  logits, boxes, masks = t(outputs['pred_logits']), t(outputs['pred_boxes']), t(outputs['pred_masks'])
  embeds = t(outputs['pred_embeds'])
  num_layers = logits.shape[0]
  det_targets, ref_targets = [], []
  for b in range(batch['labels'].shape[0]):
    keep = np.asarray(batch['instance_valid'][b] & batch['present'][b, 0] & ~batch['is_crowd'][b])
    gm = batch['masks'][b, 0][keep][:, 2::4, 2::4]  # frames are already a multiple of 32
    det_targets.append({'labels': torch.tensor(batch['labels'][b][keep], dtype=torch.long),
                        'boxes': t(batch['boxes'][b, 0][keep]), 'masks': t(gm)})
    ref_targets.append({'labels': torch.tensor(batch['labels'][b][keep], dtype=torch.long),
                        'boxes': t(batch['boxes'][b, 1][keep]),
                        'valid': torch.tensor(np.asarray(batch['present'][b, 1][keep]))})
  losses = {}
  matched = None
  for layer in range(num_layers):
    indices, matched = matcher(logits[layer, 0::2], boxes[layer, 0::2], det_targets)
    suffix = '' if layer == num_layers - 1 else f'_{layer}'
    for k, v in layer_losses(logits[layer, 0::2], boxes[layer, 0::2], masks[layer, 0::2], det_targets,
                             indices).items():
      losses[k + suffix] = v * WEIGHTS[k]
  for k, v in reid_losses(embeds[0::2], embeds[1::2], logits[-1, 1::2], boxes[-1, 1::2], matched,
                          ref_targets).items():
    losses[k] = v * WEIGHTS[k]
  return {k: float(v) for k, v in losses.items()}


# ----------------------------------------------------------------------------------------------------------------
# Tracker + video-level inference (tracker.py IDOL_Tracker, idol.py IDOL.inference), official style.
# ----------------------------------------------------------------------------------------------------------------


def _ref_mask_iou(m1, m2):
  m1, m2 = m1.char(), m2.char()
  inter = (m1 * m2).sum(-1).sum(-1)
  union = (m1 + m2 - m1 * m2).sum(-1).sum(-1)
  return (inter + 1e-6) / (union + 1e-6)


def _ref_mask_nms(seg_masks, nms_thr):
  n = len(seg_masks)
  keep = [True] * n
  seg_masks = seg_masks.sigmoid() > 0.5
  for i in range(n - 1):
    if not keep[i]:
      continue
    for j in range(i + 1, n):
      if keep[j] and _ref_mask_iou(seg_masks[i], seg_masks[j])[0] > nms_thr:
        keep[j] = False
  return keep


class ReferenceTracker:
  """IDOL_Tracker with the arguments idol.py passes (bisoftmax, long_match, frame and temporal weights)."""

  def __init__(self, nms_thr_pre=0.5, addnew_score_thr=0.2, init_score_thr=0.2, memo_tracklet_frames=10,
               memory_len=3, match_score_thr=0.5, nms_thr_post=0.05):
    self.nms_thr_pre, self.addnew_score_thr, self.init_score_thr = nms_thr_pre, addnew_score_thr, init_score_thr
    self.memo_tracklet_frames, self.memory_len = memo_tracklet_frames, memory_len
    self.match_score_thr, self.nms_thr_post = match_score_thr, nms_thr_post
    self.num_tracklets = 0
    self.tracklets = {}

  def memo(self):
    embeds, ids, exist = [], [], []
    for k, v in self.tracklets.items():
      weights = torch.stack(v['long_score'])
      weights = weights + torch.arange(1, len(weights) + 1, dtype=weights.dtype) / len(weights)
      embeds.append(((torch.stack(v['long_embed']) * weights.unsqueeze(1)).sum(0) / weights.sum())[None])
      ids.append(k)
      exist.append(v['exist_frame'])
    return torch.cat(embeds), torch.tensor(ids, dtype=torch.long), torch.tensor(exist, dtype=torch.long)

  def update_memo(self, ids, bboxes, embeds, frame_id):
    for tid, bbox, embed in zip(ids[ids > -1], bboxes[ids > -1], embeds[ids > -1]):
      tid = int(tid)
      if tid in self.tracklets:
        t = self.tracklets[tid]
        t['long_score'].append(bbox[-1])
        t['long_embed'].append(embed)
        t['last_frame'] = frame_id
        t['exist_frame'] += 1
      else:
        self.tracklets[tid] = dict(long_embed=[embed], long_score=[bbox[-1]], last_frame=frame_id, exist_frame=1)
    invalid = []
    for k, v in self.tracklets.items():
      if frame_id - v['last_frame'] >= self.memo_tracklet_frames:
        invalid.append(k)
      if len(v['long_embed']) > self.memory_len:
        v['long_embed'].pop(0)
      if len(v['long_score']) > self.memory_len:
        v['long_score'].pop(0)
    for k in invalid:
      self.tracklets.pop(k)

  def match(self, bboxes, masks, embeds, frame_id, indices):
    valids = _ref_mask_nms(masks, self.nms_thr_pre)
    indices = torch.tensor(indices)[valids].tolist()
    bboxes, masks, embeds = bboxes[valids, :], masks[valids], embeds[valids, :]
    ids = torch.full((bboxes.size(0),), -2, dtype=torch.long)
    if bboxes.size(0) > 0 and self.tracklets:
      memo_embeds, memo_ids, memo_exist = self.memo()
      memo_exist = memo_exist.to(memo_embeds)
      feats = torch.mm(embeds, memo_embeds.t())
      scores = (feats.softmax(dim=1) + feats.softmax(dim=0)) / 2
      for i in range(bboxes.size(0)):
        non_backs = (memo_ids > -1) & (scores[i, :] > 0.5)
        if (scores[i, non_backs] > 0.5).sum() > 1:
          weighted = scores.clone()
          frame_weight = memo_exist[scores[i, :][memo_ids > -1] > 0.5]
          weighted[i, non_backs] = weighted[i, non_backs] * frame_weight
          weighted[i, ~non_backs] = weighted[i, ~non_backs] * frame_weight.mean()
          conf, memo_ind = torch.max(weighted[i, :], dim=0)
        else:
          conf, memo_ind = torch.max(scores[i, :], dim=0)
        tid = memo_ids[memo_ind]
        if conf > self.match_score_thr and tid > -1:
          ids[i] = tid
          scores[:i, memo_ind] = 0
          scores[i + 1:, memo_ind] = 0
      thr = self.addnew_score_thr
    elif self.tracklets:
      return bboxes, ids, indices
    else:
      thr = self.init_score_thr
    new = (ids == -2) & (bboxes[:, 4] > thr)
    ids[new] = torch.arange(self.num_tracklets, self.num_tracklets + int(new.sum()), dtype=torch.long)
    self.num_tracklets += int(new.sum())
    unselected = torch.nonzero(ids == -2, as_tuple=False).squeeze(1)
    ious = _ref_mask_iou(masks[unselected].sigmoid() > 0.5, masks.permute(1, 0, 2, 3).sigmoid() > 0.5)
    for i, ind in enumerate(unselected):
      if (ious[i, :ind] < self.nms_thr_post).all():
        ids[ind] = -1
    self.update_memo(ids, bboxes, embeds, frame_id)
    return bboxes, ids, indices


def reference_video_inference(frames, tracker, multi_cls=True, apply_cls_thres=0.05):
  """IDOL.inference on recorded per-frame detections.

  `frames`: list of dicts with `indices` (query ids in detection order), `boxes [n, 4]`, `probs [n, C]` (full
  sigmoid vectors), `masks [n, h, w]` logits, `embeds [n, E]`.
  Returns (per-frame tracker ids, list of (score, label, [bool present per frame])).
  """
  video = {}
  frame_ids = []
  for i_frame, f in enumerate(frames):
    probs = torch.tensor(f['probs'])
    box_score = probs.max(1)[0]
    det_bboxes = torch.cat([torch.tensor(f['boxes']), box_score.unsqueeze(1)], dim=1)
    _, ids, indices = tracker.match(det_bboxes, torch.tensor(f['masks'])[:, None], torch.tensor(f['embeds']),
                                    i_frame, list(range(len(probs))))
    frame_ids.append(ids.clone())
    indices = torch.tensor(indices)[ids > -1].tolist()
    for k, tid in zip(indices, ids[ids > -1].tolist()):
      if tid not in video:
        video[tid] = {'masks': [None] * i_frame, 'scores': [None] * i_frame, 'valid': 0}
      video[tid]['masks'].append(True)
      video[tid]['scores'].append(probs[k])
      video[tid]['valid'] += 1
    for v in video.values():
      if len(v['masks']) < i_frame + 1:
        v['masks'].append(None)
        v['scores'].append(None)
    if i_frame > 8:
      for k in [k for k, v in video.items() if v['masks'][-1] is None and v['masks'][-2] is None and v['valid'] < 3]:
        video.pop(k)
  outputs = []
  for v in video.values():
    mean = torch.stack([s for s in v['scores'] if s is not None]).mean(0)
    present = [m is not None for m in v['masks']]
    if multi_cls:
      outputs.extend((float(mean[c]), int(c), present) for c in torch.nonzero(mean > apply_cls_thres)[:, 0])
    else:
      outputs.append((float(mean.max()), int(mean.argmax()), present))
  return frame_ids, outputs
