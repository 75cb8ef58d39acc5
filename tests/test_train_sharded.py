"""The same 3 train steps on 1 device, on 8 fake CPU devices (meshes 4×2 with FSDP rules, and 8×1), and in a
2-process run on loopback (jax.distributed, CPU collectives, then a sharded eval): losses agree to rel 1e-5."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests import train_toy
from visjax.train import trainer

_TERMS = ('loss', 'loss_mask', 'loss_ce')

_MULTI_DEVICE_SCRIPT = r'''
import json, sys
import jax
from tests import train_toy
from visjax.models import registry
from visjax.train import mesh as mesh_lib, trainer
assert jax.device_count() == 8, jax.devices()
make_config = getattr(train_toy, sys.argv[2])
out = {}
for data, model, rules in ((4, 2, [('backbone|head', 'fsdp')]), (8, 1, [])):
  c = make_config()
  c.mesh.data, c.mesh.model, c.mesh.fsdp_rules = data, model, rules
  workdir = f'{sys.argv[1]}/{data}x{model}'
  trainer.train(c, workdir)
  mesh = mesh_lib.create_mesh(c)
  setup = trainer.build_setup(c, registry.get_method(c), mesh)
  specs = {mesh_lib.path_str(p): list(s.spec) for p, s in jax.tree_util.tree_leaves_with_path(
      setup.state_sharding, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))}
  out[f'{data}x{model}'] = {'log': train_toy.read_log(workdir), 'mesh': dict(mesh.shape), 'specs': specs}
print('RESULT' + json.dumps(out))
'''


def _assert_close(got, want, rel=1e-5):
  assert [r['step'] for r in got] == [r['step'] for r in want] == [1, 2, 3]
  terms = [k for k in want[0] if k.startswith('loss')]
  assert set(_TERMS) <= set(terms)
  for g, w in zip(got, want):
    for k in terms:
      assert abs(g[k] - w[k]) <= rel * abs(w[k]), (g['step'], k, g[k], w[k])


def _one_device_log(workdir: str, config) -> list[dict]:
  trainer.train(config, workdir)
  return train_toy.read_log(workdir)


@pytest.fixture(scope='module')
def one_device_log(tmp_path_factory):
  return _one_device_log(str(tmp_path_factory.mktemp('one')), train_toy.get_config())


def _run_eight_devices(workdir: str, config_fn: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=train_toy.REPO, TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.run([sys.executable, '-c', _MULTI_DEVICE_SCRIPT, workdir, config_fn], cwd=train_toy.REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  assert out['4x2']['mesh'] == {'data': 4, 'model': 2}
  assert out['8x1']['mesh'] == {'data': 8, 'model': 1}
  return out


def test_eight_fake_devices_match_one(one_device_log, tmp_path):
  out = _run_eight_devices(str(tmp_path), 'get_config')
  # FSDP rule: the conv kernel [3, 3, 3, 8] and its Adam moment shard their last dim over 'data'.
  assert out['4x2']['specs']['params/backbone/kernel'] == [None, None, None, 'data']
  assert out['4x2']['specs']['opt_state/1/mu/backbone/kernel'] == [None, None, None, 'data']
  assert out['8x1']['specs']['params/backbone/kernel'] == []
  for name in ('4x2', '8x1'):
    _assert_close(out[name]['log'], one_device_log)


@pytest.mark.slow
def test_idol_tiny_eight_fake_devices_match_one(tmp_path):
  """configs/idol_tiny.py: 3 steps on 1 device and on 8 devices (4×2 with FSDP backbone, 8×1) agree."""
  want = _one_device_log(str(tmp_path / 'one'), train_toy.idol_tiny_config())
  out = _run_eight_devices(str(tmp_path / 'eight'), 'idol_tiny_config')
  sharded = [k for k, v in out['4x2']['specs'].items() if k.startswith('params/backbone') and 'data' in v]
  assert sharded, 'the FSDP rule sharded no backbone parameter'
  for name in ('4x2', '8x1'):
    _assert_close(out[name]['log'], want)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_on_loopback_match_one(one_device_log, tmp_path):
  workdir = str(tmp_path)
  address = f'127.0.0.1:{_free_port()}'
  procs = [train_toy.run_main(workdir, '--config.mesh.data=2', mode='train_and_eval', wait=False,
                              env={'JAX_COORDINATOR_ADDRESS': address, 'JAX_NUM_PROCESSES': '2',
                                   'JAX_PROCESS_ID': str(i)})
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, text in zip(procs, outputs):
    assert p.returncode == 0, text[-4000:]
  assert 'process 0 of 2' in outputs[0] and 'process 1 of 2' in outputs[1]
  _assert_close(train_toy.read_log(workdir), one_device_log)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
  # Eval: each process predicts its share of the videos; process 0 gathers and writes the results.
  with open(os.path.join(workdir, 'results.json')) as f:
    assert sorted(r['video_id'] for r in json.load(f)) == [1, 2]
  assert not os.path.exists(os.path.join(workdir, 'eval_parts'))
