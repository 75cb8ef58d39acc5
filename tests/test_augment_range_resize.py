"""mmdet's `Resize(multiscale_mode='range', keep_ratio=True)` (IAI's multi-scale training sizes) as
`Recipe.max_size_choices`, against a float64 NumPy port of mmdet v2.11 `Resize.random_sample` + mmcv
`rescale_size`."""

import collections

import numpy as np
import pytest

pytest.importorskip('tensorflow')

from configs import iai_common  # pylint: disable=g-import-not-at-top
from configs import iai_ovis
from data_pipeline import augment
from data_pipeline import tfrecord

SHORT, LONG = (360, 480), (649, 960)  # img_scale [(649, 360), (960, 480)]


def _mmcv_rescale_size(h: int, w: int, long_edge: int, short_edge: int) -> tuple[int, int]:
  """mmcv.rescale_size((w, h), (long_edge, short_edge)) as (new_h, new_w)."""
  factor = min(long_edge / max(h, w), short_edge / min(h, w))
  return int(h * factor + 0.5), int(w * factor + 0.5)


def _mmdet_size_distribution(h: int, w: int) -> dict[tuple[int, int], float]:
  """P(output size) of mmdet's range mode: long edge ~ randint(649, 961), short edge ~ randint(360, 481)."""
  counts = collections.Counter(_mmcv_rescale_size(h, w, lo, sh) for lo in range(LONG[0], LONG[1] + 1)
                               for sh in range(SHORT[0], SHORT[1] + 1))
  total = sum(counts.values())
  return {k: v / total for k, v in counts.items()}


def _recipe() -> augment.Recipe:
  c = iai_common.multiscale(iai_common.iai_config(num_classes=40))
  return augment.make_recipe(c.input.augment, min_sizes=c.input.min_size_train, max_size=c.input.max_size_train)


@pytest.mark.parametrize('h, w', [(720, 1280), (480, 640), (1080, 1920), (1280, 720)])
def test_sizes_equal_mmcv_rescale_for_every_draw(h, w):
  """Every (short, cap) pair the recipe can draw gives mmcv's size (±1 px where float32 rounding crosses a .5)."""
  tf = tfrecord.import_tf()
  recipe = _recipe()
  shorts, caps = np.meshgrid(np.asarray(recipe.min_sizes, np.float32), np.asarray(recipe.max_size_choices,
                                                                                  np.float32))
  new_h, new_w = augment.shortest_edge_size(tf.constant(float(h)), tf.constant(float(w)), tf.constant(shorts.ravel()),
                                            tf.constant(caps.ravel()))
  got = np.stack([new_h.numpy(), new_w.numpy()], 1)
  want = np.asarray([_mmcv_rescale_size(h, w, int(c), int(s)) for s, c in zip(shorts.ravel(), caps.ravel())])
  assert np.abs(got - want).max() <= 1
  assert (got != want).any(axis=1).mean() < 0.01


def test_drawn_size_distribution_matches_mmdet():
  """Output widths drawn through `main_resize_choice` over many clip seeds follow mmdet's distribution
  (Kolmogorov-Smirnov distance < 0.04; the 99% critical value at n = 3000 is 0.030), short side and cap are
  uncorrelated as mmdet's independent draws; the old approximation (six short sides, cap 960) is far from it."""
  tf = tfrecord.import_tf()
  recipe, (h, w), n = _recipe(), (720, 1280), 3000
  want = _mmdet_size_distribution(h, w)
  widths = np.arange(1, 2 * LONG[1])
  want_cdf = np.cumsum([sum(p for (_, nw), p in want.items() if nw == x) for x in widths])

  def draws(r: augment.Recipe) -> np.ndarray:
    return np.asarray([[float(v) for v in augment.main_resize_choice(tf.constant([s, 7], tf.int64), 0, r)]
                       for s in range(n)])

  def ks_distance(r: augment.Recipe) -> float:
    got = np.asarray([_mmcv_rescale_size(h, w, int(c), int(s))[1] for s, c in draws(r)])
    return float(np.abs(np.searchsorted(np.sort(got), widths, side='right') / n - want_cdf).max())

  assert ks_distance(recipe) < 0.04
  short, cap = draws(recipe).T  # mmdet draws them independently
  assert abs(np.corrcoef(short, cap)[0, 1]) < 0.06
  assert ks_distance(augment.Recipe(min_sizes=(360, 384, 408, 432, 456, 480), max_size=960)) > 0.15


def test_iai_multiscale_configs_use_the_range_and_bad_caps_fail():
  c = iai_ovis.get_config()
  assert tuple(c.input.min_size_train) == tuple(range(360, 481)) and c.input.max_size_train == 960
  assert tuple(c.input.augment.max_size_choices) == tuple(range(649, 961))
  with pytest.raises(ValueError, match='max_size_choices must lie in'):
    augment.Recipe(min_sizes=(360,), max_size=900, max_size_choices=(649, 960))
