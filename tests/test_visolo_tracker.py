"""VISOLO host inference (`visjax.models.visolo.tracker`) against a NumPy port of the official eval loop of
`Visolo.forward` with `getTestResultV4`, `getSegMaskV5`, `matrix_nms`, `getTrackInfo` and `getAverageCat`
(float32 as torch, dense `[K, N, H, W]` instance tensors as the official code), on random sequences built so that
every branch runs: matches, lost candidates re-found, empty frames, new instances."""

import copy

import numpy as np
import pytest

from configs import visolo_common
from visjax.models.visolo import tracker as tracker_lib
from visolo_reference import OfficialPort

S1, S2, C, H, W, D = 4, 6, 5, 16, 24, 8
S = S1 * S2


# -------------------------------------------------------------------------------------------------- random videos

def _video(seed, n_frames, n_objects=4):
  """Objects that move slowly over the grid and sometimes vanish; tracking features identify objects, so the
  tracking scores are high for the same object and low otherwise (with noise)."""
  rng = np.random.default_rng(seed)
  ids = rng.normal(size=(n_objects + 1, D)).astype(np.float32)  # row n_objects: background
  pos = rng.uniform([0, 0], [S1, S2], size=(n_objects, 2))
  yy, xx = np.mgrid[:H, :W]
  frames = []
  for t in range(n_frames):
    pos = np.clip(pos + rng.normal(scale=0.4, size=pos.shape), 0, [S1 - 0.01, S2 - 0.01])
    visible = rng.random(n_objects) > (0.6 if t % 4 == 3 else 0.15)
    cell_obj = np.full(S, n_objects)
    cats = rng.uniform(0, 0.08, size=(C, S)).astype(np.float32)
    mask_probs = np.zeros((S, H, W), np.float32)
    for k in np.nonzero(visible)[0]:
      cell = int(pos[k, 0]) * S2 + int(pos[k, 1])
      cell_obj[cell] = k
      cats[k % C, cell] = rng.uniform(0.3, 1.)
      cy, cx = pos[k, 0] / S1 * H, pos[k, 1] / S2 * W
      blob = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * rng.uniform(4, 12)))
      mask_probs[cell] = blob
      for nb in (cell - 1, cell + 1):  # neighbouring cells predict similar masks: NMS and overlap removal act
        if 0 <= nb < S and rng.random() < 0.6:
          cats[k % C, nb] = rng.uniform(0.1, 0.5)
          mask_probs[nb] = np.clip(blob * rng.uniform(0.7, 1.3) + rng.normal(scale=0.05, size=blob.shape), 0, 1)
    if t == 5:
      cats[:] = 0.01  # a frame without any detection
    if t == 8:  # two passing cells with empty masks: NaN Matrix NMS drops the frame (official quirk)
      empty = [c for c in range(S) if cell_obj[c] == n_objects and not mask_probs[c].any()][:2]
      cats[0, empty] = 0.5
    feature = ids[cell_obj] + rng.normal(scale=0.3, size=(S, D)).astype(np.float32)
    frames.append(dict(cats=cats.reshape(C, S1, S2), mask_probs=mask_probs.astype(np.float32), feature=feature))
  return frames


def _settings():
  return tracker_lib.tracker_settings(visolo_common.visolo_config(C).tracker)


def _track_fn(a, b):
  return (1. / (1. + np.exp(-(a @ b.T - 2.)))).astype(np.float32)


@pytest.mark.parametrize('seed,n_frames', [(0, 12), (1, 9), (2, 15), (3, 3)])
def test_tracker_matches_official_loop(seed, n_frames):
  cfg = _settings()
  frames = _video(seed, n_frames)
  official = OfficialPort(cfg, _track_fn)
  want = official.run(copy.deepcopy(frames))
  trk = tracker_lib.VisoloTracker(cfg, _track_fn)
  for f in frames:
    trk.add_frame(f['cats'].reshape(C, S).T, lambda cells, p=f['mask_probs']: p[cells], f['feature'])
  got = trk.finish()
  assert want is not None and len(got) == len(want['masks'])
  for k, track in enumerate(got):
    assert track.track_id == k
    for t in range(n_frames):
      present = want['masks'][k, t].any()
      assert (track.segmentations[t] is not None) == present, (k, t)
      if present:
        np.testing.assert_array_equal(track.segmentations[t], want['masks'][k, t])
        assert track.frame_scores[t] == pytest.approx(float(want['scores'][k, t]), rel=1e-6)
    np.testing.assert_allclose(track.class_scores, want['avg'][k], rtol=1e-6)
    assert track.class_scores.argmax() == want['labels'][k]
  if n_frames >= 9:  # every branch ran; frames 5 (nothing passes) and 8 (NaN Matrix NMS) are dropped
    assert all(v > 0 for v in official.events.values()), official.events
    assert all(track.segmentations[5] is None and track.segmentations[8] is None for track in got)
    assert sum(track.segmentations[7] is not None for track in got) > 0


def test_memory_schedule():
  """Frame 0, every 5th frame from 5 (appended at 7, 12, ...), and the last two; freed slots are reused."""
  schedule = tracker_lib.MemorySchedule()
  seen = []
  for t in range(18):
    slot = schedule.push(t)
    seen.append(list(schedule.frames))
    assert len(set(schedule.slots)) == len(schedule.slots) and slot == schedule.slots[-1]
  assert seen[2] == [0, 1, 2] and seen[3] == [0, 2, 3] and seen[6] == [0, 5, 6] and seen[7] == [0, 5, 6, 7]
  assert seen[11] == [0, 5, 10, 11] and seen[12] == [0, 5, 10, 11, 12] and seen[17] == [0, 5, 10, 15, 16, 17]
  assert tracker_lib.MemorySchedule.capacity(18) == 6 and tracker_lib.MemorySchedule.capacity(2) == 2


def test_segment_frame_quirks():
  cfg = _settings()
  probs = np.zeros((S, 2), np.float32)
  probs[0, 1] = 0.9  # only cell 0 passes: the official code treats the frame as empty
  masks = np.zeros((S, H, W), np.float32)
  masks[0, :4, :4] = 0.9
  assert tracker_lib.segment_frame(probs, lambda c: masks[c], None, cfg) is None
  probs[3, 0] = probs[7, 0] = probs[9, 1] = 0.8  # cells 3 and 7 have empty masks: NaN scores, NMS all NaN
  masks[9, 4:8, :] = 0.8
  assert tracker_lib.segment_frame(probs, lambda c: masks[c], None, cfg) is None
  masks[7, 8:, :] = 0.7
  dets = tracker_lib.segment_frame(probs, lambda c: masks[c], None, cfg)
  assert list(dets.cells) == [0, 9, 7]  # ordered by score x mean mask prob
  np.testing.assert_allclose(dets.scores, [0.81, 0.64, 0.56], rtol=1e-5)
  assert list(tracker_lib.argsort_desc(np.array([0.2, np.nan, 0.5, 0.5]))) == [1, 2, 3, 0]
