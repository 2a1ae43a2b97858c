"""A cache of parsed annotation files (one XML per image: ILSVRC, VOC), so that re-reading a validation
set of 20,121 files costs one ``stat`` per file instead of a parse.

The cache is one ``.npz`` per annotation folder and reader (its name from the folder's absolute path,
the list and the class list), written atomically into a folder the caller chooses: the data configs
pass ``${work_dir}/cache``, never the dataset folder. It holds a fingerprint of everything the parse
depends on: the parser version, the class list, the listed names and each annotation file's size,
modification and change times (nanoseconds) and inode. A fingerprint that differs (a file edited,
added or removed, another list) means the annotations are parsed again and the cache overwritten; a
cache that cannot be read is ignored (and rewritten). The cache holds parse results only; which
images exist is looked up on every read.

:func:`annotation_records` turns parsed annotations and found images into records by the rules both
XML readers share (what a missing image, a missing or unreadable annotation, a dropped object or a
missing size leads to).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detect.data.folder import ImageFinder, size_from_image
from detect.data.records import MAX_PIXELS, DetectionRecord, SkipLog
from detect.io import digest, stat_signatures
from detect.runs import write_npz

log = logging.getLogger(__name__)

__all__ = ["ParsedAnnotation", "ParsedFolder", "annotation_fingerprint", "cache_path", "parse_annotation_files",
           "annotation_records"]


@dataclass
class ParsedAnnotation:
    """One annotation file's parse. ``error``: why the file is unusable (``None`` when parsed; the text
    ``"missing"`` when the file does not exist). ``width/height``: ``None`` when the file has no usable
    size. ``boxes: float32[N, 4]``, ``labels: int64[N]``, ``flags: bool[N]`` (VOC ``difficult``),
    ``problems``: one line per dropped object."""

    error: str | None = None
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    flags: np.ndarray | None = None
    problems: tuple[str, ...] = ()

    @classmethod
    def from_raw(cls, raw) -> "ParsedAnnotation":
        """From a parser's raw tuple ``(width, height, boxes [[x1, y1, x2, y2], ...], labels, flags, problems)``."""
        return ParsedFolder.from_raw([raw])[0]

    @classmethod
    def empty(cls) -> "ParsedAnnotation":
        """An annotation without size or objects (``boxes: float32[0, 4]``, ``labels: int64[0]``, ``flags: bool[0]``)."""
        return cls(None, None, None, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))


