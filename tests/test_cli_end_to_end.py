"""Each method's tiny config runs end to end through the CLI: train a few steps, eval, predict (overlay + tracks).

One subprocess per method (`python -m visjax.main --mode train_and_eval` with `predict.after_eval`), on its own
8-video synthetic set in the test's folder, so nothing is shared with other tests.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('method', ['idol', 'vita', 'visolo', 'iai'])
def test_tiny_config_trains_evaluates_and_predicts(tmp_path, method):
  root, work = tmp_path / 'data', tmp_path / 'work'
  flags = [f'--config.dataset.root={root}', f'--config.dataset.train_json={root}/train.json',
           f'--config.dataset.valid_json={root}/valid.json', f'--config.dataset.tfrecords={root}/tf_train',
           f'--config.dataset.eval_tfrecords={root}/tf_valid', '--config.dataset.synthetic.num_videos=8',
           '--config.train.num_steps=2', '--config.train.checkpoint_every=2', '--config.train.log_every=1',
           '--config.eval.max_videos=1', '--config.predict.after_eval=True', '--config.predict.output=overlay.gif']
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, '-m', 'visjax.main', '--config', f'configs/{method}_tiny.py', '--workdir',
                        str(work), '--mode', 'train_and_eval', *flags], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  with open(work / 'train_log.jsonl') as f:
    log = [json.loads(line) for line in f]
  assert [r['step'] for r in log] == [1, 2] and all(r['loss'] == r['loss'] for r in log)  # finite, not NaN
  with open(work / 'metrics.json') as f:
    metrics = json.load(f)
  assert 0.0 <= metrics['AP'] <= 1.0 and set(metrics['per_category_AP']) == {
      'circle', 'square', 'triangle', 'star', 'ring', 'cross'}
  assert (work / 'results.zip').stat().st_size > 0 and (work / 'checkpoints' / '2').is_dir()
  assert (work / 'overlay.gif').stat().st_size > 0
  assert [p for p in os.listdir(work) if p.startswith('tracks_') and p.endswith('.json')]
