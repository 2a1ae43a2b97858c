"""COCO instances JSON -> :class:`DetectionDataset`, every field checked.

Classes are the file's ``categories`` sorted by id: ``wnids[i] = str(category id)`` and ``names[i]`` the
category name, so label ``i`` maps back to a COCO ``category_id`` with ``int(classes.wnids[i])``.
Boxes ``[x, y, w, h]`` become ``(x, y, x + w, y + h)``; ``iscrowd`` boxes are kept with ``ignore=True``.

Validation: each entry of ``images``, ``categories`` and ``annotations`` is checked for the type and
value of every field the project uses, and a bad entry is reported with the file, its list and index
and the reason, counted in ``dataset.skipped`` and left out; the rest is kept. Never a crash on a
wrongly typed field:
- category: an object with an integer ``id`` (not a bool, not a string, unique) and a string ``name``;
- image: an object with an integer ``id`` (unique), a non-empty string ``file_name``, and ``width`` /
  ``height`` finite positive integers (``640.0`` is accepted as 640);
- annotation: an object whose ``image_id`` / ``category_id`` are integers naming a kept image /
  category, ``bbox`` a list of 4 finite numbers (a string such as ``"1234"`` is refused) with
  width and height > 0, and ``iscrowd`` (when present) 0 or 1 as an integer or JSON boolean (the
  string ``"0"`` is refused; a missing one is 0, as in pycocotools).
Boxes outside the image follow the one rule of :mod:`detect.data.records`: kept exactly as stored (as
COCOeval scores them), counted in ``dataset.warnings``. Images are found by ``file_name``, or by its
stem whatever the extension's case (:class:`detect.data.folder.ImageFinder`).
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from detect.classes import ClassList
from detect.data.folder import ImageFinder, leaves_folder
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog, finish_dataset, reader_logs, warn_outside

log = logging.getLogger(__name__)

__all__ = ["read_coco", "coco_category_ids", "as_int", "as_number"]


def coco_category_ids(classes: ClassList) -> list[int]:
    """The COCO ``category_id`` of each label of a class list made by :func:`read_coco`."""
    return [int(w) for w in classes.wnids]


def as_int(value, field: str) -> int:
    """``value`` as an id: an int (not a bool) or an integral finite float; ``ValueError`` saying what it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} {value!r} is {_kind(value)}, not an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
        raise ValueError(f"{field} {value!r} is not an integer")
    return int(value)


def as_number(value, field: str) -> float:
    """``value`` as a finite float (an int or a float, not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} {value!r} is {_kind(value)}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"{field} {value!r} is not finite")
    return float(value)


def as_bbox(value) -> list[float]:
    """A COCO ``[x, y, w, h]``: a list of 4 finite numbers; ``ValueError`` otherwise."""
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"bbox {value!r} is {_kind(value)}, not a list of 4 numbers")
    return [as_number(v, "bbox value") for v in value]


def _kind(value) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _check_category(c) -> tuple[int, str]:
    """``(id, name)`` of a ``categories`` entry; ``ValueError`` saying what is wrong."""
    if not isinstance(c, dict):
        raise ValueError(f"entry is {_kind(c)}, not an object")
    if "id" not in c or "name" not in c:
        raise ValueError(f"missing {'id' if 'id' not in c else 'name'}")
    if not isinstance(c["name"], str):
        raise ValueError(f"name {c['name']!r} is {_kind(c['name'])}, not a string")
    return as_int(c["id"], "id"), c["name"]


def _check_image(im) -> tuple[int, tuple[str, int, int]]:
    """``(id, (file_name, width, height))`` of an ``images`` entry; ``ValueError`` saying what is wrong."""
    if not isinstance(im, dict):
        raise ValueError(f"entry is {_kind(im)}, not an object")
    for key in ("id", "file_name", "width", "height"):
        if key not in im:
            raise ValueError(f"missing {key}")
    if not isinstance(im["file_name"], str) or not im["file_name"]:
        raise ValueError(f"file_name {im['file_name']!r} is not a non-empty string")
    if leaves_folder(im["file_name"]):
        raise ValueError(f"file_name {im['file_name']!r} points outside the image folder")
    size = [as_int(im[k], k) for k in ("width", "height")]
    if min(size) <= 0:
        raise ValueError(f"size {size[0]}x{size[1]} is not positive")
    return as_int(im["id"], "id"), (im["file_name"], size[0], size[1])


def _check_annotation(ann, images: dict, label_of: dict) -> tuple[int, int, list[float], bool]:
    """``(image id, label, [x, y, w, h], crowd)`` of an ``annotations`` entry naming a kept image and
    category; ``ValueError`` saying what is wrong."""
    if not isinstance(ann, dict):
        raise ValueError(f"entry is {_kind(ann)}, not an object")
    for key in ("image_id", "category_id", "bbox"):
        if key not in ann:
            raise ValueError(f"missing {key}")
    image_id = as_int(ann["image_id"], "image_id")
    if image_id not in images:
        raise ValueError(f"unknown image: image_id {image_id}")
    category_id = as_int(ann["category_id"], "category_id")
    if category_id not in label_of:
        raise ValueError(f"unknown class: category_id {category_id}")
    x, y, w, h = as_bbox(ann["bbox"])
    if not (w > 0 and h > 0):
        raise ValueError(f"degenerate box: bbox {ann['bbox']} has width or height <= 0")
    crowd = ann.get("iscrowd", 0)
    if isinstance(crowd, bool):
        crowd = int(crowd)
    if type(crowd) is not int or crowd not in (0, 1):
        raise ValueError(f"iscrowd {crowd!r} is {_kind(crowd)}, not 0 or 1")
    return image_id, label_of[category_id], [x, y, w, h], bool(crowd)


def _where(path: Path, key: str, k: int, entry) -> str:
    """``file: key[k] (id ...)``, naming a bad entry in messages."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{path}: {key}[{k}]" + (f" (id {ident!r})" if ident is not None else "")


