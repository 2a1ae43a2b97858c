"""Run the detector over a dataset split: ILSVRC submission + COCO-results JSON for tools/eval_map.py.

    python tools/detect_dataset.py data=synthetic split=val
    torchrun --nproc_per_node=4 tools/detect_dataset.py data=ilsvrc data.root=/data/ILSVRC device=cuda

A resumable, sharded run (:mod:`detect.runs`, as tools/propose.py): each rank takes every
world_size-th image and writes its detections in chunks of ``chunk_size`` images; the chunk folder is
named after a hash of the detector file, the image list, the proposal store and the settings, so a
re-run skips the chunks already written and changed inputs start afresh (never mixed); a second run on
the same output is stopped by a lock. Rank 0 merges the chunks into ``<output>.txt`` and
``<output>.json`` and records the run in ``<output>.txt.run.json`` (:mod:`detect.records`): a re-run
with the same inputs whose outputs still match has nothing to do, and a run killed while writing is
never taken for finished. A run in which no image could be processed stops with the first reasons and
writes nothing. An existing output without that record is not this tool's and is never overwritten.
Cached proposals come from the proposal store when it holds the image, else from the detector's live
proposer.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from detect.backends import describe_scoring
from detect.data.records import SkipLog
from detect.data.splits import detections_path, proposal_store_path, split_name
from detect.detections import Detections, coco_image_ids, write_coco_results, write_ilsvrc_submission
from detect.distributed import barrier, cleanup, setup
from detect.io import OutputConflict, digest, exclusive_lock, file_sha256, remove_stale_temps
from detect.pipeline import Detector
from detect.runs import ChunkedRun, detections_record, image_list_digest
from proposals.store import ProposalStore
from proposals.store_format import check_coverage

log = logging.getLogger("detect_dataset")


def fingerprint(cfg: DictConfig, store_path: str | Path | None, records, precision: list[str]) -> str:
    """Short digest of what the detections depend on: the detector file, the settings, the image list
    (indices, ids, annotated sizes (the frame each image is read in), paths and each image's content as
    ``image_fingerprint`` tells it), the proposals and
    the members' precision (fp32 / int8), so that shards of an earlier run are resumed only when they
    came from the same inputs (other inputs write other shards; nothing is mixed)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    images = image_list_digest([r.path for r in records], [(r.index, r.image_id, r.width, r.height) for r in records],
                               cfg.image_fingerprint)
    what = {"detector": file_sha256(cfg.detector), "data": str(cfg.data.name), "split": str(cfg.split),
            "images": images, "store": file_sha256(store_path) if store_path is not None else None,
            "proposer": resolved.get("proposer"), "precision": precision,
            **{k: resolved[k] for k in ("score_threshold", "max_per_image", "cascade_threshold", "use_members")}}
    return digest(what, 10)


def check_output_is_ours(output: Path) -> None:
    """Refuse to replace an existing output file that this tool did not write (no run record beside it)."""
    record = detections_record(output)
    for path in (output, output.with_suffix(".json")):
        if path.exists() and not record.path.is_file():
            raise OutputConflict(f"{path}: exists and was not written by detect_dataset.py (no {record.path.name} "
                                 "beside it); not overwritten: choose another output=")


def merged_detections(run: ChunkedRun, records) -> tuple[Detections, dict[str, str]]:
    """Every chunk's detections in image order, and the images that failed (``{id: reason}``); stops
    (``RuntimeError``) when no image gave any result, naming the first failures (a run that processed
    nothing is never written as a result)."""
    failed: dict[str, str] = {}
    for z in run.chunks(("errors",)):
        failed.update(json.loads(str(z["errors"])) if "errors" in z else {})
    if len(failed) >= len(records):
        first = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        raise RuntimeError(f"{run.output}: no image could be processed ({len(failed)} of {len(records)} failed; "
                           f"first: {first or 'the image list is empty'}); nothing written. Fix the cause and run "
                           f"again (the failed results in {run.dir} are removed)")
    if failed:
        log.warning("%d of %d images failed and have no detections (first: %s)", len(failed), len(records),
                    next(iter(failed.items())))
    dets = Detections.concat(Detections(z["image_index"], z["labels"], z["scores"], z["boxes"])
                             for z in run.chunks(("image_index", "labels", "scores", "boxes")))
    return dets.select(dets.image_index.argsort(kind="stable")), failed


