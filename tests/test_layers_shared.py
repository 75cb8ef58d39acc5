"""Shared layers against torch (CPU): MultiheadAttention with masks, bilinear resize, ConvNorm, trainable
BatchNorm, drop path. References are plain torch modules / functions fed the same weights."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from visjax.models.layers import attention
from visjax.models.layers import conv
from visjax.models.layers import drop
from visjax.models.layers import norms
from visjax.models.layers import resize

torch = pytest.importorskip('torch')
F = torch.nn.functional
pytestmark = pytest.mark.torch


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def t(x):
  return torch.from_numpy(np.asarray(x, np.float32).copy())


def _load_mha(ref: 'torch.nn.MultiheadAttention', mha: attention.MultiheadAttention, c: int):
  w, bias = ref.in_proj_weight.detach().numpy(), ref.in_proj_bias.detach().numpy()
  for i, proj in enumerate((mha.q_proj, mha.k_proj, mha.v_proj)):
    proj.kernel[...] = jnp.asarray(w[i * c:(i + 1) * c].T)
    proj.bias[...] = jnp.asarray(bias[i * c:(i + 1) * c])
  mha.out_proj.kernel[...] = jnp.asarray(ref.out_proj.weight.detach().numpy().T)
  mha.out_proj.bias[...] = jnp.asarray(ref.out_proj.bias.detach().numpy())


@pytest.mark.parametrize('masks', ['none', 'key_padding', 'bool_attn', 'float_attn', 'both', 'per_head'])
def test_multihead_attention_matches_torch(masks):
  rng = np.random.default_rng(0)
  b, q, k, c, h = 2, 5, 7, 16, 4
  torch.manual_seed(0)
  ref = torch.nn.MultiheadAttention(c, h, batch_first=True)
  with torch.no_grad():
    ref.in_proj_bias.normal_()
    ref.out_proj.bias.normal_()
  mha = attention.MultiheadAttention(c, h, rngs=nnx.Rngs(0))
  _load_mha(ref, mha, c)
  query, key, value = (rng.normal(size=(b, n, c)).astype(np.float32) for n in (q, k, k))
  kpm = np.zeros((b, k), bool)
  kpm[0, -2:] = True
  bool_mask = rng.random((q, k)) < 0.3
  bool_mask[:, 0] = False  # no fully masked row (torch gives NaN there)
  float_mask = np.where(rng.random((b, q, k)) < 0.3, -1000., 0.).astype(np.float32)
  head_mask = rng.random((b * h, q, k)) < 0.3
  head_mask[..., 0] = False
  kw_t, kw_j = {}, {}
  if masks in ('key_padding', 'both'):
    kw_t['key_padding_mask'], kw_j['key_padding_mask'] = t(kpm).bool(), jnp.asarray(kpm)
  if masks in ('bool_attn', 'both'):
    kw_t['attn_mask'], kw_j['attn_mask'] = t(bool_mask).bool(), jnp.asarray(bool_mask)
  if masks == 'float_attn':
    kw_t['attn_mask'] = t(float_mask).repeat_interleave(h, 0)
    kw_j['attn_mask'] = jnp.asarray(float_mask)
  if masks == 'per_head':
    kw_t['attn_mask'], kw_j['attn_mask'] = t(head_mask).bool(), jnp.asarray(head_mask)
  want = ref(t(query), t(key), t(value), need_weights=False, **kw_t)[0].detach().numpy()
  got = mha(jnp.asarray(query), jnp.asarray(key), jnp.asarray(value), **kw_j)
  assert rel(got, want) < 1e-6


def test_multihead_attention_dropout_path_equals_xla_path_at_rate_zero_weights():
  """The manual (dropout) path and the dot_product_attention path agree when the dropout keeps everything."""
  rng = np.random.default_rng(1)
  mha = attention.MultiheadAttention(8, 2, dropout=1e-12, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(1, 4, 8)), jnp.float32)
  kpm = jnp.asarray([[False, False, True, False]])
  a = mha(x, x, x, key_padding_mask=kpm, deterministic=True)
  b = mha(x, x, x, key_padding_mask=kpm, deterministic=False, rngs=nnx.Rngs(dropout=0))
  assert rel(b, a) < 1e-6


@pytest.mark.parametrize('in_hw,out_hw,align,scale', [
    ((5, 7), (11, 13), False, None), ((12, 20), (3, 5), False, None), ((6, 9), (12, 18), False, 2.0),
    ((5, 7), (11, 13), True, None), ((7, 4), (7, 4), False, None), ((10, 16), (40, 64), False, 4.0),
    ((9, 9), (1, 1), True, None)])
def test_resize_bilinear_matches_torch(in_hw, out_hw, align, scale):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3) + in_hw).astype(np.float32)
  kw = dict(scale_factor=scale) if scale else dict(size=out_hw)
  want = F.interpolate(t(x), mode='bilinear', align_corners=align, **kw).numpy()
  got = resize.resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), out_hw, align_corners=align,
                               scale_factor=scale)
  got = np.asarray(got).transpose(0, 3, 1, 2)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-6)


def test_resize_bilinear_carries_trailing_axes():
  x = jnp.arange(2 * 4 * 6 * 3 * 2, dtype=jnp.float32).reshape(2, 4, 6, 3, 2)
  y = resize.resize_bilinear(x, (8, 12))
  assert y.shape == (2, 8, 12, 3, 2)
  z = resize.resize_bilinear(x[..., 1], (8, 12))
  np.testing.assert_allclose(np.asarray(y[..., 1]), np.asarray(z), rtol=1e-6)


@pytest.mark.parametrize('norm,act', [('GN', 'relu'), (None, None), ('BN', 'relu'), ('FrozenBN', None)])
def test_conv_norm_matches_torch(norm, act):
  rng = np.random.default_rng(3)
  cin, cout = 6, 32
  torch.manual_seed(1)
  tconv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1)
  layers = [tconv]
  if norm == 'GN':
    tnorm = torch.nn.GroupNorm(32, cout)
  elif norm in ('BN', 'FrozenBN'):
    tnorm = torch.nn.BatchNorm2d(cout).eval()
  if norm:
    with torch.no_grad():
      tnorm.weight.normal_()
      tnorm.bias.normal_()
      if norm != 'GN':
        tnorm.running_mean.normal_()
        tnorm.running_var.uniform_(0.5, 2.)
    layers.append(tnorm)
  if act:
    layers.append(torch.nn.ReLU())
  ref = torch.nn.Sequential(*layers)
  m = conv.ConvNorm(cin, cout, 3, 2, norm=norm, activation=act, rngs=nnx.Rngs(0))
  m.conv.kernel[...] = jnp.asarray(tconv.weight.detach().numpy().transpose(2, 3, 1, 0))
  m.conv.bias[...] = jnp.asarray(tconv.bias.detach().numpy())
  if norm == 'GN':
    m.norm.scale[...] = jnp.asarray(tnorm.weight.detach().numpy())
    m.norm.bias[...] = jnp.asarray(tnorm.bias.detach().numpy())
  elif norm:
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      getattr(m.norm, name).set_value(jnp.asarray(getattr(tnorm, name).detach().numpy()))
  x = rng.normal(size=(2, cin, 9, 11)).astype(np.float32)
  want = ref(t(x)).detach().numpy().transpose(0, 2, 3, 1)
  got = m(jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert rel(got, want) < 1e-5


def test_batchnorm_training_mode_matches_torch():
  rng = np.random.default_rng(4)
  c = 5
  ref = torch.nn.BatchNorm2d(c, momentum=0.1).train()
  with torch.no_grad():
    ref.weight.normal_()
    ref.bias.normal_()
  bn = norms.BatchNorm2d(c)
  bn.weight.set_value(jnp.asarray(ref.weight.detach().numpy()))
  bn.bias.set_value(jnp.asarray(ref.bias.detach().numpy()))
  for step in range(3):
    x = (rng.normal(size=(3, c, 6, 7)) * (step + 1) + step).astype(np.float32)
    want = ref(t(x)).detach().numpy().transpose(0, 2, 3, 1)
    got = bn(jnp.asarray(x.transpose(0, 2, 3, 1)), use_running_average=False)
    assert rel(got, want) < 1e-5
  np.testing.assert_allclose(np.asarray(bn.running_mean.get_value()), ref.running_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.running_var.get_value()), ref.running_var.numpy(), rtol=1e-5)
  ref.eval()
  x = rng.normal(size=(2, c, 4, 4)).astype(np.float32)
  want = ref(t(x)).detach().numpy().transpose(0, 2, 3, 1)
  assert rel(bn(jnp.asarray(x.transpose(0, 2, 3, 1))), want) < 1e-5


def test_batchnorm_statistics_update_inside_jit_through_nnx_split():
  bn = norms.BatchNorm2d(3)
  graphdef, state = nnx.split(bn)

  @jax.jit
  def step(state, x):
    m = nnx.merge(graphdef, state)
    y = m(x, use_running_average=False)
    return y, nnx.state(m)

  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  _, new_state = step(state, x)
  mean = np.asarray(x).reshape(-1, 3).mean(0)
  np.testing.assert_allclose(np.asarray(new_state['running_mean'].get_value()), 0.1 * mean, rtol=1e-6)


def test_drop_path_drops_whole_samples():
  dp = drop.drop_path(0.5, 3)
  x = jnp.ones((64, 5, 4))
  y = np.asarray(dp(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
  per_sample = y.reshape(64, -1)
  assert set(np.unique(per_sample)) <= {0., 2.}
  assert np.all(per_sample.min(1) == per_sample.max(1))  # one decision per sample
  assert 10 < (per_sample[:, 0] == 0).sum() < 54
  assert drop.drop_path(0., 3) is None
  with pytest.raises(ValueError, match='rate'):
    drop.drop_path(1.0, 3)
