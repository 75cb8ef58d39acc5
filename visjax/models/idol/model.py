"""IDOL per-frame model (Deformable-DETR with box refinement + CondInst masks + re-ID head), Flax NNX.

Module names mirror the official `IDOL.detr` tree (see `visjax/convert/rules_idol.py` for the mapping):

  backbone          detectron2 ResNet or D2SwinTransformer (`config.model.backbone`), res3..res5 used (torch
                    `detr.detr.backbone.0.backbone`)
  input_proj        `InputProjection` (torch `detr.detr.input_proj`)
  transformer       `DeformableTransformer` (torch `detr.detr.transformer`)
  query_embed       Embed(Q, 2C) (torch `detr.detr.query_embed`)
  class_embed.{l}   Linear(C, num_classes), one per decoder layer, bias -log(99)
  bbox_embed.{l}    MLP(C, C, 4, 3), one per decoder layer (torch `detr.detr.bbox_embed`)
  controller        MLP(C, C, 169, 3) (torch `detr.controller`)
  mask_head         `MaskHeadSmallConv` (torch `detr.mask_head`)
  reid_embed_head   MLP(C, C, reid_dim, 3) (torch `detr.reid_embed_head`)

`IDOL.__call__` returns the dict of docs/INTERFACES.md §4 for every decoder layer: logits, boxes, mask logits at
stride 4 (for all queries; the mask of layer l uses the reference entering layer l, in pixels of the unpadded
image, as IDOL does), the last layer's re-ID embeddings and the references. Training instead calls
`forward_heads` (everything up to the controller outputs) and `mask_logits` for the queries the matcher selected
(`method.loss_fn`), as the official criterion does.
"""

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from visjax.models import settings
from visjax.models.backbones import factory
from visjax.models.backbones import swin
from visjax.models.heads import dynamic_mask
from visjax.models.layers.mlp import MLP, torch_default_kernel_init
from visjax.models.layers import preprocess
from visjax.models.layers.position import sine_position_embedding
from visjax.models.transformers import deformable

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def default_model_config() -> ml_collections.ConfigDict:
  """The official IDOL R50 model settings (`config.model` of the IDOL configs).

  `backbone` picks the network: 'resnet' (detectron2 ResNet of depth `backbone_depth`, stages below `freeze_at`
  frozen) or 'swin' (D2SwinTransformer sized by `swin`, the fields of `visjax.models.backbones.swin.SwinConfig`;
  defaults are the official Swin-L ones, nothing frozen). Either way res3..res5 feed the input projections.
  """
  m = ml_collections.ConfigDict()
  m.backbone = 'resnet'  # 'resnet' | 'swin'
  m.backbone_depth = 50  # detectron2 ResNet depth (18/34/50/101)
  m.freeze_at = 2  # detectron2 FREEZE_AT: stem + res2 frozen
  m.backbone_norm = 'FrozenBN'  # detectron2 RESNETS.NORM: 'FrozenBN' (released weights) or 'GN' (from scratch)
  m.backbone_width = 64  # ResNet stem / res2 width (64 in every released model; 32 = half width)
  m.swin = ml_collections.ConfigDict(dataclasses.asdict(swin.SWIN_L))  # MODEL.SWIN.* (backbone == 'swin')
  m.num_classes = 40
  m.d_model = 256
  m.nheads = 8
  m.enc_layers = 6
  m.dec_layers = 6
  m.dim_feedforward = 1024
  m.dropout = 0.1
  m.num_feature_levels = 4
  m.enc_n_points = 4
  m.dec_n_points = 4
  m.num_queries = 300
  m.reid_dim = 256  # official: the re-ID MLP outputs hidden_dim
  m.mask_dim = 8  # mask-branch channels (MaskHeadSmallConv output); the official code fixes it at d_model // 32
  m.dynamic_channels = 8
  m.mask_feat_stride = 8
  m.mask_out_stride = 4
  m.rel_coord = True
  m.pixel_mean = PIXEL_MEAN
  m.pixel_std = PIXEL_STD
  m.size_divisibility = 32
  m.msda_implementation = ''  # '' = best available for the backend; 'xla', 'pallas', 'pallas_tpu'
  m.remat = False  # recompute transformer layers and dynamic mask heads in the backward pass (saves memory)
  return m