def write_outputs(output: Path, dets: Detections, dataset, key: str, info: dict) -> None:
    """Replace ``output`` (ILSVRC submission) and its .json (COCO results) as one unit with the run
    record: not complete first, complete with the outputs' digests last; a kill in between is
    never taken for a finished run. Temporary files of earlier killed writes are removed first."""
    record = detections_record(output)
    with exclusive_lock(output):
        for path in (output, output.with_suffix(".json"), record.path):
            remove_stale_temps(path)
        record.begin(key)
        write_ilsvrc_submission(output, dets)
        write_coco_results(output.with_suffix(".json"), dets, dataset)
        record.finish(key, info)


def detect_chunks(detector: Detector, records, store, run: ChunkedRun, rank: int, prefetch: int, progress: bool) -> None:
    """Detect this rank's chunks of ``records`` not written yet, each written as one partial file."""
    chunks = run.indices(rank)
    pending = run.pending(rank)
    if len(pending) < len(chunks):
        log.info("rank %d: %d of %d chunks already done", rank, len(chunks) - len(pending), len(chunks))
    todo = [records[int(i)] for c in pending for i in chunks[c]]
    items = ((r, r.path, store.get(r.image_id) if store is not None and r.image_id in store else None,
              (r.width, r.height)) for r in todo)
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


def finish(run: ChunkedRun, output: Path, dataset, key: str, cfg: DictConfig, scoring: dict) -> None:
    """Rank 0: merge every rank's chunks into the outputs, then remove the partial results (this run's and
    those abandoned by earlier runs of other inputs). ``scoring``: the backend and precision that scored
    them, kept in the run record."""
    if not run.all_present():
        sys.exit(f"{output}: other ranks have not finished their chunks; run the same command again to finish")
    try:
        dets, failed = merged_detections(run, dataset.records)
    except RuntimeError:
        run.remove()  # only failures in there: a re-run tries every image again
        raise
    write_outputs(output, dets, dataset, key, {"detector": str(cfg.detector), "data": str(cfg.data.name),
                                               "split": str(cfg.split), "images": len(dataset),
                                               "detections": len(dets), "scoring": scoring,
                                               "failed_images": len(failed), "failed_first": dict(list(failed.items())[:5])})
    run.remove()
    run.remove_abandoned()
    lost = f"; {len(failed)} failed and have none" if failed else ""
    print(f"{len(dets)} detections on {len(dataset)} images{lost} ({cfg.data.name} {split_name(cfg.data, cfg.split)}): {output}")
    ids = coco_image_ids(dataset).tolist()
    if any(str(i) != str(r.image_id) for i, r in zip(ids, dataset.records)):  # e.g. '<split>/<id>' of merged splits
        print(f"{output.with_suffix('.json')}: image ids not all integers (first: {dataset.records[0].image_id!r}), "
              "so its COCO image_id is the image's index, the number the submission file gives it")


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
    if cfg.resume and detections_record(output).up_to_date(key):
        if ctx.is_main:
            print(f"{output} is up to date (same detector, images, proposals and settings): nothing to do")
        cleanup()
        return
    run = ChunkedRun(output, key, len(dataset.records), cfg.chunk_size, ctx.world_size)
    with run.lock(ctx.rank):
        run.begin(ctx.rank)
        if not cfg.resume:
            for c in range(len(run.indices(ctx.rank))):
                run.file(ctx.rank, c).unlink(missing_ok=True)
        detect_chunks(detector, dataset.records, store, run, ctx.rank, cfg.prefetch, cfg.progress and ctx.is_main)
    barrier()
    if ctx.is_main:
        finish(run, output, dataset, key, cfg, {**describe_scoring(detector.scorers),  # what scored them
                                                "requested": {"backend": str(cfg.backend), "precision": str(cfg.precision)}})
    cleanup()


if __name__ == "__main__":
    main()
