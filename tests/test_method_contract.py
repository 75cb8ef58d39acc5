"""Method contract v2 (docs/INTERFACES.md §3), checked the same way for every registered method.

Each case gives a tiny config, a training batch in the §1 format, and (where the method has one) the official
checkpoint layout at that size. For every method: the loss is finite and its gradient reaches every trainable
parameter; the predictor's tracks do not depend on how the frames are chunked; the records follow the method's rule;
the conversion rules consume every key of the official layout. New methods join by adding a case.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from visjax.inference import predictor as predictor_lib
from visjax.models import registry


@dataclasses.dataclass
class Case:
  config: Callable[[], ml_collections.ConfigDict]
  batch: Callable[[ml_collections.ConfigDict], dict[str, np.ndarray]]
  frame_shape: tuple[int, int]  # padded (Hp, Wp) of the predictor's frames
  official_state_dict: Callable[[ml_collections.ConfigDict, nnx.Module], dict[str, Any]] | None = None
  model: Callable[[registry.Method], nnx.Module] | None = None  # default: method.build_model(nnx.Rngs(0))
  no_gradient_at_this_size: tuple[str, ...] = ()  # regexes of parameters that the tiny batch cannot reach


def _idol_config():
  from configs import idol_tiny  # pylint: disable=g-import-not-at-top
  c = idol_tiny.get_config()
  m = c.model
  m.enc_layers, m.dec_layers, m.num_queries, m.d_model, m.nheads = 1, 2, 12, 32, 2
  m.dim_feedforward, m.mask_dim, m.reid_dim, m.dropout = 64, 1, 16, 0.
  m.backbone_depth, m.backbone_width, m.backbone_norm, m.freeze_at = 18, 32, 'GN', 0
  m.num_classes = c.dataset.num_classes = 3
  c.dataset.category_ids = (3, 5, 7)
  # Random weights score ~0.01: open the thresholds so that tracks are born and reported.
  for field in ('select_thres', 'init_score_thr', 'addnew_score_thr', 'apply_cls_thres'):
    c.tracker[field] = 0.
  c.tracker.batch_infer_len = 2
  return c


def _idol_batch(config):
  from tests.idol_fixtures import synthetic_batch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = synthetic_batch(rng, b=1, h=96, w=128, image_size=(90, 128), num_classes=config.model.num_classes)
  batch['image'] = rng.integers(0, 255, size=batch['image'].shape, dtype=np.uint8)
  return batch


def _toy_config():
  from tests import train_toy  # pylint: disable=g-import-not-at-top
  return train_toy.get_config()


def _toy_batch(config):
  from tests import train_toy  # pylint: disable=g-import-not-at-top
  return next(train_toy.make_train_iterator(config))


def _toy_state_dict(config, model):
  """The toy model as an equivalent torch nn.Conv2d pair would save it."""
  del config
  out = {}
  for name in ('backbone', 'head'):
    conv = getattr(model, name)
    out[f'{name}.weight'] = np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1)
    out[f'{name}.bias'] = np.asarray(conv.bias[...])
  return out


def _visolo_config():
  from tests import test_visolo_method  # pylint: disable=g-import-not-at-top
  return test_visolo_method._tiny_config()  # pylint: disable=protected-access


def _visolo_batch(config):
  del config
  from tests import test_visolo_method  # pylint: disable=g-import-not-at-top
  return test_visolo_method._batch()  # pylint: disable=protected-access


def _visolo_model(method):
  """Random weights with class bias 0 (the prior bias leaves no detection on random frames)."""
  from tests import test_visolo_method  # pylint: disable=g-import-not-at-top
  return test_visolo_method._random_model(method)  # pylint: disable=protected-access


def _iai_config():
  from tests import test_iai_method  # pylint: disable=g-import-not-at-top
  c = test_iai_method._tiny_config()  # pylint: disable=protected-access
  # Random weights score ~0.01: open the thresholds so ids are born and reported.
  c.tracker.cls_score_thr = c.tracker.id_score_thr = c.tracker.video_score_thr = 0.
  return c


def _iai_batch(config):
  del config
  from tests import test_iai_method  # pylint: disable=g-import-not-at-top
  return test_iai_method._clip_batch()  # pylint: disable=protected-access


def _vita_config():
  from tests import test_vita_method  # pylint: disable=g-import-not-at-top
  return test_vita_method._tiny_config()  # pylint: disable=protected-access


def _vita_batch(config):
  del config
  from tests import test_vita_method  # pylint: disable=g-import-not-at-top
  return test_vita_method._batch()  # pylint: disable=protected-access


CASES = {
    'idol': Case(_idol_config, _idol_batch, (64, 64)),
    'toy': Case(_toy_config, _toy_batch, (16, 16), _toy_state_dict),
    'visolo': Case(_visolo_config, _visolo_batch, (32, 48), model=_visolo_model),
    # At 64 x 64 every instance falls in the P3 scale range (FCOS assigns levels by size), so the other levels'
    # `Scale`s get no regression gradient, and P6 / P7 are 1 x 1 maps that the head's GroupNorm reduces to constants.
    'iai': Case(_iai_config, _iai_batch, (64, 96),
                no_gradient_at_this_size=(r"\['scales'\]\[[1-4]\]", r"\['fpn_convs'\]\[[34]\]")),
    'vita': Case(_vita_config, _vita_batch, (64, 96)),
}


@pytest.fixture(scope='module', params=sorted(CASES))
def setup(request):
  case = CASES[request.param]
  config = case.config()
  method = registry.get_method(config)
  model = case.model(method) if case.model else method.build_model(nnx.Rngs(0))
  return request.param, case, config, method, model


def test_method_object_owns_the_config(setup):
  _, _, config, method, _ = setup
  assert isinstance(method, registry.Method) and method.config is config
  assert method.record_rule().kind in ('threshold', 'argmax', 'topk')


def test_loss_finite_and_gradients_reach_every_parameter(setup):
  """At a point near the initialisation: zero-initialised layers (Deformable-DETR's sampling offsets and attention
  weights, the box heads' last layer) block gradients exactly at init, as in the official models."""
  name, case, config, method, model = setup
  batch = jax.tree.map(jnp.asarray, case.batch(config))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # as the engine's train step holds them
  keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(params))))
  params = jax.tree.map(lambda p: p + 1e-2 * jax.random.normal(next(keys), p.shape, p.dtype), params)

  @jax.jit
  def grads(params, rest):
    def loss(p, r):
      return method.loss_fn(nnx.merge(graphdef, p, r), batch, rng=jax.random.key(0), train=True)
    return jax.value_and_grad(loss, has_aux=True)(params, rest)

  (total, terms), g = grads(params, rest)
  assert np.isfinite(float(total)) and all(np.isfinite(float(v)) for v in terms.values()), terms
  np.testing.assert_allclose(float(total), sum(float(v) for v in terms.values()), rtol=1e-5)
  dead = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(g)
          if not np.any(np.asarray(leaf))
          and not any(re.search(r, jax.tree_util.keystr(path)) for r in case.no_gradient_at_this_size)]
  assert not dead, f'{name}: parameters without gradient: {dead}'


