"""IAI host-side inference against a NumPy port of the official `get_results` / `_get_results_single` /
`multiclass_nms` / `simple_test` logic on a recorded sequence of head outputs (identical ids, masks, class tables,
memory decisions and video records), mmcv NMS, and mask upsampling against torch. The predictor on a real model is
tested in test_iai_method.
"""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from visjax.inference import nms as nms_lib
from visjax.inference import tracks as tracks_lib
from visjax.models.iai import model as iai_model
from visjax.models.iai import tracker

O, C = 6, 5  # max_obj 6: the id cap (4) is reached in the recorded sequence
HP, WP = 64, 96
META = tracker.FrameMeta(img_shape=(60, 90), pad_shape=(HP, WP), ori_shape=(120, 180), scale_factor=(0.5, 0.5))
CFG = tracker.TrackerSettings(nms_pre=20, cls_score_thr=0.1, id_score_thr=0.1, nms_iou_thr=0.5, max_per_img=6,
                              mask_keep_ratio=0.1, video_score_thr=0.05, memory_capacity=8)
NUM_FRAMES = 7


def _points():
  points, strides, level = iai_model.fcos_point_table(HP, WP)
  return points, strides, np.bincount(level)


def _sequence(num_frames=NUM_FRAMES, seed=0):
  """Random head outputs with ~10 plausible detections per frame (objects drifting, appearing, overlapping)."""
  rng = np.random.default_rng(seed)
  points, strides, _ = _points()
  n = len(points)
  frames = []
  for t in range(num_frames):
    cls = rng.normal(-5, 1, (n, C)).astype(np.float32)
    ids = rng.normal(-5, 1, (n, O)).astype(np.float32)
    # Frames 3-5: two confident detections of the first two ids and no "new" evidence (matched, no new instance).
    num_hot, id_range = (2, 2) if t in (3, 4, 5) else (40, O)
    hot = rng.choice(n, num_hot, replace=False)
    cls[hot, rng.integers(0, C, num_hot)] = rng.normal(1, 1.5, num_hot)
    ids[hot, rng.permutation(id_range)[:num_hot] if num_hot == 2 else rng.integers(0, O, num_hot)] = 3.
    frames.append(dict(cls_logits=cls, id_logits=ids, centerness_logits=rng.normal(0, 1, n).astype(np.float32),
                       bbox_ltrb=(rng.uniform(2, 30, (n, 4)) * (strides[:, None] / 8) ** 0.5).astype(np.float32)))
  return frames


