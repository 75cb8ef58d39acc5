"""VISOLO on method contract v2 (docs/INTERFACES.md §3): `METHOD = VisoloMethod`.

* `loss_fn`: the clips `[B, 3, ...]` go through the model (every frame reads memory from the other two) and
  `criterion.visolo_loss` with the `config.loss` settings read once at construction.
* `make_predictor`: `predictor.VisoloPredictor`, online with one frame of latency (the official eval loop); frames
  are expected at `config.input.test_fixed_size` (352 x 624).
* Records: one per track, its argmax class (official `getAverageCat`).
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import ml_collections

from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.models import registry
from visjax.models.visolo import criterion
from visjax.models.visolo import model as visolo_model
from visjax.models.visolo import predictor as visolo_predictor
from visjax.models.visolo import tracker as tracker_lib


class VisoloMethod(registry.Method):
  """VISOLO (Han et al., CVPR 2022): grid-based online VIS with a memory of grid features."""

  name = 'visolo'

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.loss_settings = criterion.loss_settings(config.get('loss'))
    self.tracker_settings = tracker_lib.tracker_settings(config.get('tracker'))

  def build_model(self, rngs: nnx.Rngs) -> visolo_model.VISOLO:
    return visolo_model.VISOLO.from_config(self.config, rngs=rngs)

  def loss_fn(self, model: nnx.Module, batch: dict[str, Any], *, rng: jax.Array,
              train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VISOLO loss of a batch of `[B, 3, ...]` clips (docs/INTERFACES.md §1); jittable. No dropout: `rng` and
    `train` are unused (the backbone's norms are frozen, the heads use GroupNorm)."""
    del rng, train
    images = batch['image']
    if images.ndim != 5 or images.shape[1] != 3:
      raise ValueError(f'VISOLO loss_fn: batch["image"] must be [B, 3, H, W, 3] (the official clips of 3 frames), '
                       f'got {images.shape}.')
    return criterion.model_loss(model, batch, self.loss_settings)

  def make_predictor(self, model: nnx.Module, video: predictor_lib.VideoMeta) -> visolo_predictor.VisoloPredictor:
    return visolo_predictor.VisoloPredictor(model, self.tracker_settings, video)

  def record_rule(self) -> tracks_lib.RecordRule:
    return tracks_lib.RecordRule('argmax')

  def conversion_rules(self):
    from visjax.convert import rules_visolo  # pylint: disable=g-import-not-at-top
    return rules_visolo.visolo_rules(self.config.model)


METHOD = VisoloMethod
