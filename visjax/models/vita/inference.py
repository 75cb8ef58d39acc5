"""VITA's offline video inference after the network (official `Vita.inference`), host-side NumPy.

1. `select_topk`: softmax over the K+1 classes of the last VITA layer's cQ queries, no-object dropped, flattened
   to cQ*K (query-major), top-k (`TEST.DETECTIONS_PER_IMAGE`: 10 YouTube-VIS, 20 OVIS). One query may appear
   with several labels. (The official top-k is unsorted; here scores come sorted descending.)
2. `chunk_masks`, per chunk of frames (`TEST_INTERPOLATE_CHUNK_SIZE` 5): mask logits `einsum(embed, features)`,
   bilinear upsampling (align_corners=False) to the padded input size, crop to the image size, the soft / hard
   sums of the mask score (mean sigmoid over pixels with sigmoid > 0.5, over all frames), bilinear resize to the
   original size and binarisation at logit > 0. Chunks can be streamed (e.g. to per-frame RLEs);
   `chunk_masks_device` is the same computation jitted for the accelerator.
3. `video_inference`: both, score = class probability x mask score.
"""

import dataclasses
import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax.models import settings
from visjax.models.layers.resize import bilinear_matrix, resize_bilinear


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """The fields of `config.tracker` (official values: `configs/vita_common.py:tracker_config`)."""
  topk: int
  run_chunk_size: int
  interpolate_chunk_size: int
  mask_features_dtype: str  # 'float32' | 'bfloat16': the per-frame VITA mask features kept on the host until finish


def inference_settings(section: ml_collections.ConfigDict | None) -> InferenceSettings:
  """`InferenceSettings` from `config.tracker`; every field is required."""
  s = settings.from_config(InferenceSettings, section, 'config.tracker')
  if s.mask_features_dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.tracker.mask_features_dtype must be 'float32' or 'bfloat16', got "
                     f'{s.mask_features_dtype!r}.')
  return s


class Detections(NamedTuple):
  """Top-k video detections: `scores [k]` (class probability; times the mask score after `video_inference`),
  `labels [k]` (0-based class), `queries [k]` (VITA query index)."""
  scores: np.ndarray
  labels: np.ndarray
  queries: np.ndarray


