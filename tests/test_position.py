"""Sine position embeddings vs the official torch formulas, on every cell including all-padding rows / columns."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visjax.models.layers import position

torch = pytest.importorskip('torch')
from torch_refs import position_ref  # pylint: disable=g-import-not-at-top,wrong-import-position

# float32 sin/cos of XLA CPU and torch CPU differ by at most 1 ulp of the result (measured in
# test_sin_cos_of_huge_arguments_match_torch); everything before them is bitwise identical.
ATOL = 1.2e-7


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def _padding_masks(rng: np.random.Generator) -> list[np.ndarray]:
  """Bottom/right padding (with all-padding rows and columns, a fully padded image, an unpadded one), the IDOL
  strides of a 360x640 frame in a 384x640 batch, and random masks."""
  masks = []
  for b, h, w in ((3, 7, 9), (2, 48, 80), (4, 1, 5), (2, 24, 40)):
    m = np.ones((b, h, w), bool)
    m[0, :, :] = False  # unpadded
    m[1, :max(h - 2, 1), :max(w - 3, 1)] = False  # all-padding rows and columns
    if b > 2:
      m[2, :h, :1] = False  # one valid column: every other column is all padding
    # (image 3, if any, stays fully padded)
    masks.append(m)
  for stride in (8, 16, 32, 64):  # 360x640 content in a 384x640 batch (stride 64: the extra level)
    hp, wp = -(-384 // stride), -(-640 // stride)
    m = np.ones((1, hp, wp), bool)
    m[0, :-(-360 // stride), :-(-640 // stride)] = False
    masks.append(m)
  masks.append(rng.random((2, 11, 13)) < 0.4)  # arbitrary patterns
  return masks


@pytest.mark.parametrize('offset', [-0.5, 0.])
@pytest.mark.parametrize('num_pos_feats', [16, 128])
def test_masked_embedding_matches_official_torch_on_every_cell(offset, num_pos_feats):
  embed = jax.jit(lambda m: position.sine_position_embedding(m, num_pos_feats, offset=offset))
  reference = position_ref.PositionEmbeddingSine(num_pos_feats, offset=offset)
  for mask in _padding_masks(np.random.default_rng(0)):
    expected = reference(torch.from_numpy(mask)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(embed(jnp.asarray(mask)))
    assert got.shape == expected.shape == mask.shape + (2 * num_pos_feats,)
    # Padded cells too: at an all-padding row / column the argument is ~ -3.1e6 / dim_t.
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=str(mask.shape))
    assert rel_err(got, expected) < 1e-7


def test_all_padding_rows_reach_huge_arguments():
  """The case the official arithmetic has to be reproduced for: coordinate -0.5 / 1e-6 * 2pi at all-padding
  rows / columns, then true divisions by dim_t (a reciprocal multiply is off by up to 0.25 rad there)."""
  mask = np.ones((1, 4, 6), bool)
  mask[0, :2, :3] = False
  expected = position_ref.PositionEmbeddingSine(64)(torch.from_numpy(mask)).permute(0, 2, 3, 1).numpy()
  got = np.asarray(jax.jit(lambda m: position.sine_position_embedding(m, 64))(jnp.asarray(mask)))
  # pos_x channel 2 (sin of x / dim_t[2]) in row 3 (all padding): x = -3141592.8 / 10000^(1/32).
  x = np.float32(np.float32(-0.5) / np.float32(1e-6)) * np.float32(2 * math.pi)
  arg = np.float64(x / position.frequencies(64, 10000.)[2])
  assert abs(arg) > 2e6
  np.testing.assert_allclose(got[0, 3, 0, 64 + 2], np.sin(arg), atol=ATOL)
  np.testing.assert_allclose(got[0, 3], expected[0, 3], rtol=0, atol=ATOL)
  # The same cells with a reciprocal multiply (what XLA makes of `x / dim_t` unguarded) are visibly wrong.
  dim_t = position.frequencies(64, 10000.)
  recip = np.float32(x) * (np.float32(1) / dim_t)
  assert np.abs(np.sin(recip.astype(np.float64)) - np.sin(np.float64(x / dim_t))).max() > 0.05


def test_divisions_survive_xla_optimisation():
  """Every division of the embedding is still an elementwise `divide` of full-shape operands in the optimised
  HLO: XLA has not rewritten `x / broadcast(b)` or `x / constant` into a multiply by a reciprocal (whose
  `divide` would have the divisor's smaller shape)."""
  b, h, w, f = 2, 5, 7, 16
  hlo = jax.jit(lambda m: position.sine_position_embedding(m, f)).lower(
      jnp.zeros((b, h, w), bool)).compile().as_text()
  shapes = re.findall(r'= f32\[([\d,]*)\]\{[\d,]*\} divide\(', hlo)
  full = {f'{b},{h},{w}', f'{b},{h},{w},{f}', f'{b},{h},{w},{f // 2}'}  # (XLA may split sin / cos halves)
  assert shapes and set(shapes) <= full, shapes
  assert shapes.count(f'{b},{h},{w}') >= 2 and sum(s.count(',') == 3 for s in shapes) >= 2, shapes
  # Only the two `* scale` multiplies remain ([B, H, W]); no multiply at the frequency shape.
  assert not re.findall(rf'= f32\[{b},{h},{w},\d+\]\{{[\d,]*\}} multiply\(', hlo)


def test_frequencies_equal_torch():
  for f in (16, 64, 128):
    dim_t = torch.arange(f, dtype=torch.float32)
    np.testing.assert_array_equal(position.frequencies(f, 10000.), (10000 ** (2 * (dim_t // 2) / f)).numpy())
  with pytest.raises(ValueError, match='must be even'):
    position.frequencies(7, 10000.)


def test_sin_cos_of_huge_arguments_match_torch():
  """Measured: XLA CPU's float32 sin/cos and torch CPU's agree to 1 ulp (6e-8) on arguments up to 3.2e6 (both
  reduce the range exactly; the float64 value is within 3.3e-8 of either)."""
  args = (np.float32(-3.2e6) * np.linspace(1e-3, 1., 20001, dtype=np.float32)).astype(np.float32)
  for jfn, tfn, npfn in ((jnp.sin, torch.sin, np.sin), (jnp.cos, torch.cos, np.cos)):
    got = np.asarray(jax.jit(jfn)(args))
    expected = tfn(torch.from_numpy(args)).numpy()
    assert np.abs(got - expected).max() <= 6e-8
    assert np.abs(got - npfn(args.astype(np.float64))).max() <= 4e-8


def test_lstt_zero_based_variant_matches_iai():
  for h, w in ((4, 6), (1, 3), (15, 20)):
    expected = position_ref.LSTTPositionEmbeddingSine(64)(torch.zeros(1, 8, h, w)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(jax.jit(lambda: position.sine_position_embedding_unmasked(
        1, h, w, 64, offset=0., zero_based=True))())
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_unmasked_offset_zero_rows():
  """Mask2Former / VITA: row k (1-based) sits at k / H * 2pi."""
  un = np.asarray(position.sine_position_embedding_unmasked(1, 4, 3, 8))
  np.testing.assert_allclose(un[0, :, 0, 0], np.sin(np.arange(1, 5) / (4 + 1e-6) * 2 * np.pi), atol=1e-6)
  np.testing.assert_allclose(un[0, 0, :, 9], np.cos(np.arange(1, 4) / (3 + 1e-6) * 2 * np.pi), atol=1e-6)
  with pytest.raises(ValueError, match=r'mask must be \[B, H, W\]'):
    position.sine_position_embedding(jnp.zeros((4, 3), bool))
