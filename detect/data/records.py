"""The in-memory form every detection reader produces, and the log of what a reader had to skip."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from detect.classes import ClassList

log = logging.getLogger(__name__)

__all__ = ["DetectionRecord", "DetectionDataset", "SkipLog", "SkippedItem"]


@dataclass
class DetectionRecord:
    """One image and its ground truth.

    boxes: ndarray[N, 4] float32, xyxy pixels (ILSVRC XML values as stored; see the evaluator's +1 rule)
    labels: ndarray[N] int64, 0-based indices into the dataset's ClassList
    ignore: ndarray[N] bool, boxes that neither count nor penalise (VOC ``difficult``, COCO ``iscrowd``)
    index: 1-based position in the dataset's image list (the first column of an ILSVRC submission)
    """

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
    """What a dataset returns instead of an item it cannot use (see ``detect.data.images.SampleError``):
    the collate functions drop it and hand it on in the batch, so that what DataLoader worker
    processes skip reaches the trainer's report."""

    file: str
    reason: str


class SkipLog:
    """Counts and reports what was skipped (file, reason); a summary is printed at the end of a run."""

    def __init__(self, what: str = "items"):
        self.what = what
        self.entries: list[tuple[str, str]] = []

    def add(self, file: str | Path, reason: str) -> None:
        self.entries.append((str(file), reason))
        log.warning("skipped %s: %s", file, reason)

    def extend(self, other: "SkipLog") -> None:
        self.entries.extend(other.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self) -> str:
        if not self.entries:
            return f"no {self.what} skipped"
        kinds = Counter(reason.split(":")[0] for _, reason in self.entries)
        lines = [f"{len(self.entries)} {self.what} skipped:"]
        lines += [f"  {n:6d}  {kind}" for kind, n in kinds.most_common()]
        return "\n".join(lines)


@dataclass
class DetectionDataset:
    """A list of records with their class list; ``blacklist`` holds ignored (record index, label) pairs."""

    records: list[DetectionRecord]
    classes: ClassList
    name: str = ""
    blacklist: set[tuple[int, int]] = field(default_factory=set)
    skipped: SkipLog = field(default_factory=lambda: SkipLog("annotations"))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> DetectionRecord:
        return self.records[i]
