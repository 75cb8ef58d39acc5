"""The ceiling of IDOL's inference path: ideal detector outputs built from ground truth.

`perfect_outputs` turns ground-truth masks into the outputs a perfect detector would give (right class at +10 logit,
exact box, one re-ID direction per instance, mask logits at the output stride); `predict_from_outputs` feeds them
through the real `IDOLPredictor` (query selection, NMS, tracker, short-track filter, mask upsampling, RLE records).
Evaluating those records gives the best AP any IDOL model can reach on a dataset at a given input size: what the
output stride, the tracker's rules and the ground truth's tiny fragments cost by themselves
(`benchmarks/eval_ceiling.py`; the test suite checks that it is exactly 1 where nothing is lost).
"""

from typing import Any

from flax import nnx
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax.inference import predictor as predictor_lib
from visjax.models import registry
from visjax.models.layers.functional import inverse_sigmoid


def perfect_outputs(gt_masks: np.ndarray, labels: np.ndarray, *, num_queries: int, num_classes: int,
                    reid_dim: int, stride: int = 4, soft: bool = True) -> tuple[np.ndarray, ...]:
  """Ideal last-layer outputs for the instances of one video.

  Args:
    gt_masks: bool `[N, T, H, W]` masks in the padded input frame (H, W multiples of `stride`).
    labels: int `[N]` contiguous class indices.
    num_queries, num_classes, reid_dim: model sizes (`N <= num_queries`, `N <= reid_dim`).
    stride: mask output stride.
    soft: mask logits from each stride cell's covered fraction (the best a stride-`stride` map can do after
      bilinear upsampling); False: ±10 from the cell's top-left pixel.

  Returns:
    `(logits [T, Q, C], boxes [T, Q, 4] cxcywh normalised, embeds [T, Q, E], mask_logits [T, Q, H/s, W/s])`;
    query k holds instance k in the frames where its mask is non-empty.
  """
  n, t, h, w = gt_masks.shape
  if n > min(num_queries, reid_dim):
    raise ValueError(f'perfect_outputs: {n} instances need num_queries and reid_dim >= {n}.')
  if h % stride or w % stride:
    raise ValueError(f'perfect_outputs: frame {h}x{w} is not a multiple of the stride {stride}.')
  logits = np.full((t, num_queries, num_classes), -10., np.float32)
  boxes = np.tile(np.float32([.5, .5, .1, .1]), (t, num_queries, 1))
  embeds = np.zeros((t, num_queries, reid_dim), np.float32)
  masks = np.full((t, num_queries, h // stride, w // stride), -10., np.float32)
  for k in range(n):
    for f in range(t):
      m = gt_masks[k, f]
      if not m.any():
        continue
      logits[f, k, labels[k]] = 10.
      ys, xs = np.nonzero(m)
      boxes[f, k] = [(xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h,
                     (xs.max() + 1 - xs.min()) / w, (ys.max() + 1 - ys.min()) / h]
      embeds[f, k, k] = 10.
      if soft:
        cover = m.reshape(h // stride, stride, w // stride, stride).mean(axis=(1, 3))
        masks[f, k] = np.asarray(inverse_sigmoid(cover, eps=1e-4))
      else:
        masks[f, k] = np.where(m[::stride, ::stride], 10., -10.)
  return logits, boxes, embeds, masks


def predict_from_outputs(model: nnx.Module, config: ml_collections.ConfigDict, outputs: tuple[np.ndarray, ...], *,
                         video_id: Any, image_size: tuple[int, int], orig_size: tuple[int, int]) -> list[dict]:
  """CodaLab records of `IDOLPredictor` run on precomputed detector `outputs` (as `perfect_outputs` returns)
  instead of the model's forward pass (`model` only sizes the predictor)."""
  length = len(outputs[0])
  served = 0

  def replay(images, sizes):
    del sizes
    nonlocal served
    n, start = len(images), served
    served += n
    pad = lambda x: np.concatenate([x[start:start + n], np.zeros((max(0, start + n - length),) + x.shape[1:],
                                                                 x.dtype)])
    return tuple(jnp.asarray(pad(x)) for x in outputs)

  idol = registry.get_method(config)
  meta = predictor_lib.VideoMeta(video_id=video_id, length=length, orig_size=tuple(orig_size))
  predictor = idol.make_predictor(model, meta, detector=replay)
  padded_hw = outputs[3].shape[-2:]
  stride = predictor.mask_stride
  predictor.add_frames(np.zeros((length, padded_hw[0] * stride, padded_hw[1] * stride, 3), np.uint8),
                       np.tile(np.asarray(image_size, np.int32), (length, 1)))
  return idol.records(predictor.finish(), video_id)
