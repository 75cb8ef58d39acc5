"""Train state, the jitted sharded train step, and the training loop.

The train state is a plain pytree (pure dicts of arrays, so orbax and the sharding rules see stable paths):

  {'step': int32 [],                   number of completed updates
   'params': {...},                    nnx.Param leaves of the model, fp32
   'rest': {...},                      every other NNX variable (batch stats, rng counters, ...)
   'opt_state': optax state}          of the trainable parameters only

Parameters matching `config.train.frozen` (`optim.split_frozen`) are official `requires_grad=False`: kept in
`params` (checkpoints, eval and `init_from` see every parameter) but not differentiated, not in the optimizer state,
not clipped and bitwise unchanged by the step.

The step is `jax.jit(step, in_shardings, out_shardings, donate_argnums=0)` over `nnx.merge(graphdef, params, rest)`
with the graphdef static. The per-step RNG is `fold_in(key(config.seed), step)`, so it is a function of the saved
step and a resumed run draws the same randomness as an uninterrupted one.
"""

import dataclasses
import importlib
import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from visjax import errors
from visjax import io_utils
from visjax.models import registry
from visjax.train import checkpoint as ckpt_lib
from visjax.train import mesh as mesh_lib
from visjax.train import optim
from visjax.train import preemption

CHECKPOINT_DIR = 'checkpoints'
CONVERTED_DIR = 'converted'  # orbax export written by --mode convert
TRAIN_LOG = 'train_log.jsonl'


class NonFiniteLossError(FloatingPointError):
  """Raised when a train step produced a NaN/inf loss or loss term."""


@dataclasses.dataclass
class ModelSetup:
  """What the train/eval code needs about a model: its graphdef and the abstract (sharded) train state."""
  graphdef: Any
  tx: optax.GradientTransformation
  abstract_state: Any  # ShapeDtypeStructs with .sharding
  state_sharding: Any
  init_fn: Callable[[], Any]  # jitted, returns a fresh sharded train state


def data_source(config: ml_collections.ConfigDict):
  """The input module named by `config.input.source` (default `data_pipeline.input`)."""
  return importlib.import_module(config.input.get('source', '') or 'data_pipeline.input')


def _split_model(model: nnx.Module) -> tuple[Any, dict, dict]:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def build_setup(config: ml_collections.ConfigDict, method: registry.Method,
                mesh: jax.sharding.Mesh) -> ModelSetup:
  """Abstract model → graphdef, optimizer, shardings from `config.mesh.fsdp_rules`, and a sharded init."""

  def make_model():
    return method.build_model(nnx.Rngs(config.seed))

  graphdef, abs_params, _ = _split_model(nnx.eval_shape(make_model))
  tx = optim.make_optimizer(config, optim.split_frozen(abs_params, config)[0])

  def init():
    _, params, rest = _split_model(make_model())
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'rest': rest,
            'opt_state': tx.init(optim.split_frozen(params, config)[0])}

  abstract = jax.eval_shape(init)
  sharding = mesh_lib.infer_sharding(abstract, mesh, [tuple(r) for r in config.mesh.get('fsdp_rules', ())])
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding)
  return ModelSetup(graphdef=graphdef, tx=tx, abstract_state=abstract, state_sharding=sharding,
                    init_fn=jax.jit(init, out_shardings=sharding))


def _microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
  """[B, ...] → [num, B/num, ...]; microbatch k holds examples k, k+num, ... (keeps each device's rows local)."""
  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return jax.lax.with_sharding_constraint(x, jax.P(None, 'data'))
  return jax.tree.map(split, batch)


