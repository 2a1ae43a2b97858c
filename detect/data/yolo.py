"""YOLO (ultralytics) labels: a data yaml, ``images/`` and ``labels/``, one ``.txt`` per image.

The data yaml (``data.yaml``) is read as ultralytics reads it, as data only (``yaml.safe_load``; a
``download`` script in it is never run):
- ``path``: the dataset folder, relative to the yaml's folder (absent: the yaml's folder);
- ``train``, ``val``, ``test``: each a folder of images (searched recursively), a ``.txt`` list of image
  paths (a relative entry: to the list's folder), or a list of those; relative to ``path``
  (``../train/images`` that does not exist is read as ``train/images``, as for Roboflow's exports);
- ``names``: the class names, a list or an ``{index: name}`` dict covering 0..n-1 (``nc``, when
  given, must agree); ``kpt_shape`` (pose sets): that many keypoint values follow each box.
Nothing the yaml names may lie outside the dataset root (``root``, by default the yaml's folder): a
``path``, split entry or list entry that does is refused, naming the file and the key.

Labels (:func:`yolo_label_path`: ``.../images/<sub>/<name>.<ext>`` -> ``.../labels/<sub>/<name>.txt``):
each line is ``class cx cy w h``, normalised to the image size (a segmentation line ``class x1 y1 x2 y2
...`` gives the box around its points). Boxes become float xyxy pixels with the image size from the
image header (EXIF rotation applied, as ultralytics does), so the images are always read.

Faults, as ultralytics treats a label it cannot use (the image is left out), counted in
``dataset.skipped`` with the file: a label file that cannot be read, or with a line that cannot be a box
(wrong number of values, not a finite number, a normalised value outside [0, 1], width or height <= 0,
a class index that is not an integer of ``names``); an image whose header cannot be read; a listed
image that is missing (more than ``max_missing_images`` stop the reader); a label file without an image
(a split read from a folder). An image **without a label file** has no objects (ultralytics' rule) and
is counted in ``dataset.warnings``; an empty label file is a background image, not counted. An edge
that ``cx +- w/2`` puts past the border by at most 1e-3 (values written with a few decimals) is the
border; a box reaching further is kept as stored (:mod:`detect.data.records`). With ``classes`` given,
an object of a class not in it is dropped and counted (``unknown class``), as the VOC reader does.
Boxes are continuous (no ``+1`` pixel: ``conf/data/yolo.yaml`` declares ``rules: coco``). Parsed labels
and image sizes are cached (``cache_dir``), keyed on every label and image file's stat.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from detect.classes import ClassList
from detect.data.cache import ParsedFolder, cache_key, parse_files
from detect.data.folder import ImageFinder, image_size, list_images
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog, as_class_list, finish_dataset, reader_logs
from detect.data.xmlfile import finite_number

log = logging.getLogger(__name__)

__all__ = ["YoloData", "read_yolo_yaml", "yolo_label_path", "parse_yolo_label", "read_yolo"]

PARSER_VERSION = 2  # part of the cache's fingerprint: bump when parse_yolo_label or the size rule changes
NO_LABEL = "no label file: read as an image without objects"


@dataclass(frozen=True)
class YoloData:
    """A parsed data yaml. ``root``: the folder nothing may leave; ``base``: its ``path`` (what split
    entries are relative to); ``keypoints``: values after the box on each line (0 without ``kpt_shape``)."""

    yaml_file: Path
    root: Path
    base: Path
    names: tuple[str, ...]
    splits: dict
    keypoints: int = 0


def _normal(path: str | Path) -> Path:
    """The absolute, lexically normalised path (``..`` folded; links are not followed)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _within(yaml_file: Path, root: Path, key: str, value: str, relative_to: Path) -> Path:
    """``value`` resolved against ``relative_to``; ``ValueError`` naming the file and key when outside ``root``."""
    path = _normal(relative_to / os.path.expanduser(value))  # an absolute value replaces relative_to
    if not path.is_relative_to(root):
        raise ValueError(f"{yaml_file}: {key} {value!r} leads outside the dataset folder {root} (refused; "
                         "give data.root=<the dataset folder> if that folder is the dataset)")
    return path


