"""COCO instances json as single-frame videos, for pseudo-video (clip) training.

`load_coco(path)` turns a COCO instances json into a `ytvis_json.YtvisDataset` in which every image is a one-frame
video and every annotation a one-frame track, validated by the same code as YouTube-VIS (unique ids, known
categories, RLE sizes against the image size, polygons). The converter writes these as ordinary video records
(`video/num_frames` = 1). At training time every frame sampler returns frame 0 `T` times for such a record, and
`config.input.augment_pseudo` (on top of `config.input.augment`) gives the T copies their own augmentation, e.g.
independent per-frame views, or clip-level augmentation plus rotations with angles sorted over the clip.

With a `category_maps.CategoryMap` (`data_pipeline.convert --category-map`), the records carry the categories of a
VIS dataset instead of COCO's, for training on both together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from data_pipeline import category_maps
from data_pipeline import ytvis_json


def coco_to_ytvis(content: dict[str, Any], *, source: str, keep_empty: bool = False) -> tuple[dict[str, Any], int]:
  """Rewrites a loaded COCO instances json in the YouTube-VIS layout (one frame per video).

  Args:
    content: the COCO json object (`images`, `annotations`, `categories`).
    source: file name used in error messages.
    keep_empty: keep images without a non-crowd annotation (dropped by default, as detectron2 does for training).

  Returns:
    (YouTube-VIS-shaped json object, number of images dropped for having no annotation).
  """
  def fail(where: str, message: str):
    raise ytvis_json.DatasetFormatError(f'{source}: {where}: {message}')

  def int_field(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
      fail(where, f'field "{key}" must be an integer, got {value!r}')
    return value

  if not isinstance(content, dict):
    fail('top level', f'must be a json object, got {type(content).__name__}')
  for key in ('images', 'annotations', 'categories'):
    if not isinstance(content.get(key), list):
      fail('top level', f'"{key}" must be a list')
  annotated = set()
  for i, ann in enumerate(content['annotations']):
    if not isinstance(ann, dict):
      fail(f'annotations[{i}]', 'must be an object')
    if not ann.get('iscrowd', 0):
      annotated.add(ann.get('image_id'))
  videos, dropped, image_ids = [], 0, set()
  for i, image in enumerate(content['images']):
    where = f'images[{i}]'
    if not isinstance(image, dict):
      fail(where, 'must be an object')
    image_id = int_field(image, 'id', where)
    image_ids.add(image_id)
    if not keep_empty and image_id not in annotated:
      dropped += 1
      continue
    file_name = image.get('file_name')
    if not isinstance(file_name, str) or not file_name:
      fail(f'image id={image_id}', f'field "file_name" must be a non-empty string, got {file_name!r}')
    videos.append({'id': image_id, 'height': image.get('height'), 'width': image.get('width'), 'length': 1,
                   'file_names': [file_name]})
  kept = {v['id'] for v in videos}
  annotations = []
  for i, ann in enumerate(content['annotations']):
    where = f'annotations[{i}]'
    image_id = int_field(ann, 'image_id', where)
    if image_id not in image_ids:
      fail(f'annotation id={ann.get("id")}', f'image_id {image_id} is not among the images')
    if image_id not in kept:
      continue
    if 'segmentation' not in ann:
      fail(f'annotation id={ann.get("id")}', 'missing field "segmentation"')
    annotations.append({
        'id': ann.get('id'), 'video_id': image_id, 'category_id': ann.get('category_id'),
        'iscrowd': ann.get('iscrowd', 0), 'segmentations': [ann.get('segmentation')],
        'bboxes': [ann['bbox']] if 'bbox' in ann else [None], 'areas': [ann.get('area')],
    })
  return {'videos': videos, 'categories': content['categories'], 'annotations': annotations}, dropped


@dataclasses.dataclass(frozen=True)
class CocoCounts:
  """What `load_coco` left out: images without a (non-crowd) annotation, annotations of an unmapped category."""
  images_without_annotations: int = 0
  unmapped_annotations: int = 0


def load_coco(path: str | os.PathLike, *, keep_empty: bool = False,
              category_map: category_maps.CategoryMap | None = None) -> tuple[ytvis_json.YtvisDataset, CocoCounts]:
  """Reads and validates a COCO instances json as single-frame videos.

  With `category_map`, annotations are first rewritten into the target dataset's categories (unmapped ones dropped,
  `category_maps.apply`), so that images left empty are dropped too, as the official FILTER_EMPTY_ANNOTATIONS does.
  Returns (dataset, counts of what was dropped).
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    try:
      content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ytvis_json.DatasetFormatError(f'{path}: not valid JSON: {e}') from None
  unmapped = 0
  if category_map is not None:
    content, unmapped = category_maps.apply(content, category_map, source=path)
  ytvis, dropped = coco_to_ytvis(content, source=path, keep_empty=keep_empty)
  return ytvis_json.parse(ytvis, source=path), CocoCounts(dropped, unmapped)
