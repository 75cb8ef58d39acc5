"""visjax.visualize: distinct track colours, mask blending, and the GIF / MP4 / PNG writers round-trip."""

import os

import numpy as np
import pytest
from PIL import Image

from visjax import visualize


def test_palette_distinct():
  colors = visualize.palette(12)
  assert colors.shape == (12, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors}) == 12


def test_overlay_blends_only_mask_pixels():
  frame = np.full((20, 30, 3), 100, np.uint8)
  mask = np.zeros((1, 20, 30), bool)
  mask[0, 12:18, 5:25] = True
  color = np.array([[255, 0, 0]], np.uint8)
  out = visualize.overlay_frame(frame, mask, color, [''], alpha=0.5)
  np.testing.assert_array_equal(out[15, 10], [178, 50, 50])  # (100 + 255) / 2 rounded, 100 / 2
  np.testing.assert_array_equal(out[19, 29], [100, 100, 100])  # outside mask and label box
  with pytest.raises(ValueError, match='do not match'):
    visualize.overlay_frame(frame, mask[:, :10], color, [''])


@pytest.mark.parametrize('name', ['o.gif', 'o.mp4', 'frames'])
def test_writers_round_trip(tmp_path, name):
  if name.endswith('.mp4'):
    pytest.importorskip('imageio_ffmpeg')
  frames = np.stack([np.full((17, 23, 3), 40 * i, np.uint8) for i in range(5)])  # odd sizes
  path = visualize.write_video(frames, str(tmp_path / name))
  if name.endswith('.gif'):
    assert Image.open(path).n_frames == 5
  elif name.endswith('.mp4'):
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    video = iio.imread(path, index=None)
    assert video.shape[0] == 5 and video.shape[1:3] == (18, 24)  # padded to even for yuv420p
    assert abs(float(video[4, :17, :23].mean()) - 160) < 4
  else:
    assert sorted(os.listdir(path)) == [f'{i:05d}.png' for i in range(5)]
  with pytest.raises(ValueError, match='Unsupported'):
    visualize.write_video(frames, str(tmp_path / 'x.avi'))
