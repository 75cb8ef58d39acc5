"""VITA train step with the detector frozen (official MODEL.VITA.FREEZE_DETECTOR) vs the whole model trained.

  JAX_PLATFORMS=cpu python benchmarks/vita_frozen_bench.py --reps=5     # vita_tiny, 2 clips of 5 x 96 x 160

Both variants run the jitted train step of `visjax.train.trainer.make_train_step` on `configs/vita_tiny.py` with
the same random batch and weights; 'frozen' sets `config.train.frozen = vita_common.FREEZE_DETECTOR` (only the
VITA module is differentiated and has Adam state). They are timed alternately in one process so machine load
affects both alike; wall and process-CPU seconds per step are medians over `--reps` steps after one
compile-and-run step. Optimizer state: its array leaves and bytes.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from benchmarks import step_timing  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import vita_common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import vita_tiny  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.train import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position


def _batch(rng: np.random.Generator, clips: int, t: int, n: int, h: int, w: int,
           num_classes: int) -> dict[str, np.ndarray]:
  """A `[clips, t, ...]` training batch (docs/INTERFACES.md §1): n rectangles per clip on noise, moving."""
  masks = np.zeros((clips, t, n, h, w), np.uint8)
  for b in range(clips):
    for i in range(n):
      bh, bw = rng.integers(h // 6, h // 3), rng.integers(w // 6, w // 3)
      y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw - t)
      for f in range(t):
        masks[b, f, i, y0:y0 + bh, x0 + f:x0 + f + bw] = 1
  return {'image': rng.integers(0, 256, size=(clips, t, h, w, 3), dtype=np.uint8),
          'image_size': np.tile(np.array([h, w], np.int32), (clips, t, 1)), 'masks': masks,
          'present': masks.any(axis=(-2, -1)), 'labels': rng.integers(0, num_classes, (clips, n)).astype(np.int32),
          'track_ids': np.tile(np.arange(n, dtype=np.int32), (clips, 1)), 'instance_valid': np.ones((clips, n), bool)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=2)
  parser.add_argument('--frames', type=int, default=5)
  parser.add_argument('--height', type=int, default=96)
  parser.add_argument('--width', type=int, default=160)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  variants = {}
  for name, frozen in (('whole model', ()), ('frozen detector', vita_common.FREEZE_DETECTOR)):
    config = vita_tiny.get_config()
    config.mesh.data = 1
    config.input.batch_size = args.clips
    config.train.frozen = frozen
    variants[name] = config
  config = variants['whole model']
  mesh = mesh_lib.create_mesh(config)
  batch = mesh_lib.global_batch(_batch(np.random.default_rng(0), args.clips, args.frames, 2, args.height,
                                       args.width, config.model.num_classes), mesh)
  steps, states, info = {}, {}, {}
  with jax.set_mesh(mesh):
    for name, c in variants.items():
      method = registry.get_method(c)
      setup = trainer.build_setup(c, method, mesh)
      steps[name] = trainer.make_train_step(c, method, setup, mesh)
      t0, c0 = time.perf_counter(), time.process_time()
      states[name], metrics = steps[name](setup.init_fn(), batch)
      jax.block_until_ready(metrics)
      opt = jax.tree.leaves(states[name]['opt_state'])
      info[name] = dict(first=(time.perf_counter() - t0, time.process_time() - c0), loss=float(metrics['loss']),
                        leaves=len(opt), bytes=sum(x.nbytes for x in opt),
                        params=sum(x.nbytes for x in jax.tree.leaves(states[name]['params'])))
      print(f'{name}: compile + first step {info[name]["first"][0]:.1f} s wall', flush=True)
    times = step_timing.interleaved_times(steps, states, batch, args.reps)
  print(f'\nvita_tiny: {args.clips} clips of {args.frames} x {args.height} x {args.width}; load average '
        f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {args.reps} steps\n')
  print('| variant | wall s / step | CPU s / step | compile + 1st step wall / CPU s | opt-state leaves | '
        'opt-state MB | params MB | first loss |')
  print('|---|---|---|---|---|---|---|---|')
  for name, ts in times.items():
    i = info[name]
    print(f'| {name} | {statistics.median(t[0] for t in ts):.3f} | {statistics.median(t[1] for t in ts):.3f} | '
          f'{i["first"][0]:.1f} / {i["first"][1]:.1f} | {i["leaves"]} | {i["bytes"] / 1e6:.2f} | '
          f'{i["params"] / 1e6:.2f} | {i["loss"]:.6f} |')


if __name__ == '__main__':
  main()
