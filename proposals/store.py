"""A compact on-disk store of proposals (one file per dataset split and method), and the resumable,
shardable loop that fills it.

File format (``.npz``, readable with ``numpy.load(allow_pickle=False)``):
``image_ids`` str[I], ``offsets`` int64[I + 1] (image i owns rows ``offsets[i]:offsets[i + 1]``),
``boxes`` uint16[M, 4] (rounded pixels; float32 when a coordinate exceeds 65535), optional ``scores``
float16[M], and ``meta`` (a JSON string). The zip is written with fixed timestamps, so equal content
gives equal bytes. Run-dependent figures (seconds per image, worker counts) go to a JSON sidecar
(``<store>.json``) so that the store itself is reproducible byte for byte.

Writing: every rank takes every ``world_size``-th image and writes its results in chunks, each an
atomic partial file in ``.<store>.parts-<fingerprint>/``; a restarted run skips the chunks that exist;
rank 0 merges all chunks into the store when they are all there and removes the partial files.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from detect.data.images import read_image
from detect.data.records import SkipLog
from detect.io import OutputConflict, atomic_open, atomic_write_json, exclusive_lock
from proposals.base import Proposals, Proposer

log = logging.getLogger(__name__)

__all__ = ["ProposalStore", "ProposeSummary", "propose_dataset", "resolve_workers", "sidecar_path"]

_UINT16_MAX = 65535


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a ``.npz`` atomically and reproducibly (sorted members, fixed zip timestamps)."""
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: proposal file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # truncated zip, not an npz, object arrays refused
        raise ValueError(f"{path}: not a readable proposal file ({type(e).__name__}: {e})") from e


def sidecar_path(path: str | Path) -> Path:
    """The JSON beside a store that holds run-dependent figures (timing, workers, failed images)."""
    return Path(path).with_suffix(".json")


