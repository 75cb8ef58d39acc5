"""VISOLO model and checkpoint conversion: every branch, the memory read and the online step against a torch CPU
reference of the official modules with official key names (tiny sizes, random weights, loaded through
`rules_visolo`), plus the full-size key/shape layout of the official R-50 checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests import convert_layout
from flax import nnx

from visjax import convert
from visjax.convert import rules_visolo
from visjax.models.visolo import model as visolo_model

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import resnet_refs, visolo_ref  # pylint: disable=g-import-not-at-top
from torch_refs.parity import rel_err  # pylint: disable=g-import-not-at-top

GRID, CLASSES, INDIM, OUTDIM = (3, 5), 7, 256, 64
H, W = 64, 96
TOL = 1e-4


def _config(num_classes=CLASSES):
  c = visolo_model.default_model_config()
  c.update(backbone_depth=18, num_classes=num_classes, grid_num=GRID, indim=INDIM, outdim=OUTDIM)
  return c


def _torch_reference(num_classes=CLASSES, seed=0):
  torch.manual_seed(seed)
  backbone = resnet_refs.randomize_(resnet_refs.D2ResNet(18, out_features=('res2', 'res3', 'res4')), seed=seed)
  ref = visolo_ref.VisoloRef(backbone, GRID, num_classes, INDIM, OUTDIM)
  return visolo_ref.randomize_(ref, seed=seed + 1).eval()


def _state_dict(ref):
  return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


def _abstract_model(config):
  return nnx.eval_shape(lambda: visolo_model.VISOLO.from_model_config(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope='module')
def converted():
  ref = _torch_reference()
  model = _abstract_model(_config())
  report = convert.convert(_state_dict(ref), model, rules_visolo.visolo_rules())
  return ref, model, report


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _normalise(images):
  """uint8 `[..., H, W, 3]` -> float32 NCHW-ready `[..., 3, H, W]` (the official normalizer, no padding)."""
  x = (images.astype(np.float32) - np.float32(visolo_model.PIXEL_MEAN)) / np.float32(visolo_model.PIXEL_STD)
  return np.moveaxis(x, -1, -3)


def _nhwc(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def test_every_key_consumed(converted):
  ref, _, report = converted
  keys = set(ref.state_dict())
  duplicates = {k for k in keys if k.startswith('tracking_module.')}
  assert len(duplicates) == 24
  assert report.ok and not report.allowed_missing
  assert {k for k, _ in report.loaded} | set(report.dropped) == keys
  assert set(report.dropped) == duplicates
  assert not any(k.startswith('model.backbone.res5') for k in keys)


def test_differing_duplicate_fails():
  ref = _torch_reference()
  state = _state_dict(ref)
  state['tracking_module.track_Q_conv1.bias'] = state['tracking_module.track_Q_conv1.bias'] + 1.
  with pytest.raises(convert.ConversionError, match='tracking_module.track_Q_conv1.bias'):
    convert.convert(state, _abstract_model(_config()), rules_visolo.visolo_rules())


def test_coco_checkpoint_into_ytvis_model():
  """The COCO-pretrained layout (80 classes) maps onto a 40-class model with only the class head mis-shaped
  (waive it with `allow_shape_mismatch=rules_visolo.CLASS_HEAD` on a concrete model to keep its init)."""
  state = _state_dict(_torch_reference(num_classes=80))
  with pytest.raises(convert.ConversionError, match='Category_branch_post.pred') as info:
    convert.convert(state, _abstract_model(_config(num_classes=40)), rules_visolo.visolo_rules())
  report = info.value.report
  assert not report.missing and not report.unexpected and not report.errors
  assert {i.torch_key for i in report.mismatched} == {'model.Category_branch_post.pred.weight',
                                                      'model.Category_branch_post.pred.bias'}
  assert len(report.loaded) + len(report.dropped) + 2 == len(state)


def test_training_forward_matches_torch(converted):
  """`getModelResults` on 2 clips of 3 frames: every branch and both memory reads of every frame."""
  ref, model, _ = converted
  images = _images((2, 3, H, W, 3))
  sizes = np.full((2, 3, 2), (H, W), np.int32)
  with torch.no_grad():
    (masks, kernels, cats, tra), inter = ref.model.getModelResults(
        torch.from_numpy(np.moveaxis(_normalise(images), 1, 2).copy()))  # [B, 3, N, H, W]
  out = nnx.jit(lambda m, x, s: m(x, s, intermediates=True))(model, jnp.asarray(images), jnp.asarray(sizes))
  frame_major = lambda t: np.moveaxis(_nhwc(t).reshape((3, 2) + _nhwc(t).shape[1:]), 0, 1)  # [3B] -> [B, 3]
  expected = dict(pred_cats=np.moveaxis(cats.numpy(), 1, -1), pred_kernels=np.moveaxis(kernels.numpy(), 1, -1),
                  pred_masks=np.moveaxis(masks.numpy(), 1, -1), pred_tracking=tra.numpy(),
                  **{k: frame_major(v) for k, v in inter.items()})
  assert out['pred_cats'].shape == (2, 3) + GRID + (CLASSES,)
  assert out['pred_masks'].shape == (2, 3, H // 4, W // 4, OUTDIM)
  assert out['pred_tracking'].shape == (2, 3, 15, 15)
  for key, want in expected.items():
    assert out[key].shape == want.shape, key
    err = rel_err(out[key], want)
    assert err <= TOL, (key, err)
  assert np.std(expected['pred_tracking']) > 0.1 and np.std(expected['mem_cat'] - expected['cat_f']) > 1e-2


def _memory(frames, capacity, slots):
  """Fixed-capacity buffer holding `frames` (list of encode outputs for one frame) in `slots`."""
  mem = {}
  for key in ('frame_f', 'cat_f', 'kernel_f'):
    buf = np.zeros((1, capacity) + frames[0][key].shape[1:], np.float32)
    for f, s in zip(frames, slots):
      buf[0, s] = f[key][0]
    mem[key] = jnp.asarray(buf)
  valid = np.zeros((1, capacity), bool)
  valid[0, list(slots)] = True
  mem['valid'] = jnp.asarray(valid)
  return mem


def test_online_step_matches_torch(converted):
  """`VISOLOTest` with no memory (frame 0 reads itself), one memory frame, and three memory frames, against
  `encode` + `decode` on a capacity-4 buffer with the frames in scattered slots; plus `getGridWeight`."""
  ref, model, _ = converted
  images = _images((4, H, W, 3), seed=1)
  size = jnp.asarray([[H, W]], jnp.int32)
  encode = nnx.jit(lambda m, x: m.encode(x, size))
  decode = nnx.jit(lambda m, f, mem: m.decode(f, mem, intermediates=True))
  probs = nnx.jit(lambda m, a, b: m.tracking_probs(a, b))
  feats = [jax.tree.map(np.asarray, encode(model, jnp.asarray(images[i:i + 1]))) for i in range(4)]
  x = [torch.from_numpy(_normalise(images[i:i + 1])) for i in range(4)]
  with torch.no_grad():
    r0 = ref.model.VISOLOTest(x[0], None, None, None)
    r1 = ref.model.VISOLOTest(x[1], r0['frame_f'], r0['cat_f'], r0['kernel_f'])
    r2 = ref.model.VISOLOTest(x[2], torch.stack([r0['frame_f'], r1['frame_f']], 2),
                              torch.stack([r0['cat_f'], r1['cat_f']], 2), torch.stack([r0['kernel_f'], r1['kernel_f']], 2))
    mem3 = [r0, r1, r2]
    r3 = ref.model.VISOLOTest(x[3], *[torch.stack([r[k] for r in mem3], 2) for k in ('frame_f', 'cat_f', 'kernel_f')])
    gw2 = ref.model.getGridWeight(r0['frame_f'], r1['frame_f'], None)  # frame 1 against frame 0
    gw3 = ref.model.getGridWeight(r1['frame_f'], r2['frame_f'], r0['frame_f'])
  cases = [(r0, 0, [0], [2]), (r1, 1, [0], [3]), (r3, 3, [0, 1, 2], [3, 0, 2])]
  for want, t, mem_frames, slots in cases:
    got = decode(model, jax.tree.map(jnp.asarray, feats[t]), _memory([feats[i] for i in mem_frames], 4, slots))
    for key, ours in (('frame_f', feats[t]['frame_f']), ('cat_f', feats[t]['cat_f']),
                      ('kernel_f', feats[t]['kernel_f']), ('masks', feats[t]['mask_f']),
                      ('mem_cat', got['mem_cat']), ('mem_kernel', got['mem_kernel']), ('kernels', got['kernels']),
                      ('cats', jax.nn.sigmoid(got['cat_logits']))):
      err = rel_err(ours, _nhwc(want[key]))
      assert err <= TOL, (t, key, err)
    if t > 0:  # sigmoid tracking from the last memory frame to the current one
      last = feats[mem_frames[-1]]['frame_f']
      err = rel_err(probs(model, jnp.asarray(last), jnp.asarray(feats[t]['frame_f'])), want['tracking'][:, 0].numpy())
      assert err <= TOL, (t, 'tracking', err)
  # Grid weights: max over the other frame's cells of sigmoid tracking, averaged over the memory frames used.
  p10 = np.asarray(probs(model, jnp.asarray(feats[1]['frame_f']), jnp.asarray(feats[0]['frame_f'])))
  assert rel_err(p10.max(-1), gw2[:, 0].numpy()) <= TOL
  p21 = np.asarray(probs(model, jnp.asarray(feats[2]['frame_f']), jnp.asarray(feats[1]['frame_f'])))
  p20 = np.asarray(probs(model, jnp.asarray(feats[2]['frame_f']), jnp.asarray(feats[0]['frame_f'])))
  assert rel_err((p21.max(-1) + p20.max(-1)) / 2, gw3[:, 0].numpy()) <= TOL


def test_video_memory_matches_official_loop(converted):
  """Eight frames through the official test loop's memory (list appends / replacements) and through the
  fixed-capacity buffer driven by `tracker.MemorySchedule` slots: same categories and kernels every frame."""
  from visjax.models.visolo import tracker  # pylint: disable=g-import-not-at-top
  ref, model, _ = converted
  frames = 8  # frame 7 appends (7 % 5 == 2); 3..6 replace
  images = _images((frames, H, W, 3), seed=3)
  size = jnp.asarray([[H, W]], jnp.int32)
  encode = nnx.jit(lambda m, x: m.encode(x, size))
  decode = nnx.jit(lambda m, f, mem: m.decode(f, mem))
  write = jax.jit(visolo_model.write_memory)
  schedule = tracker.MemorySchedule()
  memory = visolo_model.init_memory(1, tracker.MemorySchedule.capacity(frames), GRID, OUTDIM)
  official = visolo_ref.official_test_outputs(ref.model, torch.from_numpy(_normalise(images)))
  for t, want in enumerate(official):
    feats = encode(model, jnp.asarray(images[t:t + 1]))
    if t == 0:
      memory = write(memory, feats, schedule.push(0))
    assert int(memory['valid'].sum()) == max(want['memory_len'], 1)
    got = decode(model, feats, memory)
    if t > 0:
      memory = write(memory, feats, schedule.push(t))
    assert rel_err(jax.nn.sigmoid(got['cat_logits']), _nhwc(want['cats'])) <= TOL, t
    assert rel_err(got['kernels'], _nhwc(want['kernels'])) <= TOL, t


def test_mask_probs_match_official_mask_map():
  rng = np.random.default_rng(2)
  mask_f = rng.normal(size=(OUTDIM, 6, 8)).astype(np.float32)
  kernel = rng.normal(size=(OUTDIM,) + GRID).astype(np.float32) * 0.2
  idxs = torch.tensor([0, 4, 11])
  want = visolo_ref.mask_map(torch.from_numpy(mask_f), torch.from_numpy(kernel), idxs).numpy()
  kernels = kernel.reshape(OUTDIM, -1).T[idxs.numpy()]
  got = visolo_model.mask_probs(jnp.asarray(np.moveaxis(mask_f, 0, -1)[None]), jnp.asarray(kernels[None]))[0]
  assert got.shape == (3, 24, 32)
  assert rel_err(got, want) <= 1e-6


def test_official_size_layout():
  """Every key and shape of the official YTVIS19 R-50 state (torch meta tensors) maps onto the abstract model of
  `default_model_config()`, every model variable is filled exactly once, and the file has 357 keys."""
  config = visolo_model.default_model_config()
  with torch.device('meta'):
    ref = visolo_ref.VisoloRef(resnet_refs.D2ResNet(50, out_features=('res2', 'res3', 'res4')),
                               tuple(config.grid_num), config.num_classes, config.indim, config.outdim)
  state = ref.state_dict()
  assert len(state) == 357
  shapes, dropped = convert_layout.map_layout(rules_visolo.visolo_rules(config),
                                              {k: v.shape for k, v in state.items()}, _abstract_model(config))
  assert len(dropped) == 24
  assert shapes['Kernel_branch.conv_layers.kernel_conv1.conv.kernel'] == (3, 3, 1026, 256)
  assert shapes['Tracking_branch.track_R_conv2.norm.scale'] == (128,)
  params = sum(int(np.prod(s)) for p, s in shapes.items() if not p.endswith(('running_mean', 'running_var')))
  assert 32.0e6 < params < 33.0e6


def test_official_test_size_shapes():
  """Shapes at the official test size 352 x 624 (abstract evaluation, no compute): r4 22 x 39 resized to the
  12 x 21 grid, mask features at stride 4, memory read over a capacity-4 buffer, training clips of 3 frames."""
  config = visolo_model.default_model_config()
  model = _abstract_model(config)
  images = jax.ShapeDtypeStruct((1, 352, 624, 3), jnp.uint8)
  sizes = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  feats = nnx.eval_shape(lambda m, x, s: m.encode(x, s), model, images, sizes)
  assert feats['res4'].shape == (1, 22, 39, 1024) and feats['res2'].shape == (1, 88, 156, 256)
  assert feats['cat_f'].shape == feats['kernel_f'].shape == feats['frame_f'].shape == (1, 12, 21, 256)
  assert feats['mask_f'].shape == (1, 88, 156, 256)
  memory = jax.eval_shape(lambda: visolo_model.init_memory(1, 4, (12, 21), 256))
  out = nnx.eval_shape(lambda m, f, mem: m.decode(f, mem, intermediates=True), model, feats, memory)
  assert out['cat_logits'].shape == (1, 12, 21, 40) and out['kernels'].shape == (1, 12, 21, 256)
  assert out['tracking'].shape == (1, 4, 252, 252)
  clips = jax.ShapeDtypeStruct((2, 3, 352, 624, 3), jnp.uint8)
  train = nnx.eval_shape(lambda m, x, s: m(x, s), model, clips, jax.ShapeDtypeStruct((2, 3, 2), jnp.int32))
  assert train['pred_tracking'].shape == (2, 3, 252, 252) and train['pred_masks'].shape == (2, 3, 88, 156, 256)
