"""Torch CPU reference of VITA (sukjunhwang/VITA `vita/modeling/transformer_decoder/vita.py` and the `Vita`
meta-architecture's forward in `vita/vita_model.py`), written for parity tests from the official behaviour.

`VITA` keeps the official attribute names and the official sequence-first layout, window bookkeeping (key-padding
mask of plain windows, rolled and blocked additive -1000 mask of shifted windows, repeated per head) and output
dict; `Vita` holds `backbone`, `sem_seg_head` (tests/torch_refs/mask2former_ref.py) and `vita_module`, so its
`state_dict()` has the official checkpoint keys.
"""

from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from torch_refs.mask2former_ref import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer


class VITA(nn.Module):

  def __init__(self, num_classes, hidden_dim=256, num_frame_queries=100, num_queries=100, nheads=8,
               dim_feedforward=2048, enc_layers=6, dec_layers=3, enc_window_size=6, conv_dim=256, mask_dim=256):
    super().__init__()
    self.num_heads, self.num_layers, self.enc_layers = nheads, dec_layers, enc_layers
    self.window_size, self.num_queries = enc_window_size, num_queries
    self.enc_self_attn = nn.ModuleList([SelfAttentionLayer(hidden_dim, nheads) for _ in range(enc_layers)])
    self.enc_ffn = nn.ModuleList([FFNLayer(hidden_dim, dim_feedforward) for _ in range(enc_layers)])
    self.transformer_self_attention_layers = nn.ModuleList(
        [SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)])
    self.transformer_cross_attention_layers = nn.ModuleList(
        [CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)])
    self.transformer_ffn_layers = nn.ModuleList([FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)])
    self.vita_mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
    self.decoder_norm = nn.LayerNorm(hidden_dim)
    self.query_feat = nn.Embedding(num_queries, hidden_dim)
    self.query_embed = nn.Embedding(num_queries, hidden_dim)
    self.fq_pos = nn.Embedding(num_frame_queries, hidden_dim)
    self.input_proj_dec = nn.Linear(hidden_dim, hidden_dim)
    self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
    self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
    self.sim_embed_frame = nn.Linear(hidden_dim, hidden_dim)
    self.sim_embed_clip = nn.Linear(hidden_dim, hidden_dim)

  def forward(self, frame_query, num_frames):
    """frame_query [L, B*T, fQ, C]; training: B = BT // num_frames; eval: last layer, B = 1 (official).

    Returns the official dict with every decoder layer stacked (`aux_outputs` are layers [:-1]) plus the
    per-encoder-layer outputs `encoder` [E, T, fQ, LB, C].
    """
    if not self.training:
      frame_query = frame_query[[-1]]
    L, BT, fQ, C = frame_query.shape
    B = BT // num_frames if self.training else 1
    T = num_frames if self.training else BT // B
    frame_query = frame_query.reshape(L * B, T, fQ, C).permute(1, 2, 0, 3).contiguous()
    frame_query = self.input_proj_dec(frame_query)
    if self.window_size > 0:
      pad = int(ceil(T / self.window_size)) * self.window_size - T
      _T = pad + T
      frame_query = F.pad(frame_query, (0, 0, 0, 0, 0, 0, 0, pad))
      enc_mask = frame_query.new_ones(L * B, _T).bool()
      enc_mask[:, :T] = False
    else:
      enc_mask = None
    self.encoder_outputs = []
    frame_query = self.encode_frame_query(frame_query, enc_mask)
    frame_query = frame_query[:T].flatten(0, 1)
    pred_fq_embed = self.sim_embed_frame(frame_query).transpose(0, 1).reshape(L, B, T, fQ, C)
    src = frame_query
    dec_pos = self.fq_pos.weight[None, :, None, :].repeat(T, 1, L * B, 1).flatten(0, 1)
    query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, L * B, 1)
    output = self.query_feat.weight.unsqueeze(1).repeat(1, L * B, 1)
    decoder_outputs = []
    for i in range(self.num_layers):
      output = self.transformer_cross_attention_layers[i](output, src, pos=dec_pos, query_pos=query_embed)
      output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
      output = self.transformer_ffn_layers[i](output)
      decoder_outputs.append(self.decoder_norm(output).transpose(0, 1).reshape(L, B, self.num_queries, C))
    decoder_outputs = torch.stack(decoder_outputs)
    return {'pred_logits': self.class_embed(decoder_outputs), 'pred_mask_embed': self.mask_embed(decoder_outputs),
            'pred_cq_embed': self.sim_embed_clip(decoder_outputs), 'pred_fq_embed': pred_fq_embed,
            'encoder': torch.stack([e[:T] for e in self.encoder_outputs])}

  def encode_frame_query(self, frame_query, attn_mask):
    T, fQ, LB, C = frame_query.shape
    if self.window_size == 0:
      shape = frame_query.shape
      frame_query = frame_query.flatten(0, 1)
      for i in range(self.enc_layers):
        frame_query = self.enc_ffn[i](self.enc_self_attn[i](frame_query))
        self.encoder_outputs.append(frame_query.view(shape))
      return frame_query.view(shape)
    W = self.window_size
    Nw = T // W
    half_W = int(ceil(W / 2))
    window_mask = attn_mask.view(LB * Nw, W)[..., None].repeat(1, 1, fQ).flatten(1)
    m = torch.roll(attn_mask, half_W, 1).view(LB, Nw, W)[..., None].repeat(1, 1, 1, W)
    m[:, 0] = m[:, 0] | m[:, 0].transpose(-2, -1)
    m[:, -1] = m[:, -1] | m[:, -1].transpose(-2, -1)
    m[:, 0, :half_W, half_W:] = True
    m[:, 0, half_W:, :half_W] = True
    m = m.view(LB * Nw, 1, W, 1, W, 1).repeat(1, self.num_heads, 1, fQ, 1, fQ).view(LB * Nw * self.num_heads,
                                                                                 W * fQ, W * fQ)
    shift_window_mask = m.float() * -1000
    for i in range(self.enc_layers):
      if self.training or i % 2 == 0:
        frame_query = self._window_attn(frame_query, window_mask, i)
      else:
        frame_query = self._shift_window_attn(frame_query, shift_window_mask, i)
      self.encoder_outputs.append(frame_query)
    return frame_query

  def _window_attn(self, frame_query, attn_mask, i):
    T, fQ, LB, C = frame_query.shape
    W = self.window_size
    Nw = T // W
    frame_query = frame_query.view(Nw, W, fQ, LB, C).permute(1, 2, 3, 0, 4).reshape(W * fQ, LB * Nw, C)
    frame_query = self.enc_self_attn[i](frame_query, tgt_key_padding_mask=attn_mask)
    frame_query = self.enc_ffn[i](frame_query)
    return frame_query.reshape(W, fQ, LB, Nw, C).permute(3, 0, 1, 2, 4).reshape(T, fQ, LB, C)

  def _shift_window_attn(self, frame_query, attn_mask, i):
    T, fQ, LB, C = frame_query.shape
    W = self.window_size
    Nw = T // W
    half_W = int(ceil(W / 2))
    frame_query = torch.roll(frame_query, half_W, 0)
    frame_query = frame_query.view(Nw, W, fQ, LB, C).permute(1, 2, 3, 0, 4).reshape(W * fQ, LB * Nw, C)
    frame_query = self.enc_self_attn[i](frame_query, tgt_mask=attn_mask)
    frame_query = self.enc_ffn[i](frame_query)
    frame_query = frame_query.reshape(W, fQ, LB, Nw, C).permute(3, 0, 1, 2, 4).reshape(T, fQ, LB, C)
    return torch.roll(frame_query, -half_W, 0)


