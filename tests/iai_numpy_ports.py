"""NumPy (float64) ports of official IAI training code (zfonemore/IAI `IAICondInstHead`), shared by the FCOS
and IAI criterion tests. Written loop by loop as the official torch code; never imports visjax."""

import numpy as np

INF = 1e8


def official_fcos_targets(points, strides_per_lvl, num_points_per_lvl, regress_ranges, gt_bboxes, gt_labels, gt_ids,
                          gt_masks, num_classes, max_obj_num, radius=1.5):
  """NumPy port of IAICondInstHead._get_targets_single (center_sampling=True)."""
  num_points, num_gts = len(points), len(gt_labels)
  areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
  areas = np.repeat(areas[None], num_points, 0)
  rr = np.broadcast_to(regress_ranges[:, None, :], (num_points, num_gts, 2))
  gb = np.broadcast_to(gt_bboxes[None], (num_points, num_gts, 4))
  xs = np.broadcast_to(points[:, 0:1], (num_points, num_gts))
  ys = np.broadcast_to(points[:, 1:2], (num_points, num_gts))
  bbox_targets = np.stack((xs - gb[..., 0], ys - gb[..., 1], gb[..., 2] - xs, gb[..., 3] - ys), -1)
  _, h, w = gt_masks.shape
  m00 = np.maximum(gt_masks.sum((-1, -2)), 1e-6)
  cx = (gt_masks * np.arange(w)).sum((-1, -2)) / m00
  cy = (gt_masks * np.arange(h)[:, None]).sum((-1, -2)) / m00
  cx, cy = np.broadcast_to(cx[None], (num_points, num_gts)), np.broadcast_to(cy[None], (num_points, num_gts))
  stride = np.zeros((num_points, num_gts))
  begin = 0
  for lvl, n in enumerate(num_points_per_lvl):
    stride[begin:begin + n] = strides_per_lvl[lvl] * radius
    begin += n
  cg = np.zeros_like(gb)
  cg[..., 0] = np.where(cx - stride > gb[..., 0], cx - stride, gb[..., 0])
  cg[..., 1] = np.where(cy - stride > gb[..., 1], cy - stride, gb[..., 1])
  cg[..., 2] = np.where(cx + stride > gb[..., 2], gb[..., 2], cx + stride)
  cg[..., 3] = np.where(cy + stride > gb[..., 3], gb[..., 3], cy + stride)
  inside = np.stack((xs - cg[..., 0], ys - cg[..., 1], cg[..., 2] - xs, cg[..., 3] - ys), -1).min(-1) > 0
  md = bbox_targets.max(-1)
  in_range = (md >= rr[..., 0]) & (md <= rr[..., 1])
  areas = areas.copy()
  areas[~inside] = INF
  areas[~in_range] = INF
  min_area, inds = areas.min(1), areas.argmin(1)
  labels = gt_labels[inds].copy()
  labels[min_area == INF] = num_classes
  ids = gt_ids[inds].copy()
  ids[min_area == INF] = max_obj_num
  return labels, ids, bbox_targets[np.arange(num_points), inds], inds


def _focal(logits, labels, num_classes, alpha=0.25, gamma=2.0):
  """mmdet py_sigmoid_focal_loss summed; labels == num_classes is background (all-zero target)."""
  target = np.eye(num_classes + 1)[labels][:, :num_classes]
  p = 1 / (1 + np.exp(-logits))
  pt = (1 - p) * target + p * (1 - target)
  weight = (alpha * target + (1 - alpha) * (1 - target)) * pt ** gamma
  bce = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
  return (bce * weight).sum()