class ProposalStore:
    """Proposals of a whole dataset split, looked up by image id.

    image_ids: list[str] (I); offsets: ndarray[I + 1] int64; boxes: ndarray[M, 4] (any float/uint16 dtype);
    scores: ndarray[M] or None; meta: JSON-able dict (method name, settings, failed images).
    """

    def __init__(self, image_ids: Sequence[str], offsets: np.ndarray, boxes: np.ndarray,
                 scores: np.ndarray | None = None, meta: dict | None = None):
        self.image_ids = [str(i) for i in image_ids]
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.boxes = np.asarray(boxes).reshape(-1, 4)
        self.scores = None if scores is None else np.asarray(scores).reshape(-1)
        self.meta = dict(meta or {})
        if len(self.offsets) != len(self.image_ids) + 1 or self.offsets[-1] != len(self.boxes):
            raise ValueError("proposal store: offsets do not match image ids and boxes")
        if self.scores is not None and len(self.scores) != len(self.boxes):
            raise ValueError("proposal store: scores and boxes differ in length")
        self._index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        if len(self._index) != len(self.image_ids):
            raise ValueError("proposal store: repeated image ids")

    @classmethod
    def from_lists(cls, image_ids: Sequence[str], boxes: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray] | None = None, meta: dict | None = None) -> "ProposalStore":
        """Build from per-image ``float32[N_i, 4]`` boxes (and ``float32[N_i]`` scores)."""
        counts = [len(np.asarray(b).reshape(-1, 4)) for b in boxes]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cat = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]) if boxes else np.zeros((0, 4), np.float32)
        sc = None
        if scores is not None:
            sc = np.concatenate([np.asarray(s, np.float32).reshape(-1) for s in scores]) if scores else np.zeros(0, np.float32)
        return cls(image_ids, offsets, cat, sc, meta)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def _rows(self, image_id: str) -> slice:
        if image_id not in self._index:
            raise KeyError(f"no proposals stored for image {image_id!r}")
        i = self._index[image_id]
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def get(self, image_id: str) -> np.ndarray:
        """Boxes of one image: ``ndarray[N, 4] float32`` xyxy pixels, in the method's rank order."""
        return self.boxes[self._rows(image_id)].astype(np.float32)

    def get_scores(self, image_id: str) -> np.ndarray | None:
        """Scores of one image, ``ndarray[N] float32``, or None when the method has none."""
        return None if self.scores is None else self.scores[self._rows(image_id)].astype(np.float32)

    def boxes_per_image(self) -> np.ndarray:
        """``ndarray[I] int64``: number of boxes of each image."""
        return np.diff(self.offsets)

    def save(self, path: str | Path) -> None:
        """Write atomically: boxes rounded to uint16 (float32 if a coordinate falls outside 0..65535)."""
        b = self.boxes
        if b.dtype != np.uint16:
            fits = len(b) == 0 or (np.nanmin(b) >= 0 and np.nanmax(b) <= _UINT16_MAX)
            b = np.round(b).astype(np.uint16) if fits else b.astype(np.float32)
        arrays = {
            "image_ids": np.asarray(self.image_ids, dtype=str) if self.image_ids else np.zeros(0, "<U1"),
            "offsets": self.offsets,
            "boxes": b,
            "meta": np.asarray(json.dumps(self.meta, sort_keys=True)),
        }
        if self.scores is not None:
            arrays["scores"] = self.scores.astype(np.float16)
        _write_npz(Path(path), arrays)

    @classmethod
    def load(cls, path: str | Path) -> "ProposalStore":
        """Read a store; ``FileNotFoundError`` / ``ValueError`` naming the file when missing or malformed."""
        z = _read_npz(Path(path))
        missing = {"image_ids", "offsets", "boxes"} - set(z)
        if missing:
            raise ValueError(f"{path}: not a proposal store (missing {sorted(missing)})")
        meta = json.loads(str(z["meta"])) if "meta" in z else {}
        try:
            return cls(z["image_ids"].tolist(), z["offsets"], z["boxes"], z.get("scores"), meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- computing a whole split


def resolve_workers(workers: int | str) -> int:
    """``"auto"`` -> the CPU cores this process may use; an int is returned as it is (0 or 1: in-process)."""
    if workers == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            return os.cpu_count() or 1
    return int(workers)


_worker: dict = {}  # per worker process: the proposer built by _init_worker


def _init_worker(make_proposer: Callable[[], Proposer]) -> None:
    cv2.setNumThreads(1)  # one worker per core: no library threads on top (OpenCV, torch, ONNX Runtime)
    torch.set_num_threads(1)
    _worker["proposer"] = make_proposer()


def _propose_file(proposer: Proposer, path: str) -> tuple[Proposals | None, str | None, float]:
    start = time.perf_counter()
    try:
        result = proposer(read_image(path))
        error = None
    except ValueError as e:  # ImageError included; the message names the problem
        result, error = None, str(e) if str(path) in str(e) else f"{path}: {e}"
    return result, error, time.perf_counter() - start


def _propose_in_worker(path: str):
    return _propose_file(_worker["proposer"], path)


@dataclass
class ProposeSummary:
    """What a call of :func:`propose_dataset` did: chunks computed now, merged or not, failed images."""

    path: Path
    merged: bool
    chunks_computed: int
    chunks_total: int
    skipped: SkipLog = field(default_factory=lambda: SkipLog("images"))


class _Chunks:
    """The partial files of one (dataset, method, world size): names, presence, reading and writing."""

    def __init__(self, out_path: Path, image_ids: Sequence[str], chunk_size: int, world_size: int, fingerprint: str):
        self.dir = out_path.parent / f".{out_path.stem}.parts-{fingerprint}"
        self.n = len(image_ids)
        self.chunk_size = chunk_size
        self.world_size = world_size

    def indices(self, rank: int) -> list[np.ndarray]:
        """Image indices of each chunk of ``rank`` (every ``world_size``-th image)."""
        mine = np.arange(rank, self.n, self.world_size, dtype=np.int64)
        return [mine[i:i + self.chunk_size] for i in range(0, len(mine), self.chunk_size)]

    def file(self, rank: int, chunk: int) -> Path:
        return self.dir / f"w{self.world_size}_r{rank}_c{chunk:06d}.npz"

    def write(self, rank: int, chunk: int, indices: np.ndarray, results: list) -> None:
        boxes = [np.zeros((0, 4), np.float32) if r is None else r.boxes for r, _, _ in results]
        has_scores = all(r is None or r.scores is not None for r, _, _ in results)
        scores = [np.zeros(len(b), np.float32) if (r is None or r.scores is None) else r.scores
                  for b, (r, _, _) in zip(boxes, results)]
        errors = {int(i): e for i, (_, e, _) in zip(indices, results) if e is not None}
        _write_npz(self.file(rank, chunk), {
            "indices": indices,
            "offsets": np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64),
            "boxes": np.concatenate(boxes).astype(np.float32),
            "scores": np.concatenate(scores).astype(np.float32),
            "has_scores": np.asarray([r is not None and r.scores is not None for r, _, _ in results]),
            "errors": np.asarray(json.dumps(errors, sort_keys=True)),
            "seconds": np.asarray([s for _, _, s in results], np.float64),
            "all_scores": np.asarray(has_scores),
        })

    def all_present(self) -> bool:
        return all(self.file(r, c).is_file() for r in range(self.world_size) for c in range(len(self.indices(r))))


