"""mmcv 1.x box NMS on the host (NumPy, float32 as the op): `nms` and `batched_nms`. The torchvision form is
`visjax.inference.postprocess.batched_nms`; both take IoUs from `visjax.losses.box_iou`.

Semantics of mmcv's CPU `nms` op (offset 0): boxes sorted by decreasing score (stable here), a later box suppressed
when its IoU with a kept one is >= `iou_threshold` (torchvision: >). Degenerate (zero-area) pairs give IoU NaN and
are never suppressed. `batched_nms` (class-aware unless `class_agnostic`) shifts every box by
`label * (max coordinate + 1)` first, as mmcv does even when all labels are equal (which changes the float32
rounding of the IoUs, not the math).
"""

import numpy as np

from visjax import losses


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """`boxes [N, 4]` xyxy, `scores [N]` -> int64 indices kept, by decreasing score."""
  boxes = np.asarray(boxes, np.float32)
  order = np.argsort(-np.asarray(scores, np.float32), kind='stable')
  with np.errstate(invalid='ignore', divide='ignore'):
    ious, _ = losses.box_iou(boxes, boxes)
  suppressed = np.zeros(len(boxes), bool)
  keep = []
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= ious[i] >= np.float32(iou_threshold)
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
