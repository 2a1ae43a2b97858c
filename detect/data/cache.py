"""A cache of parsed annotation files (one XML per image: ILSVRC, VOC; a YOLO label and its image's
size), so that re-reading a validation set of 20,121 files costs one ``stat`` per file instead of a
parse (:func:`parse_files`); and of class lists found in annotations (:func:`cached_class_list`).

One ``.npz`` per annotation folder and reader (:func:`cache_key`), written atomically into a folder the
caller chooses (the data configs: ``${work_dir}/cache``, never the dataset folder), holding a
fingerprint of everything the parse depends on: the parser version, the class list, the listed names
and each annotation file's size, modification and change times (nanoseconds) and inode. Another
fingerprint (a file edited, added or removed, another list) or an unreadable cache means parsing again
and overwriting it. Only parse results are cached; which images exist is looked up on every read.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from detect.classes import ClassList
from detect.data.folder import ImageFinder, size_from_image
from detect.data.records import DetectionRecord, SkipLog
from detect.io import atomic_write_json, digest, stat_signatures
from detect.runs import write_npz

log = logging.getLogger(__name__)

__all__ = ["ParsedAnnotation", "ParsedFolder", "cache_key", "cached_class_list", "parse_files",
           "parse_annotation_files", "annotation_records"]


@dataclass
class ParsedAnnotation:
    """One annotation file's parse. ``error``: why the file is unusable (``None``: parsed; ``"missing"``:
    no such file). ``width/height``: ``None`` without a usable size. ``boxes: float32[N, 4]``, ``labels:
    int64[N]``, ``flags: bool[N]`` (VOC ``difficult``), ``problems``: one line per dropped object."""

    error: str | None = None
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    flags: np.ndarray | None = None
    problems: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> "ParsedAnnotation":
        """An annotation without size or objects (``boxes: float32[0, 4]``, ``labels: int64[0]``, ``flags: bool[0]``)."""
        return cls(None, None, None, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))


COLUMNS = {"width": np.int64, "height": np.int64, "counts": np.int64, "boxes": np.float32, "labels": np.int64,
           "flags": bool}  # ParsedFolder's arrays and their dtypes


class ParsedFolder:
    """The parse results of ``n`` files, one array per field for all files (20,121 files cost a few numpy
    calls, not 60,000); ``folder[i]`` is file ``i``'s :class:`ParsedAnnotation` (views into the columns).
    width, height: ``int64[n]`` (-1: no usable size); counts: ``int64[n]`` objects per file;
    boxes: ``float32[T, 4]``, labels: ``int64[T]``, flags: ``bool[T]``; errors and problems: dicts by file."""

    def __init__(self, width, height, counts, boxes, labels, flags, errors: dict, problems: dict):
        self.width, self.height, self.counts = width, height, counts
        self.boxes, self.labels, self.flags = boxes.reshape(-1, 4), labels, flags
        self.errors, self.problems = errors, problems
        ends = np.cumsum(counts).tolist()
        self._starts, self._ends = [0] + ends[:-1], ends
        self._width, self._height = width.tolist(), height.tolist()

    @classmethod
    def concat(cls, parts: list["ParsedFolder"]) -> "ParsedFolder":
        """The parts' files one after the other (worker processes hand back columns: a fraction of the
        cost of pickling per-file tuples at ILSVRC's 456k files)."""
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).tolist()
        errors = {k + off: v for p, off in zip(parts, offsets) for k, v in p.errors.items()}
        problems = {k + off: v for p, off in zip(parts, offsets) for k, v in p.problems.items()}
        return cls(*(np.concatenate([getattr(p, key) for p in parts]) for key in COLUMNS), errors, problems)

    @classmethod
    def from_raw(cls, items: list) -> "ParsedFolder":
        """From per-file error strings or parsers' raw tuples ``(width, height, boxes [[x1, y1, x2, y2], ...],
        labels, flags, problems)``."""
        width, height, counts, boxes, labels, flags = [], [], [], [], [], []
        errors, problems = {}, {}
        for i, item in enumerate(items):
            if isinstance(item, str):  # an error: a file without size or objects
                errors[i], item = item, (None, None, [], [], [], ())
            w, h, b, lab, fl, prob = item
            width.append(-1 if w is None else w)
            height.append(-1 if h is None else h)
            counts.append(len(b))
            boxes += b
            labels += lab
            flags += fl
            if prob:
                problems[i] = tuple(prob)
        columns = (width, height, counts, boxes, labels, flags)
        return cls(*(np.array(c, dtype) for c, dtype in zip(columns, COLUMNS.values())), errors, problems)

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
            write_npz(path, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
                             **{key: getattr(self, key) for key in COLUMNS}})
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
                arrays = [z[key] for key in COLUMNS]
            errors = {int(k): str(v) for k, v in meta["errors"].items()}
            problems = {int(k): tuple(map(str, v)) for k, v in meta["problems"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable annotation cache (%s); parsing again", path, e)
            return None
        counts = arrays[2]
        total = int(counts.sum()) if counts.ndim == 1 else -1
        if [a.shape for a in arrays] != [(num,)] * 3 + [(total, 4), (total,), (total,)]:
            log.warning("%s: inconsistent annotation cache; parsing again", path)
            return None
        log.info("%s: %d parsed annotations from the cache", path, num)
        return cls(*(a.astype(dtype) for a, dtype in zip(arrays, COLUMNS.values())), errors, problems)


def cache_key(cache_dir: str | Path | None, tag: str, identity: list, files: list[str], names: list[str],
              extra: list) -> tuple[Path, str] | None:
    """``(<cache_dir>/<tag>_<16 hex digits of identity>.npz, fingerprint)``, ``None`` without ``cache_dir``;
    ``identity``: JSON-able (folder, list, classes); fingerprint: :func:`detect.io.digest` of ``extra``,
    ``names`` and :func:`detect.io.stat_signatures` of ``files``."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"{tag}_{digest(identity, 16)}.npz", digest([extra, list(names), stat_signatures(files)])


def cached_class_list(key: tuple[Path, str] | None, make: Callable[[], ClassList]) -> ClassList:
    """``make()``, kept as JSON beside the cache file of ``key`` (``None``: not kept), made again when the
    fingerprint differs."""
    if key is None:
        return make()
    cache, fingerprint = key[0].with_suffix(".json"), key[1]
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("fingerprint") == fingerprint:
            return ClassList.from_dict(stored.get("classes"), str(cache))
    except (OSError, ValueError, AttributeError):
        pass
    classes = make()
    try:
        atomic_write_json(cache, {"fingerprint": fingerprint, "classes": classes.to_dict()})
    except OSError as e:
        log.warning("%s: cannot write the class cache (%s)", cache, e)
    return classes


MIN_FILES_PER_WORKER = 2000  # below this many files per worker process, parsing in this process is faster


def parse_files(parse: Callable, items: list, key: tuple[Path, str] | None, what: str,
                workers: int = 1) -> ParsedFolder:
    """``parse(item)`` (a raw tuple, see :meth:`ParsedFolder.from_raw`) of every item, through the cache
    ``key`` (``None``: none). An item ``parse`` refuses (``ValueError``, or ``OverflowError``: a number no
    parser bounded) gets ``error``, the exception's text. ``what``: named in the progress bar. ``workers``:
    processes parsing a cold cache, each given at least ``MIN_FILES_PER_WORKER`` items (``parse`` must then
    be picklable); the result is the same for any number."""
    parsed = ParsedFolder.load(*key, len(items)) if key is not None else None
    if parsed is not None:
        return parsed
    workers = max(1, min(int(workers), len(items) // MIN_FILES_PER_WORKER))
    if workers > 1:
        log.info("parsing %d annotation files in %s with %d processes", len(items), what, workers)
        parsed = _parse_in_workers(parse, items, workers)
    else:
        from tqdm import tqdm  # only when parsing (a warm cache needs no progress bar)

        parsed = _parse_each(parse, tqdm(items, desc=f"reading {what}", leave=False, mininterval=2.0))
    if key is not None:
        parsed.save(*key)
    return parsed


def _parse_each(parse: Callable, items) -> ParsedFolder:
    """Parse ``items`` one by one, in this process or in a worker (which hands back the columns)."""
    out = []
    for item in items:
        try:
            out.append(parse(item))
        except (ValueError, OverflowError) as e:
            out.append(str(e))
    return ParsedFolder.from_raw(out)


def _parse_in_workers(parse: Callable, items: list, workers: int) -> ParsedFolder:
    """Parse in ``workers`` processes (forked where the platform allows: nothing to import again)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    bounds = np.linspace(0, len(items), workers * 4 + 1).astype(int).tolist()  # 4 chunks per worker: even finish
    chunks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return ParsedFolder.concat(list(pool.map(_parse_each, [parse] * len(chunks), chunks)))


def _parse_xml(parse_raw, classes, path: str) -> tuple:
    """``parse_raw(path, classes)``; ``ValueError("missing")`` when it fails and the file does not exist."""
    try:
        return parse_raw(path, classes)
    except (ValueError, OverflowError):
        if not os.path.isfile(path):
            raise ValueError("missing") from None
        raise


def parse_annotation_files(folder: str | Path, names: list[str], parse_raw, cache_dir: str | Path | None, tag: str,
                           version: int, classes, workers: int = 1) -> ParsedFolder:
    """:func:`parse_files` of ``parse_raw(folder/<name>.xml, classes)`` for every name (unusable: ``error``
    ``"missing"`` or the ``ValueError`` text); the parser's ``version`` and ``classes`` are in the fingerprint."""
    folder = str(folder)
    files = [os.path.join(folder, name + ".xml") for name in names]
    wnids = list(classes.wnids)
    key = cache_key(cache_dir, tag, [str(Path(folder).resolve()), wnids], files, names, [version, wnids])
    return parse_files(partial(_parse_xml, parse_raw, classes), files, key, folder, workers)


def annotation_records(entries: list[tuple[str, int]], finder: ImageFinder, parsed, source, skipped: SkipLog,
                       warnings: SkipLog, check_images: bool, max_missing_images: float,
                       missing_annotation: str = "skip", sizes_from_images: bool = True) -> list[DetectionRecord]:
    """One :class:`DetectionRecord` (``image_id`` = name, ``index``) per listed ``(name, index)`` whose image
    (``finder.find_all``: as every reader; not found and not checked: ``finder.default_path``) and
    :class:`ParsedAnnotation` can be used. A missing annotation is skipped (``missing_annotation="empty"``:
    kept without boxes), an unreadable one skipped, each dropped object counted: in ``skipped``, under
    ``source(name)``. A missing size is read from the image header (``sizes_from_images``, counted in
    ``warnings``), else left 0 (unknown)."""
    images = finder.find_all([name for name, _ in entries], check_images, max_missing_images)
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
