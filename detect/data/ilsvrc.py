"""ILSVRC DET annotations: image lists, the blacklist and the XML files, in both directory layouts.

Layouts (``layout="auto"`` picks the one present under ``root``):
- ``"2015"`` (ILSVRC 2015+ and our synthetic world): ``Data/DET/<split>/<name>.JPEG``,
  ``Annotations/DET/<split>/<name>.xml``, list ``ImageSets/DET/<split>.txt``. Names may contain
  sub-folders (``ILSVRC2013_train/n01440764/n01440764_10026``).
- ``"2014"`` (ILSVRC 2013/2014 tarballs): ``ILSVRC2013_DET_<split>/<name>.JPEG`` and
  ``ILSVRC2013_DET_bbox_<split>/<name>.xml`` (train: ``ILSVRC2014_DET_train`` / ``ILSVRC2014_DET_bbox_train``);
  the list is the devkit's ``data/det_lists/<split>.txt``, given as ``devkit`` or found under
  ``root/devkit`` or ``root/ILSVRC2014_devkit``.

Boxes are kept as stored (0-based inclusive ints as float32); the evaluator applies the ``+1`` rule.
The record ``index`` is the list line's index column (what submission lines refer to). Blacklist
entries (``<val index> <wnid>``) refer to the official val list; with another list (R-CNN's val1/val2)
they are mapped through the names of the official list.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from detect.classes import ClassList, ilsvrc_det_classes, read_class_list
from detect.data.xmlfile import read_xml_root
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog

log = logging.getLogger(__name__)

__all__ = ["read_image_list", "read_blacklist", "parse_ilsvrc_xml", "resolve_classes", "read_ilsvrc_det"]

LAYOUT_2014_DIRS = {  # split -> (image folder, annotation folder) of the 2013/2014 tarballs
    "val": ("ILSVRC2013_DET_val", "ILSVRC2013_DET_bbox_val"),
    "train": ("ILSVRC2014_DET_train", "ILSVRC2014_DET_bbox_train"),
    "test": ("ILSVRC2013_DET_test", "ILSVRC2013_DET_bbox_test"),
}
BOX_TOLERANCE = 1  # pixels a stored xmax/ymax may exceed width-1/height-1 (1-based slips in real files)


def read_image_list(path: str | Path) -> list[tuple[str, int]]:
    """Read ``<name> <index>`` lines (``<name>`` alone: index = line number); ``ValueError`` naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read image list ({e.strerror})") from e
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise ValueError(f"{path}:{lineno}: expected '<name> <index>', got {line!r}")
        try:
            index = int(parts[1]) if len(parts) == 2 else len(entries) + 1
        except ValueError:
            raise ValueError(f"{path}:{lineno}: index {parts[1]!r} is not an integer") from None
        entries.append((parts[0], index))
    return entries


