"""Time the synthetic generators and the readers on this machine.

    .venv/bin/python benchmarks/bench_data.py /tmp/bench_data
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from detect.data import read_coco, read_ilsvrc_det
from detect.data.synthetic import make_classification_set, make_detection_world


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path, help="scratch folder (removed first)")
    parser.add_argument("--coco", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/coco128")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    det = args.out / "det"
    timed("make_detection_world 300 train + 100 val (192..320 px, defaults)", lambda: make_detection_world(det))
    timed("make_detection_world again (manifest matches)", lambda: make_detection_world(det))
    timed("make_classification_set 8 x (100 + 20) at 128 px", lambda: make_classification_set(args.out / "cls"))
    ds = timed("read_ilsvrc_det synthetic train (300 XMLs)", lambda: read_ilsvrc_det(det, "train"))
    print(f"  {len(ds)} images, {sum(len(r.boxes) for r in ds)} boxes, "
          f"{sum(len(r.boxes) == 0 for r in ds)} empty")
    if args.coco.is_dir():
        ds = timed("read_coco coco128", lambda: read_coco(args.coco / "annotations/instances_train2017.json",
                                                          args.coco / "images/train2017"))
        print(f"  {len(ds)} images, {sum(len(r.boxes) for r in ds)} boxes")


if __name__ == "__main__":
    main()
