"""visjax command line: train, evaluate, predict on a video, or port an official checkpoint.

  python -m visjax.main --config configs/<name>.py --workdir DIR \
      [--mode train|eval|train_and_eval|predict|convert] [--config.a.b=value ...]

Outputs under DIR: checkpoints/ (orbax, resumable), train_log.jsonl, logs/ (TensorBoard), results.json +
results.zip (CodaLab), metrics.json (when the eval split has ground truth), converted/ (--mode convert),
overlay.mp4 + tracks.json (--mode predict). Multi-host: set --config.mesh.distributed=True (or the
JAX_COORDINATOR_ADDRESS environment variable) and run the same command on every host.
"""

import json
import logging as py_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

MODES = ('train', 'eval', 'train_and_eval', 'predict', 'convert')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and outputs.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'What to run.')


def run(config, workdir: str, mode: str) -> dict:
  """Runs `mode`; returns its summary (last train metrics, eval metrics, or written paths)."""
  # Imported here so that `--help` and flag errors stay fast, and after distributed start-up.
  from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed(config)
  if mode == 'predict':
    from visjax import predict  # pylint: disable=g-import-not-at-top
    return predict.predict(config, workdir)
  if mode == 'convert':
    from visjax.train import restore  # pylint: disable=g-import-not-at-top
    return {'converted': restore.convert_checkpoint(config, workdir)}
  from visjax.train import evaluate  # pylint: disable=g-import-not-at-top
  from visjax.train import prepare  # pylint: disable=g-import-not-at-top
  from visjax.train import trainer  # pylint: disable=g-import-not-at-top
  prepare.prepare_dataset(config)
  out = {}
  if mode in ('train', 'train_and_eval'):
    out['train'] = trainer.train(config, workdir)
  if mode in ('eval', 'train_and_eval'):
    out['eval'] = evaluate.evaluate(config, workdir)
  if mode == 'train_and_eval' and config.predict.get('after_eval', False):
    from visjax import predict  # pylint: disable=g-import-not-at-top
    if not config.predict.input:
      config.predict.input = prepare.first_video_dir(config)
    out['predict'] = predict.predict(config, workdir)
  return out


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records of orbax (dozens per checkpoint); its warnings and errors still show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or '/orbax/' not in record.pathname


def main(argv) -> None:
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required.')
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError('--workdir is required.')
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f'config_{_MODE.value}.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=1))
  out = run(config, workdir, _MODE.value)
  logging.info('Done: %s', json.dumps(out, default=str)[:2000])


if __name__ == '__main__':
  app.run(main)
