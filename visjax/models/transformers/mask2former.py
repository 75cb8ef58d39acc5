"""Mask2Former's pixel decoder and masked-attention transformer decoder (facebookresearch/Mask2Former
`modeling/pixel_decoder/msdeformattn.py`, `modeling/transformer_decoder/mask2former_transformer_decoder.py`; the
VITA copies differ only in also returning the raw stride-4 map and the frame queries), Flax NNX, NHWC.

Parameter names follow the official attributes (checkpoint prefix `sem_seg_head.`):

  MSDeformAttnPixelDecoder                 (`pixel_decoder.`)
    input_proj.levels.{i}.{conv,norm}       torch `input_proj.{i}.{0,1}`, level 0 = the coarsest (res5)
    transformer.level_embed [L, C]          torch `transformer.level_embed`
    transformer.encoder.layers.{i}.*        deformable encoder layers (MSDeformAttn, norm1, linear1/2, norm2)
    adapter_{k}.{conv,norm}, layer_{k}.*    FPN extension convs (detectron2 Conv2d + GN, no bias)
    mask_features                           1x1 conv with bias
  MultiScaleMaskedTransformerDecoder       (`predictor.`)
    transformer_{cross,self}_attention_layers.{i}.{multihead_attn|self_attn, norm}
    transformer_ffn_layers.{i}.{linear1, linear2, norm}
    decoder_norm, query_feat, query_embed, level_embed (Embed), class_embed (K+1), mask_embed (3-layer MLP)

Every attention / FFN layer is post-norm (`PRE_NORM: False` in every released config) with dropout 0.
"""

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from visjax.models.layers import norms
from visjax.models.layers import resize
from visjax.models.layers.attention import MultiheadAttention
from visjax.models.layers.conv import ConvNorm
from visjax.models.layers.mlp import MLP, torch_default_bias_init, torch_default_kernel_init
from visjax.models.layers.position import sine_position_embedding_unmasked
from visjax.models.transformers import deformable

# detectron2 `c2_xavier_fill`: kaiming_uniform(a=1) on the weight, zero bias.
c2_xavier_fill = nnx.initializers.variance_scaling(1., 'fan_in', 'uniform')
_normal = nnx.initializers.normal(1.)


