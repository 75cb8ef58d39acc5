"""Torch sine position embeddings as the official code computes them (NCHW output), for parity tests.

Written from the behaviour of:
  * Deformable-DETR / VNext IDOL `models/position_encoding.py` `PositionEmbeddingSine(normalize=True)`: masked,
    cumulative counts `(cum - 0.5) / (last + 1e-6) * scale` (`offset=-0.5`);
  * DETR / Mask2Former `PositionEmbeddingSine(normalize=True)`: the same without the -0.5 (`offset=0.`);
  * IAI / AOT `lstt_block/position.py` `PositionEmbeddingSine(normalize=True)`: no mask, 0-based `arange`
    coordinates `y / (last + 1e-6) * scale` (`LSTTPositionEmbeddingSine`).
All arithmetic is torch float32, in the official order (true divisions, `temperature ** tensor`).
"""

import math

import torch
from torch import nn


def _encode(x_embed: torch.Tensor, y_embed: torch.Tensor, num_pos_feats: int, temperature: float) -> torch.Tensor:
  """`[B, H, W]` coordinates -> `[B, 2F, H, W]`, channels cat(pos_y, pos_x), sin/cos interleaved."""
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  pos_x = x_embed[:, :, :, None] / dim_t
  pos_y = y_embed[:, :, :, None] / dim_t
  pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
  pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
  return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingSine(nn.Module):
  """Masked sine embedding; `offset=-0.5` is Deformable-DETR / IDOL, `offset=0.` DETR / Mask2Former."""

  def __init__(self, num_pos_feats: int = 64, temperature: int = 10000, normalize: bool = True,
               scale: float | None = None, offset: float = -0.5):
    super().__init__()
    self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
    self.scale = 2 * math.pi if scale is None else scale
    self.offset = offset

  def forward(self, mask: torch.Tensor) -> torch.Tensor:
    """`mask` bool `[B, H, W]` (True on padding) -> float32 `[B, 2F, H, W]`."""
    not_mask = ~mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    if self.normalize:
      eps = 1e-6
      if self.offset:
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
      else:
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
    return _encode(x_embed, y_embed, self.num_pos_feats, self.temperature)


class LSTTPositionEmbeddingSine(nn.Module):
  """IAI / AOT LSTT embedding of an unpadded map: 0-based `arange` coordinates, one image (batch 1)."""

  def __init__(self, num_pos_feats: int = 64, temperature: int = 10000, normalize: bool = True):
    super().__init__()
    self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
    self.scale = 2 * math.pi

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """`x [N, C, H, W]` (only its size is read) -> float32 `[1, 2F, H, W]`."""
    h, w = x.shape[-2:]
    grid_y, grid_x = torch.meshgrid(torch.arange(0, h), torch.arange(0, w), indexing='ij')
    y_embed = grid_y.unsqueeze(0).float()
    x_embed = grid_x.unsqueeze(0).float()
    if self.normalize:
      eps = 1e-6
      y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
      x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
    return _encode(x_embed, y_embed, self.num_pos_feats, self.temperature)
