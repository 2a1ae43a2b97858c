"""COCO instances JSON -> :class:`DetectionDataset`.

Classes are the file's ``categories`` sorted by id: ``wnids[i] = str(category id)`` and ``names[i]`` the
category name, so label ``i`` maps back to a COCO ``category_id`` with ``int(classes.wnids[i])``.
Boxes ``[x, y, w, h]`` become ``(x, y, x + w, y + h)``; ``iscrowd`` boxes are kept with ``ignore=True``.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from detect.classes import ClassList
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog

log = logging.getLogger(__name__)

__all__ = ["read_coco", "coco_category_ids"]


def coco_category_ids(classes: ClassList) -> list[int]:
    """The COCO ``category_id`` of each label of a class list made by :func:`read_coco`."""
    return [int(w) for w in classes.wnids]


def read_coco(annotation_file: str | Path, image_dir: str | Path) -> DetectionDataset:
    """Read a COCO instances file; images are ``image_dir / file_name``, ordered by image id.

    Every image is kept (those without annotations have no boxes); record ``image_id`` = str(COCO id),
    ``index`` = 1-based position. Annotations with a non-positive width/height, a malformed bbox, or an
    unknown image/category are dropped and counted in ``dataset.skipped``.
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise FileNotFoundError(f"{annotation_file}: cannot read COCO annotations ({e.strerror})") from None
    except ValueError as e:
        raise ValueError(f"{annotation_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not {"images", "categories"} <= data.keys():
        raise ValueError(f"{annotation_file}: not a COCO instances file (needs 'images' and 'categories')")
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    classes = ClassList(tuple(str(c["id"]) for c in categories), tuple(str(c["name"]) for c in categories))
    label_of = {int(c["id"]): i for i, c in enumerate(categories)}
    images = {int(im["id"]): im for im in data["images"]}

    skipped = SkipLog("annotations")
    per_image = defaultdict(list)
    for ann in data.get("annotations", []):
        where = f"{annotation_file} annotation {ann.get('id')}"
        bbox = ann.get("bbox")
        if int(ann.get("image_id", -1)) not in images:
            skipped.add(where, f"unknown image: {ann.get('image_id')}")
        elif int(ann.get("category_id", -1)) not in label_of:
            skipped.add(where, f"unknown class: category {ann.get('category_id')}")
        elif not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            skipped.add(where, f"malformed box: {bbox!r}")
        elif not (bbox[2] > 0 and bbox[3] > 0):
            skipped.add(where, f"degenerate box: {bbox}")
        else:
            per_image[int(ann["image_id"])].append(ann)

    records = []
    for index, image_id in enumerate(sorted(images), 1):
        im, anns = images[image_id], per_image.get(image_id, [])
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        records.append(DetectionRecord(
            str(image_id), image_dir / im["file_name"], int(im["width"]), int(im["height"]), boxes,
            [label_of[int(a["category_id"])] for a in anns], [bool(a.get("iscrowd", 0)) for a in anns], index))
    if len(skipped):
        log.warning("%s: %s", annotation_file, skipped.summary())
    return DetectionDataset(records, classes, name=annotation_file.stem, skipped=skipped)
