"""mmcv 1.x box NMS on the host (NumPy, float32 as the op): `nms` and `batched_nms`.

Semantics of mmcv's CPU `nms` op: boxes sorted by decreasing score (stable here), IoU with `offset` 0 (areas
`(x2 - x1) * (y2 - y1)`), a later box suppressed when IoU >= `iou_threshold`. Degenerate (zero-area) pairs give IoU NaN and are never suppressed. `batched_nms` (class-aware unless
`class_agnostic`) shifts every box by `label * (max coordinate + 1)` first, as mmcv does even when all labels are
equal (which changes the float32 rounding of the IoUs, not the math).
"""

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, offset: float = 0.) -> np.ndarray:
  """`boxes [N, 4]` xyxy, `scores [N]` -> int64 indices kept, by decreasing score."""
  boxes = np.asarray(boxes, np.float32)
  order = np.argsort(-np.asarray(scores, np.float32), kind='stable')
  x1, y1, x2, y2 = boxes.T
  off = np.float32(offset)
  areas = (x2 - x1 + off) * (y2 - y1 + off)
  suppressed = np.zeros(len(boxes), bool)
  keep = []
  for pos, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    rest = order[pos + 1:]
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + off)
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + off)
    inter = w * h
    with np.errstate(invalid='ignore', divide='ignore'):  # 0/0 for empty boxes: NaN, never suppresses (as mmcv)
      iou = inter / (areas[i] + areas[rest] - inter)
    suppressed[rest[iou >= np.float32(iou_threshold)]] = True
  return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float, *,
                class_agnostic: bool = False) -> np.ndarray:
  """mmcv `batched_nms`: `nms` per label via coordinate offsets; indices kept, by decreasing score."""
  boxes = np.asarray(boxes, np.float32)
  if len(boxes) == 0:
    return np.zeros((0,), np.int64)
  if not class_agnostic:
    boxes = boxes + (np.asarray(labels, np.float32) * (boxes.max() + np.float32(1)))[:, None]
  return nms(boxes, scores, iou_threshold)
