"""Orbax checkpoints of the full train state, resumable exactly (also after SIGKILL).

Train checkpoints live in `WORKDIR/checkpoints/<step>/` with two items: `state` (params, non-param model state,
optimizer state, step; sharded arrays restored onto the current mesh) and `data` (the input iterator position as
JSON). Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint is either
whole or absent, also after SIGKILL. Converted official checkpoints use `visjax.convert.save_converted`.
"""

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from visjax import errors

_STATE = 'state'
_DATA = 'data'


def _is_key(x: Any) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree: Any) -> Any:
  """Typed PRNG key arrays → their raw uint32 data (orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree: Any, like: Any) -> Any:
  """Inverse of `to_saveable`, using the key leaves of `like` to re-wrap raw key data."""
  def wrap(x, ref):
    if _is_key(ref):
      impl = jax.random.key_impl(ref) if isinstance(ref, jax.Array) else None
      return jax.random.wrap_key_data(x, impl=impl)
    return x
  return jax.tree.map(wrap, tree, like)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{dotted path: shape} of every array leaf of `tree` (arrays, ShapeDtypeStructs or orbax metadata)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  name = lambda k: str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
  return {'.'.join(name(k) for k in path): tuple(leaf.shape) for path, leaf in flat if hasattr(leaf, 'shape')}


def abstract_saveable(abstract: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of `to_saveable(abstract)`."""
  def one(x):
    if _is_key(x):
      data = jax.eval_shape(jax.random.key_data, x)
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, 'sharding', None))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree.map(one, abstract)


class Checkpointer:
  """Save / restore the train state and the data-iterator state under `directory` (keeps the last `keep`)."""

  def __init__(self, directory: str, *, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    handlers = {_STATE: ocp.StandardCheckpointHandler(), _DATA: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any] | None) -> None:
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(to_saveable(state)),
        _DATA: ocp.args.JsonSave(data_state or {}),
    })
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()
    logging.info('Saved checkpoint %d to %s', step, self.directory)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores step `step` onto the shardings of `abstract_state` (ShapeDtypeStructs with `.sharding`).

    Raises:
      visjax.errors.UserError: the checkpoint holds another model (names the first differing parameter).
    """
    self._check_fits(step, abstract_state)
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract_saveable(abstract_state)),
        _DATA: ocp.args.JsonRestore(),
    })
    restored = self._manager.restore(step, args=args)
    state = from_saveable(restored[_STATE], abstract_state)
    return state, dict(restored[_DATA] or {})

  def restore_model_state(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """(params, rest) of step `step` onto the shardings of `abstract_state` (a train state's abstract tree): a
    partial read for eval and predict, the optimizer state is never loaded."""
    wanted = {'params': abstract_state['params'], 'rest': abstract_saveable(abstract_state['rest'])}
    self._check_fits(step, wanted, partial=True)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(self.directory, str(step), _STATE),
        args=ocp.args.PyTreeRestore(item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                                    partial_restore=True))
    return restored['params'], from_saveable(restored['rest'], abstract_state['rest'])

  def _check_fits(self, step: int, abstract_state: Any, partial: bool = False) -> None:
    """Compares the saved tree's paths and shapes with `abstract_state` (cheap: metadata only); `partial`: only
    the paths of `abstract_state` are compared."""
    saved = _shapes(self._manager.item_metadata(step)[_STATE])
    wanted = _shapes(abstract_saveable(abstract_state))
    problems = [f'{p} is {saved[p]} in the checkpoint, the config\'s model has {wanted[p]}'
                for p in wanted if p in saved and saved[p] != wanted[p]]
    problems += [f'{p} {wanted[p]} of the config\'s model is not in the checkpoint' for p in wanted if p not in saved]
    if not partial:
      problems += [f'{p} {saved[p]} of the checkpoint is not in the config\'s model' for p in saved
                   if p not in wanted]
    if problems:
      problems.sort(key=lambda text: not text.startswith('params.'))  # The optimizer state mirrors the params.
      raise errors.UserError(
          f'{self.directory}/{step} was trained with another model config: {problems[0]} ({len(problems)} '
          'differences). Resume with the config it was trained with, or start a new --workdir (add '
          f'--config.init_from=... to start from other weights).')

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

