"""Input pipeline throughput: conversion (videos/s) and training clips/s per method, eval frames/s.

  .venv/bin/python benchmarks/input_bench.py --work /tmp/input_bench [--height 720 --width 1280] [--videos 3]
      [--copies 8] [--frames 20] [--batches 8] [--batch-size 4] [--methods idol,vita,visolo,iai]

Frames come from `data_pipeline.synthetic` at the requested size; to keep generation cheap the json lists every
generated video `--copies` times (distinct video and annotation ids, same JPEG files). Training uses each method's
own resize settings (reference notes): IDOL short side 320-640 / max 768, T=2; VITA 288-512 / 768, T=5; VISOLO
360/480 / 768 with a 352x624 crop, T=3; IAI 360 / 640, T=5. Prints one markdown table row per measurement, with
wall time and the process CPU time (user + sys) of the measured section.
"""

import argparse
import copy
import json
import os
import resource
import time

import ml_collections

from configs import input_recipes
from data_pipeline import convert
from data_pipeline import input as input_lib
from data_pipeline import samplers
from data_pipeline import synthetic

SETTINGS = {
    'idol': dict(min_sizes=(320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640), max_size=768, clip_len=2),
    'vita': dict(min_sizes=tuple(range(288, 513, 32)), max_size=768, clip_len=5),
    'visolo': dict(min_sizes=(360, 480), max_size=768, clip_len=3),
    'iai': dict(min_sizes=(360,), max_size=640, clip_len=5),
}


def _cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def _replicated_json(src: str, dst: str, copies: int) -> int:
  with open(src) as f:
    content = json.load(f)
  out = dict(content, videos=[], annotations=[])
  for c in range(copies):
    for v in content['videos']:
      v = copy.deepcopy(v)
      v['id'] += c * 100000
      out['videos'].append(v)
    for a in content['annotations']:
      a = copy.deepcopy(a)
      a['id'] += c * 100000
      a['video_id'] += c * 100000
      out['annotations'].append(a)
  with open(dst, 'w') as f:
    json.dump(out, f)
  return len(out['videos'])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--work', required=True)
  parser.add_argument('--height', type=int, default=720)
  parser.add_argument('--width', type=int, default=1280)
  parser.add_argument('--videos', type=int, default=3)
  parser.add_argument('--copies', type=int, default=8)
  parser.add_argument('--frames', type=int, default=20)
  parser.add_argument('--batches', type=int, default=8)
  parser.add_argument('--batch-size', type=int, default=4)
  parser.add_argument('--max-instances', type=int, default=16)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--methods', default='idol,vita,visolo,iai')
  args = parser.parse_args()

  src = os.path.join(args.work, 'src')
  if not os.path.exists(os.path.join(src, 'train.json')):
    synthetic.generate(src, num_videos=args.videos, seed=0, height=args.height, width=args.width,
                       min_frames=args.frames, max_frames=args.frames, valid_fraction=0.0)
  json_path = os.path.join(args.work, 'train_x.json')
  num_videos = _replicated_json(os.path.join(src, 'train.json'), json_path, args.copies)
  out = os.path.join(args.work, 'tfr')
  print('| measurement | wall | CPU (user+sys) | result |')
  print('|---|---|---|---|')
  wall, cpu = time.time(), _cpu()
  manifest = convert.convert(fmt='ytvis', json_path=json_path, images_dir=os.path.join(src, 'JPEGImages'),
                             out_dir=out, num_shards=4, workers=args.workers, overwrite=True, progress=False)
  wall, cpu = time.time() - wall, _cpu() - cpu
  size = sum(s.num_bytes for s in manifest.shards) / 2**20
  print(f'| convert {num_videos} videos x {args.frames} frames at {args.height}x{args.width}, '
        f'{args.workers} workers | {wall:.1f} s | {cpu:.1f} s | {num_videos / wall:.2f} videos/s, '
        f'{manifest.raw["num_frames"] / wall:.1f} frames/s, {size:.1f} MiB |')

  for method in args.methods.split(','):
    settings = SETTINGS[method]
    recipe = ml_collections.ConfigDict({'input': {}})
    getattr(input_recipes, method)(recipe)
    recipe.input.sampler.clip_len = settings['clip_len']
    spec = input_lib.TrainSpec(root=out, sampler=samplers.make_sampler(recipe.input.sampler),
                               batch_size=args.batch_size, max_instances=args.max_instances,
                               min_sizes=settings['min_sizes'], max_size=settings['max_size'], seed=0,
                               shuffle_buffer=16, prefetch=2, augment=recipe.input.augment.to_dict(),
                               augment_pseudo=recipe.input.augment_pseudo.to_dict())
    it = input_lib.TrainIterator(spec)
    wall = time.time()
    next(it)
    first = time.time() - wall
    next(it)  # Warm-up.
    wall, cpu = time.time(), _cpu()
    shapes = set()
    for _ in range(args.batches):
      shapes.add(next(it)['image'].shape[2:4])
    wall, cpu = time.time() - wall, _cpu() - cpu
    clips = args.batches * args.batch_size
    print(f'| train {method}: T={settings["clip_len"]}, batch {args.batch_size}, {args.batches} batches '
          f'(first batch {first:.1f} s) | {wall:.1f} s | {cpu:.1f} s | {clips / wall:.2f} clips/s, '
          f'{clips * settings["clip_len"] / wall:.1f} frames/s; buckets {sorted(shapes)} |')

  wall, cpu = time.time(), _cpu()
  frames = 0
  for video in input_lib.eval_videos(out, min_size=480, max_size=1333, max_videos=4):
    frames += video['length']
  wall, cpu = time.time() - wall, _cpu() - cpu
  print(f'| eval_videos: 4 videos at test size 480 / 1333 | {wall:.1f} s | {cpu:.1f} s | '
        f'{frames / wall:.1f} frames/s |')


if __name__ == '__main__':
  main()
