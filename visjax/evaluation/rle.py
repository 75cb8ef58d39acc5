"""Vectorised checks of COCO compressed RLE strings (the `counts` of YouTube-VIS results).

pycocotools decodes a compressed `counts` string without checking it: a truncated or corrupted string makes it read
past the end of the buffer or produce run lengths that do not add up to `h * w`. `compressed_rle_valid` decodes many
strings at once with NumPy, following pycocotools' `rleFrString` (5-bit groups, continuation bit 0x20, sign bit
0x10, run m > 2 stored as a difference to run m - 2), and reports which strings decode to non-negative run lengths
summing to the mask's pixel count.
"""

from collections.abc import Sequence

import numpy as np

# A run length below 2**32 needs at most 7 groups of 5 bits (including the sign bit); longer numbers are invalid.
_MAX_GROUPS = 7
# Strings are decoded in chunks of about this many characters to bound the temporary arrays.
_CHUNK_CHARS = 1 << 18


def _valid_chunk(encoded: list[bytes], num_pixels: np.ndarray) -> np.ndarray:
  """`compressed_rle_valid` for non-empty byte strings."""
  lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
  string_stops = np.cumsum(lengths) - 1
  string_starts = string_stops - lengths + 1
  value = np.frombuffer(b''.join(encoded), np.uint8) - np.uint8(48)  # As pycocotools; valid values are 0..63.
  ok = ~np.logical_or.reduceat(value > 63, string_starts) & (value[string_stops] < 32)
  ends = value < 32  # No continuation bit (0x20): the character ends a number.
  ends[string_stops] = True  # Never let a broken string run into the next one.

  # Numbers: the character at stops[n] holds the highest 5 bits of number n (nearly all numbers are 1 character).
  stops = np.flatnonzero(ends)
  groups = np.diff(stops, prepend=-1)
  number = (value[stops] & 0x1f).astype(np.int64)
  longer = np.flatnonzero(groups > 1)
  for k in range(1, _MAX_GROUPS):
    longer = longer[groups[longer] > k]
    if not longer.size:
      break
    number[longer] = (number[longer] << 5) | (value[stops[longer] - k] & 0x1f)
  negative = (value[stops] & 0x10) != 0
  number -= negative.astype(np.int64) << (5 * np.minimum(groups, _MAX_GROUPS))

  # Runs: run m = number m + run m - 2 for m > 2, i.e. per string a cumulative sum over each parity class starting
  # at m = 1 (odd) and m = 2 (even); run 0 is number 0.
  first_numbers = np.searchsorted(stops, string_starts)
  first = np.repeat(first_numbers, np.diff(first_numbers, append=stops.size))
  odd = ((np.arange(stops.size) - first) & 1).astype(bool)
  later = number.copy()
  later[first_numbers] = 0
  odd_sums = np.cumsum(np.where(odd, later, 0))
  even_sums = np.cumsum(np.where(odd, 0, later))
  runs = np.where(odd, odd_sums - odd_sums[first], even_sums - even_sums[first])
  runs[first_numbers] = number[first_numbers]
  ok &= ~np.logical_or.reduceat((runs < 0) | (groups > _MAX_GROUPS), first_numbers)
  ok &= np.add.reduceat(runs, first_numbers) == num_pixels
  return ok


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
  ok = np.zeros(len(counts), bool)
  chunk, chunk_index = [], []

  def flush():
    if chunk:
      ok[chunk_index] = _valid_chunk(chunk, num_pixels[chunk_index])
      chunk.clear()
      chunk_index.clear()

  chunk_chars = 0
  for i, c in enumerate(counts):
    if isinstance(c, str):
      if not c.isascii():
        continue
      c = c.encode('ascii')
    if not isinstance(c, bytes) or not c:
      continue
    chunk.append(c)
    chunk_index.append(i)
    chunk_chars += len(c)
    if chunk_chars >= _CHUNK_CHARS:
      flush()
      chunk_chars = 0
  flush()
  return ok
