"""IDOL criterion vs a torch re-implementation of the official SetCriterion / matcher / select_pos_neg."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import idol_common
from tests.idol_fixtures import synthetic_batch, synthetic_outputs
from visjax.models.idol import criterion

torch = pytest.importorskip('torch')
from tests import idol_reference  # pylint: disable=g-import-not-at-top,wrong-import-position


def _jit_loss(loss_config):
  return jax.jit(lambda o, b, r: criterion.idol_loss(o, b, rng=r, loss_config=loss_config))


def _official_loss_config():
  """`config.loss` of the official IDOL recipe (configs/idol_common.py)."""
  return idol_common.idol_config(num_classes=40).loss


def _parity_config():
  cfg = _official_loss_config()
  cfg.contrast_aux_neg_ratio = 10 ** 6  # keep every negative in the aux loss (the reference has no sampling)
  return criterion.loss_settings(cfg)


_parity_loss = _jit_loss(_parity_config())  # compiled once for all tests of the same shapes
_value_and_grad = jax.jit(jax.value_and_grad(
    lambda o, b, r: criterion.idol_loss(o, b, rng=r, loss_config=criterion.loss_settings(_official_loss_config())),
    has_aux=True))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_idol_loss_matches_official_reference(seed):
  rng = np.random.default_rng(seed)
  batch = synthetic_batch(rng)
  outputs = synthetic_outputs(rng, batch)
  total, terms = _parity_loss(outputs, batch, jax.random.key(0))
  ref = idol_reference.idol_reference_loss(outputs, batch)
  assert sorted(terms) == sorted(ref)
  assert len(terms) == 5 * 2 + 2  # five detection terms per layer + reid + reid_aux
  for name, value in ref.items():
    out = float(terms[name])
    assert abs(out - value) <= 1e-4 * max(abs(value), 1e-3), (name, out, value)
  np.testing.assert_allclose(float(total), sum(ref.values()), rtol=1e-4)
  assert float(terms['loss_reid']) > 0 and float(terms['loss_mask']) > 0


def test_idol_loss_gradients_and_no_gt():
  rng = np.random.default_rng(3)
  batch = synthetic_batch(rng)
  outputs = synthetic_outputs(rng, batch)
  _, grads = _value_and_grad(outputs, batch, jax.random.key(1))
  for name, g in grads.items():
    assert np.all(np.isfinite(g)), name
    assert np.any(np.asarray(g) != 0), name
  # No instance at all: detection terms reduce to the all-negative focal loss, everything else is 0.
  empty = dict(batch, instance_valid=np.zeros_like(batch['instance_valid']),
               present=np.zeros_like(batch['present']))
  (total, terms), _ = _value_and_grad(outputs, empty, jax.random.key(0))
  assert np.isfinite(float(total))
  for name, value in terms.items():
    if name.startswith('loss_ce'):
      assert float(value) > 0
    else:
      assert float(value) == 0., name


def test_deep_supervision_off_and_weights():
  rng = np.random.default_rng(4)
  batch = synthetic_batch(rng)
  outputs = synthetic_outputs(rng, batch)
  _, terms = _parity_loss(outputs, batch, jax.random.key(0))
  cfg = dataclasses.replace(_parity_config(), deep_supervision=False, dice_weight=1.)
  _, terms2 = _jit_loss(cfg)(outputs, batch, jax.random.key(0))
  assert sorted(terms2) == sorted(criterion._WEIGHT_FIELDS)
  for name in terms2:  # the last layer's terms do not depend on the auxiliary layers
    scale = 5. if name == 'loss_dice' else 1.
    np.testing.assert_allclose(float(terms[name]), scale * float(terms2[name]), rtol=1e-5)
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['unlisted'\]"):
    bad = _official_loss_config()
    bad.unlisted = 1.
    criterion.loss_settings(bad)


def test_negative_sampling_counts():
  rng = np.random.default_rng(5)
  pos = rng.uniform(size=(3, 4, 50)) < 0.05
  pos[0, 0] = False  # no positive: 10 negatives
  neg = rng.uniform(size=(3, 4, 50)) < 0.8
  neg[1, 1, :] = False
  neg[1, 1, :3] = True  # fewer negatives than wanted
  sampled = np.asarray(criterion._sample_negatives(jax.random.key(0), jnp.asarray(pos), jnp.asarray(neg), 10))
  assert not np.any(sampled & ~neg)
  n_pos, n_neg = pos.sum(-1), neg.sum(-1)
  want = np.minimum(np.where(n_pos == 0, 10, 10 * n_pos), n_neg)
  np.testing.assert_array_equal(sampled.sum(-1), want)
  other = np.asarray(criterion._sample_negatives(jax.random.key(1), jnp.asarray(pos), jnp.asarray(neg), 10))
  assert np.any(other != sampled), 'different keys sample different negatives'


def test_mask_targets():
  rng = np.random.default_rng(6)
  m = (rng.uniform(size=(2, 3, 40, 50)) < 0.5).astype(np.uint8)
  out = np.asarray(criterion.mask_targets(jnp.asarray(m), (10, 13)))
  padded = np.zeros((2, 3, 64, 64), np.uint8)
  padded[..., :40, :50] = m
  np.testing.assert_array_equal(out, padded[..., 2::4, 2::4][..., :10, :13])
