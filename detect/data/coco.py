"""COCO instances JSON -> :class:`DetectionDataset`, every field checked.

Layouts (:func:`find_coco_split`, from the dataset folder ``root`` and a split name): a Roboflow export,
``<root>/<split>/_annotations.coco.json`` with the images beside it (splits ``train``, ``valid``, ``test``);
or the official layout, ``<root>/annotations/instances_<split>.json`` with the images in ``<root>/images/<split>/``
or ``<root>/<split>/`` (COCO 2017's ``train2017/``). ``annotation_file`` / ``image_dir`` name a split's files
directly. Several splits (``split=["train", "valid"]``) are read as one dataset: their categories must
agree, and their record ids become ``<split>/<image id>``.

Classes: ``wnids[i] = str(category id)``, ``names[i]`` the category name. Without a class list they are
the categories with at least one non-crowd box in the training files, sorted by id; the others (Roboflow's
supercategory, id 0) are left out and logged (files with no box at all: every category). A class list
(``classes``, a file or a :class:`ClassList`) fixes order and subset: each id is a category **name**, or,
naming none, an integer category id (prepare_data's ``classes.tsv``); a listed class without a box in the
training split is refused when that split is read. Every split takes its classes from the training files
(``classes_from``), so that the labels agree; a category id there must carry the same name in each file.
Boxes ``[x, y, w, h]`` become ``(x, y, x + w, y + h)``; ``iscrowd`` boxes are kept with ``ignore=True``.

Validation: a bad entry is reported with the file, its list and index and the reason, counted in
``dataset.skipped`` and left out; a wrongly typed field never crashes the read:
- category: an object with an integer ``id`` (not a bool, not a string, unique) and a string ``name``;
- image: an object with an integer ``id`` (unique), a non-empty string ``file_name``, and ``width`` /
  ``height`` finite positive integers (``640.0`` is accepted as 640) up to ``MAX_PIXELS``;
- ids fit an int64 (:data:`detect.data.records.MAX_ID`); box values lie within ``MAX_PIXELS``;
- annotation: an object whose integer ``image_id`` / ``category_id`` name a kept image / category, ``bbox``
  a list of 4 finite numbers (not strings such as ``"1234"``) with width and height > 0, ``iscrowd`` 0 or
  1 as an integer or JSON boolean (not the string ``"0"``; missing: 0, as in pycocotools).
Images are found by ``file_name``, or by its stem in any extension case. A file with an annotation ``id``
0 gets a warning (pycocotools' COCOeval would score a detection matching that box as a false positive).
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from detect.classes import ClassList
from detect.data.cache import cache_key, cached_class_list
from detect.data.folder import ImageFinder, leaves_folder
from detect.data.records import (DetectionDataset, DetectionRecord, SkipLog, as_class_list, check_id, check_pixels,
                                 finish_dataset, reader_logs, split_names)

log = logging.getLogger(__name__)

__all__ = ["read_coco", "find_coco_split", "coco_image_ids_by_name", "as_int", "as_number", "as_bbox"]

ROBOFLOW_FILE = "_annotations.coco.json"  # a Roboflow COCO export: <root>/<split>/_annotations.coco.json


def as_int(value, field: str) -> int:
    """``value`` as an id: an int (not a bool) or an integral finite float; ``ValueError`` saying what it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} {value!r} is {_kind(value)}, not an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
        raise ValueError(f"{field} {value!r} is not an integer")
    return check_id(int(value), field)


def as_number(value, field: str) -> float:
    """``value`` as a finite float (an int or a float, not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} {value!r} is {_kind(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range (JSON integers have no bound)
        raise ValueError(f"{field} (an integer of {len(str(abs(value)))} digits) is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{field} {value!r} is not finite")
    return number


def as_bbox(value) -> list[float]:
    """A COCO ``[x, y, w, h]``: a list of 4 finite numbers; ``ValueError`` otherwise."""
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"bbox {value!r} is {_kind(value)}, not a list of 4 numbers")
    return [as_number(v, "bbox value") for v in value]


def _kind(value) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _fields(entry, *keys: str) -> dict:
    """``entry`` when it is an object holding ``keys``; ``ValueError`` saying what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry is {_kind(entry)}, not an object")
    for key in keys:
        if key not in entry:
            raise ValueError(f"missing {key}")
    return entry


