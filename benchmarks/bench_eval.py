"""Evaluation speed, two benchmarks.

1. In memory (default): our evaluator (ILSVRC, VOC and COCO rules) against pycocotools' COCOeval on one
   ILSVRC-val-sized world::

    .venv/bin/python benchmarks/bench_eval.py --images 20121 --boxes 55502 --dets 200000 --classes 200

   The world is seeded and generated in memory: ground-truth boxes (a quarter of them small),
   detections = jittered copies of ground truth (some with a wrong class) plus random boxes, spread
   over all images. COCOeval runs with iouThrs = [0.5], areaRng = [all] and maxDets = [100] (what AP50
   needs), evaluate() + accumulate(); its ground truth is built in memory (no JSON parsing timed).

2. End to end (``--end-to-end``): ``tools/eval_map.py`` as a user runs it, against a plain numpy
   reimplementation of the devkit's ``eval_detection.m`` (``benchmarks/eval_reference.py``: numpy and
   the standard library's XML parser), both reading the same ~20,121 ILSVRC-like XML files (the real class list and val list; no
   images) and the same submission, each in its own process, measured side by side in turns::

    .venv/bin/python benchmarks/bench_eval.py --end-to-end --dets 50000 --repeats 3

   Reported per command: wall seconds, CPU seconds (user + sys, worker processes included) and peak
   RSS of the process; for eval_map with the annotation cache cold (cleared before each run) and warm,
   and ``eval_map --cfg job`` (imports and Hydra's composition, no work: the tool's start-up floor).
   The two mAPs must agree.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ilsvrc"


# ---------------------------------------------------------------- end to end: the XML world


def write_xml_world(root: Path, dets: int, seed: int) -> tuple[Path, Path]:
    """ILSVRC 2015 layout without images: Annotations/DET/val/<name>.xml for every name of the real val
    list (20,121; a generated list of that size when ../shared is absent), ImageSets/DET/val.txt, and
    a submission of ``dets`` lines: jittered copies of ground truth and random boxes, 3.5 % of them
    inverted (xmax < xmin), 4-decimal confidences (ties occur). Returns (root, submission path)."""
    from detect.classes import ilsvrc_det_classes

    rng = np.random.default_rng(seed)
    wnids = ilsvrc_det_classes().wnids
    if (SHARED / "val.txt").is_file():
        entries = [line.split() for line in (SHARED / "val.txt").read_text().splitlines() if line.strip()]
    else:
        entries = [[f"ILSVRC2013_val_{k:08d}", str(k)] for k in range(1, 20122)]
    xml_dir = root / "Annotations" / "DET" / "val"
    xml_dir.mkdir(parents=True)
    (root / "ImageSets" / "DET").mkdir(parents=True)
    (root / "ImageSets" / "DET" / "val.txt").write_text("".join(f"{n} {i}\n" for n, i in entries))
    gt = []
    for name, index in entries:
        w, h = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        objs = []
        for _ in range(int(rng.poisson(2.76))):  # 55,502 / 20,121 boxes per image on the real val
            bw, bh = (rng.integers(4, 30, 2) if rng.random() < 0.25 else rng.integers(30, 200, 2)).tolist()
            x, y = int(rng.integers(0, max(1, w - bw))), int(rng.integers(0, max(1, h - bh)))
            objs.append((int(rng.integers(0, 200)), x, y, x + bw - 1, y + bh - 1))
        gt.append((int(index), objs))
        body = "".join(f"\t<object>\n\t\t<name>{wnids[c]}</name>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n"
                       f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n"
                       f"\t</object>\n" for c, x1, y1, x2, y2 in objs)
        (xml_dir / f"{name}.xml").write_text(
            f"<annotation>\n\t<folder>val</folder>\n\t<filename>{name}</filename>\n\t<source>\n\t\t<database>"
            f"ILSVRC_2013</database>\n\t</source>\n\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>"
            f"\n\t</size>\n{body}</annotation>\n")
    lines = []
    boxes = [(i, o) for i, objs in gt for o in objs]
    for k in rng.integers(0, len(boxes), dets // 2):
        i, (c, x1, y1, x2, y2) = boxes[k]
        j = rng.normal(0, 0.1 * max(x2 - x1, y2 - y1), 4)
        lines.append((i, c if rng.random() > 0.1 else int(rng.integers(0, 200)), x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3]))
    for _ in range(dets - len(lines)):
        x, y = rng.uniform(0, 400, 2)
        lines.append((int(rng.integers(1, len(gt) + 1)), int(rng.integers(0, 200)), x, y, x + rng.uniform(5, 200),
                      y + rng.uniform(5, 200)))
    sub = root / "submission.txt"
    with open(sub, "w") as f:
        for i, c, x1, y1, x2, y2 in lines:
            if rng.random() < 0.035:
                x1, x2 = x2, x1
            f.write(f"{i} {c + 1} {rng.random():.4f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}\n")
    return root, sub


def _run_measured(cmd: list[str], env: dict) -> tuple[float, float, float, str]:
    """Run ``cmd``; (wall s, CPU s = user + sys, peak RSS MB, stdout) of that process and its workers.

    Through GNU time (``/usr/bin/time``), a small process: a child forked straight from this one would
    count this process's memory, which it shares until it execs, in its own peak RSS."""
    timer = shutil.which("time") or "/usr/bin/time"
    if not os.path.exists(timer):
        raise SystemExit("GNU time (/usr/bin/time) is needed to measure peak RSS without this process's memory")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        code = subprocess.run([timer, "-f", "BENCH %U %S %M", *cmd], stdout=out, stderr=err, env=env).returncode
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        text = err.read()
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
        user, system, rss_kb = text.strip().splitlines()[-1].split()[1:]
        return wall, float(user) + float(system), float(rss_kb) / 1024, out.read()


