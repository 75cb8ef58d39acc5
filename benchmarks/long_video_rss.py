"""Peak memory of eval and predict on one long synthetic video: 100 vs 1,000 frames (contract v2 streaming).

  python benchmarks/long_video_rss.py --config configs/idol_tiny.py [--frames 100,1000] [--chunk 32] \
      [--modes eval,predict] [--override=--config.x=y ...]

For each length: a one-video synthetic YTVIS set (96x160) is generated and converted; a randomly initialised model
of the config is saved as WORKDIR/converted; then `--mode eval` (TFRecords, chunks of `--chunk` frames) and
`--mode predict` (the JPEG folder of that video) run in subprocesses whose peak RSS (ru_maxrss of the child) and
wall / CPU time are printed as a Markdown table. Streaming means the 1,000-frame rows stay close to the 100-frame
rows (predict reads the video twice, for inference and for the overlay, which it draws and encodes frame by frame;
what grows is the tracks' per-frame RLEs).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args: list[str]) -> tuple[float, float, float]:
  """(wall s, CPU s, peak RSS MiB) of one CLI run in a fresh child process."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3')
  # A fresh interpreter per run: ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so each run is
  # measured by a wrapper that reports its own child's peak.
  code = ('import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); '
          'print("RSS", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)')
  out = subprocess.run([sys.executable, '-c', code, sys.executable, '-m', 'visjax.main', *args], cwd=REPO, env=env,
                       capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f'{args} failed:\n{out.stderr[-3000:]}')
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  rss = int(out.stdout.strip().splitlines()[-1].split()[1]) / 1024
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return time.time() - start, cpu, rss


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/idol_tiny.py')
  parser.add_argument('--frames', default='100,1000')
  parser.add_argument('--chunk', type=int, default=32)
  parser.add_argument('--modes', default='eval,predict')
  parser.add_argument('--override', action='append', default=[],
                      help='extra --config.x=y for every run (e.g. --override=--config.tracker.foo=1)')
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,unused-import
  from data_pipeline import convert, synthetic  # pylint: disable=g-import-not-at-top
  from visjax import convert as convert_lib  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('bench_config', os.path.join(REPO, args.config))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  print(f'| config | frames | mode | wall s | CPU s | peak RSS MiB |\n|---|---|---|---|---|---|')
  for frames in (int(f) for f in args.frames.split(',')):
    root = tempfile.mkdtemp(prefix=f'long{frames}_')
    paths = synthetic.generate(root, num_videos=1, seed=1, height=96, width=160, min_frames=frames,
                               max_frames=frames, valid_fraction=0.0)
    tfr = os.path.join(root, 'tfr')
    convert.convert(fmt='ytvis', json_path=paths['train'], images_dir=paths['images'], out_dir=tfr, num_shards=1,
                    workers=1, progress=False)
    workdir = os.path.join(root, 'work')
    model = registry.get_method(config).build_model(nnx.Rngs(0))
    convert_lib.save_converted(model, os.path.join(workdir, 'converted'))
    video_dir = os.path.join(paths['images'], sorted(os.listdir(paths['images']))[0])
    common = ['--config', os.path.join(REPO, args.config), '--workdir', workdir,
              f'--config.dataset.eval_tfrecords={tfr}', f'--config.dataset.tfrecords={tfr}',
              '--config.dataset.valid_json=', '--config.dataset.prepare=', f'--config.eval.chunk_len={args.chunk}']
    for mode, extra in (('eval', []), ('predict', [f'--config.predict.input={video_dir}',
                                                   '--config.predict.output=overlay.gif'])):
      if mode not in args.modes.split(','):
        continue
      wall, cpu, rss = _run(common + ['--mode', mode] + extra + args.override)
      print(f'| {args.config} | {frames} | {mode} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |', flush=True)


if __name__ == '__main__':
  main()
