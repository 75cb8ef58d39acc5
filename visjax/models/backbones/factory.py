"""Backbone selection from `config.model` (shared by every method).

Fields read (defaults in each method's `default_model_config`):
  backbone        'resnet' (detectron2 layout), 'resnet_tv' (torchvision / mmdet layout) or 'swin'
  backbone_depth  ResNet depth (18/34/50/101/152)
  freeze_at       detectron2 FREEZE_AT ('resnet'); mmdet `frozen_stages + 1` ('resnet_tv')
  backbone_norm   'FrozenBN' | 'GN' (detectron2 layout)
  backbone_width  ResNet stem / res2 width (64 in every released model)
  swin            the fields of `visjax.models.backbones.swin.SwinConfig` ('swin')
"""

import dataclasses
from typing import Any, Sequence

from flax import nnx
import jax

from visjax.models.backbones import resnet
from visjax.models.backbones import swin

KINDS = ('resnet', 'resnet_tv', 'swin')


def build_backbone(c: Any, *, out_features: Sequence[str], dtype: Any,
                   rngs: nnx.Rngs) -> tuple[nnx.Module, dict[str, int]]:
  """The backbone of `c` (a `config.model` ConfigDict or a settings dataclass with the fields above) returning
  `out_features`, and the channels of each returned map."""
  kind = getattr(c, 'backbone', 'resnet')
  if kind in ('resnet', 'resnet_tv'):
    width = int(getattr(c, 'backbone_width', 64))
    if kind == 'resnet':
      net = resnet.resnet_d2(c.backbone_depth, out_features=out_features, freeze_at=c.freeze_at,
                             norm=getattr(c, 'backbone_norm', 'FrozenBN'), width=width, dtype=dtype, rngs=rngs)
    else:
      net = resnet.resnet_tv(c.backbone_depth, out_features=out_features, frozen_stages=c.freeze_at - 1,
                             dtype=dtype, rngs=rngs)
    expansion = 4 if resnet.DEPTHS[c.backbone_depth].bottleneck else 1
    return net, {f: width * 2**resnet.STAGE_NAMES.index(f) * expansion for f in net.out_features}
  if kind == 'swin':
    size = c.swin
    if not isinstance(size, swin.SwinConfig):
      fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in size.items()}
      try:
        size = swin.SwinConfig(**fields)
      except TypeError as e:
        known = [f.name for f in dataclasses.fields(swin.SwinConfig)]
        raise ValueError(f'config.model.swin: {e}; fields are {known}.') from e
    net = swin.SwinTransformer(size, out_features=out_features, dtype=dtype, rngs=rngs)
    return net, {f: net.num_features[swin.STAGE_NAMES.index(f)] for f in net.out_features}
  raise ValueError(f'config.model.backbone must be one of {KINDS}, got {kind!r}.')


def apply_backbone(backbone: nnx.Module, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
  """`backbone(x)` with its stochastic depth (Swin's drop path, construction-time rngs) on only when `train`."""
  if any(isinstance(m, nnx.Dropout) for _, m in nnx.iter_modules(backbone)):
    backbone = nnx.view(backbone, only=nnx.Dropout, deterministic=not train)
  return backbone(x)
