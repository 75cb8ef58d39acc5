"""torch reference: Mask2Former's D2SwinTransformer (attribute names as in the official checkpoints)."""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def partition(x, w):
  b, h, wd, c = x.shape
  return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def unpartition(x, w, b, h, wd):
  return x.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, -1)


class WindowAttention(nn.Module):

  def __init__(self, dim, window, heads):
    super().__init__()
    self.window, self.heads = window, heads
    self.scale = (dim // heads)**-0.5
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1)**2, heads))
    yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
    coords = torch.stack([yy.flatten(), xx.flatten()])
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    self.register_buffer('relative_position_index', rel[..., 0] * (2 * window - 1) + rel[..., 1])
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, mask=None):
    bw, n, c = x.shape
    q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
    attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
      nw = mask.shape[0]
      attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
    return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):

  def __init__(self, dim, heads, window, shift):
    super().__init__()
    self.window, self.shift = window, shift
    self.norm1 = nn.LayerNorm(dim)
    self.attn = WindowAttention(dim, window, heads)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, 4 * dim)

  def forward(self, x, h, w, mask):
    b, _, c = x.shape
    ws = self.window
    y = self.norm1(x).view(b, h, w, c)
    pr, pb = (ws - w % ws) % ws, (ws - h % ws) % ws
    y = F.pad(y, (0, 0, 0, pr, 0, pb))
    hp, wp = y.shape[1:3]
    if self.shift:
      y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
    y = unpartition(self.attn(partition(y, ws), mask if self.shift else None), ws, b, hp, wp)
    if self.shift:
      y = torch.roll(y, (self.shift, self.shift), (1, 2))
    x = x + y[:, :h, :w].reshape(b, h * w, c)
    return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x, h, w):
    b, _, c = x.shape
    x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):

  def __init__(self, dim, depth, heads, window, downsample):
    super().__init__()
    self.window = window
    self.blocks = nn.ModuleList([Block(dim, heads, window, 0 if i % 2 == 0 else window // 2) for i in range(depth)])
    self.downsample = PatchMerging(dim) if downsample else None

  def forward(self, x, h, w):
    ws, sh = self.window, self.window // 2
    hp, wp = int(np.ceil(h / ws)) * ws, int(np.ceil(w / ws)) * ws
    img = torch.zeros(1, hp, wp, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -sh), slice(-sh, None)):
      for wsl in (slice(0, -ws), slice(-ws, -sh), slice(-sh, None)):
        img[:, hs, wsl, :] = cnt
        cnt += 1
    mw = partition(img, ws).squeeze(-1)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    for blk in self.blocks:
      x = blk(x, h, w, mask)
    if self.downsample is None:
      return x, h, w, x, h, w
    return x, h, w, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):

  def __init__(self, dim, patch=4):
    super().__init__()
    self.patch = patch
    self.proj = nn.Conv2d(3, dim, patch, patch)
    self.norm = nn.LayerNorm(dim)

  def forward(self, x):
    h, w = x.shape[2:]
    x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
    x = self.proj(x)
    hh, ww = x.shape[2:]
    return self.norm(x.flatten(2).transpose(1, 2)), hh, ww


class D2SwinTransformer(nn.Module):

  def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7):
    super().__init__()
    self.patch_embed = PatchEmbed(embed_dim)
    self.num_features = [embed_dim * 2**i for i in range(4)]
    self.layers = nn.ModuleList([
        BasicLayer(self.num_features[i], depths[i], num_heads[i], window_size, i < 3) for i in range(4)])
    for i in range(4):
      self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))

  def forward(self, x):
    x, h, w = self.patch_embed(x)
    outs = {}
    for i, layer in enumerate(self.layers):
      xo, ho, wo, x, h, w = layer(x, h, w)
      outs[f'res{i + 2}'] = getattr(self, f'norm{i}')(xo).view(-1, ho, wo, self.num_features[i]).permute(0, 3, 1, 2)
    return outs


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights: every parameter ~ N(0, 0.02) (tables, kernels), biases and LayerNorm affine perturbed."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      module, kind = name.split('.')[-2:]
      if module.startswith('norm'):  # LayerNorm affine
        base, std = (1.0, 0.2) if kind == 'weight' else (0.0, 0.1)
      elif kind == 'relative_position_bias_table':
        base, std = 0.0, 0.5
      elif kind == 'bias':
        base, std = 0.0, 0.1
      else:  # linear / conv weight, fan-in scaled
        base, std = 0.0, (1.0 / p[0].numel())**0.5
      p.copy_(base + std * torch.randn(p.shape, generator=g))
  return model.eval()
