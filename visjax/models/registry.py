"""Method contract v2 (docs/INTERFACES.md §3): `get_method(config)` → a `Method` built once from the config.

A method is a subclass of `Method` exposed by its module as `METHOD`. `config.method` is a package under
`visjax/models/` (`'idol'` → `visjax.models.idol.method`) or a dotted module path (`'mypkg.my_method'`), so
projects and tests plug in their own methods without touching visjax.

The method owns the config: it reads what it needs once in `__init__` (settings that shape a jitted graph as
frozen, hashable dataclasses), and every other call takes only models, batches and RNGs.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

from flax import nnx
import jax
import ml_collections

from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib


class Method(abc.ABC):
  """Base class of every method. Subclasses implement the abstract methods; `config` is the full config."""

  name: str = ''

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    num_classes = config.dataset.get('num_classes', None)
    model_classes = config.get('model', {}).get('num_classes', None)
    if num_classes is not None and model_classes is not None and int(num_classes) != int(model_classes):
      raise ValueError(f'config.dataset.num_classes={num_classes} but config.model.num_classes={model_classes}: '
                       'they must agree (set both, e.g. --config.dataset.num_classes=N --config.model.num_classes=N).')

  @abc.abstractmethod
  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """The method's model, randomly initialised from `rngs`."""

  @abc.abstractmethod
  def loss_fn(self, model: nnx.Module, batch: dict[str, Any], *, rng: jax.Array,
              train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(total, terms)`: the weighted scalar loss of a training batch (docs/INTERFACES.md §1) and every weighted
    term by name. Jittable: called inside `jax.jit` on `nnx.merge(graphdef, state)`; no host callbacks."""

  @abc.abstractmethod
  def make_predictor(self, model: nnx.Module, video: predictor_lib.VideoMeta) -> predictor_lib.Predictor:
    """A streaming predictor for one video (`visjax.inference.predictor`)."""

  @abc.abstractmethod
  def record_rule(self) -> tracks_lib.RecordRule:
    """How this method's tracks become CodaLab records (`visjax.inference.tracks`)."""

  def conversion_rules(self):
    """Official checkpoint keys → NNX state paths (`visjax.convert.RuleTable`)."""
    raise NotImplementedError(f'Method {self.name!r} has no conversion rules: it cannot port official checkpoints.')

  def input_spec(self) -> ml_collections.ConfigDict:
    """What the training input must produce: `sampler`, `augment` and `augment_pseudo` (data, docs/INTERFACES.md
    §1). The engine hands it to the input source (`make_train_iterator(config, input_spec, ...)`), which reads no
    recipe from the config itself; the default returns `config.input.{sampler, augment, augment_pseudo}` as
    configured, a method may derive or check them (e.g. a clip length tied to its model)."""
    inp = self.config.input
    for field in ('sampler', 'augment'):
      if field not in inp:
        raise ValueError(f'config.input.{field} is missing: method {self.name!r} configs set it (see '
                         'configs/input_recipes.py).')
    return ml_collections.ConfigDict({'sampler': inp.sampler, 'augment': inp.augment,
                                      'augment_pseudo': inp.get('augment_pseudo', {})})

  def records(self, tracks: list[tracks_lib.Track], video_id: Any) -> list[dict]:
    """CodaLab records of one video's tracks under `record_rule()` and the dataset's category table."""
    table = tracks_lib.category_table(self.config.dataset.category_ids, int(self.config.dataset.num_classes))
    return tracks_lib.tracks_to_records(tracks, video_id=video_id, rule=self.record_rule(), category_ids=table)


def module_name(name: str) -> str:
  if not name:
    raise ValueError('config.method is empty: set it to a method name such as "idol".')
  return name if '.' in name else f'visjax.models.{name}.method'


def get_method(config: ml_collections.ConfigDict) -> Method:
  """Imports the module of `config.method` and builds its `METHOD` class from `config`."""
  name = config.method
  mod_name = module_name(name)
  try:
    module = importlib.import_module(mod_name)
  except ModuleNotFoundError as e:
    if e.name and mod_name.startswith(e.name):
      raise ValueError(f'Unknown method {name!r}: module {mod_name} not found.') from e
    raise
  cls = getattr(module, 'METHOD', None)
  if not (isinstance(cls, type) and issubclass(cls, Method)):
    raise ValueError(f'Method module {mod_name} must define METHOD, a subclass of visjax.models.registry.Method '
                     '(see docs/INTERFACES.md §3).')
  method = cls(config)
  method.name = method.name or name
  return method
