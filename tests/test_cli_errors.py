"""`python -m visjax.main` with bad input: one line `visjax: error: ...` on stderr naming the file / field /
parameter and what to do, a non-zero exit code, no traceback (`--debug` shows it); checks run before any model
is built. Also: configs found from any folder, `--config X --help` lists its fields, convert builds no random
init."""

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import train_toy
from visjax import errors

REPO = train_toy.REPO


def _error_line(proc: subprocess.CompletedProcess, code: int = errors.EXIT_USER_ERROR) -> str:
  assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith('visjax: error: ')]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def _cli(*args: str, cwd: str = REPO, pythonpath: str | None = REPO) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('PYTHONPATH', None)
  if pythonpath:
    env['PYTHONPATH'] = pythonpath
  return subprocess.run([sys.executable, '-m', 'visjax.main', *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize('flag,code,expected', [
    ('--config.train.num_step=3', errors.EXIT_USAGE,
     "config.train has no field 'num_step'. Did you mean --config.train.num_steps?"),
    ('--config.trian.num_steps=3', errors.EXIT_USAGE, 'Did you mean --config.train?'),
    ('--config.train.num_steps=abc', errors.EXIT_USAGE, 'num_steps=abc'),
    ('--mode=fit', errors.EXIT_USAGE, 'value should be one of'),
])
def test_bad_flags_give_one_line(tmp_path, flag, code, expected):
  line = _error_line(train_toy.run_main(str(tmp_path), flag), code)
  assert expected in line


def test_missing_config_file(tmp_path):
  line = _error_line(_cli('--config', 'configs/no_such_config.py', '--workdir', str(tmp_path)), errors.EXIT_USAGE)
  assert 'configs/no_such_config.py: no such file' in line


def _npz(path, **arrays) -> str:
  np.savez(path, **arrays)
  return str(path)


def _truncated(path) -> str:
  _npz(path, w=np.zeros(50_000, np.float32))
  with open(path, 'r+b') as f:
    f.truncate(5000)
  return str(path)


def _garbage(path) -> str:
  path.write_bytes(os.urandom(300))
  return str(path)


@pytest.mark.parametrize('make,expected', [
    (lambda d: str(d / 'absent.pth'), 'checkpoint not found: '),
    (lambda d: str(d), 'checkpoint not found: '),  # a folder
    (lambda d: _garbage(d / 'junk.npz'), 'junk.npz: not a .npz checkpoint'),
    (lambda d: _garbage(d / 'junk.pth'), 'junk.pth: not a .pth checkpoint'),
    (lambda d: _truncated(d / 'cut.npz'), 'cut.npz: truncated or corrupt .npz checkpoint'),
    (lambda d: _garbage(d / 'weights.h5'), "unknown checkpoint extension '.h5'"),
    (lambda d: _npz(d / 'other.npz', **{f'transformer.layer{i}.weight': np.zeros(3) for i in range(9)}),
     'checkpoint looks like a different model: 0 of 5 model variables matched (9 checkpoint keys; '),
])
def test_convert_bad_checkpoint_gives_one_line(tmp_path, make, expected):
  path = make(tmp_path)
  out = train_toy.run_main(str(tmp_path / 'w'), f'--config.init_from={path}', mode='convert')
  assert expected in _error_line(out)
  assert not os.path.exists(tmp_path / 'w' / 'converted')


def test_different_model_report_is_written_and_debug_shows_traceback(tmp_path):
  path = _npz(tmp_path / 'other.npz', **{'transformer.layer0.weight': np.zeros(3)})
  out = train_toy.run_main(str(tmp_path / 'w'), f'--config.init_from={path}', mode='convert')
  line = _error_line(out)
  assert 'first unexpected keys: transformer.layer0.weight' in line
  report = tmp_path / 'w' / 'conversion_report.txt'
  assert f'Full report: {report}' in line and 'missing (NNX path not filled): 4' in report.read_text()
  debug = train_toy.run_main(str(tmp_path / 'w'), f'--config.init_from={path}', '--debug', mode='convert')
  assert debug.returncode != 0 and 'Traceback' in debug.stderr and 'ConversionError' in debug.stderr


def test_workdir_not_writable(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  line = _error_line(train_toy.run_main(str(blocker / 'w')))
  assert f'--workdir {blocker / "w"} is not a writable folder' in line
  if os.geteuid() != 0:  # root writes anywhere
    readonly = tmp_path / 'ro'
    readonly.mkdir(mode=0o500)
    line = _error_line(train_toy.run_main(str(readonly)))
    assert f'--workdir {readonly} is not a writable folder' in line


def test_nan_loss(tmp_path):
  out = train_toy.run_main(str(tmp_path), '--config.train.num_steps=6', '--config.train.checkpoint_every=2',
                           '--config.toy_nan_at_step=3')
  line = _error_line(out)
  assert 'Non-finite loss at step 3' in line and 'Last good checkpoint: step 2' in line
  assert 'Lower config.train.lr' in line


def test_resume_with_another_model_config_names_the_parameter(tmp_path):
  flags = ('--config.train.num_steps=2', '--config.train.checkpoint_every=2')
  assert train_toy.run_main(str(tmp_path), *flags).returncode == 0
  line = _error_line(train_toy.run_main(str(tmp_path), *flags, '--config.dataset.num_classes=5'))
  assert "params.head.bias is (5,) in the checkpoint, the config's model has (6,)" in line
  assert 'start a new --workdir' in line


@pytest.mark.parametrize('tfrecords,expected', [
    ('', 'config.dataset.tfrecords is empty'),
    ('{tmp}/absent', 'absent does not exist'),
    ('{tmp}/empty', 'empty: no manifest.json'),
])
def test_train_without_converted_data_fails_before_building(tmp_path, tfrecords, expected):
  (tmp_path / 'empty').mkdir()
  start = time.time()
  out = _cli('--config', 'configs/idol_tiny.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train',
             '--config.dataset.prepare=', f'--config.dataset.tfrecords={tfrecords.format(tmp=tmp_path)}')
  assert expected in _error_line(out)
  assert time.time() - start < 60  # No model was built or compiled (IDOL init alone takes longer on 2 cores).
  assert os.listdir(tmp_path / 'w') == []


@pytest.mark.tf
@pytest.mark.slow
def test_corrupt_shard_during_training(tmp_path):
  pytest.importorskip('tensorflow')
  from data_pipeline import convert  # pylint: disable=g-import-not-at-top
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  paths = synthetic.generate(str(tmp_path / 'syn'), 6, 0, height=64, width=64, min_frames=3, max_frames=4)
  out_dir = str(tmp_path / 'tf')
  convert.convert(fmt='ytvis', json_path=paths['train'], images_dir=paths['images'], out_dir=out_dir, num_shards=1,
                  progress=False)
  (shard,) = glob.glob(os.path.join(out_dir, '*.tfrecord*'))
  with open(shard, 'r+b') as f:  # Same size, so the manifest check passes: the damage shows while reading.
    f.seek(os.path.getsize(shard) // 2)
    f.write(b'\0' * 64)
  out = _cli('--config', 'configs/idol_tiny.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train',
             '--config.dataset.prepare=', f'--config.dataset.tfrecords={out_dir}', '--config.input.batch_size=2')
  line = _error_line(out)
  assert shard in line and 'corrupted record' in line and 'convert it again' in line


def test_shipped_configs_and_help_from_any_folder(tmp_path):
  """`--config configs/X.py` from outside the checkout; `--help` lists the config's fields and exits 0."""
  out = _cli('--config', 'configs/idol_tiny.py', '--help', cwd=str(tmp_path))
  assert out.returncode == 0, out.stderr[-3000:]
  assert '--config.train.num_steps=' in out.stdout and '--config.model.' in out.stdout
  assert '--workdir' in out.stdout


def test_installed_package_ships_configs(tmp_path):
  """Without PYTHONPATH: the installed visjax finds configs/ (needs an install of this checkout incl. configs)."""
  probe = subprocess.run([sys.executable, '-c', 'import visjax, os; print(os.path.dirname(visjax.__file__))'],
                         cwd=str(tmp_path), env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'},
                         capture_output=True, text=True, check=False)
  if probe.returncode or os.path.dirname(probe.stdout.strip()) != REPO:
    pytest.skip(f'visjax is not installed from this checkout ({probe.stdout.strip() or probe.stderr[-200:]})')
  out = _cli('--config', 'configs/idol_tiny.py', '--help', cwd=str(tmp_path), pythonpath=None)
  assert out.returncode == 0, out.stderr[-3000:]
  assert '--config.train.num_steps=' in out.stdout


def test_setup_cfg_installs_configs():
  import configparser  # pylint: disable=g-import-not-at-top
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, 'setup.cfg'))
  assert 'configs' in cfg['options.packages.find']['include'].split()


def test_check_file_needs_torch_for_pth(tmp_path, monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from visjax.convert import torch_ckpt  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'model.pth'
  path.write_bytes(b'x')
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'torch' else real(name, *a))
  with pytest.raises(torch_ckpt.CheckpointFormatError, match=r'model.pth: reading .pth needs torch'):
    torch_ckpt.check_file(path)


_ABSTRACT_TOY = '''
import jax
from tests import train_toy
from visjax import convert

TRACED = []


class AbstractToy(train_toy.ToyMethod):

  def build_model(self, rngs):
    model = super().build_model(rngs)
    TRACED.append(isinstance(model.backbone.kernel.get_value(), jax.core.Tracer))
    return model

  def conversion_rules(self):
    return super().conversion_rules() + [convert.Rule('calls', 'calls')]


METHOD = AbstractToy
'''


def test_convert_builds_an_abstract_model(tmp_path, monkeypatch):
  """No random init: the model is only traced (nnx.eval_shape), then filled from the checkpoint and saved."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from visjax.train import restore  # pylint: disable=g-import-not-at-top
  (tmp_path / 'abstract_toy').mkdir()
  (tmp_path / 'abstract_toy' / '__init__.py').write_text('')
  (tmp_path / 'abstract_toy' / 'method.py').write_text(_ABSTRACT_TOY)
  monkeypatch.syspath_prepend(str(tmp_path))
  from abstract_toy import method as abstract_toy  # pylint: disable=g-import-not-at-top,import-error
  config = train_toy.get_config()
  config.method = 'abstract_toy.method'
  config.convert.allow_missing = ()
  rng = np.random.default_rng(0)
  official = {'backbone.weight': rng.normal(size=(8, 3, 3, 3)), 'backbone.bias': rng.normal(size=(8,)),
              'head.weight': rng.normal(size=(5, 8, 1, 1)), 'head.bias': rng.normal(size=(5,)),
              'calls': np.float32(3)}
  config.init_from = _npz(tmp_path / 'official.npz', **official)
  restore.convert_checkpoint(config, str(tmp_path / 'w'))
  assert abstract_toy.TRACED == [True]
  config.init_from = ''
  model = restore.load_model(config, str(tmp_path / 'w'))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  np.testing.assert_allclose(params['head']['bias'], official['head.bias'], rtol=1e-6)
  assert float(model.calls.get_value()) == 3


def test_train_with_missing_init_from_fails_before_building(tmp_path):
  line = _error_line(train_toy.run_main(str(tmp_path), f'--config.init_from={tmp_path}/official.pth'))
  assert f'checkpoint not found: {tmp_path}/official.pth' in line
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_train_validation_rejects_a_conversion_without_videos(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from configs import idol_tiny  # pylint: disable=g-import-not-at-top
  from data_pipeline import tfrecord  # pylint: disable=g-import-not-at-top
  from visjax import main  # pylint: disable=g-import-not-at-top
  (tmp_path / 'tf').mkdir()
  (tmp_path / 'tf' / tfrecord.MANIFEST_NAME).write_text(json.dumps(
      {'format_version': tfrecord.FORMAT_VERSION, 'shards': [], 'num_videos': 0, 'categories': [],
       'format': 'ytvis', 'max_tracks_per_video': 0}))
  config = idol_tiny.get_config()
  config.dataset.prepare = ''
  config.dataset.tfrecords = str(tmp_path / 'tf')
  with pytest.raises(errors.UserError, match=r'tf holds no videos \(no shards in its manifest\)'):
    main.validate(config, str(tmp_path / 'w'), 'train')
  main.validate(config, str(tmp_path / 'w'), 'eval')  # Only training reads the training split.
