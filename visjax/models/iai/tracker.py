"""IAI online inference on the host: candidates, identity assignment, memory schedule, video-level output.

Official: zfonemore/IAI `IAICondInstHead.{get_results, _get_results_single}`, `dense_heads/utils.multiclass_nms`
and `IAICondInst.simple_test`. NumPy (+ scipy's Hungarian) on one frame's head outputs at a time; the model runs
the network parts (`visjax.models.iai.model.IAI`), `visjax.models.iai.method.IAIPredictor` strings them together.

Per frame t:
  1. `select_candidates`: per level the top `nms_pre` points by max_c(cls) x centerness; boxes decoded and clipped
     to the resized image, then divided by the scale factor (original-image pixels); keep points with max cls >
     `cls_score_thr` and max id > `id_score_thr`; rank by `(cls + 0.5 id)` on frame 0, `(0.5 cls + id)` later,
     times centerness; class-agnostic mmcv NMS (`nms_iou_thr`, boxes offset by max + 1); first `max_per_img`.
  2. masks of the detections (CondInst dynamic head, stride 4 probabilities) -> `upsample_masks`: x4
     `aligned_bilinear` of the probabilities > 0.5 at the padded input size, and cropped to the resized image then
     bilinearly resized to the original size > 0.5.
  3. `IdentityAssigner`: detections in score order claim pixels still free (padded resolution; a detection whose
     free part is empty or < 10 % of its mask is dropped but has claimed its pixels; at original resolution only
     kept detections claim); Hungarian on `-[id scores (max_obj + 1 columns, the last a zero padding column) |
     "new" column (max_obj - 1) repeated n - 1 times]`; a column >= the number of ids allocated before this frame
     (or any detection on frame 0) gets a new id; a repeated id also gets a new id; ids are capped at
     max_obj - 2 (overflow overwrites that id). Output: the one-hot id mask (background channel last) for the
     LSTT memory, the per-id masks and class-score rows (`[max_obj, C + 1]`, cls x centerness).
  4. memory: frame 0 re-runs the reference frame with its ids (`reset_memory`); later frames write their ids into
     the short-term memory and into the long-term one when `step - last >= global_mem_interval` (frame steps
     counted as the official `frame_step`) or a new instance appeared.
  5. `add_frame`: every allocated id gets the frame's class-score row (zero when absent) and mask (empty when absent;
     None for the capped id, whose masks the official code never outputs) in a `visjax.inference.tracks.VideoTracks`;
     the video score of (id, class) is the row mean over all frames; records are the top `max_per_img` pairs with
     score > `video_score_thr` (`RecordRule('topk')`), category = class index (the official `label + 1` for YTVIS).
"""

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from visjax.inference import tracks as tracks_lib
from visjax.inference.postprocess import sigmoid
from visjax.inference.nms import batched_nms
from visjax.models.layers import resize


@dataclasses.dataclass(frozen=True)
class TrackerSettings:
  """`config.tracker` (official `test_cfg`; official values: `configs/iai_common.py:tracker_config`)."""

  nms_pre: int  # candidates per level by cls x centerness (R101: 1000)
  cls_score_thr: float  # R101: 0.05
  id_score_thr: float
  nms_iou_thr: float
  max_per_img: int  # detections per frame and (id, class) records per video (OVIS: 50)
  mask_keep_ratio: float  # drop a detection keeping less than this share of its mask
  video_score_thr: float
  memory_capacity: int  # long-term memory slots (exact while a video adds fewer frames, `lstt.write_memory`)


@dataclasses.dataclass(frozen=True)
class FrameMeta:
  """Sizes of one frame: `img_shape` (resized, unpadded), `pad_shape` (network input), `ori_shape` (original),
  all `(h, w)`, and mmdet's `scale_factor` `(w_scale, h_scale)` of the resize."""

  img_shape: tuple[int, int]
  pad_shape: tuple[int, int]
  ori_shape: tuple[int, int]
  scale_factor: tuple[float, float]


@dataclasses.dataclass
class Candidates:
  """Detections of one frame, in NMS (decreasing score) order: `inds [K]` point indices into the head outputs,
  `boxes [K, 4]` xyxy in original pixels, `cls_scores [K, C + 1]` (cls x centerness, zero padding column),
  `id_scores [K, max_obj + 1]` (zero padding column)."""

  inds: np.ndarray
  boxes: np.ndarray
  cls_scores: np.ndarray
  id_scores: np.ndarray


