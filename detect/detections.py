"""Detections in memory and on disk: the official ILSVRC submission format and COCO-results JSON.

``Detections`` holds one row per detected box; the ILSVRC DET_ID of its 0-based label is ``label + 1``.

Files:
- ILSVRC submission: text lines ``<image_index> <DET_ID> <confidence> <xmin> <ymin> <xmax> <ymax>``.
- COCO results: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``, ids mapped to the
  dataset's records and labels by :func:`coco_image_ids` and :func:`coco_category_ids`.

A detections file is the user's output, not corrupt input: whatever parses is kept as written and
scored as the official code scores it (inverted, zero-area and off-image boxes included; see
``detect.evaluation``). What cannot be parsed, or names an image or class that does not exist, is
reported with file and line (or entry) number, counted in a ``SkipLog`` and skipped.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detect.data.records import DetectionDataset, SkipLog
from detect.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["Detections", "coco_category_ids", "coco_image_ids", "read_coco_results", "read_detections",
           "read_ilsvrc_submission", "write_coco_results", "write_ilsvrc_submission"]


@dataclass
class Detections:
    """Detected boxes over a dataset.

    image_index: ndarray[M] int64, 1-based into the dataset's image list (``DetectionRecord.index``)
    labels: ndarray[M] int64, 0-based class labels
    scores: ndarray[M] float32, confidences (higher is more confident)
    boxes: ndarray[M, 4] float32, xyxy pixels"""

    image_index: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self):
        self.image_index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.image_index)
        if not (len(self.labels) == len(self.scores) == len(self.boxes) == n):
            raise ValueError(f"Detections: lengths differ (image_index {n}, labels {len(self.labels)}, "
                             f"scores {len(self.scores)}, boxes {len(self.boxes)})")

    def __len__(self) -> int:
        return len(self.image_index)

    def _columns(self) -> tuple:
        return self.image_index, self.labels, self.scores, self.boxes

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 4)))

    @classmethod
    def for_image(cls, image_index: int, labels, scores, boxes) -> "Detections":
        """Detections of one image: ``labels [K]``, ``scores [K]``, ``boxes [K, 4]``."""
        labels = np.asarray(labels).reshape(-1)
        return cls(np.full(len(labels), image_index), labels, scores, boxes)

    @classmethod
    def concat(cls, items) -> "Detections":
        """Concatenate an iterable of ``Detections`` (in order)."""
        columns = list(zip(*(d._columns() for d in items)))
        return cls(*(np.concatenate(c) for c in columns)) if columns else cls.empty()

    def select(self, which) -> "Detections":
        """Rows chosen by a boolean mask ``[M]`` or an index array ``[K]`` (order kept)."""
        return Detections(*(c[which] for c in self._columns()))


def write_ilsvrc_submission(path: str | Path, dets: Detections) -> None:
    """Write ``dets`` as an ILSVRC submission file, atomically; floats with 9 significant digits, so
    float32 values read back exactly."""
    with atomic_open(path, "w", encoding="ascii") as f:
        f.write("".join(f"{i} {c + 1} {s:.9g} {b[0]:.9g} {b[1]:.9g} {b[2]:.9g} {b[3]:.9g}\n"
                        for i, c, s, b in zip(*(col.tolist() for col in dets._columns()))))


def _parse_line(line: str, num_classes: int | None) -> tuple[int, int, float, list[float]]:
    """One submission line -> (image_index, label, score, box); ``ValueError`` says what is wrong (the
    reason logged for the line). Inverted and zero-area boxes are valid lines."""
    parts = line.split()
    if len(parts) != 7:
        raise ValueError(f"malformed line: expected 7 fields, got {len(parts)}")
    try:
        index, det_id = int(parts[0]), int(parts[1])
        values = [float(p) for p in parts[2:]]
    except ValueError:
        raise ValueError("malformed line: non-numeric field (or a non-integer image index / DET_ID)") from None
    if index < 1:
        raise ValueError(f"malformed line: image index {index} < 1")
    if det_id < 1 or (num_classes is not None and det_id > num_classes):
        raise ValueError(f"unknown class: DET_ID {det_id} outside 1..{num_classes if num_classes is not None else 'N'}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("malformed line: non-finite confidence or coordinate")
    return index, det_id - 1, values[0], values[1:]


# byte tables: what the fast path allows (digits, signs, point, exponent, inf/nan, spaces), spaces, integer signs
_NUMBER_BYTES = np.isin(np.arange(256), list(b"0123456789+-.eEinfatyINFATY \t\r\n"))
_SPACE_BYTES = np.isin(np.arange(256), list(b" \t\r\n"))
_NOT_INT_BYTES = ~np.isin(np.arange(256), list(b"0123456789+-"))


def _tokenise_fast(text: str, bad: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The common case in a few numpy passes: a file of plain numbers. Returns (line numbers
    ``int64[K]``, numbers ``float64[K, 7]``, integer-looking index and DET_ID ``bool[K]``) of the lines
    with 7 fields, the others put in ``bad``; ``None`` when the file needs the line-by-line path (a
    character other than those of numbers, a token that does not parse), which gives the same result."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    b = np.frombuffer(data, np.uint8)
    if not len(b) or not _NUMBER_BYTES[b].all():
        return None
    cr = np.flatnonzero(b == 13)
    if len(cr) and (cr[-1] == len(b) - 1 or np.any(b[cr + 1] != 10)):
        return None  # a lone carriage return is a line break to str.splitlines: leave it to the slow path
    space = _SPACE_BYTES[b]
    starts = np.flatnonzero(~space & np.concatenate([[True], space[:-1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(data, dtype=np.float64, sep=" ")
    if len(values) != len(starts):
        return None
    line = np.searchsorted(np.flatnonzero(b == 10), starts)  # 0-based line of each token
    counts = np.bincount(line)
    for n in np.flatnonzero((counts != 0) & (counts != 7)).tolist():
        bad[n + 1] = None  # not 7 fields: reported with _parse_line's message
    # tokens holding a character other than digits and signs ('.', 'e', letters): not integers
    not_int = np.zeros(len(starts), bool)
    not_int[np.searchsorted(starts, np.flatnonzero(_NOT_INT_BYTES[b] & ~space), side="right") - 1] = True
    keep = counts[line] == 7
    values, line, not_int = values[keep], line[keep], not_int[keep]
    integer = ~not_int.reshape(-1, 7)[:, :2].any(axis=1)
    return line[::7] + 1, values.reshape(-1, 7), integer


def _tokenise_slow(text: str, num_classes: int | None, bad: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line by line with ``int()``/``float()``: (line numbers, numbers ``float64[K, 7]``, all True);
    lines that fail go into ``bad`` with the reason."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.split():
            continue
        try:
            i, c, sc, box = _parse_line(line, num_classes)
            out.append((n, i, c + 1, sc, *box))
        except ValueError as e:
            bad[n] = str(e)
    arr = np.array(out, dtype=np.float64).reshape(-1, 8)
    return arr[:, 0].astype(np.int64), arr[:, 1:], np.ones(len(arr), bool)


def _read_text(path: Path, errors: str = "strict") -> str:
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read detections ({e.strerror})") from e


def read_ilsvrc_submission(path: str | Path, num_classes: int | None = None, skipped: SkipLog | None = None,
                           known_images=None) -> Detections:
    """Read an ILSVRC submission file as ``eval_detection.m`` reads it.

    Every line of 7 numeric fields (integer image index >= 1 and DET_ID, finite numbers, in Python's
    ``int()``/``float()`` syntax) is kept as written (module text). Lines that cannot be parsed, whose
    DET_ID is outside ``1..num_classes``, or whose image index is not in ``known_images`` (an iterable
    of indices; ``None``: any) are skipped as the module text says, as ``file:line``; blank lines are
    ignored. ``FileNotFoundError`` names a missing file. A file of plain numbers is read in a few numpy
    passes, any other line by line, with the same result.
    """
    path = Path(path)
    skipped = skipped if skipped is not None else SkipLog("detection lines")
    text = _read_text(path, errors="replace")
    bad: dict[int, str | None] = {}  # line number -> reason (None: ask _parse_line)
    fast = _tokenise_fast(text, bad)  # fills ``bad`` only when it returns numbers
    lineno, values, integer = fast if fast is not None else _tokenise_slow(text, num_classes, bad)
    ids = values[:, :2]
    ok = integer & np.isfinite(values).all(axis=1) & (ids[:, 0] >= 1) & (ids[:, 1] >= 1)
    if num_classes is not None:
        ok &= ids[:, 1] <= num_classes
    ints = np.where(ok[:, None], ids, 0).astype(np.int64)
    bad.update(dict.fromkeys(lineno[~ok].tolist()))
    if known_images is not None:
        known = np.isin(ints[:, 0], np.fromiter(known_images, dtype=np.int64))
        for n, i in zip(lineno[ok & ~known].tolist(), ints[ok & ~known, 0].tolist()):
            bad[n] = f"unknown image: index {i} is not in the dataset (not listed, or its annotation was skipped)"
        ok &= known
    lines = text.splitlines() if bad else []
    for n in sorted(bad):
        try:
            reason = bad[n] or (_parse_line(lines[n - 1], num_classes) and "malformed line")
        except ValueError as e:
            reason = str(e)
        skipped.add(f"{path}:{n}", reason)
    return _kept(path, Detections(ints[ok, 0], ints[ok, 1] - 1, values[ok, 2], values[ok, 3:]), skipped)


def _kept(path: Path, dets: Detections, skipped: SkipLog) -> Detections:
    """``dets``, after logging the count of boxes inverted or of zero width or height, and of ``skipped``."""
    b = dets.boxes
    inverted = int(((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).sum())
    flat = int(((b[:, 2] == b[:, 0]) | (b[:, 3] == b[:, 1])).sum())
    if inverted or flat:
        log.warning("%s: %d detections with xmax < xmin or ymax < ymin and %d with zero width or height: kept "
                    "and scored as the official code scores them (under COCO rules they match nothing; under the "
                    "ILSVRC/VOC +1 rule a box inverted by a pixel or more matches nothing)", path, inverted, flat)
    if len(skipped):
        log.warning("%s: %s", path, skipped.summary())
    return dets


def _integer_ids(values, otherwise) -> np.ndarray:
    """``int64`` ids: ``int(v)`` of each of ``values`` when every one is an integer, else ``otherwise``."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        return np.asarray(otherwise, dtype=np.int64)


