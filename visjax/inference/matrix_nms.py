"""Matrix NMS (SOLOv2), the formulation of the official SOLO / VISOLO `matrix_nms`, on the host (numpy).

For candidates sorted by descending score, with `iou[i, j]` (upper triangle, `i < j`) the mask IoU of two
candidates of the same class:

  compensate[i] = max_k iou[k, i]                    (how much candidate i is itself suppressed)
  decay[j]      = min_i  f(iou[i, j]) / f(compensate[i])
  gaussian: f(x) = exp(-sigma * x^2);   linear: decay[j] = min_i (1 - iou[i, j]) / (1 - compensate[i])

and the updated score is `score * decay`. NaN propagates as in torch (`max` / `min` return NaN when any element
is NaN): two empty masks give IoU 0 / 0 and turn every updated score into NaN, which the official inference then
treats as "nothing kept".
"""

import numpy as np


def matrix_nms(seg_masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, *, kernel: str = 'gaussian',
               sigma: float = 2., sum_masks: np.ndarray | None = None) -> np.ndarray:
  """Updated scores of candidates already sorted by descending score.

  Args:
    seg_masks: `[n, H, W]` (or `[n, P]`) binary masks (any numeric dtype).
    labels: int `[n]` class of each candidate.
    scores: float `[n]` scores in descending order; the computation runs in this dtype.
    kernel: 'gaussian' or 'linear'.
    sigma: gaussian decay factor.
    sum_masks: optional `[n]` mask areas (computed when None).

  Returns:
    `[n]` updated scores in `scores.dtype`.
  """
  n = len(labels)
  dtype = np.asarray(scores).dtype
  if n == 0:
    return np.zeros((0,), dtype)
  flat = np.asarray(seg_masks).reshape(n, -1).astype(dtype)
  if sum_masks is None:
    sum_masks = flat.sum(axis=1)
  sum_masks = np.asarray(sum_masks, dtype)
  inter = flat @ flat.T
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.triu(inter / (sum_masks[None, :] + sum_masks[:, None] - inter), k=1)
  same_label = np.triu((labels[None, :] == labels[:, None]).astype(dtype), k=1)
  decay_iou = iou * same_label
  compensate_iou = decay_iou.max(axis=0)[:, None]  # [n, 1]: row i holds compensate[i]
  if kernel == 'gaussian':
    decay = np.exp(-sigma * decay_iou**2) / np.exp(-sigma * compensate_iou**2)
  elif kernel == 'linear':
    with np.errstate(divide='ignore', invalid='ignore'):
      decay = (1 - decay_iou) / (1 - compensate_iou)
  else:
    raise ValueError(f"matrix_nms: kernel must be 'gaussian' or 'linear', got {kernel!r}")
  return (np.asarray(scores) * decay.min(axis=0)).astype(dtype)
