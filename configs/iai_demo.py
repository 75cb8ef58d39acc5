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
  common.demo_schedule(c, num_steps=3000, lr_step=2600)
  return c
