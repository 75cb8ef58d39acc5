"""IAI online inference on the host: candidates, identity assignment, memory schedule, video-level output.

Official: zfonemore/IAI `IAICondInstHead.{get_results, _get_results_single}`, `dense_heads/utils.multiclass_nms`
and `IAICondInst.simple_test`. NumPy (+ scipy's Hungarian) on one frame's head outputs at a time; the model runs
the network parts (`visjax.models.iai.model.IAI`), `run_video` strings them together.

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
  5. `VideoResults`: class tables averaged over all frames (absent ids count 0), top `max_per_img` (id, class)
     pairs with score > `video_score_thr`; masks of ids < the number allocated so far are output per frame (empty
     when absent), later ones None.
"""

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from visjax.inference.nms import batched_nms
from visjax.models.layers import resize


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
  """Inference settings (official `test_cfg` of the R-50 YTVIS19 config and the LSTT block)."""

  max_obj_num: int = 20
  nms_pre: int = 200
  cls_score_thr: float = 0.1
  id_score_thr: float = 0.1
  nms_iou_thr: float = 0.5
  max_per_img: int = 10
  mask_keep_ratio: float = 0.1
  video_score_thr: float = 0.05
  global_mem_interval: int = 3
  memory_capacity: int = 64  # long-term slots; exact while a video adds fewer frames (`lstt.write_memory`)

  @classmethod
  def from_config(cls, model_config) -> 'TrackerConfig':
    """From `config.model` (`max_obj_num`, `global_mem_interval`, `memory_capacity`, the `tracker` section)."""
    t = model_config.tracker
    return cls(max_obj_num=model_config.max_obj_num, global_mem_interval=model_config.global_mem_interval,
               memory_capacity=model_config.memory_capacity,
               **{f.name: t[f.name] for f in dataclasses.fields(cls) if f.name in t})


@dataclasses.dataclass(frozen=True)
class FrameMeta:
  """Sizes of one frame: `img_shape` (resized, unpadded), `pad_shape` (network input), `ori_shape` (original),
  all `(h, w)`, and mmdet's `scale_factor` `(w_scale, h_scale)` of the resize."""

  img_shape: tuple[int, int]
  pad_shape: tuple[int, int]
  ori_shape: tuple[int, int]
  scale_factor: tuple[float, float]


def sigmoid(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


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
                      meta: FrameMeta, is_first: bool, cfg: TrackerConfig) -> Candidates:
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

  def __init__(self, cfg: TrackerConfig):
    self.cfg = cfg
    self.next_id = 0

  def _new_id(self) -> int:
    new = self.next_id
    self.next_id = min(self.next_id + 1, self.cfg.max_obj_num - 2)
    return new

  def __call__(self, cand: Candidates, pad_masks: np.ndarray, ori_masks: np.ndarray, meta: FrameMeta,
               is_first: bool) -> FrameResult:
    """`pad_masks` bool `[K, Hp, Wp]`, `ori_masks` bool `[K, oh, ow]` of the candidates (`upsample_masks`)."""
    o = self.cfg.max_obj_num
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


