"""Torch CPU reference of IAI + CondInst (zfonemore/IAI, mmdet 2.11 fork) with the official attribute names.

Written for parity tests from the behaviour of `mmdet/models/detectors/iai_condinst.py`,
`dense_heads/iai_condinst_head.py`, `necks/fpn.py` and `lstt_block/{lstt,transformer,basic,gct,position}.py`:
`state_dict()` keys are the official ones (`backbone.*`, `neck.*`, `bbox_head.*`, `lstt.*`, `encoder_projector.*`,
`backbone_projector.*`). Sizes are parameters so tests run tiny; the official model is `channels=(256, 512, 1024,
2048)`, d_model 256, feat 256, mask 128, max_obj 20.

The short-term attention uses the pure-tensor path of `MultiheadLocalAttentionV2` (unfold of the zero-padded key
map instead of `spatial_correlation_sampler`, which computes the same correlation), then scatters the local
weights into a dense matrix as the official `local2global`. Tensors in the LSTT are sequence-first `[HW, B, C]`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
  """mmcv ConvModule: conv (bias only without norm) -> optional GN (`gn`) -> optional ReLU."""

  def __init__(self, cin, cout, k, stride=1, norm=False, act=False):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not norm)
    if norm:
      self.gn = nn.GroupNorm(32, cout)
    self.act = act

  def forward(self, x):
    x = self.conv(x)
    if hasattr(self, 'gn'):
      x = self.gn(x)
    return F.relu(x) if self.act else x


class FPN(nn.Module):
  """mmdet FPN, start_level 1, extra convs on output, ReLU before the extra convs after the first."""

  def __init__(self, in_channels, out_channels, num_outs=5, start_level=1):
    super().__init__()
    self.start_level = start_level
    self.num_outs = num_outs
    self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels[start_level:])
    used = len(in_channels) - start_level
    self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3) for _ in range(used)] +
                                   [ConvModule(out_channels, out_channels, 3, 2) for _ in range(num_outs - used)])

  def forward(self, inputs):
    lat = [c(inputs[i + self.start_level]) for i, c in enumerate(self.lateral_convs)]
    for i in range(len(lat) - 1, 0, -1):
      lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode='nearest')
    outs = [self.fpn_convs[i](lat[i]) for i in range(len(lat))]
    outs.append(self.fpn_convs[len(lat)](outs[-1]))
    for i in range(len(lat) + 1, self.num_outs):
      outs.append(self.fpn_convs[i](F.relu(outs[-1])))
    return outs


class Scale(nn.Module):

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

  def forward(self, x):
    return x * self.scale


def aligned_bilinear(tensor, factor):
  if factor == 1:
    return tensor
  h, w = tensor.size()[2:]
  tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode='replicate')
  oh, ow = factor * h + 1, factor * w + 1
  tensor = F.interpolate(tensor, size=(oh, ow), mode='bilinear', align_corners=True)
  tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode='replicate')
  return tensor[:, :, :oh - 1, :ow - 1]


class IAICondInstHead(nn.Module):
  """FCOS towers (cls/reg stacked, ID one conv), output convs, Scale per level, mask branch (BN)."""

  def __init__(self, num_classes, max_obj_num, in_channels, feat_channels, stacked_convs=4,
               strides=(8, 16, 32, 64, 128), mask_channels=128, mask_out=8, num_params=169):
    super().__init__()
    self.strides = strides
    self.cls_convs = nn.ModuleList()
    self.id_convs = nn.ModuleList()
    self.reg_convs = nn.ModuleList()
    for i in range(stacked_convs):
      chn = in_channels if i == 0 else feat_channels
      self.cls_convs.append(ConvModule(chn, feat_channels, 3, norm=True, act=True))
      if i == 0:
        self.id_convs.append(ConvModule(chn, feat_channels, 3, norm=True, act=True))
      self.reg_convs.append(ConvModule(chn, feat_channels, 3, norm=True, act=True))
    self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
    self.conv_id = nn.Conv2d(feat_channels, max_obj_num, 3, padding=1)
    self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
    self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
    self.controller = nn.Conv2d(feat_channels, num_params, 3, padding=1)
    self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
    self.mask_refine = nn.ModuleList(
        nn.Sequential(nn.Conv2d(feat_channels, mask_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(mask_channels),
                      nn.ReLU()) for _ in range(3))
    tower = [nn.Sequential(nn.Conv2d(mask_channels, mask_channels, 3, 1, 1, bias=False),
                           nn.BatchNorm2d(mask_channels), nn.ReLU()) for _ in range(stacked_convs)]
    tower.append(nn.Conv2d(mask_channels, mask_out, 1, 1))
    self.mask_head = nn.Sequential(*tower)

  def forward(self, feats):
    out = {k: [] for k in ('cls_scores', 'id_scores', 'bbox_preds', 'centernesses', 'kernel_preds')}
    for i, (x, scale) in enumerate(zip(feats, self.scales)):
      cls_feat, id_feat, reg_feat = x, x, x
      for m in self.cls_convs:
        cls_feat = m(cls_feat)
      for m in self.id_convs:
        id_feat = m(id_feat)
      for m in self.reg_convs:
        reg_feat = m(reg_feat)
      out['cls_scores'].append(self.conv_cls(cls_feat))
      out['id_scores'].append(self.conv_id(id_feat))
      out['bbox_preds'].append(F.relu(scale(self.conv_reg(reg_feat)).float()) * self.strides[i])
      out['centernesses'].append(self.conv_centerness(reg_feat))
      out['kernel_preds'].append(self.controller(reg_feat))
      if i == 0:
        mask_feat = self.mask_refine[i](x)
      elif i <= 2:
        x_p = self.mask_refine[i](x)
        mask_feat = mask_feat + aligned_bilinear(x_p, mask_feat.shape[2] // x_p.shape[2])
    out['mask_feat'] = self.mask_head(mask_feat)
    return out


# ---------------------------------------------------------------------------------------------------------- LSTT


def seq_to_2d(tensor, size_2d):
  h, w = size_2d
  _, n, c = tensor.size()
  return tensor.view(h, w, n, c).permute(2, 3, 0, 1).contiguous()


class GCT(nn.Module):

  def __init__(self, num_channels, epsilon=1e-5):
    super().__init__()
    self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1))
    self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
    self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
    self.epsilon = epsilon

  def forward(self, x):
    embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
    norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
    return x * (1. + torch.tanh(embedding * norm + self.beta))


class GNActGCTDWConv2d(nn.Module):

  def __init__(self, indim):
    super().__init__()
    self.gn = nn.GroupNorm(32, indim)
    self.GCT = GCT(indim)
    self.conv = nn.Conv2d(indim, indim, 5, padding=2, groups=indim, bias=False)

  def forward(self, x, size_2d):
    h, w = size_2d
    _, bs, c = x.size()
    x = x.view(h, w, bs, c).permute(2, 3, 0, 1)
    x = self.conv(self.GCT(F.gelu(self.gn(x))))
    return x.view(bs, c, h * w).permute(2, 0, 1)


class AOTMultiheadAttention(nn.Module):

  def __init__(self, d_model, nhead, use_linear=True):
    super().__init__()
    self.d_model, self.nhead, self.hidden_dim = d_model, nhead, d_model // nhead
    self.T = (d_model / nhead) ** 0.5
    self.use_linear = use_linear
    if use_linear:
      self.linear_Q = nn.Linear(d_model, d_model)
      self.linear_K = nn.Linear(d_model, d_model)
      self.linear_V = nn.Linear(d_model, d_model)
    self.projection = nn.Linear(d_model, d_model)

  def forward(self, Q, K, V):
    bs = Q.size(1)
    if self.use_linear:
      Q, K, V = self.linear_Q(Q), self.linear_K(K), self.linear_V(V)
    Q = Q.view(-1, bs, self.nhead, self.hidden_dim).permute(1, 2, 0, 3) / self.T
    K = K.view(-1, bs, self.nhead, self.hidden_dim).permute(1, 2, 3, 0)
    V = V.view(-1, bs, self.nhead, self.hidden_dim).permute(1, 2, 0, 3)
    attn = torch.softmax(Q @ K, dim=-1)
    out = (attn @ V).permute(2, 0, 1, 3).reshape(-1, bs, self.d_model)
    return self.projection(out)


class MultiheadLocalAttentionV2(nn.Module):

  def __init__(self, d_model, nhead, max_dis=7):
    super().__init__()
    self.window_size = 2 * max_dis + 1
    self.max_dis = max_dis
    self.nhead = nhead
    self.T = (d_model / nhead) ** 0.5
    self.relative_emb = nn.Conv2d(d_model, nhead * self.window_size ** 2, kernel_size=1, groups=nhead)
    self.V_bias = nn.Parameter(torch.zeros([1, nhead, d_model // nhead, self.window_size ** 2, 1]))
    self.fc = nn.Linear(d_model, d_model)

  def pad_and_unfold(self, x):
    x = F.pad(x, (self.max_dis,) * 4, mode='constant', value=0)
    return F.unfold(x, kernel_size=(self.window_size, self.window_size), stride=(1, 1))

  def forward(self, q, k, v):
    n, c, h, w = v.size()
    hd = c // self.nhead
    ws2 = self.window_size ** 2
    relative_emb = self.relative_emb(q).view(n, self.nhead, ws2, h * w)
    v = v.view(-1, self.nhead, hd, h * w)
    q = (q / self.T).view(-1, hd, h, w)
    k = k.reshape(-1, hd, h, w)
    mask = self.pad_and_unfold(torch.ones((1, 1, h, w))).bool().view(1, 1, ws2, h * w).expand(n, self.nhead, -1, -1)
    unfolded_k = self.pad_and_unfold(k).view(n * self.nhead, hd, ws2, h, w)
    qk = (q.unsqueeze(2) * unfolded_k).sum(dim=1).view(n, self.nhead, ws2, h * w) + relative_emb
    qk = qk.masked_fill(~mask, -1e8)
    attn = torch.softmax(qk, dim=2)
    agg_bias = torch.einsum('bhwn,hcw->nbhc', attn, self.V_bias.squeeze(0).squeeze(-1)).reshape(h * w, n, c)
    global_attn = self.local2global(attn, h, w)
    agg_value = torch.einsum('bhnm,bhcm->nbhc', global_attn, v).reshape(h * w, n, c)
    return self.fc(agg_value + agg_bias)

  def local2global(self, local_attn, height, width):
    b = local_attn.size(0)
    ph, pw = height + 2 * self.max_dis, width + 2 * self.max_dis
    ky, kx = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing='ij')
    qy, qx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    oy = qy.reshape(-1, 1) - ky.reshape(1, -1) + self.max_dis
    ox = qx.reshape(-1, 1) - kx.reshape(1, -1) + self.max_dis
    local_mask = ((oy.abs() <= self.max_dis) & (ox.abs() <= self.max_dis)).view(1, 1, height * width, ph, pw)
    g = torch.zeros((b, self.nhead, height * width, ph, pw))
    g.masked_scatter_(local_mask, local_attn.transpose(-1, -2).contiguous())
    m = self.max_dis
    return g[:, :, :, m:-m, m:-m].reshape(b, self.nhead, height * width, height * width)


class LongShortTermTransformerBlock(nn.Module):

  def __init__(self, d_model, self_nhead, att_nhead, dim_feedforward, max_dis=7):
    super().__init__()
    self.self_attn = AOTMultiheadAttention(d_model, self_nhead)
    self.linear_Q = nn.Linear(d_model, d_model)
    self.linear_V = nn.Linear(d_model, d_model)
    self.long_term_attn = AOTMultiheadAttention(d_model, att_nhead, use_linear=False)
    self.short_term_attn = MultiheadLocalAttentionV2(d_model, att_nhead, max_dis)
    self.linear1 = nn.Linear(d_model, dim_feedforward)
    self.linear2 = nn.Linear(dim_feedforward, d_model)
    self.norm1 = nn.LayerNorm(d_model)
    self.norm2 = nn.LayerNorm(d_model)
    self.norm3 = nn.LayerNorm(d_model)
    self.activation = GNActGCTDWConv2d(dim_feedforward)

  def forward(self, tgt, long_term_memory, short_term_memory, long_term_id, self_pos, size_2d):
    _tgt = self.norm2(tgt)
    q = k = _tgt + self_pos
    tgt = tgt + self.self_attn(q, k, _tgt)
    _tgt = self.norm1(tgt)
    curr_Q = self.linear_Q(_tgt)
    curr_K, curr_V = curr_Q, _tgt
    local_Q = seq_to_2d(curr_Q, size_2d)
    if long_term_memory is None:
      global_K, global_V = curr_K, self.linear_V(_tgt + long_term_id)
      local_K, local_V = seq_to_2d(global_K, size_2d), seq_to_2d(global_V, size_2d)
    else:
      global_K, global_V = long_term_memory
      local_K, local_V = short_term_memory
    tgt2 = self.long_term_attn(curr_Q, global_K, global_V)
    tgt3 = self.short_term_attn(local_Q, local_K, local_V)
    tgt = tgt + tgt2 + tgt3
    tgt = tgt + self.linear2(self.activation(self.linear1(self.norm3(tgt)), size_2d))
    return tgt, [[curr_K, curr_V], [global_K, global_V], [local_K, local_V]]


class LongShortTermTransformer(nn.Module):

  def __init__(self, num_layers, d_model, self_nhead, att_nhead, dim_feedforward, max_dis=7):
    super().__init__()
    self.layers = nn.ModuleList(LongShortTermTransformerBlock(d_model, self_nhead, att_nhead, dim_feedforward, max_dis)
                                for _ in range(num_layers))
    self.decoder_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))

  def forward(self, tgt, long_term_memories, short_term_memories, long_term_id, self_pos, size_2d):
    output, intermediate, memories = tgt, [], []
    for idx, layer in enumerate(self.layers):
      output, mem = layer(output, long_term_memories[idx] if long_term_memories is not None else None,
                          short_term_memories[idx] if short_term_memories is not None else None,
                          long_term_id, self_pos, size_2d)
      intermediate.append(output)
      memories.append(mem)
    intermediate[-1] = self.decoder_norms[-1](output)
    for idx in range(len(intermediate) - 1):
      intermediate[idx] = self.decoder_norms[idx](intermediate[idx])
    return intermediate, memories


def aot_position(h, w, num_pos_feats, temperature=10000):
  """PositionEmbeddingSine of lstt_block/position.py: 0-based index / (last index + 1e-6) * 2π -> [1, C, h, w]."""
  grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
  y = grid_y.unsqueeze(0).float()
  x = grid_x.unsqueeze(0).float()
  y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
  x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  px, py = x[:, :, :, None] / dim_t, y[:, :, :, None] / dim_t
  px = torch.stack((px[:, :, :, 0::2].sin(), px[:, :, :, 1::2].cos()), dim=4).flatten(3)
  py = torch.stack((py[:, :, :, 0::2].sin(), py[:, :, :, 1::2].cos()), dim=4).flatten(3)
  return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class LSTTBlock(nn.Module):
  """The official LSTTBlock's state machine: reference frame, reset_memory, propagate, update_short_term_memory."""

  def __init__(self, max_obj_num, lstt_num, feat_channels, self_heads, attn_heads, dim_feedforward, max_dis=7,
               global_mem_interval=3):
    super().__init__()
    self.max_obj_num = max_obj_num
    self.long_term_mem_interval = global_mem_interval
    self.LSTT = LongShortTermTransformer(lstt_num, feat_channels, self_heads, attn_heads, dim_feedforward, max_dis)
    self.patch_wise_id_bank = nn.Conv2d(max_obj_num + 1, feat_channels, kernel_size=33, stride=32, padding=16)
    self.feat_channels = feat_channels
    self.restart()

  def restart(self, batch_size=1):
    self.batch_size = batch_size
    self.frame_step = 0
    self.last_mem_step = -1
    self.long_term_memories = None
    self.short_term_memories = None
    self.size_2d = None

  def assign_identity(self, one_hot_mask):
    return self.patch_wise_id_bank(one_hot_mask).view(self.batch_size, -1, self.hw).permute(2, 0, 1)

  def lstt_forward(self, x, long_mem, short_mem, long_term_id):
    n, c, h, w = x.size()
    emb = x.view(n, c, h * w).permute(2, 0, 1)
    return self.LSTT(emb, long_mem, short_mem, long_term_id, self.pos_emb, self.size_2d)

  def forward(self, x, id_mask):
    if self.size_2d is None:
      self.size_2d = tuple(x.shape[2:])
      self.hw = self.size_2d[0] * self.size_2d[1]
    if self.frame_step == 0:
      self.last_mem_step = 0
      self.curr_enc = x
      self.pos_emb = aot_position(*self.size_2d, self.feat_channels // 2).expand(self.batch_size, -1, -1, -1).reshape(
          self.batch_size, -1, self.hw).permute(2, 0, 1)
      embs, mems = self.lstt_forward(x, None, None, self.assign_identity(id_mask))
      self.curr_memories = [m[0] for m in mems]
      self.long_term_memories = [m[1] for m in mems]
      self.short_term_memories = [m[2] for m in mems]
      self.frame_step += 1
    else:
      self.frame_step += 1
      embs, mems = self.lstt_forward(x, self.long_term_memories, self.short_term_memories, None)
      self.curr_memories = [list(m[0]) for m in mems]
    return embs

  def reset_memory(self, mask):
    self.frame_step = 1
    _, mems = self.lstt_forward(self.curr_enc, None, None, self.assign_identity(mask))
    self.long_term_memories = [m[1] for m in mems]
    self.short_term_memories = [m[2] for m in mems]

  def update_short_term_memory(self, mask, new_inst_exist=False):
    id_emb = self.assign_identity(mask)
    short = []
    for idx, (k, v) in enumerate(self.curr_memories):
      v = self.LSTT.layers[idx].linear_V(v + id_emb)
      self.curr_memories[idx] = [k, v]
      short.append([seq_to_2d(k, self.size_2d), seq_to_2d(v, self.size_2d)])
    self.short_term_memories = short
    if self.frame_step - self.last_mem_step >= self.long_term_mem_interval or new_inst_exist:
      self.long_term_memories = [[torch.cat([new, old], 0) for new, old in zip(n_mem, o_mem)]
                                 for n_mem, o_mem in zip(self.curr_memories, self.long_term_memories)]
      self.last_mem_step = self.frame_step


