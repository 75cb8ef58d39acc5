"""Multi-scale deformable attention kernels vs a float64 NumPy oracle, torch grid_sample, and each other."""

import contextlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from msda_reference import msda_numpy
from msda_reference import torch_core
from pallas_kernels import msda
from pallas_kernels.msda import triton_gpu
from pallas_kernels.msda import xla


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)


# (spatial_shapes, B, Q, M, D, P): odd sizes, 1x1 levels, one level, many heads.
CASES = [
    (((7, 5), (3, 4), (1, 1)), 2, 5, 3, 4, 2),
    (((1, 1),), 1, 3, 2, 3, 3),
    (((9, 13),), 1, 6, 1, 5, 4),
    (((4, 6), (2, 3)), 1, 4, 16, 2, 1),
    (((6, 10), (3, 5), (2, 3), (1, 1)), 2, 7, 2, 8, 4),
]


def make_inputs(rng, spatial_shapes, b, q, m, d, p, dtype=np.float32, border_fraction=0.3):
  """Random inputs; locations span [-0.3, 1.3] and a fraction sits exactly on pixel borders or centres."""
  lvl = len(spatial_shapes)
  s = sum(h * w for h, w in spatial_shapes)
  value = rng.standard_normal((b, s, m, d))
  locations = rng.uniform(-0.3, 1.3, (b, q, m, lvl, p, 2))
  wh = np.array([(w, h) for h, w in spatial_shapes], np.float64)[:, None, :]
  # Exact borders k / W (pixel = k - 0.5) and centres (k + 0.5) / W (pixel = k), k in [-1, W + 1].
  k = rng.integers(-1, wh.max() + 2, locations.shape).astype(np.float64)
  on_grid = (k + rng.integers(0, 2, locations.shape) * 0.5) / wh
  locations = np.where(rng.random(locations.shape) < border_fraction, on_grid, locations)
  weights = rng.random((b, q, m, lvl, p))
  return value.astype(dtype), locations.astype(dtype), weights.astype(dtype)


def test_oracle_hand_computed():
  # One 2x3 map, one channel: sample at pixel (x, y) = (0.5, 0.25) -> loc = ((0.5 + 0.5) / 3, (0.25 + 0.5) / 2).
  value = np.arange(6, dtype=np.float64).reshape(1, 6, 1, 1)  # v[y, x] = 3y + x
  loc = np.array([1.0 / 3.0, 0.375]).reshape(1, 1, 1, 1, 1, 2)
  out = msda_numpy(value, ((2, 3),), loc, np.full((1, 1, 1, 1, 1), 2.0))
  np.testing.assert_allclose(out.ravel(), [2.0 * (3 * 0.25 + 0.5)])
  # Pixel (-0.5, 0): only the in-map corner (0, 0) contributes, with weight 0.5.
  loc = np.array([0.0, 0.25]).reshape(1, 1, 1, 1, 1, 2)
  value[0, 0, 0, 0] = 4.0
  np.testing.assert_allclose(msda_numpy(value, ((2, 3),), loc, np.ones((1, 1, 1, 1, 1))).ravel(), [2.0])


@pytest.mark.parametrize('formulation', ['packed', 'four_corner'])
@pytest.mark.parametrize('case', range(len(CASES)))
def test_xla_matches_numpy_oracle(case, formulation):
  spatial_shapes, *dims = CASES[case]
  value, loc, aw = make_inputs(np.random.default_rng(case), spatial_shapes, *dims)
  out = msda.ms_deform_attn_xla(value, spatial_shapes, loc, aw, formulation=formulation)
  assert out.shape == (dims[0], dims[1], dims[2] * dims[3]) and out.dtype == jnp.float32
  assert rel_err(out, msda_numpy(value, spatial_shapes, loc, aw)) < 1e-6


