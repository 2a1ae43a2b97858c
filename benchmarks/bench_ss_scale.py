"""How much of the ground truth selective search 2x finds at each segmented size, by object size.

    .venv/bin/python benchmarks/bench_ss_scale.py coco  [--limit 60] [--sides 320 500 960]
    .venv/bin/python benchmarks/bench_ss_scale.py world [--limit 40] [--sides 500 750 1000]

``coco``: the first images of ../shared/data/coco128 (COCO photos, longer side 640 or less; a side above
that segments them at their own size). ``world``: photo-sized scenes drawn by the synthetic generator
(1000-1500 pixels, objects from 30 pixels to 0.3 of the shorter side), the case of a user's phone photos.
Selective search as experiment=small runs it (conf/proposals/union_bounded.yaml: R-CNN fast mode, scale
2.0, ``resize_width=None``) with ``max_side`` set to each size, the sizes interleaved per image (one OpenCV
thread) so that load changes hit all alike. Prints, per size: boxes per image, recall at IoU 0.5 (COCO's
continuous boxes), recall by the box's shorter side *at the segmented size*, and seconds per image; then
the size :func:`proposals.selective_search.segmentation_side` (the one command's ``segment_size``) picks.
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
from detect.data.synthetic import render_detection_image, scene_classes
from proposals.recall import best_proposal_overlaps
from proposals.selective_search import SelectiveSearch, segmentation_side

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
BUCKETS = [(0, 16), (16, 32), (32, 64), (64, float("inf"))]


def coco_images(limit: int):
    """``(image, gt boxes)`` of the first ``limit`` coco128 photos (crowd boxes left out)."""
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: not found (the coco128 sample of ../shared)")
    dataset = read_coco(DATA / "annotations" / "instances_train2017.json", DATA / "images" / "train2017")
    for record in dataset.records[:limit]:
        yield read_image(record.path, (record.width, record.height)), record.boxes[~record.ignore]


def world_images(limit: int, seed: int = 0):
    """``(image, gt boxes)`` of ``limit`` generated photo-sized scenes."""
    rng = np.random.default_rng(seed)
    classes = scene_classes(8)
    for _ in range(limit):
        width, height = (int(v) for v in rng.integers(1000, 1501, 2))
        labels = rng.integers(0, len(classes), int(rng.integers(3, 9))).tolist()
        image, boxes, _ = render_detection_image(rng, width, height, classes, labels, 30.0, 0.3, 0.6, 30)
        yield image, boxes.astype(np.float64) + [0, 0, 1, 1]  # inclusive pixels -> continuous


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", choices=["coco", "world"])
    parser.add_argument("--limit", type=int, default=None, help="images (coco: 60, world: 40)")
    parser.add_argument("--sides", type=int, nargs="+", default=None, help="max_side values to compare")
    args = parser.parse_args()
    limit = args.limit or (60 if args.data == "coco" else 40)
    sides = args.sides or ([320, 500, 960] if args.data == "coco" else [500, 750, 1000])
    cv2.setNumThreads(1)
    methods = {s: SelectiveSearch(superpixel_scale=2.0, resize_width=None, max_side=s) for s in sides}
    best = {s: [] for s in sides}      # best IoU of every ground-truth box
    short = {s: [] for s in sides}     # its shorter side at the segmented size
    counts = {s: 0 for s in sides}
    seconds = {s: 0.0 for s in sides}
    photo_short, photo_side = [], []   # shorter box side and longer image side, in the photo
    images = coco_images(limit) if args.data == "coco" else world_images(limit)
    n = 0
    for image, gt in images:
        n += 1
        longer = max(image.shape[:2])
        box_short = np.minimum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1])
        photo_short += box_short.tolist()
        photo_side += [longer] * len(gt)
        for s, ss in methods.items():
            start = time.perf_counter()
            boxes = ss(image).boxes
            seconds[s] += time.perf_counter() - start
            counts[s] += len(boxes)
            overlaps, _ = best_proposal_overlaps(gt, boxes, plus_one=False)
            best[s] += overlaps.tolist()
            short[s] += (box_short * min(1.0, s / longer)).tolist()
    print(f"{args.data}: {n} images, {len(photo_short)} boxes; selective search 2x, resize_width None, 1 OpenCV "
          f"thread; load average {os.getloadavg()[0]:.1f}")
    head = " ".join(f"{f'{lo:g}-{hi:g} px':>12s}" for lo, hi in BUCKETS)
    print(f"{'max_side':>8s} {'boxes/img':>9s} {'recall@0.5':>10s} {head} {'s/img':>6s}")
    for s in sides:
        hit, at = np.asarray(best[s]) >= 0.5, np.asarray(short[s])
        cells = []
        for lo, hi in BUCKETS:
            sel = (at >= lo) & (at < hi)
            cells.append(f"{hit[sel].mean():.2f} ({sel.sum()})" if sel.any() else "-")
        print(f"{s:8d} {counts[s] / n:9.0f} {hit.mean():10.3f} " + " ".join(f"{c:>12s}" for c in cells)
              + f" {seconds[s] / n:6.2f}")
    chosen = segmentation_side(np.asarray(photo_short), np.asarray(photo_side), base=500, limit=1000)
    print(f"segment_size (conf/demo.yaml defaults: 90 % of boxes keep 32 px, 500 to 1000) picks max_side {chosen}")


if __name__ == "__main__":
    main()
