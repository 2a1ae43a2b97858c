"""The in-memory form every detection reader produces, and the logs of what a reader skipped or repaired.

Ground-truth boxes, one rule for every reader: an object is dropped (and counted in ``dataset.skipped``)
only when it cannot be a box: its class is unknown, a coordinate is missing or not a finite number, or
it is inverted (``x2 < x1`` or ``y2 < y1``; COCO: width or height <= 0). A box reaching past the image
border, or wholly outside it, is **kept exactly as stored**, as the official evaluators (``eval_detection.m``,
``VOCevaldet.m``, ``COCOeval``) score ground truth, and counted in ``dataset.warnings`` ("box outside
the image"); code that needs boxes inside the image (training targets, crops) clips them itself.

Parameters the readers share: ``check_images``: look for every listed image (by name, any extension
case: :class:`detect.data.folder.ImageFinder`); a missing one is skipped and counted, more than
``max_missing_images`` (a share) missing stops with an error naming the pattern; ``False`` (an
evaluation: no pixels needed) reads the annotations alone. ``cache_dir``: where parsed annotations
are cached (``None``: no cache); ``workers``: processes parsing them on a cold cache.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from detect.classes import ClassList, read_class_list

log = logging.getLogger(__name__)

__all__ = ["DetectionRecord", "DetectionDataset", "SkipLog", "SkippedItem", "warn_outside", "reader_logs",
           "finish_dataset", "MAX_ID", "MAX_PIXELS", "check_id", "check_pixels", "as_class_list", "text_lines",
           "split_names"]

# Bounds on the integers read from annotation files, the limits of the formats they are held in: beyond
# them a value is no id or pixel position, so the entry is reported and skipped, never a crash.
MAX_ID = 2**63 - 1       # ids (COCO image, category and annotation ids, list indices) are held as int64
MAX_PIXELS = 2**31 - 1   # image sides and box coordinates, in pixels (int32; far past any real image)


def check_id(value: int, field: str) -> int:
    """``value`` (an int) when it fits an int64 id, else ``ValueError`` naming ``field``."""
    if not -MAX_ID - 1 <= value <= MAX_ID:
        raise ValueError(f"{field} {value} is out of range (ids are 64-bit integers: |{field}| < 2**63)")
    return value


def check_pixels(value: float, field: str) -> float:
    """``value`` (a finite number) when ``|value| <= MAX_PIXELS``, else ``ValueError`` saying so."""
    if not abs(value) <= MAX_PIXELS:
        raise ValueError(f"{field} {value:g} is out of range (pixel values are at most {MAX_PIXELS})")
    return value


def split_names(value, what: str) -> list[str]:
    """A split name, or a list of them read as one dataset, as a list of strings; an empty list or a repeated
    name (it would read nothing, or every image twice) is a ``ValueError`` naming ``what``."""
    names = [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{what}={names}: give one or more distinct names")
    return names


def as_class_list(classes, default: Callable[[], ClassList]) -> ClassList:
    """A reader's ``classes`` argument as a ClassList: itself, the class list file it names, a list of
    class names given inline (``data.classes=[person,car]``: ids = names), or (``None``) ``default()``."""
    if classes is None:
        return default()
    if isinstance(classes, ClassList):
        return classes
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        names = [str(n).strip() for n in classes]
        if not names or "" in names or len(set(names)) != len(names):
            raise ValueError(f"data.classes {list(classes)}: give distinct, non-empty class names (or a class list file)")
        return ClassList.from_names(names)
    return read_class_list(classes)


def text_lines(path: str | Path, what: str, comments: bool = False) -> list[tuple[int, list[str]]]:
    """``(line number, tokens)`` of each non-blank line of a text file (with ``comments``: not starting with
    ``#``); ``FileNotFoundError`` (unreadable) or ``ValueError`` (not UTF-8) naming the file and ``what``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: cannot read {what} (not UTF-8 text: {e})") from None
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)]
    return [(n, t) for n, t in lines if t and not (comments and t[0].startswith("#"))]


@dataclass
class DetectionRecord:
    """One image and its ground truth.
    boxes: ndarray[N, 4] float32, xyxy pixels (ILSVRC XML values as stored; see the evaluator's +1 rule)
    labels: ndarray[N] int64, 0-based indices into the dataset's ClassList
    ignore: ndarray[N] bool, boxes that neither count nor penalise (VOC ``difficult``, COCO ``iscrowd``)
    index: 1-based position in the dataset's image list (the first column of an ILSVRC submission)
    width, height: pixels; 0 when unknown (an annotation without a size whose image is absent)"""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    index: int = 0

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.ignore)):
            raise ValueError(f"{self.image_id}: boxes, labels and ignore flags differ in length")


class SkippedItem(NamedTuple):
    """What a dataset returns instead of an item it cannot use (``detect.data.images.SampleError``): the
    collate functions hand it on in the batch, so that what DataLoader workers skip reaches the report."""

    file: str
    reason: str


