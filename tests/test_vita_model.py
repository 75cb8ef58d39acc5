"""VITA module and whole VITA model (visjax/models/vita/model.py) vs the torch reference with the official key
names (tests/torch_refs/vita_ref.py), loaded through visjax/convert/rules_vita.py: every layer's outputs, plain
and shifted windows, T not a multiple of the window (padded frames), training and test forwards."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from configs import vita_common
from flax import nnx

from visjax import convert
from visjax.convert import rules_vita
from visjax.models.vita import model as vita_model

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import mask2former_ref, resnet_refs, swin_ref, vita_ref  # pylint: disable=g-import-not-at-top
from torch_refs.parity import rel_err  # pylint: disable=g-import-not-at-top

C, FQ, CQ, K, HEADS, MASK_DIM = 32, 4, 6, 5, 2, 16
MODULE = dict(num_classes=K, hidden_dim=C, num_frame_queries=FQ, num_queries=CQ, nheads=HEADS, dim_feedforward=48,
              enc_layers=4, dec_layers=3, enc_window_size=6, conv_dim=C, mask_dim=MASK_DIM)


def _state(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope='module')
def module_pair():
  torch.manual_seed(0)
  ref = mask2former_ref.randomize_(vita_ref.VITA(**MODULE), seed=1)
  model = nnx.eval_shape(lambda: vita_model.VITAModule(**MODULE, rngs=nnx.Rngs(0)))
  report = convert.convert(_state(ref), model, rules_vita.vita_module_rules('', ''))
  assert report.ok and {k for k, _ in report.loaded} == set(ref.state_dict())
  return ref, model


def _compare_module(ref, model, frame_query, num_frames, train):
  """frame_query: numpy [L, B*T, fQ, C] as the official input (all layers; eval keeps the last)."""
  ref.train(train)
  with torch.no_grad():
    expected = {k: v.numpy() for k, v in ref(torch.from_numpy(frame_query), num_frames).items()}
  l = frame_query.shape[0] if train else 1
  b = frame_query.shape[1] // num_frames
  x = frame_query[-l:].reshape(l, b, num_frames, FQ, C)
  got = nnx.jit(lambda m, x: m(x, train=train, intermediates=True), static_argnums=())(model, jnp.asarray(x))
  e, lb, t = expected['encoder'].shape[0], l * b, num_frames
  expected['encoder'] = expected['encoder'].transpose(0, 3, 1, 2, 4).reshape(e, l, b, t, FQ, C)
  errors = {}
  for key, value in expected.items():
    assert got[key].shape == value.shape, (key, got[key].shape, value.shape)
    per_layer = [rel_err(g, v) for g, v in zip(np.asarray(got[key]), value)]
    errors[key] = max(per_layer)
    assert errors[key] <= 1e-5, (key, per_layer)
  return errors


@pytest.mark.parametrize('num_frames', [5, 8, 14])
def test_module_test_mode_shifted_windows(module_pair, num_frames):
  """Test forward (even layers plain, odd layers shifted windows); 8 and 14 frames pad to 12 / 18 (2 / 3 windows)."""
  ref, model = module_pair
  fq = np.random.default_rng(num_frames).normal(size=(3, num_frames, FQ, C)).astype(np.float32)
  _compare_module(ref, model, fq, num_frames, train=False)


def test_module_without_windows(module_pair):
  """ENC_WINDOW_SIZE 0 (the vita/config.py default): full self-attention over all T*fQ tokens."""
  ref, model = module_pair
  ref.window_size = model.window_size = 0
  try:
    fq = np.random.default_rng(3).normal(size=(3, 8, FQ, C)).astype(np.float32)
    _compare_module(ref, model, fq, 8, train=False)
  finally:
    ref.window_size = model.window_size = MODULE['enc_window_size']


def test_module_train_mode(module_pair):
  """Training forward: 3 frame-decoder layers x 2 clips as 6 batch entries, plain windows in every layer."""
  ref, model = module_pair
  fq = np.random.default_rng(0).normal(size=(3, 2 * 5, FQ, C)).astype(np.float32)
  _compare_module(ref, model, fq, 5, train=True)


def test_shifted_window_mask_groups():
  """T=5, W=6: rolled by 3, frames {3, 4} and {0, 1, 2} form two groups; the padded frame is blocked."""
  bias = np.asarray(vita_model.shifted_window_bias(jnp.arange(6) < 5, 6, 1))[0]
  blocked = bias < 0
  # Rolled order: [3, 4, pad, 0, 1, 2]; the pad is at rolled index 2.
  assert not blocked[0, 1] and not blocked[3, 5]
  assert blocked[0, 3] and blocked[4, 1]
  assert blocked[2].all() and blocked[:, 2].all()
  assert set(np.unique(bias)) == {0., -1000.}


@pytest.mark.parametrize('window', [6, 0])
@pytest.mark.parametrize('num_frames', [5, 8, 14])
def test_module_bucketed_frames_match_unpadded(module_pair, num_frames, window):
  """Inference padded to a bucket (`inference.video_bucket`, and 4 windows more) with `num_frames` traced: every
  output of the real frames equals the unpadded run (which matches the torch reference above)."""
  from visjax.models.vita import inference  # pylint: disable=g-import-not-at-top
  _, model = module_pair
  model.window_size = window
  try:
    fq = jnp.asarray(np.random.default_rng(num_frames).normal(size=(1, 1, num_frames, FQ, C)).astype(np.float32))
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, x, n: nnx.merge(graphdef, s)(x, num_frames=n, intermediates=True))
    want = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, intermediates=True))(state, fq)
    bucket = inference.video_bucket(num_frames, window)
    assert bucket >= num_frames and bucket % max(window, 1) == 0
    for length in (bucket, bucket + 4 * max(window, 1)):
      got = run(state, jnp.pad(fq, ((0, 0), (0, 0), (0, length - num_frames), (0, 0), (0, 0))), num_frames)
      for key, value in want.items():
        g = got[key][..., :num_frames, :, :] if key in ('pred_fq_embed', 'encoder') else got[key]
        assert rel_err(np.asarray(g), np.asarray(value)) <= 1e-5, (key, length)
  finally:
    model.window_size = MODULE['enc_window_size']


# ----------------------------------------------------------------------------------------------------------------
# Whole model.

B_IMG, H, W = 2, 64, 96
SIZES = ((64, 96), (50, 70), (64, 80))  # per frame (cycled)


TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)  # 16 x 24 patches


def _config(backbone='resnet'):
  c = vita_model.default_model_config()
  c.backbone = backbone
  c.swin.update(TINY_SWIN)
  c.update(backbone_depth=18, num_classes=K, conv_dim=C, mask_dim=MASK_DIM, pixel_decoder_enc_layers=1,
           enc_n_points=2, hidden_dim=C, num_frame_queries=FQ, nheads=HEADS, dim_feedforward=48, dec_layers=5)
  c.vita.update(enc_layers=2, dec_layers=2, nheads=HEADS, dim_feedforward=48, hidden_dim=C, num_queries=CQ)
  return c


def _torch_vita(backbone='resnet'):
  torch.manual_seed(0)
  if backbone == 'resnet':
    net, channels = resnet_refs.randomize_(resnet_refs.D2ResNet(18)), (64, 128, 256, 512)
  else:
    net, channels = swin_ref.randomize_(swin_ref.D2SwinTransformer(**TINY_SWIN), seed=3), (32, 64, 128, 256)
  pix = mask2former_ref.MSDeformAttnPixelDecoder(channels, C, MASK_DIM, nheads=HEADS, enc_layers=1, n_points=2)
  pred = mask2former_ref.VitaMultiScaleMaskedTransformerDecoder(C, K, FQ, HEADS, 48, 4, MASK_DIM)
  head = mask2former_ref.randomize_(mask2former_ref.MaskFormerHead(pix, pred), seed=2)
  module = mask2former_ref.randomize_(
      vita_ref.VITA(K, C, FQ, CQ, HEADS, 48, enc_layers=2, dec_layers=2, conv_dim=C, mask_dim=MASK_DIM), seed=3)
  return vita_ref.Vita(net, head, module).eval()


@pytest.fixture(scope='module')
def model_pair():
  ref = _torch_vita()
  state = _state(ref)
  state['criterion.empty_weight'] = np.ones(K + 1, np.float32)
  state['vita_criterion.empty_weight'] = np.ones(K + 1, np.float32)
  model = nnx.eval_shape(lambda: vita_model.VITA(_config(), rngs=nnx.Rngs(0)))
  report = rules_vita.convert_checkpoint({'model': state}, model, _config())
  assert report.ok and not report.allowed_missing
  assert set(report.dropped) == {'criterion.empty_weight', 'vita_criterion.empty_weight'}
  assert {k for k, _ in report.loaded} | set(report.dropped) == set(state)
  return ref, model


def _inputs(b, t, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(b, t, H, W, 3), dtype=np.uint8)
  sizes = np.asarray([[SIZES[(i * t + j) % 3] for j in range(t)] for i in range(b)], np.int32)
  normalised = np.zeros((b * t, 3, H, W), np.float32)
  for n, (img, (h, w)) in enumerate(zip(images.reshape(b * t, H, W, 3), sizes.reshape(-1, 2))):
    crop = (img[:h, :w].astype(np.float32) - vita_model.PIXEL_MEAN) / vita_model.PIXEL_STD
    normalised[n, :, :h, :w] = crop.transpose(2, 0, 1)
  return images, sizes, normalised


def _compare_whole(ref, model, train):
  b, t = (1, 7) if not train else (B_IMG, 3)
  images, sizes, normalised = _inputs(b, t, seed=int(train))
  ref.train(train)
  with torch.no_grad():
    expected = ref(torch.from_numpy(normalised), t)
  ref.eval()
  got = nnx.jit(lambda m, x, s: m(x, s, train=train, intermediates=True))(model, jnp.asarray(images),
                                                                          jnp.asarray(sizes))
  frame, video = got['frame'], got['video']
  for level, (g, e) in enumerate(zip(frame['pixel_decoder'], expected['pixel_decoder'], strict=True)):
    assert rel_err(g, e.permute(0, 2, 3, 1).numpy()) <= 1e-5, level
  e = expected['video']['encoder'].numpy()
  e = e.transpose(0, 3, 1, 2, 4).reshape(video['encoder'].shape)
  assert rel_err(video['encoder'], e) <= 1e-5
  pairs = [(frame['pred_logits'], expected['frame_logits']), (frame['pred_masks'], expected['frame_masks']),
           (frame['frame_queries'], expected['frame_queries']),
           (frame['vita_mask_features'], expected['vita_mask_features'].permute(0, 2, 3, 1))]
  pairs += [(video[k], expected['video'][k]) for k in ('pred_logits', 'pred_mask_embed', 'pred_cq_embed',
                                                      'pred_fq_embed', 'pred_masks')]
  for got_value, ref_value in pairs:
    ref_value = ref_value.numpy()
    assert got_value.shape == ref_value.shape, (got_value.shape, ref_value.shape)
    for layer in range(ref_value.shape[0]):
      assert rel_err(got_value[layer], ref_value[layer]) <= 1e-5
  assert video['pred_masks'].shape == (2, 3 if train else 1, b, CQ, t, H // 4, W // 4)
  assert np.std(expected['video']['pred_masks'].numpy()) > 0.05


@pytest.mark.parametrize('train', [False, True])
def test_whole_model_matches(model_pair, train):
  _compare_whole(*model_pair, train)


@pytest.mark.slow
def test_whole_model_swin_backbone():
  """Swin backbone (all four outputs through their norm{i}; patch grid not a multiple of the window)."""
  ref = _torch_vita('swin')
  model = vita_model.VITA(_config('swin'), rngs=nnx.Rngs(0))
  report = rules_vita.convert_checkpoint(_state(ref), model, _config('swin'))
  assert report.ok and len([k for k in report.dropped if k.endswith('relative_position_index')]) == 8
  _compare_whole(ref, model, train=False)


@pytest.mark.slow
def test_training_step_gradients(model_pair):
  """Model + loss in one jitted value_and_grad over the parameters (batch in the docs/INTERFACES.md §1 format):
  finite loss, gradients in every trainable part (backbone, pixel decoder, frame decoder, VITA module)."""
  from visjax.models.vita import criterion as vita_criterion  # pylint: disable=g-import-not-at-top
  _, model = model_pair
  b, t, n = 1, 3, 2
  images, sizes, _ = _inputs(b, t, seed=2)
  masks = np.zeros((b, t, n, H, W), np.uint8)
  masks[0, :, 0, 10:30, 20:50] = 1
  masks[0, 1:, 1, 40:50, 5:25] = 1
  batch = dict(image=images, image_size=sizes, masks=masks, present=masks.any(axis=(-2, -1)),
               labels=np.asarray([[1, 4]], np.int32), instance_valid=np.ones((b, n), bool))
  settings = vita_criterion.loss_settings(vita_common.loss_config())
  settings = dataclasses.replace(settings, train_num_points=64)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, batch):
    m = nnx.merge(graphdef, p, rest)
    out = m(batch['image'], batch['image_size'], train=True)
    return vita_criterion.vita_loss(out, batch, rng=jax.random.key(0), s=settings)

  (value, losses), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, jax.tree.map(jnp.asarray, batch))
  assert np.isfinite(float(value)) and len(losses) == 3 * 5 + 3 * 2 + 1
  norms = {k: sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads[k])) for k in ('sem_seg_head', 'vita_module')}
  norms['backbone'] = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads['backbone']))
  assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms
