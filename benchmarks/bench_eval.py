"""Time our evaluator (ILSVRC, VOC and COCO rules) and pycocotools' COCOeval on one ILSVRC-val-sized world.

    .venv/bin/python benchmarks/bench_eval.py --images 20121 --boxes 55502 --dets 200000 --classes 200

The world is seeded and generated in memory: ground-truth boxes (a quarter of them small), detections
= jittered copies of ground truth (some with a wrong class) plus random boxes, spread over all images.
COCOeval runs with iouThrs = [0.5], areaRng = [all] and maxDets = [100] (what AP50 needs), evaluate()
+ accumulate(); its ground truth is built in memory (no JSON parsing timed).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np

from detect.classes import ClassList
from detect.data.records import DetectionDataset, DetectionRecord
from detect.detections import Detections
from detect.evaluation import coco_ap50_pycocotools, evaluate


def make_world(images: int, boxes: int, dets: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    img_of_box = np.sort(rng.integers(0, images, boxes))
    wh = np.where(rng.random((boxes, 1)) < 0.25, rng.uniform(4, 30, (boxes, 2)), rng.uniform(30, 300, (boxes, 2)))
    xy = rng.uniform(0, 200, (boxes, 2))
    gt_boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    gt_labels = rng.integers(0, classes, boxes)
    starts = np.searchsorted(img_of_box, np.arange(images + 1))
    records = [DetectionRecord(str(i + 1), Path(f"{i + 1}.jpg"), 500, 500, gt_boxes[starts[i]:starts[i + 1]],
                               gt_labels[starts[i]:starts[i + 1]], np.zeros(starts[i + 1] - starts[i], bool), index=i + 1)
               for i in range(images)]
    dataset = DetectionDataset(records, ClassList.from_names([f"c{k}" for k in range(classes)]), name="bench")
    n_true = dets // 2
    src = rng.integers(0, boxes, n_true)
    jitter = rng.normal(0, 0.1, (n_true, 4)) * np.tile(wh[src], 2)
    true_boxes = gt_boxes[src] + jitter
    true_boxes[:, 2:] = np.maximum(true_boxes[:, 2:], true_boxes[:, :2] + 1)
    wrong = rng.random(n_true) < 0.1
    true_labels = np.where(wrong, rng.integers(0, classes, n_true), gt_labels[src])
    n_rand = dets - n_true
    rxy = rng.uniform(0, 400, (n_rand, 2))
    rand_boxes = np.hstack([rxy, rxy + rng.uniform(5, 200, (n_rand, 2))])
    detections = Detections(
        np.concatenate([img_of_box[src] + 1, rng.integers(1, images + 1, n_rand)]),
        np.concatenate([true_labels, rng.integers(0, classes, n_rand)]),
        np.concatenate([rng.uniform(0.3, 1.0, n_true), rng.uniform(0.0, 0.7, n_rand)]),
        np.vstack([true_boxes, rand_boxes]),
    )
    return dataset, detections


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20121)
    p.add_argument("--boxes", type=int, default=55502)
    p.add_argument("--dets", type=int, default=200000)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-pycocotools", action="store_true")
    a = p.parse_args()
    (dataset, dets), t_gen = timed(make_world, a.images, a.boxes, a.dets, a.classes, a.seed)
    print(f"world: {a.images} images, {a.boxes} boxes, {len(dets)} detections, {a.classes} classes "
          f"(generated in {t_gen:.1f} s)")
    times = {}
    for rules in ("ilsvrc", "voc", "coco"):
        result, times[rules] = timed(evaluate, dataset, dets, rules=rules)
        print(f"ours {rules:7s}: mAP {100 * result.mean_ap:6.2f}  {times[rules]:6.2f} s")
    if not a.skip_pycocotools:
        with contextlib.redirect_stdout(io.StringIO()):
            ap, t_coco = timed(coco_ap50_pycocotools, dataset, dets)
        print(f"pycocotools COCOeval (iouThrs [0.5], areaRng all, maxDets 100; incl. building COCO objects): "
              f"AP50 {100 * ap:6.2f}  {t_coco:6.2f} s")
        print(f"ratio pycocotools / ours(coco rules): {t_coco / times['coco']:.1f}x; "
              f"pycocotools / ours(ilsvrc rules): {t_coco / times['ilsvrc']:.1f}x")


if __name__ == "__main__":
    main()