def read_blacklist(path: str | Path, classes: ClassList) -> set[tuple[int, int]]:
    """Read ``<val index> <wnid>`` lines into ``{(val index, 0-based label)}``; unknown wnids raise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read blacklist ({e.strerror})") from e
    out = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<image index> <wnid>', got {line!r}")
        try:
            out.add((int(parts[0]), classes.index(parts[1])))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: image index {parts[0]!r} is not an integer") from None
        except KeyError:
            raise ValueError(f"{path}:{lineno}: unknown class {parts[1]!r}") from None
    return out


def _int_text(node, tag: str) -> int | None:
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    try:
        return int(round(float(child.text.strip())))
    except ValueError:
        return None


def parse_ilsvrc_xml(path: str | Path, classes: ClassList):
    """Parse one ILSVRC annotation file.

    Returns ``(width, height, boxes, labels, problems)``: width/height ``int`` or ``None`` when the
    file has no usable size; boxes ndarray[N, 4] float32 (xmin, ymin, xmax, ymax as stored);
    labels ndarray[N] int64; problems: one line per dropped object (unknown class, missing or bad box,
    box outside the image). Raises ``ValueError`` naming the file when it is not readable XML.
    """
    path = Path(path)
    root = read_xml_root(path)
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    width = _int_text(size, "width") if size is not None else None
    height = _int_text(size, "height") if size is not None else None
    if not width or not height or width <= 0 or height <= 0:
        width = height = None
    boxes, labels, problems = [], [], []
    for k, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            problems.append(f"unknown class: object {k} ({name!r})")
            continue
        bb = obj.find("bndbox")
        coords = [_int_text(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")] if bb is not None else [None]
        if any(c is None for c in coords):
            problems.append(f"missing box: object {k} ({name})")
            continue
        x1, y1, x2, y2 = coords
        if x2 < x1 or y2 < y1:
            problems.append(f"inverted box: object {k} ({name}) {coords}")
            continue
        if width is not None and (x1 < 0 or y1 < 0 or x2 > width - 1 + BOX_TOLERANCE
                                  or y2 > height - 1 + BOX_TOLERANCE):
            problems.append(f"box outside the image: object {k} ({name}) {coords} in {width}x{height}")
            continue
        boxes.append(coords)
        labels.append(classes.index(name))
    return (width, height, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), problems)


def resolve_classes(classes, root: Path | None = None) -> ClassList:
    """``None`` -> ``root/classes.tsv`` when present, else the 200 ILSVRC classes; a path -> read it."""
    if isinstance(classes, ClassList):
        return classes
    if classes is None:
        if root is not None and (Path(root) / "classes.tsv").is_file():
            return read_class_list(Path(root) / "classes.tsv")
        return ilsvrc_det_classes()
    return read_class_list(classes)


def _detect_layout(root: Path, split: str) -> str:
    if (root / "Data" / "DET").is_dir():
        return "2015"
    if split in LAYOUT_2014_DIRS and (root / LAYOUT_2014_DIRS[split][0]).is_dir():
        return "2014"
    raise FileNotFoundError(f"{root}: neither the 2015+ layout (Data/DET) nor the 2013/2014 layout "
                            f"({LAYOUT_2014_DIRS.get(split, ('ILSVRC2013_DET_' + split,))[0]}) found")


def _default_list(root: Path, split: str, layout: str, devkit) -> Path | None:
    if layout == "2015":
        path = root / "ImageSets" / "DET" / f"{split}.txt"
        return path if path.is_file() else None
    candidates = [Path(devkit)] if devkit is not None else [root / "devkit", root / "ILSVRC2014_devkit"]
    for base in candidates:
        path = base / "data" / "det_lists" / f"{split}.txt"
        if path.is_file():
            return path
    return None


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no size in the annotation and the image header is unreadable ({e})") from None


def read_ilsvrc_det(root: str | Path, split: str = "val", image_list: str | Path | None = None,
                    blacklist: str | Path | None = None, classes=None, layout: str = "auto",
                    missing_annotation: str | None = None, devkit: str | Path | None = None,
                    check_images: bool = True) -> DetectionDataset:
    """Read an ILSVRC DET split into a :class:`DetectionDataset` (see the module docstring for layouts).

    image_list: a ``<name> <index>`` file replacing the split's own list (e.g. R-CNN's val1/val2).
    blacklist: the devkit's ``ILSVRC2014_det_validation_blacklist.txt``; stored as ``{(record index, label)}``.
    classes: ``None`` (``root/classes.tsv`` or the ILSVRC 200), a path, or a ClassList.
    missing_annotation: what to do with a listed image that has no XML: ``"skip"`` (the default, except
    for ``split="test"``) drops it and counts it; ``"empty"`` keeps it without boxes (the test default).
    check_images: skip (and count) listed images whose file is missing.
    Malformed XML skips the image; bad objects are dropped; both are counted in ``dataset.skipped``.
    """
    root = Path(root)
    layout = _detect_layout(root, split) if layout == "auto" else layout
    if layout == "2015":
        image_dir, xml_dir = root / "Data" / "DET" / split, root / "Annotations" / "DET" / split
    elif layout == "2014":
        if split not in LAYOUT_2014_DIRS:
            raise ValueError(f"split {split!r} unknown in the 2014 layout ({sorted(LAYOUT_2014_DIRS)})")
        image_dir, xml_dir = (root / d for d in LAYOUT_2014_DIRS[split])
    else:
        raise ValueError(f"layout must be 'auto', '2015' or '2014', got {layout!r}")
    missing_annotation = missing_annotation or ("empty" if split == "test" else "skip")
    if missing_annotation not in ("skip", "empty"):
        raise ValueError(f"missing_annotation must be 'skip' or 'empty', got {missing_annotation!r}")
    class_list = resolve_classes(classes, root)

    official = _default_list(root, split, layout, devkit)
    list_path = Path(image_list) if image_list is not None else official
    if list_path is None:
        raise FileNotFoundError(f"{root}: no image list for split {split!r} (give image_list= or devkit=)")
    entries = read_image_list(list_path)

    skipped = SkipLog("annotations")
    records = []
    for name, index in tqdm(entries, desc=f"ILSVRC {split}", leave=False, mininterval=2.0):
        image_path = image_dir / f"{name}.JPEG"
        if check_images and not image_path.is_file():
            skipped.add(image_path, "missing image")
            continue
        xml_path = xml_dir / f"{name}.xml"
        if not xml_path.is_file():
            if missing_annotation == "skip":
                skipped.add(xml_path, "missing annotation")
                continue
            width, height, boxes, labels, problems = None, None, np.zeros((0, 4), np.float32), [], []
        else:
            try:
                width, height, boxes, labels, problems = parse_ilsvrc_xml(xml_path, class_list)
            except ValueError as e:
                skipped.add(xml_path, f"unreadable annotation: {e}")
                continue
        for problem in problems:
            skipped.add(xml_path, problem)
        if width is None:
            try:
                width, height = _image_size(image_path)
            except ValueError as e:
                skipped.add(image_path, f"no image size: {e}")
                continue
        records.append(DetectionRecord(name, image_path, width, height, boxes, labels,
                                       np.zeros(len(labels), bool), index))

    pairs = set()
    if blacklist is not None:
        pairs = read_blacklist(blacklist, class_list)
        if list_path != official:
            pairs = _remap_blacklist(pairs, official, records)
    if len(skipped):
        log.warning("%s %s: %s", root, split, skipped.summary())
    log.info("%s %s: %d images, %d boxes", root, split, len(records), sum(len(r.boxes) for r in records))
    return DetectionDataset(records, class_list, name=f"ilsvrc_{split}", blacklist=pairs, skipped=skipped)


def _remap_blacklist(pairs: set[tuple[int, int]], official: Path | None, records) -> set[tuple[int, int]]:
    """Blacklist entries use official val indices; map them to this list's indices through image names."""
    if official is None:
        log.warning("no official list to map the blacklist through; using its indices as they are")
        return pairs
    name_of = {index: name for name, index in read_image_list(official)}
    index_of = {r.image_id: r.index for r in records}
    out = set()
    for val_index, label in pairs:
        name = name_of.get(val_index)
        if name in index_of:
            out.add((index_of[name], label))
    return out
