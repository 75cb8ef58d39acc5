"""COCO compressed RLE strings (the `counts` of YouTube-VIS annotations and results), decoded with NumPy.

One decoder serves both the dataset parser (`data_pipeline.ytvis_json`, which needs the run lengths) and the
results check before evaluation (`compressed_rle_valid`): pycocotools decodes a compressed `counts` string without
checking it, so a truncated or corrupted string makes it read past the end of the buffer or produce run lengths that
do not add up to `h * w`, and `mask.iou` / `mask.merge` then loop forever (checked: an RLE of size 4x5 whose runs
cover 12 pixels hangs `iou` against a full mask).

`decode_compressed` decodes many strings in one vectorised pass with the semantics of pycocotools' `rleFrString`:
each value is a little-endian run of 5-bit groups (continuation bit 0x20, sign bit 0x10 in the last group), and
from the third run on each value is a difference to the run two before.
"""

from collections.abc import Sequence

import numpy as np

# Strings are decoded in chunks of about this many characters to bound the temporary arrays.
_CHUNK_CHARS = 1 << 17
_MAX_GROUPS = 12  # pycocotools reads at most this many 5-bit groups per value


class CompressedRleError(ValueError):
  """A malformed compressed RLE string; `index` is its position in the decoded batch."""

  def __init__(self, index: int, message: str):
    super().__init__(message)
    self.index = index


def _segmented_cumsum(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
  """Cumulative sum of `values` restarted where the (sorted) `segment` id changes."""
  total = np.cumsum(values)
  new_segment = np.concatenate([[True], segment[1:] != segment[:-1]])[:values.size]
  base = (total - values)[new_segment]
  return total - base[np.cumsum(new_segment) - 1]


def decode_compressed(strings: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Decodes COCO compressed RLE strings in one vectorised pass.

  Args:
    strings: S compressed count strings (`str` or ASCII `bytes`).

  Returns:
    (runs int64 [R], owner int64 [R]): all run lengths, concatenated, and the string index of each run.

  Raises:
    CompressedRleError: naming a malformed string (not a string, non-ASCII, empty, bad characters, truncated, too
      long a value).
  """
  encoded = []
  for i, counts in enumerate(strings):
    if isinstance(counts, bytes):
      encoded.append(counts)
      continue
    if not isinstance(counts, str):
      raise CompressedRleError(i, f'counts must be a string, got {type(counts).__name__}')
    try:
      encoded.append(counts.encode('ascii'))
    except UnicodeEncodeError:
      raise CompressedRleError(i, 'non-ASCII characters in a compressed RLE string') from None
  lengths = np.array([len(b) for b in encoded], np.int64)
  if np.any(lengths == 0):
    raise CompressedRleError(int(np.argmin(lengths)), 'empty counts string')
  chars = np.frombuffer(b''.join(encoded), np.uint8).astype(np.int64) - 48
  owner_of_char = np.repeat(np.arange(len(encoded)), lengths)
  bad = (chars < 0) | (chars > 63)
  if np.any(bad):
    raise CompressedRleError(int(owner_of_char[np.argmax(bad)]), 'characters outside the compressed RLE alphabet')
  more = (chars & 0x20) != 0
  truncated = more[np.cumsum(lengths) - 1]
  if np.any(truncated):
    raise CompressedRleError(int(np.argmax(truncated)), 'truncated compressed RLE string')
  ends = ~more
  starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
  group = np.cumsum(np.concatenate([[0], ends[:-1]]))
  position = np.arange(chars.size) - starts[group]
  if position.max() >= _MAX_GROUPS:
    raise CompressedRleError(int(owner_of_char[np.argmax(position >= _MAX_GROUPS)]), 'compressed RLE value too long')
  values = np.add.reduceat((chars & 0x1f) << (5 * position), starts)
  last = np.flatnonzero(ends)
  negative = (chars[last] & 0x10) != 0
  values[negative] |= -1 << (5 * (position[last][negative] + 1))
  owner = owner_of_char[starts]
  local = np.arange(values.size) - np.searchsorted(owner, np.arange(len(encoded)))[owner]
  # From the 4th run on, each value is a delta to the run two before: cumulative sums along each string's odd
  # and even chains; the first run (local 0) is not part of the even chain.
  runs = values.copy()
  for chain in ((local & 1) == 1, ((local & 1) == 0) & (local > 0)):
    runs[chain] = _segmented_cumsum(values[chain], owner[chain])
  return runs, owner


def compressed_rle_counts(counts: str) -> np.ndarray:
  """Run lengths (int64 [R]) of one COCO compressed RLE string; `CompressedRleError` if it is malformed."""
  return decode_compressed([counts])[0]


def _mark_valid(counts: Sequence, num_pixels: np.ndarray, ok: np.ndarray) -> None:
  """Sets ok[i] for the strings that decode to runs >= 0 summing to num_pixels[i]; a malformed string is split
  out and the strings on either side are checked again."""
  if not len(counts):
    return
  try:
    runs, owner = decode_compressed(counts)
  except CompressedRleError as e:
    _mark_valid(counts[:e.index], num_pixels[:e.index], ok[:e.index])
    _mark_valid(counts[e.index + 1:], num_pixels[e.index + 1:], ok[e.index + 1:])
    return
  n = len(counts)
  total = np.bincount(owner, weights=runs.astype(np.float64), minlength=n)
  negative = np.bincount(owner, weights=(runs < 0).astype(np.float64), minlength=n)
  ok[:] = (negative == 0) & (total == num_pixels)


def compressed_rle_valid(counts: Sequence[str | bytes], num_pixels: Sequence[int] | np.ndarray) -> np.ndarray:
  """Which compressed RLE strings are well formed.

  Args:
    counts: N compressed RLE strings (`str` or `bytes`), as in `{'size': [h, w], 'counts': ...}`.
    num_pixels: [N] the pixel count `h * w` each mask must cover.

  Returns:
    [N] bool: True where the string is non-empty, consists of valid characters ('0'..'o'), ends a number on its last
    character, and decodes to run lengths that are all >= 0 and sum to `num_pixels`.
  """
  counts = list(counts)
  num_pixels = np.asarray(num_pixels, np.int64).reshape(len(counts))
  ok = np.zeros(len(counts), bool)
  lengths = np.fromiter((len(c) if isinstance(c, (str, bytes)) else 0 for c in counts), np.int64, len(counts))
  # Batches of about _CHUNK_CHARS characters keep the temporaries in cache.
  bounds = np.unique(np.r_[np.searchsorted(np.cumsum(lengths), np.arange(0, max(lengths.sum(), 1), _CHUNK_CHARS)),
                           len(counts)])
  bounds = np.unique(np.r_[0, bounds])
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    _mark_valid(counts[lo:hi], num_pixels[lo:hi], ok[lo:hi])
  return ok
