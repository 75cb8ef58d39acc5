"""`IAICondInstHead` (zfonemore/IAI `mmdet/models/dense_heads/iai_condinst_head.py`), NHWC.

FCOS + CondInst with an identity branch, on P3..P7 (shared weights over levels):
  * towers of 3x3 conv + GN(32) + ReLU: `cls_convs` (stacked_convs), `reg_convs` (stacked_convs), `id_convs` (1);
  * 3x3 output convs: `conv_cls` (C) and `conv_id` (max_obj) on their towers, `conv_reg` (4), `conv_centerness` (1)
    and `controller` (169 dynamic mask-head parameters) on the regression tower;
  * boxes: `relu(scales[l] * conv_reg) * stride_l` (ltrb distances in input pixels, `norm_on_bbox`);
  * mask branch: `mask_refine[j]` (3x3 conv without bias + BatchNorm + ReLU) on P3, P4, P5; P4 and P5 are
    `aligned_bilinear`-upsampled to P3 and summed; `mask_head`: `stacked_convs` x (3x3 conv + BN + ReLU), then a
    1x1 conv to 8 channels at stride 8. BatchNorm runs in training mode (batch statistics) when `train`.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visjax.models.heads import fcos
from visjax.models.heads.dynamic_mask import dynamic_param_sizes
from visjax.models.layers import resize
from visjax.models.layers.conv import ConvNorm
from visjax.models.layers.mlp import torch_default_bias_init, torch_default_kernel_init

STRIDES = (8, 16, 32, 64, 128)


def _out_conv(cin: int, cout: int, bias: float, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                  kernel_init=nnx.initializers.normal(0.01), bias_init=nnx.initializers.constant(bias), rngs=rngs)


class IAIHead(nnx.Module):
  """The head; `__call__` returns every level's outputs flattened and concatenated (level-major, row-major)."""

  def __init__(self, *, num_classes: int, max_obj_num: int, in_channels: int = 256, feat_channels: int = 256,
               stacked_convs: int = 4, strides: Sequence[int] = STRIDES, mask_channels: int = 128,
               mask_out_channels: int = 8, dtype: Any = None, rngs: nnx.Rngs):
    self.strides = tuple(strides)
    self.num_params = sum(sum(p) for p in dynamic_param_sizes(mask_out_channels))
    tower = dict(dtype=dtype, rngs=rngs)
    self.cls_convs = fcos.conv_tower(in_channels, feat_channels, stacked_convs, **tower)
    self.reg_convs = fcos.conv_tower(in_channels, feat_channels, stacked_convs, **tower)
    self.id_convs = fcos.conv_tower(in_channels, feat_channels, 1, **tower)
    prior = float(-np.log((1 - 0.01) / 0.01))  # mmcv bias_init_with_prob(0.01)
    self.conv_cls = _out_conv(feat_channels, num_classes, prior, dtype, rngs)
    self.conv_id = _out_conv(feat_channels, max_obj_num, prior, dtype, rngs)
    self.conv_reg = _out_conv(feat_channels, 4, 0., dtype, rngs)
    self.conv_centerness = _out_conv(feat_channels, 1, 0., dtype, rngs)
    self.controller = _out_conv(feat_channels, self.num_params, 0., dtype, rngs)
    self.scales = nnx.List([fcos.Scale(1.) for _ in self.strides])
    # The official kaiming_init is called on containers (a no-op): torch's default init stays.
    bn_conv = dict(norm='BN', activation='relu', use_bias=False, kernel_init=torch_default_kernel_init, dtype=dtype,
                   rngs=rngs)
    self.mask_refine = nnx.List([ConvNorm(in_channels, mask_channels, 3, **bn_conv) for _ in range(3)])
    self.mask_head = nnx.List(
        [ConvNorm(mask_channels, mask_channels, 3, **bn_conv) for _ in range(stacked_convs)] +
        [nnx.Conv(mask_channels, mask_out_channels, (1, 1), dtype=dtype, kernel_init=torch_default_kernel_init,
                  bias_init=torch_default_bias_init(mask_channels), rngs=rngs)])

  def mask_branch(self, feats: Sequence[jax.Array], *, train: bool = False) -> jax.Array:
    """P3..P5 `[B, h_l, w_l, F]` -> mask features `[B, h_0, w_0, 8]` at stride 8."""
    mask_feat = self.mask_refine[0](feats[0], train=train)
    for j in (1, 2):
      x = self.mask_refine[j](feats[j], train=train)
      factor = mask_feat.shape[1] // x.shape[1]
      if mask_feat.shape[1] != factor * x.shape[1] or mask_feat.shape[2] != factor * x.shape[2]:
        raise ValueError(f'IAIHead: P{3 + j} {x.shape[1:3]} is not an integer downscale of P3 '
                         f'{mask_feat.shape[1:3]}.')
      mask_feat = mask_feat + resize.aligned_bilinear(x, factor)
    for block in self.mask_head[:-1]:
      mask_feat = block(mask_feat, train=train)
    return self.mask_head[-1](mask_feat)

  def __call__(self, feats: Sequence[jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    """`feats`: P3..P7 `[B, h_l, w_l, F]`.

    Returns:
      dict with P = sum_l h_l w_l points: `cls_logits [B, P, C]`, `id_logits [B, P, max_obj]`, `bbox_ltrb [B, P, 4]`
      (float32, pixels), `centerness_logits [B, P]`, `kernels [B, P, 169]`, `mask_feat [B, h_0, w_0, 8]`.
    """
    if len(feats) != len(self.strides):
      raise ValueError(f'IAIHead: expected {len(self.strides)} levels, got {len(feats)}.')
    outs = {k: [] for k in ('cls_logits', 'id_logits', 'bbox_ltrb', 'centerness_logits', 'kernels')}
    for x, scale, stride in zip(feats, self.scales, self.strides):
      b = x.shape[0]
      cls_feat = fcos.run_tower(self.cls_convs, x)
      id_feat = fcos.run_tower(self.id_convs, x)
      reg_feat = fcos.run_tower(self.reg_convs, x)
      flat = lambda y: y.reshape(b, -1, y.shape[-1])
      outs['cls_logits'].append(flat(self.conv_cls(cls_feat)))
      outs['id_logits'].append(flat(self.conv_id(id_feat)))
      outs['bbox_ltrb'].append(flat(jax.nn.relu(scale(self.conv_reg(reg_feat)).astype(jnp.float32)) * stride))
      outs['centerness_logits'].append(flat(self.conv_centerness(reg_feat))[..., 0])
      outs['kernels'].append(flat(self.controller(reg_feat)))
    out = {k: jnp.concatenate(v, axis=1) for k, v in outs.items()}
    out['mask_feat'] = self.mask_branch(feats[:3], train=train)
    return out
