"""Checkpoint conversion: readers, rule transforms, strict report (missing / unexpected / mis-shaped), allow
lists, npz without torch, safetensors, orbax round trip."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.models.backbones import resnet_d2
from visjax.models.layers.norms import Frozen

R18_KEYS = 20 * 5  # 20 convs (stem, 16 block convs, 3 shortcuts), each weight + 4 FrozenBN buffers


def _d2_r18_state_dict(seed=0):
  """A torch-layout (OIHW) detectron2 R18 state dict in numpy, built from the NNX model's own shapes."""
  rng = np.random.RandomState(seed)
  model = resnet_d2(18, rngs=nnx.Rngs(0))
  sd = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    key, value = convert.dotted(path), np.asarray(var.get_value())
    if key.endswith('.kernel'):
      sd[key[:-len('kernel')] + 'weight'] = rng.randn(*value.shape).transpose(3, 2, 0, 1).astype(np.float32)
    else:
      sd[key] = (rng.rand(*value.shape) + 0.5).astype(np.float32)
  assert len(sd) == R18_KEYS
  return sd


@pytest.fixture(name='sd')
def fixture_sd():
  return _d2_r18_state_dict()


def _value(model, path):
  return np.asarray(dict((convert.dotted(p), v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model)))[path])


def test_values_land_transposed(sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  report = convert.convert(sd, model, convert.resnet_d2_rules('', ''))
  assert report.ok and len(report.loaded) == R18_KEYS and report.num_values == sum(v.size for v in sd.values())
  np.testing.assert_array_equal(_value(model, 'res3.0.conv2.kernel'), sd['res3.0.conv2.weight'].transpose(2, 3, 1, 0))
  key = 'res4.0.shortcut.norm.running_var'
  np.testing.assert_array_equal(_value(model, key), sd[key])


def test_wrappers_and_module_prefix_are_unwrapped(sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  convert.convert({'model': sd, 'iteration': 3}, model, convert.resnet_d2_rules('', ''))
  convert.convert({'state_dict': {'module.' + k: v for k, v in sd.items()}, 'meta': {}}, model,
                  convert.resnet_d2_rules('', ''))


def test_every_problem_is_reported_and_nothing_written(sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  before = _value(model, 'res2.0.conv1.kernel')
  bad = dict(sd)
  del bad['res3.1.conv2.weight']                                      # missing
  bad['res9.0.conv1.weight'] = np.zeros((4, 4, 1, 1), np.float32)     # extra, no rule
  bad['res2.5.conv1.weight'] = np.zeros((4, 4, 1, 1), np.float32)     # extra, rule but no such path
  bad['res4.0.conv1.weight'] = np.zeros((256, 64, 3, 3), np.float32)   # wrong shape
  bad['stem.conv1.norm.weight'] = np.zeros((65,), np.float32)          # wrong shape
  with pytest.raises(convert.ConversionError) as info:
    convert.convert(bad, model, convert.resnet_d2_rules('', ''))
  msg = str(info.value)
  for needle in ('res3.1.conv2.kernel', 'res9.0.conv1.weight', 'res2.5.conv1.weight', 'res2.5.conv1.kernel',
                 'res4.0.conv1.weight', '(256, 64, 3, 3)', '(3, 3, 64, 256)', '(3, 3, 128, 256)',
                 'stem.conv1.norm.weight', '(65,)', '(64,)'):
    assert needle in msg, needle
  report = info.value.report
  assert [i.nnx_path for i in report.missing] == ['res3.1.conv2.kernel']
  assert {i.torch_key for i in report.unexpected} == {'res9.0.conv1.weight', 'res2.5.conv1.weight'}
  assert {i.torch_key for i in report.mismatched} == {'res4.0.conv1.weight', 'stem.conv1.norm.weight'}
  np.testing.assert_array_equal(_value(model, 'res2.0.conv1.kernel'), before)


def test_allow_lists(sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  init_res4 = _value(model, 'res4.0.conv1.kernel')
  bad = dict(sd)
  del bad['res3.1.conv2.weight']
  bad['criterion.empty_weight'] = np.ones((41,), np.float32)
  bad['res4.0.conv1.weight'] = np.zeros((256, 64, 3, 3), np.float32)
  report = convert.convert(bad, model, convert.resnet_d2_rules('', ''), allow_missing=[r'res3\.1\..*'],
                           allow_unexpected=r'criterion\..*', allow_shape_mismatch=[r'res4\.0\.conv1\.kernel'])
  assert report.ok
  assert [i.nnx_path for i in report.allowed_missing] == ['res3.1.conv2.kernel']
  assert [i.torch_key for i in report.allowed_unexpected] == ['criterion.empty_weight']
  assert [i.torch_key for i in report.allowed_mismatched] == ['res4.0.conv1.weight']
  np.testing.assert_array_equal(_value(model, 'res4.0.conv1.kernel'), init_res4)  # kept at init
  np.testing.assert_array_equal(_value(model, 'res4.0.conv2.kernel'), sd['res4.0.conv2.weight'].transpose(2, 3, 1, 0))
  assert 'allowed shape mismatch' in report.summary()


def test_drop_rules_checks_and_duplicates(sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  sd = dict(sd, **{'res2.0.conv1.norm.num_batches_tracked': np.array(5), 'dup.weight': sd['stem.conv1.weight']})
  rules = convert.resnet_d2_rules('', '') + [convert.duplicate(r'dup\.(weight)', r'stem.conv1.\1')]
  report = convert.convert(sd, model, rules)
  assert sorted(report.dropped) == ['dup.weight', 'res2.0.conv1.norm.num_batches_tracked']
  sd['dup.weight'] = sd['dup.weight'] + 1
  with pytest.raises(convert.ConversionError, match="dup.weight: .*duplicate of 'stem.conv1.weight'.*differ"):
    convert.convert(sd, model, rules)
  no_original = {k: v for k, v in sd.items() if k != 'stem.conv1.weight'}
  with pytest.raises(convert.ConversionError, match='not in the checkpoint'):
    convert.convert(no_original, model, rules, allow_missing=[r'stem\.conv1\.kernel'])
  positive = lambda key, a: None if (a > 0).all() else 'has non-positive values'
  with pytest.raises(convert.ConversionError, match='res2.0.conv1.norm.running_var: .*non-positive'):
    convert.convert(dict(sd, **{'res2.0.conv1.norm.running_var': -sd['res2.0.conv1.norm.running_var']}), model,
                    [convert.drop(r'.*running_var', positive)] + rules, allow_missing=[r'.*running_var'])
  twice = convert.RuleTable([convert.Rule(r'res2\.0\.conv1\.norm\.(weight|bias)', 'res2.0.conv1.norm.weight')])
  with pytest.raises(convert.ConversionError, match='already written'):
    convert.convert(sd, model, twice + convert.resnet_d2_rules('', ''))


def test_transforms():
  w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
  np.testing.assert_array_equal(convert.conv_kernel(w)[1, 2, 0, 1], w[1, 0, 1, 2])
  in_proj = np.arange(12 * 4).reshape(12, 4)
  q, k, v = convert.chunks(3, convert.linear_kernel)(in_proj)
  np.testing.assert_array_equal(k, in_proj[4:8].T)
  qh = convert.chain(convert.linear_kernel, convert.reshape(4, 2, 2))(in_proj[:4])
  assert qh.shape == (4, 2, 2) and qh[1, 1, 0] == in_proj[2, 1]
  with pytest.raises(ValueError, match='equal parts'):
    convert.split(3)(np.zeros((4, 2)))
  with pytest.raises(ValueError, match='linear weight'):
    convert.linear_kernel(np.zeros((2, 2, 2)))
  for key in ('criterion.empty_weight', 'vita_criterion.empty_weight', 'a.bn1.num_batches_tracked'):
    rule, _ = convert.COMMON_DROPS.find(key)
    assert rule.target is None
  assert convert.COMMON_DROPS.find('sem_seg_head.predictor.class_embed.weight') is None
  table = convert.RuleTable([convert.Rule(r'a\.(\d+)', r'b.\1'), convert.Rule(r'a\..*', 'c')])
  rule, m = table.find('a.7')
  assert rule.targets(m) == ('b.7',) and table.find('z') is None


def test_safetensors_round_trip_and_bf16(tmp_path):
  tensors = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.array([1, -2], np.int64),
             'c': np.zeros((0, 4), np.float16), 'd': np.array([True, False])}
  path = tmp_path / 'x.safetensors'
  convert.write_safetensors(path, tensors, metadata={'format': 'pt'})
  back = convert.read_safetensors(path)
  assert sorted(back) == sorted(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k], v)
  # bf16: exactly representable values, written as the top 16 bits of their float32 pattern.
  vals = np.array([1.0, -2.5, 0.15625, 3e38], np.float32)
  raw = (vals.view(np.uint32) >> 16).astype('<u2').tobytes()
  header = ('{"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,%d]}}' % len(raw)).encode()
  path.write_bytes(len(header).to_bytes(8, 'little') + header + raw)
  truncated = (vals.view(np.uint32) >> 16 << 16).view(np.float32)
  np.testing.assert_array_equal(convert.read_safetensors(path)['w'], truncated)
  path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ')
  with pytest.raises(convert.CheckpointFormatError, match='x.safetensors.*JSON'):
    convert.read_safetensors(path)


def test_reader_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    convert.load_state_dict(tmp_path / 'nope.pth')
  (tmp_path / 'w.h5').write_bytes(b'')
  with pytest.raises(convert.CheckpointFormatError, match='w.h5'):
    convert.load_state_dict(tmp_path / 'w.h5')
  with pytest.raises(convert.CheckpointFormatError, match="'meta'.*str"):
    convert.unwrap_state_dict({'w': np.zeros(2), 'meta': 'x'}, source='ckpt')


def test_pth_reader(tmp_path, sd):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'model_final.pth'
  torch.save({'model': {k: torch.from_numpy(v) for k, v in sd.items()}, 'iteration': 1}, path)
  back = convert.load_state_dict(path)
  assert sorted(back) == sorted(sd)
  np.testing.assert_array_equal(back['res5.1.conv2.weight'], sd['res5.1.conv2.weight'])
  bf = tmp_path / 'bf16.pth'
  torch.save({'x': torch.tensor([1.0, 2.5], dtype=torch.bfloat16)}, bf)
  np.testing.assert_array_equal(convert.load_state_dict(bf)['x'], [1.0, 2.5])


def test_npz_conversion_runs_without_torch(tmp_path, sd):
  """Convert from .npz and .safetensors in a fresh interpreter where importing torch fails."""
  np.savez(tmp_path / 'r18.npz', **sd)
  convert.write_safetensors(tmp_path / 'r18.safetensors', {'module.' + k: v for k, v in sd.items()})
  np.save(tmp_path / 'expected.npy', sd['res5.1.conv2.weight'].transpose(2, 3, 1, 0))
  script = textwrap.dedent(f"""
      import sys
      sys.modules['torch'] = None  # any `import torch` now raises ImportError
      import numpy as np
      from flax import nnx
      from visjax import convert
      from visjax.models.backbones import resnet_d2
      expected = np.load({str(tmp_path / 'expected.npy')!r})
      model = resnet_d2(18, rngs=nnx.Rngs(3))
      for name in ('r18.npz', 'r18.safetensors'):
        model.res5[1].conv2.kernel.set_value(np.zeros_like(expected))
        report = convert.convert({str(tmp_path)!r} + '/' + name, model, convert.resnet_d2_rules('', ''))
        assert report.ok, report
        np.testing.assert_array_equal(np.asarray(model.res5[1].conv2.kernel.get_value()), expected)
      print('OK')
  """)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert res.returncode == 0 and 'OK' in res.stdout, res.stderr[-3000:]


def test_orbax_round_trip(tmp_path, sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  convert.convert(sd, model, convert.resnet_d2_rules('', ''))
  path = convert.save_converted(model, tmp_path / 'converted')
  with pytest.raises(FileExistsError):
    convert.save_converted(model, path)
  fresh = resnet_d2(18, rngs=nnx.Rngs(7))
  convert.load_converted(path, fresh)
  x = jnp.asarray(np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32))
  a, b = model(x), fresh(x)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert isinstance(fresh.stem.conv1.kernel, Frozen)  # variable types survive the round trip


def test_abstract_model_is_filled_without_random_init(sd):
  abstract = nnx.eval_shape(lambda: resnet_d2(18, rngs=nnx.Rngs(0)))
  report = convert.convert(sd, abstract, convert.resnet_d2_rules('', ''))
  assert report.ok
  concrete = resnet_d2(18, rngs=nnx.Rngs(1))
  convert.convert(sd, concrete, convert.resnet_d2_rules('', ''))
  x = jnp.asarray(np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32))
  np.testing.assert_array_equal(abstract(x)['res5'], concrete(x)['res5'])
  partial = {k: v for k, v in sd.items() if not k.startswith('res5.1.')}
  with pytest.raises(convert.ConversionError, match=r'res5\.1\.conv1\.kernel.*abstract'):
    convert.convert(partial, nnx.eval_shape(lambda: resnet_d2(18, rngs=nnx.Rngs(0))),
                    convert.resnet_d2_rules('', ''), allow_missing=[r'res5\.1\..*'])


def test_state_input_and_rule_list(sd):
  model = resnet_d2(18, rngs=nnx.Rngs(1))
  state = nnx.state(model)
  report = convert.convert(sd, state, list(convert.resnet_d2_rules('', '')))  # a plain list of rules works too
  assert report.ok
  nnx.update(model, state)
  np.testing.assert_array_equal(_value(model, 'res3.0.conv2.kernel'), sd['res3.0.conv2.weight'].transpose(2, 3, 1, 0))
  with pytest.raises(TypeError, match='nnx.Module or nnx.State'):
    convert.convert(sd, {'a': 1}, convert.resnet_d2_rules('', ''))