def _giou_loss(pred, target, eps=1e-6):
  """mmdet GIoULoss elementwise: bbox_overlaps(mode='giou', is_aligned=True)."""
  area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
  area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
  lt, rb = np.maximum(pred[:, :2], target[:, :2]), np.minimum(pred[:, 2:], target[:, 2:])
  wh = np.clip(rb - lt, 0, None)
  overlap = wh[:, 0] * wh[:, 1]
  union = np.maximum(area1 + area2 - overlap, eps)
  ious = overlap / union
  elt, erb = np.minimum(pred[:, :2], target[:, :2]), np.maximum(pred[:, 2:], target[:, 2:])
  ewh = np.clip(erb - elt, 0, None)
  enclose = np.maximum(ewh[:, 0] * ewh[:, 1], eps)
  return 1 - (ious - (enclose - union) / enclose)


def official_frame_loss(outs, gts, points, strides, level_sizes, strides_per_lvl, regress_ranges, num_classes,
                        max_obj_num, mask_probs):
  """IAICondInstHead.loss on one frame of B images.

  outs: per image dict of flattened `cls [P, C]`, `id [P, O]`, `ltrb [P, 4]`, `ctr [P]`, `kernels [P, 169]`,
  `mask_feat`; gts: per image dict `boxes [n, 4]`, `labels [n]`, `ids [n]`, `masks [n, Hp, Wp]`;
  mask_probs(mask_feat, points, strides, kernels) -> [K, Hp/4, Wp/4] (`aligned_bilinear(logits, 2).sigmoid()`).
  """
  labels, ids, bbox_t, gt_inds = [], [], [], []
  for g in gts:
    lab, i, bt, gi = official_fcos_targets(points, strides_per_lvl, level_sizes, regress_ranges, g['boxes'],
                                           g['labels'], g['ids'], g['masks'], num_classes, max_obj_num)
    labels.append(lab), ids.append(i), bbox_t.append(bt), gt_inds.append(gi)
  # (the official code concatenates level-major over images; sums are order independent)
  flat_labels, flat_ids = np.concatenate(labels), np.concatenate(ids)
  cls, idl = np.concatenate([o['cls'] for o in outs]), np.concatenate([o['id'] for o in outs])
  ltrb, ctr = np.concatenate([o['ltrb'] for o in outs]), np.concatenate([o['ctr'] for o in outs])
  tgt, pts = np.concatenate(bbox_t), np.concatenate([points] * len(outs))
  pos = np.nonzero((flat_labels >= 0) & (flat_labels < num_classes))[0]
  num_pos = max(float(len(pos)), 1.0)
  loss = dict(loss_cls=_focal(cls, flat_labels, num_classes) / num_pos,
              loss_id=_focal(idl, flat_ids, max_obj_num) / num_pos)
  if len(pos):
    t = tgt[pos]
    lr, tb = t[:, [0, 2]], t[:, [1, 3]]
    ctr_t = np.sqrt(lr.min(-1) / lr.max(-1) * (tb.min(-1) / tb.max(-1)))
    decode = lambda p, d: np.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], -1)
    giou = _giou_loss(decode(pts[pos], ltrb[pos]), decode(pts[pos], t))
    loss['loss_bbox'] = (giou * ctr_t).sum() / max(ctr_t.sum(), 1e-6)
    x = ctr[pos]
    loss['loss_centerness'] = (np.maximum(x, 0) - x * ctr_t + np.log1p(np.exp(-np.abs(x)))).sum() / num_pos
  else:
    loss['loss_bbox'] = loss['loss_centerness'] = 0.
  loss_mask, num_mask = 0., 0
  for o, g, lab, gi in zip(outs, gts, labels, gt_inds):
    p = np.nonzero((lab >= 0) & (lab < num_classes))[0]
    if not len(p):
      continue
    probs = mask_probs(o['mask_feat'], points[p], strides[p], o['kernels'][p])
    gt = (g['masks'][:, 2::4, 2::4] > 0.5).astype(np.float64)[gi[p]]  # pot_gt_inds
    probs = probs.reshape(len(p), -1)
    gt = gt.reshape(len(p), -1)
    loss_mask += (1 - 2 * (probs * gt).sum(1) / ((probs ** 2).sum(1) + (gt ** 2).sum(1) + 1e-5)).sum()
    num_mask += len(p)
  loss['loss_mask'] = loss_mask / num_mask if num_mask else 0.
  return loss