def _check_category(c) -> tuple[int, str]:
    """``(id, name)`` of a ``categories`` entry; ``ValueError`` saying what is wrong."""
    if not isinstance(_fields(c, "id", "name")["name"], str):
        raise ValueError(f"name {c['name']!r} is {_kind(c['name'])}, not a string")
    return as_int(c["id"], "id"), c["name"]


def _check_image(im) -> tuple[int, tuple[str, int, int]]:
    """``(id, (file_name, width, height))`` of an ``images`` entry; ``ValueError`` saying what is wrong."""
    if not isinstance(_fields(im, "id", "file_name", "width", "height")["file_name"], str) or not im["file_name"]:
        raise ValueError(f"file_name {im['file_name']!r} is not a non-empty string")
    if leaves_folder(im["file_name"]):
        raise ValueError(f"file_name {im['file_name']!r} points outside the image folder")
    size = [check_pixels(as_int(im[k], k), k) for k in ("width", "height")]
    if min(size) <= 0:
        raise ValueError(f"size {size[0]}x{size[1]} is not positive")
    return as_int(im["id"], "id"), (im["file_name"], size[0], size[1])


def _check_annotation(ann, images: dict, categories: dict) -> tuple[int, tuple[int, list[float], bool]]:
    """``(image id, (category id, [x, y, w, h], crowd))`` of an ``annotations`` entry; ``ValueError`` if not."""
    image_id = as_int(_fields(ann, "image_id", "category_id", "bbox")["image_id"], "image_id")
    if image_id not in images:
        raise ValueError(f"unknown image: image_id {image_id}")
    category_id = as_int(ann["category_id"], "category_id")
    if category_id not in categories:
        raise ValueError(f"unknown class: category_id {category_id}")
    x, y, w, h = (check_pixels(v, "bbox value") for v in as_bbox(ann["bbox"]))
    if not (w > 0 and h > 0):
        raise ValueError(f"degenerate box: bbox {ann['bbox']} has width or height <= 0")
    crowd = ann.get("iscrowd", 0)
    if type(crowd) not in (int, bool) or crowd not in (0, 1):
        raise ValueError(f"iscrowd {crowd!r} is {_kind(crowd)}, not 0 or 1")
    return image_id, (category_id, [x, y, w, h], bool(crowd))


def find_coco_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of ``split`` in the dataset folder ``root``, in either layout
    (module docstring; the official one without an image folder: ``images/<split>/``, as an evaluation
    needs no images). ``FileNotFoundError`` listing what was looked for (and what ``root`` holds) when
    neither layout is there; ``ValueError`` when both are."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root}: no such folder")
    roboflow = root / split / ROBOFLOW_FILE
    official = root / "annotations" / f"instances_{split}.json"
    image_dirs = [root / "images" / split, root / split]
    if roboflow.is_file() and official.is_file():
        raise ValueError(f"{root}: split {split!r} is there in two layouts, {roboflow} and {official}; name the one "
                         "to read with the block's annotation_file and image_dir")
    if roboflow.is_file():
        return roboflow, roboflow.parent
    if official.is_file():
        return official, next((d for d in image_dirs if d.is_dir()), image_dirs[0])
    held = sorted(e.name + ("/" if e.is_dir() else "") for e in root.iterdir())
    raise FileNotFoundError(
        f"{root}: no COCO annotations for split {split!r}: looked for {roboflow} (a Roboflow export, images beside "
        f"it) and {official} (the official layout, images in {image_dirs[0]}/ or {image_dirs[1]}/); the folder holds "
        f"{held[:20]}{' ...' if len(held) > 20 else ''}. Name the split (data.train_name / data.val_name) or the "
        "files (the block's annotation_file and image_dir, conf/data/coco.yaml)")


def _names(value, what: str) -> list[str]:
    """:func:`detect.data.records.split_names`, with ``None`` (nothing given) as no name."""
    return [] if value is None else split_names(value, what)


