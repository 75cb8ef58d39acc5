"""The VITA CPU demo: `vita_tiny` trained from scratch on the demo's synthetic set, evaluated, drawn.

  python -m visjax.main --config configs/vita_demo.py --workdir runs/vita_demo

Data and outputs as `configs/demo_synthetic.py` (IDOL; `common.demo_synthetic`). Changes to `vita_tiny`, for the
same reasons as the IDOL demo's (benchmarks/RESULTS.md, "Demo, second pass"): a GroupNorm, half-width ResNet-18
(FrozenBN is an identity at random init), lr 5e-4 on every part, gradient clipping at 1.0 instead of the official
0.01 (which is tuned for COCO-pretrained weights and would stall training from scratch). Learning curve, wall and CPU
time in benchmarks/RESULTS.md ("Demos of VITA, VISOLO and IAI").
"""

import ml_collections

from configs import common
from configs import vita_tiny


def get_config() -> ml_collections.ConfigDict:
  c = vita_tiny.get_config()
  common.demo_synthetic(c)
  c.model.backbone_norm = 'GN'
  c.model.backbone_width = 32
  common.demo_schedule(c, num_steps=2000, lr_step=1700)
  c.train.clip_grad_norm = 1.0
  return c