def make_train_step(config: ml_collections.ConfigDict, method: registry.Method, setup: ModelSetup,
                    mesh: jax.sharding.Mesh) -> Callable[[Any, dict], tuple[Any, dict]]:
  """The jitted `(state, batch) -> (state, metrics)`; state donated, batch sharded over 'data'.

  metrics: {'loss', every loss term, 'grad_norm' (trainable parameters, before clipping), 'lr'} as replicated
  scalars. Only the trainable parameters (`optim.split_frozen`) are differentiated and updated.
  """
  graphdef, tx = setup.graphdef, setup.tx
  num_micro = int(config.train.grad_accum)
  schedule = optim.schedule_from_config(config)
  base_key = jax.random.key(config.seed)

  def loss_with_aux(trainable, frozen, rest, batch, rng):
    model = nnx.merge(graphdef, optim.merge_frozen(trainable, frozen), rest)
    loss, terms = method.loss_fn(model, batch, rng=rng, train=True)
    _, _, new_rest = _split_model(model)
    return loss, (terms, new_rest)

  grad_fn = jax.value_and_grad(loss_with_aux, has_aux=True)

  def step(state, batch):
    rng = jax.random.fold_in(base_key, state['step'])
    trainable, frozen = optim.split_frozen(state['params'], config)
    if num_micro == 1:
      (loss, (terms, rest)), grads = grad_fn(trainable, frozen, state['rest'], batch, rng)
    else:
      micro = _microbatches(batch, num_micro)
      first = jax.tree.map(lambda x: x[0], micro)
      (loss_shape, (terms_shape, _)), grads_shape = jax.eval_shape(grad_fn, trainable, frozen, state['rest'], first,
                                                                   rng)
      zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)

      def body(carry, xs):
        (acc_loss, (acc_terms, rest)), acc_grads = carry
        mb, index = xs
        (l, (t, rest)), g = grad_fn(trainable, frozen, rest, mb, jax.random.fold_in(rng, index))
        add = lambda a, b: a + b
        return ((acc_loss + l, (jax.tree.map(add, acc_terms, t), rest)), jax.tree.map(add, acc_grads, g)), None

      init = ((zeros(loss_shape), (zeros(terms_shape), state['rest'])), zeros(grads_shape))
      ((loss, (terms, rest)), grads), _ = jax.lax.scan(body, init, (micro, jnp.arange(num_micro)))
      scale = 1.0 / num_micro
      loss = loss * scale
      terms = jax.tree.map(lambda x: x * scale, terms)
      grads = jax.tree.map(lambda x: x * scale, grads)
    updates, opt_state = tx.update(grads, state['opt_state'], trainable)
    new_params = optim.merge_frozen(optax.apply_updates(trainable, updates), frozen)
    new_state = {'step': state['step'] + 1, 'params': new_params, 'rest': rest, 'opt_state': opt_state}
    metrics = {'loss': loss, **terms, 'grad_norm': optax.tree.norm(grads), 'lr': schedule(state['step'])}
    return new_state, metrics

  return jax.jit(step, in_shardings=(setup.state_sharding, mesh_lib.data_sharding(mesh)),
                 out_shardings=(setup.state_sharding, mesh_lib.replicated(mesh)), donate_argnums=(0,))


def load_pretrained(config: ml_collections.ConfigDict, method: registry.Method, setup: ModelSetup,
                    state: Any, path: str) -> tuple[Any, Any]:
  """(params, rest) of `state` overwritten from `path`, placed on the state's shardings.

  `path`: a visjax training run (its WORKDIR or WORKDIR/checkpoints: parameters and model state of the latest step,
  optimizer fresh), a converted orbax checkpoint (`--mode convert` writes WORKDIR/converted), or an official
  checkpoint file (.pth / .npz / .safetensors) ported on the fly with the method's `conversion_rules` (strict:
  missing, unexpected or mis-shaped keys raise `visjax.convert.ConversionError` listing them, unless waived by
  `config.convert.allow_*` regexes). Orbax sources load through `init_from.load_state` with `config.init_reinit`.
  """
  from visjax.train import init_from  # pylint: disable=g-import-not-at-top
  model = nnx.merge(setup.graphdef, state['params'], state['rest'])
  if os.path.isdir(path):
    init_from.load_state(model, path, reinit=tuple(config.get('init_reinit', ())))
  elif os.path.isfile(path):
    convert_official(config, method, model, path)
  else:
    raise FileNotFoundError(f'Checkpoint {path!r} does not exist.')
  _, params, rest = _split_model(model)
  put = lambda tree, abs_tree: jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), tree, abs_tree)
  return put(params, setup.abstract_state['params']), put(rest, setup.abstract_state['rest'])


