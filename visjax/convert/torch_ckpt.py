"""Reading PyTorch-style state dicts as `{key: np.ndarray}` from .pth/.pt, .npz and .safetensors files.

Only `.pth`/`.pt`/`.bin` needs torch (imported lazily, loaded with `weights_only=True`, so no code in the file
runs). `.npz` and `.safetensors` are read with NumPy alone (a small safetensors reader/writer lives here, so no
extra dependency), which lets conversion run in an environment without torch: export once with
`np.savez(path, **{k: v.numpy() for k, v in sd.items()})` or `write_safetensors`.

Containers are unwrapped: `{"model": sd}` (detectron2), `{"state_dict": sd}` (mmcv), and a `module.` prefix on
every key (DataParallel / DDP) is stripped.
"""

from __future__ import annotations

from collections.abc import Mapping
import importlib.util
import json
import os
import struct
from typing import Any

import numpy as np

_WRAPPER_KEYS = ('model', 'state_dict')
_MODULE_PREFIX = 'module.'

# safetensors dtype names -> numpy dtypes (little-endian). BF16 has no numpy dtype: it is widened to float32.
_ST_DTYPES = {
    'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'I16': '<i2', 'I8': 'i1',
    'U64': '<u8', 'U32': '<u4', 'U16': '<u2', 'U8': 'u1', 'BOOL': '?',
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class CheckpointFormatError(ValueError):
  """The file or object is not a readable state dict; the message names the file and the offending entry."""


def _to_numpy(value: Any, key: str, source: str) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, 'detach') and hasattr(value, 'numpy'):  # a torch.Tensor, without importing torch
    t = value.detach().cpu()
    if str(t.dtype) == 'torch.bfloat16':
      t = t.float()
    return t.numpy()
  if isinstance(value, (np.generic, int, float, bool)):
    return np.asarray(value)
  raise CheckpointFormatError(f'{source}: entry {key!r} is a {type(value).__name__}, not a tensor/array')


