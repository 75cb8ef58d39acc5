"""Deformable-DETR transformer (as used by IDOL), Flax NNX, NHWC.

Parameter names mirror the official PyTorch attribute paths (`models/deformable_transformer.py`), so the
conversion rules are one line per module:

  InputProjection   input_proj.levels.{i}.{conv,norm}   (torch `input_proj.{i}.{0,1}`)
  DeformableTransformer
    level_embed [L, C], reference_points (Linear C -> 2)
    encoder.layers.{i}: self_attn (MSDeformAttn), norm1, linear1, linear2, norm2         (post-norm)
    decoder.layers.{i}: self_attn (q_proj/k_proj/v_proj/out_proj = torch in_proj split), norm2,
                        cross_attn (MSDeformAttn), norm1, linear1, linear2, norm3         (post-norm)

The encoder, the input projection and the level flattening are separate pieces so a pixel decoder (VITA /
Mask2Former `MSDeformAttnPixelDecoder`) can reuse them without the decoder.

Shapes: `B` images, `C` = d_model, `L` levels with static `(H_l, W_l)`, `S = sum H_l W_l` tokens (level-major,
row-major inside a level), `Q` queries. Masks are bool, True on padding. Reference points are (x, y) in [0, 1].
Dropout runs only when `deterministic=False`; its RNG comes from the `rngs` argument of `__call__` (stream
'dropout').
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visjax.models.layers import norms
from visjax.models.layers import resize
from visjax.models.layers.attention import MultiheadAttention
from visjax.models.layers.conv import ConvNorm
from visjax.models.layers.functional import inverse_sigmoid
from visjax.models.layers.mlp import torch_default_bias_init
from visjax.models.layers.msdeform_attn import MSDeformAttn

SpatialShapes = tuple[tuple[int, int], ...]

_xavier = nnx.initializers.xavier_uniform()


def xavier_linear(in_features: int, out_features: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  """Linear as the transformer initialises it: xavier weight (all >1-d params), torch-default bias."""
  return nnx.Linear(in_features, out_features, dtype=dtype, kernel_init=_xavier,
                    bias_init=torch_default_bias_init(in_features), rngs=rngs)


# ----------------------------------------------------------------------------------------------------------------
# Input projection and level bookkeeping.


class InputProjection(nnx.Module):
  """Per-level projections to `d_model`: 1x1 conv + GN per backbone level, then 3x3 stride-2 conv + GN levels.

  The first extra level reads the raw last backbone map, later ones the previous projected level. Masks: backbone
  levels nearest-resize the image mask; extra levels nearest-resize the first level's mask (as IDOL does).
  """

  def __init__(self, in_channels: Sequence[int], d_model: int = 256, num_levels: int = 4, *,
               num_groups: int = 32, dtype: Any = None, rngs: nnx.Rngs):
    if num_levels < len(in_channels):
      raise ValueError(f'InputProjection: num_levels {num_levels} < number of backbone levels {len(in_channels)}.')
    layers = [ConvNorm(c, d_model, 1, 1, num_groups=num_groups, dtype=dtype, rngs=rngs) for c in in_channels]
    prev = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
      layers.append(ConvNorm(prev, d_model, 3, 2, num_groups=num_groups, dtype=dtype, rngs=rngs))
      prev = d_model
    self.num_backbone_levels = len(in_channels)
    self.levels = nnx.List(layers)

  def __call__(self, feats: Sequence[jax.Array], image_mask: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    """Projects the backbone maps and derives the per-level padding masks.

    Args:
      feats: backbone maps `[B, H_l, W_l, C_l]`, finest first.
      image_mask: bool `[B, H, W]`, True on padding, at input resolution.

    Returns:
      srcs: `[B, H_l, W_l, d_model]` per level; masks: bool `[B, H_l, W_l]` per level.
    """
    if len(feats) != self.num_backbone_levels:
      raise ValueError(f'InputProjection: expected {self.num_backbone_levels} backbone maps, got {len(feats)}.')
    srcs, masks = [], []
    for proj, feat in zip(self.levels, feats):
      srcs.append(proj(feat))
      masks.append(resize.resize_nearest(image_mask, feat.shape[1:3]))
    for i in range(self.num_backbone_levels, len(self.levels)):
      src = self.levels[i](feats[-1] if i == self.num_backbone_levels else srcs[-1])
      srcs.append(src)
      masks.append(resize.resize_nearest(masks[0], src.shape[1:3]))
    return srcs, masks


def valid_ratios(masks: Sequence[jax.Array]) -> jax.Array:
  """Fraction of unpadded columns / rows per level: float32 `[B, L, 2]` as (w, h) (`get_valid_ratio`)."""
  ratios = []
  for m in masks:
    valid = jnp.logical_not(m)
    vh = jnp.sum(valid[:, :, 0], axis=1).astype(jnp.float32) / m.shape[1]
    vw = jnp.sum(valid[:, 0, :], axis=1).astype(jnp.float32) / m.shape[2]
    ratios.append(jnp.stack([vw, vh], axis=-1))
  return jnp.stack(ratios, axis=1)


def flatten_levels(srcs: Sequence[jax.Array], masks: Sequence[jax.Array], pos_embeds: Sequence[jax.Array],
                   level_embed: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, SpatialShapes]:
  """Flattens per-level maps to tokens and adds `level_embed[l]` to level l's position embedding.

  Returns:
    src `[B, S, C]`, mask `[B, S]`, pos `[B, S, C]` (float32), spatial_shapes `((H_l, W_l), ...)`.
  """
  shapes = tuple((int(s.shape[1]), int(s.shape[2])) for s in srcs)
  b, c = srcs[0].shape[0], srcs[0].shape[-1]
  src = jnp.concatenate([s.reshape(b, -1, c) for s in srcs], axis=1)
  mask = jnp.concatenate([m.reshape(b, -1) for m in masks], axis=1)
  pos = jnp.concatenate([p.reshape(b, -1, c).astype(jnp.float32) + level_embed[l].astype(jnp.float32)
                         for l, p in enumerate(pos_embeds)], axis=1)
  return src, mask, pos, shapes


def encoder_reference_points(spatial_shapes: SpatialShapes, ratios: jax.Array) -> jax.Array:
  """Pixel-centre references of every token, rescaled for every level (`get_reference_points`).

  Args:
    spatial_shapes: static `((H_l, W_l), ...)`.
    ratios: `[B, L, 2]` valid ratios (w, h).

  Returns:
    float32 `[B, S, L, 2]` (x, y).
  """
  refs = []
  for lvl, (h, w) in enumerate(spatial_shapes):
    ys, xs = np.meshgrid(np.linspace(0.5, h - 0.5, h, dtype=np.float32),
                         np.linspace(0.5, w - 0.5, w, dtype=np.float32), indexing='ij')
    ref_y = ys.reshape(-1)[None] / (ratios[:, None, lvl, 1] * h)
    ref_x = xs.reshape(-1)[None] / (ratios[:, None, lvl, 0] * w)
    refs.append(jnp.stack([ref_x, ref_y], axis=-1))
  return jnp.concatenate(refs, axis=1)[:, :, None] * ratios[:, None]


# ----------------------------------------------------------------------------------------------------------------
# Layers.


def _layer_caller(remat: bool, spatial_shapes: SpatialShapes, deterministic: bool,
                  **layer_kwargs) -> Callable[..., jax.Array]:
  """Returns `call(layer, *arrays, padding_mask, rngs)` = `layer(*arrays, spatial_shapes, padding_mask, ...)`,
  rematerialised in the backward pass (`nnx.remat`, i.e. jax.checkpoint) when `remat`."""

  def call(layer, *args):
    *arrays, padding_mask, rngs = args
    return layer(*arrays, spatial_shapes, padding_mask, deterministic=deterministic, rngs=rngs, **layer_kwargs)

  return nnx.remat(call) if remat else call


def _ffn(layer: nnx.Module, x: jax.Array, dropout: nnx.Dropout, deterministic: bool,
         rngs: nnx.Rngs | None) -> jax.Array:
  """`linear2(dropout(relu(linear1(x))))` of an encoder/decoder layer (the residual and norm are the caller's)."""
  return layer.linear2(dropout(jax.nn.relu(layer.linear1(x)), deterministic=deterministic, rngs=rngs))


class DeformableTransformerEncoderLayer(nnx.Module):
  """Post-norm encoder layer: x = norm1(x + MSDA(x + pos, x)); x = norm2(x + FFN(x))."""

  def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, n_levels: int = 4,
               n_heads: int = 8, n_points: int = 4, *, msda_implementation: str | None = None, dtype: Any = None,
               rngs: nnx.Rngs):
    self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, implementation=msda_implementation,
                                  dtype=dtype, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout)
    self.norm1 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)
    self.linear1 = xavier_linear(d_model, d_ffn, dtype, rngs)
    self.dropout2 = nnx.Dropout(dropout)
    self.linear2 = xavier_linear(d_ffn, d_model, dtype, rngs)
    self.dropout3 = nnx.Dropout(dropout)
    self.norm2 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)

  def __call__(self, src: jax.Array, pos: jax.Array, reference_points: jax.Array, spatial_shapes: SpatialShapes,
               padding_mask: jax.Array | None, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """`src`, `pos [B, S, C]`, `reference_points [B, S, L, 2]` -> `[B, S, C]`."""
    attn = self.self_attn(src + pos.astype(src.dtype), reference_points, src, spatial_shapes, padding_mask)
    src = self.norm1(src + self.dropout1(attn, deterministic=deterministic, rngs=rngs))
    ffn = _ffn(self, src, self.dropout2, deterministic, rngs)
    return self.norm2(src + self.dropout3(ffn, deterministic=deterministic, rngs=rngs))


class DeformableTransformerEncoder(nnx.Module):
  """A stack of encoder layers over flattened multi-level tokens (`encoder.layers.{i}`)."""

  def __init__(self, num_layers: int, *, remat: bool = False, **layer_kwargs):
    self.remat = remat
    self.layers = nnx.List([DeformableTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers)])

  def __call__(self, src: jax.Array, spatial_shapes: SpatialShapes, ratios: jax.Array, pos: jax.Array,
               padding_mask: jax.Array | None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """`src`, `pos [B, S, C]`, `ratios [B, L, 2]`, `padding_mask [B, S]` -> memory `[B, S, C]`."""
    reference_points = encoder_reference_points(spatial_shapes, ratios)
    call = _layer_caller(self.remat, spatial_shapes, deterministic)
    for layer in self.layers:
      src = call(layer, src, pos, reference_points, padding_mask, rngs)
    return src


class DeformableTransformerDecoderLayer(nnx.Module):
  """Post-norm decoder layer: self-attention -> norm2; MSDA cross-attention -> norm1; FFN -> norm3."""

  def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, n_levels: int = 4,
               n_heads: int = 8, n_points: int = 4, *, msda_implementation: str | None = None, dtype: Any = None,
               rngs: nnx.Rngs):
    self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, implementation=msda_implementation,
                                   dtype=dtype, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout)
    self.norm1 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)
    self.self_attn = MultiheadAttention(d_model, n_heads, dropout, dtype=dtype, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout)
    self.norm2 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)
    self.linear1 = xavier_linear(d_model, d_ffn, dtype, rngs)
    self.dropout3 = nnx.Dropout(dropout)
    self.linear2 = xavier_linear(d_ffn, d_model, dtype, rngs)
    self.dropout4 = nnx.Dropout(dropout)
    self.norm3 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)

  def __call__(self, tgt: jax.Array, query_pos: jax.Array, reference_points: jax.Array, memory: jax.Array,
               spatial_shapes: SpatialShapes, padding_mask: jax.Array | None, *, deterministic: bool,
               rngs: nnx.Rngs | None, return_sampling: bool = False):
    """`tgt`, `query_pos [B, Q, C]`, `reference_points [B, Q, L, 2|4]`, `memory [B, S, C]` -> `[B, Q, C]`, and with
    `return_sampling` also the cross-attention's `(sampling locations [B, Q, M, L, P, 2], weights [B, Q, M, L, P])`."""
    q = tgt + query_pos
    attn = self.self_attn(q, q, tgt, deterministic=deterministic, rngs=rngs)
    tgt = self.norm2(tgt + self.dropout2(attn, deterministic=deterministic, rngs=rngs))
    attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask,
                           return_sampling=return_sampling)
    if return_sampling:
      attn, *sampling = attn
    tgt = self.norm1(tgt + self.dropout1(attn, deterministic=deterministic, rngs=rngs))
    ffn = _ffn(self, tgt, self.dropout3, deterministic, rngs)
    out = self.norm3(tgt + self.dropout4(ffn, deterministic=deterministic, rngs=rngs))
    return (out, tuple(sampling)) if return_sampling else out


