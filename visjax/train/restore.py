"""Finding and loading the weights that eval / predict run with, and `--mode convert`.

Search order (first hit wins): the latest train checkpoint in WORKDIR/checkpoints (or step
`config.eval.checkpoint_step` when >= 0, e.g. for a learning curve), the converted checkpoint WORKDIR/converted,
then `config.init_from` (a converted orbax directory or an official checkpoint file).
"""

import os
import time

from absl import logging
from flax import nnx
import jax
import ml_collections

from visjax import errors
from visjax.models import registry
from visjax.train import checkpoint as ckpt_lib
from visjax.train import init_from
from visjax.train import mesh as mesh_lib
from visjax.train import trainer


def _requested_step(config: ml_collections.ConfigDict) -> int:
  return int(config.get('eval', {}).get('checkpoint_step', -1))


def describe_weights(config: ml_collections.ConfigDict, workdir: str) -> str:
  """A description of the weights eval/predict would use; raises FileNotFoundError (cheaply) when none exist, or
  when `config.eval.checkpoint_step` names a step that was not saved (listing the saved ones)."""
  ckpt_dir = os.path.join(workdir, trainer.CHECKPOINT_DIR)
  steps, wanted = init_from.saved_steps(ckpt_dir), _requested_step(config)
  if wanted >= 0:
    if wanted not in steps:
      raise FileNotFoundError(f'config.eval.checkpoint_step={wanted}: no such checkpoint in {ckpt_dir} '
                              f'(saved steps: {steps or "none"}).')
    return f'train checkpoint {wanted} in {ckpt_dir}'
  if steps:
    return f'train checkpoint {steps[-1]} in {ckpt_dir}'
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
    if init_from.training_checkpoint(workdir) is not None:  # parameters and model state only
      checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, trainer.CHECKPOINT_DIR))
      step = _requested_step(config)
      params, rest = checkpointer.restore_model_state(step if step >= 0 else checkpointer.latest_step(),
                                                      setup.abstract_state)
      checkpointer.close()
    else:
      state = setup.init_fn()
      converted = os.path.join(workdir, trainer.CONVERTED_DIR)
      path = converted if os.path.isdir(converted) else config.init_from
      params, rest = trainer.load_pretrained(config, method, setup, state, path)
  logging.info('Loaded weights from %s', source)
  return nnx.merge(setup.graphdef, params, rest)


def convert_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Ports `config.init_from` (official .pth/.npz/.safetensors) into WORKDIR/converted; returns that path.

  The file is checked (exists, readable, known extension, torch installed for .pth) before anything is built, and
  the model is built abstractly (`nnx.eval_shape`: no random init) unless `config.convert.allow_missing` /
  `allow_shape_mismatch` waive variables, which then keep their random init.

  Raises:
    visjax.convert.ConversionError listing every missing / unexpected / mis-shaped key (nothing is written).
  """
  from visjax import convert  # pylint: disable=g-import-not-at-top
  from visjax.convert import torch_ckpt  # pylint: disable=g-import-not-at-top
  if not config.init_from:
    raise errors.UserError('--mode convert needs --config.init_from=PATH to an official checkpoint '
                           f'({", ".join(torch_ckpt.EXTENSIONS)}).')
  torch_ckpt.check_file(config.init_from)  # Before anything is built.
  start = time.time()
  method = registry.get_method(config)
  allow = config.get('convert', ml_collections.ConfigDict())
  keeps_init = bool(tuple(allow.get('allow_missing', ())) or tuple(allow.get('allow_shape_mismatch', ())))
  build = lambda: method.build_model(nnx.Rngs(config.seed))
  logging.info('[1/3] Building the %s model (%s)', config.method,
               'random init: config.convert allows variables to keep it' if keeps_init else 'abstract, no init')
  model = build() if keeps_init else nnx.eval_shape(build)
  logging.info('[2/3] Reading and porting %s (%.1f MB)', config.init_from,
               os.path.getsize(config.init_from) / 2**20)
  trainer.convert_official(config, method, model, config.init_from)
  out = os.path.join(workdir, trainer.CONVERTED_DIR)
  logging.info('[3/3] Writing %s', out)
  os.makedirs(workdir, exist_ok=True)
  path = convert.save_converted(model, out, overwrite=True)
  logging.info('Wrote converted checkpoint %s in %.1f s', path, time.time() - start)
  return path
