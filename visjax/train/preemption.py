"""Stopping training cleanly on SIGTERM (preemption, `kill`) or SIGINT (Ctrl-C).

The first signal sets a flag; the train loop finishes the current step, saves a checkpoint at it and raises
`visjax.errors.Preempted` (the CLI exits with code 75; the same command resumes with the same losses). A second
signal acts as it would without this handler (SIGINT: KeyboardInterrupt; SIGTERM: the process ends). With several
processes the flag is combined across them every `check_every` steps, so all stop at the same step.
"""

import signal
import threading
from typing import Any

from absl import logging
import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
  """Context manager that turns SIGTERM / SIGINT into a stop request the train loop polls."""

  def __init__(self, check_every: int = 1):
    self.received: str | None = None
    self.check_every = max(1, int(check_every))
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> 'StopSignal':
    if threading.current_thread() is threading.main_thread():  # Python allows handlers only there.
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *_) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:  # Second signal: behave as without us.
      self.__exit__()
      signal.raise_signal(signum)
      return
    self.received = name
    logging.warning('%s received: saving a checkpoint after this step, then stopping (send it again to stop now).',
                    name)

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step` (agreed by all processes)."""
    if jax.process_count() == 1:
      return self.received is not None
    if step % self.check_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if np.any(flags) and self.received is None:
      self.received = 'a signal to another process'
    return bool(np.any(flags))
