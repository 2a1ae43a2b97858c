"""The "own dataset" command on a VOC folder the project writes: wall time per stage and VOC mAP.

    .venv/bin/python benchmarks/bench_own_dataset.py --work /tmp/own_dataset [--format coco] [--members 2]

Writes the synthetic detection world (the demo's size: 8 classes, 300 training and 100 test images)
as a PASCAL VOC folder (1-based boxes, class names, ImageSets/Main/trainval.txt and test.txt; every
third image named ``.JPG``, the others ``.jpg``) or as COCO files, then runs, timed, exactly what a
user runs:

    python tools/demo.py experiment=small data=voc data.root=<folder> work_dir=<work>/run

and prints the seconds of every stage (from the stage stamps), the proposal and detection cost per
image, the cost per ensemble member and the mAP with the data's own rules (VOC for VOC, COCO AP50 for
COCO). A summary JSON is written to ``<work>/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detect.data.synthetic import make_detection_world  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the dataset and the run")
    p.add_argument("--format", choices=["voc", "coco"], default="voc")
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for tools/demo.py")
    args = p.parse_args()
    work = Path(args.work).resolve()
    data_root = work / f"{args.format}_world"
    start = time.perf_counter()
    make_detection_world(data_root, num_train=args.num_train, num_val=args.num_val, layout=args.format,
                         extensions=[".jpg", ".jpg", ".JPG"])
    print(f"dataset written in {time.perf_counter() - start:.1f} s: {data_root}", flush=True)
    data = ["data=voc"] if args.format == "voc" else ["data=coco", "data.train_name=train", "data.val_name=val"]
    cmd = [sys.executable, str(ROOT / "tools" / "demo.py"), "experiment=small", *data, f"data.root={data_root}",
           f"work_dir={work / 'run'}", f"members={args.members}", *args.extra]
    print("$ " + " ".join(cmd[1:]), flush=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the command failed with exit code {result.returncode}")
    run = work / "run"
    stages = {}
    for stamp in sorted((run / "stages").glob("*.json"), key=lambda s: s.stat().st_mtime):
        info = json.loads(stamp.read_text())
        stages[info["name"]] = info["seconds"]
    stem = "voc_test" if args.format == "voc" else "coco_val"
    report = json.loads((run / "eval" / f"eval_{stem}.json").read_text())
    per_image = {}
    for store in sorted((run / "proposals").glob("*.json")):
        side = json.loads(store.read_text())
        if "seconds_per_image" in side:
            per_image[store.stem] = side["seconds_per_image"]
    members = [stages[k] for k in stages if k.startswith("train_region_")]
    summary = {"command": " ".join(cmd[1:]), "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "wall_seconds": wall, "stage_seconds": stages, "proposal_seconds_per_image": per_image,
               "seconds_per_member": members, "test_images": report.get("num_images"),
               "rules": report.get("rules"), "mean_ap": report["mean_ap"],
               "ap50_pycocotools": report.get("ap50_pycocotools")}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"\n{args.format}: mAP@0.5 {report['mean_ap']:.4f} ({summary['rules']} rules, {summary['test_images']} test images), "
          f"wall {wall / 60:.1f} min, {len(members)} members, CPU {summary['cpu']} x{summary['cores']}, "
          f"load average {load_before[0]:.1f} before / {summary['load_average_after'][0]:.1f} after")


if __name__ == "__main__":
    main()
