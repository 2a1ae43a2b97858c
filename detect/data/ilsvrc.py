"""ILSVRC DET ground truth: image lists, the blacklist, the XML files in both directory layouts, and
the devkit's cached ground truth ``.mat``.

Layouts (``layout="auto"`` picks the one present under ``root``; ``2015``/``2014`` as int or string):
- ``"2015"`` (ILSVRC 2015+, the synthetic world): ``Data/DET/<split>/<name>.JPEG``,
  ``Annotations/DET/<split>/<name>.xml``, list ``ImageSets/DET/<split>.txt``; names may contain
  sub-folders (``ILSVRC2013_train/n01440764/n01440764_10026``);
- ``"2014"`` (ILSVRC 2013/2014 tarballs): ``ILSVRC2013_DET_<split>/<name>.JPEG`` and
  ``ILSVRC2013_DET_bbox_<split>/<name>.xml`` (train: ``ILSVRC2014_DET_train`` / ``ILSVRC2014_DET_bbox_train``),
  list ``data/det_lists/<split>.txt`` of the devkit (``devkit``, else ``root/devkit`` or ``root/ILSVRC2014_devkit``).

``ground_truth``: the devkit's cache ``ILSVRC2015_det_validation_ground_truth.mat`` (``eval_detection.m``'s
``gt_img_ids`` [N x 1], ``gt_obj_labels`` {1 x N} DET_IDs, ``gt_obj_bboxes`` {1 x N} [4 x n] ``xmin ymin
xmax ymax``, ``gt_obj_thr`` {1 x N}) replaces the XML folder; read with ``mat_dtype=True`` (MATLAB stores
small integers as uint8/uint16, whose arithmetic would wrap).

Boxes are kept as stored (0-based inclusive ints as float32; the evaluator applies the ``+1`` rule).
The record ``index`` is the list line's index column (what submission lines refer to). Blacklist entries
(``<val index> <wnid>``) refer to the official val list; with another list (R-CNN's val1/val2) they are
mapped through the names of the official list.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np

from detect.classes import ClassList, ilsvrc_det_classes, read_class_list
from detect.data.cache import ParsedAnnotation, ParsedFolder, annotation_records, parse_annotation_files
from detect.data.folder import ImageFinder, leaves_folder
from detect.data.records import (DetectionDataset, DetectionRecord, check_id, as_class_list, finish_dataset,
                                 reader_logs, text_lines)
from detect.data.xmlfile import finite_number, parse_annotation_xml
from detect.evaluation import ilsvrc_thresholds

log = logging.getLogger(__name__)

__all__ = ["read_image_list", "read_blacklist", "parse_ilsvrc_xml", "read_devkit_ground_truth", "read_ilsvrc_det"]

LAYOUT_2014_DIRS = {  # split -> (image folder, annotation folder) of the 2013/2014 tarballs
    "val": ("ILSVRC2013_DET_val", "ILSVRC2013_DET_bbox_val"),
    "train": ("ILSVRC2014_DET_train", "ILSVRC2014_DET_bbox_train"),
    "test": ("ILSVRC2013_DET_test", "ILSVRC2013_DET_bbox_test"),
}
PARSER_VERSION = 3  # part of the annotation cache's fingerprint: bump when parse_ilsvrc_xml changes


def _index(token: str, field: str, where: str) -> int:
    """An integer list index (fitting an int64); ``ValueError`` naming ``where`` (file:line) otherwise."""
    try:
        return check_id(int(token), field)
    except ValueError as e:
        why = str(e) if "out of range" in str(e) else f"{field} {token!r} is not an integer"
        raise ValueError(f"{where}: {why}") from None


def read_image_list(path: str | Path) -> list[tuple[str, int]]:
    """Read ``<name> <index>`` lines (``<name>`` alone: index = line number); ``ValueError`` naming the line."""
    entries = []
    for lineno, parts in text_lines(path, "image list", comments=True):
        if len(parts) > 2:
            raise ValueError(f"{path}:{lineno}: expected '<name> <index>', got {' '.join(parts)!r}")
        index = _index(parts[1], "index", f"{path}:{lineno}") if len(parts) == 2 else len(entries) + 1
        if leaves_folder(parts[0]):
            raise ValueError(f"{path}:{lineno}: image name {parts[0]!r} points outside the dataset folder")
        entries.append((parts[0], index))
    return entries


def read_blacklist(path: str | Path, classes: ClassList) -> set[tuple[int, int]]:
    """Read ``<val index> <wnid>`` lines into ``{(val index, 0-based label)}``; unknown wnids raise."""
    out = set()
    for lineno, parts in text_lines(path, "blacklist"):
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<image index> <wnid>', got {' '.join(parts)!r}")
        index = _index(parts[0], "image index", f"{path}:{lineno}")
        if parts[1] not in classes:
            raise ValueError(f"{path}:{lineno}: unknown class {parts[1]!r}")
        out.add((index, classes.index(parts[1])))
    return out


def _int_value(text) -> int | None:
    """An XML number (``"378"``, ``" 378.0 "``) rounded to int; ``None`` when missing or not finite."""
    try:
        return int(text)
    except (TypeError, ValueError):
        value = finite_number(text)
    return None if value is None else int(round(value))


def parse_ilsvrc_xml(path: str | Path, classes: ClassList) -> ParsedAnnotation:
    """One ILSVRC annotation file (:func:`detect.data.xmlfile.parse_annotation_xml`, root ``<annotation>``,
    values rounded to int) as a :class:`ParsedAnnotation`; ``ValueError`` naming the file if unreadable."""
    return ParsedFolder.from_raw([_parse_ilsvrc_raw(path, classes)])[0]


_parse_ilsvrc_raw = partial(parse_annotation_xml, number=_int_value, root_tag="annotation")


def _layout_dirs(root: Path, split: str, layout: str) -> tuple[Path, Path]:
    """(image folder, annotation folder) of ``split`` in ``layout``."""
    if layout == "2015":
        return root / "Data" / "DET" / split, root / "Annotations" / "DET" / split
    if split not in LAYOUT_2014_DIRS:
        raise ValueError(f"split {split!r} unknown in the 2014 layout ({sorted(LAYOUT_2014_DIRS)})")
    return tuple(root / d for d in LAYOUT_2014_DIRS[split])


def _present(root: Path, split: str) -> list[str]:
    """Layouts whose image or annotation folder (or 2015 list folder) for ``split`` exists under root."""
    folders = {"2015": (f"Annotations/DET/{split}", f"Data/DET/{split}", "ImageSets/DET"),
               "2014": LAYOUT_2014_DIRS.get(split, ())}
    return [layout for layout, names in folders.items() if any((root / d).is_dir() for d in names)]


def _choose_layout(root: Path, split: str, layout, need_annotations: bool) -> str:
    """The layout to read (``"2015"`` or ``"2014"``) given ``layout``; ``ValueError`` for another value,
    ``FileNotFoundError`` naming the real cause (no folder, no annotations, wrong layout) in one line."""
    given, layout = layout, str(layout).strip().lower() if layout is not None else "auto"
    if layout not in ("auto", "2015", "2014"):
        raise ValueError(f"layout must be auto, 2015 or 2014 (int or string), got {given!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found (data.root)")
    present = _present(root, split)
    with_xml = [lay for lay in present if _layout_dirs(root, split, lay)[1].is_dir()]
    if layout == "auto":
        if not present:
            have = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())[:8]) or "nothing"
            raise FileNotFoundError(
                f"{root}: no ILSVRC DET {split} data: expected Annotations/DET/{split} (2015+ layout) or "
                f"{LAYOUT_2014_DIRS.get(split, ('', 'ILSVRC2013_DET_bbox_' + split))[1]} (2013/2014 layout); "
                f"the folder has: {have}")
        layout = (with_xml or present)[0]
    xml_dir = _layout_dirs(root, split, layout)[1]
    if need_annotations and not xml_dir.is_dir():
        if with_xml:  # another layout has them (never the chosen one, whose annotation folder is missing)
            raise FileNotFoundError(f"{root}: layout={layout} but {xml_dir.name} does not exist; the folder has the "
                                    f"{with_xml[0]} layout ({_layout_dirs(root, split, with_xml[0])[1]}): "
                                    f"use layout={with_xml[0]} or auto")
        raise FileNotFoundError(f"{xml_dir}: no annotations for split {split!r} ({layout} layout); give the "
                                f"folder that holds them as data.root, or the devkit's ground-truth .mat as ground_truth=")
    return layout


def _default_list(root: Path, split: str, layout: str, devkit) -> Path | None:
    if layout == "2015":
        candidates = [root / "ImageSets" / "DET" / f"{split}.txt"]
    else:
        devkits = [Path(devkit)] if devkit is not None else [root / "devkit", root / "ILSVRC2014_devkit"]
        candidates = [base / "data" / "det_lists" / f"{split}.txt" for base in devkits]
    return next((path for path in candidates if path.is_file()), None)


def _mat_cell(mat: dict, name: str, path: Path, n: int) -> list:
    """The MATLAB cell array ``mat[name]`` {1 x n} (or {n x 1}) as a list of ndarrays; ``ValueError`` naming it."""
    arr = np.asarray(mat[name])
    if arr.dtype != object or arr.size != n:
        raise ValueError(f"{path}: {name} should be a cell array of {n} entries, got {arr.dtype} {arr.shape}")
    return [np.asarray(v, dtype=np.float64) for v in arr.reshape(-1)]


def read_devkit_ground_truth(path: str | Path, classes: ClassList) -> tuple[list[int], list[ParsedAnnotation]]:
    """The devkit's cached ground truth (module docstring) -> (official image indices ``[N]``, one
    :class:`ParsedAnnotation` per image); ``ValueError`` naming the file and variable for anything else."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, mat_dtype=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ground-truth .mat not found") from None
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError ... for files it cannot read
        raise ValueError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    if "gt_obj_img_ids" in mat:
        raise ValueError(f"{path}: a 2013-format cache (gt_obj_img_ids), which eval_detection.m itself discards; "
                         "give the XML folder instead")
    need = ("gt_img_ids", "gt_obj_labels", "gt_obj_bboxes")
    if any(k not in mat for k in need):
        have = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: not the devkit's ground-truth cache: needs {', '.join(need)} (has {', '.join(have) or 'nothing'})")
    ids = np.asarray(mat["gt_img_ids"], dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)) or np.any(ids < 1):
        raise ValueError(f"{path}: gt_img_ids must be positive integers")
    n = len(ids)
    labels, bboxes = (_mat_cell(mat, name, path, n) for name in ("gt_obj_labels", "gt_obj_bboxes"))
    thr = _mat_cell(mat, "gt_obj_thr", path, n) if "gt_obj_thr" in mat else None
    parsed, mismatch = [], 0
    for i, (lab, box) in enumerate(zip(labels, bboxes)):
        lab = lab.reshape(-1)
        if box.size == 0 and lab.size == 0:
            parsed.append(ParsedAnnotation.empty())
            continue
        if box.shape != (4, lab.size):
            raise ValueError(f"{path}: image {int(ids[i])} (entry {i + 1}): gt_obj_bboxes is {box.shape}, "
                             f"expected (4, {lab.size}) for its {lab.size} labels")
        if not np.all(np.isfinite(box)) or np.any(lab != np.round(lab)) or np.any(lab < 1) or np.any(lab > len(classes)):
            raise ValueError(f"{path}: image {int(ids[i])} (entry {i + 1}): labels outside 1..{len(classes)} "
                             "or non-finite boxes")
        boxes = box.T.astype(np.float32)
        if thr is not None and thr[i].size:
            expected = ilsvrc_thresholds(boxes)
            mismatch += int(np.sum(np.abs(thr[i].reshape(-1) - expected) > 1e-6)) if thr[i].size == len(boxes) else len(boxes)
        parsed.append(ParsedAnnotation(None, None, None, boxes, (lab - 1).astype(np.int64), np.zeros(lab.size, bool)))
    if mismatch:
        log.warning("%s: %d stored gt_obj_thr values differ from min(0.5, wh / ((w + 10)(h + 10))); the evaluator "
                    "computes the thresholds from the boxes with evaluate.pixel_tolerance", path, mismatch)
    return [int(v) for v in ids], parsed


