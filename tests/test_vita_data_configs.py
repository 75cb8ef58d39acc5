"""The VITA dataset configs' joint COCO training data (official DATASETS.TRAIN / DATASET_RATIO of each yaml) and
the COCO pretraining config (`configs/coco/vita_R50_bs16_50ep.yaml`): they build and `--config X --help` works."""

import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config -> (COCO directory, VIS directory, eval directory, ratios), values of the official yamls.
JOINT = {
    'vita_ytvis19': ('coco2ytvis2019_train', 'ytvis_2019_train', 'ytvis_2019_val', (1.0, 0.75)),
    'vita_ytvis19_swinl': ('coco2ytvis2019_train', 'ytvis_2019_train', 'ytvis_2019_val', (1.0, 0.75)),
    'vita_ytvis21': ('coco2ytvis2021_train', 'ytvis_2021_train', 'ytvis_2021_val', (1.0, 0.8)),
    'vita_ytvis21_swinl': ('coco2ytvis2021_train', 'ytvis_2021_train', 'ytvis_2021_val', (1.0, 0.8)),
    'vita_ovis': ('coco2ovis_train', 'ovis_train', 'ovis_val', (1.0, 0.25)),
    'vita_ovis_swinl': ('coco2ovis_train', 'ovis_train', 'ovis_val', (1.0, 0.25)),
}


@pytest.mark.parametrize('name', sorted(JOINT))
def test_joint_configs(name):
  coco, vis, val, ratios = JOINT[name]
  c = importlib.import_module(f'configs.{name}').get_config()
  assert c.dataset.tfrecords == f'datasets/tfrecords/{coco},datasets/tfrecords/{vis}'
  assert c.dataset.eval_tfrecords == f'datasets/tfrecords/{val}'
  assert tuple(c.input.dataset_ratios) == ratios
  assert c.input.augment_pseudo.rotation_center == (0.4, 0.6)


def test_coco_pretraining_config():
  c = importlib.import_module('configs.vita_coco_pseudo').get_config()
  assert (c.dataset.num_classes, c.model.num_classes, c.input.sampler.clip_len, c.input.batch_size) == (80, 80, 1, 16)
  assert (c.train.lr, tuple(c.train.lr_steps), c.train.num_steps, c.tracker.topk) == (
      1e-4, (327778, 355092), 368750, 100)
  assert not c.input.augment_pseudo and c.dataset.tfrecords == 'datasets/tfrecords/coco_2017_train'


@pytest.mark.parametrize('name', ['vita_ovis', 'vita_coco_pseudo'])
def test_help(name):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, '-m', 'visjax.main', '--config', f'configs/{name}.py', '--help'], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "--config.dataset.tfrecords='datasets/tfrecords/" in out.stdout
  assert ('--config.input.dataset_ratios=' in out.stdout) == (name == 'vita_ovis')