def test_xla_formulation_choice():
  encoder = (((40, 72), (20, 36), (10, 18), (5, 9)), 3825, 4)  # Q = S
  decoder = (((80, 144), (40, 72), (20, 36), (10, 18)), 300, 4)
  assert xla.use_packed_table(*encoder, backend='tpu')
  assert not xla.use_packed_table(*encoder, backend='cpu')
  assert not xla.use_packed_table(*decoder, backend='tpu')
  value, loc, aw = make_inputs(np.random.default_rng(0), ((3, 4),), 1, 2, 1, 2, 1)
  with pytest.raises(ValueError, match='formulation must be one of'):
    msda.ms_deform_attn_xla(value, ((3, 4),), loc, aw, formulation='dense')


@pytest.mark.parametrize('formulation', ['packed', 'four_corner'])
def test_xla_far_outside_and_nonfinite_locations_give_zero(formulation):
  spatial_shapes = ((3, 4), (2, 2))
  value, loc, aw = make_inputs(np.random.default_rng(0), spatial_shapes, 1, 4, 2, 3, 2)
  loc[:, 0] = 1e9
  loc[:, 1] = -1e9
  loc[:, 2] = np.inf
  loc[:, 3] = 1.0 + 1.0 / 3.0  # pixel x = W + 0.5 on level 0 (at least one pixel outside every level)
  out = np.asarray(msda.ms_deform_attn_xla(value, spatial_shapes, loc, aw, formulation=formulation))
  np.testing.assert_array_equal(out[:, :3], 0.0)
  np.testing.assert_allclose(out, msda_numpy(value, spatial_shapes, np.nan_to_num(loc, posinf=1e9), aw), atol=1e-6)


@pytest.mark.parametrize('case, formulation', [(0, 'packed'), (2, 'four_corner'), (4, 'packed'), (4, 'four_corner')])
def test_xla_matches_torch_grid_sample(case, formulation):
  torch = pytest.importorskip('torch')
  spatial_shapes, *dims = CASES[case]
  value, loc, aw = make_inputs(np.random.default_rng(10 + case), spatial_shapes, *dims, dtype=np.float64)
  tv, tl, ta = (torch.tensor(x, requires_grad=True) for x in (value, loc, aw))
  ref = torch_core(tv, spatial_shapes, tl, ta)
  cot = np.random.default_rng(1).standard_normal(ref.shape)
  (ref * torch.tensor(cot)).sum().backward()
  with jax.enable_x64(True):
    f = lambda v, l, a: msda.ms_deform_attn_xla(v, spatial_shapes, l, a, formulation=formulation)
    out, vjp = jax.vjp(f, *(jnp.asarray(x) for x in (value, loc, aw)))
    grads = vjp(jnp.asarray(cot))
  assert rel_err(out, ref.detach().numpy()) < 1e-12
  # Gradients agree away from pixel-grid kinks; compare only samples not on the grid.
  twice_pix = 2.0 * loc * np.array([(w, h) for h, w in spatial_shapes], np.float64)[:, None, :]
  on_grid = np.any(np.abs(twice_pix - np.round(twice_pix)) < 1e-9, axis=-1)
  assert rel_err(grads[0], tv.grad.numpy()) < 1e-12
  assert rel_err(grads[2], ta.grad.numpy()) < 1e-12
  loc_grad, loc_ref = np.asarray(grads[1]), tl.grad.numpy()
  off = ~on_grid[..., None] & np.ones_like(loc_ref, bool)
  assert rel_err(loc_grad[off], loc_ref[off]) < 1e-10


def _off_grid_inputs(seed, spatial_shapes, b, q, m, d, p):
  value, loc, aw = make_inputs(np.random.default_rng(seed), spatial_shapes, b, q, m, d, p, np.float64, 0.0)
  # Keep every pixel coordinate >= 0.02 away from integers so finite differences do not straddle a kink.
  wh = np.array([(w, h) for h, w in spatial_shapes], np.float64)[:, None, :]
  pix = loc * wh - 0.5
  frac = pix - np.floor(pix)
  pix = np.floor(pix) + np.clip(frac, 0.02, 0.98)
  return value, (pix + 0.5) / wh, aw


