"""PASCAL VOC annotations: ``VOCdevkit/VOC20xx/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``, or,
where there is no such list, split folders holding each image's XML beside it (a Roboflow "Pascal VOC"
export: ``train/``, ``valid/``, ``test/``; labelImg's default).

VOC XML coordinates are 1-based inclusive; they become 0-based (minus 1) here, the ILSVRC convention
the evaluator expects (its ``+1`` width rule then matches the VOC devkit). A ``<size>`` missing, ``0x0``
or not a number (common in labelling tools' exports) is read from the image header and the image kept
(counted in ``dataset.warnings``); the VOC devkit never uses the size, so the evaluation is unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from functools import partial
from pathlib import Path

from detect.classes import ClassList
from detect.data.cache import annotation_records, cache_key, cached_class_list, parse_annotation_files
from detect.data.folder import ImageFinder, leaves_folder
from detect.data.records import (DetectionDataset, as_class_list, finish_dataset, reader_logs, split_names,
                                 text_lines)
from detect.data.xmlfile import finite_number, parse_annotation_xml, read_xml_root

log = logging.getLogger(__name__)

__all__ = ["VOC_CLASSES", "discover_voc_classes", "read_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
PARSER_VERSION = 4  # part of the annotation cache's fingerprint: bump when _parse_voc_raw changes
DISCOVERY_VERSION = 2  # part of the class-name cache's fingerprint


def _read_split(root: Path, split: str) -> tuple[Path, list[str], Path, Path]:
    """``(what lists the split, image names, annotation folder, image folder)`` of ``split`` in either
    layout; a list name leading outside the dataset is refused, a split in neither layout is a
    ``FileNotFoundError`` saying what was looked for and which folders hold annotation files."""
    list_path = root / "ImageSets" / "Main" / f"{split}.txt"
    folder = root / split
    if not list_path.exists() and not leaves_folder(split) and folder.is_dir():
        names = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
        if names:
            return folder, names, folder, folder
    if not list_path.exists():
        here = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.xml"))) if root.is_dir() else []
        hint = (f"; folders with annotation XML here: {', '.join(here)} (name them with data.train_split=... "
                "data.test_split=...)" if here else "")
        raise FileNotFoundError(f"{root}: split {split!r} not found: neither {list_path} (the VOC layout) nor a "
                                f"folder {folder} with each image's annotation XML beside it{hint}")
    names = [parts[0] for _, parts in text_lines(list_path, "VOC image list")]
    outside = [n for n in names if leaves_folder(n)]
    if outside:
        raise ValueError(f"{list_path}: image name {outside[0]!r} points outside the dataset folder")
    return list_path, names, root / "Annotations", root / "JPEGImages"


def discover_voc_classes(root: str | Path, split, cache_dir: str | Path | None = None) -> ClassList:
    """The classes of a VOC-layout folder of one's own: the distinct ``<object><name>`` values of the
    annotations of ``split`` (a name or a list), sorted (for the real VOC sets exactly :data:`VOC_CLASSES`),
    ids = names; unreadable files are left to the reader to report. Cached in ``cache_dir``. ``ValueError``
    naming the list when no object name is found."""
    root, splits = Path(root), split_names(split, "VOC split")
    found_in = [_read_split(root, s) for s in splits]
    files = [os.path.join(xml_dir, name + ".xml") for _, names, xml_dir, _ in found_in for name in names]
    where = ", ".join(str(listing) for listing, *_ in found_in)

    def find() -> ClassList:
        found = set()
        for path in files:
            try:
                root_node = read_xml_root(path)
            except (OSError, ValueError):
                continue
            found.update(n for n in ((obj.findtext("name") or "").strip() for obj in root_node.iterfind("object")) if n)
        if not found:
            raise ValueError(f"{where}: no object names in the annotations of the {len(files)} listed images; "
                             "the classes cannot be taken from them (give data.classes=<class list file>)")
        log.info("%s %s: %d classes found in the annotations", root, "+".join(splits), len(found))
        return ClassList.from_names(sorted(found))

    return cached_class_list(cache_key(cache_dir, f"voc_{'+'.join(splits)}_classes",
                                       [str(xml_dir.resolve()) for _, _, xml_dir, _ in found_in], files,
                                       [n for _, names, _, _ in found_in for n in names],
                                       ["voc class names", DISCOVERY_VERSION]), find)


_parse_voc_raw = partial(parse_annotation_xml, number=finite_number, offset=1, difficult=True)


def read_voc(root: str | Path, split="test", classes=None, use_difficult: bool = True,
             check_images: bool = True, max_missing_images: float = 0.1,
             cache_dir: str | Path | None = None, workers: int = 1, classes_from=None) -> DetectionDataset:
    """Read ``root`` (a ``VOCdevkit/VOC20xx`` folder, or one of split folders) split ``split`` into a
    :class:`DetectionDataset`. ``split``: a name, or a list of names read as one dataset (a Roboflow
    export's ``[train, valid]``: image ids become ``<split>/<name>``, unique across them).
    classes: ``None``, a class list file, or a ClassList; ``None``: the classes found in the annotations of
    split(s) ``classes_from`` (:func:`discover_voc_classes`; give every split of a dataset its training
    split, so that the labels agree), or the 20 VOC classes without ``classes_from``.
    use_difficult: keep ``difficult`` objects as ``ignore=True`` (VOC evaluation: neither counted nor
    penalised); ``False`` drops them. Record ``index`` = 1-based position in the split list(s). Images
    are looked for in ``JPEGImages`` (beside the XML in a split folder). Unreadable annotations skip the
    image, bad objects are dropped (both counted in ``dataset.skipped``)."""
    root = Path(root)
    class_list = as_class_list(classes, lambda: ClassList.from_names(VOC_CLASSES) if classes_from is None else
                               discover_voc_classes(root, classes_from, cache_dir))
    splits = split_names(split, "VOC split")
    skipped, warnings = reader_logs(quiet=["unknown class"] if classes is not None else [])
    records, xml_of, listed = [], {}, 0
    for name_of_split in splits:
        _, names, xml_dir, image_dir = _read_split(root, name_of_split)
        if names and not xml_dir.is_dir():
            raise FileNotFoundError(f"{xml_dir}: no annotation folder (is data.root the VOC20xx folder?)")
        parsed = parse_annotation_files(xml_dir, names, _parse_voc_raw, cache_dir, f"voc_{name_of_split}",
                                        PARSER_VERSION, class_list, workers)
        source = lambda name: os.path.join(xml_dir, name + ".xml")  # noqa: E731 (the annotation file to name)
        part = annotation_records([(name, listed + i) for i, name in enumerate(names, 1)], ImageFinder(image_dir),
                                  parsed, source, skipped, warnings, check_images, max_missing_images)
        prefix = f"{name_of_split}/" if len(splits) > 1 else ""
        for r in part:
            xml_of[prefix + r.image_id] = source(r.image_id)
            keep = slice(None) if use_difficult else ~r.ignore  # use_difficult=False drops the difficult objects
            records.append(dataclasses.replace(r, image_id=prefix + r.image_id, boxes=r.boxes[keep],
                                               labels=r.labels[keep], ignore=r.ignore[keep]))
        listed += len(names)
    joined = "+".join(splits)
    return finish_dataset(records, class_list, f"voc_{joined}", skipped, warnings, f"{root} {joined}", listed,
                          lambda r: xml_of[r.image_id], logger=log)
