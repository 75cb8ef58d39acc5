"""Engine tests in-process on 1 CPU device with the test-only method of tests/train_toy.py.

Stop-and-resume, in-process and through the CLI after SIGKILL, reproduces the uninterrupted losses exactly; NaN stops training naming the step and keeps the
last good checkpoint; gradient accumulation; eval writes results + metrics; predict on an mp4; convert.
"""

import json
import os
import signal
import time

import numpy as np
import pytest

from tests import train_toy
from visjax.train import checkpoint as ckpt_lib
from visjax.train import evaluate
from visjax.train import restore
from visjax.train import trainer

_TERMS = ('loss', 'loss_mask', 'loss_ce')


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  """Repeated train() calls compile identical programs: reuse them through a module-local persistent cache."""
  import jax  # pylint: disable=g-import-not-at-top
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


def _config(**train):
  c = train_toy.get_config()
  c.train.update(train)
  return c


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """An uninterrupted 4-step run: (workdir, per-step log)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  trainer.train(_config(num_steps=4, checkpoint_every=2), workdir)
  return workdir, train_toy.read_log(workdir)


def _assert_same_losses(got, want):
  assert [r['step'] for r in got] == [r['step'] for r in want]
  for g, w in zip(got, want):
    for k in _TERMS:
      assert g[k] == w[k], (g['step'], k, g[k], w[k])


def test_log_has_every_term_and_losses_decrease(straight_run):
  _, log = straight_run
  assert [r['step'] for r in log] == [1, 2, 3, 4]
  for row in log:
    assert set(_TERMS + ('lr', 'grad_norm', 'steps_per_sec')) <= set(row)
    assert row['loss'] == pytest.approx(row['loss_mask'] + row['loss_ce'], rel=1e-6)
  assert log[-1]['loss'] < log[0]['loss']


def test_stop_and_resume_reproduces_losses(straight_run, tmp_path):
  _, want = straight_run
  workdir = str(tmp_path)
  trainer.train(_config(num_steps=2, checkpoint_every=2), workdir)
  assert ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints')).latest_step() == 2
  # Log lines past the checkpoint and a torn last line (as a crash would leave) are dropped on resume.
  with open(os.path.join(workdir, 'train_log.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 3, 'loss': -1.0}) + '\n{"step": 4, "lo')
  trainer.train(_config(num_steps=4, checkpoint_every=2), workdir)
  _assert_same_losses(train_toy.read_log(workdir), want)


def test_cli_sigkill_and_resume_reproduces_uninterrupted_losses(straight_run, tmp_path):
  """`python -m visjax.main` killed by SIGKILL mid-run, restarted: the same losses as the uninterrupted run."""
  _, want = straight_run
  workdir = str(tmp_path / 'killed')
  flags = ('--config.train.num_steps=4', '--config.train.checkpoint_every=2')
  killed = train_toy.run_main(workdir, *flags, '--config.toy_kill_at_batch=3')
  assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  resumed = train_toy.run_main(workdir, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_same_losses(train_toy.read_log(workdir), want)
  assert os.path.exists(os.path.join(workdir, 'logs'))  # TensorBoard events
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir, 'logs')))


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = _config(num_steps=6, checkpoint_every=2)
  config.toy_nan_at_step = 3
  with pytest.raises(trainer.NonFiniteLossError, match=r'step 3.*loss.*Last good checkpoint: step 2'):
    trainer.train(config, workdir)
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert steps == [2]
  assert [r['step'] for r in train_toy.read_log(workdir)] == [1, 2]


@pytest.mark.parametrize('frozen', [(), (r'^backbone/',)])
def test_grad_accum_update_is_the_mean_of_microbatch_gradients(frozen):
  """2 microbatches: the update equals the optimizer applied to the mean of the two microbatch gradients (each
  with its own rng, microbatch k = examples k, k + 2, ...), computed here independently of the step. With
  `train.frozen` the frozen leaves are bitwise unchanged and absent from the optimizer state, and the gradient norm
  and clipping cover the trainable leaves only (official `requires_grad_(False)`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top
  from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  config = _config(num_steps=1, grad_accum=2, frozen=frozen)
  method = registry.get_method(config)
  mesh = mesh_lib.create_mesh(config)
  host_batch = next(train_toy.make_train_iterator(config))
  with jax.set_mesh(mesh):
    setup = trainer.build_setup(config, method, mesh)
    step = trainer.make_train_step(config, method, setup, mesh)
    state = setup.init_fn()
    params, rest, opt_state = (jax.device_get(state[k]) for k in ('params', 'rest', 'opt_state'))
    new_state, metrics = step(state, mesh_lib.global_batch(host_batch, mesh))
    got = jax.device_get(new_state['params'])

  rng = jax.random.fold_in(jax.random.key(config.seed), 0)

  def loss(p, batch, key):
    return method.loss_fn(nnx.merge(setup.graphdef, p, rest), batch, rng=key, train=True)[0]

  grads = [jax.grad(loss)(params, {k: v[i::2] for k, v in host_batch.items()}, jax.random.fold_in(rng, i))
           for i in range(2)]
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  trained = {'head'} | (set() if frozen else {'backbone'})
  mean = {k: v for k, v in mean.items() if k in trained}
  trainable = {k: v for k, v in params.items() if k in trained}
  # Adam moments (mu, nu) exist for the trainable leaves only.
  moments = [mesh_lib.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(new_state['opt_state'])
             if '/mu/' in mesh_lib.path_str(p) or '/nu/' in mesh_lib.path_str(p)]
  assert len(moments) == 2 * len(jax.tree.leaves(trainable)), moments
  assert all(any(f'/{name}/' in m for name in trained) for m in moments), moments
  # The gradient itself (Adam's update is nearly invariant to its scale, so the norm checks mean vs sum).
  assert float(metrics['grad_norm']) == pytest.approx(float(optax.global_norm(mean)), rel=1e-5)
  updates, _ = setup.tx.update(mean, opt_state, trainable)
  want = dict(params, **optax.apply_updates(trainable, updates))
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7, err_msg=str(path))
  for name in params:
    for g, p in zip(jax.tree.leaves(got[name]), jax.tree.leaves(params[name])):
      if name in trained:
        assert not np.allclose(g, p), f'{name} is updated'
      else:
        np.testing.assert_array_equal(g, p, err_msg=f'frozen {name} changed')