def _names(yaml_file: Path, data: dict) -> tuple[str, ...]:
    """The class names of the yaml (``names`` list or ``{index: name}`` dict); ``ValueError`` when unusable."""
    names = data.get("names")
    if isinstance(names, dict):
        keys = sorted(names, key=str)
        if not all(type(k) is int for k in keys) or sorted(keys) != list(range(len(keys))):
            raise ValueError(f"{yaml_file}: names: the keys of a names dict must be the indices 0..{len(keys) - 1}, "
                             f"got {keys[:5]}")
        names = [names[k] for k in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{yaml_file}: names must be a non-empty list or an {{index: name}} dict of class names")
    if any(isinstance(n, (dict, list, bool)) or n is None or str(n).strip() == "" for n in names):
        raise ValueError(f"{yaml_file}: names: every class name must be a non-empty string")
    names = tuple(str(n).strip() for n in names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{yaml_file}: names: {twice[0]!r} appears more than once; class names must be unique")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise ValueError(f"{yaml_file}: nc is {nc!r} but names has {len(names)} classes")
    return names


def _keypoints(yaml_file: Path, data: dict) -> int:
    """Values per line after the box: the product of ``kpt_shape`` (0 without it)."""
    shape = data.get("kpt_shape")
    if shape is None:
        return 0
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"{yaml_file}: kpt_shape {shape!r} is not a list of positive integers")
    return int(np.prod(shape))


def read_yolo_yaml(yaml_file: str | Path | None = None, root: str | Path | None = None) -> YoloData:
    """Read a data yaml (``<root>/data.yaml`` when ``yaml_file`` is ``None``); ``FileNotFoundError`` /
    ``ValueError`` naming the yaml (and the key) when it is unreadable, unusable or leaves ``root``."""
    if yaml_file is None and root is None:
        raise ValueError("data=yolo: give data.root=<folder with data.yaml> or data.yaml_file=<the data yaml>")
    yaml_file = Path(yaml_file) if yaml_file is not None else Path(root) / "data.yaml"
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise FileNotFoundError(f"{yaml_file}: cannot read the data yaml ({e.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{yaml_file}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{yaml_file}: not a YOLO data yaml (a mapping with names, train, val)")
    root = _normal(root if root is not None else yaml_file.parent)
    base = root
    if data.get("path") not in (None, ""):
        if not isinstance(data["path"], str):
            raise ValueError(f"{yaml_file}: path {data['path']!r} is not a string")
        base = _within(yaml_file, root, "path", data["path"], _normal(yaml_file.parent))
    splits = {k: data.get(k) for k in ("train", "val", "test")}
    return YoloData(yaml_file, root, base, _names(yaml_file, data), splits, _keypoints(yaml_file, data))


def _list_file(y: YoloData, key: str, path: Path) -> list[Path]:
    """The image paths of a ``.txt`` list (relative entries: to the list's folder), each inside the root."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FileNotFoundError(f"{y.yaml_file}: {key}: cannot read the image list {path} ({e})") from None
    return [_within(path, y.root, f"line {lineno} ({key} list)", line.strip(), path.parent)
            for lineno, line in enumerate(lines, 1) if line.strip()]


def _split_path(y: YoloData, split: str, entry: str) -> Path:
    """A split entry resolved against ``path`` (``../x`` also tried as ``x``: module docstring); refused
    when what it names lies outside the root."""
    if entry.startswith("../"):
        path = _normal(y.base / entry)
        if not (path.is_relative_to(y.root) and path.exists()):
            again = _normal(y.base / entry[3:])
            if again.is_relative_to(y.root) and again.exists():
                return again
    return _within(y.yaml_file, y.root, split, entry, y.base)


def split_images(y: YoloData, split: str) -> tuple[list[Path], bool]:
    """The image paths of ``split`` and whether any came from a list file (then a path may name a missing
    image); ``ValueError`` / ``FileNotFoundError`` naming the yaml and key when the split is unusable."""
    value = y.splits.get(split)
    if value in (None, "", []):
        given = [k for k, v in y.splits.items() if v not in (None, "", [])]
        raise ValueError(f"{y.yaml_file}: no {split!r} entry (it has {given}); choose another data.train_split / "
                         "data.test_split")
    entries = value if isinstance(value, list) else [value]
    images, listed = [], False
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"{y.yaml_file}: {split}: {entry!r} is not a path")
        path = _split_path(y, split, entry)
        if path.is_dir():
            images += list_images(path)
        elif path.is_file() and path.suffix.lower() == ".txt":
            images += _list_file(y, split, path)
            listed = True
        else:
            raise FileNotFoundError(f"{y.yaml_file}: {split}: {entry!r} ({path}) is neither a folder of images "
                                    "nor a .txt list of images")
    return images, listed


def yolo_label_path(image: str | Path, root: str | Path) -> Path:
    """The label file of ``image`` (inside ``root``): the last ``images`` folder of its path below
    ``root`` replaced by ``labels``, the extension by ``.txt`` (beside the image when there is none)."""
    rel = Path(os.path.relpath(image, root)).parts
    last = max((k for k, p in enumerate(rel[:-1]) if p == "images"), default=None)
    if last is not None:
        rel = (*rel[:last], "labels", *rel[last + 1:])
    return Path(root, *rel).with_suffix(".txt")


ROUNDING = 1e-3  # how far cx +- w/2 of values written with 3 or more decimals can pass the image's edge


def _line_box(tokens: list[str], num_classes: int, keypoints: int) -> tuple[int, list[float]]:
    """``(class index, normalised [x1, y1, x2, y2])`` of one label line; ``ValueError`` saying why not."""
    n = len(tokens)
    if not (n == 5 or (keypoints and n == 5 + keypoints) or (not keypoints and n >= 7 and n % 2 == 1)):
        expected = f"5 or {5 + keypoints}" if keypoints else "5 (class cx cy w h), or an odd number >= 7 (a polygon)"
        raise ValueError(f"bad line: {n} values, expected {expected}")
    values = [finite_number(t) for t in tokens]
    if None in values:
        raise ValueError(f"bad value: {tokens[values.index(None)]!r} is not a finite number")
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise ValueError(f"class index out of range: {tokens[0]} (names has {num_classes} classes: 0..{num_classes - 1})")
    coords = values[1:5] if n == 5 or keypoints else values[1:]
    if not all(0.0 <= v <= 1.0 for v in coords):
        raise ValueError(f"out-of-range value: {[t for t, v in zip(tokens[1:], coords) if not 0 <= v <= 1][0]} "
                         "(normalised coordinates lie in [0, 1])")
    if n == 5 or keypoints:
        cx, cy, w, h = coords
        if not (w > 0 and h > 0):
            raise ValueError(f"degenerate box: width {tokens[3]}, height {tokens[4]}")
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        return int(cls), [min(max(v, 0.0), 1.0) if -ROUNDING <= v <= 1.0 + ROUNDING else v for v in box]
    xs, ys = coords[0::2], coords[1::2]
    box = [min(xs), min(ys), max(xs), max(ys)]
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError("degenerate box: the polygon's points span no area")
    return int(cls), box


def parse_yolo_label(label: str | Path, image: str | Path, num_classes: int, keypoints: int = 0) -> tuple:
    """One image and its label file as a raw tuple ``(width, height, boxes [[x1, y1, x2, y2], ...] float
    pixels, labels [class index of names], flags [False, ...], problems)`` (``problems``: :data:`NO_LABEL`
    when there is no label file). ``ValueError`` (``"<kind>: <detail>"``) when the image header or the
    label file cannot be read, or a line cannot be a box (the first such line named, the others counted)."""
    try:
        width, height = image_size(image)
    except ValueError as e:
        raise ValueError(f"unreadable image: {e}") from None
    try:
        text = Path(label).read_text(encoding="utf-8")
    except FileNotFoundError:
        return width, height, [], [], [], [NO_LABEL]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable label: {e}") from None
    boxes, labels, bad = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cls, (x1, y1, x2, y2) = _line_box(tokens, num_classes, keypoints)
        except ValueError as e:
            kind, _, detail = str(e).partition(": ")
            bad.append(f"{kind}: line {lineno}: {detail}")
            continue
        boxes.append([x1 * width, y1 * height, x2 * width, y2 * height])
        labels.append(cls)
    if bad:
        more = f"; {len(bad) - 1} more bad line(s)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more} (the image is left out)")
    return width, height, boxes, labels, [False] * len(labels), []


def _class_map(y: YoloData, classes) -> tuple[ClassList, np.ndarray]:
    """The dataset's classes (``names``, or ``classes``: a ClassList or a class list file, by name or id)
    and ``int64[len(names)]``: each yaml class's label in them (-1: not among them)."""
    class_list = as_class_list(classes, lambda: ClassList.from_names(y.names))
    known = set(y.names)
    absent = [w for w, n in zip(class_list.wnids, class_list.names) if w not in known and n not in known]
    if absent:
        raise ValueError(f"data.classes: {absent[0]!r} is not among the names of {y.yaml_file} ({list(y.names)[:8]})")
    return class_list, np.array([class_list.index(n) if n in class_list else -1 for n in y.names], dtype=np.int64)


def _parse_split(y: YoloData, split: str, images: list[Path], labels: list[Path],
                 cache_dir: str | Path | None) -> ParsedFolder:
    """:func:`parse_yolo_label` of every (image, label) pair, through the cache in ``cache_dir``."""
    ids = [str(p) for p in images]
    key = cache_key(cache_dir, f"yolo_{split}", [str(_normal(y.yaml_file)), str(y.root), split],
                    [str(p) for p in labels] + ids, ids, [PARSER_VERSION, len(y.names), y.keypoints])
    return parse_files(lambda pair: parse_yolo_label(*pair, len(y.names), y.keypoints), list(zip(labels, images)),
                       key, f"{y.yaml_file} {split}")


def _find_listed(y: YoloData, images: list[Path], max_missing: float, skipped: SkipLog) -> list[tuple[int, Path]]:
    """``(1-based list position, image file)`` of the listed images found; missing ones counted in
    ``skipped`` (too many stop the reader)."""
    finder = ImageFinder(y.root, ".jpg")
    found = finder.find_all([os.path.relpath(p, y.root) for p in images], True, max_missing)
    for listed, path in zip(images, found):
        if path is None:
            skipped.add(listed, "missing image")
    return [(index, path) for index, path in enumerate(found, 1) if path is not None]


def _orphan_labels(y: YoloData, labels: list[Path], skipped: SkipLog) -> None:
    """Count in ``skipped`` the ``.txt`` files of the ``labels/`` folders used that no image of the split has."""
    wanted = {str(p) for p in labels}
    folders = {p.parent for p in labels if "labels" in p.relative_to(y.root).parts[:-1]}
    for folder in sorted(folders):
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".txt") and e.is_file())
        except OSError:
            continue
        for name in names:
            if str(folder / name) not in wanted:
                skipped.add(folder / name, "missing image: a label file without an image")


