"""The streaming predictor interface every method implements (docs/INTERFACES.md §3).

    predictor = method.make_predictor(model, VideoMeta(video_id, length, orig_size))
    for frames, image_sizes in chunks:          # uint8 [t, Hp, Wp, 3], int [t, 2]; any number of calls, in order
      predictor.add_frames(frames, image_sizes)
    tracks = predictor.finish()                 # list[visjax.inference.tracks.Track]

Online methods (IDOL, VISOLO, IAI) do their work in `add_frames` with memory bounded by the number of live
tracks; an offline method (VITA) runs its per-frame part in `add_frames` and its video-level part in `finish`.
The output must not depend on how the frames were split into chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from visjax.inference import tracks as tracks_lib


@dataclasses.dataclass(frozen=True)
class VideoMeta:
  """What a predictor knows of a video before its frames arrive."""
  video_id: Any
  length: int
  orig_size: tuple[int, int]  # (H, W) of the original frames: the size of the output masks


class Predictor(Protocol):

  def add_frames(self, frames: np.ndarray, image_sizes: np.ndarray) -> None:
    """Feeds the next frames `[t, Hp, Wp, 3]` (test-resized, zero-padded) with their unpadded sizes `[t, 2]`."""

  def finish(self) -> list[tracks_lib.Track]:
    """The video's tracks, after every frame was added."""


def check_frames(meta: VideoMeta, seen: int, frames: np.ndarray, image_sizes: np.ndarray,
                 where: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates one `add_frames` call (shapes, frame count) and returns the arrays as numpy."""
  frames = np.asarray(frames)
  image_sizes = np.asarray(image_sizes, np.int32).reshape(-1, 2)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'{where}: video {meta.video_id}: frames must be [t, H, W, 3], got {frames.shape}.')
  if len(image_sizes) != len(frames):
    raise ValueError(f'{where}: video {meta.video_id}: {len(frames)} frames but {len(image_sizes)} image sizes.')
  if seen + len(frames) > meta.length:
    raise ValueError(f'{where}: video {meta.video_id}: got {seen + len(frames)} frames, more than its length '
                     f'{meta.length}.')
  return frames, image_sizes


def check_finished(meta: VideoMeta, seen: int, where: str) -> None:
  if seen != meta.length:
    raise ValueError(f'{where}: video {meta.video_id}: {seen} of {meta.length} frames were given.')
