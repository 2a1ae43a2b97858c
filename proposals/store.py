"""The resumable, shardable loop that computes proposals for a whole dataset split and writes one
proposal store (the file itself: :mod:`proposals.store_format`, whose names are re-exported here).

Writing: every rank takes every ``world_size``-th image and writes its results in chunks, each an
atomic partial file in ``.<store>.parts-<fingerprint>/``; a restarted run skips the chunks that exist;
rank 0 merges all chunks into the store when they are all there and removes the partial files (and
the abandoned ones of earlier runs with other images or settings, :class:`detect.runs.ChunkedRun`). The
merge streams: it reads each chunk's small arrays once to size the store, then copies the boxes image
by image in store order (a few chunks in memory at a time), so a split of any size merges in bounded
memory.

The store's fingerprint (in its meta) covers the image ids, paths and contents (``image_fingerprint``),
the settings and the chunk size: an image replaced in place makes the store stale.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from detect.data.images import read_image
from detect.data.records import SkipLog
from detect.io import OutputConflict, atomic_write_json, digest, remove_stale_temps
from detect.runs import ChunkedRun, image_list_digest
from detect.runtime import usable_cores
from proposals.base import Proposals, Proposer
from proposals.store_format import ProposalStore, StoreWriter, box_dtype_for, sidecar_path, store_meta

log = logging.getLogger(__name__)

__all__ = ["ProposalStore", "ProposeSummary", "propose_dataset", "resolve_workers", "sidecar_path"]


def resolve_workers(workers: int | str) -> int:
    """``"auto"`` -> the CPU cores this process may use, shared among the ranks that torchrun started on
    this machine (``LOCAL_WORLD_SIZE``), at least 1; an int is returned as it is (0 or 1: in-process)."""
    if workers == "auto":
        return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return int(workers)


_worker: dict = {}  # per worker process: the proposer built by _init_worker


def _init_worker(make_proposer: Callable[[], Proposer]) -> None:
    cv2.setNumThreads(1)  # one worker per core: no library threads on top (OpenCV, torch, ONNX Runtime)
    torch.set_num_threads(1)
    _worker["proposer"] = make_proposer()


def _propose_file(proposer: Proposer, path: str, size: tuple[int, int] | None
                  ) -> tuple[Proposals, str | None, float]:
    """One image's proposals (none when it failed), the error naming the image or None, and the seconds taken."""
    start = time.perf_counter()
    try:
        result, error = proposer(read_image(path, size)), None
    except ValueError as e:  # ImageError included; the message names the problem
        result, error = Proposals(np.zeros((0, 4), np.float32)), str(e) if str(path) in str(e) else f"{path}: {e}"
    return result, error, time.perf_counter() - start


def _propose_in_worker(item: tuple[str, tuple[int, int] | None]):
    return _propose_file(_worker["proposer"], *item)


@dataclass
class ProposeSummary:
    """What a call of :func:`propose_dataset` did: chunks computed now, merged or not, failed images."""

    path: Path
    merged: bool
    chunks_computed: int
    skipped: SkipLog = field(default_factory=lambda: SkipLog("images"))


def _chunk_arrays(indices: np.ndarray, results: list) -> dict[str, np.ndarray]:
    """One chunk's partial result: ``results`` = :func:`_propose_file`'s ``(Proposals, error or None, seconds)``
    for each image of ``indices``."""
    boxes = [np.asarray(r.boxes, np.float32).reshape(-1, 4) for r, _, _ in results]
    scores = [np.zeros(len(b), np.float32) if r.scores is None else r.scores for b, (r, _, _) in zip(boxes, results)]
    errors = {int(i): e for i, (_, e, _) in zip(indices, results) if e is not None}
    cat = np.concatenate(boxes)
    return {
        "offsets": np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64),
        "boxes": cat,
        "box_range": np.asarray([np.nanmin(cat), np.nanmax(cat)] if len(cat) else [0.0, 0.0], np.float64),
        "scores": np.concatenate(scores).astype(np.float32),
        "has_scores": np.asarray([r.scores is not None for r, _, _ in results]),  # a failed image has none
        "errors": np.asarray(json.dumps(errors, sort_keys=True)),  # image index -> reason
        "seconds": np.asarray([s for _, _, s in results], np.float64),
    }


