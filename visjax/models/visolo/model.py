"""VISOLO model (official `projects/VISOLO/visolo/models/visolo_model.py`, SuHoHan95/VISOLO @d232ab6).

A detectron2 ResNet (res2..res4 only) feeds five heads on an `S1 x S2` grid (one level, res4 resized to the grid):

  Category_branch_pre   resize(r4) -> cat_pre_conv1 = frame_f (tracking feature) -> relu -> conv_layers -> cat_f
  Kernel_branch (pre)   add_coord(r4) -> resize -> conv_layers = kernel_f
  Tracking_branch       Q(f_a) . R(f_b): `[S1*S2, S1*S2]` logits that cell i of frame a and cell j of frame b are
                        the same instance
  Memory_module         read = softmax over all memory cells of the query->memory tracking logits, weighted sum
                        of conv1(memory feature), added to the query feature (for cat_f and kernel_f alike)
  Category_branch_post  conv_layers -> pred: class logits per cell
  Kernel_branch (post)  conv_layers_post -> pred: a dynamic 1x1 kernel per cell
  Mask_branch           convR4(add_coord(r4)) -> ResR4 -> RefR3(r3) -> RefR2(r2) -> relu -> convR1 -> pred:
                        mask features at stride 4; mask of cell k = sigmoid(upsample x4(mask_f . kernel_k))

Every conv is a detectron2 `Conv2d` with bias, optional GroupNorm(32) and optional ReLU (`layers.conv.ConvNorm`);
`ResR4`, `RefR3`, `RefR2` have no norm. Module and parameter names are the official ones, so the conversion rules
(`visjax/convert/rules_visolo.py`) only rename `weight` -> `kernel` / `scale`.

Training (`__call__`): clips of T (officially 3) frames; every frame reads memory from the other T - 1 frames.
Online inference (`encode` + `decode`): the memory is a fixed-capacity buffer `[B, M, S1, S2, D]` with a validity
mask `[B, M]`, so a jitted step compiles once per frame size and capacity; which frames it holds is the tracker's
business (`visjax.models.visolo.tracker.MemorySchedule`).
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from visjax.models.backbones import factory
from visjax.models.layers import conv as conv_lib
from visjax.models.layers import coord
from visjax.models.layers import preprocess
from visjax.models.layers import resize

PIXEL_MEAN = (123.675, 116.280, 103.530)  # configs/base_ytvis_coco.yaml MODEL.PIXEL_MEAN (RGB)
PIXEL_STD = (58.395, 57.120, 57.375)
_HIGHEST = jax.lax.Precision.HIGHEST
# detectron2 `init_msra_fill`: kaiming normal (fan_out, relu gain), zero bias.
_msra = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # untruncated


def default_model_config() -> ml_collections.ConfigDict:
  """The official VISOLO R-50 YouTube-VIS 2019 settings (`configs/base_ytvis_coco.yaml` + `visolo/config.py`)."""
  m = ml_collections.ConfigDict()
  m.backbone = 'resnet'  # detectron2 R-50 (MODEL.RESNETS.DEPTH 50), OUT_FEATURES res2..res4 (no res5 built)
  m.backbone_depth = 50
  m.freeze_at = 2  # detectron2 default MODEL.BACKBONE.FREEZE_AT
  m.backbone_norm = 'FrozenBN'
  m.backbone_width = 64
  m.num_classes = 40  # MODEL.VISOLO.NUM_CLASSES (80 for the COCO pretraining, base_coco.yaml)
  m.grid_num = (12, 21)  # MODEL.VISOLO.GRID_NUM
  m.indim = 1024  # MODEL.VISOLO.INDIM: res4 channels
  m.outdim = 256  # MODEL.VISOLO.OUTDIM
  m.norm = 'GN'  # MODEL.VISOLO.NORM
  m.pixel_mean = PIXEL_MEAN
  m.pixel_std = PIXEL_STD
  m.size_divisibility = 16  # res2..res4 must upsample onto each other (352 x 624 is not a multiple of 32)
  return m


def _conv(cin: int, cout: int, k: int, *, norm: str | None, relu: bool = False, dtype: Any,
          rngs: nnx.Rngs) -> conv_lib.ConvNorm:
  """detectron2 `Conv2d(cin, cout, k, padding=k // 2, bias=True, norm=get_norm(norm), activation=relu)`."""
  return conv_lib.ConvNorm(cin, cout, k, norm=norm or None, activation='relu' if relu else None, kernel_init=_msra,
                           dtype=dtype, rngs=rngs)


def _sequence(convs: nnx.Dict, x: jax.Array) -> jax.Array:
  for name in convs.keys():
    x = convs[name](x)
  return x


class ResBlock(nnx.Module):
  """`x + conv2(conv1(relu(x)))` (conv1 with ReLU), no norm (official `ResBlock(conv_norm="")`)."""

  def __init__(self, dim: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.conv1 = _conv(dim, dim, 3, norm=None, relu=True, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(dim, dim, 3, norm=None, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.conv2(self.conv1(jax.nn.relu(x)))


class Refine(nnx.Module):
  """`ResF(ResSCF(convSCF(skip)) + upsample x2(coarse))`, no norm (official `Refine`)."""

  def __init__(self, indim: int, outdim: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.convSCF = _conv(indim, outdim, 3, norm=None, dtype=dtype, rngs=rngs)
    self.ResSCF = ResBlock(outdim, dtype=dtype, rngs=rngs)
    self.ResF = ResBlock(outdim, dtype=dtype, rngs=rngs)

  def __call__(self, skip: jax.Array, coarse: jax.Array) -> jax.Array:
    """`skip [B, 2h, 2w, indim]`, `coarse [B, h, w, outdim]` -> `[B, 2h, 2w, outdim]`."""
    s = self.ResSCF(self.convSCF(skip))
    up = resize.resize_bilinear(coarse, (2 * coarse.shape[1], 2 * coarse.shape[2]), scale_factor=2)
    return self.ResF(s + up)


class CategoryPreBranch(nnx.Module):

  def __init__(self, grid: tuple[int, int], indim: int, outdim: int, norm: str, *, dtype: Any = None,
               rngs: nnx.Rngs):
    self.grid = tuple(grid)
    self.cat_pre_conv1 = _conv(indim, outdim, 3, norm=norm, dtype=dtype, rngs=rngs)
    self.conv_layers = nnx.Dict({f'cat_pre_conv{k}': _conv(outdim, outdim, 3, norm=norm, relu=True, dtype=dtype,
                                                           rngs=rngs) for k in (2, 3)})
    self.cat_pre_conv4 = _conv(outdim, outdim, 1, norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, r4: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`r4 [B, h, w, indim]` -> (cat_f, frame_f), each `[B, S1, S2, outdim]`."""
    frame_f = self.cat_pre_conv1(resize.resize_bilinear(r4, self.grid))
    cat_f = self.cat_pre_conv4(_sequence(self.conv_layers, jax.nn.relu(frame_f)))
    return cat_f, frame_f


