"""The VISOLO CPU demo: `visolo_tiny` trained from scratch on the demo's synthetic set, evaluated, drawn.

  python -m visjax.main --config configs/visolo_demo.py --workdir runs/visolo_demo

Data and outputs as `configs/demo_synthetic.py` (IDOL; `common.demo_synthetic`). Changes to `visolo_tiny`, for the
same reasons as the IDOL demo's (benchmarks/RESULTS.md, "Demo, second pass"): a GroupNorm, half-width ResNet-18
(FrozenBN is an identity at random init) and lr 5e-4 on every part. Learning curve, wall and CPU time in
benchmarks/RESULTS.md ("Demos of VITA, VISOLO and IAI").
"""

import ml_collections

from configs import common
from configs import visolo_tiny


def get_config() -> ml_collections.ConfigDict:
  c = visolo_tiny.get_config()
  common.demo_synthetic(c)
  c.model.backbone_norm = 'GN'
  c.model.backbone_width = 32
  c.model.indim = 128  # res4 of the half-width ResNet-18
  common.demo_schedule(c, num_steps=2000, lr_step=1700)
  return c
