"""Backbone benchmark: forward throughput of ResNet-50/101 and Swin-L, and checkpoint conversion time.

Usage (prints markdown tables; see benchmarks/RESULTS.md `## Backbones`):
  JAX_PLATFORMS=cpu python benchmarks/model_bench.py --models=r50,r101,swin_l --height=480 --width=864 \
      --batch=1 --repeats=3
  python benchmarks/model_bench.py --dtype=bfloat16 --batch=8 --repeats=20   # on a GPU

Forward: the backbone (random weights) is applied under `jax.jit` over `nnx.split` state (as the trainer does),
input `[batch, height, width, 3]` float; the first call (compile) is timed separately; the reported time is the
median of `--repeats` calls, each blocked on its outputs. images/s = batch / median.

Conversion: a detectron2 R50 state dict in torch layout (OIHW, random values; 265 tensors, 23.5M values) is
written to .npz and converted with `visjax.convert.convert` (file read included) into a model built with
`nnx.eval_shape` (no random init) and into a concretely initialised one (init time excluded).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from visjax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.models import backbones  # pylint: disable=g-import-not-at-top,wrong-import-position

BUILDERS = {
    'r50': lambda dtype: backbones.resnet_d2(50, dtype=dtype, rngs=nnx.Rngs(0)),
    'r101': lambda dtype: backbones.resnet_d2(101, dtype=dtype, rngs=nnx.Rngs(0)),
    'swin_t': lambda dtype: backbones.SwinTransformer(backbones.SWIN_T, rngs=nnx.Rngs(0)),
    'swin_b': lambda dtype: backbones.SwinTransformer(backbones.SWIN_B, rngs=nnx.Rngs(0)),
    'swin_l': lambda dtype: backbones.SwinTransformer(backbones.SWIN_L, rngs=nnx.Rngs(0)),
}


def bench_forward(name: str, batch: int, height: int, width: int, repeats: int, dtype) -> dict:
  """Returns {params, compile_s, median_s, cpu_s, images_per_s} for one backbone (cpu_s: process CPU time per
  call, summed over threads: steadier than wall time on a shared machine)."""
  model = BUILDERS[name](dtype)
  model.eval()
  graphdef, state = nnx.split(model)
  num_params = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState))))

  @jax.jit
  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  x = jnp.asarray(np.random.RandomState(0).randn(batch, height, width, 3), dtype or jnp.float32)
  t0 = time.perf_counter()
  jax.block_until_ready(forward(state, x))
  compile_s = time.perf_counter() - t0
  times = []
  c0 = time.process_time()
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(forward(state, x))
    times.append(time.perf_counter() - t0)
  cpu_s = (time.process_time() - c0) / repeats
  median = statistics.median(times)
  return dict(params=num_params, compile_s=compile_s, median_s=median, cpu_s=cpu_s, images_per_s=batch / median)


def _torch_layout_r50() -> dict[str, np.ndarray]:
  """A detectron2 R50 state dict in torch layout with random values, from the NNX model's shapes."""
  rng = np.random.default_rng(0)
  abstract = nnx.eval_shape(lambda: backbones.resnet_d2(50, rngs=nnx.Rngs(0)))
  sd = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract)):
    key, shape = convert.dotted(path), var.get_value().shape
    if key.endswith('.kernel'):
      sd[key[:-len('kernel')] + 'weight'] = rng.standard_normal(shape, np.float32).transpose(3, 2, 0, 1)
    else:
      sd[key] = rng.random(shape, np.float32) + 0.5
  return sd


def bench_convert() -> dict:
  """Returns conversion timings (seconds) of a full R50 from .npz."""
  sd = _torch_layout_r50()
  rules = convert.resnet_d2_rules('', '')
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'r50.npz')
    np.savez(path, **sd)
    t0 = time.perf_counter()
    abstract = nnx.eval_shape(lambda: backbones.resnet_d2(50, rngs=nnx.Rngs(0)))
    report = convert.convert(path, abstract, rules)
    abstract_s = time.perf_counter() - t0
    concrete = backbones.resnet_d2(50, rngs=nnx.Rngs(0))
    t0 = time.perf_counter()
    convert.convert(path, concrete, rules)
    concrete_s = time.perf_counter() - t0
  return dict(tensors=len(report.loaded), values=report.num_values, abstract_s=abstract_s, concrete_s=concrete_s)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='r50,r101,swin_l', help=f'comma list of {sorted(BUILDERS)}')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--height', type=int, default=480)
  parser.add_argument('--width', type=int, default=864)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', default='float32', help='compute dtype of the ResNet convs (Swin: float32)')
  parser.add_argument('--skip_convert', action='store_true')
  args = parser.parse_args()
  dtype = None if args.dtype == 'float32' else jnp.dtype(args.dtype)
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind}; jax {jax.__version__}; load average before: '
        f'{os.getloadavg()[0]:.1f}')
  print('\n| backbone | params | input | compile s | median wall s/iter | CPU s/iter | images/s (wall) |\n'
        '|---|---|---|---|---|---|---|')
  for name in args.models.split(','):
    r = bench_forward(name, args.batch, args.height, args.width, args.repeats, dtype)
    print(f'| {name} ({args.dtype}) | {r["params"] / 1e6:.1f}M | {args.batch}x{args.height}x{args.width} | '
          f'{r["compile_s"]:.1f} | {r["median_s"]:.3f} | {r["cpu_s"]:.3f} | {r["images_per_s"]:.2f} |', flush=True)
  if not args.skip_convert:
    r = bench_convert()
    print(f'\nconvert R50 (.npz, {r["tensors"]} tensors, {r["values"] / 1e6:.1f}M values): into an abstract '
          f'model {r["abstract_s"]:.2f} s, into an initialised model {r["concrete_s"]:.2f} s')
  print(f'load average after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
