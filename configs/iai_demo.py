"""The IAI CPU demo: `iai_tiny` trained from scratch on the demo's synthetic set, evaluated, drawn.

  python -m visjax.main --config configs/iai_demo.py --workdir runs/iai_demo

Data and outputs as `configs/demo_synthetic.py` (IDOL; `common.demo_synthetic`). Changes to `iai_tiny`: lr 5e-4 on
every part (backbone included: it starts from random weights here). Learning curve, wall and CPU time in
benchmarks/RESULTS.md ("Demos of VITA, VISOLO and IAI").
"""

import ml_collections

from configs import common
from configs import iai_tiny


def get_config() -> ml_collections.ConfigDict:
  c = iai_tiny.get_config()
  common.demo_synthetic(c)
  c.train.lr = 5e-4
  c.train.backbone_lr_mult = 1.0
  c.train.num_steps = 1500  # batch 2 (iai_tiny): ~1.5 steps/s on 2 cores
  c.train.lr_steps = (1300,)
  c.train.log_every = 25
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 10  # every checkpoint kept: the learning curve in RESULTS.md evaluates each
  return c