def _fingerprint(image_ids: Sequence[str], paths: Sequence[str], meta: dict, chunk_size: int) -> str:
    h = hashlib.sha256(json.dumps([list(image_ids), list(paths), meta, chunk_size], sort_keys=True).encode())
    return h.hexdigest()[:12]


def _merge(chunks: _Chunks, out_path: Path, image_ids: Sequence[str], meta: dict, run_info: dict) -> SkipLog:
    boxes: list = [None] * chunks.n
    scores: list = [None] * chunks.n
    with_scores = np.zeros(chunks.n, bool)
    failed: dict[int, str] = {}
    seconds = []
    for r in range(chunks.world_size):
        for c, expected in enumerate(chunks.indices(r)):
            z = _read_npz(chunks.file(r, c))
            if not np.array_equal(z["indices"], expected):
                raise ValueError(f"{chunks.file(r, c)}: holds other images than expected; delete {chunks.dir}")
            for j, i in enumerate(expected):
                rows = slice(int(z["offsets"][j]), int(z["offsets"][j + 1]))
                boxes[i], scores[i], with_scores[i] = z["boxes"][rows], z["scores"][rows], z["has_scores"][j]
            failed.update({int(k): v for k, v in json.loads(str(z["errors"])).items()})
            seconds.extend(z["seconds"].tolist())
    ok = [i for i in range(chunks.n) if i not in failed]
    keep_scores = bool(ok) and bool(with_scores[ok].all())
    skipped = SkipLog("images")
    for i in sorted(failed):
        skipped.entries.append((image_ids[i], failed[i]))
    meta = dict(meta, failed_images=[image_ids[i] for i in sorted(failed)])
    store = ProposalStore.from_lists(image_ids, boxes, scores if keep_scores else None, meta)
    store.save(out_path)
    info = dict(run_info, seconds_per_image=float(np.mean(seconds)) if seconds else None,
                num_images=chunks.n, num_failed=len(failed), failed={image_ids[i]: failed[i] for i in sorted(failed)},
                mean_boxes_per_image=float(store.boxes_per_image().mean()) if len(store) else 0.0)
    atomic_write_json(sidecar_path(out_path), info)
    shutil.rmtree(chunks.dir, ignore_errors=True)
    return skipped