class IAIRef(nn.Module):
  """Backbone (a torchvision-layout ResNet returning res2..res5), projectors, LSTT, FPN, head.

  `frame(images, id_mask)` runs one frame as `IAICondInst.simple_test` does before post-processing: C5 ->
  encoder_projector -> LSTT; C5' = [X | LSTT outputs | backbone_projector(C5)] -> FPN(C2, C3, C4, C5') -> head.
  """

  def __init__(self, backbone, channels, *, num_classes, max_obj_num, d_model, feat_channels, stacked_convs,
               mask_channels, lstt_num=1, self_heads=4, attn_heads=2, dim_feedforward=1024, max_dis=7):
    super().__init__()
    self.backbone = backbone
    c5 = channels[-1]
    self.encoder_projector = nn.Conv2d(c5, d_model, kernel_size=1)
    self.backbone_projector = nn.Conv2d(c5, c5 - d_model * (1 + lstt_num), kernel_size=1)
    self.lstt = LSTTBlock(max_obj_num, lstt_num, d_model, self_heads, attn_heads, dim_feedforward, max_dis)
    self.neck = FPN(list(channels), feat_channels)
    self.bbox_head = IAICondInstHead(num_classes, max_obj_num, feat_channels, feat_channels, stacked_convs,
                                     mask_channels=mask_channels)

  def frame(self, images, id_mask):
    f = self.backbone(images)
    feats = [f['res2'], f['res3'], f['res4'], f['res5']]
    x = self.encoder_projector(feats[-1])
    embs = self.lstt(x, id_mask)
    n, c, h, w = x.shape
    c5 = torch.cat([x] + [e.view(h, w, n, c).permute(2, 3, 0, 1) for e in embs] +
                   [self.backbone_projector(feats[-1])], dim=1)
    fpn = self.neck([feats[0], feats[1], feats[2], c5])
    out = self.bbox_head(fpn)
    out.update(c5=c5, fpn=fpn, lstt=embs[-1].view(h, w, n, c).permute(2, 0, 1, 3))
    return out