def conv1x1(in_channels: int, out_channels: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
  """detectron2 `Conv2d(in, out, kernel_size=1)` with bias, `c2_xavier_fill` init (`mask_features`)."""
  return nnx.Conv(in_channels, out_channels, (1, 1), dtype=dtype, kernel_init=c2_xavier_fill,
                  bias_init=nnx.initializers.zeros_init(), rngs=rngs)


# ----------------------------------------------------------------------------------------------------------------
# Attention / FFN layers shared by the masked decoder and VITA's object encoder / decoder.


class SelfAttentionLayer(nnx.Module):
  """Post-norm self-attention: `norm(x + MHA(x + pos, x + pos, x))` (torch `self_attn`, `norm`)."""

  def __init__(self, d_model: int, nhead: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.self_attn = MultiheadAttention(d_model, nhead, dtype=dtype, rngs=rngs)
    self.norm = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)

  def __call__(self, tgt: jax.Array, *, query_pos: jax.Array | None = None, attn_mask: jax.Array | None = None,
               key_padding_mask: jax.Array | None = None) -> jax.Array:
    """`tgt [B, Q, C]`, `query_pos` broadcastable to it; masks as `MultiheadAttention` -> `[B, Q, C]`."""
    q = tgt if query_pos is None else tgt + query_pos
    out = self.self_attn(q, q, tgt, attn_mask=attn_mask, key_padding_mask=key_padding_mask)
    return self.norm(tgt + out)


class CrossAttentionLayer(nnx.Module):
  """Post-norm cross-attention: `norm(x + MHA(x + query_pos, memory + pos, memory))` (`multihead_attn`, `norm`)."""

  def __init__(self, d_model: int, nhead: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.multihead_attn = MultiheadAttention(d_model, nhead, dtype=dtype, rngs=rngs)
    self.norm = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)

  def __call__(self, tgt: jax.Array, memory: jax.Array, *, pos: jax.Array | None = None,
               query_pos: jax.Array | None = None, attn_mask: jax.Array | None = None) -> jax.Array:
    """`tgt [B, Q, C]`, `memory [B, K, C]` (positions broadcastable), `attn_mask` bool/float -> `[B, Q, C]`."""
    q = tgt if query_pos is None else tgt + query_pos
    k = memory if pos is None else memory + pos
    out = self.multihead_attn(q, k, memory, attn_mask=attn_mask)
    return self.norm(tgt + out)


class FFNLayer(nnx.Module):
  """Post-norm FFN: `norm(x + linear2(relu(linear1(x))))`."""

  def __init__(self, d_model: int, dim_feedforward: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.linear1 = deformable.xavier_linear(d_model, dim_feedforward, dtype, rngs)
    self.linear2 = deformable.xavier_linear(dim_feedforward, d_model, dtype, rngs)
    self.norm = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)

  def __call__(self, tgt: jax.Array) -> jax.Array:
    return self.norm(tgt + self.linear2(jax.nn.relu(self.linear1(tgt))))


def flatten_hw(x: jax.Array) -> jax.Array:
  """`[B, H, W, C]` -> `[B, H*W, C]` (row-major, as torch's `flatten(2)`)."""
  return x.reshape(x.shape[0], -1, x.shape[-1])


# ----------------------------------------------------------------------------------------------------------------
# Pixel decoder.


class MSDeformAttnEncoderOnly(nnx.Module):
  """`MSDeformAttnTransformerEncoderOnly`: `level_embed [L, C]` and the deformable encoder stack (`encoder`)."""

  def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, dim_feedforward: int, dropout: float,
               num_feature_levels: int, enc_n_points: int, *, msda_implementation: str | None = None,
               remat: bool = False, dtype: Any = None, rngs: nnx.Rngs):
    self.level_embed = nnx.Param(_normal(rngs.params(), (num_feature_levels, d_model)))
    self.encoder = deformable.DeformableTransformerEncoder(
        num_encoder_layers, remat=remat, d_model=d_model, d_ffn=dim_feedforward, dropout=dropout,
        n_levels=num_feature_levels, n_heads=nhead, n_points=enc_n_points, msda_implementation=msda_implementation,
        dtype=dtype, rngs=rngs)

  def __call__(self, srcs: Sequence[jax.Array], pos_embeds: Sequence[jax.Array], *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, deformable.SpatialShapes]:
    """`srcs`, `pos_embeds` `[B, H_l, W_l, C]` per level -> memory `[B, S, C]` and the static level shapes.

    No padding mask (all positions are valid, valid ratios 1), as the official pixel decoder.
    """
    masks = [jnp.zeros(s.shape[:3], bool) for s in srcs]
    src, _, pos, shapes = deformable.flatten_levels(srcs, masks, pos_embeds, self.level_embed[...])
    ratios = jnp.ones((src.shape[0], len(srcs), 2), jnp.float32)
    return self.encoder(src, shapes, ratios, pos, None, deterministic=deterministic, rngs=rngs), shapes