def _per_split(value, n: int, key: str) -> list:
    """``value`` (``key``) for each of ``n`` splits: ``None`` (found from root), one path (one split) or ``n``."""
    values = [None] * n if value is None else [value] if isinstance(value, (str, Path)) else list(value)
    if len(values) != n:
        raise ValueError(f"{key}={values}: {len(values)} path(s) for {n} split(s); give one per split, or null")
    return values


def _sources(root, split, annotation_file, image_dir) -> list[tuple[str, Path, Path]]:
    """``[(split name, annotation file, image folder)]`` to read: the files given, else found in ``root``."""
    names = _names(split, "split")
    if not names:
        if annotation_file is None or image_dir is None:
            raise ValueError("read_coco: give root and split, or annotation_file and image_dir")
        return [(Path(str(annotation_file)).stem, Path(str(annotation_file)), Path(str(image_dir)))]
    sources = []
    for name, f, d in zip(names, _per_split(annotation_file, len(names), "annotation_file"),
                          _per_split(image_dir, len(names), "image_dir")):
        if f is None or d is None:
            found_file, found_dir = _find_split(root, name, "split", "annotation_file and image_dir")
            f, d = f or found_file, d or found_dir
        sources.append((name, Path(str(f)), Path(str(d))))
    return sources


def _find_split(root, name: str, key: str, files: str) -> tuple[Path, Path]:
    """:func:`find_coco_split`; without ``root``, ``ValueError`` saying to give it or the keys ``files``."""
    if root is None:
        raise ValueError(f"{key} {name!r}: no root to find its files in; give root, or {files}")
    return find_coco_split(root, name)


@dataclass
class _Part:
    """One annotation file, checked: ``categories {id: name}``, ``images {id: (file_name, w, h)}``,
    ``objects {image id: [(category id, [x, y, w, h], crowd)]}``."""

    name: str
    file: Path
    image_dir: Path | None
    categories: dict
    images: dict
    objects: dict
    listed: int


def _read_part(name: str, file: Path, image_dir: Path | None, skipped: SkipLog, warnings: SkipLog) -> _Part:
    """Load and check one file (bad entries counted in ``skipped``, annotation id 0 in ``warnings``)."""
    data = _load_instances(file)
    categories = _check_entries(file, data["categories"], "categories", "category", _check_category, skipped)
    if not categories:
        raise ValueError(f"{file}: no usable category; {skipped.summary()}")
    images = _check_entries(file, data["images"], "images", "image", _check_image, skipped)
    annotations = data.get("annotations", [])
    if any(isinstance(a, dict) and type(a.get("id")) is int and a["id"] == 0 for a in annotations):
        warnings.add(file, "annotation id 0: pycocotools' COCOeval takes a matched id of 0 for 'unmatched', so "
                           "scored by pycocotools on this file a detection matching that box is a false positive "
                           "(our evaluation and its pycocotools cross-check number annotations from 1)")
    objects = _check_entries(file, annotations, "annotations", "annotation",
                             lambda a: _check_annotation(a, images, categories), skipped, unique=False)
    return _Part(name, file, image_dir, categories, images, objects, len(data["images"]))


def read_coco(annotation_file: str | Path | None = None, image_dir: str | Path | None = None,
              check_images: bool = True, max_missing_images: float = 0.1, *, root: str | Path | None = None,
              split=None, classes=None, classes_from=None, classes_from_files=None,
              cache_dir: str | Path | None = None) -> DetectionDataset:
    """Read COCO split(s) into one dataset (module docstring: layouts, classes, checks).
    ``annotation_file`` / ``image_dir`` (one per split) replace what ``root`` and ``split`` would find.
    ``classes_from`` (split name(s) in ``root``) or ``classes_from_files`` (their files) name the training
    files that define the classes (unreadable: a warning, and the files read here define them); neither:
    the files read here are the training files. A class list (``classes``) is matched against the files
    read here, so an evaluation with one reads no training file. ``cache_dir``: where the training classes
    are cached. Records: every valid image, by image id (``image_id`` = str(COCO id), ``index`` 1-based).
    ``ValueError`` naming the file when it is not JSON, or not a COCO instances object."""
    sources = _sources(root, split, annotation_file, image_dir)
    skipped, warnings = reader_logs(quiet=["not a class"])  # objects of categories left out: counted
    parts = [_read_part(name, f, d, skipped, warnings) for name, f, d in sources]
    is_training = classes_from is None and classes_from_files is None
    if is_training or classes is not None:
        class_list = _class_list(classes, parts, require_boxes=is_training)
    else:
        try:
            class_list = _training_classes(root, classes_from, classes_from_files, parts, cache_dir)
        except FileNotFoundError as e:  # an evaluation-only folder (e.g. COCO's val annotations alone)
            log.warning("the training split's classes cannot be read (%s); the classes are those of %s itself",
                        e, ", ".join(str(p.file) for p in parts))
            class_list = _class_list(None, parts)
    records = []
    for part in parts:
        records += _coco_records(part, _labels(part, class_list), check_images, max_missing_images, skipped,
                                 f"{part.name}/" if len(parts) > 1 else "")
    for index, record in enumerate(records, 1):
        record.index = index
    files = ", ".join(str(p.file) for p in parts)
    return finish_dataset(records, class_list, "+".join(p.name for p in parts), skipped, warnings, files,
                          sum(p.listed for p in parts), lambda r: f"{files}: image {r.image_id}", "images", logger=log)


