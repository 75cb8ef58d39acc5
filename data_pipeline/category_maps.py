"""COCO category -> video-dataset category maps, for training on COCO pseudo-videos together with a VIS dataset.

Data facts from the official VIS code bases (`data/datasets/ytvis.py` `COCO_TO_YTVIS_2019`, `COCO_TO_YTVIS_2021`,
the category tables `YTVIS_CATEGORIES_2019/2021`; `data/datasets/ovis.py` `COCO_TO_OVIS`, `OVIS_CATEGORIES`; which
code base: the configs that use them). Keys are COCO json category ids, values the target dataset's json category
ids; several COCO classes may map to one target class (bicycle and motorcycle -> motorbike, skis and snowboard ->
snowboard).

The official pipeline keeps only the COCO annotations whose category is a key (`convert_coco2ytvis.py`) and maps
their classes to the target dataset's contiguous ids in the data mapper (`CocoClipDatasetMapper.src2tgt`); images
left without an annotation are dropped by detectron2's FILTER_EMPTY_ANNOTATIONS. `apply` does the same on the json:
it writes the target category ids and the target category table, so a converted COCO directory has exactly the
categories (and contiguous labels) of the VIS dataset it is mixed with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from data_pipeline import ytvis_json

# COCO json id -> YouTube-VIS 2019 json id (official ytvis.py COCO_TO_YTVIS_2019).
COCO_TO_YTVIS_2019 = {1: 1, 2: 21, 3: 6, 4: 21, 5: 28, 7: 17, 8: 29, 9: 34, 17: 14, 18: 8, 19: 18, 21: 15, 22: 32,
                      23: 20, 24: 30, 25: 22, 35: 33, 36: 33, 41: 5, 42: 27, 43: 40}
# COCO json id -> YouTube-VIS 2021 json id (official ytvis.py COCO_TO_YTVIS_2021).
COCO_TO_YTVIS_2021 = {1: 26, 2: 23, 3: 5, 4: 23, 5: 1, 7: 36, 8: 37, 9: 4, 16: 3, 17: 6, 18: 9, 19: 19, 21: 7, 22: 12,
                      23: 2, 24: 40, 25: 18, 34: 14, 35: 31, 36: 31, 41: 29, 42: 33, 43: 34}
# COCO json id -> OVIS json id (official ovis.py COCO_TO_OVIS).
COCO_TO_OVIS = {1: 1, 2: 21, 3: 25, 4: 22, 5: 23, 6: 25, 8: 25, 9: 24, 17: 3, 18: 4, 19: 5, 20: 6, 21: 7, 22: 8,
                23: 9, 24: 10, 25: 11}

# Category names of json ids 1, 2, ... (official YTVIS_CATEGORIES_2019, YTVIS_CATEGORIES_2021, OVIS_CATEGORIES).
YTVIS_2019_NAMES = (
    'person', 'giant_panda', 'lizard', 'parrot', 'skateboard', 'sedan', 'ape', 'dog', 'snake', 'monkey', 'hand',
    'rabbit', 'duck', 'cat', 'cow', 'fish', 'train', 'horse', 'turtle', 'bear', 'motorbike', 'giraffe', 'leopard',
    'fox', 'deer', 'owl', 'surfboard', 'airplane', 'truck', 'zebra', 'tiger', 'elephant', 'snowboard', 'boat',
    'shark', 'mouse', 'frog', 'eagle', 'earless_seal', 'tennis_racket')
YTVIS_2021_NAMES = (
    'airplane', 'bear', 'bird', 'boat', 'car', 'cat', 'cow', 'deer', 'dog', 'duck', 'earless_seal', 'elephant',
    'fish', 'flying_disc', 'fox', 'frog', 'giant_panda', 'giraffe', 'horse', 'leopard', 'lizard', 'monkey',
    'motorbike', 'mouse', 'parrot', 'person', 'rabbit', 'shark', 'skateboard', 'snake', 'snowboard', 'squirrel',
    'surfboard', 'tennis_racket', 'tiger', 'train', 'truck', 'turtle', 'whale', 'zebra')
OVIS_NAMES = (
    'Person', 'Bird', 'Cat', 'Dog', 'Horse', 'Sheep', 'Cow', 'Elephant', 'Bear', 'Zebra', 'Giraffe', 'Poultry',
    'Giant_panda', 'Lizard', 'Parrot', 'Monkey', 'Rabbit', 'Tiger', 'Fish', 'Turtle', 'Bicycle', 'Motorcycle',
    'Airplane', 'Boat', 'Vehical')


@dataclasses.dataclass(frozen=True)
class CategoryMap:
  """Source json category id -> target json category id, and the target dataset's category table.

  Attributes:
    name: the `data_pipeline.convert --category-map` name.
    mapping: source id -> target id (many to one allowed).
    target_names: names of the target json ids 1, 2, ..., len(target_names).
  """
  name: str
  mapping: Mapping[int, int]
  target_names: Sequence[str]

  def target_categories(self) -> list[dict[str, Any]]:
    return [{'id': i + 1, 'name': n} for i, n in enumerate(self.target_names)]


MAPS = {m.name: m for m in (
    CategoryMap('coco_to_ytvis2019', COCO_TO_YTVIS_2019, YTVIS_2019_NAMES),
    CategoryMap('coco_to_ytvis2021', COCO_TO_YTVIS_2021, YTVIS_2021_NAMES),
    CategoryMap('coco_to_ovis', COCO_TO_OVIS, OVIS_NAMES),
)}


def get(name: str) -> CategoryMap:
  """The map called `name`; ValueError listing the known names."""
  if name not in MAPS:
    raise ValueError(f'unknown category map {name!r}; known: {sorted(MAPS)}')
  return MAPS[name]


def apply(content: dict[str, Any], category_map: CategoryMap, *, source: str) -> tuple[dict[str, Any], int]:
  """Rewrites a loaded COCO instances json into the target dataset's categories.

  Annotations whose category is not in the map are dropped; the others get the target json id; `categories` becomes
  the target table. Images are kept (an image left empty is dropped later, as any image without annotation).

  Args:
    content: the COCO json object (`images`, `annotations`, `categories`); not modified.
    category_map: the map to apply.
    source: file name used in error messages.

  Returns:
    (rewritten json object, number of annotations dropped for an unmapped category).

  Raises:
    ytvis_json.DatasetFormatError: naming `source` and the annotation when its category is not among the json's
      categories.
  """
  categories = content.get('categories') if isinstance(content, dict) else None
  annotations = content.get('annotations') if isinstance(content, dict) else None
  if not isinstance(categories, list) or not isinstance(annotations, list):
    raise ytvis_json.DatasetFormatError(f'{source}: top level: "categories" and "annotations" must be lists')
  known = {c.get('id') for c in categories if isinstance(c, dict)}
  kept = []
  for i, ann in enumerate(annotations):
    category_id = ann.get('category_id') if isinstance(ann, dict) else None
    if category_id not in known:
      raise ytvis_json.DatasetFormatError(
          f'{source}: annotations[{i}]: category_id {category_id!r} is not among the json\'s categories')
    if category_id in category_map.mapping:
      kept.append({**ann, 'category_id': category_map.mapping[category_id]})
  out = {**content, 'annotations': kept, 'categories': category_map.target_categories()}
  return out, len(annotations) - len(kept)


def check_same_categories(roots: Sequence[str], tables: Sequence[Sequence[Mapping[str, Any]]]) -> None:
  """Mixed training sources must share one category table (same json ids, so the same contiguous labels).

  Args:
    roots: the converted directories.
    tables: each directory's manifest `categories` (dicts with `id` and `name`).

  Raises:
    ValueError naming the first directory and the one that differs, with the ids (or names) that differ.
  """
  def key(table):
    return [(int(c['id']), str(c.get('name', '')).lower()) for c in table]

  first = key(tables[0])
  for root, table in zip(roots[1:], tables[1:]):
    other = key(table)
    if other != first:
      only_first = sorted(set(first) - set(other))[:5]
      only_other = sorted(set(other) - set(first))[:5]
      raise ValueError(
          f'mixed training sources have different category tables: {roots[0]} ({len(first)} categories) vs {root} '
          f'({len(other)}); only in the first: {only_first}, only in the second: {only_other}. Convert a COCO json '
          'with data_pipeline.convert --format coco --category-map NAME to use the VIS dataset\'s categories.')