def warn_outside(records: list["DetectionRecord"], warnings: "SkipLog", source) -> int:
    """Add a warning (under ``source(record)``) per box of ``records`` reaching past its image: ``x1 < 0``,
    ``y1 < 0``, ``x2 > width`` or ``y2 > height`` (inclusive-pixel formats may end on ``width``, a common
    1-based slip); none for a record of unknown size (0). Boxes stay as stored. Returns the count."""
    counts = np.array([len(r.boxes) for r in records], dtype=np.int64)
    if not counts.sum():
        return 0
    boxes = np.concatenate([r.boxes for r in records])
    size = np.repeat(np.array([(r.width, r.height) for r in records], dtype=np.float64), counts, axis=0)
    bad = (size > 0).all(1) & ((boxes[:, :2] < 0).any(1) | (boxes[:, 2:] > size).any(1))  # size 0: unknown
    owner = np.repeat(np.arange(len(records)), counts)
    for k in np.flatnonzero(bad).tolist():
        r = records[owner[k]]
        warnings.add(source(r), f"box outside the image: {boxes[k].tolist()} in {r.width}x{r.height} (kept as stored)")
    return int(bad.sum())


class SkipLog:
    """Counts and reports what was skipped (file, reason); a summary is printed at the end of a run.
    ``what`` names the items (``"annotations"``), ``verb`` what happened to them (``"skipped"``). Only the
    first ``log_limit`` entries of each kind (the reason up to its first colon) are logged as warnings, so
    20,000 bad lines do not flood the log; :meth:`summary` counts them all. The ``quiet`` kinds are not
    logged one by one (objects of classes left out of ``data.classes``: a choice, not a fault)."""

    def __init__(self, what: str = "items", verb: str = "skipped", log_limit: int = 20, quiet=()):
        self.what = what
        self.verb = verb
        self.log_limit = log_limit
        self.quiet = frozenset(quiet)
        self.entries: list[tuple[str, str]] = []
        self._logged: Counter = Counter()

    def add(self, file: str | Path, reason: str) -> None:
        self.entries.append((str(file), reason))
        kind = reason.split(":")[0]
        if kind in self.quiet:
            return
        self._logged[kind] += 1
        if self._logged[kind] <= self.log_limit:
            log.warning("%s %s: %s", self.verb, file, reason)
        elif self._logged[kind] == self.log_limit + 1:
            log.warning("%s: more %s %s (%s); not logged one by one, counted in the summary",
                        file, self.what, self.verb, kind)

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self) -> str:
        if not self.entries:
            return f"no {self.what} {self.verb}"
        kinds = Counter(reason.split(":")[0] for _, reason in self.entries)
        lines = [f"{len(self.entries)} {self.what} {self.verb}:"]
        lines += [f"  {n:6d}  {kind}" + (self._names(kind) if kind in self.quiet else "")
                  for kind, n in kinds.most_common()]
        return "\n".join(lines)

    def _names(self, kind: str, most: int = 8) -> str:
        """The class names most often quoted ``('name')`` in the entries of ``kind``, with their counts."""
        names = Counter(m.group(2) for _, reason in self.entries if reason.split(":")[0] == kind
                        for m in [re.search(r"\((['\"])(.*?)\1\)", reason)] if m)
        top = ", ".join(f"{name!r} {n}" for name, n in names.most_common(most))
        return f" (not logged one by one; {top}{', ...' if len(names) > most else ''})" if names else ""


@dataclass
class DetectionDataset:
    """A list of records with their class list; ``blacklist`` holds ignored (record index, label) pairs.
    ``skipped``: images and objects left out (with file and reason); ``warnings``: what was kept but
    repaired or is unusual (an image size read from the image, a box outside the image)."""

    records: list[DetectionRecord]
    classes: ClassList
    name: str = ""
    blacklist: set[tuple[int, int]] = field(default_factory=set)
    skipped: SkipLog = field(default_factory=lambda: reader_logs()[0])
    warnings: SkipLog = field(default_factory=lambda: reader_logs()[1])

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> str:
        """What was skipped and what was kept with a warning, one kind per line."""
        parts = [self.skipped.summary()]
        if len(self.warnings):
            parts.append(self.warnings.summary())
        return "\n".join(parts)

    def __getitem__(self, i: int) -> DetectionRecord:
        return self.records[i]


def reader_logs(quiet=()) -> tuple[SkipLog, SkipLog]:
    """A reader's ``(skipped, warnings)``: annotations skipped (``quiet`` kinds: SkipLog) and kept with a warning."""
    return SkipLog("annotations", quiet=quiet), SkipLog("annotations", verb="kept with a warning")


def finish_dataset(records: list[DetectionRecord], classes: ClassList, name: str, skipped: SkipLog,
                   warnings: SkipLog, where: str, listed: int, source, listed_what: str = "listed images",
                   blacklist: set[tuple[int, int]] | None = None, logger: logging.Logger = log) -> DetectionDataset:
    """A reader's last step: :func:`warn_outside`, then the :class:`DetectionDataset` of ``records``, its
    summary logged to ``logger`` when anything was skipped or repaired. ``where`` (the file, or folder and
    split, read) starts the messages; ``listed`` entries (``listed_what``) of which none became a record
    raise ``ValueError``."""
    warn_outside(records, warnings, source)
    dataset = DetectionDataset(records, classes, name=name, blacklist=set() if blacklist is None else blacklist,
                               skipped=skipped, warnings=warnings)
    if len(skipped) or len(warnings):
        logger.warning("%s: %s", where, dataset.summary())
    if listed and not records:
        raise ValueError(f"{where}: none of the {listed} {listed_what} could be used; {skipped.summary()}")
    return dataset