class MSDeformAttnPixelDecoder(nnx.Module):
  """Mask2Former `MSDeformAttnPixelDecoder` (with VITA's extra output, the raw finest FPN map).

  Inputs are the backbone maps of `in_features` (finest first, e.g. res2..res5); the last `transformer_levels` of
  them go through the deformable encoder (coarsest first), the finer ones are merged top-down by the FPN extension
  (lateral `adapter_k` 1x1 + bilinear upsample of the coarser map, then `layer_k` 3x3 + ReLU).
  """

  def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], *, conv_dim: int = 256,
               mask_dim: int = 256, transformer_levels: int = 3, transformer_nheads: int = 8,
               transformer_enc_layers: int = 6, transformer_dim_feedforward: int = 1024,
               transformer_dropout: float = 0., enc_n_points: int = 4, common_stride: int = 4,
               num_groups: int = 32, msda_implementation: str | None = None, remat: bool = False,
               dtype: Any = None, rngs: nnx.Rngs):
    """Builds the decoder.

    Args:
      in_channels, in_strides: channels and strides of the backbone maps, finest first (res2..res5).
      conv_dim, mask_dim: `SEM_SEG_HEAD.CONVS_DIM` / `MASK_DIM`.
      transformer_levels: how many of the coarsest maps feed the encoder (`DEFORMABLE_TRANSFORMER_ENCODER_IN_
        FEATURES`, res3..res5 = 3).
      transformer_dim_feedforward: 1024 (hard-coded in the official `from_config`).
    """
    if len(in_channels) != len(in_strides):
      raise ValueError(f'pixel decoder: {len(in_channels)} channels for {len(in_strides)} strides.')
    self.num_levels = transformer_levels
    enc_channels = list(in_channels[-transformer_levels:])[::-1]  # coarsest first
    self.input_proj = deformable.InputProjection(enc_channels, conv_dim, transformer_levels, num_groups=num_groups,
                                                 dtype=dtype, rngs=rngs)
    self.transformer = MSDeformAttnEncoderOnly(conv_dim, transformer_nheads, transformer_enc_layers,
                                               transformer_dim_feedforward, transformer_dropout, transformer_levels,
                                               enc_n_points, msda_implementation=msda_implementation, remat=remat,
                                               dtype=dtype, rngs=rngs)
    self.mask_features = conv1x1(conv_dim, mask_dim, dtype, rngs)
    min_stride = min(in_strides[-transformer_levels:])
    self.num_fpn_levels = int(math.log2(min_stride) - math.log2(common_stride))
    for idx, c in enumerate(in_channels[:self.num_fpn_levels]):
      setattr(self, f'adapter_{idx + 1}', ConvNorm(c, conv_dim, 1, use_bias=False, norm='GN', num_groups=num_groups,
                                                   kernel_init=c2_xavier_fill, dtype=dtype, rngs=rngs))
      setattr(self, f'layer_{idx + 1}', ConvNorm(conv_dim, conv_dim, 3, use_bias=False, norm='GN',
                                                 num_groups=num_groups, activation='relu',
                                                 kernel_init=c2_xavier_fill, dtype=dtype, rngs=rngs))

  def __call__(self, feats: Sequence[jax.Array], *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> dict[str, Any]:
    """Runs the decoder.

    Args:
      feats: backbone maps `[B, H_k, W_k, C_k]`, finest first (as `in_channels`).

    Returns:
      dict with `mask_features` `[B, H_0, W_0, mask_dim]` (1x1 conv of the finest map), `clip_mask_features`
      `[B, H_0, W_0, conv_dim]` (the raw finest map `out[-1]`, VITA's input), `multi_scale_features` (list of
      the first 3 maps of `out`, coarsest first: the encoder levels) and `out` (every map, coarsest first).
    """
    enc_feats = list(feats[-self.num_levels:])[::-1]
    b = enc_feats[0].shape[0]
    srcs, _ = self.input_proj(enc_feats, jnp.zeros((b,) + enc_feats[0].shape[1:3], bool))
    c = srcs[0].shape[-1]
    pos = [sine_position_embedding_unmasked(b, s.shape[1], s.shape[2], c // 2) for s in srcs]
    memory, shapes = self.transformer(srcs, pos, deterministic=deterministic, rngs=rngs)
    out, start = [], 0
    for h, w in shapes:
      out.append(memory[:, start:start + h * w].reshape(b, h, w, c))
      start += h * w
    for idx in reversed(range(self.num_fpn_levels)):  # coarse to fine
      lateral = getattr(self, f'adapter_{idx + 1}')(feats[idx])
      y = lateral + resize.resize_bilinear(out[-1], lateral.shape[1:3]).astype(lateral.dtype)
      out.append(getattr(self, f'layer_{idx + 1}')(y))
    return {'mask_features': self.mask_features(out[-1]), 'clip_mask_features': out[-1],
            'multi_scale_features': out[:3], 'out': out}


# ----------------------------------------------------------------------------------------------------------------
# Masked-attention decoder.


def attention_mask(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Mask2Former's cross-attention mask from mask logits.

  Args:
    mask_logits: `[B, Q, H, W]`.
    size: the attended level's `(h, w)`.

  Returns:
    bool `[B, Q, h*w]`, True = blocked: sigmoid of the bilinearly resized logits (align_corners=False, no
    antialias) < 0.5; rows blocked everywhere are un-masked (official `attn_mask[where(all)] = False`).
    Not differentiated (`detach`).
  """
  resized = resize.resize_bilinear(jnp.moveaxis(mask_logits, 1, -1), size)  # [B, h, w, Q]
  blocked = jax.nn.sigmoid(resized.astype(jnp.float32)) < 0.5
  blocked = jnp.moveaxis(blocked.reshape(blocked.shape[0], -1, blocked.shape[-1]), -1, 1)
  blocked = blocked & ~jnp.all(blocked, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(blocked)


class MultiScaleMaskedTransformerDecoder(nnx.Module):
  """Mask2Former's masked-attention decoder (VITA's `VitaMultiScaleMaskedTransformerDecoder`).

  `dec_layers` is the number of layers built (`MASK_FORMER.DEC_LAYERS - 1` = 9); layer i attends to level
  `i % 3` of the multi-scale features (coarsest first), cross-attention -> self-attention -> FFN.
  """

  num_feature_levels = 3

  def __init__(self, hidden_dim: int = 256, num_classes: int = 40, num_queries: int = 100, nheads: int = 8,
               dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256, *, dtype: Any = None,
               rngs: nnx.Rngs):
    self.num_layers = dec_layers
    self.transformer_self_attention_layers = nnx.List(
        [SelfAttentionLayer(hidden_dim, nheads, dtype=dtype, rngs=rngs) for _ in range(dec_layers)])
    self.transformer_cross_attention_layers = nnx.List(
        [CrossAttentionLayer(hidden_dim, nheads, dtype=dtype, rngs=rngs) for _ in range(dec_layers)])
    self.transformer_ffn_layers = nnx.List(
        [FFNLayer(hidden_dim, dim_feedforward, dtype=dtype, rngs=rngs) for _ in range(dec_layers)])
    self.decoder_norm = norms.layer_norm(hidden_dim, dtype=dtype, rngs=rngs)
    self.query_feat = nnx.Embed(num_queries, hidden_dim, embedding_init=_normal, rngs=rngs)
    self.query_embed = nnx.Embed(num_queries, hidden_dim, embedding_init=_normal, rngs=rngs)
    self.level_embed = nnx.Embed(self.num_feature_levels, hidden_dim, embedding_init=_normal, rngs=rngs)
    self.class_embed = nnx.Linear(hidden_dim, num_classes + 1, dtype=dtype, kernel_init=torch_default_kernel_init,
                                  bias_init=torch_default_bias_init(hidden_dim), rngs=rngs)
    self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3, dtype=dtype, rngs=rngs)

  def prediction_heads(self, output: jax.Array, mask_features: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`output [B, Q, C]`, `mask_features [B, H, W, D]` -> class logits `[B, Q, K+1]`, mask logits
    `[B, Q, H, W]` and the frame queries `decoder_norm(output)` `[B, Q, C]`."""
    decoder_output = self.decoder_norm(output)
    logits = self.class_embed(decoder_output)
    masks = jnp.einsum('bqc,bhwc->bqhw', self.mask_embed(decoder_output), mask_features)
    return logits, masks, decoder_output

  def __call__(self, multi_scale_features: Sequence[jax.Array], mask_features: jax.Array) -> dict[str, jax.Array]:
    """Runs every layer.

    Args:
      multi_scale_features: 3 maps `[B, H_l, W_l, C]`, coarsest first (`input_proj` is the identity: the
        pixel decoder's `conv_dim` equals `hidden_dim`).
      mask_features: `[B, H, W, mask_dim]`.

    Returns:
      `pred_logits [Ldec+1, B, Q, K+1]`, `pred_masks [Ldec+1, B, Q, H, W]` (entry 0 from the learnable queries,
      entry l from layer l), `frame_queries [Ldec, B, Q, C]` (the `decoder_norm` output of each layer).
    """
    if len(multi_scale_features) != self.num_feature_levels:
      raise ValueError(f'masked decoder: expected {self.num_feature_levels} levels, got {len(multi_scale_features)}.')
    b = mask_features.shape[0]
    sizes = [tuple(x.shape[1:3]) for x in multi_scale_features]
    c = multi_scale_features[0].shape[-1]
    pos = [flatten_hw(sine_position_embedding_unmasked(b, h, w, c // 2)).astype(mask_features.dtype)
           for h, w in sizes]
    src = [flatten_hw(x) + self.level_embed.embedding[i].astype(x.dtype)
           for i, x in enumerate(multi_scale_features)]
    query_embed = self.query_embed.embedding[None]
    output = jnp.broadcast_to(self.query_feat.embedding[None], (b,) + self.query_feat.embedding.shape)
    output = output.astype(mask_features.dtype)

    logits, masks, _ = self.prediction_heads(output, mask_features)
    all_logits, all_masks, frame_queries = [logits], [masks], []
    attn = attention_mask(masks, sizes[0])
    for i in range(self.num_layers):
      level = i % self.num_feature_levels
      output = self.transformer_cross_attention_layers[i](output, src[level], pos=pos[level],
                                                          query_pos=query_embed, attn_mask=attn)
      output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
      output = self.transformer_ffn_layers[i](output)
      logits, masks, queries = self.prediction_heads(output, mask_features)
      all_logits.append(logits)
      all_masks.append(masks)
      frame_queries.append(queries)
      attn = attention_mask(masks, sizes[(i + 1) % self.num_feature_levels])
    return {'pred_logits': jnp.stack(all_logits), 'pred_masks': jnp.stack(all_masks),
            'frame_queries': jnp.stack(frame_queries)}


class MaskFormerHead(nnx.Module):
  """`MaskFormerHead` (checkpoint prefix `sem_seg_head.`): `pixel_decoder` then `predictor`."""

  def __init__(self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MultiScaleMaskedTransformerDecoder):
    self.pixel_decoder = pixel_decoder
    self.predictor = predictor

  def __call__(self, feats: Sequence[jax.Array], *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Backbone maps (finest first) -> (predictor outputs, pixel decoder outputs); see both `__call__`s."""
    pix = self.pixel_decoder(feats, deterministic=deterministic, rngs=rngs)
    return self.predictor(pix['multi_scale_features'], pix['mask_features']), pix
