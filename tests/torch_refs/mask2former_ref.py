"""Torch CPU reference of Mask2Former's MSDeformAttn pixel decoder and masked-attention decoder (VITA's copies:
the pixel decoder also returns its raw finest map, the decoder the per-layer frame queries), written for parity
tests from the behaviour of sukjunhwang/VITA `mask2former/modeling/pixel_decoder/msdeformattn.py` and
`vita/modeling/transformer_decoder/vita_mask2former_transformer_decoder.py`.

Attribute names are the official ones, so `state_dict()` has the official keys (`input_proj.{i}.{0,1}`,
`transformer.level_embed`, `transformer.encoder.layers.{i}.*`, `adapter_1(.norm)`, `layer_1(.norm)`,
`mask_features`, `transformer_{self,cross}_attention_layers.{i}.*`, `transformer_ffn_layers.{i}.*`, `decoder_norm`,
`query_feat`, `query_embed`, `level_embed`, `class_embed`, `mask_embed.layers.{j}`). Sequence-first attention as
in the official code; MSDeformAttn is the `grid_sample` core of `idol_ref`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_refs.idol_ref import EncoderLayer


def sine_pos(x, num_pos_feats, temperature=10000):
  """`PositionEmbeddingSine(num_pos_feats, normalize=True)(x, mask=None)`: `[B, 2F, H, W]`."""
  b, _, h, w = x.shape
  not_mask = torch.ones(b, h, w)
  y_embed = not_mask.cumsum(1, dtype=torch.float32)
  x_embed = not_mask.cumsum(2, dtype=torch.float32)
  y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
  x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_pos_feats)
  pos_x = x_embed[:, :, :, None] / dim_t
  pos_y = y_embed[:, :, :, None] / dim_t
  pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
  pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
  return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class D2Conv(nn.Conv2d):
  """detectron2 `Conv2d` with `norm` and `activation`."""

  def __init__(self, *args, norm=None, activation=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.norm = norm
    self.activation = activation

  def forward(self, x):
    x = super().forward(x)
    if self.norm is not None:
      x = self.norm(x)
    return self.activation(x) if self.activation is not None else x


class EncoderOnly(nn.Module):

  def __init__(self, d_model, nhead, num_layers, d_ffn, n_levels, n_points):
    super().__init__()
    self.encoder = nn.Module()
    self.encoder.layers = nn.ModuleList([EncoderLayer(d_model, d_ffn, n_levels, nhead, n_points)
                                         for _ in range(num_layers)])
    self.level_embed = nn.Parameter(torch.randn(n_levels, d_model))

  def forward(self, srcs, pos_embeds):
    src_flat, pos_flat, shapes = [], [], []
    for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
      shapes.append(tuple(src.shape[-2:]))
      src_flat.append(src.flatten(2).transpose(1, 2))
      pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
    src, pos = torch.cat(src_flat, 1), torch.cat(pos_flat, 1)
    spatial = torch.as_tensor(shapes, dtype=torch.long)
    refs = []
    for h, w in shapes:  # valid ratios are 1
      ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing='ij')
      refs.append(torch.stack((xs.reshape(-1)[None] / w, ys.reshape(-1)[None] / h), -1))
    ref = torch.cat(refs, 1)[:, :, None].repeat(1, 1, len(shapes), 1)
    mask = torch.zeros(src.shape[:2], dtype=torch.bool)
    for layer in self.encoder.layers:
      src = layer(src, pos, ref, spatial, mask)
    return src, shapes


class MSDeformAttnPixelDecoder(nn.Module):
  """res2..res5 in, encoder on res3..res5, one FPN level (res2)."""

  def __init__(self, in_channels, conv_dim, mask_dim, nheads=8, enc_layers=6, n_points=4, d_ffn=1024):
    super().__init__()
    self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(32, conv_dim))
                                     for c in in_channels[1:][::-1]])
    self.transformer = EncoderOnly(conv_dim, nheads, enc_layers, d_ffn, 3, n_points)
    self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
    self.adapter_1 = D2Conv(in_channels[0], conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim))
    self.layer_1 = D2Conv(conv_dim, conv_dim, 3, padding=1, bias=False, norm=nn.GroupNorm(32, conv_dim),
                          activation=F.relu)

  def forward(self, feats):
    """feats: res2..res5 NCHW -> (mask_features, out[-1], multi_scale_features, out)."""
    enc_feats = feats[1:][::-1]
    srcs = [proj(x) for proj, x in zip(self.input_proj, enc_feats)]
    pos = [sine_pos(x, x.shape[1] // 2) for x in srcs]
    y, shapes = self.transformer(srcs, pos)
    bs = y.shape[0]
    out = [z.transpose(1, 2).reshape(bs, -1, h, w)
           for z, (h, w) in zip(torch.split(y, [h * w for h, w in shapes], dim=1), shapes)]
    cur = self.adapter_1(feats[0])
    y = cur + F.interpolate(out[-1], size=cur.shape[-2:], mode='bilinear', align_corners=False)
    out.append(self.layer_1(y))
    return self.mask_features(out[-1]), out[-1], out[:3], out


class SelfAttentionLayer(nn.Module):

  def __init__(self, d_model, nhead):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.)
    self.norm = nn.LayerNorm(d_model)

  def forward(self, tgt, tgt_mask=None, tgt_key_padding_mask=None, query_pos=None):
    q = tgt if query_pos is None else tgt + query_pos
    out = self.self_attn(q, q, value=tgt, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
    return self.norm(tgt + out)


class CrossAttentionLayer(nn.Module):

  def __init__(self, d_model, nhead):
    super().__init__()
    self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.)
    self.norm = nn.LayerNorm(d_model)

  def forward(self, tgt, memory, memory_mask=None, pos=None, query_pos=None):
    out = self.multihead_attn(query=tgt if query_pos is None else tgt + query_pos,
                              key=memory if pos is None else memory + pos, value=memory, attn_mask=memory_mask)[0]
    return self.norm(tgt + out)


class FFNLayer(nn.Module):

  def __init__(self, d_model, dim_feedforward):
    super().__init__()
    self.linear1 = nn.Linear(d_model, dim_feedforward)
    self.linear2 = nn.Linear(dim_feedforward, d_model)
    self.norm = nn.LayerNorm(d_model)

  def forward(self, tgt):
    return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):

  def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
    super().__init__()
    h = [hidden_dim] * (num_layers - 1)
    self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
    return x


class VitaMultiScaleMaskedTransformerDecoder(nn.Module):

  def __init__(self, hidden_dim, num_classes, num_queries, nheads, dim_feedforward, dec_layers, mask_dim):
    super().__init__()
    self.num_heads, self.num_layers = nheads, dec_layers
    self.transformer_self_attention_layers = nn.ModuleList(
        [SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)])
    self.transformer_cross_attention_layers = nn.ModuleList(
        [CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)])
    self.transformer_ffn_layers = nn.ModuleList([FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)])
    self.decoder_norm = nn.LayerNorm(hidden_dim)
    self.query_feat = nn.Embedding(num_queries, hidden_dim)
    self.query_embed = nn.Embedding(num_queries, hidden_dim)
    self.level_embed = nn.Embedding(3, hidden_dim)
    self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
    self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

  def heads(self, output, mask_features, size):
    decoder_output = self.decoder_norm(output).transpose(0, 1)
    outputs_class = self.class_embed(decoder_output)
    outputs_mask = torch.einsum('bqc,bchw->bqhw', self.mask_embed(decoder_output), mask_features)
    attn_mask = F.interpolate(outputs_mask, size=size, mode='bilinear', align_corners=False)
    attn_mask = (attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5)
    return outputs_class, outputs_mask, attn_mask.bool().detach(), decoder_output

  def forward(self, x, mask_features):
    src, pos, sizes = [], [], []
    for i in range(3):
      sizes.append(x[i].shape[-2:])
      pos.append(sine_pos(x[i], x[i].shape[1] // 2).flatten(2).permute(2, 0, 1))
      src.append((x[i].flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
    bs = src[0].shape[1]
    query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
    output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
    classes, masks, frame_queries = [], [], []
    c, m, attn_mask, _ = self.heads(output, mask_features, sizes[0])
    classes.append(c)
    masks.append(m)
    self.num_unmasked_rows = 0
    for i in range(self.num_layers):
      level = i % 3
      full = attn_mask.sum(-1) == attn_mask.shape[-1]
      self.num_unmasked_rows += int(full.sum())
      attn_mask[torch.where(full)] = False
      output = self.transformer_cross_attention_layers[i](output, src[level], memory_mask=attn_mask,
                                                          pos=pos[level], query_pos=query_embed)
      output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
      output = self.transformer_ffn_layers[i](output)
      c, m, attn_mask, fq = self.heads(output, mask_features, sizes[(i + 1) % 3])
      classes.append(c)
      masks.append(m)
      frame_queries.append(fq)
    return torch.stack(classes), torch.stack(masks), torch.stack(frame_queries)


class MaskFormerHead(nn.Module):
  """`sem_seg_head`: returns the predictor outputs and the pixel decoder's."""

  def __init__(self, pixel_decoder, predictor):
    super().__init__()
    self.pixel_decoder = pixel_decoder
    self.predictor = predictor

  def forward(self, feats):
    mask_features, clip_mask_features, multi_scale, out = self.pixel_decoder(feats)
    return self.predictor(multi_scale, mask_features), (mask_features, clip_mask_features, out)


def randomize_(module, seed=0, scale=0.5):
  """Random values (fixed seed) for every parameter so norms / biases are not at their identity init."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if 'sampling_offsets' in name:
        p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith('bias') else 0.05))
      elif p.ndim == 1 and name.endswith('weight'):
        p.copy_(1. + 0.2 * torch.randn(p.shape, generator=g))
      else:
        fan_in = p.shape[1] * int(np.prod(p.shape[2:])) if p.ndim > 1 else 16
        p.copy_(torch.randn(p.shape, generator=g) * scale / math.sqrt(fan_in) * (1. if p.ndim > 1 else 0.5))
  return module
