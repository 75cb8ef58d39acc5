"""IDOL tracker: unit cases (birth, match, occlusion gap, death, backdrops, video-level filter), per-frame
selection, output masks vs torch, and id parity with a torch port of the official tracker on recorded detections."""

import numpy as np
import pytest

from configs import idol_common
from visjax.inference import postprocess
from visjax.inference import tracks as tracks_lib
from visjax.models.idol import tracker as tracker_lib

H, W = 16, 16
TRACKER = tracker_lib.tracker_settings(idol_common.idol_config(num_classes=40).tracker)


def _tracker():
  """The tracker with the official settings (configs/idol_common.py)."""
  return tracker_lib.IDOLTracker.from_settings(TRACKER)


def _box_mask(slot):
  """Non-overlapping 4x4 squares on a 16x16 grid (slot 0..15)."""
  m = np.zeros((H, W), bool)
  r, c = divmod(slot % 16, 4)
  m[4 * r:4 * r + 4, 4 * c:4 * c + 4] = True
  return m


def _logits(mask):
  return np.where(mask, 4., -4.).astype(np.float32)


class Scene:
  """Objects with fixed base embeddings; `frame(visible)` builds one frame's detections in score order."""

  def __init__(self, num_objects, dim=16, seed=0, noise=0.05, scale=3.):
    self.rng = np.random.default_rng(seed)
    self.base = self.rng.normal(size=(num_objects, dim)).astype(np.float32)
    self.base *= scale / np.linalg.norm(self.base, axis=1, keepdims=True)
    self.noise = noise

  def frame(self, visible, scores=None, extra=()):
    """visible: object ids; extra: (score, mask slot, embedding) distractors. Returns detection arrays."""
    dets = []
    for k, obj in enumerate(visible):
      score = 0.8 if scores is None else scores[k]
      emb = self.base[obj] + self.noise * self.rng.normal(size=self.base.shape[1]).astype(np.float32)
      dets.append((score, _box_mask(obj), emb))
    dets += list(extra)
    dets.sort(key=lambda d: -d[0])
    scores = np.array([d[0] for d in dets], np.float32)
    masks = np.stack([d[1] for d in dets])
    embeds = np.stack([d[2] for d in dets]).astype(np.float32)
    return scores, masks, embeds


def _match(tr, scene_frame, frame_id):
  scores, masks, embeds = scene_frame
  keep, ids = tr.match(scores, np.zeros(len(scores), np.int64), masks, embeds, frame_id)
  return keep, ids


def _ids_by_mask(scene_frame, keep, ids):
  masks = scene_frame[1][keep]
  return {int(np.argmax(m.reshape(4, 4, 4, 4).any((1, 3)).ravel())): int(i) for m, i in zip(masks, ids)}


def test_birth_and_match():
  scene = Scene(3)
  tr = _tracker()
  f0 = scene.frame([0, 1, 2], scores=[0.9, 0.5, 0.1])  # 0.1 < init_score_thr: not born
  keep, ids = _match(tr, f0, 0)
  assert keep.all()
  assert list(ids[:2]) == [0, 1] and ids[2] < 0
  f1 = scene.frame([2, 1, 0], scores=[0.9, 0.8, 0.7])
  keep, ids = _match(tr, f1, 1)
  by_obj = _ids_by_mask(f1, keep, ids)
  assert by_obj[0] == 0 and by_obj[1] == 1 and by_obj[2] == 2  # object 2 born now (score 0.9 > 0.2)


def test_occlusion_gap_reidentified_and_death():
  scene = Scene(2)
  tr = _tracker()
  for t in range(3):
    _, ids = _match(tr, scene.frame([0, 1]), t)
  assert sorted(ids) == [0, 1]
  for t in range(3, 7):  # object 1 occluded for 4 frames
    _match(tr, scene.frame([0]), t)
  f = scene.frame([0, 1])
  keep, ids = _match(tr, f, 7)
  assert _ids_by_mask(f, keep, ids) == {0: 0, 1: 1}, 'object 1 keeps its id after the gap'
  for t in range(8, 18):  # object 1 gone for 10 frames: its track dies (frame - last >= 10 at frame 17)
    _match(tr, scene.frame([0]), t)
  assert 1 not in tr.tracks and 0 in tr.tracks
  f = scene.frame([0, 1])
  keep, ids = _match(tr, f, 18)
  assert _ids_by_mask(f, keep, ids) == {0: 0, 1: 2}, 'a dead track is not revived: new id'


