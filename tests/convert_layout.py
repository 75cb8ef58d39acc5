"""Shape-level check that conversion rules map an official checkpoint layout onto a model (no values needed: the
official state can be torch meta tensors, the model an `nnx.eval_shape` one). Shared by the conversion tests."""

from typing import Mapping, Sequence

from flax import nnx
import numpy as np

from visjax import convert


def model_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every non-RNG variable of `model`."""
  return {convert.dotted(p): tuple(v.get_value().shape)
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState)))}


def map_layout(rules: convert.RuleTable, state_shapes: Mapping[str, Sequence[int]],
               model: nnx.Module) -> tuple[dict[str, tuple[int, ...]], list[str]]:
  """Maps every official key (by rule and transform) onto a variable of the right shape and checks that every
  variable is filled exactly once. Returns the model's variable shapes and the dropped keys."""
  shapes = model_shapes(model)
  filled, dropped = [], []
  for key, shape in state_shapes.items():
    found = rules.find(key)
    assert found is not None, key
    rule, m = found
    if rule.target is None:
      dropped.append(key)
      continue
    outs = rule.transform(np.empty(tuple(shape), np.float32))
    outs = outs if isinstance(outs, tuple) else (outs,)
    for path, out in zip(rule.targets(m), outs, strict=True):
      assert shapes[path] == out.shape, (key, path, shapes[path], out.shape)
      filled.append(path)
  assert sorted(filled) == sorted(shapes) and len(set(filled)) == len(filled)
  return shapes, dropped