def select_candidates(outputs: dict[str, np.ndarray], points: np.ndarray, level_sizes: Sequence[int],
                      meta: FrameMeta, is_first: bool, cfg: TrackerSettings) -> Candidates:
  """Step 1 of the module docstring on one frame's head outputs.

  Args:
    outputs: `cls_logits [P, C]`, `id_logits [P, max_obj]`, `centerness_logits [P]`, `bbox_ltrb [P, 4]` (one frame).
    points: `[P, 2]` FCOS points; level_sizes: points per level (level-major order of P).
  """
  cls = sigmoid(outputs['cls_logits'])
  ids = sigmoid(outputs['id_logits'])
  ctr = sigmoid(outputs['centerness_logits'])
  ltrb = np.asarray(outputs['bbox_ltrb'], np.float32)
  chosen, start = [], 0
  for n in level_sizes:
    lvl = np.arange(start, start + n)
    if 0 < cfg.nms_pre < n:
      rank = (cls[lvl] * ctr[lvl, None]).max(1)
      lvl = lvl[np.argsort(-rank, kind='stable')[:cfg.nms_pre]]
    chosen.append(lvl)
    start += n
  inds = np.concatenate(chosen)
  p, d = points[inds].astype(np.float32), ltrb[inds]
  h, w = meta.img_shape
  boxes = np.stack([np.clip(p[:, 0] - d[:, 0], 0, w), np.clip(p[:, 1] - d[:, 1], 0, h),
                    np.clip(p[:, 0] + d[:, 2], 0, w), np.clip(p[:, 1] + d[:, 3], 0, h)], -1).astype(np.float32)
  sw, sh = np.float32(meta.scale_factor[0]), np.float32(meta.scale_factor[1])
  boxes = boxes / np.array([sw, sh, sw, sh], np.float32)
  cls_max, id_max = cls[inds].max(1), ids[inds].max(1)
  rank = (cls_max + np.float32(0.5) * id_max) if is_first else (np.float32(0.5) * cls_max + id_max)
  rank = rank * ctr[inds]
  valid = np.nonzero((cls_max > cfg.cls_score_thr) & (id_max > cfg.id_score_thr))[0]
  keep = batched_nms(boxes[valid], rank[valid], np.ones(len(valid)), cfg.nms_iou_thr)[:cfg.max_per_img]
  det = inds[valid[keep]]
  pad = lambda s: np.concatenate([s, np.zeros((len(s), 1), np.float32)], axis=1)
  return Candidates(inds=det, boxes=boxes[valid[keep]], cls_scores=pad(cls[det]) * ctr[det, None],
                    id_scores=pad(ids[det]))