class Vita(nn.Module):
  """Meta-architecture forward on normalised, zero-padded frames `[B*T, 3, H, W]` (clip-major)."""

  def __init__(self, backbone, sem_seg_head, vita_module, last_layer_num=3):
    super().__init__()
    self.backbone = backbone
    self.sem_seg_head = sem_seg_head
    self.vita_module = vita_module
    self.last_layer_num = last_layer_num

  def forward(self, images, num_frames):
    feats = self.backbone(images)
    feats = [feats[k] for k in ('res2', 'res3', 'res4', 'res5')]
    (logits, masks, frame_queries), (_, clip_mask_features, pixel_out) = self.sem_seg_head(feats)
    num = self.last_layer_num if self.training else 1
    vita_mask_features = self.vita_module.vita_mask_features(clip_mask_features)
    out = self.vita_module(frame_queries[-num:], num_frames)
    b = images.shape[0] // num_frames
    mf = vita_mask_features.view(b, num_frames, *vita_mask_features.shape[-3:])
    out['pred_masks'] = torch.einsum('dlbqc,btchw->dlbqthw', out['pred_mask_embed'], mf)
    return {'frame_logits': logits, 'frame_masks': masks, 'frame_queries': frame_queries,
            'vita_mask_features': vita_mask_features, 'pixel_decoder': pixel_out, 'video': out}
