"""The XLA MSDA formulations that were compared before picking the one in pallas_kernels/msda/xla.py.

Usage: JAX_PLATFORMS=cpu python benchmarks/msda_xla_variants.py [--shape=idol_enc_320x576] [--batch=1]
Prints forward and forward+backward medians per formulation (results: benchmarks/RESULTS.md `## MSDA`).
The two shipped formulations (`formulation='packed'` / `'four_corner'` of xla.ms_deform_attn_xla) and the
alternatives that lost; each is checked against the shipped code before it is timed.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msda_bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from pallas_kernels.msda import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from pallas_kernels.msda import xla  # pylint: disable=g-import-not-at-top,wrong-import-position


def _packed_inputs(value, spatial_shapes, loc, aw):
  cell, w = xla.cell_indices_and_weights(spatial_shapes, loc, aw)
  return xla.packed_corner_table(value, spatial_shapes), cell, w


def _packed_gather(table, cell):
  b, t, m, d4 = table.shape
  _, q, _, num_levels, p = cell.shape
  rows = (jnp.arange(b)[:, None, None, None, None] * t + cell) * m + jnp.arange(m)[None, None, :, None, None]
  g = jnp.take(table.reshape(-1, d4), rows, axis=0, mode='clip')
  return g.reshape(b, q, m, num_levels * p * 4, d4 // 4)


@jax.checkpoint
def _mul_sum(table, cell, w):
  g = _packed_gather(table, cell)
  return jnp.sum(g * w.reshape(*g.shape[:-1], 1), axis=3)


def packed_mul_sum(value, spatial_shapes, loc, aw):
  """Packed gather, then multiply and reduce over the (non-minor) corner axis instead of a batched dot."""
  return _mul_sum(*_packed_inputs(value, spatial_shapes, loc, aw))


@jax.checkpoint
def _per_map(table, cell, w):
  b, t, m, d4 = table.shape
  _, q, _, num_levels, p = cell.shape
  per = table.transpose(0, 2, 1, 3).reshape(b * m, t, d4)
  cells = cell.transpose(0, 2, 1, 3, 4).reshape(b * m, q * num_levels * p)
  ws = w.transpose(0, 2, 1, 3, 4, 5).reshape(b * m, q, num_levels * p * 4)

  def one(tab, c, wt):
    g = jnp.take(tab, c, axis=0, mode='clip').reshape(q, num_levels * p * 4, d4 // 4)
    return jnp.einsum('qkd,qk->qd', g, wt)

  return jax.vmap(one)(per, cells, ws).reshape(b, m, q, d4 // 4).transpose(0, 2, 1, 3)


def packed_per_map_vmap(value, spatial_shapes, loc, aw):
  """scenic-style: vmap over (batch, head) of a gather from that head's own packed table."""
  return _per_map(*_packed_inputs(value, spatial_shapes, loc, aw))


def window_gather_per_level(value, spatial_shapes, loc, aw):
  """No packing: per level, one gather of a (2, 2, D) window of the zero-padded map around each sample."""
  b, _, m, d = value.shape
  out = 0.0
  for lvl, ((h, w), start) in enumerate(zip(spatial_shapes, common.level_starts(spatial_shapes))):
    v = value[:, start:start + h * w].reshape(b, h, w, m, d).transpose(0, 3, 1, 2, 4).reshape(b * m, h, w, d)
    v = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)))
    px, py = common.pixel_coordinates(((h, w),), loc[:, :, :, lvl:lvl + 1])
    corners = common.bilinear_corners(px, py, w, h)
    x0 = jnp.clip(jnp.floor(jnp.clip(px, -2.0, w)), -1, w - 1).astype(jnp.int32) + 1
    y0 = jnp.clip(jnp.floor(jnp.clip(py, -2.0, h)), -1, h - 1).astype(jnp.int32) + 1
    bm = jnp.broadcast_to(jnp.arange(b)[:, None, None, None] * m + jnp.arange(m)[None, None, :, None], x0.shape)
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(4, 5, 6), collapsed_slice_dims=(0,),
                                          start_index_map=(0, 1, 2))
    g = jax.lax.gather(v, jnp.stack([bm, y0, x0], -1), dims, slice_sizes=(1, 2, 2, d), mode='clip')
    a = aw[:, :, :, lvl]
    wgt = jnp.stack([jnp.where(valid, wx * wy * a, 0.0) for _, valid, wx, wy, _, _ in corners], -1)
    out = out + jnp.einsum('bqmpcd,bqmpc->bqmd', g.reshape(*g.shape[:4], 4, d), wgt)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--shape', default='idol_enc_320x576')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  spatial_shapes, value, loc, weights, cot = msda_bench.make_inputs(args.shape, args.batch)
  args_j = tuple(jnp.asarray(x) for x in (value, loc, weights))
  b, q, m = loc.shape[:3]

  impls = {
      'shipped_packed': lambda v, l, a: xla.ms_deform_attn_xla(v, spatial_shapes, l, a, formulation='packed'),
      'shipped_four_corner': lambda v, l, a: xla.ms_deform_attn_xla(v, spatial_shapes, l, a,
                                                                    formulation='four_corner'),
  }
  for f in (packed_mul_sum, packed_per_map_vmap, window_gather_per_level):
    impls[f.__name__] = lambda v, l, a, f=f: f(v, spatial_shapes, l, a).reshape(b, q, -1)
  reference = np.asarray(jax.jit(impls['shipped_four_corner'])(*args_j))
  print(f'# {jax.devices()[0].device_kind}, {args.shape}, batch {args.batch}, repeats {args.repeats}')
  print('| formulation | fwd ms wall (cpu) | fwd+bwd ms wall (cpu) |')
  print('|---|---|---|')
  for name, f in impls.items():
    fwd = jax.jit(f)
    err = np.abs(np.asarray(fwd(*args_j)) - reference).max() / np.abs(reference).max()
    assert err < 1e-5, (name, err)
    grad = jax.jit(jax.grad(lambda v, l, a, f=f: jnp.sum(f(v, l, a) * cot), argnums=(0, 1, 2)))
    t_fwd = msda_bench.median_ms(lambda: fwd(*args_j).block_until_ready(), args.repeats)
    t_bwd = msda_bench.median_ms(lambda: jax.block_until_ready(grad(*args_j)), args.repeats)
    print(f'| {name} | {msda_bench.fmt(t_fwd, True)} | {msda_bench.fmt(t_bwd, True)} |', flush=True)


if __name__ == '__main__':
  main()
