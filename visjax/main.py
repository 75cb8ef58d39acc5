"""visjax command line: train, evaluate, predict on a video, or port an official checkpoint.

  python -m visjax.main --config configs/<name>.py --workdir DIR
      [--mode train|eval|train_and_eval|predict|convert] [--config.a.b=value ...] [--debug]
  python -m visjax.main --config configs/<name>.py --help     # lists every field of that config

`--config configs/<name>.py` also works outside a checkout (the shipped configs are installed with visjax); any
other path is a config file of your own. Outputs under DIR: checkpoints/ (orbax, resumable), train_log.jsonl,
logs/ (TensorBoard), results.json + results.zip (CodaLab), metrics.json (when the eval split has ground truth),
converted/ (--mode convert), overlay.mp4 + tracks.json (--mode predict), config_<mode>.json. Multi-host: set
--config.mesh.distributed=True (or the JAX_COORDINATOR_ADDRESS environment variable) and run the same command on
every host.

Exit codes: 0 done; 1 a user error, printed as one line `visjax: error: ...` naming the file, config field or
parameter and what to do (`--debug` shows the traceback); 2 a bad command line; 75 training stopped by SIGTERM or
SIGINT after saving a checkpoint (run the same command again to resume).

JAX's persistent compilation cache is on by default (a second run of the same config skips most compilation): its
folder is the environment variable VISJAX_COMPILATION_CACHE (default ~/.cache/visjax/jax; "off" disables it), or
JAX's own JAX_COMPILATION_CACHE_DIR when set.
"""

import difflib
import importlib.util
import json
import logging as py_logging
import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from visjax import errors
from visjax import io_utils