class DecoderOutput(NamedTuple):
  """Decoder results, one entry per decoder layer.

  hs: `[Ldec, B, Q, C]` layer outputs.
  references: `[Ldec, B, Q, 4]` reference box entering each layer (the initial 2-d reference padded with wh = 0).
  boxes: `[Ldec, B, Q, 4]` refined boxes `sigmoid(bbox_embed[l](hs[l]) + inverse_sigmoid(ref))` (only xy gets the
    reference term for a 2-d reference); gradients flow into `bbox_embed` and `hs`, not into the reference.
    None without box refinement.
  sampling_locations: `[Ldec, B, Q, M, L, P, 2]` cross-attention sampling locations (only when asked).
  attention_weights: `[Ldec, B, Q, M, L, P]` their weights (only when asked).
  """
  hs: jax.Array
  references: jax.Array
  boxes: jax.Array | None
  sampling_locations: jax.Array | None = None
  attention_weights: jax.Array | None = None


def _pad_reference(ref: jax.Array) -> jax.Array:
  return ref if ref.shape[-1] == 4 else jnp.concatenate([ref, jnp.zeros_like(ref)], axis=-1)


def refine_boxes(delta: jax.Array, reference: jax.Array) -> jax.Array:
  """`sigmoid(delta + inverse_sigmoid(reference))`, adding the reference to xy only when it is 2-d (float32)."""
  delta = delta.astype(jnp.float32)
  inv = inverse_sigmoid(reference.astype(jnp.float32))
  if reference.shape[-1] == 2:
    inv = jnp.concatenate([inv, jnp.zeros_like(inv)], axis=-1)
  return jax.nn.sigmoid(delta + inv)


