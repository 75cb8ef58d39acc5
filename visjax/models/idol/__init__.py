"""IDOL (In Defense of Online models for VIS): per-frame model, criterion, tracker and method glue."""

from visjax.models.idol.model import IDOL
from visjax.models.idol.model import default_model_config