def convert_official(config: ml_collections.ConfigDict, method: registry.Method, model: nnx.Module,
                     path: str) -> Any:
  """Fills `model` in place from an official checkpoint file via `method.conversion_rules()`."""
  from visjax import convert  # pylint: disable=g-import-not-at-top
  allow = config.get('convert', ml_collections.ConfigDict())
  report = convert.convert(path, model, method.conversion_rules(),
                           allow_missing=tuple(allow.get('allow_missing', ())),
                           allow_unexpected=tuple(allow.get('allow_unexpected', ())),
                           allow_shape_mismatch=tuple(allow.get('allow_shape_mismatch', ())))
  logging.info('Converted %s: %s', path, report.summary())
  return report


class MetricLogger:
  """Host-side metric windows → train_log.jsonl (one object per logged step), TensorBoard, progress bar."""

  def __init__(self, workdir: str, *, start_step: int, num_steps: int, log_every: int, enabled: bool):
    self.enabled = enabled
    self.log_every = max(1, int(log_every))
    self.path = os.path.join(workdir, TRAIN_LOG)
    self._window: dict[str, list[float]] = {}
    self._t0 = time.time()
    self._steps_in_window = 0
    self._writer = None
    self._bar = None
    if not enabled:
      return
    _truncate_log(self.path, start_step)
    import tensorboardX  # pylint: disable=g-import-not-at-top
    # purge_step: TensorBoard hides events at or after it left by a run that died past its last checkpoint.
    self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'logs'), purge_step=start_step + 1 if start_step
                                              else None)
    import tqdm  # pylint: disable=g-import-not-at-top
    self._bar = tqdm.tqdm(total=num_steps, initial=start_step, unit='step', dynamic_ncols=True, smoothing=0.1)

  def record(self, step: int, metrics: dict[str, float]) -> None:
    """Adds the metrics of the (1-based) update `step`; writes a log line every `log_every` updates."""
    for key, value in metrics.items():
      self._window.setdefault(key, []).append(float(value))
    self._steps_in_window += 1
    if not self.enabled:
      return
    self._bar.update(1)
    if step % self.log_every == 0:
      self._flush(step)

  def _flush(self, step: int) -> None:
    elapsed = time.time() - self._t0
    row = {'step': step}
    row.update({k: float(np.mean(v)) for k, v in self._window.items()})
    row['steps_per_sec'] = self._steps_in_window / max(elapsed, 1e-9)
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self._writer is not None:
      for key, value in row.items():
        if key != 'step':
          self._writer.add_scalar(f'train/{key}', value, step)
      self._writer.flush()
    self._bar.set_postfix(loss=f'{row["loss"]:.4f}', lr=f'{row["lr"]:.2e}')
    self._window.clear()
    self._steps_in_window = 0
    self._t0 = time.time()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()


