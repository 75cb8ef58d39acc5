"""Shared VITA settings (official sukjunhwang/VITA `configs/youtubevis_2019/vita_R50_bs8.yaml` on top of
`vita/config.py` and `mask2former/config.py`); the `vita_*.py` configs start from here.

Fields beyond `configs/common.py`:
  config.model.*   everything `visjax.models.vita.model.VITA` needs (`default_model_config`).
  config.loss.*    set-criterion weights and point sampling (`loss_config`).
  config.tracker.* offline inference: top-k per video and chunk sizes (`tracker_config`).

Joint training on COCO pseudo-videos (`use_coco_joint`): the dataset configs train on two converted directories, as
the official DATASETS.TRAIN = ("coco2<vis>_train", "<vis>_train") with DATASET_RATIO, found under the default
layout `datasets/tfrecords/<official split name>` (relative to the working directory):

  python -m data_pipeline.convert --format coco --category-map coco_to_ytvis2019 \
      --json coco/annotations/instances_train2017.json --images coco/train2017 \
      --out datasets/tfrecords/coco2ytvis2019_train --num-shards 64
  python -m data_pipeline.convert --format ytvis --json ytvis_2019/train.json --images ytvis_2019/train/JPEGImages \
      --out datasets/tfrecords/ytvis_2019_train --num-shards 16
  (and ytvis_2019/valid.json -> datasets/tfrecords/ytvis_2019_val)

Other paths: `--config.dataset.tfrecords=COCO_DIR,VIS_DIR` (in that order, matching the ratios). VIS only (no COCO):
`--config.dataset.tfrecords=VIS_DIR --config.input.dataset_ratios='()'`. A missing directory stops training before
anything is built, naming it. The COCO -> VIS class maps of `data_pipeline/category_maps.py` are VITA's
(`vita/data/datasets/ytvis.py`, `ovis.py`). Not reproduced: the COCO-pretrained starting weights
(`vita_r50_coco.pth`, set `init_from`, or train them with `vita_coco_pseudo.py`).

`FREEZE_DETECTOR` is the official MODEL.VITA.FREEZE_DETECTOR as a `train.frozen` value (`vita_config(...,
freeze_detector=True)`, or on the command line `--config.train.frozen="('^(?!.*vita_module)',)"`).
"""

import dataclasses

import ml_collections

from configs import common
from configs import input_recipes
from visjax.models.backbones import swin
from visjax.models.vita import model as vita_model


# MODEL.VITA.FREEZE_DETECTOR (vita_model.py): every parameter whose name lacks 'vita_module' gets
# requires_grad_(False); visjax's parameter paths ('sem_seg_head/predictor/...') keep that name.
FREEZE_DETECTOR = (r'^(?!.*vita_module)',)


def loss_config() -> ml_collections.ConfigDict:
  """Loss settings `config.loss` (MASK_FORMER.* and VITA.* of the same yaml / config defaults; fields of
  `criterion.LossSettings`)."""
  l = ml_collections.ConfigDict()
  l.class_weight = 2.0
  l.mask_weight = 5.0
  l.dice_weight = 5.0
  l.no_object_weight = 0.1  # MASK_FORMER.NO_OBJECT_WEIGHT
  l.vita_no_object_weight = 0.1  # VITA.NO_OBJECT_WEIGHT
  l.sim_weight = 0.5  # VITA.SIM_WEIGHT
  l.deep_supervision = True
  l.vita_deep_supervision = True
  l.train_num_points = 12544
  l.oversample_ratio = 3.0
  l.importance_sample_ratio = 0.75
  return l


def tracker_config() -> ml_collections.ConfigDict:
  """Inference settings `config.tracker` (fields of `inference.InferenceSettings`): TEST.DETECTIONS_PER_IMAGE
  (10 YouTube-VIS, 20 OVIS) and the VITA chunk sizes."""
  t = ml_collections.ConfigDict()
  t.topk = 10
  t.run_chunk_size = 18  # VITA.TEST_RUN_CHUNK_SIZE: frames per backbone / frame-decoder pass
  t.interpolate_chunk_size = 5  # VITA.TEST_INTERPOLATE_CHUNK_SIZE: frames per mask upsampling pass
  t.mask_features_dtype = 'float32'  # host copy of every frame's mask features; 'bfloat16' halves it
  return t