def _tracks(method, model, frames, chunks, orig):
  predictor = method.make_predictor(model, predictor_lib.VideoMeta(video_id=3, length=len(frames), orig_size=orig))
  sizes = np.tile(np.asarray(frames.shape[1:3], np.int32), (len(frames), 1))
  start = 0
  for n in chunks:
    predictor.add_frames(frames[start:start + n], sizes[start:start + n])
    start += n
  return predictor.finish()


def test_predictor_is_chunking_invariant_and_records_follow_the_rule(setup):
  name, case, config, method, model = setup
  h, w = case.frame_shape
  frames = np.random.default_rng(1).integers(0, 255, size=(5, h, w, 3), dtype=np.uint8)
  orig = (h - 3, w + 5)
  whole = _tracks(method, model, frames, [5], orig)
  assert whole, f'{name}: no track on random frames with open thresholds'
  for chunks in ([2, 3], [1, 1, 1, 1, 1]):
    again = _tracks(method, model, frames, chunks, orig)
    assert [t.track_id for t in again] == [t.track_id for t in whole]
    for a, b in zip(again, whole):
      assert a.segmentations == b.segmentations
      np.testing.assert_allclose(a.class_scores, b.class_scores, rtol=1e-5, atol=1e-7)
  for t in whole:
    assert len(t.segmentations) == 5 and t.class_scores.shape == (config.dataset.num_classes,)
    assert all(s is None or s['size'] == list(orig) for s in t.segmentations)
  records = method.records(whole, 3)
  assert all(r['video_id'] == 3 and r['category_id'] in config.dataset.category_ids for r in records)
  with pytest.raises(ValueError, match='more than its length'):
    method.make_predictor(model, predictor_lib.VideoMeta(3, 4, orig)).add_frames(frames, np.tile([h, w], (5, 1)))


def test_conversion_rules_consume_the_official_layout(setup):
  name, case, config, method, model = setup
  if case.official_state_dict is None:
    pytest.skip(f'{name}: its official layout is covered by its own full-size conversion tests')
  from visjax import convert  # pylint: disable=g-import-not-at-top
  state_dict = case.official_state_dict(config, model)
  fresh = method.build_model(nnx.Rngs(1))
  report = convert.convert(state_dict, fresh, method.conversion_rules(),
                           allow_missing=tuple(config.convert.allow_missing))
  assert not report.unexpected and not report.mismatched and not report.errors
  consumed = {key for key, _ in report.loaded} | set(report.dropped)
  assert consumed == set(state_dict), set(state_dict) - consumed
  again = case.official_state_dict(config, fresh)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)