class DeformableTransformerDecoder(nnx.Module):
  """Decoder stack with iterative box refinement (`decoder.layers.{i}`); the box heads are passed at call time
  (the official code attaches `bbox_embed` to the decoder; here the model owns them once)."""

  def __init__(self, num_layers: int, *, remat: bool = False, **layer_kwargs):
    self.remat = remat
    self.layers = nnx.List([DeformableTransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers)])

  def __call__(self, tgt: jax.Array, reference_points: jax.Array, memory: jax.Array, spatial_shapes: SpatialShapes,
               ratios: jax.Array, query_pos: jax.Array, padding_mask: jax.Array | None,
               bbox_embed: Sequence[Callable[[jax.Array], jax.Array]] | None = None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               return_sampling: bool = False) -> DecoderOutput:
    """Runs every layer; see `DecoderOutput` (`return_sampling` fills its sampling fields).

    Args:
      tgt, query_pos: `[B, Q, C]`.
      reference_points: `[B, Q, 2]` initial references (x, y) in [0, 1] of the unpadded image.
      memory: `[B, S, C]`; ratios: `[B, L, 2]`; padding_mask: `[B, S]`.
      bbox_embed: one box head per layer (iterative refinement), or None to keep the initial references.
    """
    if bbox_embed is not None and len(bbox_embed) != len(self.layers):
      raise ValueError(f'decoder: {len(bbox_embed)} box heads for {len(self.layers)} layers.')
    output = tgt
    hs, refs, boxes, sampling = [], [], [], []
    ref = reference_points.astype(jnp.float32)
    call = _layer_caller(self.remat, spatial_shapes, deterministic,
                         **({'return_sampling': True} if return_sampling else {}))
    for lid, layer in enumerate(self.layers):
      scale = ratios if ref.shape[-1] == 2 else jnp.concatenate([ratios, ratios], axis=-1)
      ref_input = ref[:, :, None] * scale[:, None]
      output = call(layer, output, query_pos, ref_input, memory, padding_mask, rngs)
      if return_sampling:
        output, layer_sampling = output
        sampling.append(layer_sampling)
      hs.append(output)
      refs.append(_pad_reference(ref))
      if bbox_embed is not None:
        box = refine_boxes(bbox_embed[lid](output), ref)
        boxes.append(box)
        ref = jax.lax.stop_gradient(box)
    stacked = [jnp.stack(x) for x in zip(*sampling)] if sampling else [None, None]
    return DecoderOutput(jnp.stack(hs), jnp.stack(refs), jnp.stack(boxes) if boxes else None, *stacked)


