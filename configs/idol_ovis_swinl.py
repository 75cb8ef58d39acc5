"""IDOL Swin-L on OVIS (official `configs/ovis_swin.yaml`: the OVIS R50 recipe of `idol_ovis.py` with Swin-L).

Revisions of `ovis_swin.yaml` differ on the tracker: one sets NMS_PRE 0.3 / ADD_NEW_SCORE 0.3 (kept here, as
`ovis_r50.yaml`), another leaves the defaults 0.5 / 0.2 (`--config.tracker.nms_thr_pre=0.5
--config.tracker.addnew_score_thr=0.2`).
"""

import ml_collections

from configs import idol_common
from configs import idol_ovis


def get_config() -> ml_collections.ConfigDict:
  return idol_common.use_swin_l(idol_ovis.get_config())