def coco_image_ids(dataset: DetectionDataset) -> np.ndarray:
    """COCO ``image_id`` of each record, ``int64[N]``: ``int(record.image_id)`` when every record's id is an
    integer (COCO datasets), else ``record.index``."""
    return _integer_ids([r.image_id for r in dataset.records], [r.index for r in dataset.records])


def coco_category_ids(dataset: DetectionDataset) -> np.ndarray:
    """COCO ``category_id`` of each label, ``int64[C]``: ``int(wnid)`` when every wnid is an integer (COCO
    datasets: wnids are the category ids), else ``label + 1``."""
    return _integer_ids(dataset.classes.wnids, np.arange(1, len(dataset.classes) + 1))


def write_coco_results(path: str | Path, dets: Detections, dataset: DetectionDataset) -> None:
    """Write ``dets`` as a COCO-results JSON list, atomically. Unknown image indices raise ``ValueError``."""
    index_to_id = dict(zip((r.index for r in dataset.records), coco_image_ids(dataset).tolist()))
    cats = coco_category_ids(dataset).tolist()
    out = []
    for i, c, s, b in zip(*(col.tolist() for col in dets._columns())):
        if i not in index_to_id:
            raise ValueError(f"{path}: image index {i} is not in dataset {dataset.name!r}")
        out.append({"image_id": index_to_id[i], "category_id": cats[c], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    atomic_write_json(path, out, indent=None)


def read_coco_results(path: str | Path, dataset: DetectionDataset, skipped: SkipLog | None = None) -> Detections:
    """Read COCO-results JSON against ``dataset``, as pycocotools' ``loadRes`` reads it.

    Each entry must be an object with an integer ``image_id`` and ``category_id`` (an integral float such
    as ``3.0`` is the same id to pycocotools; a string, a bool or a list is not), a finite number
    ``score`` and a ``bbox`` list of 4 finite numbers (a negative or zero width or height included).
    Entries that fail those checks, or name an image or category not in ``dataset``, are skipped as the
    module text says, as ``file: entry k``.
    """
    from detect.data.coco import as_bbox, as_int, as_number

    path = Path(path)
    skipped = skipped if skipped is not None else SkipLog("detection entries")
    try:
        entries = json.loads(_read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of results, got {type(entries).__name__}")
    id_to_index = dict(zip(coco_image_ids(dataset).tolist(), (r.index for r in dataset.records)))
    cat_to_label = {c: i for i, c in enumerate(coco_category_ids(dataset).tolist())}
    rows = []  # (image index, label, score, x1, y1, x2, y2)
    for k, e in enumerate(entries):
        try:
            if not isinstance(e, dict):
                raise ValueError(f"entry is {type(e).__name__}, not an object")
            missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in e]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            image, cat = as_int(e["image_id"], "image_id"), as_int(e["category_id"], "category_id")
            score, (x, y, w, h) = as_number(e["score"], "score"), as_bbox(e["bbox"])
        except ValueError as err:
            skipped.add(f"{path}: entry {k}", f"malformed entry: {err}")
            continue
        if image not in id_to_index:
            skipped.add(f"{path}: entry {k}", f"unknown image: image_id {image}")
        elif cat not in cat_to_label:
            skipped.add(f"{path}: entry {k}", f"unknown class: category_id {cat}")
        else:
            rows.append((id_to_index[image], cat_to_label[cat], score, x, y, x + w, y + h))
    rows = np.array(rows, dtype=np.float64).reshape(-1, 7)
    return _kept(path, Detections(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3:]), skipped)


def read_detections(path: str | Path, dataset: DetectionDataset, format: str | None = None,
                    skipped: SkipLog | None = None) -> Detections:
    """Read detections in the format named (``ilsvrc | coco``) or implied by the extension (``.json``
    COCO; ``.txt``, ``.csv`` or none ILSVRC); ``ValueError`` for another format or extension."""
    path = Path(path)
    if format and format not in ("ilsvrc", "coco"):
        raise ValueError(f"unknown detections format {format!r} (ilsvrc | coco)")
    format = format or {".json": "coco", ".txt": "ilsvrc", ".csv": "ilsvrc", "": "ilsvrc"}.get(path.suffix.lower())
    if format is None:
        raise ValueError(f"{path}: cannot tell the detections format from the extension; pass format=ilsvrc|coco")
    if format == "coco":
        return read_coco_results(path, dataset, skipped)
    return read_ilsvrc_submission(path, len(dataset.classes), skipped, known_images=[r.index for r in dataset.records])
