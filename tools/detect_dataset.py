"""Run the detector over a dataset split: ILSVRC submission + COCO-results JSON for tools/eval_map.py.

    python tools/detect_dataset.py data=synthetic split=val
    torchrun --nproc_per_node=4 tools/detect_dataset.py data=ilsvrc data.root=/data/ILSVRC device=cuda

Each rank takes every world_size-th image and streams its lines to a shard file (kept as the resume
state: images already done are skipped on a re-run; shard names carry a hash of the detector file,
the image list, the proposal store and the settings, so changed inputs start afresh and are never
mixed with old lines; a second run on the same shard is stopped by a lock); rank 0 merges the shards
into ``<output>.txt`` and ``<output>.json`` and records the run in ``<output>.txt.run.json``. An
existing output without that record is not this tool's and is never overwritten. Cached proposals come from the proposal store when it holds
the image, else from the detector's live proposer.
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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from detect.data.records import SkipLog
from detect.detections import (Detections, SubmissionWriter, read_ilsvrc_submission, write_coco_results,
                               write_ilsvrc_submission)
from detect.distributed import barrier, cleanup, setup
from detect.io import OutputConflict, atomic_write_json, exclusive_lock, file_sha256
from detect.pipeline import Detector
from proposals.store import ProposalStore

log = logging.getLogger("detect_dataset")


def fingerprint(cfg: DictConfig, store_path: str | Path | None, records, precision: list[str]) -> str:
    """Short hash of what the detections depend on: the detector file, the settings, the image list
    (indices, ids and paths), the proposals and the members' precision (fp32 / int8), so that shards of an earlier run are resumed only when
    they came from the same inputs (other inputs write other shards; nothing is mixed)."""
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
        store_path = Path(cfg.paths.proposals_dir) / f"{cfg.data.name}_{cfg.split}_{detector.proposer.name}.npz"
    if store_path is not None and Path(store_path).is_file():
        store = ProposalStore.load(store_path)
        log.info("%s: cached proposals for %d images", store_path, len(store))
    elif detector.proposer is None:
        raise ValueError(f"no proposal store at {store_path} and the detector has no proposer")

    output = Path(cfg.output or Path(cfg.paths.detections_dir) / f"{cfg.data.name}_{cfg.split}.txt")
    check_output_is_ours(output)
    precision = [getattr(m, "precision", "fp32") for m in detector.ensemble.members]
    key = fingerprint(cfg, store_path if store is not None else None, dataset.records, precision)
    shard = output.with_name(f"{output.name}.{key}.rank{ctx.rank}of{ctx.world_size}")
    records = dataset.records[ctx.rank::ctx.world_size]
    skipped = SkipLog("images")
    start, computed = time.perf_counter(), 0
    with exclusive_lock(shard), SubmissionWriter(shard, resume=cfg.resume) as writer:
        todo = [r for r in records if r.index not in writer.done]
        if len(todo) < len(records):
            log.info("rank %d: %d of %d images already done", ctx.rank, len(records) - len(todo), len(records))
        items = ((r, r.path, store.get(r.image_id) if store is not None and r.image_id in store else None)
                 for r in todo)
        results = detector.detect_many(items, prefetch=cfg.prefetch)
        for record, _, result, error in tqdm(results, total=len(todo), desc=f"detect rank {ctx.rank}",
                                          disable=not (cfg.progress and ctx.is_main)):
            if error is not None:  # unreadable image, proposer error: reported, no detections
                skipped.add(record.path, f"unusable: {error}")
                dets = Detections.empty()
            else:
                dets = Detections.for_image(record.index, result.labels, result.scores, result.boxes)
            writer.add(record.index, dets)
            computed += 1
    if computed:
        log.info("rank %d: %d images in %.1f s (%.3f s/image); %s", ctx.rank, computed,
                 time.perf_counter() - start, (time.perf_counter() - start) / computed, skipped.summary())
    barrier()
    if ctx.is_main:
        shards = [output.with_name(f"{output.name}.{key}.rank{r}of{ctx.world_size}") for r in range(ctx.world_size)]
        dets = Detections.concat(read_ilsvrc_submission(p, num_classes=len(detector.classes)) for p in shards)
        dets = dets.select(dets.image_index.argsort(kind="stable"))
        with exclusive_lock(output):
            atomic_write_json(run_record(output), {"fingerprint": key, "detector": str(cfg.detector),
                                                   "data": str(cfg.data.name), "split": str(cfg.split),
                                                   "images": len(dataset), "detections": len(dets)})
            write_ilsvrc_submission(output, dets)
            write_coco_results(output.with_suffix(".json"), dets, dataset)
        print(f"{len(dets)} detections on {len(dataset)} images ({cfg.data.name} {cfg.split}): {output}")
    cleanup()


if __name__ == "__main__":
    main()