def unwrap_state_dict(obj: Mapping[str, Any], source: str = '<state dict>') -> dict[str, np.ndarray]:
  """Returns the flat `{key: np.ndarray}` inside `obj`.

  Descends into `obj["model"]` / `obj["state_dict"]` while present (only the state dict is kept: optimizer,
  scheduler, `__author__` etc. at the top level are ignored), converts torch tensors to numpy (bf16 -> fp32),
  and strips a `module.` prefix when every key has it.

  Raises:
    CheckpointFormatError: `obj` is not a mapping, or an entry is not an array (names the key).
  """
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(f'{source}: expected a dict (state dict), got {type(obj).__name__}')
  while True:
    wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if not wrapped:
      break
    obj = obj[wrapped[0]]
  out = {str(k): _to_numpy(v, str(k), source) for k, v in obj.items()}
  if out and all(k.startswith(_MODULE_PREFIX) for k in out):
    out = {k[len(_MODULE_PREFIX):]: v for k, v in out.items()}
  return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file with NumPy only. BF16 tensors are returned as float32.

  Format: 8-byte little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [b, e]},
  "__metadata__": {...}}`, then the data buffer (offsets relative to its start).
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 8:
    raise CheckpointFormatError(f'{path}: too short to be a safetensors file')
  (n,) = struct.unpack('<Q', raw[:8])
  if 8 + n > len(raw):
    raise CheckpointFormatError(f'{path}: header length {n} exceeds the file size {len(raw)}')
  try:
    header = json.loads(raw[8:8 + n])
  except ValueError as e:
    raise CheckpointFormatError(f'{path}: safetensors header is not valid JSON ({e})') from None
  buf = memoryview(raw)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype, shape, (begin, end) = info['dtype'], tuple(info['shape']), info['data_offsets']
    if dtype != 'BF16' and dtype not in _ST_DTYPES:
      raise CheckpointFormatError(f'{path}: tensor {name!r} has unsupported dtype {dtype}')
    count = int(np.prod(shape, dtype=np.int64))
    itemsize = 2 if dtype == 'BF16' else np.dtype(_ST_DTYPES[dtype]).itemsize
    if count * itemsize != end - begin or not 0 <= begin <= end <= len(buf):
      raise CheckpointFormatError(f'{path}: tensor {name!r} has data_offsets [{begin}, {end}] for shape {shape} '
                                  f'{dtype} in a {len(buf)}-byte buffer')
    if dtype == 'BF16':
      arr = (np.frombuffer(buf[begin:end], '<u2', count).astype(np.uint32) << 16).view(np.float32)
    else:
      arr = np.frombuffer(buf[begin:end], _ST_DTYPES[dtype], count)
    out[name] = arr.reshape(shape).copy()
  return out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes `{name: array}` as a .safetensors file (NumPy only; bf16 is not supported on this path)."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    dt = arr.dtype.newbyteorder('<') if arr.dtype.byteorder == '>' else arr.dtype
    if dt not in _ST_NAMES:
      raise CheckpointFormatError(f'{path}: cannot write tensor {name!r} of dtype {arr.dtype}')
    data = arr.astype(dt).tobytes()
    header[name] = {'dtype': _ST_NAMES[dt], 'shape': list(arr.shape), 'data_offsets': [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  if metadata:
    header['__metadata__'] = dict(metadata)
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)  # align the data buffer to 8 bytes
  with open(os.fspath(path), 'wb') as f:
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for data in chunks:
      f.write(data)


_TORCH_EXTS = ('.pth', '.pt', '.bin', '.ckpt')
EXTENSIONS = ('.npz', '.safetensors') + _TORCH_EXTS
_ZIP_MAGIC = b'PK\x03\x04'


def check_file(path: str | os.PathLike) -> str:
  """Cheap checks before reading: the file exists, is readable, has a supported extension, torch for .pth.

  Returns the extension (lower case).

  Raises:
    FileNotFoundError: no such file.
    CheckpointFormatError: unreadable, unknown extension, or torch missing for a torch file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint not found: {path}' + (' (a folder, not a file)' if os.path.isdir(path)
                                                                else '') + '; check config.init_from')
  if not os.access(path, os.R_OK):
    raise CheckpointFormatError(f'{path}: not readable (permission denied)')
  ext = os.path.splitext(path)[1].lower()
  if ext not in EXTENSIONS:
    raise CheckpointFormatError(f'{path}: unknown checkpoint extension {ext!r} ({", ".join(EXTENSIONS)})')
  if ext in _TORCH_EXTS and importlib.util.find_spec('torch') is None:
    raise CheckpointFormatError(
        f'{path}: reading {ext} needs torch (pip install "visjax[torch]"); or export the state dict to .npz / '
        '.safetensors in a torch environment and convert that')
  return ext


def _read_torch(path: str) -> Any:
  import torch  # pylint: disable=g-import-not-at-top
  return torch.load(path, map_location='cpu', weights_only=True)


def _unreadable(path: str, ext: str, error: Exception) -> CheckpointFormatError:
  """Names the file and says whether it looks truncated (a zip container that does not open) or is no checkpoint."""
  with open(path, 'rb') as f:
    head = f.read(4)
  if head == _ZIP_MAGIC:
    detail = ' '.join(str(error).split())[:120]
    return CheckpointFormatError(f'{path}: truncated or corrupt {ext} checkpoint ({type(error).__name__}: {detail}); '
                                 'download or export it again')
  return CheckpointFormatError(f'{path}: not a {ext} checkpoint (unrecognised content; expected a file written by '
                               f'{"np.savez" if ext == ".npz" else "torch.save"}): is this the right file?')


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into a flat `{key: np.ndarray}` (see module docstring for formats and unwrapping).

  Raises:
    FileNotFoundError: no such file.
    CheckpointFormatError: unknown extension, unreadable, truncated or garbage file, or a non-array entry (named).
  """
  path = os.fspath(path)
  ext = check_file(path)
  try:
    if ext == '.npz':
      with np.load(path, allow_pickle=False) as z:
        obj = {k: z[k] for k in z.files}
    elif ext == '.safetensors':
      obj = read_safetensors(path)
    else:
      obj = _read_torch(path)
  except CheckpointFormatError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # zipfile, pickle, torch and numpy raise many kinds.
    raise _unreadable(path, ext, e) from e
  return unwrap_state_dict(obj, source=path)