def upsample_masks(probs: np.ndarray, img_shape: tuple[int, int], ori_shape: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Step 2: stride-4 mask probabilities `[K, h, w]` -> (bool `[K, 4h, 4w]` at the padded input, bool `[K, oh, ow]`
  at the original size). float32 separable interpolation matrices (`visjax.models.layers.resize`)."""
  probs = np.asarray(probs, np.float32)
  k, h, w = probs.shape
  full = np.einsum('ih,khw,jw->kij', resize._aligned_bilinear_matrix(h, 4), probs,  # pylint: disable=protected-access
                   resize._aligned_bilinear_matrix(w, 4), optimize=True).astype(np.float32)  # pylint: disable=protected-access
  crop = full[:, :img_shape[0], :img_shape[1]]
  rows = resize.bilinear_matrix(crop.shape[1], ori_shape[0])
  cols = resize.bilinear_matrix(crop.shape[2], ori_shape[1])
  ori = np.einsum('ih,khw,jw->kij', rows, crop, cols, optimize=True)
  return full > 0.5, ori > 0.5


@dataclasses.dataclass
class FrameResult:
  """Step 3's output: `id_mask` float32 `[Hp, Wp, max_obj + 1]` (background last), `masks` {id: bool `[oh, ow]`},
  `cls_table` float32 `[max_obj, C + 1]`, `new_instance`, `num_ids` (ids allocated so far)."""

  id_mask: np.ndarray
  masks: dict[int, np.ndarray]
  cls_table: np.ndarray
  new_instance: bool
  num_ids: int


class IdentityAssigner:
  """Step 3 (module docstring), with the video's id counter."""

  def __init__(self, cfg: TrackerSettings, max_obj_num: int):
    self.cfg = cfg
    self.max_obj_num = max_obj_num
    self.next_id = 0

  def _new_id(self) -> int:
    new = self.next_id
    self.next_id = min(self.next_id + 1, self.max_obj_num - 2)
    return new

  def __call__(self, cand: Candidates, pad_masks: np.ndarray, ori_masks: np.ndarray, meta: FrameMeta,
               is_first: bool) -> FrameResult:
    """`pad_masks` bool `[K, Hp, Wp]`, `ori_masks` bool `[K, oh, ow]` of the candidates (`upsample_masks`)."""
    o = self.max_obj_num
    if is_first:
      self.next_id = 0
    free = np.ones(meta.pad_shape, bool)
    ori_free = np.ones(meta.ori_shape, bool)
    kept, claims, ori_claims = [], [], []
    for i in range(len(cand.inds)):
      new = free & pad_masks[i]
      free &= ~new
      area = int(pad_masks[i].sum())
      if area == 0 or float(new.sum()) / float(area) < self.cfg.mask_keep_ratio:
        continue  # the pixels stay claimed at the padded resolution
      kept.append(i)
      claims.append(new)
      ori_claims.append(ori_free & ori_masks[i])
      ori_free &= ~ori_claims[-1]
    id_scores, cls_scores = cand.id_scores, cand.cls_scores
    if kept:
      id_scores, cls_scores = id_scores[kept], cls_scores[kept]
    n = len(id_scores)
    if is_first:
      cols = np.full(n, o - 1)
    elif n:
      cost = -np.concatenate([id_scores, np.repeat(id_scores[:, o - 1:o], n - 1, axis=1)], axis=1)
      _, cols = linear_sum_assignment(cost)
    allocated = self.next_id
    id_mask = np.zeros(tuple(meta.pad_shape) + (o + 1,), np.float32)
    id_mask[..., o] = 1
    cls_table = np.zeros((o, cand.cls_scores.shape[1]), np.float32)
    masks, assigned, new_instance = {}, [], False
    for j in range(len(kept)):
      obj = int(cols[j])
      if is_first or obj >= allocated:
        new_instance = True
        obj = self._new_id()
      if obj in assigned:
        obj = self._new_id()
      assigned.append(obj)
      cls_table[obj] = cls_scores[j]
      id_mask[..., obj] = claims[j]
      id_mask[claims[j], o] = 0
      masks[obj] = ori_claims[j]
    return FrameResult(id_mask=id_mask, masks=masks, cls_table=cls_table, new_instance=new_instance,
                       num_ids=self.next_id)


class MemorySchedule:
  """Step 4's long-term rule with the official counters: frame 0 sets `last = 0` and `step = 1`; each later frame
  increments `step` and is added when `step - last >= interval` or it has a new instance (then `last = step`)."""

  def __init__(self, interval: int):
    self.interval = interval
    self.step, self.last = 1, 0

  def next_frame(self) -> None:
    self.step += 1

  def add_long(self, new_instance: bool) -> bool:
    add = self.step - self.last >= self.interval or new_instance
    if add:
      self.last = self.step
    return add


def add_frame(tracks: tracks_lib.VideoTracks, frame_index: int, frame: FrameResult, ori_shape: tuple[int, int],
              encode: Callable[[np.ndarray], Any]) -> None:
  """Step 5: adds one frame's ids to `tracks` (class rows without the padding column; masks encoded now)."""
  empty = None
  for obj in range(frame.cls_table.shape[0]):
    row = frame.cls_table[obj, :-1]
    if obj < frame.num_ids:
      if obj in frame.masks:
        rle = encode(frame.masks[obj])
      else:
        empty = encode(np.zeros(ori_shape, bool)) if empty is None else empty
        rle = empty
      tracks.add(obj, frame_index, rle, row, float(row.max()) if obj in frame.masks else None)
    elif row.any():  # the capped id (max_obj - 2): class row counts, masks are never output
      tracks.add(obj, frame_index, None, row)
