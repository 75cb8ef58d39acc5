"""Starting a model from an orbax source: a visjax training run or a converted checkpoint (`config.init_from`).

Checkpoint chains (COCO → YouTube-VIS → OVIS, a frame detector → a video model) load what fits and say so:
`load_state` copies every model variable whose path and shape the source has, leaves the ones matching
`config.init_reinit` regexes at their initial values (e.g. class heads when the category set changes), leaves the
ones the source lacks at init, and reports the three lists. A shape mismatch that no regex covers is an error
naming each variable. From a training run only parameters and model state are read (the optimizer starts fresh).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

from absl import logging
from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp

from visjax.convert.strict import target_state

_CHECKPOINTS = 'checkpoints'


@dataclasses.dataclass
class InitReport:
  source: str
  loaded: list[str]
  reinitialised: list[str]
  left_at_init: list[str]
  unused: list[str]

  def summary(self) -> str:
    def few(names):
      return ', '.join(names[:8]) + (f', ... ({len(names)} in all)' if len(names) > 8 else '')
    parts = [f'{len(self.loaded)} variables loaded from {self.source}']
    if self.reinitialised:
      parts.append(f're-initialised (config.init_reinit): {few(self.reinitialised)}')
    if self.left_at_init:
      parts.append(f'left at init (not in the source): {few(self.left_at_init)}')
    if self.unused:
      parts.append(f'unused source entries: {few(self.unused)}')
    return '; '.join(parts)


def _flatten(tree: Any) -> dict[str, Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat['.'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)] = leaf
  return flat


def saved_steps(directory: str) -> list[int]:
  """The steps saved in a checkpoints directory (its numbered sub-folders), ascending; [] when there is none."""
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def training_checkpoint(path: str) -> str | None:
  """The `state` item directory of the latest step of a training run at `path` (its WORKDIR or checkpoints/)."""
  for directory in (os.path.join(path, _CHECKPOINTS), path):
    steps = saved_steps(directory)
    if steps:
      return os.path.join(directory, str(steps[-1]), 'state')
  return None


def read_source(path: str) -> dict[str, np.ndarray]:
  """Flat `{dotted path: array}` of the model variables stored at `path` (training run or converted checkpoint)."""
  checkpointer = ocp.PyTreeCheckpointer()
  item = training_checkpoint(path)
  if item is not None:
    meta = checkpointer.metadata(item)
    meta = getattr(meta, 'item_metadata', meta)
    meta = getattr(meta, 'tree', meta)
    wanted = {k: meta[k] for k in ('params', 'rest') if k in meta}
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), wanted)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                                                      partial_restore=True))
    flat = {}
    for part in ('params', 'rest'):
      flat.update(_flatten(restored.get(part, {})))
    return flat
  if not os.path.isdir(path):
    raise FileNotFoundError(f'config.init_from={path!r}: no such directory.')
  return {k: np.asarray(v) for k, v in _flatten(checkpointer.restore(os.path.abspath(path))).items()}


def load_state(model: nnx.Module, path: str, *, reinit: Sequence[str] = ()) -> InitReport:
  """Fills `model` in place from the orbax source at `path` (module docstring); returns the report."""
  patterns = [re.compile(r) for r in reinit]
  source = read_source(path)
  state = target_state(model)
  target = _flatten(nnx.to_pure_dict(state))
  report = InitReport(os.path.abspath(path), [], [], [], sorted(set(source) - set(target)))
  mismatched = []
  values = {}
  for name, leaf in target.items():
    if any(p.search(name) for p in patterns):
      report.reinitialised.append(name)
    elif name not in source:
      report.left_at_init.append(name)
    elif tuple(source[name].shape) != tuple(leaf.shape):
      mismatched.append(f'{name}: model {tuple(leaf.shape)}, checkpoint {tuple(source[name].shape)}')
    else:
      values[name] = np.asarray(source[name], leaf.dtype)
      report.loaded.append(name)
  if mismatched:
    raise ValueError(f'config.init_from={path}: {len(mismatched)} variable(s) differ in shape: '
                     + '; '.join(mismatched[:10]) + '. Re-initialise them with --config.init_reinit (regexes), e.g. '
                     'the class heads when the category set changed.')
  pure = nnx.to_pure_dict(state)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
  new_leaves = [values.get('.'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in p), leaf)
                for p, leaf in leaves]
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new_leaves))
  nnx.update(model, state)
  logging.info('init_from: %s', report.summary())
  return report
