"""Device mesh, multi-host start-up, parameter sharding rules and global batches.

The mesh has the axes ('data', 'model'). Batches are sharded over 'data'. Parameters (and everything in the
train state shaped like them) are replicated unless a config rule `(regex, 'fsdp')` matches their path, in which
case their largest dimension divisible by the 'data' axis size is sharded over 'data' (as big_vision's
`fsdp` strategy); with no such dimension they stay replicated.
"""

import os
import re
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding

_ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
_ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
_ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> bool:
  """Calls `jax.distributed.initialize` when the config or the environment asks for it.

  Asks: `config.mesh.distributed` true, or `JAX_COORDINATOR_ADDRESS` set. The coordinator address, process count
  and id come from `config.mesh.{coordinator_address, num_processes, process_id}` when set, else from the
  environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, else JAX's own
  cluster auto-detection (TPU pods, SLURM, ...). Must run before any other JAX call touches the devices.

  Returns:
    Whether `jax.distributed.initialize` was called.
  """
  mesh_cfg = config.mesh
  if not (mesh_cfg.get('distributed', False) or os.environ.get(_ENV_COORDINATOR)):
    return False
  address = mesh_cfg.get('coordinator_address', '') or os.environ.get(_ENV_COORDINATOR) or None
  num = mesh_cfg.get('num_processes', -1)
  pid = mesh_cfg.get('process_id', -1)
  num = num if num >= 0 else _env_int(_ENV_NUM_PROCESSES)
  pid = pid if pid >= 0 else _env_int(_ENV_PROCESS_ID)
  jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  logging.info('jax.distributed: process %d of %d', jax.process_index(), jax.process_count())
  return True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f'Environment variable {name}={value!r} is not an integer.') from e


def mesh_shape(data: int, model: int, num_devices: int) -> tuple[int, int]:
  """Resolves `(data, model)` where −1 means "all remaining devices"; checks the product."""
  if data == -1 and model == -1:
    raise ValueError('config.mesh.data and config.mesh.model cannot both be -1.')
  for name, value in (('data', data), ('model', model)):
    if value == 0 or value < -1:
      raise ValueError(f'config.mesh.{name}={value}: must be a positive size or -1.')
  if data == -1:
    if num_devices % model:
      raise ValueError(f'config.mesh.model={model} does not divide the {num_devices} devices.')
    data = num_devices // model
  elif model == -1:
    if num_devices % data:
      raise ValueError(f'config.mesh.data={data} does not divide the {num_devices} devices.')
    model = num_devices // data
  if data * model != num_devices:
    raise ValueError(f'config.mesh data={data} x model={model} needs {data * model} devices; '
                     f'{num_devices} are present.')
  return data, model


def create_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """Builds the ('data', 'model') mesh over all devices from `config.mesh.{data, model}`."""
  data, model = mesh_shape(config.mesh.data, config.mesh.model, jax.device_count())
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((data, model), ('data', 'model'), axis_types=(auto, auto))


def path_str(path: Sequence[Any]) -> str:
  """'a/b/0/c' for a pytree key path; the NNX `.value` attribute is dropped."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != 'value':
        parts.append(key.name)
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _fsdp_spec(shape: Sequence[int], data_size: int) -> P:
  """Shards the largest dimension divisible by `data_size` over 'data' (ties: the last such dim)."""
  if data_size == 1:
    return P()
  best = None
  for axis in np.argsort(shape, kind='stable')[::-1]:
    if shape[axis] % data_size == 0 and shape[axis] >= data_size:
      best = int(axis)
      break
  if best is None:
    return P()
  spec = [None] * len(shape)
  spec[best] = 'data'
  return P(*spec)


def infer_sharding(tree: Any, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, str]]) -> Any:
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs) from `(regex, strategy)` rules.

  The first rule whose regex `re.search`-matches the leaf's path string decides: 'fsdp' or 'replicate'.
  Unmatched leaves are replicated. Paths look like 'params/backbone/conv1/kernel' or
  'opt_state/1/mu/backbone/conv1/kernel', so one rule covers a parameter and its optimizer moments.
  """
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2 or rule[1] not in ('fsdp', 'replicate'):
      raise ValueError(f'config.mesh.fsdp_rules[{i}]={rule!r}: expected (regex, "fsdp" | "replicate").')
    compiled.append((re.compile(rule[0]), rule[1]))
  data_size = mesh.shape['data']

  def leaf_sharding(path, leaf):
    name = path_str(path)
    shape = getattr(leaf, 'shape', ())
    for regex, strategy in compiled:
      if regex.search(name):
        spec = _fsdp_spec(shape, data_size) if strategy == 'fsdp' else P()
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension over 'data', the rest replicated."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles per-process numpy batches `[B_local, ...]` into global arrays `[B_local * processes, ...]`."""
  sharding = data_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(f'Batch entry {key!r} is a scalar; every batch entry needs a leading batch dimension.')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def check_batch_divisible(global_batch_size: int, mesh: jax.sharding.Mesh, grad_accum: int) -> None:
  """The global batch must split into `grad_accum` microbatches, each divisible over the 'data' axis."""
  data_size = mesh.shape['data']
  if grad_accum < 1:
    raise ValueError(f'config.train.grad_accum={grad_accum} must be >= 1.')
  if global_batch_size % (grad_accum * data_size):
    raise ValueError(
        f'config.input.batch_size={global_batch_size} must be divisible by train.grad_accum ({grad_accum}) x '
        f'mesh data axis ({data_size}).')
  if global_batch_size % jax.process_count():
    raise ValueError(
        f'config.input.batch_size={global_batch_size} is not divisible by the {jax.process_count()} processes.')
