"""IAI model parity with the torch reference (official names, random weights loaded through `rules_iai`): C5',
LSTT, FPN, head and mask branch over a 3-frame memory schedule (reference frame, reset, propagate, memory update
with a long-term addition, propagate), the dynamic mask head, and the local attention against dense masked
attention (the training forward is exercised by test_iai_criterion)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.convert import rules_iai
from visjax.models.iai import lstt as lstt_lib
from visjax.models.iai import model as iai_model

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import iai_ref, resnet_refs  # pylint: disable=g-import-not-at-top

O, C, D, FEAT = 5, 7, 64, 32
H, W = 128, 192  # padded input; C5 is 4 x 6
SIZES = ((128, 192), (120, 170))
TOL = 1e-4
KW = dict(num_classes=C, max_obj_num=O, backbone_depth=18, fpn_channels=FEAT, stacked_convs=2, mask_channels=16,
          lstt_dim=D, dim_feedforward=64, max_dis=2)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def nchw(x):
  return np.asarray(x.detach().numpy()).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def pair():
  torch.manual_seed(0)
  ref = iai_ref.IAIRef(resnet_refs.randomize_(resnet_refs.TVResNet(18)), (64, 128, 256, 512), num_classes=C,
                       max_obj_num=O, d_model=D, feat_channels=FEAT, stacked_convs=2, mask_channels=16,
                       dim_feedforward=64, max_dis=2)
  iai_ref.randomize_(ref).eval()
  model = nnx.eval_shape(lambda: iai_model.IAI(**KW, rngs=nnx.Rngs(0)))
  state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  report = convert.convert(state, model, rules_iai.iai_rules())
  nnx.update(model, jax.tree.map(lambda x: jax.random.key(0) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                                 else jnp.zeros(x.shape, x.dtype), nnx.state(model, nnx.RngState)))
  return ref, model, report, state


def _frames(seed):
  images = np.random.default_rng(seed).integers(0, 256, size=(2, H, W, 3), dtype=np.uint8)
  normalised = np.zeros((2, 3, H, W), np.float32)
  for i, (h, w) in enumerate(SIZES):
    crop = (images[i, :h, :w].astype(np.float32) - iai_model.PIXEL_MEAN) / iai_model.PIXEL_STD
    normalised[i, :, :h, :w] = crop.transpose(2, 0, 1)
  return images, torch.from_numpy(normalised)


def _id_mask(seed):
  """A one-hot id mask [2, H, W, O + 1] with a few rectangles and background elsewhere."""
  rng = np.random.default_rng(seed)
  ids = np.full((2, H, W), O, np.int64)
  for b in range(2):
    for k in range(3):
      y, x = rng.integers(0, H - 40), rng.integers(0, W - 40)
      ids[b, y:y + rng.integers(8, 40), x:x + rng.integers(8, 40)] = rng.integers(0, O - 1)
  return np.eye(O + 1, dtype=np.float32)[ids]


def _compare(out, ref_out, frame):
  sizes = [f.shape[2] * f.shape[3] for f in ref_out['fpn']]
  for key, ref_key in (('cls_logits', 'cls_scores'), ('id_logits', 'id_scores'), ('bbox_ltrb', 'bbox_preds'),
                       ('centerness_logits', 'centernesses'), ('kernels', 'kernel_preds')):
    expected = np.concatenate([nchw(x).reshape(2, s, -1) for x, s in zip(ref_out[ref_key], sizes)], axis=1)
    got = np.asarray(out[key]).reshape(expected.shape)
    assert rel_err(got, expected) <= TOL, (frame, key, rel_err(got, expected))
  assert rel_err(out['mask_feat'], nchw(ref_out['mask_feat'])) <= TOL, frame
  assert rel_err(out['c5'], nchw(ref_out['c5'])) <= TOL, frame
  assert rel_err(out['lstt'][-1], ref_out['lstt'].detach().numpy()) <= TOL, frame
  for lvl, (a, b) in enumerate(zip(out['fpn'], ref_out['fpn'])):
    assert rel_err(a, nchw(b)) <= TOL, (frame, 'fpn', lvl)


def test_every_key_consumed(pair):
  ref, _, report, state = pair
  assert report.ok
  assert {k for k, _ in report.loaded} | set(report.dropped) == set(state)
  assert set(report.dropped) == {k for k in state if k.endswith('num_batches_tracked')}


def test_memory_schedule_matches_reference(pair):
  """Frame 0 (zero ids) -> reset with ids -> frame 1 -> short + long update -> frame 2, every layer compared."""
  ref, model, _, _ = pair
  ref.lstt.restart(batch_size=2)
  features = nnx.jit(lambda m, x, s: m.features(x, s))
  reference = nnx.jit(lambda m, f, ids: m.reference_frame(f, ids, intermediates=True))
  propagate = nnx.jit(lambda m, f, mem: m.propagate(f, mem, intermediates=True))
  reset = nnx.jit(lambda m, f, ids: m.memory_from_reference(f, ids, 4))
  update = nnx.jit(lambda m, mem, l, ids, add: m.memory_update(mem, l, ids, add))
  sizes = jnp.asarray(SIZES, jnp.int32)
  with torch.no_grad():
    images, normalised = _frames(0)
    zeros = np.zeros((2, H, W, O + 1), np.float32)
    feats = features(model, jnp.asarray(images), sizes)
    out, _ = reference(model, feats, jnp.asarray(zeros))
    _compare(out, ref.frame(normalised, torch.from_numpy(zeros).permute(0, 3, 1, 2)), 0)
    ids0 = _id_mask(0)
    ref.lstt.reset_memory(torch.from_numpy(ids0).permute(0, 3, 1, 2))
    memory = reset(model, feats, jnp.asarray(ids0))
    for frame, add in ((1, True), (2, None)):
      images, normalised = _frames(frame)
      feats = features(model, jnp.asarray(images), sizes)
      out, lstt = propagate(model, feats, memory)
      _compare(out, ref.frame(normalised, None), frame)
      if add is not None:
        ids = _id_mask(frame)
        ref.lstt.update_short_term_memory(torch.from_numpy(ids).permute(0, 3, 1, 2), new_inst_exist=add)
        memory = update(model, memory, lstt, jnp.asarray(ids), add)
  assert ref.lstt.long_term_memories[0][0].shape[0] == 2 * 24 and int(memory.written) == 2


def test_instance_masks_match_reference(pair):
  ref, model, _, _ = pair
  rng = np.random.default_rng(3)
  mask_feat = rng.normal(size=(1, 16, 24, 8)).astype(np.float32)
  strides = np.array([[8, 16, 32, 64]], np.float32)
  points = rng.uniform(0, 190, size=(1, 4, 2)).astype(np.float32)
  kernels = (rng.normal(size=(1, 4, 169)) * 0.5).astype(np.float32)
  got = model.instance_masks(jnp.asarray(mask_feat), jnp.asarray(points), jnp.asarray(strides), jnp.asarray(kernels))
  expected = iai_ref.instance_mask_probs(torch.from_numpy(mask_feat[0]).permute(2, 0, 1), torch.from_numpy(points[0]),
                                         torch.from_numpy(strides[0]), torch.from_numpy(kernels[0]))
  assert got.shape == (1, 4, 32, 48)
  assert rel_err(got[0], expected.numpy()) <= TOL
  assert np.std(expected.numpy()) > 0.05


def _dense_local_attention(q, k, v, rel, v_bias, heads, max_dis):
  """Dense masked attention: every key, logits outside the (2 max_dis + 1)^2 window set to -inf."""
  b, h, w, c = q.shape
  hd = c // heads
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  ys, xs = ys.reshape(-1), xs.reshape(-1)
  dy, dx = ys[None] - ys[:, None], xs[None] - xs[:, None]  # key - query
  inside = (np.abs(dy) <= max_dis) & (np.abs(dx) <= max_dis)
  widx = np.where(inside, (dy + max_dis) * (2 * max_dis + 1) + dx + max_dis, 0)
  qh = q.reshape(b, h * w, heads, hd) / np.sqrt(c / heads)
  kh, vh = k.reshape(b, h * w, heads, hd), v.reshape(b, h * w, heads, hd)
  logits = np.einsum('bnhd,bmhd->bhnm', qh, kh) + np.take_along_axis(
      rel.reshape(b, h * w, heads, -1).transpose(0, 2, 1, 3), np.broadcast_to(widx, (b, heads) + widx.shape), -1)
  logits = np.where(inside, logits, -np.inf)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  bias = v_bias[0, :, :, :, 0]  # [heads, hd, ws2]
  out = np.einsum('bhnm,bmhd->bnhd', attn, vh) + np.einsum('bhnm,hdnm->bnhd', attn, bias[:, :, widx])
  return out.reshape(b, h * w, c)


def test_local_attention_matches_dense_masked_attention():
  heads, max_dis, c = 2, 3, 16
  layer = lstt_lib.LocalAttention(c, heads, max_dis, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  layer.V_bias.set_value(jnp.asarray(rng.normal(size=layer.V_bias.get_value().shape).astype(np.float32)))
  q, k, v = (rng.normal(size=(2, 9, 11, c)).astype(np.float32) for _ in range(3))
  rel = np.asarray(layer.relative_emb(jnp.asarray(q)))
  expected = _dense_local_attention(q.astype(np.float64), k, v, rel.astype(np.float64),
                                    np.asarray(layer.V_bias.get_value(), np.float64), heads, max_dis)
  fc = layer.fc
  expected = expected @ np.asarray(fc.kernel.get_value(), np.float64) + np.asarray(fc.bias.get_value())
  got = layer(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
  assert rel_err(got, expected) <= 1e-5


def test_memory_keeps_first_frame_and_overwrites_oldest_when_full():
  frame = lambda v: jnp.full((1, 1, 2, 4), float(v))  # [L, B, HW, C]
  memory = lstt_lib.init_memory(frame(0), frame(0), capacity=3)
  for v, add in ((1, True), (2, False), (3, True), (4, True), (5, True)):
    memory = lstt_lib.write_memory(memory, frame(v), frame(-v), add)
  # slots: frame 0 kept; 1 and 3 filled slots 1, 2; then 4 overwrote 1 (oldest), 5 overwrote 3
  np.testing.assert_array_equal(memory.long_k[0, 0, :, 0, 0], [0., 4., 5.])
  np.testing.assert_array_equal(memory.long_v[0, 0, :, 0, 0], [0., -4., -5.])
  assert memory.long_valid.all() and int(memory.written) == 5
  np.testing.assert_array_equal(memory.short_k[0, 0, 0], [5.] * 4)
