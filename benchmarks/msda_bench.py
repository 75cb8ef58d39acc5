"""Multi-scale deformable attention benchmark: visjax XLA / Pallas vs torch grid_sample vs the Deformable-DETR CUDA op.

Usage (prints a markdown table; see benchmarks/RESULTS.md `## MSDA`):
  JAX_PLATFORMS=cpu python benchmarks/msda_bench.py --shapes=idol_enc_320x576 --batch=1 --repeats=5
  python benchmarks/msda_bench.py            # on a GPU: all shapes, xla + pallas + torch (+ CUDA op if nvcc)

Implementations:
  xla      pallas_kernels.msda, implementation='xla'.
  pallas   implementation='pallas' (GPU only; interpret mode on CPU is a test tool, not benchmarked).
  torch    Deformable-DETR's ms_deform_attn_core_pytorch (F.grid_sample per level), on torch's default device
           for the JAX backend (CUDA if available on GPU, CPU otherwise).
  cuda_dd  Deformable-DETR's CUDA op (MultiScaleDeformableAttention), compiled at benchmark time from its public
           source into a temporary directory (`--dd_source=<checkout>/models/ops/src`, or a shallow git clone of
           fundamentalvision/Deformable-DETR); needs a GPU, torch with CUDA and nvcc. Never committed.

Every timing is the median of `--repeats` runs after one warm-up (compile) run; on a CPU backend the table shows
`wall (process CPU time)` in ms, since wall time on a shared machine mostly measures the other jobs. `floor` is
the bytes-moved lower bound (read the inputs once, write the outputs once), in MB and divided by a copy
bandwidth measured on the same device at start-up (best of 5); it ignores that gathers re-read value rows.
"""

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path[:0] = [_ROOT, os.path.join(_ROOT, 'tests')]
from pallas_kernels import msda  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (spatial_shapes, queries or None for Q = S, heads, channels per head, points)
SHAPES = {
    # IDOL encoder self-attention, 320x576 frame (levels at strides 8, 16, 32, 64): S = 3825.
    'idol_enc_320x576': (((40, 72), (20, 36), (10, 18), (5, 9)), None, 8, 32, 4),
    # IDOL encoder self-attention, 640x1152 frame: S = 15300.
    'idol_enc_640x1152': (((80, 144), (40, 72), (20, 36), (10, 18)), None, 8, 32, 4),
    # IDOL decoder cross-attention, 300 queries over the 640x1152 memory.
    'idol_dec_640x1152': (((80, 144), (40, 72), (20, 36), (10, 18)), 300, 8, 32, 4),
    # VITA (Mask2Former) pixel decoder, 3 levels at strides 8, 16, 32 of a 384x640 frame: S = 5040.
    'vita_pixdec_384x640': (((48, 80), (24, 40), (12, 20)), None, 8, 32, 4),
}


def median_ms(fn, repeats: int) -> tuple[float, float]:
  """Median wall-clock and process-CPU milliseconds of `fn()` over `repeats` runs after one warm-up run."""
  fn()  # warm-up / compile
  wall, cpu = [], []
  for _ in range(repeats):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - start_wall)
    cpu.append(time.process_time() - start_cpu)
  return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def fmt(times: tuple[float, float], with_cpu: bool) -> str:
  """`wall` or, on a CPU backend, `wall (cpu)`: CPU time is the steadier number on a shared machine."""
  return f'{times[0]:.1f} ({times[1]:.0f})' if with_cpu else f'{times[0]:.2f}'


def make_inputs(shape_name: str, batch: int, seed: int = 0):
  spatial_shapes, q, m, d, p = SHAPES[shape_name]
  s = sum(h * w for h, w in spatial_shapes)
  q = s if q is None else q
  rng = np.random.default_rng(seed)
  value = rng.standard_normal((batch, s, m, d)).astype(np.float32)
  loc = rng.uniform(-0.05, 1.05, (batch, q, m, len(spatial_shapes), p, 2)).astype(np.float32)
  logits = rng.standard_normal((batch, q, m, len(spatial_shapes) * p))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  weights = weights.reshape(batch, q, m, len(spatial_shapes), p).astype(np.float32)
  cot = rng.standard_normal((batch, q, m * d)).astype(np.float32)
  return spatial_shapes, value, loc, weights, cot