class CategoryPostBranch(nnx.Module):

  def __init__(self, num_classes: int, dim: int, norm: str, *, dtype: Any = None, rngs: nnx.Rngs):
    self.conv_layers = nnx.Dict({f'cat_post_conv{k}': _conv(dim, dim, 3, norm=norm, relu=True, dtype=dtype,
                                                            rngs=rngs) for k in (1, 2, 3)})
    self.pred = _conv(dim, num_classes, 3, norm=None, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, S1, S2, dim]` -> class logits `[B, S1, S2, C]`."""
    return self.pred(_sequence(self.conv_layers, x))


class KernelBranch(nnx.Module):

  def __init__(self, grid: tuple[int, int], indim: int, outdim: int, norm: str, *, dtype: Any = None,
               rngs: nnx.Rngs):
    self.grid = tuple(grid)
    self.conv_layers = nnx.Dict({f'kernel_conv{k + 1}': _conv(indim + 2 if k == 0 else outdim, outdim, 3, norm=norm,
                                                              relu=True, dtype=dtype, rngs=rngs) for k in range(3)})
    self.conv_layers_post = nnx.Dict({f'kernel_conv{k}': _conv(outdim, outdim, 3, norm=norm, relu=True, dtype=dtype,
                                                               rngs=rngs) for k in (4, 5)})
    self.pred = _conv(outdim, outdim, 1, norm=norm, dtype=dtype, rngs=rngs)

  def pre(self, r4: jax.Array) -> jax.Array:
    """`r4 [B, h, w, indim]` -> kernel_f `[B, S1, S2, outdim]` (coordinates appended before the resize)."""
    return _sequence(self.conv_layers, resize.resize_bilinear(coord.add_coord(r4), self.grid))

  def post(self, x: jax.Array) -> jax.Array:
    """memory-read kernel feature `[B, S1, S2, outdim]` -> dynamic kernels `[B, S1, S2, outdim]`."""
    return self.pred(_sequence(self.conv_layers_post, x))


class MaskBranch(nnx.Module):

  def __init__(self, indim: int, outdim: int, norm: str, *, dtype: Any = None, rngs: nnx.Rngs):
    self.convR4 = _conv(indim + 2, outdim, 3, norm=norm, dtype=dtype, rngs=rngs)
    self.ResR4 = ResBlock(outdim, dtype=dtype, rngs=rngs)
    self.RefR3 = Refine(indim // 2, outdim, dtype=dtype, rngs=rngs)
    self.RefR2 = Refine(indim // 4, outdim, dtype=dtype, rngs=rngs)
    self.convR1 = _conv(outdim, outdim, 3, norm=norm, relu=True, dtype=dtype, rngs=rngs)
    self.pred = _conv(outdim, outdim, 1, norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, r4: jax.Array, r3: jax.Array, r2: jax.Array) -> jax.Array:
    """res4 `[B, h, w, indim]`, res3 `[B, 2h, 2w, indim/2]`, res2 `[B, 4h, 4w, indim/4]` -> `[B, 4h, 4w, outdim]`."""
    p = self.ResR4(self.convR4(coord.add_coord(r4)))
    p = self.RefR3(r3, p)
    p = self.RefR2(r2, p)
    return self.pred(self.convR1(jax.nn.relu(p)))


class TrackingBranch(nnx.Module):

  def __init__(self, dim: int, norm: str, *, dtype: Any = None, rngs: nnx.Rngs):
    self.conv_layers_share = nnx.Dict({f'track_S_conv{k}': _conv(dim, dim, 3, norm=norm, relu=True, dtype=dtype,
                                                                 rngs=rngs) for k in (1, 2)})
    self.track_Q_conv1 = _conv(dim, dim, 3, norm=norm, dtype=dtype, rngs=rngs)
    self.track_Q_conv2 = _conv(dim, dim // 2, 1, norm=norm, dtype=dtype, rngs=rngs)
    self.track_R_conv1 = _conv(dim, dim, 3, norm=norm, dtype=dtype, rngs=rngs)
    self.track_R_conv2 = _conv(dim, dim // 2, 1, norm=norm, dtype=dtype, rngs=rngs)

  def _shared(self, f: jax.Array) -> jax.Array:
    return _sequence(self.conv_layers_share, jax.nn.relu(f))

  def query(self, f: jax.Array) -> jax.Array:
    """frame_f `[B, S1, S2, D]` -> `[B, S1*S2, D/2]` (row-major cells)."""
    q = self.track_Q_conv2(self.track_Q_conv1(self._shared(f)))
    return q.reshape(q.shape[0], -1, q.shape[-1])

  def reference(self, f: jax.Array) -> jax.Array:
    """frame_f `[B, S1, S2, D]` -> `[B, S1*S2, D/2]`."""
    r = self.track_R_conv2(self.track_R_conv1(self._shared(f)))
    return r.reshape(r.shape[0], -1, r.shape[-1])

  def __call__(self, f1: jax.Array, f2: jax.Array) -> jax.Array:
    """`f1 [B, S1, S2, D]`, `f2 [B, T, S1, S2, D]` -> logits `[B, T, S1*S2, S1*S2]` (cell of f1, cell of f2)."""
    b, t = f2.shape[:2]
    q = self.query(f1)
    r = self.reference(f2.reshape((b * t,) + f2.shape[2:])).reshape(b, t, -1, q.shape[-1])
    return jnp.einsum('bqc,btrc->btqr', q, r, precision=_HIGHEST)


class Memory(nnx.Module):

  def __init__(self, dim: int, norm: str, *, dtype: Any = None, rngs: nnx.Rngs):
    self.conv1 = _conv(dim, dim, 3, norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, tracking: jax.Array, query: jax.Array, memory: jax.Array,
               valid: jax.Array | None = None) -> jax.Array:
    """Memory read (official `readMemory`; `readPreFeature` is its T = 1 case).

    Args:
      tracking: `[B, T, S, S]` logits, query cell -> memory cell, `S = S1 * S2`.
      query: `[B, S1, S2, D]` the current frame's feature.
      memory: `[B, T, S1, S2, D]` memory features.
      valid: optional bool `[B, T]`: memory slots that hold a frame (others are left out of the softmax; at least
        one must be valid).

    Returns:
      `[B, S1, S2, D]`: query + sum over memory cells of softmax(tracking) * conv1(memory).
    """
    b, t, s = tracking.shape[:3]
    logits = jnp.swapaxes(tracking, 1, 2)  # [B, S, T, S]
    if valid is not None:
      logits = jnp.where(valid[:, None, :, None], logits, -jnp.inf)
    weights = jax.nn.softmax(logits.reshape(b, s, t * s), axis=-1)
    values = self.conv1(memory.reshape((b * t,) + memory.shape[2:])).reshape(b, t * s, -1)
    read = jnp.einsum('bqm,bmd->bqd', weights, values, precision=_HIGHEST)
    return query + read.reshape(query.shape)


def mask_probs(mask_f: jax.Array, kernels: jax.Array) -> jax.Array:
  """Masks of dynamic kernels: `sigmoid(upsample x4(mask_f . kernel))` (official `getMaskMap`, no bias).

  Args:
    mask_f: `[B, h, w, D]` mask features (stride 4).
    kernels: `[B, K, D]`.

  Returns:
    `[B, K, 4h, 4w]` probabilities.
  """
  logits = jnp.einsum('bhwd,bkd->bhwk', mask_f, kernels, precision=_HIGHEST)
  h, w = mask_f.shape[1:3]
  logits = resize.resize_bilinear(logits, (4 * h, 4 * w), scale_factor=4)
  return jax.nn.sigmoid(jnp.moveaxis(logits, -1, 1))


def init_memory(batch: int, capacity: int, grid: Sequence[int], dim: int, dtype: Any = jnp.float32
                ) -> dict[str, jax.Array]:
  """An empty memory buffer: {'frame_f', 'cat_f', 'kernel_f': zeros `[B, M, S1, S2, D]`, 'valid': False `[B, M]`}."""
  shape = (batch, capacity) + tuple(grid) + (dim,)
  return dict(frame_f=jnp.zeros(shape, dtype), cat_f=jnp.zeros(shape, dtype), kernel_f=jnp.zeros(shape, dtype),
              valid=jnp.zeros((batch, capacity), bool))


def write_memory(memory: dict[str, jax.Array], feats: dict[str, jax.Array], slot: jax.Array | int
                 ) -> dict[str, jax.Array]:
  """Writes one frame's `encode` features (`[B, S1, S2, D]`) into buffer `slot` (may be traced) and marks it valid."""
  out = {k: jax.lax.dynamic_update_index_in_dim(memory[k], feats[k].astype(memory[k].dtype), slot, 1)
         for k in ('frame_f', 'cat_f', 'kernel_f')}
  out['valid'] = memory['valid'].at[:, slot].set(True)
  return out


class VISOLO(nnx.Module):
  """The VISOLO network (official `VISOLO`); see the module docstring."""

  def __init__(self, backbone: nnx.Module, *, num_classes: int, grid: Sequence[int] = (12, 21), indim: int = 1024,
               outdim: int = 256, norm: str = 'GN', pixel_mean: Sequence[float] = PIXEL_MEAN,
               pixel_std: Sequence[float] = PIXEL_STD, size_divisibility: int = 16, dtype: Any = None,
               rngs: nnx.Rngs):
    self.backbone = backbone
    self.grid = tuple(int(g) for g in grid)
    self.num_classes = num_classes
    self.pixel_mean = tuple(pixel_mean)
    self.pixel_std = tuple(pixel_std)
    self.size_divisibility = size_divisibility
    kw = dict(dtype=dtype, rngs=rngs)
    self.Category_branch_pre = CategoryPreBranch(self.grid, indim, outdim, norm, **kw)
    self.Category_branch_post = CategoryPostBranch(num_classes, outdim, norm, **kw)
    self.Kernel_branch = KernelBranch(self.grid, indim, outdim, norm, **kw)
    self.Mask_branch = MaskBranch(indim, outdim, norm, **kw)
    self.Tracking_branch = TrackingBranch(outdim, norm, **kw)
    self.Memory_module = Memory(outdim, norm, **kw)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> 'VISOLO':
    """Builds from a full visjax config: `config.model` (fields: `default_model_config`) and
    `config.train.compute_dtype`."""
    dtype = jnp.dtype(config.train.get('compute_dtype', 'float32'))
    return cls.from_model_config(config.model, dtype=None if dtype == jnp.float32 else dtype, rngs=rngs)

  @classmethod
  def from_model_config(cls, c: ml_collections.ConfigDict, *, dtype: Any = None, rngs: nnx.Rngs) -> 'VISOLO':
    """Builds the model of a `config.model` section."""
    backbone, channels = factory.build_backbone(c, out_features=('res2', 'res3', 'res4'), dtype=dtype, rngs=rngs)
    if channels['res4'] != c.indim:
      raise ValueError(f'VISOLO: indim {c.indim} != backbone res4 channels {channels["res4"]}.')
    return cls(backbone, num_classes=c.num_classes, grid=c.grid_num, indim=c.indim, outdim=c.outdim, norm=c.norm,
               pixel_mean=c.pixel_mean, pixel_std=c.pixel_std, size_divisibility=c.size_divisibility, dtype=dtype,
               rngs=rngs)

  def encode(self, images: jax.Array, image_size: jax.Array) -> dict[str, jax.Array]:
    """Per-frame features, no memory.

    Args:
      images: uint8 or float `[N, H, W, 3]` RGB 0..255 (padded to a multiple of `size_divisibility` inside).
      image_size: int `[N, 2]` unpadded `(h, w)`.

    Returns:
      {'res2', 'res3', 'res4': backbone maps; 'frame_f', 'cat_f', 'kernel_f': `[N, S1, S2, D]`;
       'mask_f': `[N, Hp/4, Wp/4, D]` mask features}.
    """
    x, _ = preprocess.normalize_images(images, image_size, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std,
                                       size_divisibility=self.size_divisibility)
    feats = self.backbone(x)
    r2, r3, r4 = feats['res2'], feats['res3'], feats['res4']
    cat_f, frame_f = self.Category_branch_pre(r4)
    return dict(res2=r2, res3=r3, res4=r4, frame_f=frame_f, cat_f=cat_f, kernel_f=self.Kernel_branch.pre(r4),
                mask_f=self.Mask_branch(r4, r3, r2))

  def decode(self, feats: dict[str, jax.Array], memory: dict[str, jax.Array], *,
             intermediates: bool = False) -> dict[str, jax.Array]:
    """Reads the memory and predicts categories and kernels (official `VISOLOTest` after the backbone).

    Args:
      feats: `encode`'s output for `B` frames.
      memory: {'frame_f', 'cat_f', 'kernel_f': `[B, M, S1, S2, D]`, 'valid': bool `[B, M]`}.
      intermediates: also return 'tracking' (current -> memory logits), 'mem_cat', 'mem_kernel'.

    Returns:
      {'cat_logits': `[B, S1, S2, C]`, 'kernels': `[B, S1, S2, D]`} (+ intermediates).
    """
    tracking = self.Tracking_branch(feats['frame_f'], memory['frame_f'])
    mem_cat = self.Memory_module(tracking, feats['cat_f'], memory['cat_f'], memory['valid'])
    mem_kernel = self.Memory_module(tracking, feats['kernel_f'], memory['kernel_f'], memory['valid'])
    out = dict(cat_logits=self.Category_branch_post(mem_cat), kernels=self.Kernel_branch.post(mem_kernel))
    if intermediates:
      out.update(tracking=tracking, mem_cat=mem_cat, mem_kernel=mem_kernel)
    return out

  def tracking_probs(self, frame_f_a: jax.Array, frame_f_b: jax.Array) -> jax.Array:
    """`sigmoid(Tracking_branch(a, b))` for `[B, S1, S2, D]` pairs -> `[B, S, S]` (the tracker's re-ID scores)."""
    return jax.nn.sigmoid(self.Tracking_branch(frame_f_a, frame_f_b[:, None])[:, 0])

  def __call__(self, images: jax.Array, image_size: jax.Array, *,
               intermediates: bool = False) -> dict[str, jax.Array]:
    """Training forward on clips (official `getModelResults`): every frame reads memory from the other frames.

    Args:
      images: uint8 or float `[B, T, H, W, 3]` RGB 0..255, T >= 2 (3 officially).
      image_size: int `[B, T, 2]`.
      intermediates: also return every branch's output (keys listed below).

    Returns:
      {'pred_cats': `[B, T, S1, S2, C]` logits, 'pred_kernels': `[B, T, S1, S2, D]`,
       'pred_masks': mask features `[B, T, Hp/4, Wp/4, D]`,
       'pred_tracking': `[B, P, S, S]` logits for the frame pairs (a, b), a < b, in order (0,1), (0,2), (1,2)...}
      and with `intermediates` also 'res2'..'res4', 'frame_f', 'cat_f', 'kernel_f', 'mem_cat', 'mem_kernel'
      (`[B, T, ...]`).
    """
    b, t = images.shape[:2]
    feats = self.encode(images.reshape((b * t,) + images.shape[2:]), image_size.reshape(b * t, 2))
    clip = {k: v.reshape((b, t) + v.shape[1:]) for k, v in feats.items()}
    q = self.Tracking_branch.query(feats['frame_f']).reshape(b, t, -1, clip['frame_f'].shape[-1] // 2)
    r = self.Tracking_branch.reference(feats['frame_f']).reshape(q.shape)
    logits = jnp.einsum('basc,bxrc->baxsr', q, r, precision=_HIGHEST)  # [B, T(query), T(memory), S, S]
    others = [[j for j in range(t) if j != i] for i in range(t)]
    mem_cat, mem_kernel = [], []
    for i in range(t):
      tra = logits[:, i, others[i]]
      mem_cat.append(self.Memory_module(tra, clip['cat_f'][:, i], clip['cat_f'][:, others[i]]))
      mem_kernel.append(self.Memory_module(tra, clip['kernel_f'][:, i], clip['kernel_f'][:, others[i]]))
    mem_cat = jnp.stack(mem_cat, 1)
    mem_kernel = jnp.stack(mem_kernel, 1)
    flat = lambda x: x.reshape((b * t,) + x.shape[2:])
    cats = self.Category_branch_post(flat(mem_cat))
    kernels = self.Kernel_branch.post(flat(mem_kernel))
    pairs = [(i, j) for i in range(t) for j in range(i + 1, t)]
    out = dict(pred_cats=cats.reshape((b, t) + cats.shape[1:]), pred_kernels=kernels.reshape((b, t) + kernels.shape[1:]),
               pred_masks=clip['mask_f'], pred_tracking=jnp.stack([logits[:, i, j] for i, j in pairs], 1))
    if intermediates:
      out.update({k: clip[k] for k in ('res2', 'res3', 'res4', 'frame_f', 'cat_f', 'kernel_f')},
                 mem_cat=mem_cat, mem_kernel=mem_kernel)
    return out
