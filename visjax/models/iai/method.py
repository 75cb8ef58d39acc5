"""IAI on method contract v2 (docs/INTERFACES.md §3): `METHOD = IAIMethod`.

* `loss_fn`: `[B, T, ...]` clips (5 frames officially) through the model with teacher-forced ground-truth ids and
  `criterion.iai_loss` with the `config.loss` settings read once at construction.
* `make_predictor` returns an `IAIPredictor`: online, frame by frame, whatever the chunking: the network steps are
  jitted once per model structure and padded size (`_steps`); per frame the host selects candidates, computes their
  masks on the device, assigns identities, writes the predicted ids into the LSTT memory (`tracker.py`) and encodes
  each id's mask to RLE at once (`tracker.add_frame` into a `VideoTracks`). Memory is bounded by the LSTT memory
  capacity and the ids (at most `max_obj_num`).
* Records: the top `max_per_img` (id, class) pairs of the video-mean class scores with score > `video_score_thr`.
"""

from __future__ import annotations

import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax.evaluation import results as results_lib
from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.models import registry
from visjax.models import settings as settings_lib
from visjax.models.iai import criterion
from visjax.models.iai import model as iai_model
from visjax.models.iai import tracker as tracker_lib

HEAD_KEYS = ('cls_logits', 'id_logits', 'centerness_logits', 'bbox_ltrb')


@functools.lru_cache(maxsize=8)
def _steps(graphdef: Any, capacity: int) -> dict[str, Any]:
  """Jitted network steps of one model structure (each takes the model state first)."""
  model = lambda state: nnx.merge(graphdef, state)

  def first(state, image, size):
    m = model(state)
    feats = m.features(image, size)
    zeros = jnp.zeros(image.shape[:3] + (m.max_obj_num + 1,), jnp.float32)
    return feats, m.reference_frame(feats, zeros)[0]

  def later(state, image, size, memory):
    m = model(state)
    feats = m.features(image, size)
    out, lstt = m.propagate(feats, memory)
    return out, {k: lstt[k] for k in ('keys', 'normed')}

  return dict(
      first=jax.jit(first), later=jax.jit(later),
      reset=jax.jit(lambda state, feats, ids: model(state).memory_from_reference(feats, ids, capacity)),
      update=jax.jit(lambda state, mem, lstt, ids, add: model(state).memory_update(mem, lstt, ids, add)),
      masks=jax.jit(lambda state, feat, p, s, k: model(state).instance_masks(feat, p, s, k)))


class IAIPredictor:
  """IAI online inference on one video fed in any number of frame chunks (`visjax.inference.predictor`)."""

  def __init__(self, model: iai_model.IAI, settings: tracker_lib.TrackerSettings, video: predictor_lib.VideoMeta):
    graphdef, self.state = nnx.split(model)
    self.steps = _steps(graphdef, settings.memory_capacity)
    self.settings = settings
    self.video = video
    self.assigner = tracker_lib.IdentityAssigner(settings, model.max_obj_num)
    self.schedule = tracker_lib.MemorySchedule(model.global_mem_interval)
    self.tracks = tracks_lib.VideoTracks(video.length)
    self.memory = None
    self.next_frame = 0

  def add_frames(self, frames: np.ndarray, image_sizes: np.ndarray) -> None:
    """Runs the next frames `[t, Hp, Wp, 3]` (unpadded sizes `[t, 2]`) one by one."""
    frames, image_sizes = predictor_lib.check_frames(self.video, self.next_frame, frames, image_sizes, 'IAI')
    for image, size in zip(frames, image_sizes):
      self._frame(image, size)

  def _frame(self, image: np.ndarray, size: np.ndarray) -> None:
    hp, wp = image.shape[:2]
    (oh, ow), (h, w) = self.video.orig_size, (int(size[0]), int(size[1]))
    meta = tracker_lib.FrameMeta(img_shape=(h, w), pad_shape=(hp, wp), ori_shape=(oh, ow),
                                 scale_factor=(np.float32(w / ow), np.float32(h / oh)))
    points, strides, level = iai_model.fcos_point_table(hp, wp)
    first = self.next_frame == 0
    args = (self.state, jnp.asarray(image[None]), jnp.asarray(size[None], jnp.int32))
    if first:
      feats, out = self.steps['first'](*args)
    else:
      self.schedule.next_frame()
      out, lstt = self.steps['later'](*args, self.memory)
    host = {k: np.asarray(out[k][0]) for k in HEAD_KEYS}
    cand = tracker_lib.select_candidates(host, points, np.bincount(level), meta, first, self.settings)
    k = len(cand.inds)
    sel = np.zeros(self.settings.max_per_img, np.int64)
    sel[:k] = cand.inds
    probs = self.steps['masks'](self.state, out['mask_feat'], jnp.asarray(points[sel][None]),
                                jnp.asarray(strides[sel][None]), out['kernels'][:, jnp.asarray(sel)])
    pad_masks, ori_masks = tracker_lib.upsample_masks(np.asarray(probs[0, :k]), meta.img_shape, meta.ori_shape)
    frame = self.assigner(cand, pad_masks, ori_masks, meta, first)
    tracker_lib.add_frame(self.tracks, self.next_frame, frame, meta.ori_shape, results_lib.encode_mask)
    ids = jnp.asarray(frame.id_mask[None])
    if first:
      self.memory = self.steps['reset'](self.state, feats, ids)
    else:
      self.memory = self.steps['update'](self.state, self.memory, lstt, ids,
                                         jnp.asarray(self.schedule.add_long(frame.new_instance)))
    self.next_frame += 1

  def finish(self) -> list[tracks_lib.Track]:
    """Tracks with the official video score: each id's class rows averaged over all frames (absent = 0)."""
    predictor_lib.check_finished(self.video, self.next_frame, 'IAI')
    return self.tracks.tracks(class_scores=lambda total, count: total / self.video.length)


class IAIMethod(registry.Method):
  """IAI (Yang et al., 2022): CondInst + LSTT identity association, online."""

  name = 'iai'

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.loss_settings = settings_lib.from_config(criterion.LossSettings, config.get('loss'), 'config.loss')
    self.tracker_settings = settings_lib.from_config(tracker_lib.TrackerSettings, config.get('tracker'),
                                                     'config.tracker')

  def build_model(self, rngs: nnx.Rngs) -> iai_model.IAI:
    dtype = jnp.dtype(self.config.train.get('compute_dtype', 'float32'))
    return iai_model.IAI.from_config(self.config.model, dtype=None if dtype == jnp.float32 else dtype, rngs=rngs)

  def loss_fn(self, model: nnx.Module, batch: dict[str, Any], *, rng: jax.Array,
              train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """IAI loss of a batch of `[B, T, ...]` clips (docs/INTERFACES.md §1); jittable."""
    if batch['image'].ndim != 5:
      raise ValueError(f'IAI loss_fn: batch["image"] must be [B, T, H, W, 3], got {batch["image"].shape}.')
    return criterion.iai_loss(model, batch, rng, self.loss_settings, train=train)

  def make_predictor(self, model: nnx.Module, video: predictor_lib.VideoMeta) -> IAIPredictor:
    return IAIPredictor(model, self.tracker_settings, video)

  def record_rule(self) -> tracks_lib.RecordRule:
    t = self.tracker_settings
    return tracks_lib.RecordRule('topk', threshold=t.video_score_thr, k=t.max_per_img)

  def conversion_rules(self):
    from visjax.convert import rules_iai  # pylint: disable=g-import-not-at-top
    return rules_iai.iai_rules()


METHOD = IAIMethod
