"""Classification data cut from a detection set's own ground truth (pre-training on the user's classes).

:func:`cut_gt_crops` writes every usable ground-truth box of a training part and of a monitoring part
as an ImageNet-style class-folder set that ``detect.data.classification.read_split`` reads:
``root/{train,val}/<wnid>/<index>_<image id>_<k>.jpg`` (from ``train``, and ``val``: e.g. the held-out
monitoring part) and ``root/classes.tsv`` (the detection set's class list, label order).

Each crop is the box grown by ``context`` times its width and height on every side (clipped to the
image), downscaled so that its longer side is at most ``max_side``. Ignored boxes (VOC difficult,
COCO crowd) and boxes whose shorter side is under ``min_size`` pixels are left out; every image is
read once (an unreadable one is reported, skipped and counted).

The folder is owned through ``root/manifest.json`` (:mod:`detect.data.generated`); the parameters
include a digest of both parts' records, so the crops are cut again exactly when the ground truth,
the image files or the settings change.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detect.classes import ClassList, write_class_list
from detect.data.generated import finish_root, prepare_root
from detect.data.images import ImageError, read_image, write_jpeg
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog
from detect.runs import records_digest

log = logging.getLogger(__name__)

__all__ = ["cut_gt_crops", "crop_box", "CROPS_VERSION"]

CROPS_VERSION = 1  # bump when the crops change for the same inputs, so that old manifests no longer match
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def crop_box(box: np.ndarray, width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """Integer pixel window ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of ``box`` (xyxy pixels) grown by
    ``context`` times its width/height on each side and clipped to a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = context * (x2 - x1), context * (y2 - y1)
    x0, y0 = max(0, int(np.floor(x1 - dx))), max(0, int(np.floor(y1 - dy)))
    xe, ye = min(width, int(np.ceil(x2 + dx)) + 1), min(height, int(np.ceil(y2 + dy)) + 1)
    return x0, y0, max(xe, x0 + 1), max(ye, y0 + 1)


def _folder_name(wnid: str) -> str:
    if not wnid or wnid in (".", "..") or wnid.startswith(".") or any(c in wnid for c in "/\\\0"):
        raise ValueError(f"class id {wnid!r} cannot name a class folder; give data.classes=<file> with plain ids "
                         "(see detect/classes.py for the format)")
    return wnid


def _plan(dataset: DetectionDataset, split: str, min_size: float) -> list[tuple[int, list[tuple[int, str]]]]:
    """Per record (position in ``dataset.records``): the boxes to cut as ``(box number, relative path)``."""
    plan = []
    for i, r in enumerate(dataset.records):
        stem = f"{r.index:06d}_{_UNSAFE.sub('_', r.image_id)[-60:]}"
        jobs = [(k, f"{split}/{_folder_name(dataset.classes.wnids[int(label)])}/{stem}_{k:02d}.jpg")
                for k, (box, label, ignore) in enumerate(zip(r.boxes, r.labels, r.ignore))
                if not (ignore or min(box[2] - box[0], box[3] - box[1]) < min_size)]
        if jobs:
            plan.append((i, jobs))
    return plan


def cut_gt_crops(root: str | Path, train: DetectionDataset, val: DetectionDataset, context: float = 0.1,
                 min_size: float = 16.0, max_side: int = 256, jpeg_quality: int = 90) -> ClassList:
    """Write the ground-truth crops of ``train`` and ``val`` under ``root`` (module docstring); returns
    ``train.classes``. ``ValueError`` when the two parts have other classes or a part has no usable box;
    :class:`detect.data.generated.ForeignDataError` when ``root`` holds files it did not write."""
    root = Path(root)
    if context < 0 or min_size < 1 or max_side < 8 or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"bad crop settings: context={context} min_size={min_size} max_side={max_side} "
                         f"jpeg_quality={jpeg_quality}")
    classes = train.classes
    if val.classes != classes:
        raise ValueError(f"{val.name}: its {len(val.classes)} classes differ from those of {train.name} "
                         f"({len(classes)}); the two parts must share one class list")
    plans = {"train": (train, _plan(train, "train", min_size)), "val": (val, _plan(val, "val", min_size))}
    for split, (dataset, plan) in plans.items():
        if not plan:
            raise ValueError(f"{dataset.name}: no ground-truth box to cut for the {split} crops ({len(dataset)} images; "
                             f"boxes under {min_size} pixels and ignored boxes are left out)")
    files = [rel for _, plan in plans.values() for _, jobs in plan for _, rel in jobs] + ["classes.tsv"]
    params = {"kind": "gt_crops", "version": CROPS_VERSION, "context": float(context), "min_size": float(min_size),
              "max_side": int(max_side), "jpeg_quality": int(jpeg_quality),
              "classes": [list(classes.wnids), list(classes.names)],
              "train": records_digest(train.records), "val": records_digest(val.records)}
    if prepare_root(root, params, files, "ground-truth crops"):
        log.info("%s: ground-truth crops up to date", root)
        return classes
    skipped = SkipLog("images or boxes")
    for split, (dataset, plan) in plans.items():
        written = Counter()
        for i, jobs in tqdm(plan, desc=f"ground-truth crops {split}", leave=False, mininterval=2.0):
            written.update(_cut_record(root, dataset.records[i], jobs, context, max_side, jpeg_quality, skipped))
        _report_split(root, dataset, split, written, len(plan), skipped)
    if len(skipped):
        log.warning("%s: %s", root, skipped.summary())
    write_class_list(classes, root / "classes.tsv")
    finish_root(root, params, files)
    return classes


def _cut_record(root: Path, record: DetectionRecord, jobs: list[tuple[int, str]], context: float, max_side: int,
                jpeg_quality: int, skipped: SkipLog) -> Counter:
    """Write the crops ``jobs`` (box number, path below ``root``) of one record (an unreadable image or a box
    outside it: counted in ``skipped``); returns crops written per label."""
    written = Counter()
    try:
        image = read_image(record.path, (record.width, record.height))
    except ImageError as e:
        skipped.add(record.path, f"unreadable image: {e.reason}")
        return written
    height, width = image.shape[:2]
    for k, rel in jobs:
        x0, y0, x1, y1 = crop_box(record.boxes[k], width, height, context)
        if x0 >= width or y0 >= height:
            skipped.add(record.path, f"box outside the image: box {k} {record.boxes[k].tolist()} in {width}x{height}")
            continue
        write_jpeg(root / rel, _downscale(image[y0:y1, x0:x1], max_side), jpeg_quality)
        written[int(record.labels[k])] += 1
    return written


def _downscale(crop: np.ndarray, max_side: int) -> np.ndarray:
    """``crop`` (uint8[H, W, 3]) shrunk (area interpolation) so that its longer side is at most ``max_side``."""
    scale = max_side / max(crop.shape[:2])
    if scale >= 1:
        return crop
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


def _report_split(root: Path, dataset: DetectionDataset, split: str, written: Counter, num_images: int,
                  skipped: SkipLog) -> None:
    """Log what one part's crops cover (``written``: crops per label); ``ValueError`` when none was written."""
    if not written:
        raise ValueError(f"{dataset.name}: no {split} crop could be written; {skipped.summary()}")
    missing = [name for c, name in enumerate(dataset.classes.names) if not written[c]]
    if missing:
        log.warning("%s: no %s crop of %d classes: %s", root, split, len(missing), ", ".join(missing[:10]))
    log.info("%s: %d %s crops of %d classes from %d images", root, sum(written.values()), split,
             len(written), num_images)