def test_frozen_parameters_survive_checkpoint_and_resume(tmp_path):
  """A frozen run stopped at step 2 and resumed (checkpointed optimizer state without the frozen leaves) gives
  the uninterrupted run's losses, and its frozen parameters stay bitwise at their initial values."""
  import jax  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top
  from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  frozen = dict(num_steps=4, checkpoint_every=2, frozen=(r'^backbone/',))
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  trainer.train(_config(**frozen), straight)
  trainer.train(_config(**dict(frozen, num_steps=2)), resumed)
  trainer.train(_config(**frozen), resumed)
  _assert_same_losses(train_toy.read_log(resumed), train_toy.read_log(straight))
  config = _config(**frozen)
  mesh = mesh_lib.create_mesh(config)
  with jax.set_mesh(mesh):
    setup = trainer.build_setup(config, registry.get_method(config), mesh)
    init = jax.device_get(setup.init_fn()['params'])
    checkpointer = ckpt_lib.Checkpointer(os.path.join(resumed, 'checkpoints'))
    state, _ = checkpointer.restore(4, setup.abstract_state)
    checkpointer.close()
  final = jax.device_get(state['params'])
  for g, p in zip(jax.tree.leaves(final['backbone']), jax.tree.leaves(init['backbone'])):
    np.testing.assert_array_equal(g, p)
  assert not np.allclose(final['head']['kernel'], init['head']['kernel'])
  assert 'backbone' not in state['opt_state'][1].mu


@pytest.mark.parametrize('frozen,match', [((r'^nothing/',), 'matches no parameter'),
                                          ((r'.',), 'freezes every parameter')])
def test_bad_frozen_regex_is_an_error(frozen, match):
  from visjax.train import optim  # pylint: disable=g-import-not-at-top
  params = {'backbone': {'kernel': np.zeros(2)}, 'head': {'kernel': np.zeros(2)}}
  with pytest.raises(ValueError, match=f'config.train.frozen.*{match}'):
    optim.split_frozen(params, _config(frozen=frozen))