def bytes_floor(value, loc, weights, cot, itemsize: int = 4) -> tuple[int, int]:
  """Bytes that must move at least once: forward (inputs + output) and forward + backward."""
  fwd = (value.size + loc.size + weights.size + cot.size) * itemsize
  # Backward reads value, loc, weights and the output gradient, writes their three gradients.
  bwd = (2 * (value.size + loc.size + weights.size) + cot.size) * itemsize
  return fwd, fwd + bwd


def copy_bandwidth_gbs() -> float:
  """Device copy bandwidth (read + write) of a 256 MiB float32 array, in GB/s (best of 5)."""
  x = jnp.ones((64 * 1024 * 1024,), jnp.float32)
  copy = jax.jit(lambda a: a * 1.0000001)
  copy(x).block_until_ready()
  times = []
  for _ in range(5):
    start = time.perf_counter()
    copy(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * x.nbytes / min(times) / 1e9  # best of 5: the least disturbed run


def time_jax(implementation, spatial_shapes, value, loc, weights, cot, repeats):
  args = tuple(jnp.asarray(x) for x in (value, loc, weights))
  cot = jnp.asarray(cot)
  f = lambda v, l, a: msda.ms_deform_attn(v, spatial_shapes, l, a, implementation=implementation)
  fwd = jax.jit(f)
  fwd_bwd = jax.jit(jax.value_and_grad(lambda v, l, a: jnp.sum(f(v, l, a) * cot), argnums=(0, 1, 2)))
  return (median_ms(lambda: fwd(*args).block_until_ready(), repeats),
          median_ms(lambda: jax.block_until_ready(fwd_bwd(*args)), repeats))


def _torch_device():
  import torch  # pylint: disable=g-import-not-at-top
  return 'cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu'


def _time_torch(core, value, loc, weights, cot, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  device = _torch_device()
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  tensors = [torch.tensor(x, device=device) for x in (value, loc, weights)]
  cot = torch.tensor(cot, device=device)

  def forward():
    with torch.no_grad():
      core(*tensors)
    sync()

  def forward_backward():
    leaves = [t.detach().requires_grad_() for t in tensors]
    (core(*leaves) * cot).sum().backward()
    sync()

  return median_ms(forward, repeats), median_ms(forward_backward, repeats)


def time_torch(spatial_shapes, value, loc, weights, cot, repeats):
  from msda_reference import torch_core  # pylint: disable=g-import-not-at-top
  return _time_torch(lambda v, l, a: torch_core(v, spatial_shapes, l, a), value, loc, weights, cot, repeats)


@contextlib.contextmanager
def deformable_detr_cuda_op(dd_source: str | None):
  """Builds Deformable-DETR's CUDA op in a temporary directory and yields the loaded extension module."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import cpp_extension  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available() or cpp_extension.CUDA_HOME is None or shutil.which('nvcc') is None:
    raise RuntimeError('the Deformable-DETR CUDA op needs torch with CUDA and nvcc')
  tmp = tempfile.mkdtemp(prefix='msda_dd_')
  try:
    src = dd_source
    if src is None:
      subprocess.run(['git', 'clone', '--depth', '1', 'https://github.com/fundamentalvision/Deformable-DETR',
                      os.path.join(tmp, 'dd')], check=True, capture_output=True)
      src = os.path.join(tmp, 'dd', 'models', 'ops', 'src')
    sources = [os.path.join(src, 'vision.cpp'), os.path.join(src, 'cpu', 'ms_deform_attn_cpu.cpp'),
               os.path.join(src, 'cuda', 'ms_deform_attn_cuda.cu')]
    module = cpp_extension.load(
        name='MultiScaleDeformableAttention', sources=sources, extra_include_paths=[src],
        extra_cflags=['-DWITH_CUDA', '-O3'],
        extra_cuda_cflags=['-DWITH_CUDA', '-DCUDA_HAS_FP16=1', '-D__CUDA_NO_HALF_OPERATORS__',
                           '-D__CUDA_NO_HALF_CONVERSIONS__', '-D__CUDA_NO_HALF2_OPERATORS__', '-O3'],
        build_directory=tmp, verbose=False)
    yield module
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def time_cuda_dd(module, spatial_shapes, value, loc, weights, cot, repeats, im2col_step=64):
  import torch  # pylint: disable=g-import-not-at-top
  shapes = torch.tensor(spatial_shapes, dtype=torch.long, device='cuda')
  starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
  step = min(value.shape[0], im2col_step)

  class Function(torch.autograd.Function):

    @staticmethod
    def forward(ctx, v, l, a):
      ctx.save_for_backward(v, l, a)
      return module.ms_deform_attn_forward(v, shapes, starts, l, a, step)

    @staticmethod
    def backward(ctx, grad):
      v, l, a = ctx.saved_tensors
      gv, gl, ga = module.ms_deform_attn_backward(v, shapes, starts, l, a, grad.contiguous(), step)
      return gv, gl, ga

  return _time_torch(Function.apply, value, loc, weights, cot, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--shapes', default=','.join(SHAPES), help=f'comma-separated subset of {list(SHAPES)}')
  parser.add_argument('--impls', default='xla,pallas,torch,cuda_dd', help='comma-separated implementations')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--dd_source', default=None, help='Deformable-DETR models/ops/src (default: git clone)')
  args = parser.parse_args()

  backend = jax.default_backend()
  impls = args.impls.split(',')
  skipped = []
  if 'pallas' in impls and backend != 'gpu':
    impls.remove('pallas')
    skipped.append('pallas (no GPU: interpret mode is a test tool, not benchmarked)')
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
  except ImportError:
    impls = [i for i in impls if i not in ('torch', 'cuda_dd')]
    skipped.append('torch, cuda_dd (torch not installed)')
  stack = contextlib.ExitStack()
  dd_module = None
  if 'cuda_dd' in impls:
    try:
      dd_module = stack.enter_context(deformable_detr_cuda_op(args.dd_source))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
      impls.remove('cuda_dd')
      skipped.append(f'cuda_dd ({e})')

  bandwidth = copy_bandwidth_gbs()
  print(f'# device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, batch {args.batch}, '
        f'repeats {args.repeats}, copy bandwidth {bandwidth:.1f} GB/s')
  for s in skipped:
    print(f'# skipped: {s}')
  with_cpu = backend == 'cpu'
  print('| shape | S | Q | impl | fwd ms | fwd+bwd ms | floor fwd MB / ms | floor fwd+bwd MB / ms |')
  print('|---|---|---|---|---|---|---|---|')
  with stack:
    for name in args.shapes.split(','):
      spatial_shapes, value, loc, weights, cot = make_inputs(name, args.batch)
      floor = [f'{b / 1e6:.0f} / {b / (bandwidth * 1e9) * 1e3:.2f}' for b in bytes_floor(value, loc, weights, cot)]
      for impl in impls:
        if impl in ('xla', 'pallas'):
          fwd, fwd_bwd = time_jax(impl, spatial_shapes, value, loc, weights, cot, args.repeats)
        elif impl == 'torch':
          fwd, fwd_bwd = time_torch(spatial_shapes, value, loc, weights, cot, args.repeats)
        elif impl == 'cuda_dd':
          fwd, fwd_bwd = time_cuda_dd(dd_module, spatial_shapes, value, loc, weights, cot, args.repeats)
        else:
          raise ValueError(f'unknown implementation {impl!r}')
        label = f'torch ({_torch_device()})' if impl == 'torch' else impl
        print(f'| {name} | {value.shape[1]} | {loc.shape[1]} | {label} | {fmt(fwd, with_cpu)} | '
              f'{fmt(fwd_bwd, with_cpu)} | '
              f'{floor[0]} | {floor[1]} |', flush=True)


if __name__ == '__main__':
  main()