@pytest.mark.parametrize('case, formulation', [(0, 'packed'), (0, 'four_corner'), (3, 'packed'), (3, 'four_corner')])
def test_xla_check_grads_float64(case, formulation):
  spatial_shapes, *dims = CASES[case]
  value, loc, aw = _off_grid_inputs(20 + case, spatial_shapes, *dims)
  with jax.enable_x64(True):
    f = lambda v, l, a: msda.ms_deform_attn_xla(v, spatial_shapes, l, a, formulation=formulation)
    jtu.check_grads(f, (jnp.asarray(value), jnp.asarray(loc), jnp.asarray(aw)), order=1, modes=('fwd', 'rev'),
                    eps=1e-5, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('formulation', ['packed', 'four_corner'])
def test_xla_bfloat16_inputs(formulation):
  spatial_shapes, *dims = CASES[4]
  value, loc, aw = (jnp.asarray(x, jnp.bfloat16) for x in make_inputs(np.random.default_rng(3), spatial_shapes, *dims))
  out = msda.ms_deform_attn_xla(value, spatial_shapes, loc, aw, formulation=formulation)
  assert out.dtype == jnp.bfloat16
  # The oracle sees the same bf16-rounded inputs, so only the bf16 output rounding (2^-9 relative) remains.
  ref = msda_numpy(np.asarray(value, np.float64), spatial_shapes, np.asarray(loc, np.float64),
                   np.asarray(aw, np.float64))
  assert rel_err(out, ref) < 5e-3


def test_xla_jit_and_remat_gradients_match():
  spatial_shapes, *dims = CASES[0]
  value, loc, aw = make_inputs(np.random.default_rng(5), spatial_shapes, *dims)
  loss = lambda v, l, a: jnp.sum(jnp.sin(msda.ms_deform_attn(v, spatial_shapes, l, a, implementation='xla')))
  eager = jax.grad(loss, argnums=(0, 1, 2))(value, loc, aw)
  jitted = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))(value, loc, aw)
  for x, y in zip(eager, jitted):
    assert rel_err(x, y) < 1e-6


def test_default_implementation_by_backend():
  assert msda.default_implementation('cpu') == 'xla'
  assert msda.default_implementation('tpu') == 'xla'
  assert msda.default_implementation('gpu') == 'pallas'


@pytest.mark.parametrize('backend, implementation', [('tpu', 'pallas'), ('gpu', 'pallas_tpu')])
def test_unavailable_implementation_raises(monkeypatch, backend, implementation):
  value, loc, aw = make_inputs(np.random.default_rng(0), ((3, 4),), 1, 2, 1, 2, 1)
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  with pytest.raises(NotImplementedError, match=f"implementation='{implementation}'"):
    msda.ms_deform_attn(value, ((3, 4),), loc, aw, implementation=implementation)


@pytest.mark.parametrize('bad, message', [
    (dict(implementation='cuda'), 'implementation must be one of'),
    (dict(spatial_shapes=((3, 4),)), 'tokens but spatial_shapes'),
    (dict(spatial_shapes=((3, 0), (2, 2))), 'positive integers'),
    (dict(value=np.zeros((1, 15, 2, 3), np.float32)), 'tokens but spatial_shapes'),
    (dict(value=np.zeros((1, 16, 2), np.float32)), 'value must be'),
    (dict(sampling_locations=np.zeros((1, 4, 2, 2, 2, 3), np.float32)), 'sampling_locations must be'),
    (dict(sampling_locations=np.zeros((1, 4, 2, 3, 2, 2), np.float32)), 'does not match'),
    (dict(attention_weights=np.zeros((1, 4, 2, 2, 3), np.float32)), 'attention_weights must be'),
    (dict(value=np.zeros((1, 16, 2, 3), np.int32), spatial_shapes=((3, 4), (2, 2))), 'floating point'),
])
def test_bad_inputs_raise_clear_errors(bad, message):
  value, loc, aw = make_inputs(np.random.default_rng(0), ((3, 4), (2, 2)), 1, 4, 2, 3, 2)
  kwargs = dict(value=value, spatial_shapes=((3, 4), (2, 2)), sampling_locations=loc, attention_weights=aw)
  kwargs.update(bad)
  with pytest.raises(ValueError, match=message):
    msda.ms_deform_attn(**kwargs)


