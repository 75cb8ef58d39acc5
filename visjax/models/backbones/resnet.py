"""ResNet backbones in the detectron2 and torchvision/mmdet layouts (Flax NNX, NHWC).

Two layouts of the same network, with module paths mirroring the PyTorch attribute paths so checkpoints port
by name (see `visjax.convert.backbone_rules`):

* `layout='detectron2'` (IDOL, VITA, VISOLO): `stem.conv1` (+ `.norm`), stages `res2`..`res5`, blocks with
  `conv1`/`conv2`/`conv3` each carrying its own `.norm` (FrozenBN, eps 1e-5, as every released checkpoint; or
  `norm='GN'`, detectron2's trainable GroupNorm(32), for training from scratch), and `shortcut` (+ `.norm`) on
  the first block of a stage. NNX state paths look like `('res2', 0, 'conv1', 'norm', 'weight')`.
  Stages after the last requested output are not built (detectron2 does the same, so e.g. VISOLO has no res5).
  torchvision-layout weights (ImageNet) load into this layout with `visjax.convert.resnet_tv_to_d2_rules`.
* `layout='torchvision'` (IAI via mmdet `ResNet(style='pytorch', norm_eval=True)`): `conv1`, `bn1`, stages
  `layer1`..`layer4`, blocks with `conv{i}` + `bn{i}` (eval-mode BatchNorm) and `downsample.0`/`downsample.1`.
  All four stages are always built (they are in every checkpoint); stages after the last output are not run.

Conv weights are `kernel` in HWIO (`[kh, kw, in, out]`). Both layouts put the stride in the 3x3 conv unless
`stride_in_1x1=True` (detectron2 `STRIDE_IN_1X1`, mmdet `style='caffe'`).

Freezing (`freeze_at`, detectron2 semantics: 0 nothing, 1 the stem, k >= 2 the stem and res2..res_k; mmdet's
`frozen_stages` equals `freeze_at - 1`) turns the frozen weights into `visjax.models.layers.norms.Frozen`
variables, so `nnx.state(model, nnx.Param)` is exactly the trainable set, and stops gradients at the output of
the last frozen stage. FrozenBN buffers are always `Frozen`; eval-mode BN running statistics are `nnx.BatchStat`.

Input: `x [N, H, W, 3]` float, already normalised by the caller. Output: dict of NHWC features
`res2 [N, H/4, W/4, 256]`, `res3 [.., /8, 512]`, `res4 [.., /16, 1024]`, `res5 [.., /32, 2048]` (bottleneck;
64/128/256/512 for depth 18/34), only those in `out_features`. Spatial sizes follow torch's conv arithmetic for
any input size (`ceil` at each stride-2 step).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from visjax.models.layers import norms

STAGE_NAMES = ('res2', 'res3', 'res4', 'res5')
LAYOUTS = ('detectron2', 'torchvision')
D2_NORMS = ('FrozenBN', 'GN')  # detectron2 MODEL.RESNETS.NORM values supported


@dataclasses.dataclass(frozen=True)
class _DepthSpec:
  blocks: tuple[int, int, int, int]
  bottleneck: bool


DEPTHS = {
    18: _DepthSpec((2, 2, 2, 2), False),
    34: _DepthSpec((3, 4, 6, 3), False),
    50: _DepthSpec((3, 4, 6, 3), True),
    101: _DepthSpec((3, 4, 23, 3), True),
    152: _DepthSpec((3, 8, 36, 3), True),
}

# Kaiming normal, fan_out, ReLU gain (detectron2 `c2_msra_fill`, torchvision's ResNet init).
_conv_init = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Conv2d(nnx.Module):
  """A 2-D convolution with an optional `norm` child, as detectron2's `layers.Conv2d`.

  Variables: `kernel [kh, kw, in, out]` (HWIO), `bias [out]` if `use_bias`. `norm` (if given) is applied to
  the conv output. Padding is symmetric (`padding` pixels on every side), as torch's `Conv2d(padding=p)`.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               padding: int = 0, use_bias: bool = False, norm: nnx.Module | None = None,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    self.kernel = nnx.Param(_conv_init(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels)))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None
    self.norm = norm

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [N, H, W, in]` -> `[N, H', W', out]`."""
    dtype = self.dtype or x.dtype
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), self.kernel.get_value().astype(dtype), (self.stride, self.stride),
        [(self.padding, self.padding)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.bias is not None:
      y = y + self.bias.get_value().astype(dtype)
    if self.norm is not None:
      y = self.norm(y)
    return y


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch `max_pool2d(kernel_size=3, stride=2, padding=1)` on NHWC (padding acts as -inf)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def d2_norm(norm: str, channels: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """detectron2 `get_norm(MODEL.RESNETS.NORM, channels)`: 'FrozenBN' (fixed affine, the pretrained-weights
  setting) or 'GN' (trainable GroupNorm(32), for training from scratch)."""
  if norm == 'FrozenBN':
    return norms.FrozenBatchNorm2d(channels)
  if norm == 'GN':
    return norms.group_norm(channels, rngs=rngs)
  raise ValueError(f"detectron2 ResNet norm must be one of {D2_NORMS}, got {norm!r}")


class Block(nnx.Module):
  """A residual block (bottleneck 1x1-3x3-1x1 or basic 3x3-3x3) in either layout.

  detectron2 attributes: `conv{i}` (with `.norm`), `shortcut` (with `.norm`, or None).
  torchvision attributes: `conv{i}`, `bn{i}`, `downsample` (`nnx.List([conv, bn])`, or None).
  """

  def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int,
               bottleneck: bool, layout: str, stride_in_1x1: bool, norm: str, dtype: jnp.dtype | None,
               rngs: nnx.Rngs):
    self.layout = layout
    d2 = layout == 'detectron2'

    def conv(cin, cout, k, s):
      norm_module = d2_norm(norm, cout, rngs=rngs) if d2 else None
      return Conv2d(cin, cout, k, stride=s, padding=k // 2, norm=norm_module, dtype=dtype, rngs=rngs)

    if bottleneck:
      s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
      specs = [(in_channels, bottleneck_channels, 1, s1), (bottleneck_channels, bottleneck_channels, 3, s3),
               (bottleneck_channels, out_channels, 1, 1)]
    else:
      specs = [(in_channels, out_channels, 3, stride), (out_channels, out_channels, 3, 1)]
    self.num_convs = len(specs)
    for i, (cin, cout, k, s) in enumerate(specs, start=1):
      setattr(self, f'conv{i}', conv(cin, cout, k, s))
      if not d2:
        setattr(self, f'bn{i}', norms.BatchNorm2d(cout))

    needs_projection = in_channels != out_channels or stride != 1
    if d2:
      self.shortcut = conv(in_channels, out_channels, 1, stride) if needs_projection else None
    else:
      self.downsample = (nnx.List([conv(in_channels, out_channels, 1, stride), norms.BatchNorm2d(out_channels)])
                         if needs_projection else None)

  def _conv_norm(self, i: int, x: jax.Array) -> jax.Array:
    x = getattr(self, f'conv{i}')(x)
    return x if self.layout == 'detectron2' else getattr(self, f'bn{i}')(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [N, H, W, in]` -> `[N, H/stride, W/stride, out]`."""
    y = x
    for i in range(1, self.num_convs + 1):
      y = self._conv_norm(i, y)
      if i < self.num_convs:
        y = jax.nn.relu(y)
    if self.layout == 'detectron2':
      identity = x if self.shortcut is None else self.shortcut(x)
    else:
      identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return jax.nn.relu(y + identity)


class Stem(nnx.Module):
  """detectron2 `BasicStem`: `conv1` (7x7/2, pad 3, no bias, `.norm`) -> ReLU -> 3x3/2 max-pool."""

  def __init__(self, out_channels: int = 64, *, norm: str = 'FrozenBN', dtype: jnp.dtype | None = None,
               rngs: nnx.Rngs):
    self.conv1 = Conv2d(3, out_channels, 7, stride=2, padding=3, norm=d2_norm(norm, out_channels, rngs=rngs),
                        dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [N, H, W, 3]` -> `[N, H/4, W/4, 64]`."""
    return max_pool_3x3_s2(jax.nn.relu(self.conv1(x)))


