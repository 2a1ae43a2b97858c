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
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detect.io import atomic_open

log = logging.getLogger(__name__)

__all__ = ["ParsedAnnotation", "annotation_fingerprint", "cache_path", "load_parsed", "parse_annotation_files", "save_parsed"]


@dataclass
class ParsedAnnotation:
    """One annotation file's parse. ``error``: why the file is unusable (``None`` when parsed; the text
    ``"missing"`` when the file does not exist). ``width/height``: ``None`` when the file has no usable
    size. ``boxes: float32[N, 4]``, ``labels: int64[N]``, ``flags: bool[N]`` (VOC ``difficult``),
    ``problems``: one line per dropped object, ``notes``: one line per object kept with a warning."""

    error: str | None = None
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    flags: np.ndarray | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def annotation_fingerprint(files: list[Path], names: list[str], extra: list) -> str:
    """sha256 over ``extra``, the names and each file's (size, mtime_ns, ctime_ns, inode) (-1 when
    missing); the inode catches a file replaced by an atomic rename within the clock's resolution."""
    stats = []
    for f in files:
        try:
            st = os.stat(f)
            stats.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError:
            stats.append((-1, -1, -1, -1))
    blob = json.dumps([extra, names, stats], separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def cache_path(cache_dir: str | Path, tag: str, identity: list) -> Path:
    """``<cache_dir>/<tag>_<16 hex digits of identity>.npz``; ``identity``: JSON-able (folder, list, classes)."""
    key = hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{tag}_{key}.npz"


def save_parsed(path: Path, fingerprint: str, parsed: list[ParsedAnnotation]) -> None:
    """Write the parse results atomically; an unwritable cache folder is logged, not raised."""
    counts = np.array([0 if p.boxes is None else len(p.boxes) for p in parsed], np.int64)
    cat = (lambda xs, shape, dtype: np.concatenate(xs).astype(dtype, copy=False) if xs else np.zeros(shape, dtype))
    meta = {"fingerprint": fingerprint,
            "errors": {i: p.error for i, p in enumerate(parsed) if p.error is not None},
            "problems": {i: list(p.problems) for i, p in enumerate(parsed) if p.problems},
            "notes": {i: list(p.notes) for i, p in enumerate(parsed) if p.notes}}
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
        "width": np.array([-1 if p.width is None else p.width for p in parsed], np.int64),
        "height": np.array([-1 if p.height is None else p.height for p in parsed], np.int64),
        "counts": counts,
        "boxes": cat([p.boxes for p in parsed if p.boxes is not None], (0, 4), np.float32).reshape(-1, 4),
        "labels": cat([p.labels for p in parsed if p.labels is not None], (0,), np.int64),
        "flags": cat([p.flags for p in parsed if p.flags is not None], (0,), bool),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        with atomic_open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        log.warning("%s: cannot write the annotation cache (%s); the next run parses again", path, e)


def load_parsed(path: Path, fingerprint: str, num: int) -> list[ParsedAnnotation] | None:
    """The cached parse results when ``path`` holds ``fingerprint`` for ``num`` files, else ``None``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if meta.get("fingerprint") != fingerprint:
                log.info("%s: annotations changed since the cache was written; parsing again", path)
                return None
            width, height, counts = z["width"], z["height"], z["counts"]
            boxes, labels, flags = z["boxes"], z["labels"], z["flags"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable annotation cache (%s); parsing again", path, e)
        return None
    if len(counts) != num or counts.sum() != len(boxes) or len(labels) != len(boxes) or len(flags) != len(boxes):
        log.warning("%s: inconsistent annotation cache; parsing again", path)
        return None
    errors, problems, notes = meta["errors"], meta["problems"], meta["notes"]
    ends = np.cumsum(counts).tolist()
    starts = [0] + ends[:-1]
    out = []
    for i, (s, e, w, h) in enumerate(zip(starts, ends, width.tolist(), height.tolist())):
        k = str(i)
        if k in errors:
            out.append(ParsedAnnotation(error=errors[k]))
            continue
        out.append(ParsedAnnotation(None, None if w < 0 else w, None if h < 0 else h, boxes[s:e], labels[s:e],
                                    flags[s:e], tuple(problems.get(k, ())), tuple(notes.get(k, ()))))
    log.info("%s: %d parsed annotations from the cache", path, num)
    return out


def parse_annotation_files(folder: str | Path, names: list[str], parse, cache_dir: str | Path | None, tag: str,
                           version: int, classes) -> list[ParsedAnnotation]:
    """``parse(folder/<name>.xml, classes) -> ParsedAnnotation`` for every name, through the cache in
    ``cache_dir`` when given. A file that cannot be parsed gets ``error`` (its ``ValueError`` text, or
    ``"missing"``). ``version`` (the parser's) and ``classes`` are part of the fingerprint."""
    folder = str(folder)
    files = [os.path.join(folder, name + ".xml") for name in names]
    cache = fingerprint = None
    if cache_dir is not None:
        wnids = list(classes.wnids)
        cache = cache_path(cache_dir, tag, [str(Path(folder).resolve()), wnids])
        fingerprint = annotation_fingerprint(files, names, [version, wnids])
        parsed = load_parsed(cache, fingerprint, len(names))
        if parsed is not None:
            return parsed
    parsed = []
    for path in tqdm(files, desc=f"reading {folder}", leave=False, mininterval=2.0):
        try:
            parsed.append(parse(path, classes))
        except ValueError as e:
            parsed.append(ParsedAnnotation(error="missing" if not os.path.isfile(path) else str(e)))
    if cache is not None:
        save_parsed(cache, fingerprint, parsed)
    return parsed