def read_ilsvrc_det(root: str | Path, split: str = "val", image_list: str | Path | None = None,
                    blacklist: str | Path | None = None, classes=None, layout: str | int = "auto",
                    missing_annotation: str | None = None, devkit: str | Path | None = None,
                    check_images: bool = True, max_missing_images: float = 0.1,
                    ground_truth: str | Path | None = None, cache_dir: str | Path | None = None,
                    workers: int = 1) -> DetectionDataset:
    """Read an ILSVRC DET split into a :class:`DetectionDataset` (layouts: the module docstring).
    image_list: a ``<name> <index>`` file replacing the split's own list (e.g. R-CNN's val1/val2).
    blacklist: the devkit's ``ILSVRC2014_det_validation_blacklist.txt``; stored as ``{(record index, label)}``.
    classes: ``None`` (``root/classes.tsv`` or the ILSVRC 200), a path, or a ClassList.
    missing_annotation: a listed image without XML: ``"skip"`` (the default, except for
    ``split="test"``) drops it and counts it; ``"empty"`` keeps it without boxes (the test default).
    ground_truth: the devkit's ``.mat`` in place of the XML folder (official list only). Malformed XML
    skips the image, bad objects are dropped (both counted in ``dataset.skipped``); a size missing from
    the XML is read from the image header (counted in ``dataset.warnings``), else left 0 (unknown)."""
    root = Path(root)
    missing_annotation = missing_annotation or ("empty" if split == "test" else "skip")
    if missing_annotation not in ("skip", "empty"):
        raise ValueError(f"missing_annotation must be 'skip' or 'empty', got {missing_annotation!r}")
    tsv = root / "classes.tsv"
    classes = as_class_list(classes, lambda: read_class_list(tsv) if tsv.is_file() else ilsvrc_det_classes())
    layout = _choose_layout(root, split, layout, need_annotations=ground_truth is None and missing_annotation == "skip")
    image_dir, xml_dir = _layout_dirs(root, split, layout)
    official = _default_list(root, split, layout, devkit)
    list_path = Path(image_list) if image_list is not None else official
    if ground_truth is not None:  # names from the list (the index itself where the list is absent or lacks it)
        if image_list is not None and official is not None and Path(image_list).resolve() != official.resolve():
            raise ValueError(f"{ground_truth}: the devkit's ground truth covers the official list; it cannot be "
                             f"combined with image_list={image_list} (give the XML folder instead)")
        ids, parsed = read_devkit_ground_truth(ground_truth, classes)
        name_of = {index: name for name, index in read_image_list(list_path)} if list_path is not None else {}
        entries = [(name_of.get(i, str(i)), i) for i in ids]
        source = lambda name: str(ground_truth)  # noqa: E731 (the file to name in messages)
    elif list_path is None:
        where = "ImageSets/DET" if layout == "2015" else "the devkit's data/det_lists (give devkit=)"
        raise FileNotFoundError(f"{root}: no image list {split}.txt in {where}; give image_list=")
    else:  # the list's entries and their parsed XML (through the cache in cache_dir)
        entries = read_image_list(list_path)
        parsed = parse_annotation_files(xml_dir, [n for n, _ in entries], _parse_ilsvrc_raw, cache_dir,
                                        f"ilsvrc_{layout}_{split}_{list_path.stem}", PARSER_VERSION, classes, workers)
        source = lambda name: os.path.join(str(xml_dir), name + ".xml")  # noqa: E731
    skipped, warnings = reader_logs()
    records = annotation_records(entries, ImageFinder(image_dir, ".JPEG"), parsed, source, skipped, warnings,
                                 check_images, max_missing_images, missing_annotation, ground_truth is None)
    pairs = _blacklist_pairs(blacklist, classes, list_path, official, records)
    dataset = finish_dataset(records, classes, f"ilsvrc_{split}", skipped, warnings, f"{root} {split}",
                             len(entries), lambda r: source(r.image_id), blacklist=pairs, logger=log)
    log.info("%s %s: %d images, %d boxes", root, split, len(records), sum(len(r.boxes) for r in records))
    return dataset


def _blacklist_pairs(blacklist, classes: ClassList, list_path: Path | None, official: Path | None,
                     records: list[DetectionRecord]) -> set[tuple[int, int]]:
    """The blacklist file's ``{(record index, label)}`` (empty without one; mapping: module docstring)."""
    if blacklist is None:
        return set()
    pairs = read_blacklist(blacklist, classes)
    if list_path is None or list_path == official:
        return pairs
    if official is None:
        log.warning("no official list to map the blacklist through; using its indices as they are")
        return pairs
    name_of = {index: name for name, index in read_image_list(official)}
    index_of = {r.image_id: r.index for r in records}
    return {(index_of[name_of[i]], label) for i, label in pairs if name_of.get(i) in index_of}
