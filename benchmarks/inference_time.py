"""Inference time per frame of a method's full-size model on this CPU (random weights, the real streaming predictor).

  JAX_PLATFORMS=cpu python benchmarks/inference_time.py --config configs/vita_ytvis19.py --frames 18 --chunk 6

A video of `--frames` random frames of `--height` x `--width` (default 720 x 1280, a typical YouTube-VIS frame) is
test-resized exactly as eval does (`data_pipeline.input.resize_test_frames` with the config's `min_size_test` /
`max_size_test` / `test_fixed_size` / `size_divisibility`: 360 x 640 padded to 384 x 640 for VITA / IAI, 352 x 624
for VISOLO) and fed to `method.make_predictor(model, meta)` in chunks of `--chunk` frames, then `finish()`.
A first identical video compiles everything (its time is reported as `first video`); the second is timed: wall and
process CPU time (all threads) of the `add_frames` calls and of `finish`, per frame. Random weights: the network
cost is the real one; host-side post-processing depends on how many detections pass the thresholds, which differs
from a trained model (reported as the number of tracks).
"""

import argparse
import importlib
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed(fn):
  w, c = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - w, time.process_time() - c


def run_video(method, model, frames: np.ndarray, image_size: tuple[int, int], orig: tuple[int, int],
              chunk: int) -> dict[str, float]:
  """Wall / CPU seconds of add_frames (all chunks) and finish for one video."""
  from visjax.inference import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  meta = predictor_lib.VideoMeta(video_id=1, length=len(frames), orig_size=orig)
  pred = method.make_predictor(model, meta)
  add_wall = add_cpu = 0.0
  for start in range(0, len(frames), chunk):
    part = frames[start:start + chunk]
    sizes = np.tile(np.asarray(image_size, np.int32), (len(part), 1))
    _, w, c = _timed(lambda: pred.add_frames(part, sizes))  # pylint: disable=cell-var-from-loop
    add_wall, add_cpu = add_wall + w, add_cpu + c
  tracks, fin_wall, fin_cpu = _timed(pred.finish)
  return dict(add_wall=add_wall, add_cpu=add_cpu, finish_wall=fin_wall, finish_cpu=fin_cpu, tracks=len(tracks))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--frames', type=int, default=18)
  parser.add_argument('--chunk', type=int, default=6)
  parser.add_argument('--height', type=int, default=720)
  parser.add_argument('--width', type=int, default=1280)
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline import input as input_lib  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top

  name = os.path.splitext(os.path.basename(args.config))[0]
  config = importlib.import_module(f'configs.{name}').get_config()
  method = registry.get_method(config)
  model = method.build_model(nnx.Rngs(0))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  inp = config.input
  resize = input_lib.EvalResize(inp.min_size_test, inp.max_size_test, inp.size_divisibility,
                                tuple(inp.get('test_fixed_size', ()) or ()) or None)
  raw = np.random.default_rng(0).integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
  frames, image_size = input_lib.resize_test_frames(raw, resize)
  first = run_video(method, model, frames, image_size, (args.height, args.width), args.chunk)
  timed = run_video(method, model, frames, image_size, (args.height, args.width), args.chunk)
  n = args.frames
  print(f'| {os.path.basename(args.config)} | {num_params / 1e6:.1f} M | {image_size[0]}x{image_size[1]} '
        f'(padded {frames.shape[1]}x{frames.shape[2]}) | {n} frames, chunks of {args.chunk} | '
        f'{(timed["add_wall"] + timed["finish_wall"]) / n:.3f} s ({(timed["add_cpu"] + timed["finish_cpu"]) / n:.2f} s CPU) '
        f'| {timed["add_wall"] / n:.3f} s ({timed["add_cpu"] / n:.2f}) | {timed["finish_wall"]:.2f} s '
        f'({timed["finish_cpu"]:.2f}) | {first["add_wall"] + first["finish_wall"]:.0f} s | {timed["tracks"]} |')


if __name__ == '__main__':
  main()