def _unique(images: list[Path], skipped: SkipLog) -> list[Path]:
    """``images`` without repeats (a list naming an image twice, a folder listed twice); repeats counted."""
    seen = set()
    for p in images:
        if p in seen:
            skipped.add(p, "duplicate image: listed more than once in the split (kept once)")
        seen.add(p)
    return list(dict.fromkeys(images))


def _records(y: YoloData, entries: list[tuple[int, Path]], labels: list[Path], parsed: ParsedFolder,
             remap: np.ndarray, skipped: SkipLog, warnings: SkipLog) -> list[DetectionRecord]:
    """One record per usable image (``image_id``: its path below the root); labels mapped by ``remap``."""
    records = []
    for (index, image), label, p in zip(entries, labels, parsed):
        if p.error is not None:
            skipped.add(image if p.error.startswith("unreadable image") else label, p.error)
            continue
        for problem in p.problems:
            warnings.add(label, problem)
        mapped = remap[p.labels]
        for k in np.flatnonzero(mapped < 0).tolist():
            skipped.add(label, f"unknown class: object {k + 1} ({y.names[p.labels[k]]!r}) is not in data.classes")
        keep = mapped >= 0
        records.append(DetectionRecord(Path(os.path.relpath(image, y.root)).as_posix(), image, p.width, p.height,
                                       p.boxes[keep], mapped[keep], p.flags[keep], index))
    return records


