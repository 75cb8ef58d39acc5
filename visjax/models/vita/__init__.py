"""VITA (Video Instance Segmentation via Object Token Association): model, criterion and offline inference."""

from visjax.models.vita.model import VITA
from visjax.models.vita.model import VITAModule
from visjax.models.vita.model import default_model_config
