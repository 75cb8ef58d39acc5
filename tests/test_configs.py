"""Every shipped config (`configs/*.py` with a `get_config`) builds its method and, abstractly, its model."""

import importlib
import os

from flax import nnx
import jax
import pytest

from visjax.models import registry

_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
_NAMES = sorted(f[:-3] for f in os.listdir(_DIR)
                if f.endswith('.py') and hasattr(importlib.import_module(f'configs.{f[:-3]}'), 'get_config'))


def test_every_method_has_a_demo_config():
  methods = {importlib.import_module(f'configs.{n}').get_config().method for n in _NAMES}
  assert methods == {'idol', 'vita', 'visolo', 'iai'}
  assert {'demo_synthetic', 'vita_demo', 'visolo_demo', 'iai_demo'} <= set(_NAMES)


@pytest.mark.parametrize('name', _NAMES)
def test_config_builds_method_and_abstract_model(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.model.num_classes == config.dataset.num_classes, name
  method = registry.get_method(config)
  model = nnx.eval_shape(lambda: method.build_model(nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert params and all(all(d > 0 for d in p.shape) for p in params), name
  method.input_spec()  # the sampler / augmentation sections are complete