def read_yolo(yaml_file: str | Path | None = None, split: str = "val", root: str | Path | None = None,
              classes=None, max_missing_images: float = 0.1, cache_dir: str | Path | None = None) -> DetectionDataset:
    """Read split ``split`` (``train``/``val``/``test``) of a YOLO data yaml (module docstring;
    ``yaml_file``, ``root``: :func:`read_yolo_yaml`). classes: ``None`` (the yaml's ``names``), or a
    ClassList or class list file restricting or reordering them (by name). Records: ``image_id`` = the
    image path below ``root``, ``index`` = 1-based position in the split (folders: sorted paths),
    ``ignore`` all False. ``ValueError`` naming the yaml when no image of the split has a label file."""
    y = read_yolo_yaml(yaml_file, root)
    class_list, remap = _class_map(y, classes)
    skipped, warnings = reader_logs(quiet=["unknown class"] if classes is not None else [])
    images, listed = split_images(y, split)
    images = _unique(images, skipped)
    entries = _find_listed(y, images, max_missing_images, skipped) if listed else list(enumerate(images, 1))
    labels = [yolo_label_path(p, y.root) for _, p in entries]
    if not listed:
        _orphan_labels(y, labels, skipped)
    parsed = _parse_split(y, split, [p for _, p in entries], labels, cache_dir)
    unlabelled = sum(NO_LABEL in p.problems for p in parsed)
    if entries and unlabelled == len(entries):
        raise ValueError(f"{y.yaml_file}: {split}: none of the {len(entries)} images has a label file (looked for "
                         f"e.g. {labels[0]}: the images/ folder of a path becomes labels/, the extension .txt)")
    if unlabelled:
        log.warning("%s %s: %d of %d images have no label file: read as images without objects", y.yaml_file,
                    split, unlabelled, len(entries))
    records = _records(y, entries, labels, parsed, remap, skipped, warnings)
    return finish_dataset(records, class_list, f"yolo_{split}", skipped, warnings, f"{y.yaml_file} {split}",
                          len(images), lambda r: yolo_label_path(r.path, y.root), "images", logger=log)