def propose_dataset(
    image_paths: Sequence[str | Path],
    image_ids: Sequence[str],
    proposer: Proposer,
    out_path: str | Path,
    make_proposer: Callable[[], Proposer] | None = None,
    *,
    workers: int | str = 1,
    chunk_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    stop_after_chunks: int | None = None,
    merge_timeout_s: float = 0.0,
    poll_s: float = 5.0,
    meta: dict | None = None,
    progress: bool = True,
) -> ProposeSummary:
    """Compute proposals for every image and write one :class:`ProposalStore` at ``out_path``.

    proposer: used in-process when ``workers <= 1``; with more workers each worker process calls the
        picklable ``make_proposer()`` once (and ``cv2.setNumThreads(1)``).
    rank / world_size: this process computes images ``rank::world_size``; rank 0 merges once every
        rank's chunks exist, waiting up to ``merge_timeout_s`` for them (0: merge only if already there).
    stop_after_chunks: stop after computing this many chunks (a time-slice; also the tests' "kill").
    Images that cannot be read or processed are logged, counted, stored with zero boxes and listed in
    the store's ``meta["failed_images"]``. Returns a :class:`ProposeSummary`.
    """
    out_path = Path(out_path)
    image_paths = [str(p) for p in image_paths]
    if len(image_paths) != len(image_ids):
        raise ValueError(f"{len(image_paths)} image paths but {len(image_ids)} image ids")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    meta = dict(meta or {}, method=proposer.name)
    fingerprint = _fingerprint(image_ids, image_paths, meta, chunk_size)
    meta["fingerprint"] = fingerprint
    if out_path.exists():
        try:
            done = ProposalStore.load(out_path).meta.get("fingerprint") == fingerprint
        except (ValueError, FileNotFoundError):
            raise OutputConflict(f"{out_path}: exists and is not a proposal store; not overwritten (choose another "
                                 "output path)") from None
        if done:
            log.info("%s is complete already (same images and settings); nothing to do", out_path)
            return ProposeSummary(out_path, True, 0, 0)
        log.info("%s was made from other images or settings: computing it again", out_path)
    with exclusive_lock(out_path.with_name(f"{out_path.name}.rank{rank}")):
        return _propose(image_paths, image_ids, proposer, out_path, make_proposer, workers, chunk_size, rank,
                        world_size, stop_after_chunks, merge_timeout_s, poll_s, meta, fingerprint, progress)


def _propose(image_paths, image_ids, proposer, out_path, make_proposer, workers, chunk_size, rank, world_size,
             stop_after_chunks, merge_timeout_s, poll_s, meta, fingerprint, progress) -> ProposeSummary:
    chunks = _Chunks(out_path, image_ids, chunk_size, world_size, fingerprint)
    mine = chunks.indices(rank)
    pending = [c for c in range(len(mine)) if not chunks.file(rank, c).is_file()]
    if stop_after_chunks is not None:
        pending = pending[:stop_after_chunks]
    skipped = SkipLog("images")
    done_images = sum(len(mine[c]) for c in range(len(mine))) - sum(len(mine[c]) for c in pending)
    log.info("%s: rank %d/%d, %d of %d chunks to compute", out_path.name, rank, world_size, len(pending), len(mine))
    workers = resolve_workers(workers)
    todo = [int(i) for c in pending for i in mine[c]]
    bar = tqdm(total=sum(len(m) for m in mine), initial=done_images, desc=f"proposals {proposer.name}",
               disable=not progress, unit="img")
    pool = None
    try:
        if workers > 1 and todo:
            if make_proposer is None:
                raise ValueError("make_proposer is needed for workers > 1")
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(make_proposer,))
            results_iter = pool.imap(_propose_in_worker, [image_paths[i] for i in todo])
        else:
            results_iter = (_propose_file(proposer, image_paths[i]) for i in todo)
        for c in pending:
            results = []
            for i in mine[c]:
                result = next(results_iter)
                if result[1] is not None:
                    skipped.add(image_paths[i], result[1])
                results.append(result)
                bar.update(1)
            chunks.write(rank, c, mine[c], results)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    summary = ProposeSummary(out_path, False, len(pending), len(mine), skipped)
    if rank != 0 or not all(chunks.file(rank, c).is_file() for c in range(len(mine))):
        return summary  # merging is rank 0's job, once its own chunks are all done
    deadline = time.monotonic() + merge_timeout_s
    while not chunks.all_present():
        if time.monotonic() >= deadline:
            log.info("%s: not all chunks are there yet; run again to finish and merge", out_path.name)
            return summary
        time.sleep(poll_s)
    run_info = {"workers": workers, "world_size": world_size, "method": proposer.name}
    summary.skipped = _merge(chunks, out_path, image_ids, meta, run_info)
    summary.merged = True
    log.info("wrote %s (%d images); %s", out_path, len(image_ids), summary.skipped.summary())
    return summary
