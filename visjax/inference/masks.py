"""Host-side mask resizing with PyTorch semantics (numpy).

`resize_binary_mask` is the official VISOLO output step (`F.interpolate(masks, (h, w), mode='bilinear',
align_corners=False) >= 0.5` on 0/1 masks) for one mask, using the same separable interpolation matrices as
`visjax.models.layers.resize` (float32, torch's source-index arithmetic), so it runs per frame without holding a
`[K, T, H, W]` tensor.
"""

import numpy as np

from visjax.models.layers.resize import bilinear_matrix


def resize_binary_mask(mask: np.ndarray, size: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
  """`mask [H, W]` (bool / 0-1) -> bool `[h, w]`: bilinear (align_corners=False, no antialias) then `>= threshold`."""
  mh = bilinear_matrix(mask.shape[0], int(size[0]))
  mw = bilinear_matrix(mask.shape[1], int(size[1]))
  return (mh @ np.asarray(mask, np.float32) @ mw.T) >= np.float32(threshold)