def randomize_(model, seed=0):
  """Random weights at magnitudes where every part matters (BN statistics, GN/LN affines, V_bias, GCT, Scale).

  A `backbone` submodule is left alone (randomise it with `resnet_refs.randomize_`).
  """
  g = torch.Generator().manual_seed(seed)
  backbone = getattr(model, 'backbone', None)
  skip = set() if backbone is None else {id(m) for m in backbone.modules()}
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith('backbone.'):
        continue
      if p.dim() > 1:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
      else:
        p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1. if name.endswith(('weight', 'alpha')) else 0.))
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d) and id(m) not in skip:
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    for m in model.modules():
      if isinstance(m, GCT):
        m.gamma.copy_(torch.randn(m.gamma.shape, generator=g) * 0.5)
        m.beta.copy_(torch.randn(m.beta.shape, generator=g) * 0.5)
      if isinstance(m, MultiheadLocalAttentionV2):
        m.V_bias.copy_(torch.randn(m.V_bias.shape, generator=g) * 0.2)
  return model


def instance_mask_probs(mask_feat, points, strides, kernels, num_dyn=8):
  """The official dynamic mask head for selected points of one image (`relative_coordinate_feature_generator`,
  `parse_dynamic_params`, `mask_heads_forward`, `aligned_bilinear(., 2).sigmoid()`): mask_feat [8, H, W],
  points [K, 2], strides [K], kernels [K, 169] -> [K, 2H, 2W]."""
  n = len(points)
  h, w = mask_feat.shape[1:]
  ys, xs = torch.meshgrid(torch.arange(0, h * 8, 8, dtype=torch.float32),
                          torch.arange(0, w * 8, 8, dtype=torch.float32), indexing='ij')
  locations = torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=1) + 4
  rel = (points.reshape(-1, 1, 2) - locations.reshape(1, -1, 2)).permute(0, 2, 1).float()
  rel = rel / (strides.float().reshape(-1, 1, 1) * 8.0)
  x = torch.cat([rel.view(n, 2, h, w), mask_feat.repeat(n, 1, 1, 1)], dim=1).view(1, -1, h, w)
  weight_nums, bias_nums = [(num_dyn + 2) * num_dyn, num_dyn * num_dyn, num_dyn], [num_dyn, num_dyn, 1]
  splits = list(torch.split_with_sizes(kernels, weight_nums + bias_nums, dim=1))
  ws, bs = splits[:3], splits[3:]
  for l in range(3):
    out = num_dyn if l < 2 else 1
    x = F.conv2d(x, ws[l].reshape(n * out, -1, 1, 1), bias=bs[l].reshape(n * out), groups=n)
    if l < 2:
      x = F.relu(x)
  return aligned_bilinear(x.reshape(-1, 1, h, w), 2).sigmoid()[:, 0]
