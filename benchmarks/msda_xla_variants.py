"""The XLA MSDA formulations that were compared before picking the one in pallas_kernels/msda/xla.py.

Usage: JAX_PLATFORMS=cpu python benchmarks/msda_xla_variants.py [--shape=idol_enc_320x576] [--batch=1]
Prints forward and forward+backward medians per formulation (results: benchmarks/RESULTS.md `## MSDA`).
All variants share the index/weight computation of xla.py and differ only in how the samples are fetched and
reduced; each is checked against the shipped formulation before it is timed.
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


def _rows(b, t, m, cell):
  return ((jnp.arange(b)[:, None, None, None, None] * t + cell) * m + jnp.arange(m)[None, None, :, None, None])


def _packed_gather(table, cell):
  b, t, m, d4 = table.shape
  _, q, _, num_levels, p = cell.shape
  g = jnp.take(table.reshape(-1, d4), _rows(b, t, m, cell), axis=0, mode='clip')
  return g.reshape(b, q, m, num_levels * p * 4, d4 // 4)


def packed_einsum(table, cell, w):
  """Shipped: one packed gather, then a batched dot over the L*P*4 corner weights."""
  return xla._gather_reduce(table, cell, w)


def packed_mul_sum(table, cell, w):
  """One packed gather, multiply and reduce over the (non-minor) corner axis."""
  g = _packed_gather(table, cell)
  return jnp.sum(g * w.reshape(*g.shape[:-1], 1), axis=3)


def packed_two_step(table, cell, w):
  """One packed gather, reduce the 4 corners first, then the L*P samples."""
  g = _packed_gather(table, cell)
  b, q, m, k, d = g.shape
  g = g.reshape(b, q, m, k // 4, 4, d)
  return jnp.sum(jnp.sum(g * w.reshape(b, q, m, k // 4, 4, 1), axis=4), axis=3)


def packed_sample_loop(table, cell, w):
  """Unrolled loop over the L*P samples: one small gather + accumulate each (never holds all samples)."""
  b, t, m, d4 = table.shape
  rows = _rows(b, t, m, cell).reshape(*cell.shape[:3], -1)
  w = w.reshape(*cell.shape[:3], -1, 4)
  acc = 0.0
  for k in range(rows.shape[-1]):
    g = jnp.take(table.reshape(-1, d4), rows[..., k], axis=0, mode='clip').reshape(*rows.shape[:3], 4, d4 // 4)
    acc = acc + jnp.einsum('bqmcd,bqmc->bqmd', g, w[..., k, :])
  return acc


def per_map_vmap(table, cell, w):
  """scenic-style: vmap over (batch, head) of a gather from that head's own table."""
  b, t, m, d4 = table.shape
  _, q, _, num_levels, p = cell.shape
  per = table.transpose(0, 2, 1, 3).reshape(b * m, t, d4)
  cells = cell.transpose(0, 2, 1, 3, 4).reshape(b * m, q * num_levels * p)
  ws = w.transpose(0, 2, 1, 3, 4, 5).reshape(b * m, q, num_levels * p * 4)

  def one(tab, c, wt):
    g = jnp.take(tab, c, axis=0, mode='clip').reshape(q, num_levels * p * 4, d4 // 4)
    return jnp.einsum('qkd,qk->qd', g, wt)

  return jax.vmap(one)(per, cells, ws).reshape(b, m, q, d4 // 4).transpose(0, 2, 1, 3)


VARIANTS = {f.__name__: f for f in (packed_einsum, packed_mul_sum, packed_two_step, packed_sample_loop,
                                    per_map_vmap)}


def unpacked_four_gathers(value, spatial_shapes, loc, aw):
  """No packed table: four row gathers of D channels from `value` itself (one per corner)."""
  b, s, m, d = value.shape
  p = loc.shape[4]
  level_w, level_h, level_start = (jnp.asarray(x, jnp.int32) for x in common.per_sample_levels(spatial_shapes, p))
  px, py = common.pixel_coordinates(spatial_shapes, loc)
  a = aw.reshape(px.shape)
  flat = value.reshape(b * s * m, d)
  bi = jnp.arange(b)[:, None, None, None]
  mi = jnp.arange(m)[None, None, :, None]
  out = 0.0
  for pos, valid, wx, wy, _, _ in common.bilinear_corners(px, py, level_w, level_h):
    g = jnp.take(flat, (bi * s + level_start + pos) * m + mi, axis=0, mode='clip')
    out = out + jnp.einsum('bqmkd,bqmk->bqmd', g, jnp.where(valid, wx * wy * a, 0.0))
  return out.reshape(b, -1, m * d)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--shape', default='idol_enc_320x576')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  spatial_shapes, value, loc, weights, cot = msda_bench.make_inputs(args.shape, args.batch)
  args_j = tuple(jnp.asarray(x) for x in (value, loc, weights))
  b, q, m = loc.shape[:3]

  def full(core):
    def f(v, l, a):
      cell, w = xla.cell_indices_and_weights(spatial_shapes, l, a)
      return jax.checkpoint(core)(xla.packed_corner_table(v, spatial_shapes), cell, w).reshape(b, q, -1)
    return f

  impls = {name: full(core) for name, core in VARIANTS.items()}
  impls['unpacked_four_gathers'] = lambda v, l, a: unpacked_four_gathers(v, spatial_shapes, l, a)
  reference = np.asarray(jax.jit(impls['packed_einsum'])(*args_j))
  print(f'# {jax.devices()[0].device_kind}, {args.shape}, batch {args.batch}, repeats {args.repeats}')
  print('| formulation | fwd ms | fwd+bwd ms |')
  print('|---|---|---|')
  for name, f in impls.items():
    fwd = jax.jit(f)
    err = np.abs(np.asarray(fwd(*args_j)) - reference).max() / np.abs(reference).max()
    assert err < 1e-5, (name, err)
    grad = jax.jit(jax.grad(lambda v, l, a, f=f: jnp.sum(f(v, l, a) * cot), argnums=(0, 1, 2)))
    t_fwd = msda_bench.median_ms(lambda: fwd(*args_j).block_until_ready(), args.repeats)
    t_bwd = msda_bench.median_ms(lambda: jax.block_until_ready(grad(*args_j)), args.repeats)
    print(f'| {name} | {t_fwd:.1f} | {t_bwd:.1f} |', flush=True)


if __name__ == '__main__':
  main()