def test_traced_spatial_shapes_raise():
  value, loc, aw = make_inputs(np.random.default_rng(0), ((3, 4),), 1, 2, 1, 2, 1)
  f = jax.jit(lambda shapes: msda.ms_deform_attn(value, shapes, loc, aw))
  with pytest.raises(TypeError, match='must be static'):
    f(jnp.array([[3, 4]]))


def _grads(impl, value, spatial_shapes, loc, aw, cot, **kwargs):
  f = lambda v, l, a: jnp.sum(impl(v, spatial_shapes, l, a, **kwargs) * cot)
  return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(value, loc, aw)


@pytest.mark.parametrize('case', [0, 2])
def test_pallas_gpu_interpret_forward_matches_xla(case):
  spatial_shapes, *dims = CASES[case]
  value, loc, aw = make_inputs(np.random.default_rng(30 + case), spatial_shapes, *dims)
  out = jax.jit(lambda v, l, a: msda.ms_deform_attn(v, spatial_shapes, l, a, implementation='pallas'))(value, loc, aw)
  assert rel_err(out, msda_numpy(value, spatial_shapes, loc, aw)) < 1e-6
  assert rel_err(out, msda.ms_deform_attn_xla(value, spatial_shapes, loc, aw)) < 1e-6


@pytest.mark.parametrize('deterministic', [False, True])
def test_pallas_gpu_interpret_gradients_match_xla(deterministic):
  spatial_shapes, *dims = CASES[0]
  value, loc, aw = make_inputs(np.random.default_rng(40), spatial_shapes, *dims)
  # Duplicate rows inside one program (two queries sampling the same pixel) must both reach the value gradient.
  loc[:, 1] = loc[:, 0]
  cot = np.random.default_rng(41).standard_normal((dims[0], dims[1], dims[2] * dims[3])).astype(np.float32)
  expected = _grads(msda.ms_deform_attn_xla, value, spatial_shapes, loc, aw, cot)
  got = _grads(triton_gpu.ms_deform_attn_pallas, value, spatial_shapes, loc, aw, cot, interpret=True, block_q=4,
               deterministic=deterministic)
  for name, x, y in zip(('value', 'sampling_locations', 'attention_weights'), got, expected):
    assert rel_err(x, y) < 1e-5, name


def test_pallas_gpu_interpret_block_atomics_match_xla():
  # 'atomic_block' (the GPU default) is exact in interpret mode only without repeated rows inside a program:
  # one query per program, samples of one level on distinct, well separated pixels.
  spatial_shapes = ((16, 16),)
  value, _, aw = make_inputs(np.random.default_rng(70), spatial_shapes, 1, 3, 2, 4, 4)
  centres = np.array([(2.3, 3.6), (6.7, 10.2), (11.4, 5.5), (13.2, 13.9)])  # pixel (x, y), >= 3 pixels apart
  loc = np.broadcast_to(((centres + 0.5) / 16.0)[None, None, None, None], (1, 3, 2, 1, 4, 2)).astype(np.float32)
  cot = np.random.default_rng(71).standard_normal((1, 3, 8)).astype(np.float32)
  expected = _grads(msda.ms_deform_attn_xla, value, spatial_shapes, loc, aw, cot)
  got = _grads(triton_gpu.ms_deform_attn_pallas, value, spatial_shapes, loc, aw, cot, interpret=True, block_q=1,
               value_grad='atomic_block')
  for name, x, y in zip(('value', 'sampling_locations', 'attention_weights'), got, expected):
    assert rel_err(x, y) < 1e-5, name


def test_pallas_gpu_interpret_bfloat16():
  spatial_shapes, *dims = CASES[0]
  value, loc, aw = make_inputs(np.random.default_rng(50), spatial_shapes, *dims)
  value = jnp.asarray(value, jnp.bfloat16)
  out = jax.jit(lambda v, l, a: triton_gpu.ms_deform_attn_pallas(v, spatial_shapes, l, a, interpret=True))(
      value, loc, aw)
  assert out.dtype == jnp.bfloat16
  assert rel_err(out, msda_numpy(np.asarray(value, np.float64), spatial_shapes, loc, aw)) < 5e-3


