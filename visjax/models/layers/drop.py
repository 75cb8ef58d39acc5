"""Stochastic depth (`timm.DropPath`) as an `nnx.Dropout` whose mask is shared by all but the batch axis.

visjax has one RNG mechanism for dropout and drop path: both are `nnx.Dropout` modules; a model called with
`train=True` passes its `nnx.Rngs(dropout=rng)` (built from the step RNG) to them, or flips them with
`nnx.view(..., only=nnx.Dropout, deterministic=...)` when they hold construction-time rngs.
"""

from flax import nnx


def drop_path(rate: float, ndim: int, *, rngs: nnx.Rngs | None = None) -> nnx.Dropout | None:
  """Per-sample stochastic depth for inputs of rank `ndim` (`[B, ...]`): keeps each sample with probability
  `1 - rate` and scales it by `1 / (1 - rate)`. None when `rate == 0` (the official `nn.Identity`)."""
  if not 0. <= rate < 1.:
    raise ValueError(f'drop_path: rate must be in [0, 1), got {rate}.')
  return nnx.Dropout(rate, broadcast_dims=tuple(range(1, ndim)), rngs=rngs) if rate > 0 else None
