"""`python -m visjax.main` in subprocesses: clear failures for bad flags and a predict without weights.

Training through the CLI (overrides, SIGKILL-and-resume, 2 processes) is covered in test_train_engine.py and
test_train_sharded.py.
"""

import pytest

from tests import train_toy


def test_predict_without_checkpoint_fails_with_clear_message(tmp_path):
  frames = tmp_path / 'frames'
  frames.mkdir()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / '00000.png')
  out = train_toy.run_main(str(tmp_path / 'w'), f'--config.predict.input={frames}', mode='predict')
  assert out.returncode != 0
  assert 'No checkpoint to run with' in out.stderr


@pytest.mark.parametrize('flags,message', [
    (('--mode=fit',), "value should be one of"),
    (('--config.train.no_such_field=1',), 'no_such_field'),
])
def test_bad_flags_fail_clearly(tmp_path, flags, message):
  out = train_toy.run_main(str(tmp_path), *flags)
  assert out.returncode != 0
  assert message in out.stderr
