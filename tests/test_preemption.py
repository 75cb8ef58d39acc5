"""Preemption: SIGTERM / SIGINT during `python -m visjax.main` training save a checkpoint at the current step and
exit with code 75; the same command resumes with the losses of an uninterrupted run, and neither train_log.jsonl
nor TensorBoard shows a step twice after a resume."""

import glob
import os
import shutil
import signal
import struct
import time

import pytest

from tests import train_toy
from visjax import errors
from visjax.train import trainer

_TERMS = ('loss', 'loss_mask', 'loss_ce')
_REFERENCE_STEPS = 120


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """Per-step log of an uninterrupted in-process run."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  config = train_toy.get_config()
  config.train.num_steps = _REFERENCE_STEPS
  config.train.checkpoint_every = 1000
  trainer.train(config, workdir)
  return train_toy.read_log(workdir)


def _wait_for_log_lines(workdir: str, count: int, proc, timeout: float = 120) -> None:
  path = os.path.join(workdir, 'train_log.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path):
      with open(path) as f:
        if f.read().count('\n') >= count:  # Complete lines only (the writer may be mid-line).
          return
    time.sleep(0.05)
  raise AssertionError(f'training did not log {count} steps in time (rc {proc.poll()})')


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_resume_reproduces_losses(reference, tmp_path, signum):
  workdir = str(tmp_path / 'w')
  flags = ('--config.train.checkpoint_every=1000', '--config.train.log_every=1')
  proc = train_toy.run_main(workdir, '--config.train.num_steps=100000', *flags, wait=False)
  _wait_for_log_lines(workdir, 3, proc)
  proc.send_signal(signum)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == errors.EXIT_PREEMPTED, output[-3000:]
  stopped = [line for line in output.splitlines() if line.startswith('visjax: stopped by')]
  assert len(stopped) == 1 and signal.Signals(signum).name in stopped[0], output[-3000:]
  assert 'Traceback' not in output
  saved = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert len(saved) == 1
  step = saved[0]
  assert f'at step {step};' in stopped[0]
  assert [r['step'] for r in train_toy.read_log(workdir)] == list(range(1, step + 1))
  assert step + 2 <= _REFERENCE_STEPS, step

  resumed = train_toy.run_main(workdir, f'--config.train.num_steps={step + 2}', *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  log = train_toy.read_log(workdir)
  assert [r['step'] for r in log] == list(range(1, step + 3))
  for got, want in zip(log, reference):
    for k in _TERMS:
      assert got[k] == want[k], (got['step'], k)


def _scalar_events(logdir: str, tag: str) -> dict[int, float]:
  """{step: value} of `tag` as TensorBoard shows it: a session-start event at step s hides earlier events >= s."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  shown: dict[int, float] = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      if event.HasField('session_log') and event.session_log.status == event_pb2.SessionLog.START:
        shown = {s: v for s, v in shown.items() if s < event.step}
      for value in event.summary.value:
        if value.tag == tag:
          assert event.step not in shown, f'step {event.step} of {tag} shown twice'
          shown[event.step] = value.simple_value
  return shown


def test_resume_after_crash_hides_tensorboard_steps_past_the_checkpoint(tmp_path):
  """Steps 3-4 logged, checkpoint 4 lost (as after a crash): the resumed run's steps replace the old ones."""
  workdir = str(tmp_path)
  config = train_toy.get_config()
  config.train.update(num_steps=4, checkpoint_every=2)
  trainer.train(config, workdir)
  first = _scalar_events(os.path.join(workdir, 'logs'), 'train/loss')
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  time.sleep(1.1)  # A new events file name (they are named by the second).
  trainer.train(config, workdir)
  shown = _scalar_events(os.path.join(workdir, 'logs'), 'train/loss')
  assert sorted(shown) == [1, 2, 3, 4]
  assert shown == pytest.approx(first)
  assert [r['step'] for r in train_toy.read_log(workdir)] == [1, 2, 3, 4]
