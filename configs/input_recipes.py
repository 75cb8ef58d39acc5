"""Each method's official clip sampler and augmentation, as config data (`config.input.sampler`,
`config.input.augment`, `config.input.augment_pseudo`). `data_pipeline` reads these sections and knows no method.

Sources (reference notes in ../shared/reference/): IDOL §3 (VNext `ytvis_dataset_mapper.py`, `coco_clip_...`),
VITA §1.6 (`vita/data/dataset_mapper.py`, `augmentation.py`), VISOLO §2.2 (`visolo/data/dataset_mapper.py`), IAI §6
(mmdet YTVOS dataset pipeline). Sizes (`min_size_train`, `max_size_train`) stay in `config.input`.
"""

import ml_collections


def _set(c: ml_collections.ConfigDict, sampler: dict, augment: dict, pseudo: dict) -> ml_collections.ConfigDict:
  c.input.sampler = ml_collections.ConfigDict(sampler)
  c.input.augment = ml_collections.ConfigDict(augment)
  c.input.augment_pseudo = ml_collections.ConfigDict(pseudo)
  return c


def idol(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """IDOL: key + reference frame within +-10 (with replacement); crop branch p=.5 per clip (window per frame, range
  384-600); resize and flip per clip. Pseudo-clips: two independent views (flip, p=.5 resize to {400,500,600} +
  crop, resize: all per frame)."""
  return _set(c, dict(kind='reference', clip_len=2, frame_range=10, shuffle=False, replacement=True),
              dict(crop_prob=0.5, crop_per='clip', crop_window='frame'),
              dict(resize_per='frame', flip_per='frame', crop_prob=0.5, crop_per='frame', crop_resize=(400, 500, 600)))


def vita(c: ml_collections.ConfigDict, *, clip_len: int = 5, frame_range: int = 20) -> ml_collections.ConfigDict:
  """VITA: T frames within +-R of a reference, sorted; crop branch p=.5 per clip with a resize to {400,500,600} and
  a window sliding over the clip; resize and flip per clip. Pseudo-clips (`build_pseudo_augmentation`, every
  decision per clip as clip_frame_cnt = T): plus `RandomRotationClip([-15, 15], expand=False, center=[(0.4, 0.4),
  (0.6, 0.6)])`: angles sorted over the clip (reversed with p=.5) about one centre per clip, frame size kept.

  The official COCO clip mapper also draws a video length in 16..48 and T sorted frame indices within +-R of a
  reference; nothing reads them (every frame is the same image and the augmentation ignores the indices), so a
  pseudo-clip here is frame 0 repeated T times (`frame_index` 0)."""
  return _set(c, dict(kind='reference', clip_len=clip_len, frame_range=frame_range, shuffle=False,
                      replacement=True),
              dict(crop_prob=0.5, crop_per='clip', crop_resize=(400, 500, 600), crop_window='slide'),
              dict(rotation=15.0, rotation_per='sorted', rotation_expand=False, rotation_center=(0.4, 0.6)))


def vita_lsj(c: ml_collections.ConfigDict, *, clip_len: int = 1, image_size: int = 1024,
             scale: tuple[float, float] = (0.1, 2.0)) -> ml_collections.ConfigDict:
  """VITA with INPUT.LSJ_AUG.ENABLED (the LSJ branch of `build_augmentation`, COCO pretraining): horizontal flip
  (RANDOM_FLIP 'horizontal': clip_frame_cnt 1, so per frame), then `ResizeScale(scale, image_size)` and
  `FixedSizeCrop(image_size)` (per frame, plain detectron2 augmentations), sampler as `vita`. No pseudo-clip
  overrides: the COCO mapper of that run is the target one (is_tgt=True), which uses `build_augmentation`."""
  vita(c, clip_len=clip_len)
  c.input.augment = ml_collections.ConfigDict(dict(flip_per='frame', resize_per='frame', lsj_size=image_size,
                                                   lsj_scale=tuple(scale)))
  c.input.augment_pseudo = ml_collections.ConfigDict()
  return c


def visolo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """VISOLO: 3 frames within +-20, shuffled; resize and flip per clip, rotation up to 15 degrees and a (352, 624)
  crop per frame (pseudo-clips the same)."""
  return _set(c, dict(kind='reference', clip_len=3, frame_range=20, shuffle=True, replacement=True),
              dict(rotation=15.0, rotation_per='frame', post_crop=(352, 624)), {})


def iai(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """IAI: 5 annotated frames with gaps of 1-3; resize per clip, flip per frame (the mmdet pipeline runs per frame
  and carries only the scale over); pseudo-clips: resize per frame too."""
  return _set(c, dict(kind='annotated_gaps', clip_len=5, frame_range=3),
              dict(flip_per='frame', resize_per='clip'), dict(resize_per='frame'))