def _toy_gt(config) -> dict:
  """A YTVIS gt json for the toy eval videos: each instance square as a track."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  h, w = config.input.size
  videos, anns = [], []
  for vid in range(config.toy_eval_videos):
    ex = train_toy._example(10_000 + vid, config)  # pylint: disable=protected-access
    t = ex['image'].shape[0]
    videos.append({'id': vid + 1, 'height': h, 'width': w, 'length': t,
                   'file_names': [f'{vid}/{i}.jpg' for i in range(t)]})
    for k in np.nonzero(ex['instance_valid'])[0]:
      segs, areas = [], []
      for i in range(t):
        rle = mask_utils.encode(np.asfortranarray(ex['masks'][i, k]))
        segs.append({'size': [h, w], 'counts': rle['counts'].decode('ascii')})
        areas.append(float(ex['masks'][i, k].sum()))
      anns.append({'id': len(anns) + 1, 'video_id': vid + 1, 'category_id': int(ex['labels'][k]) + 1,
                   'iscrowd': 0, 'segmentations': segs, 'areas': areas, 'bboxes': [None] * t, 'length': 1})
  cats = [{'id': i, 'name': f'c{i}', 'supercategory': 'x'} for i in config.dataset.category_ids]
  return {'videos': videos, 'annotations': anns, 'categories': cats}


def test_eval_writes_results_and_metrics(straight_run, tmp_path):
  workdir, _ = straight_run
  config = _config()
  gt_path = str(tmp_path / 'gt.json')
  with open(gt_path, 'w') as f:
    json.dump(_toy_gt(config), f)
  config.dataset.valid_json = gt_path
  metrics = evaluate.evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.json')) as f:
    saved = json.load(f)
  assert saved == metrics
  assert {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'} <= set(saved)
  assert set(saved['per_category_AP']) == {'c1', 'c2', 'c3', 'c4'}
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert sorted(r['video_id'] for r in results) == [1, 2]
  assert os.path.exists(os.path.join(workdir, 'results.zip'))


def test_eval_checkpoint_step_picks_a_saved_step(straight_run):
  """`config.eval.checkpoint_step` loads that step's weights (not the latest); an unsaved step names the saved ones."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  workdir, _ = straight_run
  config = _config()
  weights = {}
  for step in (2, 4, -1):
    config.eval.checkpoint_step = step
    assert restore.describe_weights(config, workdir).startswith(f'train checkpoint {step if step > 0 else 4} ')
    weights[step] = jax.tree.leaves(nnx.to_pure_dict(nnx.state(restore.load_model(config, workdir), nnx.Param)))
  assert all(np.array_equal(a, b) for a, b in zip(weights[4], weights[-1]))
  assert not all(np.array_equal(a, b) for a, b in zip(weights[2], weights[4]))
  config.eval.checkpoint_step = 3
  with pytest.raises(FileNotFoundError, match=r'checkpoint_step=3: .*saved steps: \[2, 4\]'):
    restore.describe_weights(config, workdir)


def _write_mp4(path: str, frames: np.ndarray) -> None:
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  with imageio.get_writer(path, fps=5, codec='libx264', macro_block_size=1, pixelformat='yuv420p') as writer:
    for f in frames:
      writer.append_data(f)


def test_predict_on_mp4(straight_run, tmp_path):
  pytest.importorskip('imageio_ffmpeg')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from visjax import predict  # pylint: disable=g-import-not-at-top
  workdir, _ = straight_run
  config = _config()
  frames = np.stack([train_toy._example(i, config)['image'][0] for i in range(4)])  # pylint: disable=protected-access
  frames = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # [4, 32, 32, 3]
  video = str(tmp_path / 'clip.mp4')
  _write_mp4(video, frames)
  config.predict.input = video
  config.predict.output = str(tmp_path / 'overlay.gif')
  config.predict.score_threshold = 0.0
  config.input.min_size_test = 16
  out = predict.predict(config, workdir)
  gif = Image.open(out['overlay'])
  assert gif.n_frames == 4 and gif.size == (480, 480)  # upscaled for reading (visualize.MIN_SIDE)
  with open(out['tracks']) as f:
    tracks = json.load(f)
  assert tracks['num_frames'] == 4 and len(tracks['tracks']) == 1
  track = tracks['tracks'][0]
  assert track['track_id'] == 1 and len(track['segmentations']) == 4
  assert all(s is None or s['size'] == [32, 32] for s in track['segmentations'])


