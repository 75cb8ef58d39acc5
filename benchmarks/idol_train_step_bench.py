"""IDOL train step: masks for the matched queries only (`method.loss_fn`) vs masks for every query (the old path).

  JAX_PLATFORMS=cpu python benchmarks/idol_train_step_bench.py --model=demo --reps=5            # demo shape
  JAX_PLATFORMS=cpu python benchmarks/idol_train_step_bench.py --model=demo --clips=2 --height=384 --width=640
  JAX_PLATFORMS=cpu python benchmarks/idol_train_step_bench.py --model=r50 --clips=2 --height=384 --width=640 \
      --paths=new --reps=1

Both paths run the full jitted train step of `visjax.train.trainer.make_train_step` (forward, loss, gradient,
AdamW + clipping) on the same random batch and weights; the old path is `loss_fn` with the dense criterion input
(`IDOL.__call__`'s `pred_masks [L, 2B, Q, H/4, W/4]` for every decoder layer, frame and query). They are timed
alternately in one process (new, old, new, old, ...) so machine load affects both alike; wall and process-CPU
seconds per step are medians over `--reps` steps after one compile-and-run step. Models:
  * demo: `configs/demo_synthetic.py` as trained by `make demo` (default 4 clips of 96 x 160, Q 30, 4 gt slots);
  * r50: the official YTVIS19 R50 IDOL (`configs/idol_ytvis19.py`: 6 + 6 layers, Q 300, 16 gt slots; default
    2 clips of 384 x 640).
"""

import argparse
import os
import resource
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from benchmarks import step_timing  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.models.idol import criterion  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.models.idol import method as idol_method  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from visjax.train import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(model: str) -> ml_collections.ConfigDict:
  if model == 'demo':
    from configs import demo_synthetic  # pylint: disable=g-import-not-at-top
    config = demo_synthetic.get_config()
  else:
    from configs import idol_ytvis19  # pylint: disable=g-import-not-at-top
    config = idol_ytvis19.get_config()
  config.mesh.data = 1
  config.train.grad_accum = 1
  return config


def _batch(rng: np.random.Generator, clips: int, n: int, h: int, w: int, num_classes: int) -> dict[str, np.ndarray]:
  """A `[clips, 2, ...]` training batch (docs/INTERFACES.md §1): rectangles on noise, 1..n instances per clip."""
  masks = np.zeros((clips, 2, n, h, w), np.uint8)
  boxes = np.zeros((clips, 2, n, 4), np.float32)
  valid = np.arange(n)[None] < rng.integers(1, n + 1, size=(clips, 1))
  for b in range(clips):
    for t in range(2):
      for i in np.nonzero(valid[b])[0]:
        bw, bh = rng.integers(w // 8, w // 3), rng.integers(h // 8, h // 3)
        x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        masks[b, t, i, y0:y0 + bh, x0:x0 + bw] = 1
        boxes[b, t, i] = [(x0 + bw / 2) / w, (y0 + bh / 2) / h, bw / w, bh / h]
  return {'image': rng.integers(0, 256, size=(clips, 2, h, w, 3), dtype=np.uint8),
          'image_size': np.tile(np.array([h, w], np.int32), (clips, 2, 1)), 'boxes': boxes, 'masks': masks,
          'present': np.broadcast_to(valid[:, None], (clips, 2, n)).copy(),
          'labels': np.where(valid, rng.integers(0, num_classes, size=(clips, n)), -1).astype(np.int32),
          'track_ids': np.where(valid, np.arange(n)[None], -1).astype(np.int32), 'instance_valid': valid,
          'is_crowd': np.zeros_like(valid)}


class DenseIDOL(idol_method.IDOLMethod):
  """The old `loss_fn`: masks of every query of every frame and layer (`IDOL.__call__`), then the criterion."""

  def loss_fn(self, model, batch, *, rng, train=True):
    images = batch['image']
    frames = images.reshape((-1,) + images.shape[2:])
    dropout_rng, sample_rng = jax.random.split(rng)
    outputs = model(frames, batch['image_size'].reshape(-1, 2), train=train, rng=dropout_rng)
    return criterion.idol_loss(outputs, batch, rng=sample_rng, loss_config=self.loss_settings)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', default='demo', choices=['demo', 'r50'])
  parser.add_argument('--clips', type=int, default=None, help='default: demo 4, r50 2')
  parser.add_argument('--height', type=int, default=None, help='default: demo 96, r50 384')
  parser.add_argument('--width', type=int, default=None, help='default: demo 160, r50 640')
  parser.add_argument('--paths', default='new,old', help='comma-separated subset of new,old')
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  config = _config(args.model)
  demo = args.model == 'demo'
  clips = args.clips or (4 if demo else 2)
  h, w = args.height or (96 if demo else 384), args.width or (160 if demo else 640)
  method = registry.get_method(config)
  paths = {name: m for key, name, m in (('new', 'matched queries (new)', method),
                                        ('old', 'every query (old)', DenseIDOL(config)))
           if key in args.paths.split(',')}
  mesh = mesh_lib.create_mesh(config)
  setup = trainer.build_setup(config, method, mesh)
  batch = mesh_lib.global_batch(_batch(np.random.default_rng(0), clips, config.input.max_instances, h, w,
                                       config.model.num_classes), mesh)
  steps, states, losses = {}, {}, {}
  for name, m in paths.items():
    steps[name] = trainer.make_train_step(config, m, setup, mesh)
    t0 = time.perf_counter()
    states[name], metrics = steps[name](setup.init_fn(), batch)
    losses[name] = float(metrics['loss'])
    print(f'{name}: compile + first step {time.perf_counter() - t0:.1f} s wall, loss {losses[name]:.6f}',
          flush=True)
  times = step_timing.interleaved_times(steps, states, batch, args.reps)
  print(f'\n{args.model}: {clips} clips of {h} x {w}, Q {config.model.num_queries}, {config.model.dec_layers} '
        f'decoder layers, {config.input.max_instances} gt slots; load average {os.getloadavg()[0]:.1f} '
        f'on {os.cpu_count()} CPUs; median of {args.reps} steps; peak RSS '
        f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB\n')
  print('| path | wall s / step | CPU s / step | first-step loss |')
  print('|---|---|---|---|')
  med = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
         for name, ts in times.items()}
  for name in paths:
    print(f'| {name} | {med[name][0]:.3f} | {med[name][1]:.3f} | {losses[name]:.6f} |')
  if len(med) == 2:
    old, new = med['every query (old)'], med['matched queries (new)']
    print(f'\nspeed-up (old / new): wall {old[0] / new[0]:.2f}x, CPU {old[1] / new[1]:.2f}x')


if __name__ == '__main__':
  main()
