"""VITA on contract v2: registry and settings, the offline streaming predictor (records valid, independent of the
chunking, equal to the host inference functions on the model's outputs), loss_fn under optax (slow)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pycocotools import mask as mask_utils

from configs import vita_tiny
from visjax.evaluation import results as results_lib
from visjax.inference import predictor as predictor_lib
from visjax.models import registry
from visjax.models.vita import inference
from visjax.models.vita import method
from tests import method_testing


def _tiny_config():
  c = vita_tiny.get_config()
  c.dataset.category_ids = (3, 5, 7)
  c.dataset.num_classes = 3
  c.model.num_classes = 3
  c.loss.train_num_points = 64
  c.tracker.run_chunk_size = 4
  c.tracker.interpolate_chunk_size = 3
  return c


def test_registry_settings_and_rules():
  m = registry.get_method(_tiny_config())
  assert isinstance(m, method.VITAMethod) and m.name == 'vita'
  assert m.inference_settings.topk == 5 and m.loss_settings.sim_weight == 0.5
  assert m.record_rule().kind == 'topk' and m.record_rule().k == 5
  assert len(m.conversion_rules()) > 0
  config = _tiny_config()
  del config.loss['sim_weight']
  with pytest.raises(ValueError, match=r"config.loss: missing field\(s\) \['sim_weight'\]"):
    registry.get_method(config)
  config = _tiny_config()
  del config.model.vita['enc_window_size']
  with pytest.raises(ValueError, match=r"config.model.vita: missing field\(s\) \['enc_window_size'\]"):
    registry.get_method(config).build_model(nnx.Rngs(0))


def test_official_configs_build_settings():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ('ytvis19', 'ytvis19_swinl', 'ytvis21', 'ytvis21_swinl', 'ovis', 'ovis_swinl'):
    config = importlib.import_module(f'configs.vita_{name}').get_config()
    m = registry.get_method(config)
    assert m.inference_settings.topk == (20 if 'ovis' in name else 10)
    assert config.model.num_frame_queries == (200 if 'swinl' in name else 100)
    assert config.model.num_classes == (25 if 'ovis' in name else 40)


@pytest.fixture(scope='module')
def tiny():
  m = registry.get_method(_tiny_config())
  return m, m.build_model(nnx.Rngs(0))


T, HP, WP, SIZE, ORIG = 7, 64, 96, (60, 90), (90, 135)


def _frames():
  rng = np.random.default_rng(0)
  frames = np.zeros((T, HP, WP, 3), np.uint8)
  frames[:, :SIZE[0], :SIZE[1]] = rng.integers(0, 255, size=(T,) + SIZE + (3,))
  return frames


def _tracks(m, model, chunks):
  predictor = m.make_predictor(model, predictor_lib.VideoMeta(video_id=7, length=T, orig_size=ORIG))
  frames, start = _frames(), 0
  for n in chunks:
    predictor.add_frames(frames[start:start + n], np.tile(SIZE, (n, 1)))
    start += n
  return predictor.finish()


def test_predictor_records(tiny):
  m, model = tiny
  tracks = _tracks(m, model, [T])
  records = m.records(tracks, 7)
  assert len(records) == 5
  gt = {'videos': [{'id': 7, 'length': T, 'height': ORIG[0], 'width': ORIG[1]}],
        'categories': [{'id': i} for i in (3, 5, 7)]}
  results_lib.validate_results(records, gt)
  assert [r['score'] for r in records] == sorted((r['score'] for r in records), reverse=True)
  for r in records:
    assert len(r['segmentations']) == T and r['category_id'] in (3, 5, 7)
    assert all(mask_utils.decode(seg).shape == ORIG for seg in r['segmentations'])

  # The same as the host inference functions on the model's outputs (the predictor's jitted passes, cached).
  graphdef, state = nnx.split(model)
  frames = np.concatenate([_frames(), np.zeros((1, HP, WP, 3), np.uint8)])  # two run chunks of 4
  parts = [method._jitted_frames(graphdef)(state, jnp.asarray(frames[i:i + 4]), jnp.tile(jnp.asarray(SIZE), (4, 1)))
           for i in (0, 4)]
  queries, features = (np.concatenate([p[k] for p in parts])[:T] for k in (0, 1))
  # The VITA module unpadded (the predictor runs it at the bucket length 12 with 5 padded frames).
  video = jax.jit(lambda s, x: nnx.merge(graphdef, s).vita_module(x[None, None], train=False))(state, queries)
  logits, embed = video['pred_logits'][-1, 0, 0], video['pred_mask_embed'][-1, 0, 0]
  det, masks = inference.video_inference(np.asarray(logits), np.asarray(embed), features, interim_size=(HP, WP),
                                         image_size=SIZE, out_size=ORIG, topk=5, chunk_size=3)
  by_track = {t.track_id: t for t in tracks}
  for q, label, score, mask in zip(det.queries, det.labels, det.scores, masks):
    track = by_track[int(q)]
    assert abs(track.class_scores[label] - score) < 1e-5
    decoded = np.stack([mask_utils.decode(seg) for seg in track.segmentations]).astype(bool)
    assert np.mean(decoded != mask) < 1e-4

  # Chunking the frames differently changes nothing.
  for chunks in ([3, 4], [1] * T):
    again = m.records(_tracks(m, model, chunks), 7)
    assert [a['segmentations'] for a in again] == [r['segmentations'] for r in records]
    np.testing.assert_allclose([a['score'] for a in again], [r['score'] for r in records], rtol=1e-5)
  predictor = m.make_predictor(model, predictor_lib.VideoMeta(video_id=7, length=T, orig_size=ORIG))
  predictor.add_frames(_frames()[:3], np.tile(SIZE, (3, 1)))
  with pytest.raises(ValueError, match='3 of 7 frames'):
    predictor.finish()


def test_video_module_compiles_once_per_bucket(tiny):
  """Videos of 7, 9 and 12 frames share the bucket of 12 frames (window 6): one VITA-module compile."""
  m, model = tiny
  video_fn = method._jitted_video(nnx.split(model)[0])
  before = video_fn._cache_size()  # pylint: disable=protected-access
  for length in (7, 9, 12):
    predictor = m.make_predictor(model, predictor_lib.VideoMeta(video_id=1, length=length, orig_size=ORIG))
    predictor.add_frames(np.resize(_frames(), (length, HP, WP, 3)), np.tile(SIZE, (length, 1)))
    assert predictor.finish()
  assert video_fn._cache_size() - before <= 1  # pylint: disable=protected-access


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  b, t, n = 1, 3, 2
  image = rng.integers(0, 60, size=(b, t, HP, WP, 3), dtype=np.uint8)
  masks = np.zeros((b, t, n, HP, WP), np.uint8)
  for f in range(t):
    masks[0, f, 0, 10:30, 10 + 5 * f:40 + 5 * f] = 1
    if f:
      masks[0, f, 1, 35:55, 50:80] = 1
  colours = np.array([[230, 40, 40], [40, 40, 230]], np.uint8)
  for i in range(n):
    image[0][masks[0, :, i] > 0] = colours[i]
  return dict(image=image, image_size=np.tile(SIZE, (b, t, 1)).astype(np.int32), masks=masks,
              present=masks.any(axis=(-2, -1)), labels=np.array([[0, 2]], np.int32),
              instance_valid=np.ones((b, n), bool), track_ids=np.array([[4, 9]], np.int32))


@pytest.mark.slow
def test_loss_fn_finite_and_decreases(tiny):
  m, model = tiny
  batch = jax.tree.map(jnp.asarray, _batch())
  history, terms = method_testing.adam_losses(m, model, batch)
  assert {'loss_ce', 'loss_mask', 'loss_dice', 'loss_ce_0', 'loss_vita_ce', 'loss_vita_mask', 'loss_vita_dice',
          'loss_vita_sim', 'loss_vita_ce_0'} <= set(terms)
  np.testing.assert_allclose(history[-1], sum(float(v) for v in terms.values()), rtol=1e-5)
  assert history[-1] < 0.8 * history[0], history


@pytest.mark.slow  # ~60 s cold on 2 cores (compiles the vita_tiny train step)
def test_freeze_detector_trains_only_the_vita_module():
  """Official MODEL.VITA.FREEZE_DETECTOR through the engine: after 2 train steps every parameter outside
  `vita_module` is bitwise unchanged, every VITA-module parameter moved, and the optimizer state holds Adam moments
  for the VITA module only."""
  from configs import vita_common  # pylint: disable=g-import-not-at-top
  from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from visjax.train import trainer  # pylint: disable=g-import-not-at-top
  assert vita_common.vita_config(3, freeze_detector=True).train.frozen == vita_common.FREEZE_DETECTOR
  config = _tiny_config()
  config.train.frozen = vita_common.FREEZE_DETECTOR
  config.input.batch_size = 1
  m = registry.get_method(config)
  mesh = mesh_lib.create_mesh(config)
  with jax.set_mesh(mesh):
    setup = trainer.build_setup(config, m, mesh)
    step = trainer.make_train_step(config, m, setup, mesh)
    state = setup.init_fn()
    before = jax.device_get(state['params'])
    batch = mesh_lib.global_batch(_batch(), mesh)
    for _ in range(2):
      state, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss']))
    after = jax.device_get(state['params'])
  leaves = lambda tree: {mesh_lib.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  before, after = leaves(before), leaves(after)
  vita = {k for k in before if k.startswith('vita_module/')}
  assert len(vita) > 100 and len(before) - len(vita) > 150
  for k in before:
    if k in vita:
      assert not np.array_equal(after[k], before[k]), f'{k} was not trained'
    else:
      np.testing.assert_array_equal(after[k], before[k], err_msg=f'{k} is frozen')
  moments = {k: v for k, v in leaves(state['opt_state']).items() if k.split('/')[1] in ('mu', 'nu')}
  assert sorted(moments) == sorted(f'1/{s}/{k}' for s in ('mu', 'nu') for k in vita)
  assert sum(v.nbytes for v in moments.values()) == 2 * sum(before[k].nbytes for k in vita)


@pytest.mark.parametrize('swin', [False, True])
def test_no_weight_decay_on_norms_and_embeddings(swin):
  """Mask2Former's build_optimizer: decay 0 exactly on the parameters of norm modules, nn.Embedding weights and
  Swin's relative position tables (the reference walks the module tree by type; the config uses path regexes)."""
  from configs import vita_common  # pylint: disable=g-import-not-at-top
  from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from visjax.train import optim  # pylint: disable=g-import-not-at-top
  config = _tiny_config()
  if swin:
    vita_common.use_swin_l(config)
  model = nnx.eval_shape(lambda: registry.get_method(config).build_model(nnx.Rngs(0)))
  norms = (nnx.LayerNorm, nnx.GroupNorm, nnx.BatchNorm, nnx.Embed)
  want = set()
  for path, module in nnx.iter_modules(model):
    if isinstance(module, norms):
      prefix = '/'.join(str(p) for p in path)
      want |= {f'{prefix}/{name}' for name in ('scale', 'bias', 'embedding') if hasattr(module, name)}
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  names = [mesh_lib.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  want |= {n for n in names if n.endswith('relative_position_bias_table')}
  _, decays = optim.param_multipliers(params, config)
  got = {mesh_lib.path_str(p) for p, d in jax.tree_util.tree_leaves_with_path(decays) if d == 0.0}
  assert len(want) > 50 and got == want, (sorted(got - want)[:5], sorted(want - got)[:5])


def test_bfloat16_host_mask_features_keep_masks_and_scores(tiny):
  """`tracker.mask_features_dtype='bfloat16'` (half the host memory per frame): the same tracks, masks with IoU
  >= 0.99 vs float32 over the whole video and class scores within 1e-3 (relative; measured >= 0.9989, <= 4.2e-5)."""
  m, model = tiny
  config = _tiny_config()
  config.tracker.mask_features_dtype = 'bfloat16'
  m16 = registry.get_method(config)
  want, got = _tracks(m, model, [T]), _tracks(m16, model, [T])
  assert [t.track_id for t in got] == [t.track_id for t in want]
  decode = lambda track: np.stack([mask_utils.decode(seg) for seg in track.segmentations]).astype(bool)
  for g, w in zip(got, want):
    a, b = decode(g), decode(w)
    iou = (a & b).sum() / max((a | b).sum(), 1)
    rel = np.abs(g.class_scores - w.class_scores).max() / np.abs(w.class_scores).max()
    print(f'track {w.track_id}: mask IoU {iou:.5f}, class score rel diff {rel:.2e}')
    assert iou >= 0.99 and rel <= 1e-3, (w.track_id, iou, rel)
  predictor = m16.make_predictor(model, predictor_lib.VideoMeta(video_id=7, length=T, orig_size=ORIG))
  predictor.add_frames(_frames(), np.tile(SIZE, (T, 1)))
  assert predictor.mask_features[0].dtype == jnp.bfloat16 and predictor.mask_features[0].itemsize == 2
  config.tracker.mask_features_dtype = 'float16'
  with pytest.raises(ValueError, match='config.tracker.mask_features_dtype'):
    registry.get_method(config)
