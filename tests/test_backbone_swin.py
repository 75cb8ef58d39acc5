"""Swin (D2SwinTransformer): parity with a torch reference, padding, shifted-window mask, drop path, Swin-L
checkpoint layout."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.models.backbones import SWIN_L, SwinConfig, SwinTransformer
from visjax.models.backbones import swin

torch = pytest.importorskip('torch')
from torch_refs import parity, swin_ref  # pylint: disable=g-import-not-at-top

# One compiled program per input shape instead of hundreds of eagerly dispatched ops.
_forward = nnx.jit(lambda model, x: model(x))

SMALL = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=7, drop_path_rate=0.2)


@pytest.fixture(name='pair', scope='module')
def fixture_pair():
  ref = swin_ref.randomize_(swin_ref.D2SwinTransformer(32, (2, 2, 2, 2), (2, 4, 8, 16), 7), seed=3)
  model = nnx.eval_shape(lambda: SwinTransformer(SMALL, rngs=nnx.Rngs(0)))  # every weight comes from `ref`
  nnx.reseed(model, default=0)  # RNG state is not in checkpoints: give the abstract model real keys
  model.eval()
  report = convert.convert({'backbone.' + k: v for k, v in ref.state_dict().items()}, model,
                           convert.swin_rules('backbone.', '', window_size=7))
  assert report.ok and len(report.dropped) == 8  # the 8 relative_position_index buffers, checked
  return ref, model


@pytest.mark.parametrize('hw', [(70, 90), (64, 64)])
def test_parity_with_torch(pair, hw):
  """70x90: not a multiple of the patch (4) nor of the window (7) at any stage -> every padding path runs."""
  ref, model = pair
  x = np.random.RandomState(1).randn(2, *hw, 3).astype(np.float32)
  expected = parity.run_torch(ref, x)
  out = _forward(model, jnp.asarray(x))
  assert sorted(out) == ['res2', 'res3', 'res4', 'res5']
  for name, want in expected.items():
    assert out[name].shape == want.shape
    err = parity.rel_err(out[name], want)
    assert err <= 1e-5, f'{name}: rel err {err:.2e}'


def test_out_features_subset(pair):
  _, model = pair
  sub = nnx.eval_shape(lambda: SwinTransformer(SMALL, out_features=('res3',), rngs=nnx.Rngs(1)))
  nnx.update(sub, nnx.state(model))
  sub.eval()
  x = jnp.asarray(np.random.RandomState(2).randn(1, 64, 64, 3).astype(np.float32))
  out = _forward(sub, x)
  assert list(out) == ['res3']
  np.testing.assert_allclose(out['res3'], _forward(model, x)['res3'], rtol=1e-6, atol=1e-6)


def test_relative_position_index_and_mask():
  idx = swin.relative_position_index(2)  # offsets (dy, dx) in {-1,0,1}^2 -> (dy+1)*3 + (dx+1)
  np.testing.assert_array_equal(idx[0], [4, 3, 1, 0])
  np.testing.assert_array_equal(idx[3], [8, 7, 5, 4])
  mask = swin.shift_attention_mask(4, 4, 2, 1)  # 4 windows of 2x2; only the first is one region
  assert mask.shape == (4, 4, 4) and not mask[0].any()
  np.testing.assert_array_equal(mask[3] == 0, np.eye(4, dtype=bool))  # corner window: 4 regions


def test_drop_path_train_vs_eval(pair):
  _, model = pair
  x = jnp.asarray(np.random.RandomState(3).randn(4, 32, 32, 3).astype(np.float32))
  eval_out = _forward(model, x)['res5']
  model.train()
  try:
    a, b = _forward(model, x)['res5'], _forward(model, x)['res5']
  finally:
    model.eval()
  assert not np.allclose(a, b)              # stochastic in train mode (the RNG state advances)
  assert not np.allclose(a, eval_out)
  np.testing.assert_array_equal(_forward(model, x)['res5'], eval_out)  # deterministic in eval mode


def test_swin_l_checkpoint_layout():
  """Every key and shape of a Swin-L checkpoint (torch meta tensors, no memory) maps onto the NNX model."""
  with torch.device('meta'):
    ref = swin_ref.D2SwinTransformer(192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
  abstract = nnx.eval_shape(lambda: SwinTransformer(SWIN_L, rngs=nnx.Rngs(0)))
  shapes = {convert.dotted(p): tuple(v.get_value().shape)
            for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
  rules = convert.swin_rules('backbone.', '', window_size=12)
  seen = set()
  for key, tensor in ref.state_dict().items():
    rule, m = rules.find('backbone.' + key)
    if rule.target is None:
      assert key.endswith('relative_position_index')
      continue
    (path,) = rule.targets(m)
    assert shapes[path] == rule.transform(np.empty(tuple(tensor.shape), np.float32)).shape, key
    seen.add(path)
  assert seen == set(shapes)
  assert sum(int(np.prod(s)) for s in shapes.values()) == sum(p.numel() for p in ref.parameters())


def test_wrong_window_size_fails_loudly(pair):
  ref, model = pair
  with pytest.raises(convert.ConversionError, match='relative_position_index'):
    convert.convert(ref.state_dict(), model, convert.swin_rules('', '', window_size=12))


def test_bfloat16_compute_close_to_float32(pair):
  _, model = pair
  low = nnx.eval_shape(lambda: SwinTransformer(SMALL, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  nnx.update(low, nnx.state(model))
  low.eval()
  x = jnp.asarray(np.random.RandomState(4).randn(1, 64, 64, 3).astype(np.float32))
  ref, out = _forward(model, x), _forward(low, x)
  for name in ref:
    assert out[name].dtype == jnp.bfloat16
    assert parity.rel_err(np.asarray(out[name], np.float32), np.asarray(ref[name])) < 3e-2, name
