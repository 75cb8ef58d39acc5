"""IAI (Inspect-And-Identify online VIS, CondInst + LSTT): model, criterion, tracker."""

from visjax.models.iai.model import IAI
from visjax.models.iai.model import default_model_config
