"""Shared pytest setup: CPU JAX, float32 defaults, and fixtures for the synthetic dataset."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest

SYNTHETIC_NUM_VIDEOS = 6
SYNTHETIC_SEED = 0


@pytest.fixture(scope='session')
def synthetic_paths(tmp_path_factory) -> dict[str, str]:
  """A small synthetic YouTube-VIS set (6 videos, seed 0), generated once per session.

  Returns data_pipeline.synthetic.generate's dict: 'root', 'images' (JPEGImages dir), 'train', 'valid' (json).
  """
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('synthetic_ytvis')
  return synthetic.generate(str(root), num_videos=SYNTHETIC_NUM_VIDEOS, seed=SYNTHETIC_SEED)


@pytest.fixture(scope='session')
def synthetic_spec() -> dict[str, int]:
  """How the session's synthetic set was generated: {'num_videos', 'seed'}."""
  return {'num_videos': SYNTHETIC_NUM_VIDEOS, 'seed': SYNTHETIC_SEED}


@pytest.fixture(scope='session')
def synthetic_root(synthetic_paths) -> str:
  """Root directory of the session's synthetic set: JPEGImages/, train.json, valid.json."""
  return synthetic_paths['root']
