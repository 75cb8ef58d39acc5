"""Saving a converted model as an orbax checkpoint, and loading it back into a freshly built model.

The checkpoint holds the model's state as a nested dict of arrays (`nnx.to_pure_dict`, RNG state
excluded), so it restores into any model built with the same config, whatever its random init.
"""

from __future__ import annotations

import os

from flax import nnx
import jax
import orbax.checkpoint as ocp

from visjax.convert.strict import target_state


def save_converted(model_or_state: nnx.Module | nnx.State, path: str | os.PathLike, *,
                   overwrite: bool = False) -> str:
  """Writes the (non-RNG) state of `model_or_state` to the orbax checkpoint directory `path`; returns its path.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass overwrite=True to replace it')
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, nnx.to_pure_dict(target_state(model_or_state)), force=overwrite)
  checkpointer.wait_until_finished()
  return path


def load_converted(path: str | os.PathLike, model: nnx.Module) -> nnx.Module:
  """Restores a `save_converted` checkpoint into `model` (in place; shapes and dtypes must match); returns it.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError (from orbax): the checkpoint's tree or shapes do not match `model`.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no converted checkpoint at {path}')
  state = target_state(model)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(state))
  restored = ocp.StandardCheckpointer().restore(path, abstract)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model