CLASSES_VERSION = 2  # part of the training-classes cache's fingerprint: bump when _class_list changes


def _training_classes(root, classes_from, classes_from_files, parts: list[_Part], cache_dir) -> ClassList:
    """The classes the training files define (their faults are reported when that split is read), reusing
    files read already; cached in ``cache_dir``, so that an evaluation reads no training JSON twice."""
    if isinstance(classes_from_files, (str, Path)):
        classes_from_files = [classes_from_files]
    names = _names(classes_from, "classes_from") or [Path(str(f)).stem for f in classes_from_files]
    files = [Path(str(f)) if f is not None else _find_split(root, name, "classes_from", "classes_from_files")[0]
             for name, f in zip(names, _per_split(classes_from_files, len(names), "classes_from_files"))]
    paths = [str(f.resolve()) for f in files]
    read = {str(p.file.resolve()): p for p in parts}
    quiet = SkipLog(log_limit=-1)
    key = cache_key(cache_dir, "coco_classes", paths, paths, names, ["coco classes", CLASSES_VERSION])
    return cached_class_list(key, lambda: _class_list(None, [read.get(path) or _read_part(n, f, None, quiet, quiet)
                                                             for n, f, path in zip(names, files, paths)]))


def _agreeing_categories(parts: list[_Part]) -> dict:
    """The ``{id: name}`` categories shared by ``parts``; ``ValueError`` naming two files that differ."""
    first = parts[0]
    for part in parts[1:]:
        if part.categories != first.categories:
            diff = sorted(set(part.categories.items()) ^ set(first.categories.items()))[:5]
            raise ValueError(f"{first.file} and {part.file}: the categories differ ({diff} ...); splits read "
                             "together must share one category list")
    return first.categories


def _category_of(wnid: str, categories: dict, files: str) -> int:
    """The category id a class-list id names: a category name, else an integer category id."""
    by_name = {name: cid for cid, name in sorted(categories.items(), reverse=True)}  # a name's smallest id
    if wnid in by_name:
        return by_name[wnid]
    if wnid.lstrip("-").isdigit() and int(wnid) in categories:
        return int(wnid)
    raise ValueError(f"class list: {wnid!r} names no category of {files} (by name or id; categories: "
                     f"{[categories[c] for c in sorted(categories)][:20]})")


