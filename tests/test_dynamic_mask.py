"""CondInst dynamic mask head: float64 torch references for aligned_bilinear, the dynamic convs and the mask branch."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.models.heads import dynamic_mask
from visjax.models.layers import resize

torch = pytest.importorskip('torch')
from torch_refs import idol_ref  # pylint: disable=g-import-not-at-top


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize('factor,h,w', [(2, 5, 7), (2, 1, 3), (4, 3, 6), (3, 4, 4)])
def test_aligned_bilinear_matches_torch(factor, h, w):
  x = np.random.default_rng(factor).normal(size=(2, 3, h, w))
  expected = idol_ref.aligned_bilinear(torch.from_numpy(x), factor).numpy()
  got = np.asarray(resize.aligned_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), factor))
  assert got.shape == (2, factor * h, factor * w, 3)
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), expected, atol=1e-5)


def test_parse_dynamic_params_layout():
  """Weights are row-major (out, in) blocks [80, 64, 8], then biases [8, 8, 1], as the official reshape."""
  weight_nums, bias_nums = dynamic_mask.dynamic_param_sizes(8, 8, 3, True)
  assert (weight_nums, bias_nums) == ([80, 64, 8], [8, 8, 1])
  params = jnp.arange(169, dtype=jnp.float32)[None]
  weights, biases = dynamic_mask.parse_dynamic_params(params, weight_nums, bias_nums)
  assert [w.shape for w in weights] == [(1, 8, 10), (1, 8, 8), (1, 1, 8)]
  assert float(weights[0][0, 2, 3]) == 2 * 10 + 3
  assert float(weights[1][0, 1, 0]) == 80 + 8
  assert float(weights[2][0, 0, 7]) == 80 + 64 + 7
  np.testing.assert_array_equal(np.asarray(biases[0][0]), np.arange(152, 160))
  np.testing.assert_array_equal(np.asarray(biases[2][0]), [168])
  with pytest.raises(ValueError, match='expected 169'):
    dynamic_mask.parse_dynamic_params(params[:, :100], weight_nums, bias_nums)


def _random_case(seed, b=2, q=5, h=6, w=9):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(b, 8, h, w))
  refs = rng.uniform(0, 1, size=(b, q, 2)) * np.array([w * 8, h * 8])
  params = rng.normal(size=(b, q, 169)) * 0.3
  params[..., :80] *= 0.05  # keep the coordinate terms (pixels) in a sane range
  return feats, refs, params


def test_dynamic_mask_logits_match_float64_reference():
  feats, refs, params = _random_case(0)
  expected = idol_ref.dynamic_mask_logits(torch.from_numpy(feats), torch.from_numpy(refs),
                                          torch.from_numpy(params)).numpy()
  got = dynamic_mask.dynamic_mask_logits(jnp.asarray(feats.transpose(0, 2, 3, 1), jnp.float32),
                                         jnp.asarray(refs, jnp.float32), jnp.asarray(params, jnp.float32))
  assert got.shape == (2, 5, 12, 18)
  assert rel_err(got, expected) < 1e-5


def test_rel_coord_scale_divides_coordinates():
  """Normalising the relative coordinates by s equals scaling the coordinate weights by 1/s."""
  feats, refs, params = _random_case(1)
  feats = jnp.asarray(feats.transpose(0, 2, 3, 1), jnp.float32)
  scaled = params.copy().reshape(2, 5, 169)
  w0 = scaled[..., :80].reshape(2, 5, 8, 10)
  w0[..., :2] /= 64.
  scaled[..., :80] = w0.reshape(2, 5, 80)
  a = dynamic_mask.dynamic_mask_logits(feats, jnp.asarray(refs, jnp.float32), jnp.asarray(params, jnp.float32),
                                       rel_coord_scale=64.)
  b = dynamic_mask.dynamic_mask_logits(feats, jnp.asarray(refs, jnp.float32), jnp.asarray(scaled, jnp.float32))
  assert rel_err(a, b) < 1e-5
  # Per-instance scales broadcast over [B, Q].
  c = dynamic_mask.dynamic_mask_logits(feats, jnp.asarray(refs, jnp.float32), jnp.asarray(params, jnp.float32),
                                       rel_coord_scale=jnp.full((2, 5), 64.))
  assert rel_err(c, a) < 1e-6


@pytest.mark.parametrize('out_channels', [None, 8])  # None: the official dim // 32
def test_mask_head_small_conv_matches_torch(out_channels):
  torch.manual_seed(0)
  ref = idol_ref.MaskHeadSmallConv(64, out_channels).double().eval()
  head = dynamic_mask.MaskHeadSmallConv(64, out_channels, rngs=nnx.Rngs(0))
  rules = convert.RuleTable([convert.Rule(r'(lay[1-4]|dcn)\.weight', r'\1.kernel', convert.conv_kernel),
                             convert.Rule(r'(lay[1-4]|dcn)\.bias', r'\1.bias')])
  convert.convert({k: v.numpy() for k, v in ref.state_dict().items()}, head, rules)
  rng = np.random.default_rng(0)
  # 50x70 image padded to 64x96: stride 8/16/32 maps 8x12, 4x6, 2x3.
  maps = [rng.normal(size=(2, 64, h, w)) for h, w in ((8, 12), (4, 6), (2, 3))]
  with torch.no_grad():
    expected = ref([torch.from_numpy(m) for m in maps]).numpy()
  got = head([jnp.asarray(m.transpose(0, 2, 3, 1), jnp.float32) for m in maps])
  assert got.shape == (2, 8, 12, out_channels or 2)
  assert rel_err(np.asarray(got).transpose(0, 3, 1, 2), expected) < 1e-5
  with pytest.raises(ValueError, match='expected 3 feature maps'):
    head([jnp.asarray(m.transpose(0, 2, 3, 1)) for m in maps[:2]])
