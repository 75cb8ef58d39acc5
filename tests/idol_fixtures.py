"""NumPy-only fixtures for the IDOL tests: a synthetic `[B, 2, ...]` training batch and random model outputs."""

import numpy as np


def _rect_mask(rng, h, w):
  m = np.zeros((h, w), np.uint8)
  y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
  m[y0:y0 + rng.integers(4, h - y0), x0:x0 + rng.integers(4, w - x0)] = 1
  return m


def synthetic_batch(rng, b=2, n=4, h=32, w=32, num_classes=3, image_size=(28, 32)):
  """A `[B, 2, ...]` batch (INTERFACES §1) with assorted instance states."""
  masks = np.zeros((b, 2, n, h, w), np.uint8)
  boxes = np.zeros((b, 2, n, 4), np.float32)
  present = np.zeros((b, 2, n), bool)
  ih, iw = image_size
  # slot 0: both frames; 1: key only; 2: reference only (dropped); 3: padding (clip 0) / crowd (clip 1)
  states = [(True, True), (True, False), (False, True), (True, True)]
  for bi in range(b):
    for i, (pk, pr) in enumerate(states):
      for t, p in enumerate((pk, pr)):
        if not p:
          continue
        m = _rect_mask(rng, ih, iw)
        masks[bi, t, i, :ih, :iw] = m
        ys, xs = np.nonzero(m)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        boxes[bi, t, i] = [(x0 + x1) / 2 / iw, (y0 + y1) / 2 / ih, (x1 - x0) / iw, (y1 - y0) / ih]
        present[bi, t, i] = True
  valid = np.array([[True, True, True, False], [True, True, True, True]])[:b]
  crowd = np.array([[False, False, False, False], [False, False, False, True]])[:b]
  masks *= valid[:, None, :, None, None]
  boxes *= valid[:, None, :, None]
  present &= valid[:, None, :]
  labels = np.where(valid, rng.integers(0, num_classes, size=(b, n)), -1).astype(np.int32)
  return {
      'image': np.zeros((b, 2, h, w, 3), np.uint8),
      'image_size': np.tile(np.array(image_size, np.int32), (b, 2, 1)),
      'boxes': boxes, 'masks': masks, 'present': present, 'labels': labels,
      'track_ids': np.where(valid, np.arange(n), -1).astype(np.int32), 'instance_valid': valid,
      'is_crowd': crowd, 'video_id': np.arange(b, dtype=np.int32),
      'frame_index': np.tile(np.array([0, 3], np.int32), (b, 1)),
  }


def synthetic_outputs(rng, batch, num_layers=2, q=120, c=3, e=16):
  """Random model outputs with boxes scattered around the gts (so in-box / centre terms vary)."""
  b = batch['labels'].shape[0]
  frames = 2 * b
  h, w = batch['masks'].shape[-2:]
  gt = batch['boxes'].reshape(frames, -1, 4)
  pick = rng.integers(0, gt.shape[1], size=(num_layers, frames, q))
  centre = np.take_along_axis(np.broadcast_to(gt[None], (num_layers,) + gt.shape), pick[..., None], axis=2)
  centre = np.where(centre[..., 2:3] > 0, centre, rng.uniform(0.2, 0.8, size=centre.shape))
  boxes = np.concatenate([
      np.clip(centre[..., :2] + rng.normal(scale=0.08, size=centre[..., :2].shape), 0.02, 0.98),
      np.clip(centre[..., 2:] * rng.uniform(0.5, 1.5, size=centre[..., 2:].shape), 0.05, 0.9)], -1)
  return {
      'pred_logits': rng.normal(scale=1.5, size=(num_layers, frames, q, c)).astype(np.float32),
      'pred_boxes': boxes.astype(np.float32),
      'pred_masks': rng.normal(scale=2., size=(num_layers, frames, q, h // 4, w // 4)).astype(np.float32),
      'pred_embeds': rng.normal(scale=0.3, size=(frames, q, e)).astype(np.float32),
  }
