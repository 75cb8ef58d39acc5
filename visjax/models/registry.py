"""Method registry: `get_method(name)` → the method's `build_model`, `loss_fn`, `predict_video`, `conversion_rules`.

A method is a module exposing the interface of docs/INTERFACES.md §3. `name` is either a package under
`visjax/models/` (`'idol'` → `visjax.models.idol.method`) or a dotted module path (`'mypkg.my_method'`), so
projects and tests can plug in their own methods without touching visjax.
"""

import dataclasses
import importlib
from typing import Any, Callable

_REQUIRED = ('build_model', 'loss_fn', 'predict_video')


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  build_model: Callable[..., Any]
  loss_fn: Callable[..., Any]
  predict_video: Callable[..., Any]
  conversion_rules: Callable[..., Any] | None


def module_name(name: str) -> str:
  if not name:
    raise ValueError('config.method is empty: set it to a method name such as "idol".')
  return name if '.' in name else f'visjax.models.{name}.method'


def get_method(name: str) -> Method:
  """Imports the method module for `name` and checks that it has the interface functions."""
  mod_name = module_name(name)
  try:
    module = importlib.import_module(mod_name)
  except ModuleNotFoundError as e:
    if e.name and mod_name.startswith(e.name):
      raise ValueError(f'Unknown method {name!r}: module {mod_name} not found.') from e
    raise
  missing = [f for f in _REQUIRED if not callable(getattr(module, f, None))]
  if missing:
    raise ValueError(f'Method module {mod_name} lacks {missing} (see docs/INTERFACES.md §3).')
  return Method(name=name, build_model=module.build_model, loss_fn=module.loss_fn,
                predict_video=module.predict_video, conversion_rules=getattr(module, 'conversion_rules', None))