class VideoResults:
  """Step 5, streaming: per-frame class tables are summed, per-id masks RLE-encoded as they come (`encode`, e.g.
  `visjax.evaluation.results.encode_mask`), so memory is constant per id and frame."""

  def __init__(self, cfg: TrackerConfig, encode: Callable[[np.ndarray], Any]):
    self.cfg = cfg
    self.encode = encode
    self.cls_sum = None
    self.num_frames = 0
    self.segmentations = [[] for _ in range(cfg.max_obj_num)]

  def add(self, frame: FrameResult, ori_shape: tuple[int, int]) -> None:
    self.cls_sum = frame.cls_table.astype(np.float64) if self.cls_sum is None else self.cls_sum + frame.cls_table
    self.num_frames += 1
    empty = None
    for obj in range(self.cfg.max_obj_num):
      if obj < frame.num_ids:
        if obj not in frame.masks and empty is None:
          empty = self.encode(np.zeros(ori_shape, bool))
        self.segmentations[obj].append(self.encode(frame.masks[obj]) if obj in frame.masks else empty)
      else:
        self.segmentations[obj].append(None)

  def finish(self) -> list[dict[str, Any]]:
    """Top `max_per_img` (id, class) pairs by the video-mean score, score > `video_score_thr`: dicts with `score`,
    `label` (0-based class), `obj_id`, `class_scores` (the id's mean row without the padding column) and
    `segmentations` (one entry per frame)."""
    if self.cls_sum is None:
      return []
    mean = (self.cls_sum / self.num_frames).astype(np.float32)
    flat = mean.reshape(-1)
    order = np.argsort(-flat, kind='stable')[:self.cfg.max_per_img]
    width = mean.shape[1]
    return [dict(score=float(flat[i]), label=int(i % width), obj_id=int(i // width),
                 class_scores=mean[i // width, :-1], segmentations=self.segmentations[i // width])
            for i in order if flat[i] > self.cfg.video_score_thr]


def run_video(model, frames: np.ndarray, image_size: tuple[int, int], ori_size: tuple[int, int], cfg: TrackerConfig,
              *, encode: Callable[[np.ndarray], Any]) -> list[dict[str, Any]]:
  """IAI inference on one video (official `simple_test`), frame by frame.

  Args:
    model: a `visjax.models.iai.model.IAI`.
    frames: uint8 `[T, Hp, Wp, 3]` resized (unpadded content `image_size`) and padded to a multiple of 32.
    image_size, ori_size: `(h, w)` after the test resize and of the original video.
    encode: per-frame mask encoder (e.g. `visjax.evaluation.results.encode_mask`).

  Returns:
    `VideoResults.finish()` records.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from visjax.models.iai.model import fcos_point_table  # pylint: disable=g-import-not-at-top

  t, hp, wp, _ = frames.shape
  meta = FrameMeta(img_shape=tuple(image_size), pad_shape=(hp, wp), ori_shape=tuple(ori_size),
                   scale_factor=(np.float32(image_size[1] / ori_size[1]), np.float32(image_size[0] / ori_size[0])))
  points, strides, level = fcos_point_table(hp, wp)
  level_sizes = np.bincount(level)
  size = jnp.asarray([image_size], jnp.int32)
  features = nnx.jit(lambda m, x: m.features(x, size))
  reference = nnx.jit(lambda m, f, ids: m.reference_frame(f, ids)[0])
  reset = nnx.jit(lambda m, f, ids: m.memory_from_reference(f, ids, cfg.memory_capacity))
  propagate = nnx.jit(lambda m, f, mem: m.propagate(f, mem))
  update = nnx.jit(lambda m, mem, l, ids, add: m.memory_update(mem, l, ids, add))
  instance_masks = nnx.jit(lambda m, feat, p, s, k: m.instance_masks(feat, p, s, k))

  assigner, schedule = IdentityAssigner(cfg), MemorySchedule(cfg.global_mem_interval)
  video = VideoResults(cfg, encode)
  memory = None
  for i in range(t):
    feats = features(model, jnp.asarray(frames[i:i + 1]))
    if i == 0:
      out = reference(model, feats, jnp.zeros((1, hp, wp, cfg.max_obj_num + 1), jnp.float32))
    else:
      schedule.next_frame()
      out, lstt = propagate(model, feats, memory)
    host = jax.tree.map(lambda x: np.asarray(x[0]), {k: out[k] for k in ('cls_logits', 'id_logits',
                                                                          'centerness_logits', 'bbox_ltrb')})
    cand = select_candidates(host, points, level_sizes, meta, i == 0, cfg)
    k = len(cand.inds)
    sel = np.zeros(cfg.max_per_img, np.int64)
    sel[:k] = cand.inds
    probs = instance_masks(model, out['mask_feat'], jnp.asarray(points[sel][None]), jnp.asarray(strides[sel][None]),
                           out['kernels'][:, jnp.asarray(sel)])
    pad_masks, ori_masks = upsample_masks(np.asarray(probs[0, :k]), meta.img_shape, meta.ori_shape)
    frame = assigner(cand, pad_masks, ori_masks, meta, i == 0)
    video.add(frame, meta.ori_shape)
    ids = jnp.asarray(frame.id_mask[None])
    if i == 0:
      memory = reset(model, feats, ids)
    else:
      memory = update(model, memory, lstt, ids, schedule.add_long(frame.new_instance))
  return video.finish()
