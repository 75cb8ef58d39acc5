"""Timings of IDOL's training-side assignment and loss, and of the host-side tracker, at official sizes.

  python benchmarks/idol_loss_bench.py [--clips 2] [--reps 5]

Reports wall and process-CPU time (the CPU number is steadier on a shared machine) for:
  * `hungarian_match` on [16, 100, 25] costs (VITA-style set matching) vs scipy in a Python loop;
  * `simota_assign` on [B, 300, 16] (one decoder layer of IDOL's matcher);
  * `idol_loss` forward + gradient w.r.t. the model outputs, 6 layers, 300 queries, 40 classes, 16 gt slots,
    masks at stride 4 of 384x640, B clips (2B frames): compile and steady-state step;
  * one frame of inference post-processing: `IDOLTracker.match` on 10 detections, `final_masks` (jitted) to
    720x1280 and RLE encoding.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from visjax import matching
from visjax.evaluation import results as results_lib
from visjax.models.idol import criterion
from visjax.inference import postprocess
from visjax.models.idol import tracker as tracker_lib


def _timed(fn, reps):
  """(first-call wall, steady wall per call, steady CPU per call) of `fn()` (blocks on the result)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  w0, c0 = time.perf_counter(), time.process_time()
  for _ in range(reps):
    jax.block_until_ready(fn())
  return first, (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps


def _batch_and_outputs(rng, clips, layers=6, q=300, c=40, n=16, h=384, w=640, e=256):
  boxes = np.zeros((clips, 2, n, 4), np.float32)
  boxes[..., :2] = rng.uniform(0.2, 0.8, size=(clips, 2, n, 2))
  boxes[..., 2:] = rng.uniform(0.05, 0.3, size=(clips, 2, n, 2))
  masks = np.zeros((clips, 2, n, h, w), np.uint8)
  for b in range(clips):
    for t in range(2):
      for i in range(n):
        cx, cy, bw, bh = boxes[b, t, i] * [w, h, w, h]
        masks[b, t, i, int(cy - bh / 2):int(cy + bh / 2), int(cx - bw / 2):int(cx + bw / 2)] = 1
  valid = np.arange(n)[None] < rng.integers(3, n, size=(clips, 1))
  batch = {'boxes': boxes, 'masks': masks, 'present': np.broadcast_to(valid[:, None], (clips, 2, n)).copy(),
           'labels': np.where(valid, rng.integers(0, c, size=(clips, n)), -1).astype(np.int32),
           'instance_valid': valid, 'is_crowd': np.zeros_like(valid)}
  frames = 2 * clips
  outputs = {
      'pred_logits': rng.normal(size=(layers, frames, q, c)).astype(np.float32),
      'pred_boxes': np.concatenate([rng.uniform(0.1, 0.9, size=(layers, frames, q, 2)),
                                    rng.uniform(0.05, 0.4, size=(layers, frames, q, 2))], -1).astype(np.float32),
      'pred_masks': rng.normal(size=(layers, frames, q, h // 4, w // 4)).astype(np.float32),
      'pred_embeds': rng.normal(size=(frames, q, e)).astype(np.float32),
  }
  return batch, outputs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=2)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(f'devices: {jax.devices()}')

  cost = rng.normal(size=(16, 100, 25)).astype(np.float32)
  hung = jax.jit(matching.hungarian_match)
  first, wall, cpu = _timed(lambda: hung(cost), args.reps)
  w0, c0 = time.perf_counter(), time.process_time()
  for _ in range(args.reps):
    for m in cost:
      linear_sum_assignment(m)
  print(f'hungarian_match [16, 100, 25]: first call {first:.2f} s, then {wall * 1e3:.2f} ms wall / '
        f'{cpu * 1e3:.2f} ms CPU; scipy loop {(time.perf_counter() - w0) / args.reps * 1e3:.2f} ms wall / '
        f'{(time.process_time() - c0) / args.reps * 1e3:.2f} ms CPU')

  b = args.clips
  cost = rng.normal(size=(b, 300, 16)).astype(np.float32)
  ious = rng.uniform(size=(b, 300, 16)).astype(np.float32) * (rng.uniform(size=(b, 300, 16)) < 0.1)
  valid = np.ones((b, 16), bool)
  sim = jax.jit(jax.vmap(matching.simota_assign))
  first, wall, cpu = _timed(lambda: sim(cost, ious, valid), args.reps)
  print(f'simota_assign [{b}, 300, 16]: first call {first:.2f} s, then {wall * 1e3:.2f} ms wall / '
        f'{cpu * 1e3:.2f} ms CPU')

  batch, outputs = _batch_and_outputs(rng, b)
  grad_fn = jax.jit(jax.value_and_grad(lambda o, r: criterion.idol_loss(o, batch, rng=r)[0]))
  key = jax.random.key(0)
  first, wall, cpu = _timed(lambda: grad_fn(outputs, key), args.reps)
  print(f'idol_loss value+grad ({b} clips, 6 layers, Q 300, C 40, N 16, masks 96x160): compile + first call '
        f'{first:.1f} s, then {wall:.3f} s wall / {cpu:.3f} s CPU per step')

  tr = tracker_lib.IDOLTracker()
  mask_logits = rng.normal(size=(10, 120, 216)).astype(np.float32)
  embeds = rng.normal(size=(10, 256)).astype(np.float32)
  probs = rng.uniform(size=(10, 40)).astype(np.float32)
  state = {'frame': 0}

  def host_frame():
    keep, ids = tr.match(probs.max(1), probs.argmax(1), postprocess.sigmoid(mask_logits) > 0.5, embeds,
                         state['frame'])
    state['frame'] += 1
    final = np.asarray(tracker_lib.final_masks(mask_logits[keep][ids >= 0], image_size=(480, 864),
                                               orig_size=(720, 1280)))
    return [results_lib.encode_mask(m) for m in final]

  first, wall, cpu = _timed(host_frame, args.reps)
  print(f'host frame (10 detections, tracker + masks to 720x1280 + RLE): {wall * 1e3:.1f} ms wall / '
        f'{cpu * 1e3:.1f} ms CPU')


if __name__ == '__main__':
  main()