def _truncate_log(path: str, start_step: int) -> None:
  """Drops log lines past `start_step` (written after the checkpoint we resume from) and a torn last line."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if row['step'] <= start_step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if kept != lines:
    with io_utils.atomic_write(path) as f:
      f.writelines(kept)


def _check_finite(step: int, metrics: dict[str, float], checkpoint_dir: str, last_good: int | None) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    where = f'step {last_good} in {checkpoint_dir}' if last_good is not None else 'none (no checkpoint was saved)'
    raise NonFiniteLossError(
        f'Non-finite loss at step {step}: {bad}. Training stopped; this state was not saved. '
        f'Last good checkpoint: {where}.')


_STATE_BYTES = 4096


def _all_data_states(local: dict[str, Any]) -> dict[str, Any]:
  """{'per_process': [state of process 0, 1, ...]}: every process's iterator state, gathered for the checkpoint."""
  if jax.process_count() == 1:
    return {'per_process': [local]}
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  encoded = json.dumps(local).encode()
  if len(encoded) > _STATE_BYTES:
    raise ValueError(f'Input iterator state is {len(encoded)} bytes of JSON; at most {_STATE_BYTES} supported.')
  buf = np.zeros((_STATE_BYTES,), np.uint8)
  buf[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buf))  # [processes, _STATE_BYTES]
  return {'per_process': [json.loads(bytes(row).rstrip(b'\0').decode()) for row in gathered]}


def _process_data_state(saved: dict[str, Any]) -> dict[str, Any]:
  per_process = saved['per_process']
  if len(per_process) != jax.process_count():
    raise ValueError(f'The checkpoint holds input states of {len(per_process)} processes; this run has '
                     f'{jax.process_count()}. Resume with the same number of processes.')
  return per_process[jax.process_index()]


def restore_or_init(config: ml_collections.ConfigDict, method: registry.Method, setup: ModelSetup,
                    checkpointer: ckpt_lib.Checkpointer) -> tuple[Any, int, dict | None]:
  """(state, start_step, data_state): resumes the latest checkpoint, else initialises (+ `config.init_from`)."""
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(latest, setup.abstract_state)
    logging.info('Resumed from %s step %d', checkpointer.directory, latest)
    return state, latest, data_state
  state = setup.init_fn()
  if config.init_from:
    params, rest = load_pretrained(config, method, setup, state, config.init_from)
    state = dict(state, params=params, rest=rest)
    logging.info('Initialised parameters from %s', config.init_from)
  return state, 0, None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config.method` for `config.train.num_steps` updates in `workdir`; resumes if checkpoints exist.

  Returns:
    The metrics of the last step (host floats).
  """
  method = registry.get_method(config)
  mesh = mesh_lib.create_mesh(config)
  mesh_lib.check_batch_divisible(config.input.batch_size, mesh, config.train.grad_accum)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=config.train.keep_checkpoints)
  num_steps = int(config.train.num_steps)
  ckpt_every = int(config.train.checkpoint_every)
  last = {}
  with jax.set_mesh(mesh):
    setup = build_setup(config, method, mesh)
    state, start, data_state = restore_or_init(config, method, setup, checkpointer)
    iterator = data_source(config).make_train_iterator(
        config, method.input_spec(), process_index=jax.process_index(), process_count=jax.process_count())
    if data_state:
      iterator.set_state(_process_data_state(data_state))
    step_fn = make_train_step(config, method, setup, mesh)
    logger = MetricLogger(workdir, start_step=start, num_steps=num_steps, log_every=config.train.log_every,
                          enabled=is_main)
    last_good = checkpointer.latest_step()
    pending = None  # (step, device metrics) of the previous update, checked one step late to keep dispatch async

    def finish(item):
      step, metrics = item
      host = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(step, host, checkpointer.directory, last_good)
      logger.record(step, host)
      return host

    try:
      with preemption.StopSignal(check_every=config.train.log_every) as stop:
        for step in range(start + 1, num_steps + 1):
          batch = mesh_lib.global_batch(next(iterator), mesh)
          state, metrics = step_fn(state, batch)
          if pending is not None:
            last = finish(pending)
          pending = (step, metrics)
          stopping = stop.should_stop(step)
          if step % ckpt_every == 0 or step == num_steps or stopping:
            last = finish(pending)
            pending = None
            checkpointer.save(step, state, _all_data_states(iterator.get_state()))
            last_good = step
          if stopping:
            raise errors.Preempted(stop.received, step, checkpointer.directory)
        if pending is not None:
          last = finish(pending)
    finally:
      logger.close()
      checkpointer.close()
  return last

