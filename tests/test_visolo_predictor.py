"""VISOLO streaming predictor end to end: a tiny converted model on a short random video against the official eval
loop (torch reference network + NumPy port of the official association), same tracks, classes, scores and masks."""

import numpy as np
import pytest
from flax import nnx
from pycocotools import mask as mask_utils

from configs import visolo_common
from visjax import convert
from visjax.convert import rules_visolo
from visjax.inference.predictor import VideoMeta
from visjax.models.visolo import model as visolo_model
from visjax.models.visolo import predictor as predictor_lib
from visjax.models.visolo import tracker as tracker_lib
from visolo_reference import OfficialPort

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import resnet_refs, visolo_ref  # pylint: disable=g-import-not-at-top

GRID, CLASSES, INDIM, OUTDIM = (3, 5), 7, 256, 64
H, W, FRAMES = 64, 96, 7


def _models():
  torch.manual_seed(0)
  backbone = resnet_refs.randomize_(resnet_refs.D2ResNet(18, out_features=('res2', 'res3', 'res4')), seed=4)
  ref = visolo_ref.randomize_(visolo_ref.VisoloRef(backbone, GRID, CLASSES, INDIM, OUTDIM), seed=5).eval()
  with torch.no_grad():  # sparser class scores, as a trained model: a few cells pass the 0.1 threshold
    ref.model.Category_branch_post.pred.bias.sub_(2.5)
  c = visolo_model.default_model_config()
  c.update(backbone_depth=18, num_classes=CLASSES, grid_num=GRID, indim=INDIM, outdim=OUTDIM)
  model = nnx.eval_shape(lambda: visolo_model.VISOLO.from_model_config(c, rngs=nnx.Rngs(0)))
  convert.convert({k: v.numpy() for k, v in ref.state_dict().items()}, model, rules_visolo.visolo_rules())
  return ref, model


def _video():
  """A slowly moving bright square on a noisy background, so consecutive frames are similar."""
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, size=(H, W, 3)).astype(np.float32)
  frames = []
  for t in range(FRAMES):
    img = base * 0.7 + rng.normal(scale=10, size=base.shape)
    img[10 + 2 * t:40 + 2 * t, 20 + 3 * t:50 + 3 * t] = 240
    frames.append(np.clip(img, 0, 255).astype(np.uint8))
  return np.stack(frames)


def test_predictor_matches_official_loop():
  ref, model = _models()
  images = _video()
  cfg = tracker_lib.tracker_settings(visolo_common.visolo_config(CLASSES).tracker)
  normalised = (images.astype(np.float32) - np.float32(visolo_model.PIXEL_MEAN)) / np.float32(visolo_model.PIXEL_STD)
  outs = visolo_ref.official_test_outputs(ref.model, torch.from_numpy(np.moveaxis(normalised, -1, 1).copy()))
  s = GRID[0] * GRID[1]
  frames = [dict(cats=o['cats'][0].numpy(), feature=o['frame_f'],
                 mask_probs=visolo_ref.mask_map(o['masks'][0], o['kernels'][0], torch.arange(s)).numpy())
            for o in outs]
  with torch.no_grad():
    track = lambda a, b: torch.sigmoid(ref.model.Tracking_branch(a, b))[0, 0].numpy()
    want = OfficialPort(cfg, track).run(frames)
  assert want is not None and len(want['masks']) >= 2

  predictor = predictor_lib.VisoloPredictor(model, cfg, VideoMeta(1, FRAMES, (H, W)))
  sizes = np.full((FRAMES, 2), (H, W), np.int32)
  predictor.add_frames(images[:3], sizes[:3])
  predictor.add_frames(images[3:], sizes[3:])
  got = predictor.finish()
  assert len(got) == len(want['masks'])
  for k, trk in enumerate(got):
    assert trk.track_id == k
    np.testing.assert_allclose(trk.class_scores, want['avg'][k], rtol=1e-4)
    assert trk.class_scores.argmax() == want['labels'][k]
    for t in range(FRAMES):
      assert (trk.segmentations[t] is None) == (not want['masks'][k, t].any()), (k, t)
      if trk.segmentations[t] is not None:
        mask = mask_utils.decode(trk.segmentations[t]).astype(bool)
        ref_mask = want['masks'][k, t]
        assert (mask ^ ref_mask).sum() <= 2, (k, t)  # mask probabilities within ~1e-6 of 0.5 may flip
        # A flipped pixel in any candidate's mask moves Matrix NMS's IoUs, hence the score, by ~1e-4.
        assert trk.frame_scores[t] == pytest.approx(float(want['scores'][k, t]), rel=1e-3)


def test_predictor_output_size_and_chunks():
  """Masks come back at the original video size; more frames than announced is an error."""
  _, model = _models()
  images = _video()[:3]
  settings = tracker_lib.tracker_settings(visolo_common.visolo_config(CLASSES).tracker)
  predictor = predictor_lib.VisoloPredictor(model, settings, VideoMeta(1, 3, (30, 50)))
  predictor.add_frames(images, np.full((3, 2), (H, W), np.int32))
  with pytest.raises(ValueError, match='more than its length'):
    predictor.add_frames(images[:1], np.full((1, 2), (H, W), np.int32))
  tracks = predictor.finish()
  masks = [m for trk in tracks for m in trk.segmentations if m is not None]
  assert masks and all(tuple(m['size']) == (30, 50) for m in masks)