def _mask_probs(inds):
  """Deterministic stride-4 mask probabilities of detections (discs around the point, radius from its index)."""
  points, _, _ = _points()
  ys, xs = np.meshgrid(np.arange(HP // 4) * 4 + 2, np.arange(WP // 4) * 4 + 2, indexing='ij')
  out = []
  for i in inds:
    r = 6 + (i * 7) % 20
    d = np.hypot(xs - points[i, 0], ys - points[i, 1])
    out.append((1 / (1 + np.exp((d - r) / 3))).astype(np.float32))
  return np.asarray(out, np.float32).reshape(len(inds), HP // 4, WP // 4)


# ------------------------------------------------------------------------------ NumPy port of the official code


def _sig(x):
  return 1 / (1 + np.exp(-x.astype(np.float32)))


def _official_nms(boxes, scores, thr):
  """mmcv batched_nms (one class: boxes offset by max + 1) + CPU nms: suppress at IoU >= thr."""
  boxes = boxes + (boxes.max() + 1)
  order = list(np.argsort(-scores, kind='stable'))
  keep = []
  while order:
    i = order.pop(0)
    keep.append(i)
    rest = []
    for j in order:
      xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
      xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
      inter = max(np.float32(0), xx2 - xx1) * max(np.float32(0), yy2 - yy1)
      a_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
      a_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
      if inter / (a_i + a_j - inter) < thr:
        rest.append(j)
    order = rest
  return np.asarray(keep, np.int64)


class OfficialPort:
  """IAICondInstHead.get_results + IAICondInst.simple_test bookkeeping, written loop by loop as the official code."""

  def __init__(self):
    self.curr_inst_id = 0
    self.frame_step, self.last_mem_step = 0, -1
    self.cls_scores_list, self.encode_masks, self.long_adds = [], [[] for _ in range(O)], []

  def frame(self, out, is_first):
    points, strides, sizes = _points()
    mlvl = {k: [] for k in ('bboxes', 'scores', 'ids', 'ctr', 'inds')}
    start = 0
    for n in sizes:
      idx = np.arange(start, start + n)
      start += n
      scores, ids = _sig(out['cls_logits'][idx]), _sig(out['id_logits'][idx])
      ctr, pred = _sig(out['centerness_logits'][idx]), out['bbox_ltrb'][idx]
      if n > CFG.nms_pre:
        top = np.argsort(-(scores * ctr[:, None]).max(1), kind='stable')[:CFG.nms_pre]
        idx, scores, ids, ctr, pred = idx[top], scores[top], ids[top], ctr[top], pred[top]
      p = points[idx]
      b = np.stack([p[:, 0] - pred[:, 0], p[:, 1] - pred[:, 1], p[:, 0] + pred[:, 2], p[:, 1] + pred[:, 3]], -1)
      b[:, 0::2] = np.clip(b[:, 0::2], 0, META.img_shape[1])
      b[:, 1::2] = np.clip(b[:, 1::2], 0, META.img_shape[0])
      for k, v in zip(mlvl, (b, scores, ids, ctr, idx)):
        mlvl[k].append(v)
    bboxes = np.concatenate(mlvl['bboxes']).astype(np.float32) / np.float32(0.5)
    scores = np.concatenate([np.concatenate(mlvl['scores']), np.zeros((len(bboxes), 1), np.float32)], 1)
    id_scores = np.concatenate([np.concatenate(mlvl['ids']), np.zeros((len(bboxes), 1), np.float32)], 1)
    ctr, point_inds = np.concatenate(mlvl['ctr']), np.concatenate(mlvl['inds'])
    # multiclass_nms
    cmax, imax = scores.max(1), id_scores.max(1)
    valid = (cmax > CFG.cls_score_thr) & (imax > CFG.id_score_thr)
    rank = ((cmax + 0.5 * imax) if is_first else (0.5 * cmax + imax)) * ctr
    inds = np.nonzero(valid)[0]
    det_inds = inds[_official_nms(bboxes[inds], rank[inds], CFG.nms_iou_thr)[:CFG.max_per_img]] if len(inds) else inds
    det_id_scores, det_cls_scores = id_scores[det_inds], scores[det_inds] * ctr[det_inds][:, None]
    masks, ori_masks = tracker.upsample_masks(_mask_probs(point_inds[det_inds]), META.img_shape, META.ori_shape)
    # get_results
    if is_first:
      self.curr_inst_id = 0
    id_masks = np.zeros((O + 1, HP, WP), np.float32)
    id_masks[O] = 1
    pred_masks = np.zeros((O, *META.ori_shape), bool)
    cls_scores_withid = np.zeros((O, C + 1), np.float32)
    new_inst_exists = False
    keep, new_pad_masks, new_ori_masks = [], [], []
    bg_mask, ori_bg_mask = np.ones((HP, WP), bool), np.ones(META.ori_shape, bool)
    for i in range(len(det_inds)):
      pad_mask = masks[i]
      new_pad_mask = bg_mask & pad_mask
      bg_mask[new_pad_mask] = 0
      area = pad_mask.sum()
      if area == 0 or float(new_pad_mask.sum()) / float(area) < 0.1:
        continue
      keep.append(i)
      new_pad_masks.append(new_pad_mask)
      new_ori_mask = ori_bg_mask & ori_masks[i]
      ori_bg_mask[new_ori_mask] = 0
      new_ori_masks.append(new_ori_mask)
    if keep:
      det_id_scores, det_cls_scores = det_id_scores[keep], det_cls_scores[keep]
    if is_first:
      det_ids = np.ones(len(det_id_scores)) * (O - 1)
    elif len(det_id_scores):
      new = np.tile(det_id_scores[:, O - 1], (len(det_id_scores) - 1, 1))
      matrix = -np.concatenate((det_id_scores.T, new)).T
      _, det_ids = linear_sum_assignment(matrix)
    det_obj_ids, curr_max_id = [], self.curr_inst_id
    for i in range(len(keep)):
      id_pred = int(det_ids[i])
      if is_first or id_pred >= curr_max_id:
        new_inst_exists = True
        id_pred = self.curr_inst_id
        self.curr_inst_id += 1
        if self.curr_inst_id > O - 2:
          self.curr_inst_id = O - 2
      if id_pred in det_obj_ids:
        id_pred = self.curr_inst_id
        self.curr_inst_id += 1
        if self.curr_inst_id > O - 2:
          self.curr_inst_id = O - 2
      det_obj_ids.append(id_pred)
      cls_scores_withid[id_pred] = det_cls_scores[i]
      id_masks[id_pred] = new_pad_masks[i]
      id_masks[O][new_pad_masks[i]] = 0
      pred_masks[id_pred] = new_ori_masks[i]
    # simple_test bookkeeping
    for idx in range(O):
      self.encode_masks[idx].append(pred_masks[idx].copy() if idx < self.curr_inst_id else None)
    self.cls_scores_list.append(cls_scores_withid)
    if is_first:
      self.frame_step, self.last_mem_step = 1, 0
      self.long_adds.append(None)
    else:
      self.frame_step += 1
      add = self.frame_step - self.last_mem_step >= 3 or new_inst_exists
      if add:
        self.last_mem_step = self.frame_step
      self.long_adds.append(add)
    return id_masks.transpose(1, 2, 0), point_inds[det_inds]

  def finish(self):
    mean = np.mean(np.stack(self.cls_scores_list), 0).reshape(-1)
    top = np.argsort(-mean, kind='stable')[:CFG.max_per_img]
    top = top[mean[top] > 0.05]
    return [(float(mean[i]), int(i % (C + 1)), int(i // (C + 1))) for i in top], self.encode_masks


# ------------------------------------------------------------------------------------------------------- tests


def test_matches_official_port_on_recorded_sequence():
  points, _, sizes = _points()
  port = OfficialPort()
  assigner, schedule = tracker.IdentityAssigner(CFG, O), tracker.MemorySchedule(3)
  video = tracks_lib.VideoTracks(NUM_FRAMES)
  adds, saw_cap, saw_drop, saw_match = [None], False, False, False
  for t, out in enumerate(_sequence()):
    expected_ids, expected_inds = port.frame(out, t == 0)
    cand = tracker.select_candidates(out, points, sizes, META, t == 0, CFG)
    np.testing.assert_array_equal(cand.inds, expected_inds)
    pad_masks, ori_masks = tracker.upsample_masks(_mask_probs(cand.inds), META.img_shape, META.ori_shape)
    frame = assigner(cand, pad_masks, ori_masks, META, t == 0)
    np.testing.assert_array_equal(frame.id_mask, expected_ids, err_msg=f'frame {t}')
    np.testing.assert_allclose(frame.cls_table, port.cls_scores_list[-1], rtol=1e-6)
    assert frame.num_ids == port.curr_inst_id
    if t:
      schedule.next_frame()
      adds.append(schedule.add_long(frame.new_instance))
    tracker.add_frame(video, t, frame, META.ori_shape, encode=lambda m: m.copy())
    saw_cap |= frame.num_ids == O - 2
    saw_drop |= len(frame.masks) < len(cand.inds)
    saw_match |= t > 0 and any(frame.id_mask[..., k].any() for k in range(frame.num_ids)) and not frame.new_instance
  assert adds == port.long_adds and True in adds[1:] and False in adds[1:]
  assert saw_cap and saw_drop and saw_match
  expected, masks = port.finish()
  records = tracks_lib.tracks_to_records(
      video.tracks(class_scores=lambda total, count: total / NUM_FRAMES), video_id=0,
      rule=tracks_lib.RecordRule('topk', threshold=CFG.video_score_thr, k=CFG.max_per_img), category_ids=np.arange(C))
  assert len(records) == len(expected) > 2
  for r, (score, label, obj) in zip(records, expected):
    assert r['category_id'] == label and r['score'] == pytest.approx(score, rel=1e-6)
    for seg, exp in zip(r['segmentations'], masks[obj]):
      assert (seg is None) == (exp is None) and (seg is None or np.array_equal(seg, exp))


def test_mmcv_nms_suppresses_at_threshold():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 3.3]], np.float32)
  keep = nms_lib.batched_nms(boxes, np.array([0.9, 0.8, 0.7, 0.95]), np.ones(4), 0.5)
  assert list(keep) == [3, 0, 2]  # box 1 has IoU exactly 0.5 with box 0: suppressed (>=)
  assert list(nms_lib.batched_nms(boxes, np.array([0.9, 0.8, 0.7, 0.95]), np.array([0, 1, 0, 0]), 0.5)) == [3, 0, 1, 2]


@pytest.mark.torch
def test_upsample_masks_match_torch():
  torch = pytest.importorskip('torch')
  from torch_refs import iai_ref  # pylint: disable=g-import-not-at-top
  probs = np.random.default_rng(0).uniform(size=(3, 16, 24)).astype(np.float32)
  pad, ori = tracker.upsample_masks(probs, (60, 90), (131, 197))
  full = iai_ref.aligned_bilinear(torch.from_numpy(probs)[:, None], 4)
  expected_ori = torch.nn.functional.interpolate(full[:, :, :60, :90], size=(131, 197), mode='bilinear',
                                                 align_corners=False)[:, 0].numpy()
  full = full[:, 0].numpy()
  near = lambda x: np.abs(x - 0.5) < 1e-5  # threshold ties from float rounding are allowed to differ
  assert np.array_equal(pad[~near(full)], (full > 0.5)[~near(full)])
  assert np.array_equal(ori[~near(expected_ori)], (expected_ori > 0.5)[~near(expected_ori)])
