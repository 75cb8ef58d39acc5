"""Finding and loading the weights that eval / predict run with, and `--mode convert`.

Search order (first hit wins): the latest train checkpoint in WORKDIR/checkpoints, the converted checkpoint
WORKDIR/converted, then `config.init_from` (a converted orbax directory or an official checkpoint file).
"""

import os

from absl import logging
from flax import nnx
import jax
import ml_collections
import orbax.checkpoint as ocp

from visjax.models import registry
from visjax.train import checkpoint as ckpt_lib
from visjax.train import init_from
from visjax.train import mesh as mesh_lib
from visjax.train import trainer


def describe_weights(config: ml_collections.ConfigDict, workdir: str) -> str:
  """A description of the weights eval/predict would use; raises FileNotFoundError (cheaply) when none exist."""
  ckpt_dir = os.path.join(workdir, trainer.CHECKPOINT_DIR)
  if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
    return f'train checkpoint in {ckpt_dir}'
  converted = os.path.join(workdir, trainer.CONVERTED_DIR)
  if os.path.isdir(converted):
    return f'converted checkpoint {converted}'
  if config.init_from and os.path.exists(config.init_from):
    return f'init_from {config.init_from}'
  raise FileNotFoundError(
      f'No checkpoint to run with: no train checkpoint in {ckpt_dir}, no converted checkpoint in {converted}, '
      f'and config.init_from={config.init_from!r} ' + ('does not exist.' if config.init_from else 'is unset.') +
      ' Train first (--mode train), convert an official checkpoint (--mode convert --config.init_from=X.pth), '
      'or pass --config.init_from.')


def load_model(config: ml_collections.ConfigDict, workdir: str) -> nnx.Module:
  """Builds `config.method`'s model on the config's mesh and loads the weights found by `describe_weights`."""
  source = describe_weights(config, workdir)
  method = registry.get_method(config)
  mesh = mesh_lib.create_mesh(config)
  with jax.set_mesh(mesh):
    setup = trainer.build_setup(config, method, mesh)
    item = init_from.training_checkpoint(workdir)
    if item is not None:  # parameters and model state only: the optimizer state is never read
      abstract = {'params': setup.abstract_state['params'],
                  'rest': ckpt_lib.abstract_saveable(setup.abstract_state['rest'])}
      restored = ocp.PyTreeCheckpointer().restore(item, args=ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True))
      params = restored['params']
      rest = ckpt_lib.from_saveable(restored['rest'], setup.abstract_state['rest'])
    else:
      state = setup.init_fn()
      converted = os.path.join(workdir, trainer.CONVERTED_DIR)
      path = converted if os.path.isdir(converted) else config.init_from
      params, rest = trainer.load_pretrained(config, method, setup, state, path)
  logging.info('Loaded weights from %s', source)
  return nnx.merge(setup.graphdef, params, rest)


def convert_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Ports `config.init_from` (official .pth/.npz/.safetensors) into WORKDIR/converted; returns that path.

  Raises:
    visjax.convert.ConversionError listing every missing / unexpected / mis-shaped key (nothing is written).
  """
  from visjax import convert  # pylint: disable=g-import-not-at-top
  if not config.init_from:
    raise ValueError('--mode convert needs --config.init_from=PATH to an official checkpoint.')
  if not os.path.isfile(config.init_from):
    raise FileNotFoundError(f'config.init_from={config.init_from!r} is not a file.')
  method = registry.get_method(config)
  model = method.build_model(nnx.Rngs(config.seed))
  trainer.convert_official(config, method, model, config.init_from)
  out = os.path.join(workdir, trainer.CONVERTED_DIR)
  os.makedirs(workdir, exist_ok=True)
  path = convert.save_converted(model, out, overwrite=True)
  logging.info('Wrote converted checkpoint %s', path)
  return path
