"""VITA host-side inference (visjax/models/vita/inference.py) vs a torch port of the official `Vita.inference`
post-processing on random inputs (unsorted top-k compared as sets)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from visjax.models.vita import inference

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
F = torch.nn.functional


def _official(mask_cls, mask_embed, mask_features, interim_size, image_size, out_size, topk, chunk):
  """`Vita.inference` after the VITA forward (mask_features [T, C, h, w])."""
  num_queries, k1 = mask_cls.shape
  num_classes = k1 - 1
  scores = F.softmax(mask_cls, dim=-1)[:, :-1]
  labels = torch.arange(num_classes).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
  scores_per_video, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
  labels_per_video = labels[topk_indices]
  topk_indices = torch.div(topk_indices, num_classes, rounding_mode='floor')
  mask_embed = mask_embed[topk_indices]
  masks_per_video = []
  numerator = torch.zeros(len(mask_embed))
  denominator = torch.zeros(len(mask_embed))
  for i in range(math.ceil(len(mask_features) / chunk)):
    m_f = mask_features[i * chunk:(i + 1) * chunk]
    mask_pred = torch.einsum('qc,tchw->qthw', mask_embed, m_f)
    mask_pred = F.interpolate(mask_pred, size=interim_size, mode='bilinear', align_corners=False)
    mask_pred = mask_pred[:, :, :image_size[0], :image_size[1]]
    soft = mask_pred.sigmoid()
    hard = soft > 0.5
    numerator += (soft.flatten(1) * hard.flatten(1)).sum(1)
    denominator += hard.flatten(1).sum(1)
    masks_per_video.append(F.interpolate(mask_pred, size=out_size, mode='bilinear', align_corners=False) > 0.)
  scores_per_video *= numerator / (denominator + 1e-6)
  return scores_per_video.numpy(), labels_per_video.numpy(), topk_indices.numpy(), torch.cat(masks_per_video, 1).numpy()


@pytest.mark.parametrize('num_frames', [7, 3])
def test_matches_official_inference(num_frames):
  rng = np.random.default_rng(num_frames)
  cq, k, c, topk = 12, 6, 8, 10
  logits = rng.normal(size=(cq, k + 1)).astype(np.float32) * 2
  embed = rng.normal(size=(cq, c)).astype(np.float32)
  features = rng.normal(size=(num_frames, 12, 16, c)).astype(np.float32) * 0.5
  interim, image, out = (48, 64), (45, 60), (90, 121)
  det, masks = inference.video_inference(logits, embed, features, interim_size=interim, image_size=image,
                                         out_size=out, topk=topk, chunk_size=5)
  scores, labels, queries, ref_masks = _official(
      torch.from_numpy(logits), torch.from_numpy(embed), torch.from_numpy(features.transpose(0, 3, 1, 2)), interim,
      image, out, topk, 5)
  assert masks.shape == ref_masks.shape == (topk, num_frames) + out
  got = {(int(q), int(l)): (s, m) for q, l, s, m in zip(det.queries, det.labels, det.scores, masks)}
  want = {(int(q), int(l)): (s, m) for q, l, s, m in zip(queries, labels, scores, ref_masks)}
  assert got.keys() == want.keys()
  for key, (s, m) in want.items():
    np.testing.assert_allclose(got[key][0], s, rtol=1e-5)
    assert np.mean(got[key][1] != m) < 1e-4, key  # threshold ties at logit 0 only
  assert 0.1 < np.mean(masks) < 0.9


def test_select_topk_drops_no_object_and_allows_repeated_queries():
  logits = np.log(np.asarray([[0.45, 0.45, 0.1], [0.05, 0.05, 0.9]], np.float32))
  det = inference.select_topk(logits, 3)
  np.testing.assert_allclose(det.scores, [0.45, 0.45, 0.05], rtol=1e-6)
  assert list(det.queries[:2]) == [0, 0] and sorted(det.labels[:2].tolist()) == [0, 1]


def test_device_chunk_masks_match_host():
  rng = np.random.default_rng(5)
  embed = rng.normal(size=(4, 8)).astype(np.float32)
  features = rng.normal(size=(3, 12, 16, 8)).astype(np.float32) * 0.5
  sizes = dict(interim_size=(48, 64), image_size=(45, 60), out_size=(90, 121))
  host = inference.chunk_masks(embed, features, **sizes)
  device = inference.chunk_masks_device(jnp.asarray(embed), jnp.asarray(features), **sizes)
  assert np.mean(np.asarray(device.masks) != host.masks) < 1e-4 and host.masks.mean() > 0.1
  np.testing.assert_allclose(np.asarray(device.soft_sum), host.soft_sum, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(device.hard_count), host.hard_count, atol=1)  # threshold ties only