def test_predict_without_checkpoint_fails_fast(tmp_path):
  from visjax import predict  # pylint: disable=g-import-not-at-top
  config = _config()
  frames_dir = tmp_path / 'frames'
  frames_dir.mkdir()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames_dir / '0.png')
  config.predict.input = str(frames_dir)
  start = time.time()
  with pytest.raises(FileNotFoundError, match='No checkpoint to run with'):
    predict.predict(config, str(tmp_path / 'empty'))
  assert time.time() - start < 1.0
  config.predict.input = str(tmp_path / 'missing.mp4')
  with pytest.raises(FileNotFoundError, match='missing.mp4'):
    predict.predict(config, str(tmp_path / 'empty'))


def test_convert_then_eval_uses_ported_weights(straight_run, tmp_path):
  """A torch-layout .npz ports strictly into WORKDIR/converted; loading it reproduces the source weights."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = _config()
  rng = np.random.default_rng(1)
  official = {'backbone.weight': rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
              'backbone.bias': rng.normal(size=(8,)).astype(np.float32),
              'head.weight': rng.normal(size=(5, 8, 1, 1)).astype(np.float32),
              'head.bias': rng.normal(size=(5,)).astype(np.float32)}
  path = str(tmp_path / 'official.npz')
  np.savez(path, **official)
  config.init_from = path
  workdir = str(tmp_path / 'run')
  restore.convert_checkpoint(config, workdir)
  config.init_from = ''
  model = restore.load_model(config, workdir)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  np.testing.assert_array_equal(params['backbone']['kernel'], official['backbone.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['head']['bias'], official['head.bias'])

  bad = dict(official, **{'extra.weight': np.zeros(3, np.float32)})
  del bad['head.bias']
  bad['backbone.bias'] = np.zeros(7, np.float32)
  np.savez(path, **bad)
  config.init_from = path
  from visjax import convert  # pylint: disable=g-import-not-at-top
  with pytest.raises(convert.ConversionError) as err:
    restore.convert_checkpoint(config, str(tmp_path / 'bad'))
  message = str(err.value)
  assert 'extra.weight' in message and 'head.bias' in message and 'backbone.bias' in message
  assert not os.path.exists(tmp_path / 'bad' / 'converted')


def test_bfloat16_compute_keeps_float32_params(straight_run):
  """compute_dtype='bfloat16' reaches the model; params and optimizer state stay float32; loss close to fp32."""
  import jax  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top
  from visjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  config = _config(compute_dtype='bfloat16')
  method = registry.get_method(config)
  mesh = mesh_lib.create_mesh(config)
  with jax.set_mesh(mesh):
    setup = trainer.build_setup(config, method, mesh)
    step = trainer.make_train_step(config, method, setup, mesh)
    batch = mesh_lib.global_batch(next(train_toy.make_train_iterator(config)), mesh)
    state, metrics = step(setup.init_fn(), batch)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state['params']))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state['opt_state'][1].mu))
  assert float(metrics['loss']) == pytest.approx(straight_run[1][0]['loss'], rel=2e-2)
  assert float(metrics['loss']) != straight_run[1][0]['loss']


def test_init_from_training_run_with_reinit(straight_run):
  """A checkpoint chain with a new category set: parameters come from a training run, the class head (another
  shape) is re-initialised by `config.init_reinit`, and the report says so; without the regex it is an error that
  names the variable."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top
  from visjax.train import init_from  # pylint: disable=g-import-not-at-top
  workdir, _ = straight_run
  config = _config()
  config.dataset.num_classes = 6
  config.dataset.category_ids = tuple(range(1, 7))
  model = registry.get_method(config).build_model(nnx.Rngs(5))
  head_before = np.asarray(model.head.kernel[...]).copy()
  with pytest.raises(ValueError, match=r'head\.kernel: model \(1, 1, 8, 7\), checkpoint \(1, 1, 8, 5\)'):
    init_from.load_state(model, workdir)
  report = init_from.load_state(model, workdir, reinit=(r'^head\.',))
  assert sorted(report.reinitialised) == ['head.bias', 'head.kernel']
  assert 'backbone.kernel' in report.loaded and not report.left_at_init
  np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), head_before)
  trained = init_from.read_source(workdir)  # the latest step of the run
  np.testing.assert_array_equal(np.asarray(model.backbone.kernel[...]), trained['backbone.kernel'])
  assert not np.array_equal(trained['backbone.kernel'], np.asarray(
      registry.get_method(config).build_model(nnx.Rngs(5)).backbone.kernel[...]))


