"""Demo dataset preparation: synthetic generation + TFRecord conversion once, then reuse; the demo config."""

import os

import pytest

from visjax.train import prepare


def test_prepare_synthetic_generates_converts_once(tmp_path):
  pytest.importorskip('tensorflow')
  from configs import demo_synthetic  # pylint: disable=g-import-not-at-top
  config = demo_synthetic.get_config()
  root = str(tmp_path / 'synthetic')
  config.dataset.root = root
  config.dataset.valid_json = f'{root}/valid.json'
  config.dataset.tfrecords = f'{root}/tfrecords_train'
  config.dataset.eval_tfrecords = f'{root}/tfrecords_valid'
  config.dataset.synthetic.num_videos = 4
  config.dataset.synthetic.update(dict(height=32, width=48, min_frames=2, max_frames=3))
  prepare.prepare_dataset(config)
  manifests = [os.path.join(config.dataset.tfrecords, 'manifest.json'),
               os.path.join(config.dataset.eval_tfrecords, 'manifest.json')]
  assert all(os.path.exists(m) for m in manifests)
  stamps = [os.path.getmtime(p) for p in manifests + [config.dataset.valid_json]]
  prepare.prepare_dataset(config)  # present: nothing is regenerated or reconverted
  assert stamps == [os.path.getmtime(p) for p in manifests + [config.dataset.valid_json]]
  first = prepare.first_video_dir(config)
  assert first == os.path.join(root, 'JPEGImages', 'synth_00003') and os.listdir(first)
  # A set generated with other settings is refused, naming the file and the differing fields.
  config.dataset.synthetic.max_radius = 0.5
  config.dataset.synthetic.seed = 1
  with pytest.raises(ValueError, match=r'generation\.json.*max_radius: 0\.\d+ there vs 0\.5.*seed: 0 there vs 1'):
    prepare.prepare_dataset(config)


def test_prepare_rejects_unknown_kind_and_missing_fields():
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.base_config()
  prepare.prepare_dataset(config)  # '' = nothing to do
  config.dataset.prepare = 'coco'
  with pytest.raises(ValueError, match='only "synthetic"'):
    prepare.prepare_dataset(config)
  config.dataset.prepare = 'synthetic'
  with pytest.raises(ValueError, match='config.dataset.root'):
    prepare.prepare_dataset(config)