@pytest.mark.parametrize('local', [False, True])
def test_pallas_tpu_interpret_forward_and_gradients_match_xla(local):
  if local:
    # Several value tiles and query blocks, samples clustered so that most (block, tile) pairs are skipped.
    spatial_shapes, dims = ((20, 15), (2, 3)), (1, 20, 2, 3, 2)
    value, loc, aw = make_inputs(np.random.default_rng(61), spatial_shapes, *dims)
    loc = 0.1 + 0.2 * np.abs(loc) % 1.0 + np.linspace(0.0, 0.6, 20)[None, :, None, None, None, None]
  else:
    spatial_shapes, *dims = CASES[0]
    value, loc, aw = make_inputs(np.random.default_rng(60), spatial_shapes, *dims)
    loc[:, 1] = loc[:, 0]
  impl = lambda v, l, a: msda.ms_deform_attn(v, spatial_shapes, l, a, implementation='pallas_tpu')
  if local:
    from pallas_kernels.msda import tpu  # pylint: disable=g-import-not-at-top
    impl = lambda v, l, a: tpu.ms_deform_attn_tpu(v, spatial_shapes, l, a, interpret=True, block_q=8, block_s=128)
  out = jax.jit(impl)(value, loc, aw)
  assert rel_err(out, msda_numpy(value, spatial_shapes, loc, aw)) < 1e-6
  cot = np.random.default_rng(62).standard_normal(out.shape).astype(np.float32)
  expected = _grads(msda.ms_deform_attn_xla, value, spatial_shapes, loc, aw, cot)
  got = jax.jit(jax.grad(lambda v, l, a: jnp.sum(impl(v, l, a) * cot), argnums=(0, 1, 2)))(value, loc, aw)
  for name, x, y in zip(('value', 'sampling_locations', 'attention_weights'), got, expected):
    assert rel_err(x, y) < 1e-5, name


@pytest.mark.parametrize('platform, implementation, value_grad, dtype', [
    ('cuda', 'triton', 'atomic_block', jnp.float32), ('cuda', 'triton', 'atomic_block', jnp.bfloat16),
    ('cuda', 'triton', 'atomic_rows', jnp.float32), ('cuda', 'triton', 'sorted', jnp.float32),
    ('tpu', 'mosaic', None, jnp.float32), ('tpu', 'mosaic', None, jnp.bfloat16)])
