"""Streaming VISOLO inference on one video: the jitted network step over a fixed-capacity memory buffer, driven by
`tracker.MemorySchedule`, feeding `tracker.VisoloTracker` (official eval branch of `Visolo.forward`).

    predictor = VisoloPredictor(model, tracker_settings, VideoMeta(video_id, length, orig_size))
    for frames, sizes in chunks:         # uint8 [t, Hp, Wp, 3] and int [t, 2], in order
      predictor.add_frames(frames, sizes)
    tracks = predictor.finish()          # list[visjax.inference.tracks.Track]

Frames are expected at the official test size (`T.Resize((352, 624))`, `config.input.test_fixed_size`); the output masks
are cropped to the frame's content, resized to `orig_size` as the official output step (bilinear, >= 0.5) and RLE
encoded per frame, so nothing of size `[tracks, T, H, W]` is held. The network compiles once per frame size and
memory capacity (`MemorySchedule.capacity(num_frames)`); the per-frame mask computation once per power-of-two
bucket of candidate cells.
"""

from __future__ import annotations

import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visjax.evaluation import results as results_lib
from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.inference.masks import resize_binary_mask
from visjax.models.visolo import model as visolo_model
from visjax.models.visolo import tracker as tracker_lib


def _bucket(n: int) -> int:
  """Cell-list length padded to a power of two (>= 8)."""
  return max(8, 1 << (max(n, 1) - 1).bit_length())


@functools.lru_cache(maxsize=8)
def _network(graphdef: nnx.GraphDef) -> dict[str, Any]:
  """Jitted steps of one model structure, each taking the model state first."""
  model = lambda state: nnx.merge(graphdef, state)

  def step(state, images, sizes, memory, slot, write_first):
    """Encodes the frame, writes it to `slot` first when `write_first` (frame 0 reads itself), reads memory."""
    m = model(state)
    feats = m.encode(images, sizes)
    memory = jax.lax.cond(write_first, lambda mem: visolo_model.write_memory(mem, feats, slot), lambda mem: mem,
                          memory)
    out = m.decode(feats, memory)
    b = images.shape[0]
    probs = jax.nn.sigmoid(out['cat_logits']).reshape(b, -1, out['cat_logits'].shape[-1])
    kernels = out['kernels'].reshape(b, -1, out['kernels'].shape[-1])
    frame = dict(frame_f=feats['frame_f'], cat_f=feats['cat_f'], kernel_f=feats['kernel_f'])
    return probs, kernels, feats['mask_f'], frame, memory

  def masks(mask_f, kernels, cells):
    return visolo_model.mask_probs(mask_f, kernels[:, cells])[0]

  return dict(step=jax.jit(step), write=jax.jit(visolo_model.write_memory), masks=jax.jit(masks),
              track=jax.jit(lambda state, a, b: model(state).tracking_probs(a, b)[0]))


class VisoloPredictor:
  """VISOLO online inference on one video fed in any number of frame chunks (see module docstring)."""

  def __init__(self, model: visolo_model.VISOLO, tracker: tracker_lib.TrackerSettings,
               video: predictor_lib.VideoMeta):
    graphdef, self._state = nnx.split(model)
    self._net = _network(graphdef)
    self.video = video
    capacity = tracker_lib.MemorySchedule.capacity(int(video.length))
    dim = model.Memory_module.conv1.conv.out_features
    self._memory = visolo_model.init_memory(1, capacity, model.grid, dim)
    self._schedule = tracker_lib.MemorySchedule()
    self._content: dict[int, tuple[int, int]] = {}
    self.tracker = tracker_lib.VisoloTracker(tracker, self._track, self._encode_mask)
    self.next_frame = 0

  def _track(self, a: jax.Array, b: jax.Array) -> np.ndarray:
    return np.asarray(self._net['track'](self._state, a, b))

  def _encode_mask(self, mask: np.ndarray, frame: int) -> dict:
    h, w = self._content[frame]
    return results_lib.encode_mask(resize_binary_mask(mask[:h, :w], tuple(self.video.orig_size)))

  def _mask_fn(self, mask_f: jax.Array, kernels: jax.Array):

    def fn(cells: np.ndarray) -> np.ndarray:
      padded = np.zeros(_bucket(len(cells)), np.int32)
      padded[:len(cells)] = cells
      return np.asarray(self._net['masks'](mask_f, kernels, jnp.asarray(padded)))[:len(cells)]

    return fn

  def add_frames(self, frames: np.ndarray, image_sizes: np.ndarray) -> None:
    """Runs frames `[t, Hp, Wp, 3]` (uint8 RGB, content `image_sizes [t, 2]` at the top left) in order."""
    frames, image_sizes = predictor_lib.check_frames(self.video, self.next_frame, frames, image_sizes, 'VISOLO')
    for image, size in zip(frames, image_sizes):
      t = self.next_frame
      first = t == 0
      slot = self._schedule.push(t) if first else -1
      probs, kernels, mask_f, frame, self._memory = self._net['step'](
          self._state, jnp.asarray(image[None]), jnp.asarray(size[None]), self._memory, max(slot, 0), first)
      if not first:
        self._memory = self._net['write'](self._memory, frame, self._schedule.push(t))
      self._content[t] = (int(size[0]), int(size[1]))
      self.tracker.add_frame(np.asarray(probs[0]), self._mask_fn(mask_f, kernels), frame['frame_f'])
      self._content = {f: s for f, s in self._content.items() if f >= t - 1}
      self.next_frame += 1

  def finish(self) -> list[tracks_lib.Track]:
    """The tracks (`VisoloTracker.finish`), masks as per-frame RLE (None where absent) at `video.orig_size`."""
    predictor_lib.check_finished(self.video, self.next_frame, 'VISOLO')
    return self.tracker.finish()