def video_bucket(num_frames: int, window: int) -> int:
  """The padded video length the VITA module runs at, so that few lengths are compiled: the window size times the
  next power of two of the window count (`W = 0`: the next power of two of T). Padded frames change no output
  (`VITAModule(..., num_frames=T)`)."""
  units = -(-num_frames // window) if window else num_frames
  return max(window, 1) * (1 << max(units - 1, 0).bit_length())


def _softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def select_topk(pred_logits: np.ndarray, topk: int) -> Detections:
  """`pred_logits [cQ, K+1]` (last VITA layer, one video) -> the `topk` (query, class) pairs by probability."""
  cq, k1 = pred_logits.shape
  num_classes = k1 - 1
  scores = _softmax(pred_logits.astype(np.float32))[:, :-1].reshape(-1)
  idx = np.argsort(-scores, kind='stable')[:topk]
  return Detections(scores[idx], (idx % num_classes).astype(np.int64), (idx // num_classes).astype(np.int64))


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`F.interpolate(x [..., h, w], size, mode='bilinear', align_corners=False)` (float32)."""
  mh = bilinear_matrix(x.shape[-2], int(size[0]))
  mw = bilinear_matrix(x.shape[-1], int(size[1]))
  return np.einsum('ih,...hw,jw->...ij', mh, x.astype(np.float32), mw, optimize=True)


class MaskChunk(NamedTuple):
  """One chunk: `masks` bool `[k, t, H0, W0]` at the original size; `soft_sum`, `hard_count` `[k]`: the sums
  of sigmoid over pixels with sigmoid > 0.5 and the counts of those pixels (at the cropped input size)."""
  masks: np.ndarray
  soft_sum: np.ndarray
  hard_count: np.ndarray


def chunk_masks(mask_embed: np.ndarray, mask_features: np.ndarray, interim_size: tuple[int, int],
                image_size: tuple[int, int], out_size: tuple[int, int]) -> MaskChunk:
  """Masks of the selected queries on a chunk of frames.

  Args:
    mask_embed: `[k, C]` mask embeddings of the selected queries.
    mask_features: `[t, h, w, C]` VITA mask features (stride 4 of the padded input).
    interim_size: `(Hp, Wp)` padded input size; image_size: `(h, w)` resized image before padding;
    out_size: `(H0, W0)` original video size.
  """
  logits = np.einsum('qc,thwc->qthw', mask_embed.astype(np.float32), mask_features.astype(np.float32))
  logits = _resize(logits, interim_size)[:, :, :image_size[0], :image_size[1]]
  soft = 1. / (1. + np.exp(-logits))
  hard = soft > 0.5
  k = logits.shape[0]
  soft_sum = (soft * hard).reshape(k, -1).sum(1)
  hard_count = hard.reshape(k, -1).sum(1).astype(np.float32)
  return MaskChunk(_resize(logits, out_size) > 0., soft_sum, hard_count)


@functools.partial(jax.jit, static_argnames=('interim_size', 'image_size', 'out_size'))
def chunk_masks_device(mask_embed: jax.Array, mask_features: jax.Array, *, interim_size: tuple[int, int],
                       image_size: tuple[int, int], out_size: tuple[int, int]) -> MaskChunk:
  """`chunk_masks` as one jitted computation on the accelerator (same arguments; float32, torch-exact bilinear
  matrices at HIGHEST precision); returns device arrays."""
  hp = jax.lax.Precision.HIGHEST
  logits = jnp.einsum('qc,thwc->qthw', mask_embed.astype(jnp.float32), mask_features.astype(jnp.float32),
                      precision=hp)
  k, t = logits.shape[:2]
  logits = resize_bilinear(logits.reshape((k * t,) + logits.shape[2:]), interim_size)
  logits = logits[:, :image_size[0], :image_size[1]]
  soft = jax.nn.sigmoid(logits)
  hard = soft > 0.5
  soft_sum = jnp.sum(jnp.where(hard, soft, 0.).reshape(k, -1), axis=1)
  hard_count = jnp.sum(hard.reshape(k, -1), axis=1).astype(jnp.float32)
  masks = resize_bilinear(logits, out_size) > 0.
  return MaskChunk(masks.reshape((k, t) + tuple(out_size)), soft_sum, hard_count)


def iter_chunk_masks(mask_embed: np.ndarray, mask_features: np.ndarray, interim_size: tuple[int, int],
                     image_size: tuple[int, int], out_size: tuple[int, int],
                     chunk_size: int = 5) -> Iterator[MaskChunk]:
  """`chunk_masks` over `mask_features [T, h, w, C]` in chunks of `chunk_size` frames."""
  for start in range(0, mask_features.shape[0], chunk_size):
    yield chunk_masks(mask_embed, mask_features[start:start + chunk_size], interim_size, image_size, out_size)


def video_inference(pred_logits: np.ndarray, pred_mask_embed: np.ndarray, mask_features: np.ndarray, *,
                    interim_size: tuple[int, int], image_size: tuple[int, int], out_size: tuple[int, int],
                    topk: int = 10, chunk_size: int = 5) -> tuple[Detections, np.ndarray]:
  """The whole `Vita.inference` post-processing for one video.

  Args:
    pred_logits: `[cQ, K+1]`, pred_mask_embed: `[cQ, C]` (last VITA layer); mask_features: `[T, h, w, C]`.

  Returns:
    Detections (scores = class probability x mask score) and their masks bool `[k, T, H0, W0]`.
  """
  det = select_topk(pred_logits, topk)
  embed = pred_mask_embed[det.queries]
  chunks = list(iter_chunk_masks(embed, mask_features, interim_size, image_size, out_size, chunk_size))
  soft = sum(c.soft_sum for c in chunks)
  hard = sum(c.hard_count for c in chunks)
  masks = np.concatenate([c.masks for c in chunks], axis=1)
  return det._replace(scores=det.scores * (soft / (hard + 1e-6))), masks