def test_track_survives_nine_frames_gap():
  scene = Scene(2)
  tr = _tracker()
  _match(tr, scene.frame([0, 1]), 0)
  for t in range(1, 10):
    _match(tr, scene.frame([0]), t)
  f = scene.frame([0, 1])
  keep, ids = _match(tr, f, 10)  # 10 - 0 >= 10 at the end of frame 10 only
  assert _ids_by_mask(f, keep, ids)[1] == 1


def test_backdrops_and_mask_nms():
  scene = Scene(2)
  tr = _tracker()
  rng = np.random.default_rng(1)
  junk = lambda: rng.normal(size=16).astype(np.float32)
  dup = (0.85, _box_mask(0), junk())  # same mask as object 0, lower score: removed by mask NMS
  far = (0.1, _box_mask(9), junk())  # low score, no overlap with earlier detections: backdrop -1
  near = np.zeros((H, W), bool)
  near[2:6, 4:8] = True  # low score, overlaps object 1's square (IoU 1/3): stays -2
  overlap = (0.05, near, junk())
  f = scene.frame([0, 1], scores=[0.9, 0.8], extra=[dup, far, overlap])
  keep, ids = _match(tr, f, 0)
  assert list(keep) == [True, False, True, True, True]
  assert list(ids) == [0, 1, -1, -2]
  assert tr.num_tracklets == 2


def _add(vt, t, ids, probs, encode):
  tracker_lib.add_frame(vt, t, ids, probs, encode, filter_min_frames=TRACKER.filter_min_frames,
                        filter_last_frames=TRACKER.filter_last_frames, filter_min_seen=TRACKER.filter_min_seen)


def _results(vt, rule):
  num_classes = len(vt.tracks()[0].class_scores) if vt.track_ids else 0
  return [(r['score'], r['category_id'], r['segmentations'])
          for r in tracks_lib.tracks_to_records(vt.tracks(), video_id=1, rule=rule,
                                                category_ids=np.arange(num_classes))]


def test_video_level_filter_and_scores():
  vt = tracks_lib.VideoTracks(num_frames=12)
  enc = lambda tid: (lambda k: {'id': tid})
  probs = lambda *p: np.array([p], np.float32)
  for t in range(12):
    if t < 2:  # id 5: seen twice, then gone: dropped once t > 8
      _add(vt, t, np.array([5]), probs(0.9, 0.01), enc(5))
    if t in (0, 1, 2):  # id 6: seen 3 times: kept
      _add(vt, t, np.array([6]), probs(0.2 + 0.1 * t, 0.5), enc(6))
    if t in (9, 11):  # id 7: seen twice but recently (present in the last 2 frames): kept
      _add(vt, t, np.array([7]), probs(0.04, 0.3), enc(7))
    _add(vt, t, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), enc(None))
  assert vt.track_ids == [6, 7]
  res = _results(vt, tracks_lib.RecordRule('threshold', threshold=0.05))
  assert [(round(s, 5), c) for s, c, _ in res] == [(0.3, 0), (0.5, 1), (0.3, 1)]
  segs = res[0][2]
  assert segs[:3] == [{'id': 6}] * 3 and segs[3:] == [None] * 9
  single = _results(vt, tracks_lib.RecordRule('argmax'))
  assert [(round(s, 5), c) for s, c, _ in single] == [(0.5, 1), (0.3, 1)]


