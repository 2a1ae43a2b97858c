"""PASCAL VOC annotations: ``VOCdevkit/VOC20xx/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``.

VOC XML coordinates are 1-based inclusive; they become 0-based (minus 1) here, the ILSVRC convention
the evaluator expects (its ``+1`` width rule then matches the VOC devkit). ``difficult`` objects are
kept with ``ignore=True`` (or dropped with ``use_difficult=False``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detect.classes import ClassList, read_class_list
from detect.data.xmlfile import read_xml_root
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog

log = logging.getLogger(__name__)

__all__ = ["VOC_CLASSES", "voc_classes", "parse_voc_xml", "read_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_classes() -> ClassList:
    """The 20 VOC classes in the standard order (ids = names)."""
    return ClassList.from_names(VOC_CLASSES)


def _number(node, tag: str) -> float | None:
    text = node.findtext(tag) if node is not None else None
    try:
        return float(text.strip()) if text is not None else None
    except ValueError:
        return None


def parse_voc_xml(path: str | Path, classes: ClassList):
    """Parse one VOC annotation.

    Returns ``(width, height, boxes, labels, difficult, problems)``: boxes ndarray[N, 4] float32 0-based
    xyxy (VOC values minus 1), labels ndarray[N] int64, difficult ndarray[N] bool, problems one line per
    dropped object. Raises ``ValueError`` naming the file when it is not readable XML or has no size.
    """
    path = Path(path)
    root = read_xml_root(path)
    size = root.find("size")
    width, height = _number(size, "width"), _number(size, "height")
    if not width or not height or width <= 0 or height <= 0:
        raise ValueError(f"{path}: no valid <size>")
    width, height = int(width), int(height)
    boxes, labels, difficult, problems = [], [], [], []
    for k, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            problems.append(f"unknown class: object {k} ({name!r})")
            continue
        coords = [_number(obj.find("bndbox"), t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            problems.append(f"missing box: object {k} ({name})")
            continue
        x1, y1, x2, y2 = (c - 1 for c in coords)
        if x2 < x1 or y2 < y1:
            problems.append(f"inverted box: object {k} ({name}) {coords}")
            continue
        if x1 < 0 or y1 < 0 or x2 > width - 1 or y2 > height - 1:
            problems.append(f"box outside the image: object {k} ({name}) {coords} in {width}x{height}")
            continue
        boxes.append([x1, y1, x2, y2])
        labels.append(classes.index(name))
        difficult.append((_number(obj, "difficult") or 0) > 0)
    return (width, height, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(difficult, bool), problems)


def read_voc(root: str | Path, split: str = "test", classes=None, use_difficult: bool = True) -> DetectionDataset:
    """Read ``root`` (a ``VOCdevkit/VOC20xx`` folder) split ``split`` into a :class:`DetectionDataset`.

    classes: ``None`` (the 20 VOC classes), a class list file, or a ClassList.
    use_difficult: keep ``difficult`` objects as ``ignore=True`` (VOC evaluation: neither counted nor
    penalised); ``False`` drops them. Record ``index`` = 1-based position in the split list.
    Unreadable annotations skip the image; bad objects are dropped; both counted in ``dataset.skipped``.
    """
    root = Path(root)
    class_list = classes if isinstance(classes, ClassList) else (
        voc_classes() if classes is None else read_class_list(classes))
    list_path = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        names = [line.split()[0] for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise FileNotFoundError(f"{list_path}: cannot read VOC image list ({e.strerror})") from None
    skipped = SkipLog("annotations")
    records = []
    for i, name in enumerate(tqdm(names, desc=f"VOC {split}", leave=False, mininterval=2.0), 1):
        xml_path = root / "Annotations" / f"{name}.xml"
        try:
            width, height, boxes, labels, difficult, problems = parse_voc_xml(xml_path, class_list)
        except ValueError as e:
            skipped.add(xml_path, f"unreadable annotation: {e}")
            continue
        for problem in problems:
            skipped.add(xml_path, problem)
        if not use_difficult:
            boxes, labels, difficult = boxes[~difficult], labels[~difficult], difficult[~difficult]
        records.append(DetectionRecord(name, root / "JPEGImages" / f"{name}.jpg", width, height,
                                       boxes, labels, difficult, i))
    if len(skipped):
        log.warning("%s %s: %s", root, split, skipped.summary())
    return DetectionDataset(records, class_list, name=f"voc_{split}", skipped=skipped)
