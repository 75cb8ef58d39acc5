"""IAI + CondInst (zfonemore/IAI, `mmdet/models/detectors/iai_condinst.py`), NHWC.

Per frame:
  1. mmdet ResNet (torchvision layout, BN in eval mode, `frozen_stages=1`) -> C2..C5.
  2. `X = encoder_projector(C5)` (1x1, C5 -> d); the LSTT (`lstt.LSTTBlock`) runs on X with the memory of earlier
     frames; `C5' = [X | LSTT outputs | backbone_projector(C5)]` (channels d, L*d, C5 - (L+1) d) replaces C5.
  3. FPN (start_level 1, extra convs on output, ReLU before P7) -> P3..P7; `IAIHead` -> per-point class, id,
     box, centerness logits, dynamic-kernel parameters, and the stride-8 mask features.

The memory schedule (official `LSTTBlock` state machine) is expressed by the callers:
  * inference (`visjax.models.iai.tracker`): `reference_frame` (frame 0 with an all-zero id mask), then
    `memory_from_reference` with the predicted ids (`reset_memory`); later frames `propagate` with the memory,
    then `memory_update` with the predicted ids (`update_short_term_memory`);
  * training (`__call__`): the same with teacher-forced ground-truth id masks and the interval rule only (every
    `global_mem_interval` frame steps), a static schedule for a clip.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from visjax.models.backbones.factory import build_backbone
from visjax.models.heads import dynamic_mask, fcos
from visjax.models.iai import lstt as lstt_lib
from visjax.models.iai.head import STRIDES, IAIHead
from visjax.models.layers import preprocess
from visjax.models.layers.mlp import torch_default_bias_init, torch_default_kernel_init
from visjax.models.necks.fpn import FPN

PIXEL_MEAN = (123.68, 116.779, 103.939)
PIXEL_STD = (58.393, 57.12, 57.375)


def default_model_config() -> ml_collections.ConfigDict:
  """The official YTVIS19 R-50 IAI model (`configs/iai/ytvis2019_iai_condinst_r50.py`) as `config.model`."""
  m = ml_collections.ConfigDict()
  m.backbone = 'resnet_tv'  # mmdet ResNet, style 'pytorch', BN in eval mode
  m.backbone_depth = 50
  m.freeze_at = 2  # mmdet frozen_stages=1
  m.backbone_width = 64
  m.num_classes = 40
  m.max_obj_num = 20  # YTVIS21 / OVIS: 25
  m.fpn_channels = 256
  m.stacked_convs = 4
  m.mask_channels = 128
  m.mask_out_channels = 8
  m.lstt_num = 1
  m.lstt_dim = 256
  m.self_heads = 4
  m.attn_heads = 2
  m.dim_feedforward = 1024
  m.droppath = 0.1
  m.max_dis = 7  # 15 x 15 short-term window
  m.global_mem_interval = 3
  m.pixel_mean = PIXEL_MEAN
  m.pixel_std = PIXEL_STD
  m.size_divisibility = 32
  return m


class IAI(nnx.Module):
  """The IAI detector (module docstring). Built from plain values; `IAI.from_config(config.model)`."""

  def __init__(self, *, num_classes: int, max_obj_num: int, backbone: str = 'resnet_tv', backbone_depth: int = 50,
               freeze_at: int = 2, backbone_width: int = 64, fpn_channels: int = 256, stacked_convs: int = 4,
               mask_channels: int = 128, mask_out_channels: int = 8, lstt_num: int = 1, lstt_dim: int = 256,
               self_heads: int = 4, attn_heads: int = 2, dim_feedforward: int = 1024, droppath: float = 0.1,
               max_dis: int = 7, global_mem_interval: int = 3, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD,
               size_divisibility: int = 32, dtype: Any = None, rngs: nnx.Rngs):
    self.num_classes = num_classes
    self.max_obj_num = max_obj_num
    self.global_mem_interval = global_mem_interval
    self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
    self.size_divisibility = size_divisibility
    backbone_cfg = ml_collections.ConfigDict(dict(backbone=backbone, backbone_depth=backbone_depth,
                                                  freeze_at=freeze_at, backbone_width=backbone_width))
    self.backbone, channels = build_backbone(backbone_cfg, out_features=('res2', 'res3', 'res4', 'res5'),
                                             dtype=dtype, rngs=rngs)
    channels = [channels[f] for f in ('res2', 'res3', 'res4', 'res5')]
    c5 = channels[-1]
    rest = c5 - lstt_dim * (1 + lstt_num)
    if rest < 1:
      raise ValueError(f'IAI: C5 has {c5} channels, fewer than the {lstt_dim * (1 + lstt_num)} of X and the LSTT.')
    conv1x1 = lambda cin, cout: nnx.Conv(cin, cout, (1, 1), dtype=dtype, kernel_init=torch_default_kernel_init,
                                         bias_init=torch_default_bias_init(cin), rngs=rngs)
    self.encoder_projector = conv1x1(c5, lstt_dim)
    self.backbone_projector = conv1x1(c5, rest)
    self.lstt = lstt_lib.LSTTBlock(max_obj_num=max_obj_num, num_layers=lstt_num, d_model=lstt_dim,
                                   self_heads=self_heads, att_heads=attn_heads, dim_feedforward=dim_feedforward,
                                   droppath=droppath, max_dis=max_dis, dtype=dtype, rngs=rngs)
    self.neck = FPN(channels, fpn_channels, 5, start_level=1, add_extra_convs='on_output',
                    relu_before_extra_convs=True, dtype=dtype, rngs=rngs)
    self.bbox_head = IAIHead(num_classes=num_classes, max_obj_num=max_obj_num, in_channels=fpn_channels,
                             feat_channels=fpn_channels, stacked_convs=stacked_convs, mask_channels=mask_channels,
                             mask_out_channels=mask_out_channels, dtype=dtype, rngs=rngs)

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict, *, dtype: Any = None, rngs: nnx.Rngs) -> 'IAI':
    keys = ('num_classes', 'max_obj_num', 'backbone', 'backbone_depth', 'freeze_at', 'backbone_width',
            'fpn_channels', 'stacked_convs', 'mask_channels', 'mask_out_channels', 'lstt_num', 'lstt_dim',
            'self_heads', 'attn_heads', 'dim_feedforward', 'droppath', 'max_dis', 'global_mem_interval',
            'pixel_mean', 'pixel_std', 'size_divisibility')
    return cls(**{k: m[k] for k in keys}, dtype=dtype, rngs=rngs)

  # ------------------------------------------------------------------------------------------------ pieces

  def features(self, images: jax.Array, image_size: jax.Array) -> dict[str, jax.Array]:
    """Backbone and projectors of a batch of frames.

    Args:
      images: uint8/float `[N, H, W, 3]` RGB 0-255 (normalised here, padding zeroed, padded to /32, as mmdet's
        Normalize then Pad).
      image_size: int `[N, 2]` unpadded `(h, w)`.

    Returns:
      dict: `c2, c3, c4` backbone maps, `x` `[N, h, w, d]` (encoder_projector), `proj` (backbone_projector).
    """
    images, _ = preprocess.normalize_images(images, image_size, pixel_mean=self.pixel_mean,
                                            pixel_std=self.pixel_std, size_divisibility=self.size_divisibility)
    f = self.backbone(images)
    return dict(c2=f['res2'], c3=f['res3'], c4=f['res4'], x=self.encoder_projector(f['res5']),
                proj=self.backbone_projector(f['res5']))

  def decode(self, feats: dict[str, jax.Array], lstt_outputs: jax.Array, *, train: bool = False,
             intermediates: bool = False) -> dict[str, jax.Array]:
    """C5' from the projectors and the LSTT outputs `[L, N, h, w, d]`, then FPN and head (`IAIHead.__call__`)."""
    c5 = jnp.concatenate([feats['x'], *lstt_outputs, feats['proj']], axis=-1)
    fpn = self.neck([feats['c2'], feats['c3'], feats['c4'], c5])
    out = self.bbox_head(fpn, train=train)
    if intermediates:
      out.update(c5=c5, fpn=fpn, lstt=lstt_outputs)
    return out

  def id_embedding(self, id_mask: jax.Array) -> jax.Array:
    """One-hot id mask `[N, Hp, Wp, max_obj + 1]` (background last) -> `[N, h*w, d]`."""
    return self.lstt.id_embedding(id_mask)

  # --------------------------------------------------------------------------------------- inference steps

  def reference_frame(self, feats: dict[str, jax.Array], id_mask: jax.Array, *, intermediates: bool = False
                      ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """A reference frame (official `add_reference_frame`): the LSTT attends to the frame itself with `id_mask`.

    Returns:
      (head outputs, LSTT outputs incl. `keys`, `values` `[L, N, hw, d]`).
    """
    lstt = self.lstt(feats['x'], id_emb=self.id_embedding(id_mask))
    return self.decode(feats, lstt['outputs'], intermediates=intermediates), lstt

  def memory_from_reference(self, feats: dict[str, jax.Array], id_mask: jax.Array, capacity: int
                            ) -> lstt_lib.LSTTMemory:
    """`reset_memory`: the reference frame re-run with its predicted ids; its K/V start the memory."""
    lstt = self.lstt(feats['x'], id_emb=self.id_embedding(id_mask))
    return lstt_lib.init_memory(lstt['keys'], lstt['values'], capacity)

  def propagate(self, feats: dict[str, jax.Array], memory: lstt_lib.LSTTMemory, *, intermediates: bool = False
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """A later frame (official `match_propogate_one_frame`): (head outputs, LSTT outputs incl. `keys`, `normed`)."""
    lstt = self.lstt(feats['x'], memory=memory)
    return self.decode(feats, lstt['outputs'], intermediates=intermediates), lstt

  def memory_update(self, memory: lstt_lib.LSTTMemory, lstt: dict[str, jax.Array], id_mask: jax.Array,
                    add_long: jax.Array | bool) -> lstt_lib.LSTTMemory:
    """`update_short_term_memory`: the propagated frame with its predicted `id_mask` becomes the short-term
    memory and, when `add_long`, joins the long-term memory."""
    values = self.lstt.memory_values(lstt['normed'], self.id_embedding(id_mask))
    return lstt_lib.write_memory(memory, lstt['keys'], values, add_long)

  def instance_masks(self, mask_feat: jax.Array, points: jax.Array, strides: jax.Array, kernels: jax.Array
                     ) -> jax.Array:
    """CondInst dynamic mask head for selected points: probabilities at stride 4 of the padded input.

    Args:
      mask_feat: `[N, h, w, 8]` stride-8 mask features; points `[N, K, 2]` FCOS points `(x, y)`; strides `[N, K]`
        their levels' strides; kernels `[N, K, 169]` controller outputs.

    Returns:
      float32 `[N, K, 2h, 2w]` mask probabilities (`aligned_bilinear(logits, 2).sigmoid()`). Relative coordinates
      are normalised by `stride * 8` (IAI), with the stride-8 locations `index * 8 + 4` as origin.
    """
    logits = dynamic_mask.dynamic_mask_logits(mask_feat, points, kernels, mask_feat_stride=8, mask_out_stride=4,
                                              rel_coord_scale=strides * 8.)
    return jax.nn.sigmoid(logits.astype(jnp.float32))

  # ------------------------------------------------------------------------------------------------- training

  def __call__(self, images: jax.Array, image_size: jax.Array, id_masks: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """A clip with teacher-forced ids (the official `forward_train` forward).

    Args:
      images: uint8 `[B, T, H, W, 3]`; image_size: int `[B, T, 2]`.
      id_masks: `[B, T, Hp, Wp, max_obj + 1]` one-hot ground-truth ids per frame (background last).
      train: BatchNorm batch statistics in the mask branch, DropPath in the LSTT (needs `rngs`).

    Returns:
      the head outputs of every frame stacked on a time axis: `[T, B, ...]`.

    Schedule: frame 0 is a reference frame with an all-zero id mask (background channel included); then the
    memory is re-run with frame 0's ids; frame t > 0 propagates, then writes its ids into the short-term memory,
    and into the long-term one when `t + 1 - last >= global_mem_interval` (frame steps as the official counter).
    """
    b, t = images.shape[:2]
    feats = self.features(images.reshape(b * t, *images.shape[2:]), image_size.reshape(b * t, 2))
    feats = {k: v.reshape(b, t, *v.shape[1:]) for k, v in feats.items()}
    frame = lambda i: {k: v[:, i] for k, v in feats.items()}
    adds, step, last = [], 1, 0  # static long-term schedule: frame i < t - 1 is added after its forward
    for _ in range(1, t - 1):
      step += 1
      adds.append(step - last >= self.global_mem_interval)
      last = step if adds[-1] else last
    outs = []
    f0 = frame(0)
    lstt = self.lstt(f0['x'], id_emb=self.id_embedding(jnp.zeros_like(id_masks[:, 0])), train=train, rngs=rngs)
    outs.append(self.decode(f0, lstt['outputs'], train=train))
    lstt = self.lstt(f0['x'], id_emb=self.id_embedding(id_masks[:, 0]), train=train, rngs=rngs)
    memory = lstt_lib.init_memory(lstt['keys'], lstt['values'], 1 + sum(adds))
    for i in range(1, t):
      fi = frame(i)
      lstt = self.lstt(fi['x'], memory=memory, train=train, rngs=rngs)
      outs.append(self.decode(fi, lstt['outputs'], train=train))
      if i < t - 1:
        memory = self.memory_update(memory, lstt, id_masks[:, i], adds[i - 1])
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)


def fcos_point_table(height: int, width: int, strides=STRIDES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Points, strides and level index of every head output for a padded `(height, width)` input (P3..P7 sizes
  follow the convolution arithmetic: ceil-halving from the stride-32 C5)."""
  sizes, h, w = [], -(-height // 8), -(-width // 8)
  for _ in strides:
    sizes.append((h, w))
    h, w = -(-h // 2), -(-w // 2)
  return fcos.multilevel_points(sizes, strides)
