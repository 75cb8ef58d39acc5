"""Torch CPU reference of the IDOL forward (Deformable-DETR + CondInst heads) with the official attribute names.

Written for parity tests from the behaviour of wjf5203/VNext `projects/IDOL/idol/models/{deformable_transformer,
deformable_detr, segmentation_condInst, position_encoding}.py`: the module tree and `state_dict()` keys are those of
the official `IDOL` meta-architecture (`detr.detr.backbone.0.backbone.*`, `detr.detr.transformer.*`,
`detr.controller.*`, ...), including the duplicate `detr.detr.transformer.decoder.bbox_embed.*` entries that the
shared box heads produce. MSDeformAttn uses the pure-PyTorch `grid_sample` core (no CUDA op).

`IDOLRef.forward(images, image_sizes)` takes normalised, zero-padded images `[N, 3, H, W]` (H, W multiples of 32)
and the unpadded `(h, w)` per image, and returns per-decoder-layer class logits, boxes, mask logits (all queries,
stride 4) and the last layer's re-ID embeddings, stacked like visjax's IDOL outputs (NCHW -> [.., H/4, W/4]).
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import position_ref


def inverse_sigmoid(x, eps=1e-5):
  x = x.clamp(min=0, max=1)
  return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
  """value [N, S, M, D], sampling_locations [N, Q, M, L, P, 2], attention_weights [N, Q, M, L, P] -> [N, Q, M*D]."""
  n, _, m, d = value.shape
  _, q, _, num_levels, p, _ = sampling_locations.shape
  sizes = [int(h) * int(w) for h, w in spatial_shapes]
  per_level = value.split(sizes, dim=1)
  grids = 2 * sampling_locations - 1
  sampled = []
  for lvl, (h, w) in enumerate(spatial_shapes):
    v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, int(h), int(w))
    g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [N*M, Q, P, 2]
    sampled.append(F.grid_sample(v, g, mode='bilinear', padding_mode='zeros', align_corners=False))
  weights = attention_weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * p)
  out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, q)
  return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):

  def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
    super().__init__()
    self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
    self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
    self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
    self.value_proj = nn.Linear(d_model, d_model)
    self.output_proj = nn.Linear(d_model, d_model)

  def forward(self, query, reference_points, input_flatten, spatial_shapes, input_padding_mask=None):
    n, q, c = query.shape
    s = input_flatten.shape[1]
    m, l, p = self.n_heads, self.n_levels, self.n_points
    value = self.value_proj(input_flatten)
    if input_padding_mask is not None:
      value = value.masked_fill(input_padding_mask[..., None], 0.)
    value = value.view(n, s, m, c // m)
    offsets = self.sampling_offsets(query).view(n, q, m, l, p, 2)
    weights = F.softmax(self.attention_weights(query).view(n, q, m, l * p), -1).view(n, q, m, l, p)
    if reference_points.shape[-1] == 2:
      normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(query)
      locs = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
      locs = reference_points[:, :, None, :, None, :2] + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5
    out = ms_deform_attn_core(value, spatial_shapes.tolist(), locs, weights)
    return self.output_proj(out)


class EncoderLayer(nn.Module):

  def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
    super().__init__()
    self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
    self.norm1 = nn.LayerNorm(d_model)
    self.linear1 = nn.Linear(d_model, d_ffn)
    self.linear2 = nn.Linear(d_ffn, d_model)
    self.norm2 = nn.LayerNorm(d_model)

  def forward(self, src, pos, ref, shapes, mask):
    src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes, mask))
    return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DecoderLayer(nn.Module):

  def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
    super().__init__()
    self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
    self.norm1 = nn.LayerNorm(d_model)
    self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.1)
    self.norm2 = nn.LayerNorm(d_model)
    self.linear1 = nn.Linear(d_model, d_ffn)
    self.linear2 = nn.Linear(d_ffn, d_model)
    self.norm3 = nn.LayerNorm(d_model)

  def forward(self, tgt, query_pos, ref, memory, shapes, mask):
    q = (tgt + query_pos).transpose(0, 1)
    tgt = self.norm2(tgt + self.self_attn(q, q, tgt.transpose(0, 1))[0].transpose(0, 1))
    tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, ref, memory, shapes, mask))
    return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Encoder(nn.Module):

  def __init__(self, num_layers, **kw):
    super().__init__()
    self.layers = nn.ModuleList([EncoderLayer(**kw) for _ in range(num_layers)])

  @staticmethod
  def reference_points(shapes, ratios):
    refs = []
    for lvl, (h, w) in enumerate(shapes.tolist()):
      ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing='ij')
      ry = ys.reshape(-1)[None] / (ratios[:, None, lvl, 1] * h)
      rx = xs.reshape(-1)[None] / (ratios[:, None, lvl, 0] * w)
      refs.append(torch.stack((rx, ry), -1))
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]

  def forward(self, src, shapes, ratios, pos, mask):
    ref = self.reference_points(shapes, ratios)
    for layer in self.layers:
      src = layer(src, pos, ref, shapes, mask)
    return src


class Decoder(nn.Module):

  def __init__(self, num_layers, **kw):
    super().__init__()
    self.layers = nn.ModuleList([DecoderLayer(**kw) for _ in range(num_layers)])
    self.bbox_embed = None

  def forward(self, tgt, ref, memory, shapes, ratios, query_pos, mask):
    hs, inter_refs = [], []
    for lid, layer in enumerate(self.layers):
      scale = ratios if ref.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
      tgt = layer(tgt, query_pos, ref[:, :, None] * scale[:, None], memory, shapes, mask)
      tmp = self.bbox_embed[lid](tgt)
      if ref.shape[-1] == 4:
        new_ref = (tmp + inverse_sigmoid(ref)).sigmoid()
      else:
        new_ref = torch.cat([tmp[..., :2] + inverse_sigmoid(ref), tmp[..., 2:]], -1).sigmoid()
      ref = new_ref.detach()
      hs.append(tgt)
      inter_refs.append(ref)
    return torch.stack(hs), torch.stack(inter_refs)


class DeformableTransformer(nn.Module):

  def __init__(self, d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, num_feature_levels,
               enc_n_points, dec_n_points):
    super().__init__()
    self.d_model, self.nhead = d_model, nhead
    kw = dict(d_model=d_model, d_ffn=dim_feedforward, n_levels=num_feature_levels, n_heads=nhead)
    self.encoder = Encoder(num_encoder_layers, n_points=enc_n_points, **kw)
    self.decoder = Decoder(num_decoder_layers, n_points=dec_n_points, **kw)
    self.level_embed = nn.Parameter(torch.randn(num_feature_levels, d_model))
    self.reference_points = nn.Linear(d_model, 2)

  @staticmethod
  def valid_ratio(mask):
    _, h, w = mask.shape
    return torch.stack([(~mask[:, 0, :]).sum(1).float() / w, (~mask[:, :, 0]).sum(1).float() / h], -1)

  def forward(self, srcs, masks, pos_embeds, query_embed):
    src_flat, mask_flat, pos_flat, shapes = [], [], [], []
    for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
      shapes.append(src.shape[-2:])
      src_flat.append(src.flatten(2).transpose(1, 2))
      mask_flat.append(mask.flatten(1))
      pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
    src_flat, mask_flat, pos_flat = torch.cat(src_flat, 1), torch.cat(mask_flat, 1), torch.cat(pos_flat, 1)
    shapes = torch.as_tensor([tuple(s) for s in shapes], dtype=torch.long)
    ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
    memory = self.encoder(src_flat, shapes, ratios, pos_flat, mask_flat)
    b, _, c = memory.shape
    query_pos, tgt = torch.split(query_embed, c, dim=1)
    query_pos = query_pos.unsqueeze(0).expand(b, -1, -1)
    tgt = tgt.unsqueeze(0).expand(b, -1, -1)
    init_ref = self.reference_points(query_pos).sigmoid()
    hs, inter_refs = self.decoder(tgt, init_ref, memory, shapes, ratios, query_pos, mask_flat)
    return hs, memory, init_ref, inter_refs


class MaskedBackbone(nn.Module):
  """Holds the d2 backbone (`resnet_refs.D2ResNet` or `swin_ref.D2SwinTransformer`, returning res2..res5) as
  `.backbone` (key prefix `backbone.0.backbone.`)."""

  def __init__(self, backbone):
    super().__init__()
    self.backbone = backbone


class MLP(nn.Module):

  def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
    super().__init__()
    h = [hidden_dim] * (num_layers - 1)
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([input_dim] + h, h + [output_dim]))

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
    return x


class DeformableDETR(nn.Module):

  def __init__(self, backbone, backbone_channels, num_classes, num_queries, d_model, nhead, enc_layers, dec_layers,
               dim_feedforward, num_feature_levels, enc_n_points, dec_n_points):
    super().__init__()
    self.num_feature_levels = num_feature_levels
    self.backbone = nn.Sequential(MaskedBackbone(backbone), position_ref.PositionEmbeddingSine(d_model // 2))
    self.transformer = DeformableTransformer(d_model, nhead, enc_layers, dec_layers, dim_feedforward,
                                             num_feature_levels, enc_n_points, dec_n_points)
    self.query_embed = nn.Embedding(num_queries, 2 * d_model)
    projs = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model)) for c in backbone_channels]
    in_ch = backbone_channels[-1]
    for _ in range(num_feature_levels - len(backbone_channels)):
      projs.append(nn.Sequential(nn.Conv2d(in_ch, d_model, 3, stride=2, padding=1), nn.GroupNorm(32, d_model)))
      in_ch = d_model
    self.input_proj = nn.ModuleList(projs)
    self.class_embed = nn.ModuleList([nn.Linear(d_model, num_classes) for _ in range(dec_layers)])
    self.bbox_embed = nn.ModuleList([MLP(d_model, d_model, 4, 3) for _ in range(dec_layers)])
    self.transformer.decoder.bbox_embed = self.bbox_embed  # shared, as the official box-refinement hack


class MaskHeadSmallConv(nn.Module):

  def __init__(self, dim, out_channels=None):
    super().__init__()
    self.lay1 = nn.Conv2d(dim, dim // 4, 3, padding=1)
    self.lay2 = nn.Conv2d(dim // 4, out_channels or dim // 32, 3, padding=1)
    self.lay3 = nn.Conv2d(dim, dim, 3, padding=1)
    self.lay4 = nn.Conv2d(dim, dim, 3, padding=1)
    self.dcn = nn.Conv2d(dim, dim, 3, padding=1)

  def forward(self, x):
    f = F.relu(self.lay3(x[-1]))
    f = x[-2] + F.interpolate(f, size=x[-2].shape[-2:], mode='nearest')
    f = F.relu(self.lay4(f))
    f = x[-3] + F.interpolate(f, size=x[-3].shape[-2:], mode='nearest')
    f = F.relu(self.dcn(f))
    f = F.relu(self.lay1(f))
    return F.relu(self.lay2(f))


def aligned_bilinear(tensor, factor):
  if factor == 1:
    return tensor
  h, w = tensor.shape[2:]
  tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode='replicate')
  oh, ow = factor * h + 1, factor * w + 1
  tensor = F.interpolate(tensor, size=(oh, ow), mode='bilinear', align_corners=True)
  tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode='replicate')
  return tensor[:, :, :oh - 1, :ow - 1]


def dynamic_mask_logits(mask_feats, reference_points, params, mask_feat_stride=8, mask_out_stride=4):
  """Per-image loop with grouped convs, as the official `dynamic_mask_with_coords` + `mask_heads_forward`.

  mask_feats [B, C, H, W]; reference_points [B, Q, 2] in pixels; params [B, Q, (C+2)*8 + 89] -> [B, Q, fH, fW].
  """
  b, c, h, w = mask_feats.shape
  q = params.shape[1]
  shifts_x = torch.arange(0, w * mask_feat_stride, step=mask_feat_stride, dtype=mask_feats.dtype)
  shifts_y = torch.arange(0, h * mask_feat_stride, step=mask_feat_stride, dtype=mask_feats.dtype)
  sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing='ij')
  locations = torch.stack((sx.reshape(-1), sy.reshape(-1)), dim=1) + mask_feat_stride // 2
  weight_nums, bias_nums = [(c + 2) * 8, 64, 8], [8, 8, 1]
  outs = []
  for i in range(b):
    rel = reference_points[i].reshape(q, 1, 1, 2) - locations.reshape(1, h, w, 2)
    rel = rel.permute(0, 3, 1, 2).flatten(-2)  # [Q, 2, HW]
    x = torch.cat([rel, mask_feats[i].reshape(1, c, h * w).expand(q, -1, -1)], dim=1).reshape(1, -1, h, w)
    splits = list(torch.split_with_sizes(params[i], weight_nums + bias_nums, dim=1))
    ws, bs = splits[:3], splits[3:]
    for layer in range(3):
      out_c = 8 if layer < 2 else 1
      x = F.conv2d(x, ws[layer].reshape(q * out_c, -1, 1, 1), bs[layer].reshape(q * out_c), groups=q)
      if layer < 2:
        x = F.relu(x)
    x = aligned_bilinear(x.reshape(q, 1, h, w), mask_feat_stride // mask_out_stride)
    outs.append(x.reshape(q, x.shape[-2], x.shape[-1]))
  return torch.stack(outs)


class CondInstSegm(nn.Module):

  def __init__(self, detr, d_model):
    super().__init__()
    self.detr = detr
    # 1x1 convs (C/32 + 2) -> 8 -> 8 -> 1: 169 parameters for C = 256.
    num_params = (d_model // 32 + 2) * 8 + 8 * 8 + 8 + 8 + 8 + 1
    self.controller = MLP(d_model, d_model, num_params, 3)
    self.mask_head = MaskHeadSmallConv(d_model)
    self.reid_embed_head = MLP(d_model, d_model, d_model, 3)


class IDOLRef(nn.Module):
  """State keys match the official checkpoint's `model` dict (see module docstring)."""

  def __init__(self, backbone, backbone_channels=(512, 1024, 2048), num_classes=40, num_queries=300, d_model=256,
               nhead=8, enc_layers=6, dec_layers=6, dim_feedforward=1024, num_feature_levels=4, enc_n_points=4,
               dec_n_points=4):
    super().__init__()
    detr = DeformableDETR(backbone, backbone_channels, num_classes, num_queries, d_model, nhead, enc_layers,
                          dec_layers, dim_feedforward, num_feature_levels, enc_n_points, dec_n_points)
    self.detr = CondInstSegm(detr, d_model)

  def forward(self, images, image_sizes):
    """images [N, 3, H, W] normalised and zero-padded; image_sizes [(h, w)] -> dict of per-layer outputs."""
    detr = self.detr.detr
    n, _, h, w = images.shape
    mask = torch.ones((n, h, w), dtype=torch.bool)
    for i, (hi, wi) in enumerate(image_sizes):
      mask[i, :hi, :wi] = False
    feats = detr.backbone[0].backbone(images)
    names = sorted(feats)[1:]  # res3, res4, res5
    srcs, masks, poses = [], [], []
    for l, name in enumerate(names):
      m = F.interpolate(mask[None].float(), size=feats[name].shape[-2:]).to(torch.bool)[0]
      srcs.append(detr.input_proj[l](feats[name]))
      masks.append(m)
      poses.append(detr.backbone[1](m))
    for l in range(len(names), detr.num_feature_levels):
      src = detr.input_proj[l](feats[names[-1]] if l == len(names) else srcs[-1])
      m = F.interpolate(masks[0][None].float(), size=src.shape[-2:]).to(torch.bool)[0]
      srcs.append(src)
      masks.append(m)
      poses.append(detr.backbone[1](m))
    hs, memory, init_ref, inter_refs = detr.transformer(srcs, masks, poses, detr.query_embed.weight)

    # Mask features from the encoder memory of the three finest levels.
    c = memory.shape[-1]
    maps, start = [], 0
    for src in srcs[:3]:
      hl, wl = src.shape[-2:]
      maps.append(memory[:, start:start + hl * wl].reshape(n, hl, wl, c).permute(0, 3, 1, 2))
      start += hl * wl
    mask_feats = self.detr.mask_head(maps)
    scale = torch.tensor([[wi, hi] for hi, wi in image_sizes], dtype=memory.dtype)

    logits, boxes, masks_out, refs = [], [], [], []
    for lvl in range(hs.shape[0]):
      ref = init_ref if lvl == 0 else inter_refs[lvl - 1]
      tmp = detr.bbox_embed[lvl](hs[lvl])
      if ref.shape[-1] == 4:
        box = (tmp + inverse_sigmoid(ref)).sigmoid()
      else:
        box = torch.cat([tmp[..., :2] + inverse_sigmoid(ref), tmp[..., 2:]], -1).sigmoid()
      logits.append(detr.class_embed[lvl](hs[lvl]))
      boxes.append(box)
      refs.append(ref if ref.shape[-1] == 4 else torch.cat([ref, torch.zeros_like(ref)], -1))
      params = self.detr.controller(hs[lvl])
      masks_out.append(dynamic_mask_logits(mask_feats, ref[..., :2] * scale[:, None], params))
    return {
        'pred_logits': torch.stack(logits),
        'pred_boxes': torch.stack(boxes),
        'pred_masks': torch.stack(masks_out),
        'pred_embeds': self.detr.reid_embed_head(hs[-1]),
        'references': torch.stack(refs),
        'memory': memory,
        'mask_feats': mask_feats,
    }
