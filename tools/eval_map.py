"""Evaluate a detections file on a dataset split: per-class AP table, mAP, JSON report, PR curves.

    python tools/eval_map.py data=ilsvrc data.root=/datasets/ILSVRC data.blacklist=... detections=val.txt

Reads the ground truth only (no pixels; ``check_images=false``), so a ground-truth-only folder works.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from detect.data import read_dataset
from detect.data.records import SkipLog
from detect.data.splits import detections_path, evaluation_paths, split_name
from detect.detections import read_detections
from detect.evaluation import coco_ap50_pycocotools, evaluate, rules_for_dataset
from detect.io import atomic_write_json
from detect.runs import detections_record

log = logging.getLogger(__name__)


def recorded_scoring(detections_file: Path, num_detections: int) -> tuple[dict | None, str, int | None]:
    """``(scoring, text, failed)``: the backend and precision that scored the detections and the number of
    images that failed in detection (no detections: misses), from the run record that tools/detect_dataset.py
    writes beside its output (``<name>.txt.run.json``); ``None``, the reason and ``None`` when there is no
    record, it says nothing of them, or it counts other detections than were read."""
    record_file = detections_record(detections_file.with_suffix(".txt"))  # beside the .txt (the .json is its twin)
    record, record_path = record_file.read(), record_file.path
    if not record:
        return None, f"unknown (no run record of tools/detect_dataset.py at {record_path})", None
    scoring = record.get("scoring")
    if not isinstance(scoring, dict) or not {"backend", "precision"} <= scoring.keys():
        return None, f"unknown ({record_path} does not record it)", None
    if not record.get("complete"):
        return None, f"unknown ({record_path} is not a finished run's record)", None
    if record.get("detections") != num_detections:
        return None, f"unknown ({record_path} records {record.get('detections')} detections, {num_detections} were read)", None
    if not record_file.vouches_for(detections_file.name, record):
        return None, f"unknown ({detections_file} is not the file that {record_path} vouches for)", None
    requested = scoring.get("requested") or {}
    chosen = f", chosen by precision={requested['precision']}" if requested.get("precision") not in (None, scoring["precision"]) else ""
    return scoring, f"{scoring['backend']} {scoring['precision']}{chosen}", record.get("failed_images")


def run(cfg: DictConfig) -> dict:
    """Evaluate as configured; returns the JSON report (also written to ``out_dir``)."""
    dataset = read_dataset(cfg.data[cfg.split], check_images=cfg.check_images)
    detections_file = cfg.detections or detections_path(cfg.paths.detections_dir, cfg.data, cfg.split)
    skipped = SkipLog("detection lines")
    detections = read_detections(detections_file, dataset, format=cfg.format, skipped=skipped)
    if not len(detections):
        why = f"every one was skipped: {skipped.summary()}" if len(skipped) else "the file is empty"
        raise ValueError(f"{detections_file}: no detections to evaluate on {dataset.name} ({len(dataset)} images); {why}")
    own_rules = rules_for_dataset(cfg.data)
    rules = own_rules if cfg.rules == "auto" else cfg.rules
    report_path, plot_path = evaluation_paths(cfg.out_dir, cfg.data, cfg.split, rules, own_rules)
    result = evaluate(dataset, detections, rules=rules, **OmegaConf.to_container(cfg.evaluate))
    print(result.table())
    scoring, scoring_text, failed = recorded_scoring(Path(detections_file), len(detections))
    print(f"scored by: {scoring_text}")
    if failed:
        print(f"note: {failed} of the {len(dataset)} images failed in detection (see the detection log) and have no "
              "detections: their objects count as misses")
    report = result.to_json(curves=cfg.curves_in_json)
    report.update(detections=str(detections_file), dataset=cfg.data.name, split=cfg.split,
                  split_name=split_name(cfg.data, cfg.split),
                  num_images=len(dataset), num_detections=len(detections), skipped_lines=len(skipped),
                  skipped_annotations=len(dataset.skipped), annotation_warnings=len(dataset.warnings),
                  scoring=scoring, scoring_text=scoring_text, failed_images=failed)
    if rules == "coco":
        report.update(pycocotools_cross_check(dataset, detections, cfg.evaluate.max_dets))
        print(f"AP50 pycocotools: {100 * report['ap50_pycocotools']:.2f}   ours: {100 * result.mean_ap:.2f}")
        for file in report["annotation_id_0_in"]:
            print(f"note: {file} has annotation id 0; the pycocotools figure above numbers the annotations from 1. "
                  "pycocotools run on that file itself counts a detection matching the box with id 0 as a false "
                  "positive (its matching takes id 0 for 'unmatched') and reports less.")
    if len(skipped):
        print(skipped.summary())
    # with the curves (hundreds of thousands of numbers) compact JSON: the indenting encoder is pure Python, much slower
    atomic_write_json(report_path, report, indent=None if cfg.curves_in_json else 2)
    if cfg.plot_best or cfg.plot_worst:
        from detect.plots import save_pr_curves

        save_pr_curves(result, plot_path, cfg.plot_best, cfg.plot_worst)
    log.info("wrote %s", report_path)
    return report


def pycocotools_cross_check(dataset, detections, max_dets: int) -> dict:
    """pycocotools' AP50 for the report, with how its ground truth was made and the files of ``dataset``
    whose annotation id 0 pycocotools itself would score differently (the reader's warnings name them)."""
    return {"ap50_pycocotools": coco_ap50_pycocotools(dataset, detections, max_dets),
            "ap50_pycocotools_ground_truth": "rebuilt from the dataset read, annotation ids numbered from 1",
            "annotation_id_0_in": sorted({f for f, reason in dataset.warnings.entries
                                          if reason.startswith("annotation id 0")})}


@hydra.main(config_path="../conf", config_name="eval_map", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