def test_pallas_kernels_lower_for_their_platform(platform, implementation, value_grad, dtype):
  """Cross-lowers forward + backward to Triton IR / Mosaic MLIR on CPU (no GPU/TPU compile or run)."""
  from pallas_kernels.msda import tpu  # pylint: disable=g-import-not-at-top
  spatial_shapes = ((6, 10), (3, 5))
  args = (jax.ShapeDtypeStruct((1, 75, 8, 32), dtype), jax.ShapeDtypeStruct((1, 20, 8, 2, 4, 2), jnp.float32),
          jax.ShapeDtypeStruct((1, 20, 8, 2, 4), jnp.float32))
  if implementation == 'triton':
    f = lambda v, l, a: triton_gpu.ms_deform_attn_pallas(v, spatial_shapes, l, a, value_grad=value_grad)
    target = '__gpu$xla.gpu.triton'
  else:
    f = lambda v, l, a: tpu.ms_deform_attn_tpu(v, spatial_shapes, l, a)
    target = 'tpu_custom_call'
  grad = jax.value_and_grad(lambda v, l, a: jnp.sum(f(v, l, a)), argnums=(0, 1, 2))
  # Newer JAX lowers Triton kernels for the GPU it targets; with no GPU attached, name one (an H100) abstractly.
  target_gpu = jax.sharding.AbstractMesh(
      (1,), ('d',), abstract_device=jax.sharding.AbstractDevice('NVIDIA H100 80GB HBM3', None, 'gpu'))
  with jax.sharding.use_abstract_mesh(target_gpu) if platform == 'cuda' else contextlib.nullcontext():
    exported = jax.export.export(jax.jit(grad), platforms=[platform],
                                 disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(*args)
  module = exported.mlir_module()
  assert module.count(target) >= 2  # the forward kernel and the backward kernel(s)


_X64_IMPLEMENTATIONS = {
    'xla': lambda v, s, l, a: msda.ms_deform_attn(v, s, l, a, implementation='xla'),
    'pallas/atomic_rows': lambda v, s, l, a: msda.ms_deform_attn(v, s, l, a, implementation='pallas'),
    'pallas/sorted': lambda v, s, l, a: msda.ms_deform_attn(v, s, l, a, implementation='pallas', deterministic=True),
    'pallas_tpu': lambda v, s, l, a: msda.ms_deform_attn(v, s, l, a, implementation='pallas_tpu'),
}


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('name', list(_X64_IMPLEMENTATIONS))
def test_every_implementation_under_x64(name, dtype):
  """With `jax_enable_x64` on (scoped to this test), every implementation runs forward and all three gradients on
  float32 and float64 inputs, keeps the input dtype, and matches the float64 oracle / the XLA float64 gradients.
  The Pallas kernels accumulate in float32 whatever the input dtype (hence 1e-5); XLA accumulates in float64 for
  float64 inputs."""
  spatial_shapes, *dims = CASES[0]
  # Off the pixel grid, so float32 and float64 locations sit on the same side of every bilinear kink.
  value, loc, aw = (x.astype(dtype) for x in _off_grid_inputs(80, spatial_shapes, *dims))
  loc[:, 1] = loc[:, 0]  # duplicate rows reach the value gradient from two queries
  cot = np.random.default_rng(81).standard_normal((dims[0], dims[1], dims[2] * dims[3])).astype(dtype)
  impl = _X64_IMPLEMENTATIONS[name]
  tol = 1e-12 if (name == 'xla' and dtype == np.float64) else 1e-5
  with jax.enable_x64(True):
    out = jax.jit(lambda v, l, a: impl(v, spatial_shapes, l, a))(value, loc, aw)
    assert out.dtype == dtype
    assert rel_err(out, msda_numpy(value, spatial_shapes, loc, aw)) < tol
    got = _grads(impl, value, spatial_shapes, loc, aw, cot)
    expected = _grads(msda.ms_deform_attn_xla, value.astype(np.float64), spatial_shapes, loc.astype(np.float64),
                      aw.astype(np.float64), cot.astype(np.float64))
  for arg, x, y in zip(('value', 'sampling_locations', 'attention_weights'), got, expected):
    assert x.dtype == dtype, arg
    assert rel_err(x, y) < tol, arg


_GLOBAL_X64_SCRIPT = '''
import jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_enable_x64', True)
from pallas_kernels import msda
from pallas_kernels.msda import triton_gpu
shapes = ((7, 5), (3, 4))
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
  args = (rng.standard_normal((1, 47, 2, 4)).astype(dtype), rng.uniform(-0.2, 1.2, (1, 9, 2, 2, 2, 2)).astype(dtype),
          rng.random((1, 9, 2, 2, 2)).astype(dtype))
  impls = [lambda v, l, a, i=i: msda.ms_deform_attn(v, shapes, l, a, implementation=i)
           for i in ('xla', 'pallas', 'pallas_tpu')]
  impls += [lambda v, l, a, g=g: triton_gpu.ms_deform_attn_pallas(v, shapes, l, a, interpret=True, value_grad=g)
            for g in ('atomic_block', 'sorted')]
  for f in impls:
    out, grads = jax.jit(jax.value_and_grad(lambda v, l, a: jnp.sum(f(v, l, a) ** 2), argnums=(0, 1, 2)))(*args)
    assert out.dtype == dtype and all(g.dtype == dtype and bool(jnp.isfinite(g).all()) for g in grads)
print('OK')
'''


def test_every_implementation_with_global_x64_flag():
  """`jax.config.update('jax_enable_x64', True)` for the whole process (a subprocess here): forward and all
  gradients of every implementation and value-gradient mode run (the Pallas GPU value gradient used to fail with
  'index arguments to dynamic_slice must be integers of the same type')."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', _GLOBAL_X64_SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0 and result.stdout.strip().endswith('OK'), result.stderr[-3000:]