class ParsedFolder:
    """The parse results of ``n`` files, column by column (one array per field for all files, so that
    20,121 files cost a few numpy calls, not 60,000); ``folder[i]`` is file ``i``'s
    :class:`ParsedAnnotation` (views into the columns).

    width, height: ``int64[n]`` (-1: no usable size); counts: ``int64[n]`` objects per file;
    boxes: ``float32[T, 4]``, labels: ``int64[T]``, flags: ``bool[T]``; errors and problems: dicts by file.
    """

    def __init__(self, width, height, counts, boxes, labels, flags, errors: dict, problems: dict):
        self.width, self.height, self.counts = width, height, counts
        self.boxes, self.labels, self.flags = boxes, labels, flags
        self.errors, self.problems = errors, problems
        ends = np.cumsum(counts).tolist()
        self._starts, self._ends = [0] + ends[:-1], ends
        self._width, self._height = width.tolist(), height.tolist()

    @classmethod
    def concat(cls, parts: list["ParsedFolder"]) -> "ParsedFolder":
        """The parts' files one after the other (worker processes hand back columns: a fraction of the
        cost of pickling per-file tuples at ILSVRC's 456k files)."""
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).tolist()
        cat = lambda key: np.concatenate([getattr(p, key) for p in parts])  # noqa: E731
        errors = {k + off: v for p, off in zip(parts, offsets) for k, v in p.errors.items()}
        problems = {k + off: v for p, off in zip(parts, offsets) for k, v in p.problems.items()}
        return cls(cat("width"), cat("height"), cat("counts"), cat("boxes").reshape(-1, 4), cat("labels"), cat("flags"),
                   errors, problems)

    @classmethod
    def from_raw(cls, items: list) -> "ParsedFolder":
        """From per-file raw tuples (see :meth:`ParsedAnnotation.from_raw`) or error strings."""
        width, height, counts, boxes, labels, flags = [], [], [], [], [], []
        errors, problems = {}, {}
        for i, item in enumerate(items):
            if isinstance(item, str):
                errors[i] = item
                width.append(-1), height.append(-1), counts.append(0)
                continue
            w, h, b, lab, fl, prob = item
            width.append(-1 if w is None else w)
            height.append(-1 if h is None else h)
            counts.append(len(b))
            boxes += b
            labels += lab
            flags += fl
            if prob:
                problems[i] = tuple(prob)
        return cls(np.array(width, np.int64), np.array(height, np.int64), np.array(counts, np.int64),
                   np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), np.array(flags, bool),
                   errors, problems)

    def __len__(self) -> int:
        return len(self.counts)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> ParsedAnnotation:
        if i in self.errors:
            return ParsedAnnotation(error=self.errors[i])
        s, e, w, h = self._starts[i], self._ends[i], self._width[i], self._height[i]
        return ParsedAnnotation(None, None if w < 0 else w, None if h < 0 else h, self.boxes[s:e], self.labels[s:e],
                                self.flags[s:e], self.problems.get(i, ()))

    def save(self, path: Path, fingerprint: str) -> None:
        """Write atomically as ``.npz`` (no pickles); an unwritable cache folder is logged, not raised."""
        meta = {"fingerprint": fingerprint, "errors": self.errors, "problems": {k: list(v) for k, v in self.problems.items()}}
        try:
            write_npz(path, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), "width": self.width,
                             "height": self.height, "counts": self.counts, "boxes": self.boxes, "labels": self.labels,
                             "flags": self.flags})
        except OSError as e:
            log.warning("%s: cannot write the annotation cache (%s); the next run parses again", path, e)

    @classmethod
    def load(cls, path: Path, fingerprint: str, num: int) -> "ParsedFolder | None":
        """The cached results when ``path`` holds ``fingerprint`` for ``num`` files, else ``None`` (logged)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                if meta.get("fingerprint") != fingerprint:
                    log.info("%s: annotations changed since the cache was written; parsing again", path)
                    return None
                arrays = [z[k] for k in ("width", "height", "counts", "boxes", "labels", "flags")]
            errors = {int(k): str(v) for k, v in meta["errors"].items()}
            problems = {int(k): tuple(map(str, v)) for k, v in meta["problems"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable annotation cache (%s); parsing again", path, e)
            return None
        width, height, counts, boxes, labels, flags = arrays
        total = int(counts.sum()) if counts.ndim == 1 else -1
        if (len(counts) != num or len(width) != num or len(height) != num or boxes.shape != (total, 4)
                or len(labels) != total or len(flags) != total):
            log.warning("%s: inconsistent annotation cache; parsing again", path)
            return None
        log.info("%s: %d parsed annotations from the cache", path, num)
        return cls(width.astype(np.int64), height.astype(np.int64), counts.astype(np.int64),
                   boxes.astype(np.float32), labels.astype(np.int64), flags.astype(bool), errors, problems)


def annotation_fingerprint(files: list[str], names: list[str], extra: list) -> str:
    """:func:`detect.io.digest` of ``extra``, the names and :func:`detect.io.stat_signatures` of ``files``."""
    return digest([extra, list(names), stat_signatures(files)])


def cache_path(cache_dir: str | Path, tag: str, identity: list) -> Path:
    """``<cache_dir>/<tag>_<16 hex digits of identity>.npz``; ``identity``: JSON-able (folder, list, classes)."""
    return Path(cache_dir) / f"{tag}_{digest(identity, 16)}.npz"


MIN_FILES_PER_WORKER = 2000  # below this many files per worker process, parsing in this process is faster


def _parse_files(parse_raw, files: list[str], classes, progress: str | None = None) -> list:
    """Parse ``files`` one by one (in this process or in a worker): raw tuples or error strings."""
    items = []
    if progress:
        from tqdm import tqdm  # only when parsing (a warm cache needs no progress bar)

        files = tqdm(files, desc=progress, leave=False, mininterval=2.0)
    for path in files:
        try:
            items.append(_within_bounds(parse_raw(path, classes), path))
        except (ValueError, OverflowError) as e:  # OverflowError: a number no parser bounded (never a crash)
            items.append("missing" if not os.path.isfile(path) else str(e))
    return items


def _within_bounds(raw: tuple, path: str) -> tuple:
    """``raw`` when its size fits the int64 columns, else ``ValueError`` naming the file (the parsers
    bound sizes and coordinates themselves; this keeps one file from failing a whole folder's columns)."""
    for value in raw[:2]:
        if value is not None and not 0 <= value <= MAX_PIXELS:
            raise ValueError(f"{path}: image size {value} out of range (at most {MAX_PIXELS} pixels)")
    return raw


def _parse_in_workers(parse_raw, files: list[str], classes, workers: int) -> ParsedFolder:
    """Parse in ``workers`` processes (forked where the platform allows: nothing to import again)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    bounds = np.linspace(0, len(files), workers * 4 + 1).astype(int).tolist()  # 4 chunks per worker: even finish
    chunks = [files[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return ParsedFolder.concat(list(pool.map(_parse_columns, [parse_raw] * len(chunks), chunks,
                                                 [classes] * len(chunks))))


def _parse_columns(parse_raw, files: list[str], classes) -> ParsedFolder:
    """:func:`_parse_files` in a worker process, handed back as columns."""
    return ParsedFolder.from_raw(_parse_files(parse_raw, files, classes))


def parse_annotation_files(folder: str | Path, names: list[str], parse_raw, cache_dir: str | Path | None, tag: str,
                           version: int, classes, workers: int = 1) -> ParsedFolder:
    """``parse_raw(folder/<name>.xml, classes)`` (a raw tuple, see :meth:`ParsedAnnotation.from_raw`) for
    every name, through the cache in ``cache_dir`` when given. A file that cannot be parsed gets
    ``error`` (its ``ValueError`` text, or ``"missing"``). ``version`` (the parser's) and ``classes``
    are part of the fingerprint. ``workers``: processes that parse when the cache is cold (used when
    each gets at least ``MIN_FILES_PER_WORKER`` files); the result is the same for any number."""
    folder = str(folder)
    files = [os.path.join(folder, name + ".xml") for name in names]
    cache = fingerprint = None
    if cache_dir is not None:
        wnids = list(classes.wnids)
        cache = cache_path(cache_dir, tag, [str(Path(folder).resolve()), wnids])
        fingerprint = annotation_fingerprint(files, names, [version, wnids])
        parsed = ParsedFolder.load(cache, fingerprint, len(names))
        if parsed is not None:
            return parsed
    workers = max(1, min(int(workers), len(files) // MIN_FILES_PER_WORKER))
    if workers > 1:
        log.info("parsing %d annotation files in %s with %d processes", len(files), folder, workers)
        parsed = _parse_in_workers(parse_raw, files, classes, workers)
    else:
        parsed = ParsedFolder.from_raw(_parse_files(parse_raw, files, classes, progress=f"reading {folder}"))
    if cache is not None:
        parsed.save(cache, fingerprint)
    return parsed


def annotation_records(entries: list[tuple[str, int]], images: list[Path | None], parsed, finder: ImageFinder,
                       source, skipped: SkipLog, warnings: SkipLog, check_images: bool,
                       missing_annotation: str = "skip", sizes_from_images: bool = True) -> list[DetectionRecord]:
    """One :class:`DetectionRecord` (``image_id`` = name, ``index``) per listed ``(name, index)`` whose image
    and annotation can be used. ``images``: each entry's image as found (``None``: not found: skipped as
    "missing image" with ``check_images``, else recorded at ``finder.default_path``); ``parsed``: each
    entry's :class:`ParsedAnnotation`. A missing annotation is skipped (``missing_annotation="empty"``:
    kept without boxes), an unreadable one skipped, each dropped object counted: in ``skipped``, under
    ``source(name)`` (the annotation file to name). A missing size is read from the image header
    (``sizes_from_images``, counted in ``warnings``), else left 0 (unknown)."""
    records = []
    for (name, index), image_path, p in zip(entries, images, parsed):
        if image_path is None:
            image_path = finder.default_path(name)
            if check_images:
                skipped.add(image_path, "missing image")
                continue
        if p.error == "missing" and missing_annotation == "empty":
            p = ParsedAnnotation.empty()
        elif p.error is not None:
            reason = "missing annotation" if p.error == "missing" else f"unreadable annotation: {p.error}"
            skipped.add(source(name), reason)
            continue
        for problem in p.problems:
            skipped.add(source(name), problem)
        width, height = p.width, p.height
        if width is None:  # no valid <size> (the devkit's .mat has no sizes at all: left 0)
            width, height = (size_from_image(image_path, source(name), "no valid <size> in the annotation", warnings)
                             if sizes_from_images else (0, 0))
        records.append(DetectionRecord(name, image_path, width, height, p.boxes, p.labels, p.flags, index))
    return records
