"""Tests for visjax.losses against float64 NumPy references and (for the contrastive loss) a torch port of the
official pairwise formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visjax import losses


def _rel_err(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12)


def _random_xyxy(rng, n):
  xy = rng.uniform(0, 0.8, size=(n, 2))
  wh = rng.uniform(0.01, 0.5, size=(n, 2))
  return np.concatenate([xy, xy + wh], axis=1)


def _np_iou(b1, b2):
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  iou = np.zeros((len(b1), len(b2)))
  union = np.zeros_like(iou)
  giou = np.zeros_like(iou)
  for i in range(len(b1)):
    for j in range(len(b2)):
      iw = max(0., min(b1[i, 2], b2[j, 2]) - max(b1[i, 0], b2[j, 0]))
      ih = max(0., min(b1[i, 3], b2[j, 3]) - max(b1[i, 1], b2[j, 1]))
      union[i, j] = area1[i] + area2[j] - iw * ih
      iou[i, j] = iw * ih / union[i, j]
      cw = max(b1[i, 2], b2[j, 2]) - min(b1[i, 0], b2[j, 0])
      ch = max(b1[i, 3], b2[j, 3]) - min(b1[i, 1], b2[j, 1])
      giou[i, j] = iou[i, j] - (cw * ch - union[i, j]) / (cw * ch + 1e-7)
  return iou, union, giou


def test_box_conversions():
  rng = np.random.default_rng(0)
  xyxy = _random_xyxy(rng, 7)
  cxcywh = np.asarray(losses.box_xyxy_to_cxcywh(jnp.asarray(xyxy, jnp.float32)))
  ref = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2, xyxy[:, 2] - xyxy[:, 0],
                  xyxy[:, 3] - xyxy[:, 1]], 1)
  assert _rel_err(cxcywh, ref) < 1e-6
  back = losses.box_cxcywh_to_xyxy(jnp.asarray(cxcywh))
  assert _rel_err(back, xyxy) < 1e-6
  assert losses.box_cxcywh_to_xyxy(jnp.zeros((2, 3, 4))).shape == (2, 3, 4)


def test_pairwise_iou_and_giou():
  rng = np.random.default_rng(1)
  b1, b2 = _random_xyxy(rng, 9), _random_xyxy(rng, 6)
  b2[0] = b1[0]  # identical boxes: IoU 1, GIoU 1
  b2[1] = [5., 5., 6., 6.]  # disjoint: IoU 0, GIoU < 0
  iou_ref, union_ref, giou_ref = _np_iou(b1, b2)
  iou, union = losses.box_iou(jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32))
  giou = losses.generalized_box_iou(jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32))
  assert _rel_err(iou, iou_ref) < 1e-5
  assert _rel_err(union, union_ref) < 1e-5
  assert _rel_err(giou, giou_ref) < 1e-5
  assert abs(float(giou[0, 0]) - 1.) < 1e-5 and float(giou[0, 1]) < 0.
  # Batched leading dims.
  batched = losses.generalized_box_iou(jnp.stack([jnp.asarray(b1)] * 2), jnp.stack([jnp.asarray(b2)] * 2))
  assert batched.shape == (2, 9, 6)


def test_giou_loss_elementwise():
  rng = np.random.default_rng(2)
  b1, b2 = _random_xyxy(rng, 20), _random_xyxy(rng, 20)
  b2[3] = b1[3]
  ref = np.zeros(20)
  for i in range(20):  # fvcore's giou_loss, float64
    xk1, yk1 = max(b1[i, 0], b2[i, 0]), max(b1[i, 1], b2[i, 1])
    xk2, yk2 = min(b1[i, 2], b2[i, 2]), min(b1[i, 3], b2[i, 3])
    inter = (xk2 - xk1) * (yk2 - yk1) if (xk2 > xk1 and yk2 > yk1) else 0.
    union = (b1[i, 2] - b1[i, 0]) * (b1[i, 3] - b1[i, 1]) + (b2[i, 2] - b2[i, 0]) * (b2[i, 3] - b2[i, 1]) - inter
    area_c = (max(b1[i, 2], b2[i, 2]) - min(b1[i, 0], b2[i, 0])) * (max(b1[i, 3], b2[i, 3]) - min(b1[i, 1], b2[i, 1]))
    ref[i] = 1 - (inter / (union + 1e-7) - (area_c - union) / (area_c + 1e-7))
  out = losses.giou_loss(jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32))
  assert _rel_err(out, ref) < 1e-5
  assert abs(float(out[3])) < 1e-5
  # Consistent with the pairwise diagonal.
  _, _, giou_ref = _np_iou(b1, b2)
  np.testing.assert_allclose(out, 1 - np.diag(giou_ref), atol=1e-5)


def test_l1_loss():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  assert _rel_err(losses.l1_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)),
                  np.abs(a - b).sum(-1)) < 1e-6


@pytest.mark.parametrize('alpha', [0.25, -1.])
def test_sigmoid_focal_loss(alpha):
  rng = np.random.default_rng(4)
  x = rng.normal(scale=4., size=(6, 50))
  t = (rng.uniform(size=(6, 50)) < 0.3).astype(np.float64)
  p = 1 / (1 + np.exp(-x))
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  ref = ce * (1 - p_t) ** 2
  if alpha >= 0:
    ref = (alpha * t + (1 - alpha) * (1 - t)) * ref
  out = losses.sigmoid_focal_loss(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32), alpha=alpha)
  assert _rel_err(out, ref) < 1e-5
  # Large logits stay finite (stable BCE form).
  big = losses.sigmoid_focal_loss(jnp.array([100., -100.]), jnp.array([0., 1.]))
  assert np.all(np.isfinite(big)) and np.all(np.asarray(big) > 10.)


def test_dice_loss():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(4, 3, 8, 8))
  t = (rng.uniform(size=(4, 3, 8, 8)) < 0.4).astype(np.float64)
  p = 1 / (1 + np.exp(-x))
  for nb in (1, 2):
    axes = tuple(range(nb, 4))
    ref = 1 - (2 * (p * t).sum(axes) + 1) / (p.sum(axes) + t.sum(axes) + 1)
    out = losses.dice_loss(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32), num_batch_dims=nb)
    assert out.shape == ref.shape and _rel_err(out, ref) < 1e-5


def _torch_official_contrastive(anchor, cands, pos, neg):
  """IDOL's loss_reid for one gt, written as the official code (pairwise expand, +/-inf masking, logsumexp).

  `pos`/`neg` select rows of `cands`; the official code concatenates the positive rows then the negative rows.
  """
  torch = pytest.importorskip('torch')
  emb = torch.cat([cands[pos], cands[neg]], 0)
  label = torch.cat([torch.ones(int(pos.sum())), torch.zeros(int(neg.sum()))]).unsqueeze(0)
  pred = torch.einsum('nc,kc->nk', emb, anchor[None]).permute(1, 0)
  pos_inds, neg_inds = label == 1, label == 0
  pred_pos = pred * pos_inds.float()
  pred_neg = pred * neg_inds.float()
  pred_pos = torch.where(neg_inds, pred_pos + float('inf'), pred_pos)
  pred_neg = torch.where(pos_inds, pred_neg + float('-inf'), pred_neg)
  pos_expand = torch.repeat_interleave(pred_pos, pred.shape[1], dim=1)
  neg_expand = pred_neg.repeat(1, pred.shape[1])
  x = torch.nn.functional.pad(neg_expand - pos_expand, (0, 1), 'constant', 0)
  return torch.logsumexp(x, dim=1).sum()


@pytest.mark.parametrize('case', ['mixed', 'overlap', 'no_pos', 'no_neg', 'large'])
def test_contrastive_loss_matches_official_pairwise_form(case):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(6)
  k, e = 12, 16
  scale = 3. if case == 'large' else 0.3  # 'large': dot products of tens; exp would overflow without LSE
  anchor = rng.normal(scale=scale, size=e)
  cands = rng.normal(scale=scale, size=(k, e))
  pos = np.zeros(k, bool)
  neg = np.zeros(k, bool)
  pos[:3] = True
  neg[5:] = True
  if case == 'overlap':
    neg[1] = True  # a candidate that is both positive and negative
  if case == 'no_pos':
    pos[:] = False
  if case == 'no_neg':
    neg[:] = False
  anchor_t = torch.tensor(anchor, dtype=torch.float64, requires_grad=True)
  cands_t = torch.tensor(cands, dtype=torch.float64, requires_grad=True)
  ref = _torch_official_contrastive(anchor_t, cands_t, torch.tensor(pos), torch.tensor(neg))
  ref.backward()

  fn = lambda a, c: losses.contrastive_loss(a, c, jnp.asarray(pos), jnp.asarray(neg))
  out, (ga, gc) = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(anchor, jnp.float32),
                                                          jnp.asarray(cands, jnp.float32))
  assert np.isfinite(float(out))
  np.testing.assert_allclose(float(out), ref.item(), rtol=1e-5, atol=1e-6)
  if case in ('no_pos', 'no_neg'):
    assert float(out) == 0.
  ref_ga = anchor_t.grad.numpy() if anchor_t.grad is not None else np.zeros(e)
  ref_gc = cands_t.grad.numpy() if cands_t.grad is not None else np.zeros((k, e))
  assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gc))
  np.testing.assert_allclose(ga, ref_ga, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gc, ref_gc, rtol=1e-4, atol=1e-5)


def test_contrastive_aux_loss():
  rng = np.random.default_rng(7)
  k, e = 10, 8
  anchor, cands = rng.normal(size=e), rng.normal(size=(k, e))
  cands[0] = 0.  # zero vector: normalise with eps, cosine 0
  pos = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
  neg = np.array([0, 1, 1, 1, 0, 1, 0, 0, 1, 0], bool)
  def normalize(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  cos = normalize(cands) @ normalize(anchor)
  ref = (np.sum((cos[pos] - 1) ** 2) + np.sum(cos[neg] ** 2)) / (pos.sum() + neg.sum())
  out = losses.contrastive_aux_loss(jnp.asarray(anchor, jnp.float32), jnp.asarray(cands, jnp.float32),
                                    jnp.asarray(pos), jnp.asarray(neg))
  np.testing.assert_allclose(float(out), ref, rtol=1e-5)
  empty = losses.contrastive_aux_loss(jnp.ones(e), jnp.ones((k, e)), jnp.zeros(k, bool), jnp.zeros(k, bool))
  assert float(empty) == 0.
