"""Pallas MSDA kernels for GPU (Triton lowering), with a custom VJP.

STATUS: no GPU was available while this was written, so these kernels have never been compiled to PTX or run
on a GPU. They are kept correct by construction and by tests/test_msda_kernels.py: interpret-mode runs
(`interpret=True` on CPU, forward and gradients vs the XLA path) and a cross-lowering test that lowers forward
and backward, float32 and bfloat16, to Triton IR with `jax.export(..., platforms=['cuda'])` on CPU (so the
Pallas-to-Triton lowering accepts every op; Triton's own compiler passes are not exercised). Known Triton
constraints are respected (power-of-two block shapes; gathers and atomics as ref indexing with integer arrays),
but block sizes and `num_warps` are untuned guesses. The Pallas Triton backend is deprecated from jax 0.11
(jax_anchors.md B5).

Layout (as msda-triton and the CUDA op): the grid is `(B, ceil(Q / block_q), M)`; a program owns `block_q` queries
of one head and all their `K = L * P` samples (padded to a power of two) and `D` channels (padded likewise):
  * forward: for each of the 4 bilinear corners, one gather `value[rows] -> [block_q, K, D]` and a weighted sum
    over K accumulated in float32; value may be float32 or bfloat16.
  * backward (recomputes the forward sampling): gradients of the pixel coordinates and attention weights are
    reduced over D inside the program. The value gradient (`value_grad`, float32 buffer) is accumulated by
    - 'atomic_block' (GPU default): one `pltriton.atomic_add` of a `[block_q, K, D]` block per corner, with
      integer-array indices (run-to-run nondeterministic summation order, like the CUDA op);
    - 'atomic_rows' (interpret-mode default): a loop over (query, sample, corner) with one scalar-row,
      D-channel atomic each. JAX's interpret-mode discharge of `atomic_add` with integer *array* indices is a
      gather-then-set, which drops all but one of duplicate rows; this form is exact there, so it is what CPU
      tests run by default. 'atomic_block' is tested in interpret mode on inputs whose rows never repeat
      within a program, where the discharge is exact too;
    - 'sorted' (`deterministic=True`): outside the kernel, a stable sort of the rows and a segmented scan in
      XLA (bitwise reproducible; more memory: `[B*Q*M*K*4, D]` float32 temporaries).
  * `sampling_locations` enter the kernels as pixel coordinates (`loc * W_l - 0.5`, computed in XLA), so their
    gradient is the kernel's pixel gradient times `W_l` / `H_l` by XLA autodiff.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.msda import common

_OUTSIDE = -4.0  # pixel coordinate of padded samples: every corner is outside the map.
# How the value gradient is accumulated (see the module docstring).
VALUE_GRAD_MODES = ('atomic_block', 'atomic_rows', 'sorted')


class _Config(NamedTuple):
  """Static description of one kernel instance (hashable: it is a custom_vjp nondiff argument)."""
  batch: int
  tokens: int  # S
  heads: int  # M
  level_w: tuple[int, ...]  # per real sample k (padded samples never reach the value gradient)
  level_h: tuple[int, ...]
  level_start: tuple[int, ...]
  block_q: int
  num_warps: int
  value_grad: str  # one of VALUE_GRAD_MODES
  interpret: bool


def _rows(pos, start, cfg: _Config, b, m):
  """Rows of the flattened value `[B * S * M, D]`."""
  return (b * cfg.tokens + start + pos) * cfg.heads + m


def _forward_kernel(w_ref, h_ref, start_ref, value_ref, px_ref, py_ref, a_ref, out_ref, *, cfg: _Config):
  b, m = pl.program_id(0), pl.program_id(2)
  w, h, start = w_ref[...], h_ref[...], start_ref[...]  # [1, K]
  a = a_ref[...].astype(jnp.float32)  # [block_q, K]
  acc = jnp.zeros(out_ref.shape, jnp.float32)  # [block_q, D]
  for pos, valid, wx, wy, _, _ in common.bilinear_corners(px_ref[...], py_ref[...], w, h):
    v = value_ref[_rows(pos, start, cfg, b, m), :].astype(jnp.float32)  # [block_q, K, D]
    coef = jnp.where(valid, wx * wy * a, 0.0)
    acc += jnp.sum(coef[:, :, None] * v, axis=1)
  out_ref[...] = acc.astype(out_ref.dtype)


def _backward_kernel(w_ref, h_ref, start_ref, value_ref, px_ref, py_ref, a_ref, g_ref, *refs, cfg: _Config):
  """Gradients of pixel coordinates and attention weights; value gradient by atomics unless deterministic."""
  if cfg.value_grad == 'sorted':
    gpx_ref, gpy_ref, ga_ref = refs
  else:
    _, gpx_ref, gpy_ref, ga_ref, gv_ref = refs  # refs[0] is the aliased zero buffer == gv_ref.
  b, m = pl.program_id(0), pl.program_id(2)
  w, h, start = w_ref[...], h_ref[...], start_ref[...]
  a = a_ref[...].astype(jnp.float32)
  g = g_ref[...].astype(jnp.float32)  # [block_q, D]
  gpx = jnp.zeros(a.shape, jnp.float32)
  gpy = jnp.zeros(a.shape, jnp.float32)
  ga = jnp.zeros(a.shape, jnp.float32)
  d = g.shape[1]
  for pos, valid, wx, wy, sx, sy in common.bilinear_corners(px_ref[...], py_ref[...], w, h):
    rows = _rows(pos, start, cfg, b, m)  # [block_q, K]
    v = value_ref[rows, :].astype(jnp.float32)  # [block_q, K, D]
    gv = jnp.where(valid, jnp.sum(v * g[:, None, :], axis=2), 0.0)  # d out / d (corner weight), [block_q, K]
    ga += wx * wy * gv
    gpx += sx * wy * a * gv
    gpy += sy * wx * a * gv
    if cfg.value_grad == 'atomic_block':
      coef = jnp.where(valid, wx * wy * a, 0.0)
      channels = jax.lax.broadcasted_iota(jnp.int32, (1, 1, d), 2)
      pltriton.atomic_add(gv_ref, (rows[:, :, None], channels), coef[:, :, None] * g[:, None, :])
  gpx_ref[...] = gpx
  gpy_ref[...] = gpy
  ga_ref[...] = ga
  if cfg.value_grad != 'atomic_rows':
    return

  def scatter_query(qi, carry):
    g_row = g_ref[qi, :].astype(jnp.float32)  # [D]
    for k, (wk, hk, sk) in enumerate(zip(cfg.level_w, cfg.level_h, cfg.level_start)):
      a_k = a_ref[qi, k].astype(jnp.float32)
      for pos, valid, wx, wy, _, _ in common.bilinear_corners(px_ref[qi, k], py_ref[qi, k], wk, hk):
        coef = jnp.where(valid, wx * wy * a_k, 0.0)
        # int32 slice start, like the row index: a Python 0 becomes int64 under jax_enable_x64, and the
        # interpreter's dynamic_slice rejects mixed index types.
        pltriton.atomic_add(gv_ref, (_rows(pos, sk, cfg, b, m), pl.ds(jnp.int32(0), d)), coef * g_row)
    return carry

  jax.lax.fori_loop(0, g_ref.shape[0], scatter_query, 0)


def _specs(cfg: _Config, k: int, d: int):
  """BlockSpecs of the per-sample inputs `[B, Qp, M, K]`, of the output `[B, Qp, M * D]`, and of constants."""
  sample = pl.BlockSpec((None, cfg.block_q, None, k), lambda b, q, m: (b, q, m, 0))
  out = pl.BlockSpec((None, cfg.block_q, d), lambda b, q, m: (b, q, m))
  const = pl.BlockSpec((1, k), lambda b, q, m: (0, 0))
  return sample, out, const


def _level_consts(cfg: _Config, k: int):
  """Per-sample `(W, H, level_start)` as int32 `[1, k]`; padded samples get a 1x1 map at row 0."""
  pad = k - len(cfg.level_w)
  return tuple(jnp.asarray(np.array(x + (fill,) * pad, np.int32)[None])
               for x, fill in ((cfg.level_w, 1), (cfg.level_h, 1), (cfg.level_start, 0)))


def _forward(cfg: _Config, value, px, py, a):
  """value `[B*S*M, D]`, px/py/a `[B, Qp, M, K]` -> `[B, Qp, M*D]` in value.dtype."""
  b, qp, m, k = px.shape
  d = value.shape[1]
  sample, out, const = _specs(cfg, k, d)
  return pl.pallas_call(
      functools.partial(_forward_kernel, cfg=cfg),
      out_shape=jax.ShapeDtypeStruct((b, qp, m * d), value.dtype),
      grid=(b, qp // cfg.block_q, m),
      in_specs=[const, const, const, pl.no_block_spec, sample, sample, sample],
      out_specs=out,
      compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=1),
      interpret=cfg.interpret,
      name='msda_forward',
  )(*_level_consts(cfg, k), value, px, py, a)


def _backward(cfg: _Config, value, px, py, a, g):
  """Returns float32 `(grad_value [B*S*M, D] or None, grad_px, grad_py, grad_a [B, Qp, M, K])`."""
  b, qp, m, k = px.shape
  d = value.shape[1]
  sample, out, const = _specs(cfg, k, d)
  grad_sample = jax.ShapeDtypeStruct(px.shape, jnp.float32)
  in_specs = [const, const, const, pl.no_block_spec, sample, sample, sample, out]
  args = [*_level_consts(cfg, k), value, px, py, a, g]
  out_shape = [grad_sample] * 3
  out_specs = [sample] * 3
  aliases = {}
  if cfg.value_grad != 'sorted':
    in_specs.append(pl.no_block_spec)
    args.append(jnp.zeros(value.shape, jnp.float32))
    out_shape.append(jax.ShapeDtypeStruct(value.shape, jnp.float32))
    out_specs.append(pl.no_block_spec)
    aliases = {len(args) - 1: 3}
  grads = pl.pallas_call(
      functools.partial(_backward_kernel, cfg=cfg),
      out_shape=out_shape,
      grid=(b, qp // cfg.block_q, m),
      in_specs=in_specs,
      out_specs=out_specs,
      input_output_aliases=aliases,
      compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=1),
      interpret=cfg.interpret,
      name='msda_backward',
  )(*args)
  if cfg.value_grad == 'sorted':
    return (None, *grads)
  return (grads[3], *grads[:3])


def _value_grad_deterministic(cfg: _Config, num_rows: int, px, py, a, g):
  """Value gradient `[num_rows, D]` float32 by sort + segmented scan: a fixed summation order on any backend."""
  b, qp, m, k = px.shape
  d = g.shape[-1]
  bi = jnp.arange(b, dtype=jnp.int32)[:, None, None, None]
  mi = jnp.arange(m, dtype=jnp.int32)[None, None, :, None]
  level_w, level_h, start = (c[0] for c in _level_consts(cfg, k))
  rows, coefs = [], []
  for pos, valid, wx, wy, _, _ in common.bilinear_corners(px, py, level_w, level_h):
    rows.append(_rows(pos, start, cfg, bi, mi))
    coefs.append(jnp.where(valid, wx * wy * a.astype(jnp.float32), 0.0))
  rows = jnp.stack(rows, -1).reshape(-1)  # [N], N = B*Qp*M*K*4, ordered (b, q, m, k, corner)
  coefs = jnp.stack(coefs, -1).reshape(-1)
  order = jnp.argsort(rows, stable=True)
  rows = rows[order]
  g_rows = g.astype(jnp.float32).reshape(b * qp * m, d)
  contrib = coefs[order, None] * g_rows[order // (k * 4)]  # [N, D]
  first = jnp.concatenate([jnp.ones((1,), bool), rows[1:] != rows[:-1]])

  def segmented_add(left, right):
    (fl, vl), (fr, vr) = left, right
    return fl | fr, jnp.where(fr[:, None], vr, vl + vr)

  _, sums = jax.lax.associative_scan(segmented_add, (first, contrib))
  last = jnp.concatenate([rows[1:] != rows[:-1], jnp.ones((1,), bool)])
  target = jnp.where(last, rows, num_rows)  # only each segment's last (complete) sum is written
  return jnp.zeros((num_rows, d), jnp.float32).at[target].set(sums, mode='drop')


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _msda_core(cfg: _Config, value, px, py, a):
  return _forward(cfg, value, px, py, a)


def _msda_core_fwd(cfg, value, px, py, a):
  return _forward(cfg, value, px, py, a), (value, px, py, a)


def _msda_core_bwd(cfg, residuals, g):
  value, px, py, a = residuals
  grad_value, gpx, gpy, ga = _backward(cfg, value, px, py, a, g)
  if cfg.value_grad == 'sorted':
    grad_value = _value_grad_deterministic(cfg, value.shape[0], px, py, a, g.reshape(*px.shape[:3], -1))
  return (grad_value.astype(value.dtype), gpx.astype(px.dtype), gpy.astype(py.dtype), ga.astype(a.dtype))


_msda_core.defvjp(_msda_core_fwd, _msda_core_bwd)


def ms_deform_attn_pallas(value: jax.Array, spatial_shapes: common.SpatialShapes, sampling_locations: jax.Array,
                          attention_weights: jax.Array, *, deterministic: bool = False, interpret: bool = False,
                          block_q: int = 16, num_warps: int = 4, value_grad: str | None = None) -> jax.Array:
  """Multi-scale deformable attention with the Pallas Triton kernels (see the module docstring).

  Args:
    value: `[B, S, M, D]` float32 or bfloat16.
    spatial_shapes: static `((H_l, W_l), ...)`.
    sampling_locations: `[B, Q, M, L, P, 2]`.
    attention_weights: `[B, Q, M, L, P]`.
    deterministic: compute the value gradient without atomics (see the module docstring).
    interpret: run the kernels in the Pallas interpreter (CPU tests).
    block_q: queries per program (a power of two).
    num_warps: Triton warps per program.
    value_grad: override of the value-gradient mode, one of VALUE_GRAD_MODES; default 'sorted' if
      `deterministic`, else 'atomic_rows' in interpret mode and 'atomic_block' on GPU.

  Returns:
    `[B, Q, M * D]` in `value.dtype`.
  """
  b, s, m, d, q, num_levels, p = common.check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
  if block_q < 1 or block_q & (block_q - 1):
    raise ValueError(f'ms_deform_attn_pallas: block_q must be a power of two, got {block_q}.')
  k = num_levels * p
  kp = pl.next_power_of_2(k)
  dp = pl.next_power_of_2(d)
  qp = pl.cdiv(q, block_q) * block_q
  pad_k = kp - k
  if value_grad is None:
    value_grad = 'sorted' if deterministic else ('atomic_rows' if interpret else 'atomic_block')
  if value_grad not in VALUE_GRAD_MODES:
    raise ValueError(f'ms_deform_attn_pallas: value_grad must be one of {VALUE_GRAD_MODES}, got {value_grad!r}.')
  cfg = _Config(b, s, m, *common.per_sample_levels(spatial_shapes, p), block_q, num_warps, value_grad, interpret)

  # Padded samples and queries sit outside every map, with weight 0.
  pads = ((0, 0), (0, qp - q), (0, 0), (0, pad_k))
  px, py = (jnp.pad(x, pads, constant_values=_OUTSIDE)
            for x in common.pixel_coordinates(spatial_shapes, sampling_locations))
  a = jnp.pad(attention_weights.reshape(b, q, m, k), pads)
  value_rows = jnp.pad(value, ((0, 0), (0, 0), (0, 0), (0, dp - d))).reshape(b * s * m, dp)
  out = _msda_core(cfg, value_rows, px, py, a)  # [B, Qp, M * Dp]
  return out.reshape(b, qp, m, dp)[:, :q, :, :d].reshape(b, q, m * d)
