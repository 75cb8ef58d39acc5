"""mmdet 2.x `FPN` (NHWC): lateral 1x1 convs, nearest top-down fusion, 3x3 output convs, extra stride-2 convs.

IAI / FCOS / CondInst configuration: inputs C2..C5 with `start_level=1` (C3..C5 are used),
`add_extra_convs='on_output'`, `relu_before_extra_convs=True`, `num_outs=5` -> P3..P7 at strides 8..128.

Parameters (mmdet names, each a `ConvModule` without norm or activation, i.e. a conv with bias):
  `lateral_convs.{i}.conv` (1x1, in_channels[start_level + i] -> out), `fpn_convs.{i}.conv` (3x3; the entries
  past the backbone levels are the extra stride-2 convs).
"""

from typing import Any, Sequence

import jax
from flax import nnx

from visjax.models.layers import resize
from visjax.models.layers.conv import ConvNorm

EXTRA_SOURCES = ('on_input', 'on_lateral', 'on_output')


class FPN(nnx.Module):
  """`FPN(in_channels, out_channels, num_outs, start_level, add_extra_convs, relu_before_extra_convs)`.

  `add_extra_convs`: False (max-pool extra levels), or one of `EXTRA_SOURCES` (mmdet's `True` with
  `extra_convs_on_inputs=False` is 'on_output').
  """

  def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, *, start_level: int = 0,
               add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False, dtype: Any = None,
               rngs: nnx.Rngs):
    if add_extra_convs and add_extra_convs not in EXTRA_SOURCES:
      raise ValueError(f'FPN: add_extra_convs must be False or one of {EXTRA_SOURCES}, got {add_extra_convs!r}.')
    used = len(in_channels) - start_level
    if num_outs < used:
      raise ValueError(f'FPN: num_outs {num_outs} < the {used} backbone levels used.')
    self.start_level = start_level
    self.num_outs = num_outs
    self.add_extra_convs = add_extra_convs
    self.relu_before_extra_convs = relu_before_extra_convs
    conv = dict(norm=None, dtype=dtype, rngs=rngs)  # mmdet init_weights: xavier_uniform, zero bias (ConvNorm's)
    self.lateral_convs = nnx.List([ConvNorm(c, out_channels, 1, **conv) for c in in_channels[start_level:]])
    fpn_convs = [ConvNorm(out_channels, out_channels, 3, **conv) for _ in range(used)]
    if add_extra_convs:
      for i in range(num_outs - used):
        cin = in_channels[-1] if i == 0 and add_extra_convs == 'on_input' else out_channels
        fpn_convs.append(ConvNorm(cin, out_channels, 3, stride=2, **conv))
    self.fpn_convs = nnx.List(fpn_convs)

  def __call__(self, inputs: Sequence[jax.Array]) -> list[jax.Array]:
    """`inputs`: `[B, H_i, W_i, in_channels[i]]` finest first -> `num_outs` maps `[B, h_l, w_l, out]`."""
    laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize.resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
    outs = [self.fpn_convs[i](lat) for i, lat in enumerate(laterals)]
    used = len(laterals)
    if not self.add_extra_convs:
      for _ in range(self.num_outs - used):
        outs.append(outs[-1][:, ::2, ::2])  # F.max_pool2d(x, 1, stride=2)
      return outs
    if self.num_outs > used:
      source = {'on_input': inputs[-1], 'on_lateral': laterals[-1], 'on_output': outs[-1]}[self.add_extra_convs]
      outs.append(self.fpn_convs[used](source))
      for i in range(used + 1, self.num_outs):
        prev = jax.nn.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
        outs.append(self.fpn_convs[i](prev))
    return outs
