"""Run the detector over a dataset split: ILSVRC submission + COCO-results JSON for tools/eval_map.py.

    python tools/detect_dataset.py data=synthetic split=val
    torchrun --nproc_per_node=4 tools/detect_dataset.py data=ilsvrc data.root=/data/ILSVRC device=cuda

A resumable, sharded run (:mod:`detect.runs`, as tools/propose.py): each rank takes every
world_size-th image and writes its detections in chunks of ``chunk_size`` images; the chunk folder is
named after a hash of the detector file, the image list, the proposal store and the settings, so a
re-run skips the chunks already written and changed inputs start afresh (never mixed); a second run on
the same output is stopped by a lock. Rank 0 merges the chunks into ``<output>.txt`` and
``<output>.json`` and records the run in ``<output>.txt.run.json``; a re-run with the same inputs then
has nothing to do. An existing output without that record is not this tool's and is never
overwritten. Cached proposals come from the proposal store when it holds the image, else from the
detector's live proposer.
"""
from __future__ import annotations

import sys
from pathlib import Path

# `python tools/<tool>.py` puts tools/ first on sys.path, where tools/detect.py would hide the detect package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import glob
import hashlib
import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from detect.data.records import SkipLog
from detect.data.splits import detections_path, proposal_store_path, split_name
from detect.detections import Detections, write_coco_results, write_ilsvrc_submission
from detect.distributed import barrier, cleanup, setup
from detect.io import OutputConflict, atomic_write_json, exclusive_lock, file_sha256
from detect.pipeline import Detector
from detect.runs import ChunkedRun
from proposals.store import ProposalStore
from proposals.store_format import check_coverage

log = logging.getLogger("detect_dataset")


def fingerprint(cfg: DictConfig, store_path: str | Path | None, records, precision: list[str]) -> str:
    """Short hash of what the detections depend on: the detector file, the settings, the image list
    (indices, ids and paths), the proposals and the members' precision (fp32 / int8), so that shards of
    an earlier run are resumed only when they came from the same inputs (other inputs write other
    shards; nothing is mixed)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    images = hashlib.sha256(json.dumps([(r.index, r.image_id, str(r.path)) for r in records]).encode()).hexdigest()
    what = {"detector": file_sha256(cfg.detector), "data": str(cfg.data.name), "split": str(cfg.split),
            "images": images, "store": file_sha256(store_path) if store_path is not None else None,
            "proposer": resolved.get("proposer"), "precision": precision,
            **{k: resolved[k] for k in ("score_threshold", "max_per_image", "cascade_threshold", "use_members")}}
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_record(output: Path) -> Path:
    """The sidecar that marks ``output`` (and its .json) as this tool's, with what produced them."""
    return output.with_name(f"{output.name}.run.json")


def check_output_is_ours(output: Path) -> None:
    """Refuse to replace an existing output file that this tool did not write (no run record beside it)."""
    ours = run_record(output).is_file() or any(output.parent.glob(f"{glob.escape(output.name)}.*.rank*of*"))
    for path in (output, output.with_suffix(".json")):
        if path.exists() and not ours:  # (shards beside it: written by this tool before run records existed)
            raise OutputConflict(f"{path}: exists and was not written by detect_dataset.py (no {run_record(output).name} "
                                 "beside it); not overwritten: choose another output=")


def _up_to_date(output: Path, key: str) -> bool:
    """True when ``output`` (and its .json) were written by a run with fingerprint ``key``."""
    try:
        record = json.loads(run_record(output).read_text())
    except (OSError, ValueError):
        return False
    return record.get("fingerprint") == key and output.is_file() and output.with_suffix(".json").is_file()


def detect_chunks(detector: Detector, records, store, run: ChunkedRun, rank: int, prefetch: int, progress: bool) -> None:
    """Detect this rank's chunks of ``records`` not written yet, each written as one partial file."""
    chunks = run.indices(rank)
    pending = run.pending(rank)
    if len(pending) < len(chunks):
        log.info("rank %d: %d of %d chunks already done", rank, len(chunks) - len(pending), len(chunks))
    todo = [records[int(i)] for c in pending for i in chunks[c]]
    items = ((r, r.path, store.get(r.image_id) if store is not None and r.image_id in store else None) for r in todo)
    results = detector.detect_many(items, prefetch=prefetch)
    skipped = SkipLog("images")
    start = time.perf_counter()
    with tqdm(total=len(todo), desc=f"detect rank {rank}", disable=not progress) as bar:
        for c in pending:
            dets, errors = [], {}
            for _ in chunks[c]:
                record, _, result, error = next(results)
                if error is not None:  # unreadable image, proposer error: reported, no detections
                    skipped.add(record.path, f"unusable: {error}")
                    errors[record.image_id] = str(error)
                else:
                    dets.append(Detections.for_image(record.index, result.labels, result.scores, result.boxes))
                bar.update(1)
            d = Detections.concat(dets) if dets else Detections.empty()
            run.write(rank, c, {"image_index": d.image_index, "labels": d.labels, "scores": d.scores,
                                "boxes": d.boxes, "errors": np.asarray(json.dumps(errors, sort_keys=True))})
    if todo:
        elapsed = time.perf_counter() - start
        log.info("rank %d: %d images in %.1f s (%.3f s/image); %s", rank, len(todo), elapsed, elapsed / len(todo),
                 skipped.summary())


