"""Side-by-side timing of several jitted train steps on one machine (shared by the train-step benchmarks)."""

import time
from typing import Any, Callable

import jax


def interleaved_times(steps: dict[str, Callable], states: dict[str, Any], batch: Any,
                      reps: int) -> dict[str, list[tuple[float, float]]]:
  """Runs each `steps[name](states[name], batch)` `reps` times, interleaved (name by name within each repetition, so
  that load changes hit every variant alike); updates `states` in place and returns (wall s, process CPU s) per call."""
  times = {name: [] for name in steps}
  for _ in range(reps):
    for name, step in steps.items():
      w0, c0 = time.perf_counter(), time.process_time()
      states[name], metrics = step(states[name], batch)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - w0, time.process_time() - c0))
  return times
