"""VITA: Video Instance Segmentation via Object Token Association (sukjunhwang/VITA), Flax NNX, NHWC.

Module tree (and checkpoint prefixes, mapped by `visjax/convert/rules_vita.py`):

  backbone       detectron2 ResNet or D2SwinTransformer, res2..res5 (`backbone.`)
  sem_seg_head   `MaskFormerHead`: MSDeformAttn pixel decoder + masked-attention frame decoder
                 (`sem_seg_head.pixel_decoder.`, `sem_seg_head.predictor.`; visjax/models/transformers/mask2former.py)
  vita_module    `VITAModule` (official class `VITA`, `vita/modeling/transformer_decoder/vita.py`, `vita_module.`):
                 object encoder over the frame queries (windowed self-attention), object decoder (video queries
                 cross-attending to all frame queries), class / mask-embedding / similarity heads, and
                 `vita_mask_features`, the 1x1 conv that makes the video mask features from the pixel decoder's raw
                 stride-4 map.

Per frame the detector gives fQ frame queries (`decoder_norm` outputs of the frame decoder). VITA takes the last
`last_layer_num` (3) decoder layers' queries in training (as extra batch entries) and the last layer's at test,
and predicts cQ video queries; video masks are `einsum(mask_embed, vita_mask_features)` over all frames.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from visjax.models import settings
from visjax.models.backbones import factory
from visjax.models.backbones import swin
from visjax.models.layers import norms
from visjax.models.layers import preprocess
from visjax.models.layers.mlp import MLP, torch_default_bias_init, torch_default_kernel_init
from visjax.models.transformers import mask2former

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
STRIDES = (4, 8, 16, 32)


def default_model_config() -> ml_collections.ConfigDict:
  """The official VITA R-50 YouTube-VIS 2019 model (`configs/youtubevis_2019/vita_R50_bs8.yaml` on top of
  `vita/config.py` and `mask2former/config.py` defaults).

  Swin-L (`vita_SWIN_bs8.yaml`): backbone 'swin' (`swin` = SWIN_L), `num_frame_queries` 200; OVIS
  (`ovis/vita_R50_bs8.yaml`): `num_classes` 25.
  """
  m = ml_collections.ConfigDict()
  m.backbone = 'resnet'  # 'resnet' (R-50 / R-101) | 'swin'
  m.backbone_depth = 50
  m.freeze_at = 0  # MODEL.BACKBONE.FREEZE_AT: 0 (Base-YouTubeVIS yaml)
  m.backbone_norm = 'FrozenBN'  # RESNETS.NORM unset -> detectron2 FrozenBN
  m.backbone_width = 64
  m.swin = ml_collections.ConfigDict(dataclasses.asdict(swin.SWIN_L))
  m.num_classes = 40  # SEM_SEG_HEAD.NUM_CLASSES
  # Pixel decoder (SEM_SEG_HEAD.*).
  m.conv_dim = 256  # CONVS_DIM
  m.mask_dim = 256  # MASK_DIM
  m.pixel_decoder_enc_layers = 6  # TRANSFORMER_ENC_LAYERS
  m.pixel_decoder_dim_feedforward = 1024  # hard-coded in MSDeformAttnPixelDecoder.from_config
  m.enc_n_points = 4
  # Frame decoder (MASK_FORMER.*).
  m.hidden_dim = 256
  m.num_frame_queries = 100  # NUM_OBJECT_QUERIES (200 for Swin-L)
  m.nheads = 8
  m.dim_feedforward = 2048
  m.dec_layers = 10  # DEC_LAYERS: 9 layers are built (+1 prediction from the learnable queries)
  # No dropout anywhere: MASK_FORMER.DROPOUT and VITA.DROPOUT are 0.0 in every config, decoder layers hard-code 0.
  # VITA module (MODEL.VITA.*).
  m.vita = ml_collections.ConfigDict(dict(
      enc_layers=6, dec_layers=3, nheads=8, dim_feedforward=2048, hidden_dim=256, num_queries=100,
      enc_window_size=6,  # the yaml's ENC_WINDOW_SIZE (config default 0)
      last_layer_num=3))
  m.pixel_mean = PIXEL_MEAN
  m.pixel_std = PIXEL_STD
  m.size_divisibility = 32
  m.msda_implementation = ''  # '' = best available for the backend
  m.remat = False  # recompute pixel-decoder encoder layers in the backward pass
  return m


@dataclasses.dataclass(frozen=True)
class VITAModuleSettings:
  """The fields of `config.model.vita` (see `default_model_config`)."""
  enc_layers: int
  dec_layers: int
  nheads: int
  dim_feedforward: int
  hidden_dim: int
  num_queries: int
  enc_window_size: int
  last_layer_num: int


@dataclasses.dataclass(frozen=True)
class VITASettings:
  """The fields of `config.model` (see `default_model_config` for their meaning and the official values)."""
  backbone: str
  backbone_depth: int
  freeze_at: int
  backbone_norm: str
  backbone_width: int
  swin: swin.SwinConfig
  num_classes: int
  conv_dim: int
  mask_dim: int
  pixel_decoder_enc_layers: int
  pixel_decoder_dim_feedforward: int
  enc_n_points: int
  hidden_dim: int
  num_frame_queries: int
  nheads: int
  dim_feedforward: int
  dec_layers: int
  vita: VITAModuleSettings
  pixel_mean: tuple[float, ...]
  pixel_std: tuple[float, ...]
  size_divisibility: int
  msda_implementation: str
  remat: bool


# ----------------------------------------------------------------------------------------------------------------
# Object encoder windows.


def shifted_window_bias(frame_valid: jax.Array, window: int, num_queries: int) -> jax.Array:
  """The official additive mask of the shifted windows, float32 `[Nw, W*fQ, W*fQ]` (0 or -1000).

  `frame_valid` bool `[Tp]` (Tp a multiple of W): True on real frames. Frames are rolled by `ceil(W/2)`; a padded
  frame blocks its row and its column in every window, and in the first window the two halves (frames that came
  from the end and from the start of the clip) cannot see each other. With Tp = T rounded up to W (the official
  layout) padded frames fall only in the first and last windows, where the official mask blocks the same rows and
  columns; extra padded windows (bucketed inference) are blocked entirely.
  """
  half = int(math.ceil(window / 2))
  pad = jnp.roll(~frame_valid, half).reshape(-1, window)  # [Nw, W]
  blocked = pad[:, :, None] | pad[:, None, :]  # [Nw, W(query), W(key)]
  first_half = jnp.arange(window) < half
  blocked = blocked.at[0].set(blocked[0] | (first_half[:, None] != first_half[None, :]))
  blocked = jnp.repeat(jnp.repeat(blocked, num_queries, axis=1), num_queries, axis=2)
  return jnp.where(blocked, np.float32(-1000.), np.float32(0.))


class VITAModule(nnx.Module):
  """The VITA module (official class `VITA`, checkpoint prefix `vita_module.`); post-norm, dropout 0.

  Attributes (official names): `enc_self_attn.{i}` / `enc_ffn.{i}` (object encoder), `transformer_{cross,self}_
  attention_layers.{i}` / `transformer_ffn_layers.{i}` (object decoder), `vita_mask_features` (1x1 conv),
  `decoder_norm`, `query_feat`, `query_embed` (Embed cQ), `fq_pos` (Embed fQ), `input_proj_dec` (Linear; the
  official ENFORCE_INPUT_PROJ True), `class_embed` (K+1), `mask_embed` (3-layer MLP), `sim_embed_frame`,
  `sim_embed_clip` (SIM_WEIGHT > 0 and SIM_USE_CLIP in every released config).
  """

  def __init__(self, *, num_classes: int, hidden_dim: int = 256, num_frame_queries: int = 100,
               num_queries: int = 100, nheads: int = 8, dim_feedforward: int = 2048, enc_layers: int = 6,
               dec_layers: int = 3, enc_window_size: int = 6, conv_dim: int = 256, mask_dim: int = 256,
               dtype: Any = None, rngs: nnx.Rngs):
    self.window_size = enc_window_size
    self.num_heads = nheads
    layer = lambda cls, *a: cls(*a, dtype=dtype, rngs=rngs)
    sa, ca, ffn = mask2former.SelfAttentionLayer, mask2former.CrossAttentionLayer, mask2former.FFNLayer
    self.enc_self_attn = nnx.List([layer(sa, hidden_dim, nheads) for _ in range(enc_layers)])
    self.enc_ffn = nnx.List([layer(ffn, hidden_dim, dim_feedforward) for _ in range(enc_layers)])
    self.transformer_self_attention_layers = nnx.List([layer(sa, hidden_dim, nheads) for _ in range(dec_layers)])
    self.transformer_cross_attention_layers = nnx.List([layer(ca, hidden_dim, nheads) for _ in range(dec_layers)])
    self.transformer_ffn_layers = nnx.List([layer(ffn, hidden_dim, dim_feedforward) for _ in range(dec_layers)])
    self.vita_mask_features = mask2former.conv1x1(conv_dim, mask_dim, dtype, rngs)
    self.decoder_norm = norms.layer_norm(hidden_dim, dtype=dtype, rngs=rngs)
    normal = nnx.initializers.normal(1.)
    self.query_feat = nnx.Embed(num_queries, hidden_dim, embedding_init=normal, rngs=rngs)
    self.query_embed = nnx.Embed(num_queries, hidden_dim, embedding_init=normal, rngs=rngs)
    self.fq_pos = nnx.Embed(num_frame_queries, hidden_dim, embedding_init=normal, rngs=rngs)
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, kernel_init=torch_default_kernel_init,
                                     bias_init=torch_default_bias_init(i), rngs=rngs)
    self.input_proj_dec = linear(hidden_dim, hidden_dim)
    self.class_embed = linear(hidden_dim, num_classes + 1)
    self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3, dtype=dtype, rngs=rngs)
    self.sim_embed_frame = linear(hidden_dim, hidden_dim)
    self.sim_embed_clip = linear(hidden_dim, hidden_dim)

  def _encoder_layer(self, i: int, x: jax.Array, shifted: bool, frame_valid: jax.Array) -> jax.Array:
    """One object-encoder layer on `x [LB, Tp, fQ, C]` (plain or shifted windows of `window_size` frames; padded
    frames, False in `frame_valid [Tp]`, are masked as keys and zeroed in the output)."""
    lb, tp, fq, c = x.shape
    w = self.window_size
    nw = tp // w
    half = int(math.ceil(w / 2))
    if shifted:
      x = jnp.roll(x, half, axis=1)
    tokens = x.reshape(lb * nw, w * fq, c)
    if shifted:
      bias = shifted_window_bias(frame_valid, w, fq)[:, None]  # [Nw, 1, WfQ, WfQ]
      tokens = self.enc_self_attn[i](tokens, attn_mask=jnp.tile(bias, (lb, 1, 1, 1)).astype(x.dtype))
    else:
      pad = jnp.repeat(~frame_valid.reshape(nw, w), fq, axis=1)  # [Nw, WfQ]
      tokens = self.enc_self_attn[i](tokens, key_padding_mask=jnp.tile(pad, (lb, 1)))
    x = self.enc_ffn[i](tokens).reshape(lb, tp, fq, c)
    x = jnp.roll(x, -half, axis=1) if shifted else x
    # A window of padded frames only (bucketed inference) attends to nothing: NaN rows, never read, but zeroed so
    # that the next layer's masked products stay finite.
    return jnp.where(frame_valid[None, :, None, None], x, 0)

  def encode_frame_query(self, x: jax.Array, *, train: bool, num_frames: jax.Array | int) -> list[jax.Array]:
    """Object encoder: `x [LB, T, fQ, C]` of which the first `num_frames` are real -> every layer's output
    `[LB, Tp, fQ, C]` (Tp = T rounded up to a multiple of W; padded frames zero).

    With `enc_window_size` W > 0, T is zero-padded to a multiple of W; training uses plain windows in every
    layer, test plain windows in even layers and shifted windows in odd ones. W = 0 attends over all T*fQ tokens.
    Frames past `num_frames` (traced or static) are padding: never attended to, so a video padded to a bucket
    length gives its real frames the outputs of the unpadded run.
    """
    lb, t, fq, c = x.shape
    outputs = []
    if self.window_size == 0:
      pad = jnp.repeat(jnp.arange(t) >= num_frames, fq)[None]  # [1, T*fQ]
      tokens = x.reshape(lb, t * fq, c)
      for attn, ffn in zip(self.enc_self_attn, self.enc_ffn):
        tokens = ffn(attn(tokens, key_padding_mask=jnp.broadcast_to(pad, (lb, t * fq))))
        tokens = jnp.where(pad[..., None], 0, tokens)
        outputs.append(tokens.reshape(lb, t, fq, c))
      return outputs
    tp = -(-t // self.window_size) * self.window_size
    x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    frame_valid = jnp.arange(tp) < num_frames
    for i in range(len(self.enc_self_attn)):
      x = self._encoder_layer(i, x, shifted=not train and i % 2 == 1, frame_valid=frame_valid)
      outputs.append(x)
    return outputs

  def __call__(self, frame_query: jax.Array, *, train: bool = False, num_frames: jax.Array | int | None = None,
               intermediates: bool = False) -> dict[str, jax.Array]:
    """Runs the VITA module.

    Args:
      frame_query: `[L, B, T, fQ, C]` frame queries of L frame-decoder layers (3 in training, 1 at test).
      train: plain windows in every encoder layer (official `self.training`).
      num_frames: the first `num_frames` of the T frames are real (an int32 scalar, may be traced; None = all):
        the others are padding that no output depends on (bucketed inference compiles once per bucket).
      intermediates: also return `encoder` `[E, L, B, T, fQ, C]`, every object-encoder layer's output.

    Returns:
      `pred_logits [D, L, B, cQ, K+1]`, `pred_mask_embed [D, L, B, cQ, mask_dim]`, `pred_cq_embed
      [D, L, B, cQ, C]` (every decoder layer D; the official code keeps all D in training, the last at test) and
      `pred_fq_embed [L, B, T, fQ, C]` (`sim_embed_frame` of the encoded frame queries; zero-input rows for
      padded frames).
    """
    l, b, t, fq, c = frame_query.shape
    x = self.input_proj_dec(frame_query.reshape(l * b, t, fq, c))
    real = t if num_frames is None else num_frames
    enc = [e[:, :t] for e in self.encode_frame_query(x, train=train, num_frames=real)]
    src = enc[-1].reshape(l * b, t * fq, c)
    # Memory keys of padded frames are masked ([1, T*fQ], broadcast over queries); none when num_frames is None.
    memory_pad = None if num_frames is None else jnp.repeat(jnp.arange(t) >= num_frames, fq)[None]
    dec_pos = jnp.tile(self.fq_pos.embedding[...], (t, 1))[None].astype(src.dtype)  # no temporal encoding
    query_embed = self.query_embed.embedding[None].astype(src.dtype)
    output = jnp.broadcast_to(self.query_feat.embedding[None], (l * b,) + self.query_feat.embedding.shape)
    output = output.astype(src.dtype)
    dec_out = []
    for cross, self_attn, ffn in zip(self.transformer_cross_attention_layers, self.transformer_self_attention_layers,
                                     self.transformer_ffn_layers):
      output = cross(output, src, pos=dec_pos, query_pos=query_embed, attn_mask=memory_pad)
      output = self_attn(output, query_pos=query_embed)
      output = ffn(output)
      dec_out.append(self.decoder_norm(output).reshape(l, b, -1, c))
    dec_out = jnp.stack(dec_out)
    out = {
        'pred_logits': self.class_embed(dec_out),
        'pred_mask_embed': self.mask_embed(dec_out),
        'pred_cq_embed': self.sim_embed_clip(dec_out),
        'pred_fq_embed': self.sim_embed_frame(src).reshape(l, b, t, fq, c),
    }
    if intermediates:
      out['encoder'] = jnp.stack(enc).reshape(len(enc), l, b, t, fq, c)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The whole model.


class VITA(nnx.Module):
  """VITA (official meta-architecture `Vita`): per-frame Mask2Former detector + VITA module."""

  def __init__(self, config: VITASettings | ml_collections.ConfigDict, *, dtype: Any = None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      config: model settings: `VITASettings` or the `config.model` section (every field of
        `default_model_config()` required).
      dtype: compute dtype of the backbone, frame decoder and VITA module (the pixel decoder runs in float32, as
        the official `autocast(enabled=False)`); parameters stay float32. None = float32.
      rngs: parameter init RNGs (and the Swin drop-path stream).
    """
    c = config if isinstance(config, VITASettings) else settings.from_config(VITASettings, config, 'config.model')
    v = c.vita
    self.config = c  # frozen, hashable: part of the graphdef
    self.dtype = dtype
    self.backbone, channels = factory.build_backbone(c, out_features=('res2', 'res3', 'res4', 'res5'),
                                                    dtype=dtype, rngs=rngs)
    pixel_decoder = mask2former.MSDeformAttnPixelDecoder(
        list(channels.values()), STRIDES, conv_dim=c.conv_dim, mask_dim=c.mask_dim, transformer_nheads=c.nheads,
        transformer_enc_layers=c.pixel_decoder_enc_layers,
        transformer_dim_feedforward=c.pixel_decoder_dim_feedforward,
        enc_n_points=c.enc_n_points, msda_implementation=c.msda_implementation or None, remat=c.remat, rngs=rngs)
    predictor = mask2former.MultiScaleMaskedTransformerDecoder(
        c.hidden_dim, c.num_classes, c.num_frame_queries, c.nheads, c.dim_feedforward, c.dec_layers - 1, c.mask_dim,
        dtype=dtype, rngs=rngs)
    self.sem_seg_head = mask2former.MaskFormerHead(pixel_decoder, predictor)
    self.vita_module = VITAModule(
        num_classes=c.num_classes, hidden_dim=v.hidden_dim, num_frame_queries=c.num_frame_queries,
        num_queries=v.num_queries, nheads=v.nheads, dim_feedforward=v.dim_feedforward, enc_layers=v.enc_layers,
        dec_layers=v.dec_layers, enc_window_size=v.enc_window_size, conv_dim=c.conv_dim, mask_dim=c.mask_dim,
        dtype=dtype, rngs=rngs)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> 'VITA':
    """Builds from a full visjax config: `config.model` and `config.train.compute_dtype`."""
    dtype = jnp.dtype(config.train.get('compute_dtype', 'float32'))
    return cls(config.model, dtype=None if dtype == jnp.float32 else dtype, rngs=rngs)

  def frame_forward(self, images: jax.Array, image_size: jax.Array, *, train: bool = False,
                    intermediates: bool = False) -> dict[str, Any]:
    """The per-frame detector (backbone, pixel decoder, frame decoder) and the video mask features.

    Args:
      images: uint8 or float `[N, H, W, 3]` RGB 0..255, content top-left (padded internally to a multiple of
        `size_divisibility` after normalisation, as detectron2's ImageList).
      image_size: int `[N, 2]` unpadded `(h, w)`.
      train: Swin drop path on.
      intermediates: also return `pixel_decoder`, the list of every pixel-decoder map (coarsest first).

    Returns:
      `pred_logits [Ldec+1, N, fQ, K+1]`, `pred_masks [Ldec+1, N, fQ, Hp/4, Wp/4]`, `frame_queries
      [Ldec, N, fQ, C]` and `vita_mask_features [N, Hp/4, Wp/4, mask_dim]` (float32).
    """
    c = self.config
    x, _ = preprocess.normalize_images(images, image_size, pixel_mean=c.pixel_mean, pixel_std=c.pixel_std,
                                       size_divisibility=c.size_divisibility)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    feats = factory.apply_backbone(self.backbone, x, train=train)
    feats = [feats[k].astype(jnp.float32) for k in ('res2', 'res3', 'res4', 'res5')]
    pix = self.sem_seg_head.pixel_decoder(feats)
    ms = [f.astype(self.dtype or jnp.float32) for f in pix['multi_scale_features']]
    out = self.sem_seg_head.predictor(ms, pix['mask_features'].astype(self.dtype or jnp.float32))
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    out['vita_mask_features'] = self.vita_module.vita_mask_features(
        pix['clip_mask_features'].astype(self.dtype or jnp.float32)).astype(jnp.float32)
    if intermediates:
      out['pixel_decoder'] = pix['out']
    return out

  def __call__(self, images: jax.Array, image_size: jax.Array, *, train: bool = False,
               intermediates: bool = False) -> dict[str, Any]:
    """Runs frames and VITA on a batch of clips.

    Args:
      images: `[B, T, H, W, 3]` RGB 0..255; image_size: int `[B, T, 2]`.
      train: the training forward: VITA reads the last `last_layer_num` frame-decoder layers (as extra batch
        entries) and uses plain windows; otherwise the last layer and alternating plain / shifted windows.
      intermediates: also return `frame['pixel_decoder']` (every pixel-decoder map, coarsest first) and
        `video['encoder']` (every object-encoder layer's output).

    Returns:
      `frame`: `frame_forward` outputs with the frame axis `B*T` (clip-major); `video`: the VITA module outputs
      with `pred_masks [D, L, B, cQ, T, Hp/4, Wp/4]` (`einsum` of each mask embedding with the clip's
      `vita_mask_features`).
    """
    b, t = images.shape[:2]
    frame = self.frame_forward(images.reshape((b * t,) + images.shape[2:]), image_size.reshape(b * t, 2),
                               train=train, intermediates=intermediates)
    num = self.config.vita.last_layer_num if train else 1
    fq = frame['frame_queries'][-num:]
    fq = fq.reshape((num, b, t) + fq.shape[2:]).astype(self.dtype or jnp.float32)
    video = self.vita_module(fq, train=train, intermediates=intermediates)
    video = {k: v.astype(jnp.float32) for k, v in video.items()}
    mask_features = frame['vita_mask_features'].reshape((b, t) + frame['vita_mask_features'].shape[1:])
    video['pred_masks'] = jnp.einsum('dlbqc,bthwc->dlbqthw', video['pred_mask_embed'], mask_features)
    return {'frame': frame, 'video': video}
