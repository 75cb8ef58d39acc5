"""Frozen, hashable settings read once from a config section.

Defaults live in the config files only (`configs/`): a settings dataclass declares the fields a method needs, and
`from_config` fails with one message naming every missing and unknown field, instead of a default hidden in code.
Being frozen dataclasses, settings can sit on NNX modules (their graphdefs stay hashable) and key jit caches.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar('T')


def _freeze(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def from_config(cls: type[T], section: Mapping[str, Any] | None, where: str) -> T:
  """`cls(**section)` with every field required; nested dataclass fields are built from sub-sections.

  Args:
    cls: a frozen dataclass.
    section: the config section (ConfigDict or mapping), e.g. `config.loss`.
    where: its name in error messages, e.g. 'config.loss'.
  """
  if section is None:
    raise ValueError(f'{where} is missing: the method needs it (see the method\'s configs).')
  values = dict(section.items())
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  missing = sorted(n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING)
  unknown = sorted(set(values) - set(fields))
  if missing or unknown:
    parts = []
    if missing:
      parts.append(f'missing field(s) {missing}')
    if unknown:
      parts.append(f'unknown field(s) {unknown}')
    raise ValueError(f'{where}: {"; ".join(parts)} (fields: {sorted(fields)}).')
  kwargs = {}
  for name, value in values.items():
    hint = hints.get(name)
    if dataclasses.is_dataclass(hint) and not dataclasses.is_dataclass(value):
      value = from_config(hint, value, f'{where}.{name}')
    kwargs[name] = _freeze(value)
  return cls(**kwargs)