def read_coco(annotation_file: str | Path, image_dir: str | Path, check_images: bool = True,
              max_missing_images: float = 0.1) -> DetectionDataset:
    """Read a COCO instances file; images are ``image_dir / file_name``, ordered by image id.

    Every valid image is kept (those without annotations have no boxes); record ``image_id`` =
    str(COCO id), ``index`` = 1-based position. Bad entries are reported, counted in
    ``dataset.skipped`` and left out (see the module docstring). ``check_images``: look for every
    image (by file name, or its stem in any extension case); missing ones are skipped, more than
    ``max_missing_images`` (a share) missing stops with an error naming the pattern; ``False``
    (evaluation) reads the annotations alone. A file that is not JSON, or not a COCO instances
    object, raises ``ValueError`` naming it.
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    data = _load_instances(annotation_file)
    skipped, warnings = reader_logs()
    categories = _unique_entries(annotation_file, data["categories"], "categories", "category", _check_category,
                                 skipped)
    if not categories:
        raise ValueError(f"{annotation_file}: no usable category; {skipped.summary()}")
    ids = sorted(categories)
    classes = ClassList(tuple(str(i) for i in ids), tuple(categories[i] for i in ids))
    label_of = {cid: i for i, cid in enumerate(ids)}
    images = _unique_entries(annotation_file, data["images"], "images", "image", _check_image, skipped)
    per_image = _objects_per_image(annotation_file, data.get("annotations", []), images, label_of, skipped)
    records = _coco_records(images, per_image, image_dir, check_images, max_missing_images, skipped)
    warn_outside(records, warnings, lambda r: f"{annotation_file}: image {r.image_id}")
    return finish_dataset(records, classes, annotation_file.stem, skipped, warnings, str(annotation_file),
                          len(data["images"]), "images", logger=log)


def _load_instances(annotation_file: Path) -> dict:
    """The JSON object of a COCO instances file, its ``images``, ``categories`` (and ``annotations``) lists
    checked; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise FileNotFoundError(f"{annotation_file}: cannot read COCO annotations ({e.strerror})") from None
    except ValueError as e:
        raise ValueError(f"{annotation_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not {"images", "categories"} <= data.keys():
        raise ValueError(f"{annotation_file}: not a COCO instances file (needs 'images' and 'categories')")
    for key in ("images", "categories", "annotations"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{annotation_file}: '{key}' is {_kind(data[key])}, not a list")
    return data


def _unique_entries(path: Path, entries: list, key: str, what: str, check, skipped: SkipLog) -> dict:
    """``{id: value}`` of the entries of list ``key`` that ``check`` (entry -> ``(id, value)``) accepts and
    whose id is new; the others are counted in ``skipped`` as ``bad <what>``."""
    kept = {}
    for k, entry in enumerate(entries):
        try:
            ident, value = check(entry)
            if ident in kept:
                raise ValueError(f"duplicate {what} id {ident}")
        except ValueError as e:
            skipped.add(_where(path, key, k, entry), f"bad {what}: {e}")
            continue
        kept[ident] = value
    return kept


def _objects_per_image(path: Path, annotations: list, images: dict, label_of: dict,
                       skipped: SkipLog) -> dict[int, list[tuple[int, list[float], bool]]]:
    """``{image id: [(label, [x, y, w, h], crowd), ...]}`` of the valid ``annotations``; the others are
    counted in ``skipped`` (unknown image, unknown class, degenerate box, or bad annotation)."""
    per_image = defaultdict(list)
    for k, ann in enumerate(annotations):
        try:
            image_id, label, xywh, crowd = _check_annotation(ann, images, label_of)
        except ValueError as e:
            text = str(e)
            kind = text.split(":")[0] if text.startswith(("unknown image", "unknown class", "degenerate box")) else "bad annotation"
            skipped.add(_where(path, "annotations", k, ann), text if kind != "bad annotation" else f"{kind}: {text}")
            continue
        per_image[image_id].append((label, xywh, crowd))
    return per_image


def _coco_records(images: dict, per_image: dict, image_dir: Path, check_images: bool, max_missing_images: float,
                  skipped: SkipLog) -> list[DetectionRecord]:
    """One record per kept image, by image id (``index``: 1-based position among them), boxes xywh -> xyxy;
    with ``check_images`` an image not found is skipped (too many stop the reader, see ``ImageFinder``)."""
    finder = ImageFinder(image_dir, ".jpg")
    order = sorted(images)
    paths = finder.find_all([images[i][0] for i in order], check_images, max_missing_images)
    records = []
    for index, (image_id, path) in enumerate(zip(order, paths), 1):
        file_name, width, height = images[image_id]
        if path is None:
            path = image_dir / file_name
            if check_images:
                skipped.add(path, "missing image")
                continue
        anns = per_image.get(image_id, [])
        xywh = np.array([a[1] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        records.append(DetectionRecord(str(image_id), path, width, height, boxes, [a[0] for a in anns],
                                       [a[2] for a in anns], index))
    return records
