"""Rules of the clip samplers (data_pipeline.samplers) with each method's official settings (configs/input_recipes.py),
checked over many seeds."""

import numpy as np
import pytest

pytest.importorskip('tensorflow')

import ml_collections  # pylint: disable=g-import-not-at-top

from configs import input_recipes  # pylint: disable=g-import-not-at-top
from data_pipeline import samplers  # pylint: disable=g-import-not-at-top

SEEDS = range(40)


def _sampler(method, **overrides):
  """The ClipSampler of a method's official `config.input.sampler`, with field overrides."""
  c = ml_collections.ConfigDict({'input': {}})
  getattr(input_recipes, method)(c)
  c.input.sampler.update(overrides)
  return samplers.make_sampler(c.input.sampler)


def _clips(sampler, length, annotated=None):
  annotated = np.ones(length, bool) if annotated is None else annotated
  return np.stack([sampler(length, annotated, [s, 7]).numpy() for s in SEEDS])


def _check_reference_rule(clip, length, frame_range):
  """Some frame r of the clip is the reference: every other frame is within ±R of r, and differs from r."""
  for r in set(clip.tolist()):
    others = list(clip)
    others.remove(r)
    if all(o != r and abs(o - r) <= frame_range for o in others):
      return True
  return length == 1 and set(clip.tolist()) == {0}


@pytest.mark.parametrize('method,clip_len,frame_range', [('idol', 2, 10), ('vita', 5, 20), ('vita', 6, 8)])
@pytest.mark.parametrize('length', [1, 2, 7, 36])
def test_reference_clip_rules_sorted(method, clip_len, frame_range, length):
  sampler = _sampler(method, clip_len=clip_len, frame_range=frame_range)
  clips = _clips(sampler, length)
  assert clips.shape == (len(SEEDS), clip_len) and clips.dtype == np.int32
  assert np.all((clips >= 0) & (clips < length))
  assert np.all(np.diff(clips, axis=1) >= 0), 'IDOL / VITA clips are sorted in time'
  for clip in clips:
    assert _check_reference_rule(clip, length, frame_range), clip
  if length == 36:
    assert len(np.unique(clips[:, 0])) > 10, 'reference frame is drawn over the whole video'
    if clip_len > 2:
      assert np.any(clips.max(1) - clips.min(1) > frame_range), 'frames reach both sides of the reference'


def test_idol_pairs_differ_when_possible():
  clips = _clips(_sampler('idol'), 30)
  assert np.all(clips[:, 0] < clips[:, 1]), 'key and reference are distinct frames, sorted'
  assert np.all(clips[:, 1] - clips[:, 0] <= 10)


def test_vita_draws_with_replacement():
  """As the detectron2 mapper (np.random.choice with replacement), repeated frames occur in short ranges."""
  clips = _clips(_sampler('vita', clip_len=5, frame_range=2), 30)
  assert any(len(set(c.tolist())) < 5 for c in clips)


def test_visolo_three_frames_shuffled():
  sampler = _sampler('visolo')
  assert sampler.clip_len == 3 and sampler.frame_range == 20
  clips = _clips(sampler, 50)
  for clip in clips:
    assert _check_reference_rule(np.sort(clip), 50, 20)
  assert np.any(np.diff(clips, axis=1) < 0), 'VISOLO shuffles the sorted frames'
  assert np.any(np.all(np.diff(clips, axis=1) > 0, axis=1)), 'some clips stay in order'


@pytest.mark.parametrize('length', [1, 3, 5, 12, 40])
def test_iai_gaps_one_to_three(length):
  clips = _clips(_sampler('iai'), length)
  assert clips.shape == (len(SEEDS), 5)
  if length >= 5:
    gaps = np.diff(clips, axis=1)
    assert np.all((gaps >= 1) & (gaps <= 3)), gaps
    if length >= 12:
      assert set(np.unique(gaps).tolist()) == {1, 2, 3}
  else:  # Short videos are cycled to 5 entries, as the IAI dataset does.
    expected = np.arange(5) % length
    for clip in clips:
      assert clip.tolist() == expected.tolist()


def test_iai_uses_annotated_frames_only():
  annotated = np.zeros(20, bool)
  annotated[[2, 3, 7, 8, 9, 15, 19]] = True
  frames = np.flatnonzero(annotated)
  clips = _clips(_sampler('iai'), 20, annotated)
  for clip in clips:
    assert set(clip.tolist()) <= set(frames.tolist())
    positions = np.searchsorted(frames, clip)
    assert np.all((np.diff(positions) >= 1) & (np.diff(positions) <= 3))
  # No annotated frame at all: every frame is eligible.
  clips = _clips(_sampler('iai'), 20, np.zeros(20, bool))
  assert np.all((np.diff(clips, axis=1) >= 1) & (np.diff(clips, axis=1) <= 3))


@pytest.mark.parametrize('method', ['idol', 'vita', 'visolo', 'iai'])
def test_deterministic_for_a_seed(method):
  sampler = _sampler(method)
  a = [sampler(25, np.ones(25, bool), [s, 1]).numpy().tolist() for s in range(10)]
  b = [sampler(25, np.ones(25, bool), [s, 1]).numpy().tolist() for s in range(10)]
  assert a == b
  assert len({tuple(x) for x in a}) > 5


def test_bad_sampler_config():
  with pytest.raises(ValueError, match='kind must be one of'):
    samplers.make_sampler({'kind': 'seqformer', 'clip_len': 2, 'frame_range': 3})
  with pytest.raises(ValueError, match='>= 1'):
    _sampler('vita', clip_len=0)
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['clip_length'\]"):
    samplers.make_sampler({'kind': 'reference', 'clip_length': 2, 'frame_range': 3})


@pytest.mark.parametrize('length', [1, 3, 9, 40])
def test_without_replacement_draws_distinct_frames_when_it_can(length):
  sampler = _sampler('vita', clip_len=5, frame_range=4, replacement=False)
  clips = _clips(sampler, length)
  assert np.all((clips >= 0) & (clips < length)) and np.all(np.diff(clips, axis=1) >= 0)
  for clip in clips:
    assert _check_reference_rule(clip, length, 4), clip
    if length >= 9:  # 8 candidates around any reference of a long enough video... at least 4 at the border
      assert len(set(clip.tolist())) == 5, clip
  with_replacement = _clips(_sampler('vita', clip_len=5, frame_range=4), 40)
  assert any(len(set(c.tolist())) < 5 for c in with_replacement), 'with replacement repeats frames sometimes'
