"""Compare proposal stores on a dataset split: a table, a recall curve (PNG) and a JSON; see
conf/eval_proposals.yaml.

    python tools/eval_proposals.py data=ilsvrc split=val stores='[a.npz,b.npz]'
"""
from __future__ import annotations

import glob
import json
import logging
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from detect.data import read_dataset
from detect.data.records import SkipLog
from detect.data.splits import output_stem, split_name
from detect.evaluation import rules_for_dataset
from detect.io import atomic_write_json
from detect.plots import plot_recall_curves
from proposals.recall import store_recall
from proposals.store import ProposalStore, sidecar_path

log = logging.getLogger("eval_proposals")


@hydra.main(config_path="../conf", config_name="eval_proposals", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    dataset = read_dataset(cfg.data[cfg.split], check_images=cfg.check_images)
    plus_one = cfg.plus_one
    if plus_one == "auto":  # the data format's own convention: COCO boxes are continuous, ILSVRC/VOC inclusive pixels
        plus_one = rules_for_dataset(cfg.data) != "coco"
    elif not isinstance(plus_one, bool):
        raise SystemExit(f"plus_one must be auto, true or false, got {plus_one!r}")
    log.info("IoU with %s widths (plus_one=%s)", "x2 - x1 + 1" if plus_one else "x2 - x1", plus_one)
    stem = output_stem(cfg.data, cfg.split)
    paths = [Path(p) for p in cfg.stores] or sorted(Path(cfg.paths.proposals_dir).glob(f"{glob.escape(stem)}_*.npz"))
    if not paths:
        raise SystemExit(f"no proposal stores given and none named {stem}_*.npz in {cfg.paths.proposals_dir}")
    results, rows, skipped = {}, {}, SkipLog("images")
    for path in paths:
        store = ProposalStore.load(path)
        name = store.meta.get("method", path.stem)
        r = store_recall(store, dataset, cfg.ks, cfg.iou, bool(plus_one), skipped)
        side = sidecar_path(path)
        seconds = json.loads(side.read_text()).get("seconds_per_image") if side.is_file() else None
        results[name] = r
        rows[name] = dict(asdict(r), store=str(path), seconds_per_image=seconds)
    header = f"{'method':24s} {'boxes/img':>9s} {'cov@0.5':>8s} {'cov@ILSVRC':>10s} {'MABO':>6s} {'s/img':>6s}"
    lines = [header] + [
        f"{n:24s} {v['boxes_per_image']:9.1f} {v['coverage_050']:8.3f} {v['coverage_ilsvrc']:10.3f} "
        f"{v['mabo']:6.3f} {'' if v['seconds_per_image'] is None else format(v['seconds_per_image'], '6.2f'):>6s}"
        for n, v in rows.items()]
    print("\n".join(lines))
    out = Path(cfg.paths.eval_dir) / (cfg.output_name or f"proposals_{stem}")
    atomic_write_json(out.with_suffix(".json"), {"dataset": cfg.data.name, "split": cfg.split,
                                                 "split_name": split_name(cfg.data, cfg.split),
                                                 "plus_one": bool(plus_one), "methods": rows})
    plot_recall_curves(results, out.with_suffix(".png"), f"{cfg.data.name} {split_name(cfg.data, cfg.split)} ({cfg.split})")
    log.info("wrote %s.json and .png; %s", out, skipped.summary())
    return rows


if __name__ == "__main__":
    main()
