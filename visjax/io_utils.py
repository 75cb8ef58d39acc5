"""Crash-safe output files: write under a temporary name next to the target, then rename over it.

A rename within one directory is atomic, so readers (and a crashed run's leftovers) see either the previous complete
file or the new complete file, never a torn one (e.g. a 1-byte results.json).

  with atomic_write(path) as f:          # text; atomic_write(path, 'wb') for bytes
    json.dump(obj, f)
  with atomic_path(path) as tmp:         # for writers that want a file name (zipfile, PIL, imageio)
    image.save(tmp)
"""

import contextlib
import json
import os
import secrets
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path in `path`'s folder (same extension); renames it to `path` if the block succeeds.

  On an exception the temporary file (or folder) is removed and `path` is left as it was.
  """
  path = os.fspath(path)
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(folder, f'.{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}')
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'w', **open_kwargs: Any) -> Iterator[IO]:
  """`open(path, mode)` that only replaces `path` when the block completes (flushed and fsync'ed first)."""
  if not mode.startswith('w'):
    raise ValueError(f'atomic_write replaces the whole file: mode must start with "w", got {mode!r}')
  with atomic_path(path) as tmp:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> str:
  """Writes `obj` as JSON to `path` atomically; returns `path`."""
  with atomic_write(path) as f:
    json.dump(obj, f, **dump_kwargs)
  return os.fspath(path)
