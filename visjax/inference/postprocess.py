"""Host-side (NumPy) post-processing shared by the trackers: sigmoid, mask IoU, mask NMS, class-aware box NMS,
(RLE encoding: `visjax.evaluation.results.encode_mask`). Box geometry comes from `visjax.losses` (its box utilities accept NumPy
arrays), so there is one definition of IoU in the code base."""

import numpy as np

from visjax import losses


def sigmoid(x: np.ndarray) -> np.ndarray:
  """float32 logistic function (stable for large |x|)."""
  x = np.asarray(x, np.float32)
  e = np.exp(-np.abs(x))
  return np.where(x >= 0, 1. / (1. + e), e / (1. + e)).astype(np.float32)


def mask_iou(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
  """Pairwise `(I + 1e-6) / (U + 1e-6)` of binary masks `[n, ...]` x `[m, ...]` -> `[n, m]` (IDOL's mask_iou)."""
  a = np.asarray(masks1, bool).reshape(len(masks1), -1).astype(np.float32)
  b = np.asarray(masks2, bool).reshape(len(masks2), -1).astype(np.float32)
  inter = a @ b.T
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return (inter + 1e-6) / (union + 1e-6)


def mask_nms(masks: np.ndarray, thr: float) -> np.ndarray:
  """Greedy mask NMS in the given order: a kept mask removes every later mask with IoU > `thr`.

  Args:
    masks: bool `[n, h, w]`.
    thr: IoU threshold.

  Returns:
    bool `[n]` keep flags.
  """
  n = len(masks)
  keep = np.ones(n, bool)
  if n == 0:
    return keep
  ious = mask_iou(masks, masks)
  for i in range(n - 1):
    if keep[i]:
      keep[i + 1:] &= ~(ious[i, i + 1:] > thr)
  return keep


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thr: float) -> np.ndarray:
  """Class-aware NMS on xyxy boxes (torchvision `batched_nms`): indices kept, by decreasing score (stable ties)."""
  order = np.argsort(-scores, kind='stable')
  keep = []
  suppressed = np.zeros(len(scores), bool)
  ious, _ = losses.box_iou(np.asarray(boxes), np.asarray(boxes))
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= (ious[i] > thr) & (labels == labels[i])
  return np.asarray(keep, np.int64)