def test_select_detections():
  probs = np.array([[0.95, 0.0], [0.9, 0.0], [0.0, 0.85], [0.05, 0.02], [0.5, 0.]], np.float32)
  boxes = np.array([[.5, .5, .2, .2], [.5, .5, .2, .21], [.5, .5, .2, .2], [.1, .1, .1, .1], [.8, .8, .1, .1]],
                   np.float32)
  # query 1 overlaps query 0 (same class, IoU > 0.9): suppressed; query 2 same box but other class: kept.
  np.testing.assert_array_equal(tracker_lib.select_detections(probs, boxes), [0, 2, 4])
  low = np.full((4, 3), 0.05, np.float32)
  low[2, 1] = 0.09
  np.testing.assert_array_equal(tracker_lib.select_detections(low, boxes[:4]), [2])


@pytest.mark.parametrize('image_size,orig_size', [((28, 40), (56, 80)), ((28, 40), (21, 30)), ((32, 48), (45, 61))])
def test_final_masks_match_torch(image_size, orig_size):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3., size=(3, 8, 12)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.tensor(logits)[:, None], size=(32, 48), mode='bilinear',
                                        align_corners=False).sigmoid()
  ref = ref[:, :, :image_size[0], :image_size[1]]
  ref = (torch.nn.functional.interpolate(ref, size=orig_size, mode='nearest') > 0.5)[:, 0].numpy()
  out = np.asarray(tracker_lib.final_masks(logits, image_size=image_size, orig_size=orig_size))
  assert out.shape == ref.shape
  assert (out != ref).mean() < 1e-3  # float rounding exactly at 0.5 only


def _recorded_video(seed, num_frames=30, num_objects=5, num_classes=4):
  """Per-frame detections: objects blinking in and out, noisy embeddings (ambiguous matches happen), random
  scores and class vectors, plus low-score junk."""
  rng = np.random.default_rng(seed)
  scene = Scene(num_objects, seed=seed, noise=0.8, scale=2.5)
  visible = rng.uniform(size=(num_frames, num_objects)) < 0.7
  visible[:, 0] = True
  frames = []
  for t in range(num_frames):
    objs = list(np.nonzero(visible[t])[0])
    extra = [(float(rng.uniform(0.05, 0.3)), _box_mask(int(rng.integers(num_objects, 16))),
              rng.normal(size=16).astype(np.float32)) for _ in range(int(rng.integers(0, 3)))]
    scores, masks, embeds = scene.frame(objs, scores=list(rng.uniform(0.15, 0.95, size=len(objs))), extra=extra)
    probs = rng.uniform(0., 0.3, size=(len(scores), num_classes)).astype(np.float32)
    probs[np.arange(len(scores)), rng.integers(0, num_classes, size=len(scores))] = scores
    frames.append({'probs': probs, 'boxes': rng.uniform(0.2, 0.4, size=(len(scores), 4)).astype(np.float32),
                   'masks': np.stack([_logits(m) for m in masks]), 'embeds': embeds})
  return frames


@pytest.mark.parametrize('seed', range(4))
def test_parity_with_official_tracker(seed):
  torch = pytest.importorskip('torch')
  from tests import idol_reference  # pylint: disable=g-import-not-at-top
  frames = _recorded_video(seed)
  ref_ids, ref_out = idol_reference.reference_video_inference(frames, idol_reference.ReferenceTracker())
  tr = _tracker()
  vt = tracks_lib.VideoTracks(len(frames))
  matched_some = weighted = 0
  for t, f in enumerate(frames):
    probs = f['probs']
    keep, ids = tr.match(probs.max(1), probs.argmax(1), postprocess.sigmoid(f['masks']) > 0.5, f['embeds'], t)
    np.testing.assert_array_equal(ids, ref_ids[t].numpy(), err_msg=f'frame {t}')
    out = ids >= 0
    _add(vt, t, ids[out], probs[keep][out], lambda k: True)
    matched_some += int(np.sum(out))
  res = _results(vt, tracks_lib.RecordRule('threshold', threshold=TRACKER.apply_cls_thres))
  assert len(res) == len(ref_out)
  for (s, c, segs), (rs, rc, present) in zip(res, ref_out):
    assert c == rc and abs(s - rs) < 1e-6
    assert [x is not None for x in segs] == present
  assert matched_some > 0 and len(res) > 0
