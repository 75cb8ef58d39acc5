"""ResNet backbones: parity with torch references (detectron2 and torchvision/mmdet layouts), freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from visjax import convert
from visjax.models.backbones import resnet as resnet_lib
from visjax.models.backbones import resnet_d2, resnet_tv
from visjax.models.layers.norms import Frozen

torch = pytest.importorskip('torch')
from torch_refs import parity, resnet_refs  # pylint: disable=g-import-not-at-top

TOL = 1e-5


def _image(n, h, w, seed=0):
  return np.random.RandomState(seed).randn(n, h, w, 3).astype(np.float32)


@pytest.mark.parametrize('layout,depth,hw', [
    ('detectron2', 50, (67, 61)),   # odd sizes: torch's ceil arithmetic at every stride-2 step
    ('torchvision', 50, (64, 64)),
    ('detectron2', 101, (64, 64)),
    ('torchvision', 18, (40, 48)),  # basic blocks
])
def test_parity_with_torch(layout, depth, hw):
  if layout == 'detectron2':
    ref = resnet_refs.randomize_(resnet_refs.D2ResNet(depth), seed=depth)
    model = nnx.eval_shape(lambda: resnet_d2(depth, rngs=nnx.Rngs(0)))  # no random init: all filled below
    rules = convert.resnet_d2_rules('', '')
  else:
    ref = resnet_refs.randomize_(resnet_refs.TVResNet(depth), seed=depth)
    model = nnx.eval_shape(lambda: resnet_tv(depth, rngs=nnx.Rngs(0)))
    rules = convert.resnet_tv_rules('', '')
  report = convert.convert(ref.state_dict(), model, rules)
  assert report.ok and not report.allowed_missing
  x = _image(2, *hw)
  expected = parity.run_torch(ref, x)
  out = model(jnp.asarray(x))
  assert sorted(out) == ['res2', 'res3', 'res4', 'res5']
  for name, want in expected.items():
    assert out[name].shape == want.shape, name
    err = parity.rel_err(out[name], want)
    assert err <= TOL, f'{layout} R{depth} {name}: rel err {err:.2e}'


@pytest.mark.parametrize('depth,width', [(18, 64), (50, 64), (18, 32)])
def test_group_norm_parity_with_torch(depth, width):
  """detectron2 RESNETS.NORM='GN' (GroupNorm(32), trainable, for training from scratch) ports and matches torch,
  also at half width."""
  ref = resnet_refs.randomize_(resnet_refs.D2ResNet(depth, norm='GN', base_width=width), seed=depth + 1)
  model = nnx.eval_shape(lambda: resnet_d2(depth, norm='GN', width=width, freeze_at=0, rngs=nnx.Rngs(0)))
  report = convert.convert(ref.state_dict(), model, convert.resnet_d2_rules('', '', norm='GN'))
  assert report.ok and not report.allowed_missing
  x = _image(2, 45, 38)
  expected = parity.run_torch(ref, x)
  out = model(jnp.asarray(x))
  for name, want in expected.items():
    err = parity.rel_err(out[name], want)
    assert err <= TOL, f'GN R{depth} {name}: rel err {err:.2e}'
  trainable = {'.'.join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert 'stem.conv1.norm.scale' in trainable and 'res5.0.shortcut.norm.bias' in trainable


def test_torchvision_weights_into_detectron2_layout():
  """torchvision-layout (e.g. ImageNet) weights initialise a detectron2 model: same function, BN -> FrozenBN."""
  ref = resnet_refs.randomize_(resnet_refs.TVResNet(50), seed=5)
  model = nnx.eval_shape(lambda: resnet_d2(50, rngs=nnx.Rngs(0)))
  sd = dict(ref.state_dict(), **{'fc.weight': torch.zeros(10, 2048), 'fc.bias': torch.zeros(10)})
  report = convert.convert(sd, model, convert.resnet_tv_to_d2_rules('', ''))
  assert len(report.dropped) == 53 + 2  # num_batches_tracked of every BN, and the classifier
  x = _image(1, 64, 64)
  expected = parity.run_torch(ref, x)
  out = model(jnp.asarray(x))
  for name, want in expected.items():
    assert parity.rel_err(out[name], want) <= TOL, name


def test_detectron2_builds_only_requested_stages():
  """VISOLO's checkpoints have no res5: out_features up to res4 builds (and expects) no res5.

  Also runs the MSRA variant (STRIDE_IN_1X1=True: the stride sits in the first 1x1 conv).
  """
  ref = resnet_refs.randomize_(
      resnet_refs.D2ResNet(50, out_features=('res2', 'res3', 'res4'), stride_in_1x1=True), seed=1)
  model = nnx.eval_shape(
      lambda: resnet_d2(50, out_features=('res3', 'res4'), stride_in_1x1=True, rngs=nnx.Rngs(0)))
  assert not hasattr(model, 'res5')
  convert.convert({'backbone.' + k: v for k, v in ref.state_dict().items()}, model,
                  convert.resnet_d2_rules('backbone.', ''))
  x = _image(1, 64, 64)
  expected = parity.run_torch(ref, x)
  out = model(jnp.asarray(x))
  assert sorted(out) == ['res3', 'res4']
  for name in out:
    assert parity.rel_err(out[name], expected[name]) <= TOL


def test_trainable_set_is_exactly_the_params():
  d2 = nnx.eval_shape(lambda: resnet_d2(50, freeze_at=2, rngs=nnx.Rngs(0)))
  params = {convert.dotted(p) for p, _ in nnx.to_flat_state(nnx.state(d2, nnx.Param))}
  assert params and all(p.split('.')[0] in ('res3', 'res4', 'res5') and p.endswith('.kernel') for p in params)
  frozen = {convert.dotted(p) for p, _ in nnx.to_flat_state(nnx.state(d2, Frozen))}
  assert 'stem.conv1.kernel' in frozen and 'res2.0.conv1.kernel' in frozen and 'res5.2.conv3.norm.weight' in frozen

  tv = nnx.eval_shape(lambda: resnet_tv(50, frozen_stages=1, rngs=nnx.Rngs(0)))
  params = {convert.dotted(p) for p, _ in nnx.to_flat_state(nnx.state(tv, nnx.Param))}
  assert 'layer2.0.bn1.weight' in params and 'layer2.0.downsample.0.kernel' in params
  assert not any(p.startswith(('conv1', 'bn1', 'layer1')) for p in params)
  stats = {convert.dotted(p) for p, _ in nnx.to_flat_state(nnx.state(tv, nnx.BatchStat))}
  assert 'layer4.2.bn3.running_var' in stats and not any('running' in p for p in params)


@pytest.mark.parametrize('build,frozen_prefixes,trained_prefixes', [
    (lambda: resnet_d2(18, freeze_at=2, rngs=nnx.Rngs(0)), ('stem', 'res2'), ('res3', 'res4', 'res5')),
    (lambda: resnet_tv(18, frozen_stages=1, rngs=nnx.Rngs(0)), ('conv1', 'bn1', 'layer1'),
     ('layer2', 'layer3', 'layer4')),
])
def test_frozen_stages_receive_no_update(build, frozen_prefixes, trained_prefixes):
  model = build()
  before = {convert.dotted(p): np.array(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = jnp.asarray(_image(2, 32, 32))

  def loss_fn(m):
    return sum(jnp.mean(jnp.square(v)) for v in m(x).values())

  # Differentiate w.r.t. Param and Frozen in one pass: the optimiser gets the Params; the Frozen gradients of
  # the frozen stages must be exactly zero (stop_gradient at the last frozen stage).
  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, (nnx.Param, Frozen)))(model)
  for path, g in nnx.to_flat_state(nnx.filter_state(grads, Frozen)):
    if convert.dotted(path).startswith(frozen_prefixes):
      assert not np.any(np.asarray(g.get_value())), convert.dotted(path)
  optimizer.update(model, nnx.filter_state(grads, nnx.Param))
  after = {convert.dotted(p): np.array(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  for path, value in before.items():
    changed = not np.array_equal(value, after[path])
    if path.startswith(frozen_prefixes):
      assert not changed, f'frozen {path} was updated'
    elif path.startswith(trained_prefixes) and path.endswith(('kernel', 'bn1.weight')):
      assert changed, f'trainable {path} was not updated'


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='depth'):
    resnet_d2(42, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='out_features'):
    resnet_d2(50, out_features=('res6',), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='NHWC'):
    resnet_d2(18, rngs=nnx.Rngs(0))(jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="norm must be one of .*'BN'"):
    resnet_d2(18, norm='BN', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='norm'):
    resnet_lib.ResNet(18, layout='torchvision', norm='GN', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='width'):
    resnet_d2(18, norm='GN', width=48, rngs=nnx.Rngs(0))


def test_jit_matches_eager():
  model = resnet_d2(18, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = jnp.asarray(_image(1, 32, 32))

  @jax.jit
  def fwd(state, x):
    return nnx.merge(graphdef, state)(x)

  out, eager = fwd(state, x), model(x)
  for k in eager:
    np.testing.assert_allclose(out[k], eager[k], rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_close_to_float32():
  ref = resnet_refs.randomize_(resnet_refs.D2ResNet(18), seed=2)
  full = nnx.eval_shape(lambda: resnet_d2(18, rngs=nnx.Rngs(0)))
  low = nnx.eval_shape(lambda: resnet_d2(18, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  for model in (full, low):
    convert.convert(ref.state_dict(), model, convert.resnet_d2_rules('', ''))
  assert low.res3[0].conv1.kernel.get_value().dtype == jnp.float32  # params stay fp32
  x = jnp.asarray(_image(1, 32, 32))
  a, b = full(x), low(x)
  for name in a:
    assert b[name].dtype == jnp.bfloat16
    assert parity.rel_err(np.asarray(b[name], np.float32), np.asarray(a[name])) < 3e-2, name