def _class_list(classes, training: list[_Part], require_boxes: bool = True) -> ClassList:
    """The classes (module docstring): those listed in ``classes`` (each with a box in ``training`` when
    ``require_boxes``), or the categories with a box in ``training``."""
    categories = _agreeing_categories(training)
    files = ", ".join(str(p.file) for p in training)
    counts = Counter(c for p in training for objs in p.objects.values() for c, _, crowd in objs if not crowd)
    if classes is None and not counts:
        log.warning("%s: no boxes at all; the classes are every category", files)
        ids = sorted(categories)
    elif classes is None:
        empty = [c for c in sorted(categories) if not counts[c]]
        if empty:
            log.warning("%s: %d categories without a training box are not classes: %s", files, len(empty),
                        ", ".join(f"{categories[c]!r} (id {c})" for c in empty))
        ids = [c for c in sorted(categories) if counts[c]]
    else:
        listed = as_class_list(classes, lambda: None)
        ids = [_category_of(w, categories, files) for w in listed.wnids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class list {listed.wnids}: two entries name the same category of {files}")
        for c in ids:
            if require_boxes and not counts[c]:
                raise ValueError(f"class list: {categories[c]!r} (category id {c}) has no box in {files}; "
                                 "nothing to learn it from: leave it out of the class list")
    return ClassList(tuple(str(i) for i in ids), tuple(categories[i] for i in ids))


def _labels(part: _Part, classes: ClassList) -> dict[int, int]:
    """``{category id: label}`` of ``classes``; ``ValueError`` when a class id has another name in ``part``."""
    label_of = {int(w): i for i, w in enumerate(classes.wnids)}
    for cid, i in label_of.items():
        if part.categories.get(cid, classes.names[i]) != classes.names[i]:
            raise ValueError(f"{part.file}: category id {cid} is {part.categories[cid]!r} here but "
                             f"{classes.names[i]!r} in the training files; the labels would not agree")
    return label_of


def coco_image_ids_by_name(annotation_file: str | Path) -> dict[str, int]:
    """``{file name: image id}`` of a COCO file's valid ``images`` (the name without its folders; a name
    two entries share maps to neither). Bad entries are logged and left out."""
    annotation_file = Path(annotation_file)
    images = _check_entries(annotation_file, _load_instances(annotation_file)["images"], "images", "image",
                            _check_image, SkipLog("images"))
    names = Counter(Path(v[0]).name for v in images.values())
    return {Path(v[0]).name: i for i, v in images.items() if names[Path(v[0]).name] == 1}


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


def _check_entries(path: Path, entries: list, key: str, what: str, check, skipped: SkipLog,
                   unique: bool = True) -> dict:
    """``{id: value}`` of the entries of list ``key`` that ``check`` (entry -> ``(id, value)``) accepts, ids
    unique (``unique=False``: ``{id: [value, ...]}``). A refused entry is counted in ``skipped`` under
    ``file: key[k] (id ...)`` as ``bad <what>: <reason>``, or as its own kind (unknown image, ...)."""
    kept = {} if unique else defaultdict(list)
    for k, entry in enumerate(entries):
        try:
            ident, value = check(entry)
            if not unique:
                kept[ident].append(value)
            elif ident in kept:
                raise ValueError(f"duplicate {what} id {ident}")
            else:
                kept[ident] = value
        except ValueError as e:
            text = str(e) if str(e).startswith(("unknown image", "unknown class", "degenerate box")) else f"bad {what}: {e}"
            raw_id = entry.get("id") if isinstance(entry, dict) else None
            skipped.add(f"{path}: {key}[{k}]" + (f" (id {raw_id!r})" if raw_id is not None else ""), text)
    return kept


def _coco_records(part: _Part, label_of: dict, check_images: bool, max_missing_images: float, skipped: SkipLog,
                  prefix: str = "") -> list[DetectionRecord]:
    """One record per kept image of ``part`` (``image_id`` = ``prefix`` + id), boxes xywh -> xyxy, labels
    ``label_of[category id]`` (another category: counted in ``skipped``); images missing: as every reader."""
    finder = ImageFinder(part.image_dir, ".jpg")
    order = sorted(part.images)
    paths = finder.find_all([part.images[i][0] for i in order], check_images, max_missing_images)
    records = []
    for image_id, path in zip(order, paths):
        anns = []
        for c, xywh, crowd in part.objects.get(image_id, []):
            if c in label_of:
                anns.append((label_of[c], xywh, crowd))
            else:
                skipped.add(f"{part.file}: image {image_id}",
                            f"not a class: category_id {c} ({part.categories[c]!r}) is not in the class list")
        file_name, width, height = part.images[image_id]
        if path is None:
            path = part.image_dir / file_name
            if check_images:
                skipped.add(path, "missing image")
                continue
        boxes = [[x, y, x + w, y + h] for _, (x, y, w, h), _ in anns]
        records.append(DetectionRecord(f"{prefix}{image_id}", path, width, height, boxes, [a[0] for a in anns],
                                       [a[2] for a in anns]))
    return records
