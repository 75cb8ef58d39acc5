"""VISOLO on contract v2: registry, settings validation, loss_fn on a tiny model, the streaming predictor's tracks
and records through the method (chunking does not change them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import visolo_tiny
from visjax.inference.predictor import VideoMeta
from visjax.models import registry
from visjax.models.visolo import method


def _tiny_config():
  c = visolo_tiny.get_config()
  c.model.update(backbone_width=32, indim=128, grid_num=(3, 5), num_classes=3)
  c.dataset.num_classes = 3
  c.dataset.category_ids = (3, 5, 7)
  return c


@pytest.fixture(scope='module')
def visolo():
  return registry.get_method(_tiny_config())


def _random_model(m, seed=0):
  """The method's model with random weights, without the (slow on CPU) eager init; class bias 0."""
  model = nnx.eval_shape(lambda: m.build_model(nnx.Rngs(0)))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if path[-1] in ('scale', 'running_var') or (path[-1] == 'weight' and path[-2] == 'norm'):
      return jnp.ones(x.shape, x.dtype)
    if path[-1] == 'bias':
      return jnp.zeros(x.shape, x.dtype)
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    return jnp.asarray(rng.normal(scale=(2. / fan_in)**0.5, size=x.shape), x.dtype)

  nnx.update(model, nnx.from_flat_state([(p, v.replace(fill(p, v.get_value())))
                                         for p, v in nnx.to_flat_state(nnx.state(model))]))
  return model


@pytest.fixture(scope='module')
def tiny_model(visolo):
  return _random_model(visolo)


def test_registry_and_conversion_rules(visolo):
  assert isinstance(visolo, method.VisoloMethod) and visolo.name == 'visolo'
  assert visolo.loss_settings.mask_weight == 3.0 and visolo.tracker_settings.sigma == 2.0
  assert visolo.record_rule().kind == 'argmax'
  assert len(visolo.conversion_rules()) > 0
  spec = visolo.input_spec()
  assert spec.sampler.clip_len == 3 and spec.sampler.shuffle


def test_missing_settings_fail_with_one_message():
  config = _tiny_config()
  del config.loss['dice_eps']
  config.loss.dice_weight = 1.0
  with pytest.raises(ValueError, match=r"config.loss: missing field\(s\) \['dice_eps'\]; unknown field\(s\) "
                                       r"\['dice_weight'\]"):
    registry.get_method(config)
  config = _tiny_config()
  del config.tracker['sigma']
  with pytest.raises(ValueError, match=r"config.tracker: missing field\(s\) \['sigma'\]"):
    registry.get_method(config)


def _batch(t=3, seed=0):
  rng = np.random.default_rng(seed)
  masks = np.zeros((1, t, 2, 32, 48), np.uint8)
  masks[0, :, 0, 4:20, 6:30] = 1
  masks[0, 1:, 1, 18:30, 30:46] = 1
  return dict(image=rng.integers(0, 256, size=(1, t, 32, 48, 3), dtype=np.uint8),
              image_size=np.full((1, t, 2), (32, 48), np.int32), masks=masks, labels=np.array([[1, 2]], np.int32),
              instance_valid=np.ones((1, 2), bool), present=masks.any((-1, -2)))


def test_loss_fn_rejects_non_triplet_clips(visolo, tiny_model):
  with pytest.raises(ValueError, match=r'\[B, 3, H, W, 3\]'):
    visolo.loss_fn(tiny_model, _batch(t=2), rng=jax.random.key(0))


@pytest.mark.slow  # compiles a ResNet forward + backward (~30 s on 2 CPU cores)
def test_loss_fn_finite_and_decreases(visolo, tiny_model):
  import optax  # pylint: disable=g-import-not-at-top
  graphdef, params, rest = nnx.split(tiny_model, nnx.Param, ...)
  batch = jax.tree.map(jnp.asarray, _batch())
  opt = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      total, terms = visolo.loss_fn(nnx.merge(graphdef, p, rest), batch, rng=jax.random.key(0))
      return total, terms
    (total, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total, terms

  opt_state = opt.init(params)
  losses = []
  for _ in range(4):
    params, opt_state, total, terms = step(params, opt_state)
    losses.append(float(total))
    assert set(terms) == {'loss_cat', 'loss_mask', 'loss_tracking'}
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def _records(visolo, model, frames, chunks, meta):
  predictor = visolo.make_predictor(model, meta)
  sizes = np.full((len(frames), 2), frames.shape[1:3], np.int32)
  start = 0
  for n in chunks:
    predictor.add_frames(frames[start:start + n], sizes[start:start + n])
    start += n
  tracks = predictor.finish()
  return tracks, visolo.records(tracks, meta.video_id)


def test_predictor_tracks_and_records(visolo, tiny_model):
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, size=(5, 32, 48, 3), dtype=np.uint8)
  frames[:, 8:24, 10:30] = 230  # a static bright box
  meta = VideoMeta(video_id=7, length=5, orig_size=(40, 60))
  tracks, records = _records(visolo, tiny_model, frames, (5,), meta)
  assert tracks, 'no detections: the test would be vacuous'
  assert len(records) == len(tracks)
  for rec, trk in zip(records, tracks):
    assert rec['video_id'] == 7 and rec['category_id'] in (3, 5, 7)
    assert rec['score'] == pytest.approx(float(trk.class_scores.max()))
    assert len(rec['segmentations']) == 5
    assert all(s is None or tuple(s['size']) == (40, 60) for s in rec['segmentations'])
  _, rechunked = _records(visolo, tiny_model, frames, (2, 1, 2), meta)
  assert rechunked == records
  with pytest.raises(ValueError, match='2 of 5 frames'):
    predictor = visolo.make_predictor(tiny_model, meta)
    predictor.add_frames(frames[:2], np.full((2, 2), (32, 48), np.int32))
    predictor.finish()


@pytest.mark.parametrize('name', ['visolo_ytvis19', 'visolo_coco_pseudo', 'visolo_tiny'])
def test_configs_build_the_method(name):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{name}').get_config()
  m = registry.get_method(config)
  assert isinstance(m, method.VisoloMethod) and m.input_spec().sampler.clip_len == 3
  assert config.model.num_classes == config.dataset.num_classes
  assert all(s % config.model.size_divisibility == 0 for s in config.input.test_fixed_size)
