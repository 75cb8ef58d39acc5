"""Reference MSDA implementations shared by the MSDA tests: a float64 NumPy oracle and the torch formulation.

Independent of the code under test (no visjax / pallas_kernels imports)."""

import numpy as np


def msda_numpy(value, spatial_shapes, locations, weights):
  """float64 oracle: per level and per corner, grid_sample(bilinear, zeros, align_corners=False)."""
  value, locations, weights = (np.asarray(x, np.float64) for x in (value, locations, weights))
  b, _, m, d = value.shape
  q = locations.shape[1]
  out = np.zeros((b, q, m, d))
  bi = np.arange(b)[:, None, None, None]
  mi = np.arange(m)[None, None, :, None]
  starts = np.cumsum([0] + [h * w for h, w in spatial_shapes])
  for lvl, ((h, w), start) in enumerate(zip(spatial_shapes, starts)):
    v = value[:, start:start + h * w].reshape(b, h, w, m, d)
    x = locations[:, :, :, lvl, :, 0] * w - 0.5  # [B, Q, M, P]
    y = locations[:, :, :, lvl, :, 1] * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    for cy in (y0, y0 + 1):
      for cx in (x0, x0 + 1):
        bilinear = (1 - np.abs(x - cx)) * (1 - np.abs(y - cy))
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        yi = np.clip(cy, 0, h - 1).astype(np.int64)
        xi = np.clip(cx, 0, w - 1).astype(np.int64)
        corner = v[bi, yi, xi, mi]  # [B, Q, M, P, D]
        coef = np.where(inside, bilinear * weights[:, :, :, lvl], 0.0)
        out += np.einsum('bqmp,bqmpd->bqmd', coef, corner)
  return out.reshape(b, q, m * d)


def torch_core(value, spatial_shapes, locations, weights):
  """Deformable-DETR's ms_deform_attn_core_pytorch (torch tensors in, [B, Q, M*D] out)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  b, _, m, d = value.shape
  _, q, _, lvl, p, _ = locations.shape
  per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
  grids = 2 * locations - 1
  sampled = []
  for i, (h, w) in enumerate(spatial_shapes):
    v = per_level[i].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
    g = grids[:, :, :, i].transpose(1, 2).flatten(0, 1)
    sampled.append(F.grid_sample(v, g, mode='bilinear', padding_mode='zeros', align_corners=False))
  weights = weights.transpose(1, 2).reshape(b * m, 1, q, lvl * p)
  out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(b, m * d, q)
  return out.transpose(1, 2).contiguous()
