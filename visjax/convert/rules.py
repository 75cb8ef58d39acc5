"""Rule tables: ordered (regex on a torch key -> NNX path template(s), layout transform) entries.

A `Rule` maps every torch key that `re.fullmatch`es its `pattern` to one NNX state path (a dotted string such as
`res2.0.conv1.norm.weight`, i.e. the NNX path `('res2', 0, 'conv1', 'norm', 'weight')` joined by '.'), or to
several (fused tensors such as `in_proj_weight`), or to none (`drop`: criterion buffers, `num_batches_tracked`;
`duplicate`: known duplicates, verified equal to their original; `COMMON_DROPS` has the usual ones). Targets are `re.Match.expand` templates (`\\1`, `\\g<name>`). In a `RuleTable` the first
matching rule wins, so put specific rules before general ones.

Transforms are plain functions `np.ndarray -> np.ndarray` (or a tuple of arrays, one per target):
`conv_kernel` (OIHW -> HWIO), `linear_kernel` (transpose), `split(n)` / `chunks(n, each)` (fused q/k/v),
`chain(...)` and `reshape(...)` compose them. `linear_rules`, `conv_rules` and `norm_rules` map a module's
weight / bias. Heads write their own tables in their own files
(e.g. `visjax/convert/rules_idol.py`) from these pieces and the backbone tables in `backbone_rules.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import re

import numpy as np

Transform = Callable[[np.ndarray], 'np.ndarray | tuple[np.ndarray, ...]']
Check = Callable[[str, np.ndarray], 'str | None']


def identity(x: np.ndarray) -> np.ndarray:
  """Copies the tensor as is (norm weights, biases, embeddings, buffers)."""
  return x


def conv_kernel(x: np.ndarray) -> np.ndarray:
  """torch Conv weight `[O, I, kh, kw]` (OIHW; 1-D/3-D likewise) -> Flax `[kh, kw, I, O]` (HWIO)."""
  if x.ndim < 3:
    raise ValueError(f'conv weight must be [O, I, *k], got shape {x.shape}')
  return np.transpose(x, tuple(range(2, x.ndim)) + (1, 0))


def linear_kernel(x: np.ndarray) -> np.ndarray:
  """torch Linear weight `[out, in]` -> Flax kernel `[in, out]`."""
  if x.ndim != 2:
    raise ValueError(f'linear weight must be [out, in], got shape {x.shape}')
  return x.T


def split(n: int, axis: int = 0) -> Transform:
  """Splits a fused tensor into `n` equal parts along `axis` (e.g. `in_proj_weight [3C, C]` -> q, k, v)."""

  def fn(x: np.ndarray) -> tuple[np.ndarray, ...]:
    if x.shape[axis] % n:
      raise ValueError(f'cannot split axis {axis} of shape {x.shape} into {n} equal parts')
    return tuple(np.split(x, n, axis=axis))

  return fn


def chunks(n: int, each: Transform = identity, axis: int = 0) -> Transform:
  """`split(n, axis)` then `each` on every part: `chunks(3, linear_kernel)` maps `in_proj_weight [3C, C]` to
  three `[C, C]` kernels (q, k, v in that order); `chunks(3)` maps `in_proj_bias [3C]` to three `[C]`."""
  splitter = split(n, axis)
  return lambda x: tuple(each(part) for part in splitter(x))


def reshape(*shape: int) -> Transform:
  """Reshapes (row-major, as torch's `view`), e.g. a q kernel `[C, C]` -> `[C, heads, head_dim]`."""
  return lambda x: np.reshape(x, shape)


def chain(*fns: Transform) -> Transform:
  """Applies `fns` left to right."""

  def fn(x):
    for f in fns:
      x = f(x)
    return x

  return fn


@dataclasses.dataclass(frozen=True)
class Rule:
  """One mapping entry.

  Attributes:
    pattern: regex, `re.fullmatch`ed against the torch key.
    target: NNX path template (str), a tuple of templates (one per array the transform returns), or None to
      drop the key.
    transform: layout transform (see module docstring); ignored for drop rules.
    check: for drop rules, an optional `check(key, array) -> error message | None` that validates the dropped
      tensor (e.g. that a buffer equals its recomputed value).
    same_as: for drop rules, a template naming the torch key this one duplicates (see `duplicate`).
  """

  pattern: str
  target: str | tuple[str, ...] | None
  transform: Transform = identity
  check: Check | None = None
  same_as: str | None = None

  def __post_init__(self):
    object.__setattr__(self, '_regex', re.compile(self.pattern))

  def match(self, key: str) -> re.Match | None:
    return self._regex.fullmatch(key)

  def targets(self, m: re.Match) -> tuple[str, ...]:
    """The NNX paths for a match (empty for drop rules)."""
    if self.target is None:
      return ()
    templates = (self.target,) if isinstance(self.target, str) else self.target
    return tuple(m.expand(t) for t in templates)


def drop(pattern: str, check: Check | None = None) -> Rule:
  """A rule that discards matching keys (after the optional `check`)."""
  return Rule(pattern, None, identity, check)


def duplicate(pattern: str, original: str) -> Rule:
  r"""Drops keys that duplicate another key (template `original`), failing unless both exist and are equal.

  E.g. IDOL's `duplicate(r'detr\.detr\.transformer\.decoder\.bbox_embed\.(.*)', r'detr.detr.bbox_embed.\1')`.
  """
  return Rule(pattern, None, identity, None, original)


class RuleTable(Sequence):
  """An ordered, immutable sequence of `Rule`s; `table + other` concatenates (first match wins)."""

  def __init__(self, rules: Iterable[Rule] = ()):
    self._rules = tuple(rules)
    for r in self._rules:
      if not isinstance(r, Rule):
        raise TypeError(f'RuleTable entries must be Rule, got {type(r).__name__}: {r!r}')

  def __getitem__(self, i):
    return self._rules[i]

  def __len__(self) -> int:
    return len(self._rules)

  def __iter__(self) -> Iterator[Rule]:
    return iter(self._rules)

  def __add__(self, other: Iterable[Rule]) -> RuleTable:
    return RuleTable(self._rules + tuple(other))

  def __radd__(self, other: Iterable[Rule]) -> RuleTable:
    return RuleTable(tuple(other) + self._rules)

  def __repr__(self) -> str:
    return f'RuleTable({len(self._rules)} rules)'

  def find(self, key: str) -> tuple[Rule, re.Match] | None:
    """The first rule matching `key` and its match, or None."""
    for rule in self._rules:
      m = rule.match(key)
      if m is not None:
        return rule, m
    return None


def prefixed(torch_prefix: str, nnx_prefix: str) -> tuple[str, str]:
  """(regex-escaped torch prefix, NNX template prefix) with separators normalised to end in '.' when non-empty.

  Backbone rule factories take the prefix under which the backbone sits in the torch checkpoint (e.g.
  'detr.detr.backbone.0.backbone.') and in the NNX model (e.g. 'backbone.').
  """
  tp = torch_prefix if not torch_prefix or torch_prefix.endswith('.') else torch_prefix + '.'
  np_ = nnx_prefix if not nnx_prefix or nnx_prefix.endswith('.') else nnx_prefix + '.'
  return re.escape(tp), np_.replace('\\', '\\\\')



def linear_rules(t: str, n: str, module: str, target: str = r'\g<m>') -> list[Rule]:
  """nn.Linear `{t}{module}.weight/bias` -> `{n}{target}.kernel/bias` (weight transposed).

  `t` / `n` come from `prefixed`; `module` is a regex (matched as group `m`, so `target` may use `\\g<m>` and any
  group of `module`).
  """
  return [Rule(rf'{t}(?P<m>{module})\.weight', rf'{n}{target}.kernel', linear_kernel),
          Rule(rf'{t}(?P<m>{module})\.bias', rf'{n}{target}.bias')]


def conv_rules(t: str, n: str, module: str, target: str = r'\g<m>') -> list[Rule]:
  """nn.Conv2d `{t}{module}.weight/bias` -> `{n}{target}.kernel/bias` (OIHW -> HWIO); as `linear_rules`."""
  return [Rule(rf'{t}(?P<m>{module})\.weight', rf'{n}{target}.kernel', conv_kernel),
          Rule(rf'{t}(?P<m>{module})\.bias', rf'{n}{target}.bias')]


def norm_rules(t: str, n: str, module: str, target: str = r'\g<m>') -> list[Rule]:
  """LayerNorm / GroupNorm `{t}{module}.weight/bias` -> `{n}{target}.scale/bias`; as `linear_rules`."""
  return [Rule(rf'{t}(?P<m>{module})\.weight', rf'{n}{target}.scale'),
          Rule(rf'{t}(?P<m>{module})\.bias', rf'{n}{target}.bias')]

# Keys every official checkpoint family may carry that no model variable corresponds to: BatchNorm step counters
# and the loss modules' persistent buffers (`criterion.empty_weight`, `vita_criterion.empty_weight`).
COMMON_DROPS = RuleTable([
    drop(r'(?:.*\.)?num_batches_tracked'),
    drop(r'(?:.*\.)?(?:vita_)?criterion\..*'),
])