@hydra.main(config_path="../conf", config_name="detect_dataset", version_base="1.3")
def main(cfg: DictConfig) -> None:
    ctx = setup(cfg.device)
    if cfg.data.get("generate") is not None and ctx.is_main:
        instantiate(cfg.data.generate)
    barrier()
    dataset = instantiate(cfg.data[cfg.split])
    overrides = {k: cfg[k] for k in ("score_threshold", "max_per_image", "cascade_threshold") if cfg[k] is not None}
    if cfg.use_members is not None:
        overrides["members"] = list(cfg.use_members)
    proposer = instantiate(cfg.proposer, _convert_="all") if cfg.proposer is not None else None
    detector = Detector.from_checkpoint(cfg.detector, device=ctx.device, proposer=proposer, backend=cfg.backend,
                                        amp=cfg.amp, precision=cfg.precision, **overrides)
    if detector.classes.wnids != dataset.classes.wnids:
        raise ValueError(f"{cfg.detector}: its {len(detector.classes)} classes differ from those of "
                         f"{cfg.data.name} ({len(dataset.classes)}); labels would not match")

    store = None
    store_path = cfg.proposals_store
    if store_path is None and detector.proposer is not None:
        store_path = proposal_store_path(cfg.paths.proposals_dir, cfg.data, cfg.split, detector.proposer.name)
    if cfg.proposals_store and not Path(cfg.proposals_store).is_file():
        raise FileNotFoundError(f"proposals_store={cfg.proposals_store}: no such proposal store (a store given "
                                "explicitly must exist; leave it unset to use the default or the live proposer)")
    if store_path is not None and Path(store_path).is_file():
        store = ProposalStore.load(store_path)
        log.info("%s: cached proposals for %d images", store_path, len(store))
        check_coverage(store, [r.image_id for r in dataset.records], f"{cfg.data.name} {cfg.split}",
                       "live proposals" if detector.proposer is not None else "nothing (no proposer: skipped)")
    elif detector.proposer is None:
        raise ValueError(f"no proposal store at {store_path} and the detector has no proposer")

    output = Path(cfg.output or detections_path(cfg.paths.detections_dir, cfg.data, cfg.split))
    check_output_is_ours(output)
    precision = [getattr(m, "precision", "fp32") for m in detector.scorers]
    key = fingerprint(cfg, store_path if store is not None else None, dataset.records, precision)
    if cfg.resume and _up_to_date(output, key):
        if ctx.is_main:
            print(f"{output} is up to date (same detector, images, proposals and settings): nothing to do")
        cleanup()
        return
    run = ChunkedRun(output, key, len(dataset.records), cfg.chunk_size, ctx.world_size)
    with run.lock(ctx.rank):
        if not cfg.resume:
            for c in range(len(run.indices(ctx.rank))):
                run.file(ctx.rank, c).unlink(missing_ok=True)
        detect_chunks(detector, dataset.records, store, run, ctx.rank, cfg.prefetch, cfg.progress and ctx.is_main)
    barrier()
    if ctx.is_main:
        if not run.all_present():
            sys.exit(f"{output}: other ranks have not finished their chunks; run the same command again to finish")
        dets = Detections.concat(Detections(z["image_index"], z["labels"], z["scores"], z["boxes"])
                                 for z in run.chunks(("image_index", "labels", "scores", "boxes")))
        dets = dets.select(dets.image_index.argsort(kind="stable"))
        with exclusive_lock(output):
            write_ilsvrc_submission(output, dets)
            write_coco_results(output.with_suffix(".json"), dets, dataset)
            atomic_write_json(run_record(output), {"fingerprint": key, "detector": str(cfg.detector),
                                                   "data": str(cfg.data.name), "split": str(cfg.split),
                                                   "images": len(dataset), "detections": len(dets)})
        run.remove()
        print(f"{len(dets)} detections on {len(dataset)} images ({cfg.data.name} {split_name(cfg.data, cfg.split)}): {output}")
    cleanup()


if __name__ == "__main__":
    main()
