"""Pallas TPU (Mosaic) MSDA kernels: one-hot matmuls over value tiles, with a custom VJP.

STATUS: no TPU was available while this was written. The kernels are tested in TPU interpret mode
(`pltpu.InterpretParams`, on CPU) against the XLA path, forward and gradients, and lowered to Mosaic MLIR with
`jax.export(..., platforms=['tpu'])` on CPU; Mosaic's own compilation (layout inference, which is where
lane-slicing and broadcast patterns can still be rejected) happens only on a TPU and has never run.
`implementation=None` therefore keeps dispatching XLA on TPU: this kernel is opt-in
(`implementation='pallas_tpu'`) until it has been compiled and measured on a TPU.

Why one-hot matmuls: Mosaic TPU lowers gathers only along the two minor-most dimensions of an in-VMEM block
(take_along_axis style; several known lowering failures, jax_anchors.md B5), so the per-sample row gathers of the
GPU kernel do not map onto the TensorCore. Instead, for a block of `block_q` queries of one head and a tile of
`block_s` value rows, the kernel builds the dense sampling matrix
  A[q, s] = sum over (sample k, corner c) of coef[q, k, c] * [row[q, k, c] == s]     (VPU compares, [block_q,
  block_s])
and accumulates `A @ value_tile` on the MXU in float32. Backward reuses A: the value gradient is `A^T @ g`
(a second kernel with the query blocks as the reduction axis) and the corner-weight gradient is
`sum_s [row == s] * (g @ value_tile^T)[q, s]`. Rows and corner weights (attention weight x bilinear weight, 0 for
out-of-map corners) are computed in XLA by the same `common.bilinear_corners` as the GPU kernel, so gradients of
`sampling_locations` and `attention_weights` follow by XLA autodiff of that elementwise code.

Cost is O(Q x S) per head, not O(Q x L x P): this is only reasonable because tiles that no sample of the query
block touches are skipped (per-block row ranges arrive by scalar prefetch). That helps the decoder (few queries)
and spatially coherent query blocks, but the encoder (Q = S, every query touching all levels) stays quadratic;
a SparseCore row-gather kernel (`pltpu.sync_copy(value.at[rows], ...)`) is the natural next step on TPUs that have
one.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.msda import common


class _Config(NamedTuple):
  block_q: int
  block_s: int
  interpret: bool


def _sampling_matrix(rows_ref, coef, tile_start: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """`A [block_q, block_s]` with `A[q, s] = sum_c coef[q, c] * [rows[q, c] == tile_start + s]`."""
  cols = jax.lax.broadcasted_iota(jnp.int32, shape, 1) + tile_start
  a = jnp.zeros(shape, jnp.float32)
  for c in range(rows_ref.shape[1]):
    a += jnp.where(cols == rows_ref[:, c:c + 1], coef[:, c:c + 1], 0.0)
  return a


def _touches(lo_ref, hi_ref, b, m, qi, tile_start, block_s):
  """Whether any valid sample of query block `qi` has a row in `[tile_start, tile_start + block_s)`."""
  return (lo_ref[b, m, qi] < tile_start + block_s) & (hi_ref[b, m, qi] >= tile_start)


def _forward_kernel(lo_ref, hi_ref, rows_ref, coef_ref, value_ref, out_ref, *, cfg: _Config):
  b, m, qi, t = (pl.program_id(i) for i in range(4))

  @pl.when(t == 0)
  def _():
    out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)

  @pl.when(_touches(lo_ref, hi_ref, b, m, qi, t * cfg.block_s, cfg.block_s))
  def _():
    a = _sampling_matrix(rows_ref, coef_ref[...], t * cfg.block_s, (cfg.block_q, cfg.block_s))
    out_ref[...] += jnp.dot(a, value_ref[...].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)


def _coef_grad_kernel(lo_ref, hi_ref, rows_ref, g_ref, value_ref, gcoef_ref, *, cfg: _Config):
  """`gcoef[q, c] = sum_s [rows[q, c] == s] * (g @ value^T)[q, s]`, accumulated over value tiles."""
  b, m, qi, t = (pl.program_id(i) for i in range(4))

  @pl.when(t == 0)
  def _():
    gcoef_ref[...] = jnp.zeros(gcoef_ref.shape, gcoef_ref.dtype)

  @pl.when(_touches(lo_ref, hi_ref, b, m, qi, t * cfg.block_s, cfg.block_s))
  def _():
    dots = jax.lax.dot_general(g_ref[...], value_ref[...].astype(jnp.float32), (((1,), (1,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    cols = jax.lax.broadcasted_iota(jnp.int32, dots.shape, 1) + t * cfg.block_s
    grads = [jnp.sum(jnp.where(cols == rows_ref[:, c:c + 1], dots, 0.0), axis=1, keepdims=True)
             for c in range(rows_ref.shape[1])]
    gcoef_ref[...] += jnp.concatenate(grads, axis=1)


def _value_grad_kernel(lo_ref, hi_ref, rows_ref, coef_ref, g_ref, gvalue_ref, *, cfg: _Config):
  """`gvalue_tile = sum over query blocks of A^T @ g`."""
  b, m, t, qi = (pl.program_id(i) for i in range(4))

  @pl.when(qi == 0)
  def _():
    gvalue_ref[...] = jnp.zeros(gvalue_ref.shape, gvalue_ref.dtype)

  @pl.when(_touches(lo_ref, hi_ref, b, m, qi, t * cfg.block_s, cfg.block_s))
  def _():
    a = _sampling_matrix(rows_ref, coef_ref[...], t * cfg.block_s, (cfg.block_q, cfg.block_s))
    gvalue_ref[...] += jax.lax.dot_general(a, g_ref[...], (((0,), (0,)), ((), ())),
                                           precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _call(kernel, cfg: _Config, grid, in_specs, out_spec, out_shape, *args):
  """pallas_call with the two row-range arrays as scalar prefetch; the last grid axis is the reduction."""
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg),
      out_shape=out_shape,
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2, grid=grid, in_specs=in_specs,
                                             out_specs=out_spec),
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel', 'parallel', 'parallel', 'arbitrary')),
      interpret=pltpu.InterpretParams() if cfg.interpret else False,
  )(*args)


def _query_spec(cfg, width, qi_axis):
  """Blocks `[block_q, width]` of a `[B, M, Qp, width]` array; the query block index is grid axis `qi_axis`."""
  return pl.BlockSpec((None, None, cfg.block_q, width), lambda *g_and_refs: (g_and_refs[0], g_and_refs[1],
                                                                            g_and_refs[qi_axis], 0))


def _value_spec(cfg, d, t_axis):
  return pl.BlockSpec((None, None, cfg.block_s, d), lambda *g_and_refs: (g_and_refs[0], g_and_refs[1],
                                                                        g_and_refs[t_axis], 0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _msda_core(cfg: _Config, lo, hi, rows, coef, value):
  """`[B, M, Qp, D]` float32 = sum_c coef * value[rows]; value `[B, M, Sp, D]`, rows/coef `[B, M, Qp, C]`."""
  return _forward(cfg, lo, hi, rows, coef, value)


def _forward(cfg, lo, hi, rows, coef, value):
  b, m, qp, c = rows.shape
  sp, d = value.shape[2:]
  grid = (b, m, qp // cfg.block_q, sp // cfg.block_s)
  return _call(_forward_kernel, cfg, grid, [_query_spec(cfg, c, 2), _query_spec(cfg, c, 2), _value_spec(cfg, d, 3)],
               _query_spec(cfg, d, 2), jax.ShapeDtypeStruct((b, m, qp, d), jnp.float32), lo, hi, rows, coef, value)


def _msda_core_fwd(cfg, lo, hi, rows, coef, value):
  return _forward(cfg, lo, hi, rows, coef, value), (lo, hi, rows, coef, value)


def _msda_core_bwd(cfg, residuals, g):
  lo, hi, rows, coef, value = residuals
  b, m, qp, c = rows.shape
  sp, d = value.shape[2:]
  nq, nt = qp // cfg.block_q, sp // cfg.block_s
  gcoef = _call(_coef_grad_kernel, cfg, (b, m, nq, nt),
                [_query_spec(cfg, c, 2), _query_spec(cfg, d, 2), _value_spec(cfg, d, 3)], _query_spec(cfg, c, 2),
                jax.ShapeDtypeStruct(rows.shape, jnp.float32), lo, hi, rows, g, value)
  gvalue = _call(_value_grad_kernel, cfg, (b, m, nt, nq),
                 [_query_spec(cfg, c, 3), _query_spec(cfg, c, 3), _query_spec(cfg, d, 3)], _value_spec(cfg, d, 2),
                 jax.ShapeDtypeStruct(value.shape, jnp.float32), lo, hi, rows, coef, g)
  return None, None, None, gcoef.astype(coef.dtype), gvalue.astype(value.dtype)


_msda_core.defvjp(_msda_core_fwd, _msda_core_bwd)


def ms_deform_attn_tpu(value: jax.Array, spatial_shapes: common.SpatialShapes, sampling_locations: jax.Array,
                       attention_weights: jax.Array, *, interpret: bool = False, block_q: int = 128,
                       block_s: int = 512) -> jax.Array:
  """Multi-scale deformable attention with the Pallas TPU kernels (see the module docstring).

  Args:
    value: `[B, S, M, D]` float32 or bfloat16 (float64, under x64, is read as float32).
    spatial_shapes: static `((H_l, W_l), ...)`.
    sampling_locations: `[B, Q, M, L, P, 2]`.
    attention_weights: `[B, Q, M, L, P]`.
    interpret: run in TPU interpret mode (CPU tests).
    block_q: queries per block (a multiple of 8).
    block_s: value rows per tile (a multiple of 128).

  Returns:
    `[B, Q, M * D]` in `value.dtype`.
  """
  b, s, m, d, q, _, p = common.check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
  if block_q % 8 or block_s % 128:
    raise ValueError(f'ms_deform_attn_tpu: block_q must be a multiple of 8 and block_s of 128, got {block_q}, '
                     f'{block_s}.')
  cfg = _Config(block_q, block_s, interpret)
  qp = pl.cdiv(q, block_q) * block_q
  sp = pl.cdiv(s, block_s) * block_s
  level_w, level_h, level_start = (jnp.asarray(x, jnp.int32) for x in common.per_sample_levels(spatial_shapes, p))
  px, py = common.pixel_coordinates(spatial_shapes, sampling_locations)
  aw = attention_weights.reshape(px.shape).astype(jnp.float32)
  rows, coefs = [], []
  for pos, valid, wx, wy, _, _ in common.bilinear_corners(px, py, level_w, level_h):
    rows.append(jnp.where(valid, level_start + pos, -1))  # -1 never matches a row: invalid corners are skipped.
    coefs.append(jnp.where(valid, wx * wy * aw, 0.0))
  # [B, Q, M, K, 4] -> [B, M, Qp, K * 4]; padded queries have no valid corner.
  to_blocks = lambda x, fill: jnp.pad(jnp.stack(x, -1).reshape(b, q, m, -1).transpose(0, 2, 1, 3),
                                      ((0, 0), (0, 0), (0, qp - q), (0, 0)), constant_values=fill)
  rows, coefs = to_blocks(rows, -1), to_blocks(coefs, 0.0)
  # Per (b, m, query block): the range of valid rows, for skipping untouched value tiles.
  blocked = rows.reshape(b, m, qp // block_q, -1)
  lo = jnp.min(jnp.where(blocked >= 0, blocked, sp), axis=-1)
  hi = jnp.max(blocked, axis=-1)
  # The kernels read value as float32 (or bfloat16) and accumulate in float32; TPUs have no float64, and a float64
  # buffer would also break the interpreter, whose callback thread does not see a scoped `jax.enable_x64`.
  kernel_dtype = jnp.float32 if jnp.dtype(value.dtype).itemsize > 4 else value.dtype
  value_t = jnp.pad(value.transpose(0, 2, 1, 3).astype(kernel_dtype), ((0, 0), (0, 0), (0, sp - s), (0, 0)))
  out = _msda_core(cfg, lo, hi, rows, coefs, value_t)  # [B, M, Qp, D]
  return out[:, :, :q].transpose(0, 2, 1, 3).reshape(b, q, m * d).astype(value.dtype)
