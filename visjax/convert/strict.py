"""Strict filling of an NNX model's state from a torch state dict through a `RuleTable`.

`convert(state_dict, model, rules)` maps every torch key through the first matching rule, checks each result
against the NNX variable at its path (existence, shape, dtype kind), and only when *everything* is consistent
writes the values (so a failed conversion leaves the model untouched). Problems are collected, not raised one
by one: `ConversionError` lists every missing NNX path, every unexpected torch key (no rule, or a rule whose
target is not in the model), every shape mismatch (torch key, NNX path, shapes) and every failed check, so one
run shows the whole diff between a checkpoint and a model.

The model may be abstract (`nnx.eval_shape(lambda: build(...))`): conversion then skips the random init
entirely (the fast path for large models); every variable must be filled, since an allowed missing or
mis-shaped variable would be left without a value (reported as an error). RNG state is not part of a
checkpoint: reseed an abstract model's streams before training (`nnx.reseed(model, dropout=seed)`).

NNX paths are written dotted: `res2.0.conv1.norm.weight` is the path `('res2', 0, 'conv1', 'norm', 'weight')`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os
import re
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visjax.convert import torch_ckpt
from visjax.convert.rules import Rule, RuleTable


class Issue(NamedTuple):
  """One problem (or allowed exception) found during conversion."""

  torch_key: str | None
  nnx_path: str | None
  detail: str

  def __str__(self) -> str:
    where = ' -> '.join(p for p in (self.torch_key, self.nnx_path) if p)
    return f'{where}: {self.detail}' if where else self.detail


@dataclasses.dataclass
class ConversionReport:
  """What `convert` did. Lists of `Issue`s; the `allowed_*` lists hold problems waived by an allow regex.

  Attributes:
    loaded: (torch key, NNX path) pairs written.
    dropped: torch keys discarded by drop rules.
    missing: NNX paths no torch key filled.
    unexpected: torch keys with no rule, or whose target path is not in the model.
    mismatched: converted tensors whose shape (or dtype kind) differs from the NNX variable.
    errors: failed drop checks, failed transforms, several keys writing one path.
    num_values: number of scalars written.
    num_keys: number of keys in the checkpoint.
    num_variables: number of variables the model asked for.
  """

  loaded: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  dropped: list[str] = dataclasses.field(default_factory=list)
  missing: list[Issue] = dataclasses.field(default_factory=list)
  unexpected: list[Issue] = dataclasses.field(default_factory=list)
  mismatched: list[Issue] = dataclasses.field(default_factory=list)
  errors: list[Issue] = dataclasses.field(default_factory=list)
  allowed_missing: list[Issue] = dataclasses.field(default_factory=list)
  allowed_unexpected: list[Issue] = dataclasses.field(default_factory=list)
  allowed_mismatched: list[Issue] = dataclasses.field(default_factory=list)
  num_values: int = 0
  num_keys: int = 0
  num_variables: int = 0

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched or self.errors)

  def headline(self) -> str:
    """One line: what is wrong overall (a checkpoint of another model when under half of the model matched)."""
    matched = len(self.loaded) + len(self.allowed_mismatched)
    counts = ', '.join(f'{len(items)} {name}' for name, items in (
        ('missing', self.missing), ('unexpected', self.unexpected), ('mis-shaped', self.mismatched),
        ('errors', self.errors)) if items)
    if matched * 2 < self.num_variables:
      first = ', '.join(i.torch_key or i.nnx_path for i in self.unexpected[:3])
      return (f'checkpoint looks like a different model: {matched} of {self.num_variables} model variables matched '
              f'({self.num_keys} checkpoint keys; {counts})' + (f'; first unexpected keys: {first}' if first else '')
              + '. Check --config (method, backbone) against the checkpoint.')
    first = (self.missing + self.unexpected + self.mismatched + self.errors)[0]
    return (f'checkpoint does not match the model: {counts}; first: {first}. Fix the config or waive with '
            'config.convert.allow_missing / allow_unexpected / allow_shape_mismatch regexes.')

  def summary(self) -> str:
    lines = [f'loaded {len(self.loaded)} tensors ({self.num_values:,} values), dropped {len(self.dropped)}']
    for title, items in (('missing (NNX path not filled)', self.missing),
                         ('unexpected (torch key not used)', self.unexpected),
                         ('shape mismatch', self.mismatched), ('errors', self.errors),
                         ('allowed missing (kept at init)', self.allowed_missing),
                         ('allowed unexpected (ignored)', self.allowed_unexpected),
                         ('allowed shape mismatch (kept at init)', self.allowed_mismatched)):
      if items:
        lines.append(f'{title}: {len(items)}')
        lines.extend(f'  {issue}' for issue in items)
    return '\n'.join(lines)

  def __str__(self) -> str:
    return self.summary()


class ConversionError(ValueError):
  """Conversion found problems that no allow regex waived; `.report` holds the full `ConversionReport`."""

  def __init__(self, report: ConversionReport):
    self.report = report
    super().__init__(report.headline() + '\n' + report.summary())


def _compile(patterns: Sequence[str] | str) -> list[re.Pattern]:
  if isinstance(patterns, str):
    patterns = (patterns,)
  return [re.compile(p) for p in patterns]


def _allowed(regexes: list[re.Pattern], *names: str | None) -> bool:
  return any(r.fullmatch(n) for r in regexes for n in names if n)


def _drop_problem(rule: Rule, m: re.Match, key: str, array: np.ndarray,
                  state_dict: Mapping[str, np.ndarray]) -> str | None:
  """Why a key matched by a drop rule may not be dropped (failed `check` / `same_as`), or None."""
  if rule.same_as is not None:
    original = m.expand(rule.same_as)
    if original not in state_dict:
      return f'duplicate of {original!r}, which is not in the checkpoint'
    if not np.array_equal(state_dict[original], array):
      return f'duplicate of {original!r} but the values differ'
  return rule.check(key, array) if rule.check is not None else None


def _file(report: ConversionReport, kind: str, issue: Issue, allowed: bool) -> None:
  """Appends `issue` to `report.<kind>`, or to `report.allowed_<kind>` when an allow regex waives it."""
  getattr(report, f'allowed_{kind}' if allowed else kind).append(issue)


def dotted(path: tuple[Any, ...]) -> str:
  """NNX state path tuple -> dotted string (`('res2', 0, 'conv1')` -> 'res2.0.conv1')."""
  return '.'.join(str(p) for p in path)


def target_state(model: nnx.Module | nnx.State) -> nnx.State:
  """The state `convert` fills: every variable of `model` except RNG state (keys and counters)."""
  if isinstance(model, nnx.State):
    return model
  if isinstance(model, nnx.Module):
    return nnx.state(model, nnx.Not(nnx.RngState))
  raise TypeError(f'expected an nnx.Module or nnx.State, got {type(model).__name__}')


def convert(state_dict: Mapping[str, Any] | str | os.PathLike, model: nnx.Module | nnx.State, rules: RuleTable,
            *, allow_missing: Sequence[str] | str = (), allow_unexpected: Sequence[str] | str = (),
            allow_shape_mismatch: Sequence[str] | str = ()) -> ConversionReport:
  """Fills `model`'s state from a torch state dict, strictly.

  Args:
    state_dict: `{key: array or torch.Tensor}` (wrappers `model` / `state_dict` and a `module.` prefix are
      unwrapped), or a checkpoint path (.pth / .npz / .safetensors, see `torch_ckpt.load_state_dict`).
    model: an `nnx.Module` (updated in place; RNG state is neither filled nor required), possibly abstract
      (built under `nnx.eval_shape`, see module docstring), or an `nnx.State` (updated in place).
    rules: the `RuleTable` mapping torch keys to dotted NNX paths.
    allow_missing: regexes (`re.fullmatch` on the dotted NNX path) of variables that may stay at their init.
    allow_unexpected: regexes (on the torch key) of keys that may be left unused.
    allow_shape_mismatch: regexes (on the torch key or the NNX path) of tensors whose shape may differ; those
      variables keep their init (e.g. class heads re-initialised for a new number of classes).

  Returns:
    The `ConversionReport` (all waived problems listed in its `allowed_*` fields).

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key and every failed check not waived.
      Nothing is written in that case.
  """
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = torch_ckpt.load_state_dict(state_dict)
  else:
    state_dict = torch_ckpt.unwrap_state_dict(state_dict)
  if not isinstance(rules, RuleTable):
    rules = RuleTable(rules)
  allow_miss, allow_unexp, allow_shape = (_compile(a) for a in (allow_missing, allow_unexpected,
                                                                allow_shape_mismatch))
  state = target_state(model)
  variables = {dotted(path): var for path, var in nnx.to_flat_state(state)}
  report = ConversionReport(num_keys=len(state_dict), num_variables=len(variables))
  values: dict[str, np.ndarray] = {}
  writer: dict[str, str] = {}

  for key, array in state_dict.items():
    found = rules.find(key)
    if found is None:
      _file(report, 'unexpected', Issue(key, None, f'no rule matches this key (shape {tuple(array.shape)})'),
            _allowed(allow_unexp, key))
      continue
    rule, m = found
    paths = rule.targets(m)
    if not paths:
      message = _drop_problem(rule, m, key, array, state_dict)
      if message:
        report.errors.append(Issue(key, None, f'dropped key failed its check: {message}'))
      else:
        report.dropped.append(key)
      continue
    try:
      converted = rule.transform(array)
    except Exception as e:  # pylint: disable=broad-except
      report.errors.append(Issue(key, ', '.join(paths), f'transform failed on shape {array.shape}: {e}'))
      continue
    if isinstance(converted, np.ndarray) or not isinstance(converted, tuple):
      converted = (converted,)
    if len(converted) != len(paths):
      report.errors.append(Issue(key, ', '.join(paths),
                                 f'transform gave {len(converted)} arrays for {len(paths)} targets'))
      continue
    for path, arr in zip(paths, converted):
      arr = np.asarray(arr)
      var = variables.get(path)
      if var is None:
        _file(report, 'unexpected', Issue(key, path, f'target path is not in the model (shape {arr.shape})'),
              _allowed(allow_unexp, key))
        continue
      if path in writer:
        report.errors.append(Issue(key, path, f'path already written from {writer[path]!r}'))
        continue
      writer[path] = key
      expected = var.get_value()
      if arr.shape != expected.shape:
        issue = Issue(key, path, f'checkpoint shape {tuple(array.shape)} -> {arr.shape}, model expects '
                                 f'{tuple(expected.shape)}')
        _file(report, 'mismatched', issue, _allowed(allow_shape, key, path))
        continue
      if not np.can_cast(arr.dtype, expected.dtype, 'same_kind'):
        report.mismatched.append(Issue(key, path, f'dtype {arr.dtype} cannot be cast to {expected.dtype}'))
        continue
      values[path] = arr.astype(expected.dtype, copy=False)
      report.loaded.append((key, path))

  for path, var in variables.items():
    if path not in writer:
      _file(report, 'missing', Issue(None, path, f'not filled by any checkpoint key (shape '
                                                 f'{tuple(var.get_value().shape)})'), _allowed(allow_miss, path))
  for issue in report.allowed_missing + report.allowed_mismatched:
    if isinstance(variables[issue.nnx_path].get_value(), jax.ShapeDtypeStruct):
      report.errors.append(Issue(issue.torch_key, issue.nnx_path, 'the model is abstract (nnx.eval_shape), so '
                                 'this allowed variable would have no value; build the model concretely'))

  if not report.ok:
    raise ConversionError(report)
  for path, arr in values.items():
    variables[path].set_value(jnp.asarray(arr))
    report.num_values += arr.size
  if isinstance(model, nnx.Module):
    nnx.update(model, state)
  return report