def _merge(chunks: ChunkedRun, out_path: Path, image_ids: Sequence[str], meta: dict, run_info: dict) -> SkipLog:
    """Write the store from every chunk in the two streaming passes of the module docstring."""
    counts = np.zeros(chunks.n, np.int64)
    with_scores = np.zeros(chunks.n, bool)
    failed: dict[int, str] = {}
    seconds: list[float] = []
    low, high = np.inf, -np.inf
    for r in range(chunks.world_size):
        for c, expected in enumerate(chunks.indices(r)):
            z = chunks.read(r, c, ("offsets", "has_scores", "errors", "seconds", "box_range"))
            if "box_range" not in z:
                raise ValueError(f"{chunks.file(r, c)}: a partial result of an earlier version (no box_range); "
                                 f"delete {chunks.dir} and run again")
            if z["box_range"].size and np.isfinite(z["box_range"]).any():
                low, high = min(low, float(np.nanmin(z["box_range"]))), max(high, float(np.nanmax(z["box_range"])))
            counts[expected] = np.diff(z["offsets"])
            with_scores[expected] = z["has_scores"]
            failed.update({int(k): v for k, v in json.loads(str(z["errors"])).items()})
            seconds.extend(z["seconds"].tolist())
    if not chunks.n or len(failed) >= chunks.n:  # such a store would look complete and hold nothing
        first = "; ".join(failed[i] for i in sorted(failed)[:3]) or "the image list is empty"
        chunks.remove()  # so that a re-run tries again
        raise RuntimeError(f"{chunks.output}: no image could be processed ({len(failed)} of {chunks.n} failed; "
                           f"first: {first}); no store written")
    keep_scores = bool(np.delete(with_scores, list(failed)).all())  # of the images processed (there are some)
    skipped = SkipLog("images")
    skipped.entries.extend((image_ids[i], failed[i]) for i in sorted(failed))
    meta = dict(meta, failed_images=[image_ids[i] for i in sorted(failed)])
    dtype = box_dtype_for(low, high) if np.isfinite(low) else np.dtype(np.uint16)
    per_group = chunks.chunk_size * chunks.world_size  # chunk c of every rank holds images c*per_group ...
    with StoreWriter(out_path, image_ids, counts, dtype, keep_scores, meta) as writer:
        for c in range(len(chunks.indices(0))):
            parts = {r: chunks.read(r, c, ("offsets", "boxes", "scores"))
                     for r in range(chunks.world_size) if c < len(chunks.indices(r))}
            for i in range(c * per_group, min((c + 1) * per_group, chunks.n)):
                z = parts[i % chunks.world_size]
                j = (i // chunks.world_size) % chunks.chunk_size
                rows = slice(int(z["offsets"][j]), int(z["offsets"][j + 1]))
                writer.add(z["boxes"][rows], z["scores"][rows] if keep_scores else None)
    info = dict(run_info, seconds_per_image=float(np.mean(seconds)) if seconds else None,
                num_images=chunks.n, num_failed=len(failed), failed={image_ids[i]: failed[i] for i in sorted(failed)},
                mean_boxes_per_image=float(counts.mean()) if chunks.n else 0.0)
    atomic_write_json(sidecar_path(out_path), info)
    chunks.remove()
    chunks.remove_abandoned(holding=0)
    return skipped


def propose_dataset(image_paths: Sequence[str | Path], image_ids: Sequence[str], proposer: Proposer,
                    out_path: str | Path, make_proposer: Callable[[], Proposer] | None = None, *,
                    workers: int | str = 1, chunk_size: int = 64, rank: int = 0, world_size: int = 1,
                    stop_after_chunks: int | None = None, merge_timeout_s: float = 0.0, poll_s: float = 5.0,
                    meta: dict | None = None, progress: bool = True, image_fingerprint: str = "stat",
                    image_sizes: Sequence[tuple[int, int]] | None = None) -> ProposeSummary:
    """Compute proposals for every image and write one :class:`ProposalStore` at ``out_path``.

    proposer: used in-process when ``workers <= 1``; with more workers each worker process calls the
        picklable ``make_proposer()`` once (and ``cv2.setNumThreads(1)``).
    rank / world_size: this process computes images ``rank::world_size``; rank 0 merges once every
        rank's chunks exist, waiting up to ``merge_timeout_s`` for them (0: merge only if already there).
    stop_after_chunks: stop after computing this many chunks (a time-slice; also the tests' "kill").
    image_fingerprint: how the images' contents enter the fingerprint, ``"stat"`` or ``"sha256"``
        (:func:`detect.runs.image_list_digest`).
    image_sizes: ``(width, height)`` of each image as its annotation gives it (``read_image``'s ``size``:
        the frame its boxes were drawn in); None: EXIF-oriented images.
    Images that cannot be read or processed are logged, counted, stored with zero boxes and listed in
    the store's ``meta["failed_images"]``; when none could be processed, ``RuntimeError`` and no store.
    An ``out_path`` that is not a store of the current format (a file of the user's, a store of an earlier
    format) is never overwritten: :class:`detect.io.OutputConflict`. Returns a :class:`ProposeSummary`.
    """
    out_path = Path(out_path)
    image_paths = [str(p) for p in image_paths]
    if len(image_paths) != len(image_ids):
        raise ValueError(f"{len(image_paths)} image paths but {len(image_ids)} image ids")
    sizes = [None] * len(image_paths) if image_sizes is None else [tuple(map(int, s)) for s in image_sizes]
    if len(sizes) != len(image_paths):
        raise ValueError(f"{len(image_paths)} image paths but {len(sizes)} image sizes")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    meta = dict(meta or {}, method=proposer.name)
    if image_sizes is not None:  # the frame each image is read in (read_image's size)
        meta["image_sizes"] = digest(sizes)
    # what the store depends on (module docstring); meta holds the method, settings and proposer weights
    images = image_list_digest(image_paths, list(image_ids), image_fingerprint)
    fingerprint = digest([images, meta, chunk_size], 12)
    meta["fingerprint"] = fingerprint
    if out_path.exists():
        try:
            done = store_meta(out_path).get("fingerprint") == fingerprint
        except (ValueError, FileNotFoundError) as e:  # a file of the user's, or a store of an earlier format
            raise OutputConflict(f"{out_path}: exists and is not a proposal store of the current format "
                                 f"({str(e).removeprefix(f'{out_path}: ')}); not overwritten (delete it, or choose "
                                 "another output path)") from None
        if done:
            try:  # the fingerprint says "same inputs"; the digests say whether the bytes are still ours
                ProposalStore.load(out_path).verify()
                log.info("%s is complete already (same images and settings): nothing to do", out_path)
                return ProposeSummary(out_path, True, 0)
            except ValueError as e:  # damaged
                log.warning("%s: made from the same images and settings but unusable (%s): computing it again",
                            out_path, e)
        log.info("%s was made from other images or settings, or is damaged: computing it again", out_path)
    chunks = ChunkedRun(out_path, fingerprint, len(image_ids), chunk_size, world_size)
    with chunks.lock(rank):
        return _propose(chunks, rank, list(zip(image_paths, sizes)), image_ids, proposer, make_proposer, workers,
                        stop_after_chunks, merge_timeout_s, poll_s, meta, progress)


def _propose(chunks: ChunkedRun, rank, images, image_ids, proposer, make_proposer, workers, stop_after_chunks,
             merge_timeout_s, poll_s, meta, progress) -> ProposeSummary:
    out_path, world_size = chunks.output, chunks.world_size
    chunks.begin(rank)
    if rank == 0:  # the one writer of the store and its sidecar (under its lock): temporaries of killed writes go
        for path in (out_path, sidecar_path(out_path)):
            remove_stale_temps(path)
    mine = chunks.indices(rank)
    pending = chunks.pending(rank)[:stop_after_chunks]  # None: all
    skipped = SkipLog("images")
    log.info("%s: rank %d/%d, %d of %d chunks to compute", out_path.name, rank, world_size, len(pending), len(mine))
    workers = resolve_workers(workers)
    todo = [int(i) for c in pending for i in mine[c]]
    total = sum(len(m) for m in mine)
    bar = tqdm(total=total, initial=total - len(todo), desc=f"proposals {proposer.name}", disable=not progress,
               unit="img")
    pool = None
    try:
        if workers > 1 and todo:
            if make_proposer is None:
                raise ValueError("make_proposer is needed for workers > 1")
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(make_proposer,))
            results_iter = pool.imap(_propose_in_worker, [images[i] for i in todo])
        else:
            results_iter = (_propose_file(proposer, *images[i]) for i in todo)
        for c in pending:
            results = []
            for i in mine[c]:
                result = next(results_iter)
                if result[1] is not None:
                    skipped.add(images[i][0], result[1])
                results.append(result)
                bar.update(1)
            chunks.write(rank, c, _chunk_arrays(mine[c], results))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    summary = ProposeSummary(out_path, False, len(pending), skipped)
    if rank != 0 or not all(chunks.file(rank, c).is_file() for c in range(len(mine))):
        return summary  # merging is rank 0's job, once its own chunks are all done
    deadline = time.monotonic() + merge_timeout_s
    while not chunks.all_present():
        if time.monotonic() >= deadline:
            log.info("%s: not all chunks are there yet; run again to finish and merge", out_path.name)
            return summary
        time.sleep(poll_s)
    run_info = {"workers": workers, "world_size": world_size, "method": proposer.name,
                "fingerprint": chunks.fingerprint}
    summary.skipped = _merge(chunks, out_path, image_ids, meta, run_info)
    summary.merged = True
    log.info("wrote %s (%d images); %s", out_path, len(image_ids), summary.skipped.summary())
    return summary
