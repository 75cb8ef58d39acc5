"""`ms_deform_attn`: multi-scale deformable attention with a choice of implementation.

Implementations (DESIGN.md §4):
  * `'xla'`: gather-based XLA (`xla.py`), the reference semantics; default on CPU and TPU.
  * `'pallas'`: Pallas kernel with the Triton lowering (`triton_gpu.py`); default on GPU. On CPU it runs the same
    kernels with `interpret=True` (slow; meant for tests).
  * `'pallas_tpu'`: Pallas TPU kernel (`tpu.py`); on CPU it runs in TPU interpret mode.
`None` picks the best available for `jax.default_backend()`. The Pallas kernels have been run only in interpret
mode and cross-lowered on CPU (no GPU/TPU in their development); if the Triton kernel fails to compile on a GPU,
pass `implementation='xla'`.
"""

import jax

from pallas_kernels.msda import common
from pallas_kernels.msda import xla

IMPLEMENTATIONS = ('xla', 'pallas', 'pallas_tpu')
_DEFAULT_BY_BACKEND = {'cpu': 'xla', 'tpu': 'xla', 'gpu': 'pallas', 'cuda': 'pallas', 'rocm': 'pallas'}


def default_implementation(backend: str | None = None) -> str:
  """The implementation `implementation=None` resolves to on `backend` (default: `jax.default_backend()`)."""
  return _DEFAULT_BY_BACKEND.get(backend or jax.default_backend(), 'xla')


def ms_deform_attn(value: jax.Array, spatial_shapes, sampling_locations: jax.Array, attention_weights: jax.Array,
                   *, implementation: str | None = None, deterministic: bool = False) -> jax.Array:
  """Multi-scale deformable attention (Deformable-DETR's `MSDeformAttnFunction`).

  Bilinear sampling is exactly `grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)` per level:
  pixel = loc * W_l - 0.5, corners outside the map contribute 0. Differentiable in `value`,
  `sampling_locations` and `attention_weights`.

  Args:
    value: `[B, S, M, D]`, levels flattened level-major (S = sum_l H_l * W_l).
    spatial_shapes: static tuple of `(H_l, W_l)` (or a concrete `[L, 2]` integer array).
    sampling_locations: `[B, Q, M, L, P, 2]`, (x, y) in [0, 1] of each padded level map.
    attention_weights: `[B, Q, M, L, P]`, already normalised.
    implementation: None, 'xla', 'pallas' or 'pallas_tpu' (see the module docstring).
    deterministic: Pallas GPU path only: accumulate the value gradient without atomics (bitwise reproducible,
      somewhat slower). The XLA path is deterministic on CPU and TPU regardless.

  Returns:
    `[B, Q, M * D]` (head-major channels) in `value.dtype`, accumulated in float32.

  Raises:
    ValueError: unknown implementation, or inconsistent shapes/dtypes (the message names the argument).
    NotImplementedError: the implementation cannot run on the current backend.
  """
  shapes = common.normalize_spatial_shapes(spatial_shapes)
  common.check_inputs(value, shapes, sampling_locations, attention_weights)
  if implementation is None:
    implementation = default_implementation()
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'ms_deform_attn: implementation must be one of {IMPLEMENTATIONS} or None, '
                     f'got {implementation!r}.')
  if implementation == 'xla':
    return xla.ms_deform_attn_xla(value, shapes, sampling_locations, attention_weights)
  backend = jax.default_backend()
  if implementation == 'pallas':
    if backend not in ('gpu', 'cuda', 'rocm', 'cpu'):
      raise NotImplementedError(f"ms_deform_attn: implementation='pallas' (Triton lowering) needs a GPU, or CPU "
                                f"for interpret mode; the backend is {backend!r}. Use 'pallas_tpu' or 'xla'.")
    from pallas_kernels.msda import triton_gpu  # pylint: disable=g-import-not-at-top
    return triton_gpu.ms_deform_attn_pallas(value, shapes, sampling_locations, attention_weights,
                                            deterministic=deterministic, interpret=backend == 'cpu')
  if backend not in ('tpu', 'cpu'):
    raise NotImplementedError(f"ms_deform_attn: implementation='pallas_tpu' needs a TPU, or CPU for interpret "
                              f"mode; the backend is {backend!r}. Use 'pallas' or 'xla'.")
  from pallas_kernels.msda import tpu  # pylint: disable=g-import-not-at-top
  return tpu.ms_deform_attn_tpu(value, shapes, sampling_locations, attention_weights, interpret=backend == 'cpu')