class ResNet(nnx.Module):
  """ResNet-18/34/50/101/152 in the detectron2 or torchvision/mmdet layout (see the module docstring)."""

  def __init__(self, depth: int = 50, *, layout: str = 'detectron2',
               out_features: Sequence[str] = STAGE_NAMES, freeze_at: int = 0, stride_in_1x1: bool = False,
               norm: str = 'FrozenBN', width: int = 64, dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      depth: 18, 34, 50, 101 or 152.
      layout: 'detectron2' or 'torchvision' (module names; see the module docstring).
      out_features: subset of ('res2', 'res3', 'res4', 'res5') returned by `__call__`.
      freeze_at: detectron2 `FREEZE_AT` (0 none, 1 stem, k stem + res2..res_k); mmdet `frozen_stages + 1`.
      stride_in_1x1: put the stride in the first 1x1 conv (MSRA/caffe style) instead of the 3x3.
      norm: detectron2 layout only: 'FrozenBN' (default, as the released checkpoints) or 'GN' (GroupNorm(32)).
      width: stem channels and res2 bottleneck width (detectron2 STEM_OUT_CHANNELS = WIDTH_PER_GROUP = 64 in every
        released model); stage i is `width * 2**i` wide, so 32 gives a half-width network (4x fewer FLOPs).
      dtype: compute dtype of the convolutions (params stay float32); None keeps the input dtype.
      rngs: initialisation RNGs (random init; load real weights with `visjax.convert`).
    """
    if depth not in DEPTHS:
      raise ValueError(f'ResNet depth must be one of {sorted(DEPTHS)}, got {depth}')
    if layout not in LAYOUTS:
      raise ValueError(f'ResNet layout must be one of {LAYOUTS}, got {layout!r}')
    unknown = [f for f in out_features if f not in STAGE_NAMES]
    if unknown or not out_features:
      raise ValueError(f'out_features must be a non-empty subset of {STAGE_NAMES}, got {tuple(out_features)}')
    if width < 1 or (norm == 'GN' and width % 32):
      raise ValueError(f'ResNet width must be >= 1 (a multiple of 32 with GroupNorm(32)), got {width}')
    if norm not in D2_NORMS or (layout != 'detectron2' and norm != 'FrozenBN'):
      raise ValueError(f"ResNet norm must be one of {D2_NORMS} (detectron2 layout only), got {norm!r} with "
                       f"layout {layout!r}")
    if not 0 <= freeze_at <= 5:
      raise ValueError(f'freeze_at must be in [0, 5], got {freeze_at}')
    spec = DEPTHS[depth]
    self.layout = layout
    self.out_features = tuple(f for f in STAGE_NAMES if f in out_features)
    self.freeze_at = freeze_at
    d2 = layout == 'detectron2'
    num_stages = max(STAGE_NAMES.index(f) for f in out_features) + 1 if d2 else 4
    if d2:
      self.stage_names = STAGE_NAMES[:num_stages]
      self.stem = Stem(width, norm=norm, dtype=dtype, rngs=rngs)
    else:
      self.stage_names = tuple(f'layer{i + 1}' for i in range(num_stages))
      self.conv1 = Conv2d(3, width, 7, stride=2, padding=3, dtype=dtype, rngs=rngs)
      self.bn1 = norms.BatchNorm2d(width)

    expansion = 4 if spec.bottleneck else 1
    in_channels = width
    for i, name in enumerate(self.stage_names):
      stage_width = width * 2**i
      out_channels = stage_width * expansion
      blocks = []
      for j in range(spec.blocks[i]):
        blocks.append(Block(in_channels, out_channels, bottleneck_channels=stage_width,
                            stride=(2 if i > 0 and j == 0 else 1), bottleneck=spec.bottleneck, layout=layout,
                            stride_in_1x1=stride_in_1x1, norm=norm, dtype=dtype, rngs=rngs))
        in_channels = out_channels
      setattr(self, name, nnx.List(blocks))

    if freeze_at >= 1:
      for module in ([self.stem] if d2 else [self.conv1, self.bn1]):
        norms.freeze(module)
    for name in self.stage_names[:max(freeze_at - 1, 0)]:
      norms.freeze(getattr(self, name))

  def _stem(self, x: jax.Array) -> jax.Array:
    if self.layout == 'detectron2':
      return self.stem(x)
    return max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """`x [N, H, W, 3]` (normalised) -> {name: `[N, h, w, C]`} for the names in `out_features`."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'ResNet expects NHWC input [N, H, W, 3], got shape {x.shape}')
    x = self._stem(x)
    if self.freeze_at == 1:
      x = jax.lax.stop_gradient(x)
    outputs = {}
    last = STAGE_NAMES.index(self.out_features[-1])
    for i, name in enumerate(self.stage_names[:last + 1]):
      for block in getattr(self, name):
        x = block(x)
      if self.freeze_at == i + 2:
        x = jax.lax.stop_gradient(x)
      if STAGE_NAMES[i] in self.out_features:
        outputs[STAGE_NAMES[i]] = x
    return outputs


def resnet_d2(depth: int = 50, *, out_features: Sequence[str] = STAGE_NAMES, freeze_at: int = 2,
              stride_in_1x1: bool = False, norm: str = 'FrozenBN', width: int = 64,
              dtype: jnp.dtype | None = None, rngs: nnx.Rngs) -> ResNet:
  """detectron2 `build_resnet_backbone` (defaults: NORM FrozenBN, width 64, FREEZE_AT 2, STRIDE_IN_1X1 False)."""
  return ResNet(depth, layout='detectron2', out_features=out_features, freeze_at=freeze_at,
                stride_in_1x1=stride_in_1x1, norm=norm, width=width, dtype=dtype, rngs=rngs)


def resnet_tv(depth: int = 50, *, out_features: Sequence[str] = STAGE_NAMES, frozen_stages: int = 1,
              stride_in_1x1: bool = False, dtype: jnp.dtype | None = None, rngs: nnx.Rngs) -> ResNet:
  """torchvision / mmdet `ResNet(style='pytorch', norm_eval=True, frozen_stages=...)` (-1 freezes nothing)."""
  if frozen_stages < -1:
    raise ValueError(f'frozen_stages must be >= -1, got {frozen_stages}')
  return ResNet(depth, layout='torchvision', out_features=out_features, freeze_at=frozen_stages + 1,
                stride_in_1x1=stride_in_1x1, dtype=dtype, rngs=rngs)