def end_to_end(a) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        t0 = time.perf_counter()
        root, sub = write_xml_world(tmp / "ILSVRC", a.dets, a.seed)
        blacklist = SHARED / "ILSVRC2014_det_validation_blacklist.txt"
        blacklist = blacklist if blacklist.is_file() else None
        n_xml = len(os.listdir(root / "Annotations/DET/val"))
        print(f"world: {n_xml} XML files, {a.dets} detection lines, blacklist {blacklist is not None} "
              f"(written in {time.perf_counter() - t0:.1f} s)")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        py = sys.executable
        reference = [py, str(Path(__file__).with_name("eval_reference.py")), str(root), str(sub)] + (
            [str(blacklist)] if blacklist else [])
        work = tmp / "work"
        eval_map = [py, str(REPO / "tools" / "eval_map.py"), "data=ilsvrc", f"data.root={root}", f"detections={sub}",
                    f"work_dir={work}", f"hydra.run.dir={tmp / 'logs'}"] + ([f"data.blacklist={blacklist}"] if blacklist else [])
        runs = {"plain reference (eval_detection.m in numpy, stdlib XML)": [], "eval_map, annotation cache cold": [],
                "eval_map, annotation cache warm": [], "eval_map, cache warm, no PR-curve PNG": [],
                "eval_map --cfg job (start-up floor: imports + Hydra)": []}
        names = list(runs)
        maps = {}
        for r in range(a.repeats):
            for name in names:
                if name == names[0]:
                    cmd = reference
                else:
                    if name == names[1]:
                        shutil.rmtree(work / "cache", ignore_errors=True)
                    cmd = eval_map + (["plot_best=0", "plot_worst=0"] if "no PR" in name else [])
                    cmd = cmd + (["--cfg", "job"] if "floor" in name else [])
                wall, cpu, rss, out = _run_measured(cmd, env)
                runs[name].append((wall, cpu, rss))
                if name == names[0]:
                    maps["reference"] = json.loads(out.strip().splitlines()[-1])["mean_ap"]
                elif "floor" not in name:
                    maps["eval_map"] = json.loads((work / "eval" / "eval_ilsvrc_val.json").read_text())["mean_ap"]
                print(f"round {r + 1} {name:55s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  peak RSS {rss:6.0f} MB", flush=True)
        print(f"\nmedians over {a.repeats} rounds (wall / CPU seconds, peak RSS MB):")
        med = {n: [statistics.median(v[k] for v in runs[n]) for k in range(3)] for n in names}
        for n in names:
            print(f"  {n:55s} {med[n][0]:6.2f}  {med[n][1]:6.2f}  {med[n][2]:6.0f}")
        ref = med[names[0]]
        for n in names[1:-1]:
            print(f"  ratio reference / {n}: wall {ref[0] / med[n][0]:.2f}x, CPU {ref[1] / med[n][1]:.2f}x")
        print(f"mAP: reference {maps['reference']:.12f}, eval_map {maps['eval_map']:.12f}, "
              f"difference {abs(maps['reference'] - maps['eval_map']):.1e}")
        if a.parsers:
            compare_parsers(root / "Annotations/DET/val")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_parsers(xml_dir: Path) -> None:
    """Parse every file with defusedxml's ElementTree and with detect.data.xmlfile (CPU seconds, best of 3;
    the trees are dropped as they are made, as a reader does)."""
    from defusedxml import ElementTree as SafeET

    from detect.data.xmlfile import read_xml_root

    files = sorted(str(p) for p in xml_dir.iterdir())
    for name, fn in (("defusedxml.ElementTree.parse", lambda f: SafeET.parse(f).getroot()),
                     ("detect.data.xmlfile.read_xml_root", read_xml_root)):
        best = min(_cpu_time(lambda: _each(fn, files)) for _ in range(3))
        print(f"parse {len(files)} files with {name:36s}: {best:.2f} CPU s")


def _each(fn, files) -> None:
    for f in files:
        fn(f)


def _cpu_time(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20121)
    p.add_argument("--boxes", type=int, default=55502)
    p.add_argument("--dets", type=int, default=None, help="detections (default 200000 in memory, 50000 end to end)")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-pycocotools", action="store_true")
    p.add_argument("--end-to-end", action="store_true", help="eval_map on generated XML against the plain reference")
    p.add_argument("--repeats", type=int, default=3, help="end to end: rounds of the commands, in turns")
    p.add_argument("--parsers", action="store_true", help="end to end: also time defusedxml against our XML reader")
    a = p.parse_args()
    if a.end_to_end:
        a.dets = a.dets or 50000
        end_to_end(a)
        return
    a.dets = a.dets or 200000
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