@dataclasses.dataclass(frozen=True)
class IDOLSettings:
  """The fields of `config.model` (see `default_model_config` for their meaning and the official values)."""
  backbone: str
  backbone_depth: int
  freeze_at: int
  backbone_norm: str
  backbone_width: int
  swin: swin.SwinConfig
  num_classes: int
  d_model: int
  nheads: int
  enc_layers: int
  dec_layers: int
  dim_feedforward: int
  dropout: float
  num_feature_levels: int
  enc_n_points: int
  dec_n_points: int
  num_queries: int
  reid_dim: int
  mask_dim: int
  dynamic_channels: int
  mask_feat_stride: int
  mask_out_stride: int
  rel_coord: bool
  pixel_mean: tuple[float, ...]
  pixel_std: tuple[float, ...]
  size_divisibility: int
  msda_implementation: str
  remat: bool


class IDOL(nnx.Module):
  """IDOL detector / segmenter for single frames (tracking happens on the host, see `tracker.py`)."""

  def __init__(self, config: IDOLSettings | ml_collections.ConfigDict, *, dtype: Any = None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      config: model settings: `IDOLSettings` or the `config.model` section of an IDOL config (every field of
        `default_model_config()` required).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32. None = float32.
      rngs: parameter init RNGs.
    """
    c = config if isinstance(config, IDOLSettings) else settings.from_config(IDOLSettings, config, 'config.model')
    if c.d_model % 32:
      raise ValueError(f'IDOL config.model: d_model ({c.d_model}) must be a multiple of 32 (GroupNorm(32)).')
    self.config = c  # frozen, hashable: part of the graphdef
    self.dtype = dtype
    self.backbone, channels = factory.build_backbone(c, out_features=('res3', 'res4', 'res5'), dtype=dtype,
                                                    rngs=rngs)
    in_channels = list(channels.values())
    self.input_proj = deformable.InputProjection(in_channels, c.d_model, c.num_feature_levels, dtype=dtype,
                                                 rngs=rngs)
    self.transformer = deformable.DeformableTransformer(
        c.d_model, c.nheads, c.enc_layers, c.dec_layers, c.dim_feedforward, c.dropout, c.num_feature_levels,
        c.dec_n_points, c.enc_n_points, msda_implementation=c.msda_implementation or None,
        remat=c.remat, dtype=dtype, rngs=rngs)
    self.query_embed = nnx.Embed(c.num_queries, 2 * c.d_model, embedding_init=nnx.initializers.normal(1.),
                                 rngs=rngs)
    prior_bias = -math.log((1 - 0.01) / 0.01)
    self.class_embed = nnx.List([
        nnx.Linear(c.d_model, c.num_classes, dtype=dtype, kernel_init=torch_default_kernel_init,
                   bias_init=nnx.initializers.constant(prior_bias), rngs=rngs) for _ in range(c.dec_layers)])
    bbox_embed = []
    for lid in range(c.dec_layers):
      mlp = MLP(c.d_model, c.d_model, 4, 3, dtype=dtype, rngs=rngs)
      last = mlp.layers[-1]
      last.kernel[...] = jnp.zeros_like(last.kernel[...])
      # Only the first layer's head starts at wh = sigmoid(-2) (official box-refinement init).
      last.bias[...] = jnp.asarray([0., 0., -2., -2.] if lid == 0 else [0.] * 4, jnp.float32)
      bbox_embed.append(mlp)
    self.bbox_embed = nnx.List(bbox_embed)
    weight_nums, bias_nums = dynamic_mask.dynamic_param_sizes(c.mask_dim, c.dynamic_channels, 3, c.rel_coord)
    self.controller = dynamic_mask.controller(c.d_model, sum(weight_nums) + sum(bias_nums), dtype=dtype, rngs=rngs)
    self.mask_head = dynamic_mask.MaskHeadSmallConv(c.d_model, c.mask_dim, dtype=dtype, rngs=rngs)
    self.reid_embed_head = MLP(c.d_model, c.d_model, c.reid_dim, 3, dtype=dtype, rngs=rngs)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> 'IDOL':
    """Builds from a full visjax config: `config.model` and `config.train.compute_dtype`."""
    dtype = jnp.dtype(config.train.get('compute_dtype', 'float32'))
    return cls(config.model, dtype=None if dtype == jnp.float32 else dtype, rngs=rngs)

  def preprocess(self, images: jax.Array, image_size: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalises, zeroes the padding and pads to `size_divisibility`.

    Args:
      images: uint8 or float `[N, H, W, 3]` RGB in 0..255, content at the top-left.
      image_size: int `[N, 2]` unpadded `(h, w)`.

    Returns:
      float32 `[N, Hp, Wp, 3]` normalised (zero on padding, as the official ImageList padding after
      normalisation) and the pad mask bool `[N, Hp, Wp]` (True on padding).
    """
    c = self.config
    return preprocess.normalize_images(images, image_size, pixel_mean=c.pixel_mean, pixel_std=c.pixel_std,
                                       size_divisibility=c.size_divisibility)

  def forward_heads(self, images: jax.Array, image_size: jax.Array, *, train: bool = False,
                    rng: jax.Array | None = None, mask_frames: slice = slice(None),
                    intermediates: bool = False) -> dict[str, jax.Array]:
    """Runs everything but the per-instance dynamic mask convs, returning their inputs instead.

    Training uses this to compute masks only for the queries the matcher selects (`mask_logits`); `__call__`
    computes them for every query.

    Args:
      images, image_size, train, rng: as `__call__`.
      mask_frames: the frames whose mask features are computed (training: the key frames, `slice(0, None, 2)`).
      intermediates: also return `intermediates`, the dict of named intermediates (`__call__`).

    Returns:
      dict: pred_logits, pred_boxes, pred_embeds, references as `__call__` (float32), and
        mask_feats `[N', Hp/8, Wp/8, mask_dim]` (mask-branch features of the N' `mask_frames`, Hp/Wp = H/W
        padded to 32) and
        hs `[Ldec, N, Q, C]` (decoder outputs, the controller's input), in the compute dtype,
        mask_centres `[Ldec, N, Q, 2]` float32 (reference entering each layer, (x, y) in pixels of the unpadded
        image).
    """
    c = self.config
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'IDOL: images must be [N, H, W, 3], got shape {images.shape}.')
    if image_size.shape != (images.shape[0], 2):
      raise ValueError(f'IDOL: image_size must be [N, 2] = {(images.shape[0], 2)}, got {image_size.shape}.')
    deterministic = not train or c.dropout == 0
    if not deterministic and rng is None:
      raise ValueError('IDOL: train=True with dropout > 0 needs a dropout `rng`.')
    rngs = None if deterministic else nnx.Rngs(dropout=rng)
    x, pad_mask = self.preprocess(images, image_size)
    if self.dtype is not None:
      x = x.astype(self.dtype)

    feats = factory.apply_backbone(self.backbone, x, train=train)
    srcs, masks = self.input_proj([feats['res3'], feats['res4'], feats['res5']], pad_mask)
    pos = [sine_position_embedding(m, c.d_model // 2) for m in masks]
    out = self.transformer(srcs, masks, pos, self.query_embed.embedding[...], list(self.bbox_embed),
                           deterministic=deterministic, rngs=rngs, return_sampling=intermediates)

    hs = out.hs
    logits = jnp.stack([head(hs[l]) for l, head in enumerate(self.class_embed)]).astype(jnp.float32)

    # Mask branch on the encoder memory of the three finest levels.
    maps, start = [], 0
    for hl, wl in out.spatial_shapes[:3]:
      maps.append(out.memory[mask_frames, start:start + hl * wl].reshape(-1, hl, wl, out.memory.shape[-1]))
      start += hl * wl
    scale = image_size[:, ::-1].astype(jnp.float32)  # (w, h) of the unpadded image
    references = out.references.astype(jnp.float32)
    result = {
        'pred_logits': logits,
        'pred_boxes': out.boxes.astype(jnp.float32),
        'pred_embeds': self.reid_embed_head(hs[-1]).astype(jnp.float32),
        'references': references,
        'mask_feats': self.mask_head(maps),
        'hs': hs,
        'mask_centres': references[..., :2] * scale[None, :, None],
    }
    if intermediates:
      inter = {f'backbone.{k}': v for k, v in feats.items()}
      for l, (src, m, p) in enumerate(zip(srcs, masks, pos)):
        inter.update({f'transformer.src_{l}': src, f'transformer.mask_{l}': m, f'transformer.pos_{l}': p})
      inter.update({
          'encoder.memory': out.memory, 'decoder.hs': hs, 'decoder.references': out.references,
          'decoder.sampling_locations': out.decoder.sampling_locations,
          'decoder.attention_weights': out.decoder.attention_weights,
          'mask_head.features': result['mask_feats'], 'controller.params': self.controller(hs),
      })
      result['intermediates'] = inter
    return result

  def mask_logits(self, mask_feats: jax.Array, centres: jax.Array, hs: jax.Array,
                  out_hw: tuple[int, int]) -> jax.Array:
    """Dynamic-head mask logits of the given instances: controller, then the dynamic convs (recomputed in the
    backward pass when `remat`).

    Args:
      mask_feats: `[N, h, w, mask_dim]` (`forward_heads`' mask_feats of the frames concerned).
      centres: `[N, K, 2]` instance centres (x, y) in pixels; hs: `[N, K, C]` their decoder outputs.
      out_hw: static crop of the stride-`mask_out_stride` output, `(ceil(H / s), ceil(W / s))` of the input.

    Returns:
      float32 `[N, K, out_hw[0], out_hw[1]]`.
    """
    c = self.config
    fn = functools.partial(dynamic_mask.dynamic_mask_logits, mask_feat_stride=c.mask_feat_stride,
                           mask_out_stride=c.mask_out_stride, rel_coord=c.rel_coord,
                           dynamic_channels=c.dynamic_channels)
    if c.remat:
      fn = jax.checkpoint(fn)
    return fn(mask_feats, centres, self.controller(hs))[..., :out_hw[0], :out_hw[1]].astype(jnp.float32)

  def __call__(self, images: jax.Array, image_size: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, mask_layers: Sequence[int] | None = None, intermediates: bool = False):
    """Runs the per-frame model.

    Args:
      images: uint8 or float `[N, H, W, 3]` RGB 0..255, zero-padded bottom/right (any H, W; padded internally to
        a multiple of `size_divisibility`).
      image_size: int `[N, 2]` unpadded `(h, w)` of each frame.
      train: enables dropout (needs `rng`) and the Swin backbone's drop path (which draws from the `dropout`
        / default stream of the construction `rngs`).
      rng: PRNG key for dropout (used only when `train` and dropout > 0).
      mask_layers: decoder layers whose masks are computed (e.g. `(-1,)` at inference); None = all.
      intermediates: also return the named intermediates (docs/INTERFACES.md §6; a Python switch, so the graph
        traced without it is unchanged):
          backbone.res3|res4|res5 `[N, h, w, C_l]`; transformer.src_{l} `[N, H_l, W_l, C]` (projected input
          level l), transformer.mask_{l} bool `[N, H_l, W_l]`, transformer.pos_{l} `[N, H_l, W_l, C]`;
          encoder.memory `[N, S, C]`; decoder.hs `[Ldec, N, Q, C]`, decoder.references `[Ldec, N, Q, 4]`,
          decoder.sampling_locations `[Ldec, N, Q, M, L, P, 2]`, decoder.attention_weights `[Ldec, N, Q, M, L, P]`;
          mask_head.features `[N, H/8, W/8, mask_dim]`; controller.params `[Ldec, N, Q, P]` (dynamic mask-head
          parameters of every layer).

    Returns:
      dict (all float32):
        pred_logits `[Ldec, N, Q, C]`, pred_boxes `[Ldec, N, Q, 4]` (cxcywh normalised to the unpadded image),
        pred_masks `[len(mask_layers) or Ldec, N, Q, ceil(H/4), ceil(W/4)]` mask logits at stride 4 of the input,
        pred_embeds `[N, Q, E]` (last layer), references `[Ldec, N, Q, 4]` (reference entering each layer).
      With `intermediates`, `(outputs, intermediates)`.
    """
    out = self.forward_heads(images, image_size, train=train, rng=rng, intermediates=intermediates)
    inter = out.pop('intermediates', None)
    feats, hs, centres = out.pop('mask_feats'), out.pop('hs'), out.pop('mask_centres')
    num_layers = hs.shape[0]
    layers = range(num_layers) if mask_layers is None else [range(num_layers)[l] for l in mask_layers]
    stride = self.config.mask_out_stride
    out_hw = (-(-images.shape[1] // stride), -(-images.shape[2] // stride))
    out['pred_masks'] = jnp.stack([self.mask_logits(feats, centres[l], hs[l], out_hw) for l in layers])
    return (out, inter) if intermediates else out
