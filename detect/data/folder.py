"""Image files and folders as a dataset without ground truth (for running a detector on photos)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from detect.classes import ClassList
from detect.data.images import IMAGE_EXTENSIONS
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog

log = logging.getLogger(__name__)

__all__ = ["list_images", "read_image_folder"]

EXIF_ORIENTATION = 0x0112  # the EXIF tag of the orientation


def list_images(paths) -> list[Path]:
    """Image files among ``paths`` (files, or folders searched recursively), by extension, sorted per
    argument, without duplicates. A path that does not exist raises ``FileNotFoundError`` naming it."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out, seen = [], set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                out.append(f)
    return out


def read_image_folder(paths, classes: ClassList | None = None) -> DetectionDataset:
    """Records without boxes for the images under ``paths`` (see :func:`list_images`).

    Width/height come from the image headers (EXIF rotation applied, as :func:`read_image` does);
    unreadable files are skipped and counted. ``image_id`` is the file's path as found, ``index`` 1-based.
    """
    skipped = SkipLog("images")
    records = []
    for f in list_images(paths):
        try:
            with Image.open(f) as im:
                width, height = im.size
                if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                    width, height = height, width
        except (OSError, ValueError) as e:
            skipped.add(f, f"unreadable image: {e}")
            continue
        records.append(DetectionRecord(str(f), f, width, height, np.zeros((0, 4), np.float32),
                                       np.zeros(0, np.int64), np.zeros(0, bool), len(records) + 1))
    if len(skipped):
        log.warning("%s", skipped.summary())
    return DetectionDataset(records, classes or ClassList((), ()), name="folder", skipped=skipped)