class TransformerOutput(NamedTuple):
  """`DeformableTransformer` results.

  hs, references, boxes: as `DecoderOutput`.
  memory: `[B, S, C]` encoder output.
  spatial_shapes: static `((H_l, W_l), ...)`.
  padding_mask: `[B, S]`, True on padding.
  decoder: the full `DecoderOutput` (sampling locations and weights when asked).
  """
  hs: jax.Array
  references: jax.Array
  boxes: jax.Array | None
  memory: jax.Array
  spatial_shapes: SpatialShapes
  padding_mask: jax.Array
  decoder: DecoderOutput


class DeformableTransformer(nnx.Module):
  """Deformable-DETR encoder-decoder (single stage, learned queries, optional iterative box refinement)."""

  def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
               dim_feedforward: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4,
               dec_n_points: int = 4, enc_n_points: int = 4, *, msda_implementation: str | None = None,
               remat: bool = False, dtype: Any = None, rngs: nnx.Rngs):
    """Builds the transformer (arguments as the official `DeformableTransformer`).

    `remat` recomputes each encoder/decoder layer in the backward pass (jax.checkpoint) instead of storing its
    activations; `msda_implementation` picks the MSDA kernel (None: best for the backend).
    """
    self.d_model = d_model
    self.nhead = nhead
    common = dict(d_model=d_model, d_ffn=dim_feedforward, dropout=dropout, n_levels=num_feature_levels,
                  n_heads=nhead, msda_implementation=msda_implementation, remat=remat, dtype=dtype, rngs=rngs)
    self.encoder = DeformableTransformerEncoder(num_encoder_layers, n_points=enc_n_points, **common)
    self.decoder = DeformableTransformerDecoder(num_decoder_layers, n_points=dec_n_points, **common)
    self.level_embed = nnx.Param(jax.random.normal(rngs.params(), (num_feature_levels, d_model), jnp.float32))
    self.reference_points = nnx.Linear(d_model, 2, dtype=dtype, kernel_init=_xavier,
                                       bias_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, srcs: Sequence[jax.Array], masks: Sequence[jax.Array], pos_embeds: Sequence[jax.Array],
               query_embed: jax.Array, bbox_embed: Sequence[Callable[[jax.Array], jax.Array]] | None = None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               return_sampling: bool = False) -> TransformerOutput:
    """Encodes the levels and decodes the queries.

    Args:
      srcs: `[B, H_l, W_l, C]` per level; masks: bool `[B, H_l, W_l]`; pos_embeds: `[B, H_l, W_l, C]`.
      query_embed: `[Q, 2C]`, split into query_pos `[:, :C]` and tgt `[:, C:]`.
      bbox_embed: per-layer box heads for iterative refinement (or None).
    """
    src, mask, pos, shapes = flatten_levels(srcs, masks, pos_embeds, self.level_embed[...])
    ratios = valid_ratios(masks)
    memory = self.encoder(src, shapes, ratios, pos, mask, deterministic=deterministic, rngs=rngs)
    b, c = memory.shape[0], memory.shape[-1]
    if query_embed.shape[-1] != 2 * c:
      raise ValueError(f'DeformableTransformer: query_embed must be [Q, {2 * c}], got {query_embed.shape}.')
    query_embed = query_embed.astype(memory.dtype)
    query_pos = jnp.broadcast_to(query_embed[None, :, :c], (b,) + query_embed[:, :c].shape)
    tgt = jnp.broadcast_to(query_embed[None, :, c:], (b,) + query_embed[:, c:].shape)
    reference_points = jax.nn.sigmoid(self.reference_points(query_pos).astype(jnp.float32))
    dec = self.decoder(tgt, reference_points, memory, shapes, ratios, query_pos, mask, bbox_embed,
                       deterministic=deterministic, rngs=rngs, return_sampling=return_sampling)
    return TransformerOutput(dec.hs, dec.references, dec.boxes, memory, shapes, mask, dec)
