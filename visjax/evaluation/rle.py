"""Vectorised checks of COCO compressed RLE strings (the `counts` of YouTube-VIS results).

pycocotools decodes a compressed `counts` string without checking it: a truncated or corrupted string makes it read
past the end of the buffer or produce run lengths that do not add up to `h * w`, and `mask.iou` / `mask.merge` then
loop forever (checked: an RLE of size 4x5 whose runs cover 12 pixels hangs `iou` against a full mask). So results
are checked before any pycocotools call. `compressed_rle_valid` decodes many
strings at once with NumPy, following pycocotools' `rleFrString` (5-bit groups, continuation bit 0x20, sign bit
0x10, run m > 2 stored as a difference to run m - 2), and reports which strings decode to non-negative run lengths
summing to the mask's pixel count.
"""

from collections.abc import Sequence

import numpy as np

# A run length below 2**32 needs at most 7 groups of 5 bits (including the sign bit); longer numbers are invalid.
_MAX_GROUPS = 7
# Strings are decoded in chunks of about this many characters to bound the temporary arrays.
_CHUNK_CHARS = 1 << 17


def _all_valid(chars: np.ndarray, lengths: np.ndarray, num_pixels: np.ndarray) -> bool:
  """Whether every string is well formed; `chars` [C] uint8 holds N strings of `lengths` [N] (all > 0)."""
  value = chars - np.uint8(48)  # As pycocotools; valid values are 0..63.
  string_stops = np.cumsum(lengths) - 1
  if (value > 63).any() or (value[string_stops] >= 32).any():
    return False  # A bad character, or a string whose last number continues (0x20) past its end.

  # Numbers end at characters without the continuation bit; their last character holds the highest 5 bits,
  # whose bit 0x10 is the sign. Nearly all numbers are one character.
  stops = np.flatnonzero(value < 32)
  top = value[stops]
  number = (top & 15).astype(np.int64) - (top & 16)
  groups = np.diff(stops, prepend=-1)
  longer = np.flatnonzero(groups > 1)
  if longer.size:
    g = groups[longer]
    if g.max() > _MAX_GROUPS:
      return False
    start = stops[longer] - g + 1
    x = np.zeros(longer.size, np.int64)
    for k in range(int(g.max())):
      x += np.where(k < g, (value[np.minimum(start + k, stops[longer])] & 0x1f).astype(np.int64) << (5 * k), 0)
    number[longer] = x - (((top[longer] & 16) != 0).astype(np.int64) << (5 * g))

  # Runs: run m = number m for m <= 2 and number m + run m - 2 after. With each string's first number set aside,
  # a prefix sum over the numbers of equal (global) index parity gives run m = prefix[m] - the prefix just before
  # the string in m's parity class.
  first = np.searchsorted(stops, string_stops - lengths + 1)
  count = np.diff(first, append=stops.size)
  first_run = number[first]
  number[first] = 0
  prefix = np.empty_like(number)
  prefix[0::2] = np.cumsum(number[0::2])
  prefix[1::2] = np.cumsum(number[1::2])
  base_same = prefix[first]
  base_other = np.where(first > 0, prefix[first - 1], 0)
  total = first_run.copy()
  if (first_run < 0).any():
    return False
  for parity in (0, 1):
    base = np.where(first % 2 == parity, base_same, base_other)
    begin = (first + 1 - parity) // 2  # Range of the string's numbers in prefix[parity::2].
    end = (first + count + 1 - parity) // 2
    runs = prefix[parity::2] - np.repeat(base, end - begin)
    if runs.size and (runs.min() < 0 or runs.max() > num_pixels.max()):
      return False
    sums = np.r_[0, np.cumsum(runs)]
    total += sums[end] - sums[begin]
  return bool((total == num_pixels).all())


def _mark_valid(chars: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, num_pixels: np.ndarray,
                ok: np.ndarray) -> None:
  """Sets ok[i] for the well-formed strings; bisects a batch until the bad strings are isolated."""
  if _all_valid(chars[offsets[0]:offsets[-1]], lengths, num_pixels):
    ok[:] = True
  elif len(lengths) > 1:
    mid = len(lengths) // 2
    _mark_valid(chars, offsets[:mid + 1], lengths[:mid], num_pixels[:mid], ok[:mid])
    _mark_valid(chars, offsets[mid:], lengths[mid:], num_pixels[mid:], ok[mid:])


def _concatenate(counts: Sequence[str | bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
  """(all strings as one ASCII byte string, [N] lengths, [N] usable): non-ASCII / non-string entries are unusable."""
  types = set(map(type, counts))
  joined = ''.join(counts) if types <= {str} else b''.join(counts) if types <= {bytes} else None
  if joined is not None and joined.isascii():  # The common case: all str, or all bytes (pycocotools output).
    lengths = np.fromiter(map(len, counts), np.int64, len(counts))
    return joined.encode('ascii') if isinstance(joined, str) else joined, lengths, np.ones(len(counts), bool)
  encoded = [c.encode('ascii') if isinstance(c, str) and c.isascii() else c if isinstance(c, bytes) else b''
             for c in counts]
  usable = np.array([isinstance(c, bytes) or (isinstance(c, str) and c.isascii()) for c in counts], bool)
  return b''.join(encoded), np.fromiter(map(len, encoded), np.int64, len(encoded)), usable


def compressed_rle_valid(counts: Sequence[str | bytes], num_pixels: Sequence[int] | np.ndarray) -> np.ndarray:
  """Which compressed RLE strings are well formed.

  Args:
    counts: N compressed RLE strings (`str` or `bytes`), as in `{'size': [h, w], 'counts': ...}`.
    num_pixels: [N] the pixel count `h * w` each mask must cover.

  Returns:
    [N] bool: True where the string is non-empty, consists of valid characters ('0'..'o'), ends a number on its last
    character, and decodes to run lengths that are all >= 0 and sum to `num_pixels`.
  """
  num_pixels = np.asarray(num_pixels, np.int64).reshape(len(counts))
  joined, lengths, usable = _concatenate(counts)
  chars = np.frombuffer(joined, np.uint8)
  # Empty and unusable strings have no characters, so the candidates' characters are contiguous.
  candidates = np.flatnonzero(usable & (lengths > 0))
  offsets = np.r_[0, np.cumsum(lengths[candidates])]
  valid = np.zeros(candidates.size, bool)
  # Batches of about _CHUNK_CHARS characters keep the temporaries in cache.
  bounds = np.unique(np.r_[np.searchsorted(offsets, np.arange(0, offsets[-1], _CHUNK_CHARS)), candidates.size])
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    _mark_valid(chars, offsets[lo:hi + 1], lengths[candidates[lo:hi]], num_pixels[candidates[lo:hi]], valid[lo:hi])
  ok = np.zeros(len(counts), bool)
  ok[candidates] = valid
  return ok