MODES = ('train', 'eval', 'train_and_eval', 'predict', 'convert')
TRAIN_MODES = ('train', 'train_and_eval')
CACHE_ENV = 'VISJAX_COMPILATION_CACHE'
DEFAULT_CACHE = os.path.join('~', '.cache', 'visjax', 'jax')
CACHE_MIN_COMPILE_SECS = 0.1  # Low enough for the train step of the tiny test configs; tiny helpers are skipped.
_HELP_FLAGS = ('--help', '-help', '-h', '--helpshort', '--helpfull')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and outputs.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'What to run.')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the traceback of user errors (by default one line).')


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str:
  """Turns on JAX's persistent compilation cache; returns its folder ('' when off).

  Folder: JAX_COMPILATION_CACHE_DIR if JAX already has one, else `config.compilation_cache_dir` when the config
  has that field, else the environment variable VISJAX_COMPILATION_CACHE, else ~/.cache/visjax/jax; "off" or ""
  disables it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  folder = config.get('compilation_cache_dir', None)
  if folder is None:
    folder = os.environ.get(CACHE_ENV, DEFAULT_CACHE)
  if folder.lower() in ('', 'off', 'none', '0'):
    return ''
  folder = os.path.expanduser(folder)
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', CACHE_MIN_COMPILE_SECS)
  return folder


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise errors.UserError(f'--workdir {workdir} is not a writable folder ({e.strerror}: {e.filename}); fix its '
                           'permissions or choose another --workdir.') from e


def _check_train_data(config: ml_collections.ConfigDict) -> None:
  """The converted training TFRecords exist and hold videos (only for the default input source)."""
  if config.dataset.get('prepare', '') or config.input.get('source', '') not in ('', 'data_pipeline.input'):
    return  # Generated before training, or read by a source of the user's own.
  from data_pipeline import tfrecord  # pylint: disable=g-import-not-at-top  # No TensorFlow import.
  roots = [r.strip() for r in str(config.dataset.tfrecords or '').split(',') if r.strip()]
  if not roots:
    raise errors.UserError(
        'config.dataset.tfrecords is empty: convert your dataset first (python -m data_pipeline.convert --format '
        'ytvis --json train.json --images JPEGImages --out DIR) and pass --config.dataset.tfrecords=DIR.')
  for root in roots:
    if not os.path.isdir(root):
      raise errors.UserError(f'config.dataset.tfrecords: {root} does not exist (run data_pipeline.convert with '
                             f'--out {root}, or fix the path).')
    manifest = tfrecord.load_manifest(root)  # RecordFormatError naming the folder or shard.
    if not manifest.shards or not sum(s.num_records for s in manifest.shards):
      raise errors.UserError(f'config.dataset.tfrecords: {root} holds no videos (no shards in its manifest).')


def validate(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
  """Cheap checks before anything is built or compiled; raises a user error naming the path or field."""
  _check_writable(workdir)
  if mode in TRAIN_MODES:
    _check_train_data(config)
    if config.init_from and not os.path.isdir(config.init_from):  # A folder: a converted orbax checkpoint.
      from visjax.convert import torch_ckpt  # pylint: disable=g-import-not-at-top  # NumPy only.
      torch_ckpt.check_file(config.init_from)
  # --mode convert checks its input file first thing (restore.convert_checkpoint), before building the model.


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict:
  """Validates, then runs `mode`; returns its summary (last train metrics, eval metrics, or written paths)."""
  validate(config, workdir, mode)
  with io_utils.atomic_write(os.path.join(workdir, f'config_{mode}.json')) as f:
    f.write(config.to_json_best_effort(indent=1))
  cache = enable_compilation_cache(config)
  logging.debug('JAX compilation cache: %s', cache or 'off')
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
  if mode in TRAIN_MODES:
    out['train'] = trainer.train(config, workdir)
  if mode in ('eval', 'train_and_eval'):
    out['eval'] = evaluate.evaluate(config, workdir)
  if mode == 'train_and_eval' and config.predict.get('after_eval', False):
    from visjax import predict  # pylint: disable=g-import-not-at-top
    if not config.predict.input:
      config.predict.input = prepare.first_video_dir(config)
      if not config.predict.get('ground_truth', ''):
        config.predict.ground_truth = config.dataset.valid_json  # the demo: ground truth | prediction
    out['predict'] = predict.predict(config, workdir)
  return out


# ---------------------------------------------------------------------------------------------------------------
# Command line: flag parsing with one-line errors, --config resolution, --help with the config's fields.


def _fail(code: int, message: str, prefix: str = 'visjax: error: ') -> None:
  print(prefix + message, file=sys.stderr)
  sys.exit(code)


def resolve_config_path(value: str) -> str:
  """`value` when that file exists; `configs/<name>.py` falls back to the installed configs package.

  A `:arg` suffix (ml_collections' get_config argument) is kept.
  """
  path, sep, arg = value.partition(':')
  if os.path.isfile(path):
    return value
  parts = os.path.normpath(path).split(os.sep)
  spec = importlib.util.find_spec('configs') if parts[0] == 'configs' and len(parts) > 1 else None
  for root in (spec.submodule_search_locations or ()) if spec else ():
    candidate = os.path.join(root, *parts[1:])
    if os.path.isfile(candidate):
      return candidate + sep + arg
  _fail(errors.EXIT_USAGE, f'--config {path}: no such file (looked in {os.getcwd()} and in the installed configs '
                           'package); pass the path of a config file, e.g. --config configs/idol_ytvis19.py.')
  return value  # Not reached.


def _config_value(argv: list[str]) -> tuple[int, str] | None:
  """(index in argv, value) of the --config flag."""
  for i, a in enumerate(argv):
    if a in ('--config', '-config') and i + 1 < len(argv):
      return i + 1, argv[i + 1]
    if a.startswith(('--config=', '-config=')):
      return i, a.split('=', 1)[1]
  return None


def _load_config(value: str) -> ml_collections.ConfigDict:
  path, _, arg = value.partition(':')
  spec = importlib.util.spec_from_file_location('visjax_user_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # The user's config file.
    if '--debug' in sys.argv:
      raise
    _fail(errors.EXIT_USAGE, f'--config {path} failed to load: {type(e).__name__}: {errors.one_line(e)} '
                             '(--debug shows the traceback)')
    raise  # Not reached.


def _check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
  """Every --config.a.b override names an existing field (else one line with a did-you-mean hint)."""
  for a in argv:
    if not a.startswith(('--config.', '-config.')):
      continue
    name = a.split('config.', 1)[1].split('=', 1)[0]
    node, where = config, 'config'
    for part in name.split('.'):
      if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
        node, where = node[part], f'{where}.{part}'
      elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
        node, where = node[int(part)], f'{where}.{part}'
      else:
        keys = list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f' Did you mean --{where}.{close[0]}?' if close else ''
        _fail(errors.EXIT_USAGE, f'--config.{name}: {where} has no field {part!r}.{hint} (--config FILE --help '
                                 'lists the fields)')


def _config_fields(config: ml_collections.ConfigDict, prefix: str = 'config') -> list[str]:
  lines = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      lines += _config_fields(value, f'{prefix}.{key}')
    else:
      lines.append(f'  --{prefix}.{key}={value!r}')
  return lines


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors, configs/ found from any folder, and --help listing the config."""
  argv = list(argv)
  wants_help = any(a in _HELP_FLAGS for a in argv[1:])
  argv = [a for a in argv if a not in _HELP_FLAGS]
  found = _config_value(argv)
  config = None
  if found is not None:
    index, value = found
    resolved = resolve_config_path(value)
    argv[index] = argv[index][:len(argv[index]) - len(value)] + resolved
    config = _load_config(resolved)
    _check_overrides(config, argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(errors.EXIT_USAGE, f'{errors.one_line(e)} (--help lists the flags)')
  except Exception as e:  # pylint: disable=broad-except  # ml_collections: a value of the wrong type.
    if '--debug' in argv:
      raise
    _fail(errors.EXIT_USAGE, f'{type(e).__name__}: {errors.one_line(e)}')
  if wants_help:
    print(__doc__)
    print(flags.FLAGS.module_help(sys.modules[__name__]))
    if config is not None:
      print(f'\nFields of {found[1]} (override with --config.FIELD=VALUE):')
      print('\n'.join(_config_fields(_CONFIG.value)))
    sys.exit(0)
  return rest


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records of orbax (dozens per checkpoint); its warnings and errors still show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or '/orbax/' not in record.pathname


def _write_conversion_report(error: Exception, workdir: str) -> str:
  """Writes the full report of a ConversionError to WORKDIR/conversion_report.txt; returns the path ('' if not one)."""
  report = getattr(error, 'report', None)
  if report is None or not hasattr(report, 'summary'):
    return ''
  path = os.path.join(workdir, 'conversion_report.txt')
  try:
    with io_utils.atomic_write(path) as f:
      f.write(report.summary() + '\n')
  except OSError:
    return ''
  return path


def main(argv) -> None:
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(errors.EXIT_USAGE, f'unexpected arguments: {argv[1:]} (flags are --name=value)')
  if _CONFIG.value is None:
    _fail(errors.EXIT_USAGE, '--config is required (e.g. --config configs/idol_ytvis19.py).')
  workdir = _WORKDIR.value
  if not workdir:
    _fail(errors.EXIT_USAGE, '--workdir is required.')
  try:
    out = run(_CONFIG.value, workdir, _MODE.value)
  except errors.Preempted as e:
    _fail(errors.EXIT_PREEMPTED, str(e), prefix='visjax: ')
  except Exception as e:  # pylint: disable=broad-except
    if _DEBUG.value or not errors.is_user_error(e):
      raise
    report = _write_conversion_report(e, workdir)
    _fail(errors.EXIT_USER_ERROR, errors.one_line(e) + (f' Full report: {report}' if report else ''))
  logging.info('Done: %s', json.dumps(out, default=str)[:2000])


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
