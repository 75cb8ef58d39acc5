"""Deformable transformer: parity with a torch CPU reference, padding masks, position encoding, input projection."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.convert import rules_idol
from visjax.models.layers.mlp import MLP
from visjax.models.layers import position
from visjax.models.layers import resize
from visjax.models.transformers import deformable

D_MODEL, HEADS, LEVELS, QUERIES, ENC, DEC = 64, 4, 4, 12, 2, 2
LEVEL_SHAPES = ((12, 16), (6, 8), (3, 4), (2, 2))


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


class _Wrapper(nnx.Module):
  """A transformer plus per-layer box heads, named like the torch reference (`transformer`, `bbox_embed`)."""

  def __init__(self, rngs, remat=False):
    self.transformer = deformable.DeformableTransformer(D_MODEL, HEADS, ENC, DEC, 96, 0.1, LEVELS, 2, 3,
                                                        remat=remat, rngs=rngs)
    self.bbox_embed = nnx.List([MLP(D_MODEL, D_MODEL, 4, 3, rngs=rngs) for _ in range(DEC)])

  def __call__(self, srcs, masks, pos, query_embed, **kwargs):
    return self.transformer(srcs, masks, pos, query_embed, list(self.bbox_embed), **kwargs)


def _wrapper_rules():
  return (rules_idol.deformable_transformer_rules('transformer.', 'transformer.')
          + [convert.Rule(r'bbox_embed\.(\d+\.layers\.\d+)\.weight', r'bbox_embed.\1.kernel', convert.linear_kernel),
             convert.Rule(r'bbox_embed\.(\d+\.layers\.\d+)\.bias', r'bbox_embed.\1.bias'),
             convert.drop(r'transformer\.decoder\.bbox_embed\..*')])


def _masks(valid_hw, shapes):
  """Per-level pad masks `[B, H_l, W_l]` for unpadded sizes given at the finest level."""
  out = []
  for h, w in shapes:
    m = np.ones((len(valid_hw), h, w), bool)
    for i, (vh, vw) in enumerate(valid_hw):
      m[i, :math.ceil(vh * h / shapes[0][0]), :math.ceil(vw * w / shapes[0][1])] = False
    out.append(m)
  return out


@pytest.fixture(scope='module')
def torch_and_jax():
  torch = pytest.importorskip('torch')
  from torch_refs import idol_ref  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)

  class TorchWrapper(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.transformer = idol_ref.DeformableTransformer(D_MODEL, HEADS, ENC, DEC, 96, LEVELS, 3, 2)
      self.bbox_embed = torch.nn.ModuleList([idol_ref.MLP(D_MODEL, D_MODEL, 4, 3) for _ in range(DEC)])
      self.transformer.decoder.bbox_embed = self.bbox_embed

  ref = TorchWrapper().eval()
  with torch.no_grad():  # move the boxes away from the trivial all-zero start
    for p in ref.parameters():
      p.mul_(1.5)
  model = _Wrapper(nnx.Rngs(0))
  report = convert.convert({k: v.numpy() for k, v in ref.state_dict().items()}, model, _wrapper_rules())
  assert report.ok
  return torch, idol_ref, ref, model


def _run_both(torch, idol_ref, ref, model, valid_hw, shapes, seed=0):
  from torch_refs import position_ref  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  b = len(valid_hw)
  srcs = [rng.normal(size=(b, h, w, D_MODEL)).astype(np.float32) for h, w in shapes]
  masks = _masks(valid_hw, shapes)
  # Each side computes its own position embedding (torch: the official formula, tests/torch_refs/position_ref.py),
  # padded tokens included.
  pos = [position.sine_position_embedding(jnp.asarray(m), D_MODEL // 2) for m in masks]
  pos_t = [position_ref.PositionEmbeddingSine(D_MODEL // 2)(torch.from_numpy(m)) for m in masks]
  query = rng.normal(size=(QUERIES, 2 * D_MODEL)).astype(np.float32)
  with torch.no_grad():
    hs, memory, init_ref, inter_refs = ref.transformer(
        [torch.from_numpy(s).permute(0, 3, 1, 2) for s in srcs], [torch.from_numpy(m) for m in masks], pos_t,
        torch.from_numpy(query))
  out = nnx.jit(lambda mdl, s, m, p, q: mdl(s, m, p, q))(model, [jnp.asarray(s) for s in srcs],
                                                       [jnp.asarray(m) for m in masks], pos, jnp.asarray(query))
  return out, (hs, memory, init_ref, inter_refs), srcs, masks, pos, query


def test_transformer_matches_torch(torch_and_jax):
  torch, idol_ref, ref, model = torch_and_jax
  out, (hs, memory, init_ref, inter_refs), *_ = _run_both(torch, idol_ref, ref, model, [(12, 16), (9, 11)],
                                                           LEVEL_SHAPES)
  assert out.hs.shape == (DEC, 2, QUERIES, D_MODEL)
  # Measured (2026-12, CPU): memory 3.2e-7 (padded tokens 2.8e-7), hs 5.4e-7, boxes 1.4e-7. Before the position
  # embedding reproduced torch's divisions, the padded tokens' memory was off by 6.5e-3.
  pad = np.asarray(out.padding_mask)
  assert pad[1].any() and not pad[0].any()  # frame 1 has all-padding rows and columns on every level
  assert rel_err(np.asarray(out.memory)[pad], memory.numpy()[pad]) < 3e-6
  assert rel_err(out.memory, memory.numpy()) < 3e-6
  assert rel_err(out.hs, hs.numpy()) < 3e-6
  assert rel_err(out.boxes, inter_refs.numpy()) < 3e-6
  init = init_ref.numpy()
  expected_refs = np.concatenate([np.concatenate([init, np.zeros_like(init)], -1)[None], inter_refs.numpy()[:-1]])
  assert rel_err(out.references, expected_refs) < 3e-6
  assert float(np.abs(np.asarray(out.references[0, ..., 2:])).max()) == 0.


def test_padding_is_ignored(torch_and_jax):
  """Garbage in padded tokens and extra padded columns leave every output unchanged."""
  _, _, _, model = torch_and_jax
  valid = [(12, 16), (9, 11)]
  rng = np.random.default_rng(1)
  small = LEVEL_SHAPES
  big = ((12, 24), (6, 12), (3, 6), (2, 3))  # same content, 8 more padded columns at the finest level
  srcs_small = [rng.normal(size=(2, h, w, D_MODEL)).astype(np.float32) for h, w in small]
  masks_small = _masks(valid, small)
  masks_big = _masks(valid, big)
  srcs_big = []
  for s, (h, w), m in zip(srcs_small, big, masks_big):
    garbage = rng.normal(size=(2, h, w, D_MODEL)).astype(np.float32) * 100
    srcs_big.append(np.where(m[..., None], garbage, np.pad(s, ((0, 0), (0, 0), (0, w - s.shape[2]), (0, 0)))))
  query = jnp.asarray(rng.normal(size=(QUERIES, 2 * D_MODEL)).astype(np.float32))
  fwd = nnx.jit(lambda mdl, s, m, q: mdl(s, m, [position.sine_position_embedding(x, D_MODEL // 2) for x in m], q))
  a = fwd(model, [jnp.asarray(s) for s in srcs_small], [jnp.asarray(m) for m in masks_small], query)
  b = fwd(model, [jnp.asarray(s) for s in srcs_big], [jnp.asarray(m) for m in masks_big], query)
  assert rel_err(b.hs, a.hs) < 1e-4
  assert rel_err(b.boxes, a.boxes) < 1e-4
  # Memory of the valid tokens of the finest level.
  h0, w0 = small[0]
  mem_a = np.asarray(a.memory[:, :h0 * w0]).reshape(2, h0, w0, -1)
  mem_b = np.asarray(b.memory[:, :h0 * big[0][1]]).reshape(2, h0, big[0][1], -1)[:, :, :w0]
  valid0 = ~masks_small[0]
  assert rel_err(mem_b[valid0], mem_a[valid0]) < 1e-4


def test_detached_references_dropout_and_remat(torch_and_jax):
  """Gradients flow into the boxes of layer 1 but not into the reference it passes on (detached, as officially);
  with dropout on, `remat=True` gives the same outputs and gradients as storing the activations."""
  _, _, _, model = torch_and_jax
  remat_model = nnx.eval_shape(lambda: _Wrapper(nnx.Rngs(0), remat=True))
  nnx.update(remat_model, nnx.state(model))
  rng = np.random.default_rng(3)
  srcs = [jnp.asarray(rng.normal(size=(1, h, w, D_MODEL)).astype(np.float32)) for h, w in LEVEL_SHAPES]
  masks = [jnp.asarray(m) for m in _masks([(12, 16)], LEVEL_SHAPES)]
  pos = [position.sine_position_embedding(m, D_MODEL // 2) for m in masks]
  query = jnp.asarray(rng.normal(size=(QUERIES, 2 * D_MODEL)).astype(np.float32))

  def loss_fn(mdl):
    graphdef, params, rest = nnx.split(mdl, nnx.Param, ...)

    def f(p, key, field):
      out = nnx.merge(graphdef, p, rest)(srcs, masks, pos, query, deterministic=False,
                                         rngs=nnx.Rngs(dropout=key))
      return jnp.sum(getattr(out, field)[1] * jnp.arange(4.))

    return f, params

  f, params = loss_fn(model)
  both = jax.jit(lambda p, key: (jax.grad(f)(p, key, 'references'), jax.value_and_grad(f)(p, key, 'boxes')))
  g_refs, (value, g_boxes) = both(params, jax.random.key(0))
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(g_refs))
  assert np.abs(np.asarray(g_boxes['bbox_embed'][1]['layers'][0]['kernel'][...])).max() > 0
  assert np.abs(np.asarray(g_boxes['transformer']['reference_points']['kernel'][...])).max() > 0
  _, (value_other_key, _) = both(params, jax.random.key(1))
  assert abs(float(value_other_key) - float(value)) > 1e-6  # dropout is on and keyed
  f_remat, params_remat = loss_fn(remat_model)
  value_remat, g_remat = jax.jit(jax.value_and_grad(f_remat), static_argnums=2)(params_remat, jax.random.key(0),
                                                                                'boxes')
  assert abs(float(value_remat) - float(value)) <= 1e-5 * abs(float(value))
  for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_boxes)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_nearest_indices_match_torch():
  torch = pytest.importorskip('torch')
  for in_size, out_size in ((20, 3), (7, 4), (5, 10), (13, 13), (96, 12), (9, 5)):
    x = torch.arange(in_size, dtype=torch.float32)[None, None, :, None]
    expected = torch.nn.functional.interpolate(x, size=(out_size, 1), mode='nearest')[0, 0, :, 0].long().numpy()
    np.testing.assert_array_equal(resize.nearest_indices(in_size, out_size), expected)


def test_input_projection_levels_and_masks():
  proj = deformable.InputProjection([32, 48, 64], 64, 4, rngs=nnx.Rngs(0))
  feats = [jnp.ones((2, 12, 20, 32)), jnp.ones((2, 6, 10, 48)), jnp.ones((2, 3, 5, 64))]
  image_mask = np.ones((2, 96, 160), bool)
  image_mask[0, :96, :160] = False
  image_mask[1, :50, :70] = False
  srcs, masks = proj(feats, jnp.asarray(image_mask))
  assert [s.shape for s in srcs] == [(2, 12, 20, 64), (2, 6, 10, 64), (2, 3, 5, 64), (2, 2, 3, 64)]
  assert [m.shape for m in masks] == [(2, 12, 20), (2, 6, 10), (2, 3, 5), (2, 2, 3)]
  # Level 0: nearest from 96x160 to 12x20 reads pixel 8i: valid rows ceil(50/8) = 7, cols ceil(70/8) = 9.
  assert int((~masks[0][1]).sum(0).max()) == 7 and int((~masks[0][1]).sum(1).max()) == 9
  assert not bool(masks[3][0].any())
  ratios = np.asarray(deformable.valid_ratios(masks))
  np.testing.assert_allclose(ratios[1, 0], [9 / 20, 7 / 12])
  with pytest.raises(ValueError, match='expected 3 backbone maps'):
    proj(feats[:2], jnp.asarray(image_mask))


def test_inverse_sigmoid_and_refine():
  x = jnp.asarray([0., 1e-7, 0.3, 1., 1.2])
  np.testing.assert_allclose(np.asarray(deformable.inverse_sigmoid(x)),
                             [np.log(1e-5), np.log(1e-5), np.log(0.3 / 0.7), np.log(1 / 1e-5), np.log(1 / 1e-5)],
                             rtol=1e-6)
  ref2 = jnp.asarray([[0.25, 0.75]])
  box = deformable.refine_boxes(jnp.asarray([[0.5, -0.5, 1., 2.]]), ref2)
  expected = 1 / (1 + np.exp(-np.array([0.5 + np.log(1 / 3), -0.5 + np.log(3), 1., 2.])))
  np.testing.assert_allclose(np.asarray(box)[0], expected, rtol=1e-6)