def vita_config(num_classes: int, *, freeze_detector: bool = False) -> ml_collections.ConfigDict:
  """The official VITA R-50 YouTube-VIS 2019 recipe with `num_classes` classes (other datasets override);
  `freeze_detector` trains the VITA module only (`FREEZE_DETECTOR`, official default False)."""
  c = common.base_config()
  c.method = 'vita'
  c.dataset.num_classes = num_classes

  c.model = vita_model.default_model_config()
  c.model.num_classes = num_classes
  c.loss = loss_config()
  c.tracker = tracker_config()

  c.input.batch_size = 8  # IMS_PER_BATCH: clips
  input_recipes.vita(c, clip_len=5, frame_range=20)  # SAMPLING_FRAME_NUM 5, SAMPLING_FRAME_RANGE 20
  c.input.min_size_train = (288, 320, 352, 384, 416, 448, 480, 512)
  c.input.max_size_train = 768
  c.input.min_size_test = 360
  c.input.max_size_test = 1333  # detectron2 default MAX_SIZE_TEST
  c.input.size_divisibility = 32

  c.train.num_steps = 140000  # MAX_ITER
  c.train.lr = 5e-5
  c.train.backbone_lr_mult = 0.1
  c.train.weight_decay = 0.05
  # Mask2Former's build_optimizer: no decay on norm layers, nn.Embedding weights and Swin's bias tables.
  c.train.no_weight_decay = (r'norm\d*/(scale|bias)$', r'/embedding$', r'relative_position_bias_table$')
  c.train.lr_steps = (75000,)
  c.train.lr_gamma = 0.1
  c.train.warmup_steps = 10
  c.train.warmup_factor = 1.0
  c.train.clip_grad_norm = 0.01  # CLIP_TYPE full_model, L2
  c.train.frozen = FREEZE_DETECTOR if freeze_detector else ()
  c.train.checkpoint_every = 5000
  c.init_from = ''  # official: vita_r50_coco.pth (the whole VITA pretrained on COCO pseudo-videos)
  return c


TFRECORDS = 'datasets/tfrecords'  # Default layout: one converted directory per official split name.


def use_coco_joint(c: ml_collections.ConfigDict, *, vis: str, coco_ratio: float,
                   vis_ratio: float) -> ml_collections.ConfigDict:
  """Trains on COCO pseudo-videos mapped to the VIS classes and on the VIS split `vis` (e.g. 'ytvis_2019'), mixed
  coco_ratio : vis_ratio (DATASETS.TRAIN ("coco2<vis>_train", "<vis>_train"), DATASET_RATIO); evaluates on
  `<vis>_val`. Sets only `config.dataset.{tfrecords, eval_tfrecords}` and `config.input.dataset_ratios`."""
  coco = 'coco2' + vis.replace('_', '')  # coco2ytvis2019, coco2ytvis2021, coco2ovis as the official splits
  c.dataset.tfrecords = f'{TFRECORDS}/{coco}_train,{TFRECORDS}/{vis}_train'
  c.dataset.eval_tfrecords = f'{TFRECORDS}/{vis}_val'
  c.input.dataset_ratios = (coco_ratio, vis_ratio)
  return c


def use_swin_l(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Switches a VITA config to Swin-L (`vita_SWIN_bs8.yaml`): 200 frame queries, test short side 448."""
  c.model.backbone = 'swin'
  c.model.swin = ml_collections.ConfigDict(dataclasses.asdict(swin.SWIN_L))
  c.model.num_frame_queries = 200
  c.input.min_size_test = 448
  c.init_from = ''  # official: vita_swin_coco.pth
  return c
