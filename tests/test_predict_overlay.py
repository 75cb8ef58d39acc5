"""`--mode predict` draws its overlay frame by frame: the streamed overlay equals the whole-video one, memory does not
grow with the number of frames, the GIF writer encodes each frame as it comes, and the frame count comes without a
decode."""

import glob
import json
import os
import tracemalloc

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from tests import train_toy
from visjax import predict
from visjax import visualize


@pytest.fixture(scope='module')
def toy_workdir(tmp_path_factory):
  """A workdir holding a randomly initialised toy model as its converted checkpoint."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from visjax import convert as convert_lib  # pylint: disable=g-import-not-at-top
  from visjax.models import registry  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('predict_overlay'))
  model = registry.get_method(train_toy.get_config()).build_model(nnx.Rngs(0))
  convert_lib.save_converted(model, os.path.join(workdir, 'converted'))
  return workdir


def _decode_all(segmentations, size):
  """bool `[T, H, W]` of per-frame RLEs (None where absent), decoded here with pycocotools."""
  return np.stack([mask_utils.decode(s).astype(bool) if s else np.zeros(size, bool) for s in segmentations])


def test_streamed_overlay_equals_the_whole_video_overlay(toy_workdir, synthetic_paths, tmp_path):
  """Ground truth | prediction as PNG frames (lossless): pixel-identical to overlaying the whole video in memory
  (`overlay_video` + `side_by_side` on all decoded frames and masks at once, as predict did before it streamed)."""
  from data_pipeline import ytvis_json  # pylint: disable=g-import-not-at-top
  dataset = ytvis_json.load(synthetic_paths['train'])
  video = max(dataset.videos, key=lambda v: len(dataset.tracks_of(v.id)))
  gt_tracks = dataset.tracks_of(video.id)
  assert len(gt_tracks) >= 2
  folder = os.path.join(synthetic_paths['images'], video.name)
  config = train_toy.get_config()
  config.predict.input = folder
  config.predict.output = str(tmp_path / 'frames')
  config.predict.ground_truth = synthetic_paths['train']
  config.predict.score_threshold = 0.0
  config.input.min_size_test = 16
  config.input.max_size_test = 32
  out = predict.predict(config, toy_workdir)
  with open(out['tracks']) as f:
    rows = json.load(f)['tracks']
  size = (video.height, video.width)
  pred = [_decode_all(r['segmentations'], size) for r in rows]
  assert rows and any(m.any() for m in pred), 'the toy model should draw a mask'
  frames = predict.read_video(folder)
  gt = [ytvis_json.decode_track_masks(t).astype(bool) for t in gt_tracks]
  table = dataset.category_table
  gt_labels = [f'{i} {table.names[table.to_index(t.category_id)]}' for i, t in enumerate(gt_tracks, start=1)]
  pred_labels = [f'{r["track_id"]} {r["category_name"] or r["category_id"]} {r["score"]:.2f}' for r in rows]
  want = visualize.side_by_side(visualize.overlay_video(frames, gt, gt_labels),
                                visualize.overlay_video(frames, pred, pred_labels))
  names = sorted(os.listdir(out['overlay']))
  assert names == [f'{i:05d}.png' for i in range(video.length)]
  got = np.stack([np.asarray(Image.open(os.path.join(out['overlay'], n))) for n in names])
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)


def _frames_folder(path, num_frames: int) -> str:
  os.makedirs(path)
  rng = np.random.default_rng(0)
  for i in range(num_frames):
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(os.path.join(path, f'{i:05d}.png'))
  return path


def _square_rles(num_frames: int) -> list[dict]:
  masks = np.zeros((32, 48, num_frames), np.uint8, order='F')
  for t in range(num_frames):
    masks[4 + t % 8:20 + t % 8, 6:30, t] = 1
  return mask_utils.encode(masks)


def test_overlay_memory_does_not_grow_with_the_video(tmp_path):
  """Peak traced (numpy) memory of `write_overlay` on 4 vs 24 frames (each upscaled to 480x720, ~1 MB): the same
  within a frame's worth; holding the video (as before) would add ~20 upscaled frames and overlays."""
  peaks = []
  for num_frames in (4, 24):
    folder = _frames_folder(str(tmp_path / f'in{num_frames}'), num_frames)
    pred = ([_square_rles(num_frames)], ['1 a 0.90'])
    tracemalloc.start()
    count = predict.write_overlay(folder, str(tmp_path / f'out{num_frames}'), (32, 48), pred, pred)
    peaks.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
    assert count == num_frames
  frame_bytes = 480 * 720 * 3
  assert peaks[1] - peaks[0] < frame_bytes, peaks


def test_gif_writer_encodes_each_frame_as_it_comes(tmp_path):
  """The GIF under its temporary name grows with every appended frame; the finished file decodes to the frames."""
  path = str(tmp_path / 'o.gif')
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 255, (5, 40, 60, 3), dtype=np.uint8)
  sizes = []
  with visualize.open_writer(path) as append:
    for f in frames:
      append(f)
      (tmp,) = glob.glob(str(tmp_path / '.o.tmp-*.gif'))
      sizes.append(os.path.getsize(tmp))
  assert all(b > a + 40 * 60 // 2 for a, b in zip(sizes, sizes[1:])), sizes
  decoded = []
  with Image.open(path) as gif:
    for i in range(gif.n_frames):
      gif.seek(i)
      decoded.append(np.asarray(gif.convert('RGB')))
  want = [np.asarray(Image.fromarray(f).convert('P', palette=Image.Palette.ADAPTIVE).convert('RGB')) for f in frames]
  np.testing.assert_array_equal(np.stack(decoded), np.stack(want))
  with pytest.raises(ValueError, match='No frames'):
    with visualize.open_writer(str(tmp_path / 'empty.gif')):
      pass
  assert sorted(os.listdir(tmp_path)) == ['o.gif']  # no temporary file left, no empty GIF


@pytest.mark.parametrize('ext', ['.mp4', '.gif', ''])
def test_frame_count_without_decoding(tmp_path, ext):
  """`frame_count` of an mp4 (ffmpeg stream copy), a GIF (Pillow) and a folder equals the decoded frame count."""
  if ext == '.mp4':
    pytest.importorskip('imageio_ffmpeg')
  frames = np.random.default_rng(2).integers(0, 255, (7, 32, 48, 3), dtype=np.uint8)
  path = str(tmp_path / f'v{ext}')
  visualize.write_video(frames, path)
  assert predict.frame_count(path) == sum(1 for _ in predict.iter_frames(path)) == 7
