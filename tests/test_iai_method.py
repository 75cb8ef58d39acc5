"""IAI on contract v2: registry and settings, configs, loss_fn through the tiny model (finite, every term, gradients
reach the LSTT and the identity branch, BatchNorm statistics update, decreases under Adam on one batch), and the
streaming predictor's tracks and records (independent of the chunking)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from pycocotools import mask as mask_utils

from configs import iai_ovis, iai_tiny, iai_ytvis19
from visjax.evaluation import results as results_lib
from visjax.inference import predictor as predictor_lib
from visjax.models import registry
from visjax.models.iai import method

H, W = 64, 96


def _tiny_config():
  c = iai_tiny.get_config()
  c.model.stacked_convs = 1
  c.dataset.num_classes = c.model.num_classes = 3
  c.dataset.category_ids = (3, 5, 7)
  return c


@pytest.fixture(scope='module')
def iai():
  return registry.get_method(_tiny_config())


@pytest.fixture(scope='module')
def tiny_model(iai):
  return iai.build_model(nnx.Rngs(0))


def test_registry_settings_and_configs():
  m = registry.get_method(_tiny_config())
  assert isinstance(m, method.IAIMethod) and m.name == 'iai' and len(m.conversion_rules()) > 0
  assert m.record_rule().kind == 'topk' and m.record_rule().threshold == 0.05
  official = registry.get_method(iai_ytvis19.get_config())
  assert official.tracker_settings.nms_pre == 200 and official.loss_settings.focal_alpha == 0.25
  assert registry.get_method(iai_ovis.get_config()).record_rule().k == 50
  config = _tiny_config()
  del config.tracker['nms_pre']
  with pytest.raises(ValueError, match=r"config.tracker: missing field\(s\) \['nms_pre'\]"):
    registry.get_method(config)


def _clip_batch(seed=0, t=3):
  rng = np.random.default_rng(seed)
  masks = np.zeros((1, t, 3, H, H), np.uint8)
  for f in range(t):
    masks[0, f, 0, 10:40, 8 + 4 * f:30 + 4 * f] = 1
    if f:
      masks[0, f, 1, 34:60, 30:62] = 1
  image = rng.integers(0, 60, (1, t, H, H, 3), dtype=np.uint8)
  image[masks[:, :, 0] > 0] = (230, 40, 40)
  image[masks[:, :, 1] > 0] = (40, 40, 230)
  boxes = np.zeros((1, t, 3, 4), np.float32)
  for f in range(t):
    for i in range(2):
      ys, xs = np.nonzero(masks[0, f, i])
      if len(ys):
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        boxes[0, f, i] = [(x0 + x1) / 2 / H, (y0 + y1) / 2 / H, (x1 - x0) / H, (y1 - y0) / H]
  return dict(image=image, image_size=np.full((1, t, 2), H, np.int32), masks=masks, boxes=boxes,
              present=masks.any((-2, -1)), labels=np.array([[1, 2, -1]]), track_ids=np.array([[4, 9, -1]]),
              instance_valid=np.array([[True, True, False]]))


@pytest.mark.slow  # compiles value_and_grad through the whole clip (~1 min on 2 CPU cores)
def test_loss_fn_gradients_and_descent(iai, tiny_model):
  model = nnx.clone(tiny_model)
  batch = jax.tree.map(jnp.asarray, _clip_batch())
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # as the engine's train step
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  running_mean = np.asarray(rest['bbox_head']['mask_refine'][0]['norm']['running_mean'])

  @jax.jit
  def step(params, rest, opt_state, rng):
    def loss(p, r):  # as the engine's train step: the non-parameter state is an argument
      m = nnx.merge(graphdef, p, r)
      total, terms = iai.loss_fn(m, batch, rng=rng, train=True)
      return total, (terms, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)))
    (total, (terms, stats)), grads = jax.value_and_grad(loss, has_aux=True)(params, rest)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, total, terms, grads

  history = []
  for i in range(4):
    params, stats, opt_state, total, terms, grads = step(params, rest, opt_state, jax.random.key(i))
    assert np.isfinite(float(total)), terms
    history.append(float(total))
  assert set(terms) == {'loss_cls', 'loss_id', 'loss_bbox', 'loss_centerness', 'loss_mask'}
  assert all(float(v) > 0 for v in terms.values())
  np.testing.assert_allclose(float(total), sum(float(v) for v in terms.values()), rtol=1e-5)
  norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree))))
  assert norm(grads['lstt']) > 0 and norm(grads['bbox_head']['conv_id']) > 0 and norm(grads['encoder_projector']) > 0
  # the mask branch's BatchNorm ran on batch statistics and updated its running mean
  assert not np.allclose(running_mean, np.asarray(stats['bbox_head']['mask_refine'][0]['norm']['running_mean']))
  assert history[-1] < history[0], history


def _records(config, model, frames, chunks, orig):
  iai = registry.get_method(config)
  predictor = iai.make_predictor(model, predictor_lib.VideoMeta(video_id=7, length=len(frames), orig_size=orig))
  sizes = np.tile([60, 90], (len(frames), 1))
  start = 0
  for n in chunks:
    predictor.add_frames(frames[start:start + n], sizes[start:start + n])
    start += n
  return iai.records(predictor.finish(), 7)


def test_predictor_records(tiny_model):
  config = _tiny_config()
  # Random weights score ~0.01: open the thresholds so ids are born and reported.
  config.tracker.cls_score_thr = config.tracker.id_score_thr = config.tracker.video_score_thr = 0.
  rng = np.random.default_rng(0)
  num_frames, orig = 4, (45, 67)
  frames = np.zeros((num_frames, H, W, 3), np.uint8)
  frames[:, :60, :90] = rng.integers(0, 255, size=(num_frames, 60, 90, 3))
  records = _records(config, tiny_model, frames, [num_frames], orig)
  assert 0 < len(records) <= config.tracker.max_per_img
  gt = {'videos': [{'id': 7, 'length': num_frames, 'height': orig[0], 'width': orig[1]}],
        'categories': [{'id': i} for i in (3, 5, 7)]}
  results_lib.validate_results(records, gt)
  for r in records:
    assert r['category_id'] in (3, 5, 7) and 0. <= r['score'] <= 1. and len(r['segmentations']) == num_frames
    present = [seg is not None for seg in r['segmentations']]
    assert present[-1] and present == sorted(present)  # None until the id is allocated, then every frame
    for seg in r['segmentations']:
      if seg is not None:
        assert mask_utils.decode(seg).shape == orig
  assert records == sorted(records, key=lambda r: -r['score'])
  again = _records(config, tiny_model, frames, [1, 3], orig)
  assert [(a['category_id'], a['segmentations']) for a in again] == [(r['category_id'], r['segmentations'])
                                                                    for r in records]
  np.testing.assert_allclose([a['score'] for a in again], [r['score'] for r in records], rtol=1e-5)
  predictor = registry.get_method(config).make_predictor(
      tiny_model, predictor_lib.VideoMeta(video_id=7, length=num_frames, orig_size=orig))
  predictor.add_frames(frames[:2], np.tile([60, 90], (2, 1)))
  with pytest.raises(ValueError, match='2 of 4 frames'):
    predictor.finish()
