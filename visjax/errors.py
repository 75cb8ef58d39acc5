"""Errors a user fixes (a path, a config field, an input file), and how the CLI reports them in one line.

`python -m visjax.main` prints `visjax: error: <one line>` on stderr for these and exits with `EXIT_USER_ERROR`
(no traceback; `--debug` shows it). The line names the file, config field or parameter and says what to do.
Besides `UserError`, the library's own error classes (`NonFiniteLossError`, `visjax.convert.ConversionError` and
`CheckpointFormatError`, `data_pipeline.tfrecord.RecordFormatError`) and the ValueErrors / OSErrors raised by
validation count as user errors; anything else is a bug and keeps its traceback.
"""

import errno
import sys

EXIT_USER_ERROR = 1
EXIT_USAGE = 2  # Bad command line: unknown flag, bad --config path or override.
EXIT_PREEMPTED = 75  # SIGTERM / SIGINT during training: checkpoint saved, rerun the same command to resume.


class UserError(ValueError):
  """A mistake in the command, the config or an input; the message says which and what to do."""


class Preempted(Exception):
  """Training stopped on SIGTERM / SIGINT after saving a checkpoint at `step`."""

  def __init__(self, signal_name: str, step: int, checkpoint_dir: str):
    self.step = step
    super().__init__(f'stopped by {signal_name} at step {step}; checkpoint saved in {checkpoint_dir}. Run the same '
                     'command again to resume.')


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is reported as one line (see module docstring)."""
  return isinstance(error, (ValueError, OSError, FloatingPointError))


def one_line(error: BaseException) -> str:
  """The first line of the error's message (with the file for OS errors) and, for some kinds, what to do."""
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    text = f'{error.filename}: {error.strerror}'
    if isinstance(error, PermissionError) or error.errno == errno.EROFS:
      text += ' (not writable: fix its permissions or use another --workdir)'
    return text
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  tfrecord = sys.modules.get('data_pipeline.tfrecord')
  if tfrecord is not None and isinstance(error, tfrecord.RecordFormatError) and 'data_pipeline.convert' not in text:
    text += ' (the converted data is damaged: convert it again with python -m data_pipeline.convert --overwrite)'
  if isinstance(error, FloatingPointError):
    text += ' Lower config.train.lr or check the data; the same command resumes from that checkpoint.'
  return text
