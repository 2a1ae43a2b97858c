"""Selective search side by side on coco128: OpenCV's fast preset, R-CNN fast mode (scale 1.0) and the
paper's scale 2.0. Same images, same resize width (500), one OpenCV thread, methods interleaved per image
so that load changes hit all three alike. Prints boxes/image, coverage@0.5, MABO and s/image.

    .venv/bin/python benchmarks/bench_proposals.py [--limit N]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from detect.data.coco import read_coco
from detect.data.images import read_image
from proposals.recall import proposal_recall
from proposals.selective_search import SelectiveSearch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=128, help="images to use")
    parser.add_argument("--resize-width", type=int, default=500, help="segmentation width, all methods")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    dataset = read_coco(DATA / "annotations" / "instances_train2017.json", DATA / "images" / "train2017")
    records = dataset.records[: args.limit]
    methods = {
        "opencv_fast (preset)": SelectiveSearch(mode="opencv_fast", superpixel_scale=1.0, resize_width=args.resize_width),
        "rcnn_fast scale 1.0": SelectiveSearch(superpixel_scale=1.0, resize_width=args.resize_width),
        "rcnn_fast scale 2.0": SelectiveSearch(superpixel_scale=2.0, resize_width=args.resize_width),
    }
    boxes = {m: [] for m in methods}
    seconds = {m: 0.0 for m in methods}
    for rec in records:
        image = read_image(rec.path)
        for m, ss in methods.items():
            start = time.perf_counter()
            boxes[m].append(ss(image).boxes)
            seconds[m] += time.perf_counter() - start
    gts = [r.boxes for r in records]
    keep = [~r.ignore for r in records]
    print(f"{len(records)} images, resize width {args.resize_width}, 1 OpenCV thread, load avg {os.getloadavg()}")
    print(f"{'method':22s} {'boxes/img':>9s} {'cov@0.5':>8s} {'MABO':>6s} {'s/img':>6s}")
    for m in methods:
        r = proposal_recall(gts, boxes[m], keep, ks=[1000], plus_one=False)
        print(f"{m:22s} {r.boxes_per_image:9.1f} {r.coverage_050:8.3f} {r.mabo:6.3f} {seconds[m] / len(records):6.3f}")
    n1, n2 = (np.mean([len(b) for b in boxes[m]]) for m in ("rcnn_fast scale 1.0", "rcnn_fast scale 2.0"))
    t_cv, t2 = seconds["opencv_fast (preset)"], seconds["rcnn_fast scale 2.0"]
    print(f"boxes scale 2.0 / scale 1.0 = {n2 / n1:.3f}; time scale 2.0 / opencv_fast = {t2 / t_cv:.3f}")


if __name__ == "__main__":
    main()
