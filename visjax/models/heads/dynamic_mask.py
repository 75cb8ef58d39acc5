"""CondInst dynamic mask head as used by IDOL (and, with normalised coordinates, by IAI), NHWC.

Pieces:
  * `MaskHeadSmallConv` (IDOL's `mask_head`): fuses three feature maps (strides 8/16/32) top-down into an
    8-channel map at stride 8: lay3 + ReLU on stride 32; nearest-up + add stride 16, lay4 + ReLU; nearest-up + add
    stride 8, dcn (a plain 3x3) + ReLU; lay1 + ReLU; lay2 + ReLU.
  * `parse_dynamic_params`: splits the controller output (169 values for 10->8->8->1) into per-instance 1x1 conv
    weights `[8, 10]`, `[8, 8]`, `[1, 8]` (row-major out x in, as the official `reshape(num_insts * out, -1, 1, 1)`)
    and biases `[8]`, `[8]`, `[1]`.
  * `dynamic_mask_logits`: relative coordinates `(ref_xy - location) / rel_coord_scale` (IDOL: scale 1, reference
    in pixels, location = stride-8 position + 4), concatenated before the mask features as `[rel_x, rel_y, f...]`,
    then the per-instance 1x1 convs (einsum over all instances at once), then `aligned_bilinear` to stride 4.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from visjax.models.layers import resize
from visjax.models.layers.mlp import MLP


def dynamic_param_sizes(in_channels: int = 8, channels: int = 8, num_layers: int = 3,
                        rel_coord: bool = True) -> tuple[list[int], list[int]]:
  """`(weight_nums, bias_nums)` of the dynamic 1x1 conv stack (IDOL: `[80, 64, 8]`, `[8, 8, 1]`)."""
  weight_nums, bias_nums = [], []
  first_in = in_channels + (2 if rel_coord else 0)
  for layer in range(num_layers):
    if layer == 0:
      weight_nums.append(first_in * channels)
      bias_nums.append(channels)
    elif layer == num_layers - 1:
      weight_nums.append(channels)
      bias_nums.append(1)
    else:
      weight_nums.append(channels * channels)
      bias_nums.append(channels)
  return weight_nums, bias_nums


def parse_dynamic_params(params: jax.Array, weight_nums: Sequence[int], bias_nums: Sequence[int]
                         ) -> tuple[list[jax.Array], list[jax.Array]]:
  """Splits `params [..., sum(weight_nums) + sum(bias_nums)]` into per-layer weights and biases.

  Returns:
    weights: list of `[..., out_l, in_l]`; biases: list of `[..., out_l]`.
  """
  total = sum(weight_nums) + sum(bias_nums)
  if params.shape[-1] != total:
    raise ValueError(f'parse_dynamic_params: expected {total} params per instance, got {params.shape[-1]}.')
  weights, biases, start = [], [], 0
  for wn in weight_nums:
    weights.append(params[..., start:start + wn])
    start += wn
  for bn in bias_nums:
    biases.append(params[..., start:start + bn])
    start += bn
  weights = [w.reshape(*w.shape[:-1], b.shape[-1], -1) for w, b in zip(weights, biases)]
  return weights, biases


def compute_locations(height: int, width: int, stride: int) -> jax.Array:
  """Pixel positions `(x, y)` of a stride-`stride` map: `index * stride + stride // 2`, float32 `[H, W, 2]`."""
  ys = jnp.arange(height, dtype=jnp.float32) * stride
  xs = jnp.arange(width, dtype=jnp.float32) * stride
  grid = jnp.stack(jnp.meshgrid(xs, ys, indexing='xy'), axis=-1)
  return grid + float(stride // 2)


def dynamic_mask_logits(mask_feats: jax.Array, reference_points: jax.Array, params: jax.Array, *,
                        mask_feat_stride: int = 8, mask_out_stride: int = 4, rel_coord: bool = True,
                        rel_coord_scale: float | jax.Array = 1., dynamic_channels: int = 8,
                        num_dynamic_layers: int = 3) -> jax.Array:
  """Per-instance dynamic 1x1 convs over the shared mask features.

  Args:
    mask_feats: `[B, H, W, C]` mask-branch features at `mask_feat_stride`.
    reference_points: `[B, Q, 2]` instance centres `(x, y)` in input pixels.
    params: `[B, Q, P]` controller outputs (P = 169 for C = 8, 10->8->8->1).
    mask_feat_stride: stride of `mask_feats`.
    mask_out_stride: stride of the returned logits (upsampled with `aligned_bilinear`).
    rel_coord: prepend relative coordinates `(rel_x, rel_y)` to the features.
    rel_coord_scale: divisor of the relative coordinates (IDOL 1, i.e. not normalised); scalar or `[B, Q]`.
    dynamic_channels: hidden channels of the dynamic convs.
    num_dynamic_layers: number of dynamic 1x1 convs.

  Returns:
    mask logits `[B, Q, H * f, W * f]` with `f = mask_feat_stride // mask_out_stride`.
  """
  b, h, w, c = mask_feats.shape
  if mask_feat_stride % mask_out_stride:
    raise ValueError(f'dynamic_mask_logits: mask_feat_stride {mask_feat_stride} must be a multiple of '
                     f'mask_out_stride {mask_out_stride}.')
  weight_nums, bias_nums = dynamic_param_sizes(c, dynamic_channels, num_dynamic_layers, rel_coord)
  weights, biases = parse_dynamic_params(params, weight_nums, bias_nums)
  hp = jax.lax.Precision.HIGHEST
  feats = mask_feats.reshape(b, h * w, c)
  w0, x = weights[0], None
  if rel_coord:
    locations = compute_locations(h, w, mask_feat_stride).reshape(h * w, 2)
    rel = reference_points.astype(jnp.float32)[:, :, None, :] - locations[None, None]  # [B, Q, HW, 2]
    scale = jnp.asarray(rel_coord_scale, jnp.float32)
    rel = rel / (scale[..., None, None] if scale.ndim else scale)
    x = jnp.einsum('bqoi,bqpi->bqpo', w0[..., :2], rel.astype(params.dtype), precision=hp)
    w0 = w0[..., 2:]
  # The features are shared by all instances of an image: one einsum, no per-instance copies of the input.
  feat_term = jnp.einsum('bqoi,bpi->bqpo', w0, feats.astype(params.dtype), precision=hp)
  x = feat_term if x is None else x + feat_term
  x = x + biases[0][:, :, None, :]
  for layer in range(1, len(weights)):
    x = jax.nn.relu(x)
    x = jnp.einsum('bqoi,bqpi->bqpo', weights[layer], x, precision=hp) + biases[layer][:, :, None, :]
  q = params.shape[1]
  logits = x.reshape(b, q, h, w)
  factor = mask_feat_stride // mask_out_stride
  # aligned_bilinear works on [B, H, W, C]: treat the instances as channels.
  logits = resize.aligned_bilinear(jnp.moveaxis(logits, 1, -1), factor)
  return jnp.moveaxis(logits, -1, 1)


def controller(hidden_dim: int, num_params: int, *, dtype: Any = None, rngs: nnx.Rngs) -> MLP:
  """The CondInst controller MLP (`hidden -> hidden -> hidden -> num_params`), xavier-uniform init, zero bias."""
  return MLP(hidden_dim, hidden_dim, num_params, 3, dtype=dtype, rngs=rngs,
             kernel_init=nnx.initializers.xavier_uniform(), bias_init=nnx.initializers.zeros_init())


def _conv3x3(in_channels: int, out_channels: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
  # Official init: kaiming_uniform(a=1) weights, zero bias.
  return nnx.Conv(in_channels, out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                  kernel_init=nnx.initializers.variance_scaling(1., 'fan_in', 'uniform'),
                  bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class MaskHeadSmallConv(nnx.Module):
  """IDOL's `mask_head`: top-down fusion of encoder maps into `out_channels` at the finest stride.

  Parameters: `lay1` (dim -> dim/4), `lay2` (dim/4 -> out_channels), `lay3`, `lay4`, `dcn` (dim -> dim), all 3x3.
  The official head hard-wires `out_channels = dim // 32` (8 at d_model 256); small models may ask for more.
  """

  def __init__(self, dim: int = 256, out_channels: int | None = None, *, dtype: Any = None, rngs: nnx.Rngs):
    if dim % 32:
      raise ValueError(f'MaskHeadSmallConv: dim must be a multiple of 32, got {dim}.')
    out_channels = dim // 32 if out_channels is None else out_channels
    if out_channels < 1:
      raise ValueError(f'MaskHeadSmallConv: out_channels must be >= 1, got {out_channels}.')
    self.lay1 = _conv3x3(dim, dim // 4, dtype, rngs)
    self.lay2 = _conv3x3(dim // 4, out_channels, dtype, rngs)
    self.lay3 = _conv3x3(dim, dim, dtype, rngs)
    self.lay4 = _conv3x3(dim, dim, dtype, rngs)
    self.dcn = _conv3x3(dim, dim, dtype, rngs)

  def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
    """`feats`: `[B, H_l, W_l, dim]` maps from finest (stride 8) to coarsest (stride 32) -> `[B, H_0, W_0, out]`."""
    if len(feats) != 3:
      raise ValueError(f'MaskHeadSmallConv: expected 3 feature maps (strides 8, 16, 32), got {len(feats)}.')
    x = jax.nn.relu(self.lay3(feats[2]))
    x = feats[1] + resize.resize_nearest(x, feats[1].shape[1:3])
    x = jax.nn.relu(self.lay4(x))
    x = feats[0] + resize.resize_nearest(x, feats[0].shape[1:3])
    x = jax.nn.relu(self.dcn(x))
    x = jax.nn.relu(self.lay1(x))
    return jax.nn.relu(self.lay2(x))