def test_predict_with_ground_truth_draws_it_beside_the_prediction(straight_run, synthetic_paths, tmp_path):
  """`config.predict.ground_truth` (the demo sets it to the validation json): the overlay is ground truth |
  prediction, the ground-truth half showing the annotated tracks of that video."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from data_pipeline import ytvis_json  # pylint: disable=g-import-not-at-top
  from visjax import predict  # pylint: disable=g-import-not-at-top
  workdir, _ = straight_run
  dataset = ytvis_json.load(synthetic_paths['train'])
  video = next(v for v in dataset.videos if dataset.tracks_of(v.id))
  folder = os.path.join(synthetic_paths['images'], video.name)
  tracks, labels, size = predict.ground_truth_tracks(synthetic_paths['train'], folder)
  assert len(tracks) == len(dataset.tracks_of(video.id)) and size == (video.height, video.width)
  masks = [np.stack([predict.frame_masks([t], i, size)[0] for i in range(video.length)]) for t in tracks]
  assert all(m.any() for m in masks) and labels[0].startswith('1 ')
  config = _config()
  config.predict.input = folder
  config.predict.output = str(tmp_path / 'overlay.gif')
  config.predict.ground_truth = synthetic_paths['train']
  config.input.min_size_test = 16
  config.input.max_size_test = 32
  plain = Image.open(predict.predict(_config_with(config, ground_truth=''), workdir)['overlay'])
  both = Image.open(predict.predict(config, workdir)['overlay'])
  assert both.n_frames == plain.n_frames == video.length
  assert both.size[0] > 2 * plain.size[0] - 1 and both.size[1] > plain.size[1]  # two panels under a title row
  config.predict.ground_truth = str(tmp_path / 'absent.json')
  with pytest.raises(FileNotFoundError, match='ground_truth'):
    predict.predict(config, workdir)


def _config_with(config, **predict_fields):
  c = config.copy_and_resolve_references()
  c.predict.update(predict_fields)
  return c


def test_category_ids_filled_from_the_manifest_and_checked(synthetic_paths, tmp_path):
  """Eval / predict fill an empty `config.dataset.category_ids` from the converted split's manifest (json ids, not
  1..K) and refuse a table that does not match the ground truth json."""
  import json  # pylint: disable=g-import-not-at-top
  from data_pipeline import convert  # pylint: disable=g-import-not-at-top
  with open(synthetic_paths['train']) as f:
    content = json.load(f)
  for cat in content['categories']:  # COCO-like ids: not 1..K
    cat['id'] += 100
  for ann in content['annotations']:
    ann['category_id'] += 100
  gt = str(tmp_path / 'train.json')
  with open(gt, 'w') as f:
    json.dump(content, f)
  out = str(tmp_path / 'tfr')
  convert.convert(fmt='ytvis', json_path=gt, images_dir=synthetic_paths['images'], out_dir=out, num_shards=1,
                  workers=1, progress=False)
  config = _config()
  config.dataset.category_ids = ()
  config.dataset.eval_tfrecords = out
  config.dataset.valid_json = gt
  evaluate.fill_categories(config)
  want = tuple(sorted(c['id'] for c in content['categories']))
  assert tuple(config.dataset.category_ids) == want and min(want) > 100
  assert len(config.dataset.category_names) == len(want)
  config.dataset.category_ids = tuple(range(1, len(want) + 1))
  with pytest.raises(ValueError, match='do not match|not categories of'):
    evaluate.fill_categories(config)
