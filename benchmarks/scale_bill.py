"""The full-scale bill of the paper's recipe on ILSVRC: GPU hours on 1 and 8 GPUs and CPU hours, derived
from per-item costs (measured on the CPU by benchmarks/bench_scale.py and bench_proposals.py) and stated
GPU assumptions (public figures until benchmarks/gpu_check.sh has been run on a GPU). Every constant
below is an input of the table; change one and run again.

    .venv/bin/python benchmarks/scale_bill.py --results benchmarks/scale_results.json
    .venv/bin/python benchmarks/scale_bill.py --results ... --crops-per-s 8000    # another GPU assumption
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# ------------------------------------------------------------------------------------------- ILSVRC
CLS_TRAIN_IMAGES = 1_281_167   # ILSVRC2012 classification training images (pre-training)
DET_TRAIN_IMAGES = 456_567     # ILSVRC2014 DET train images
VAL1, VAL2, VAL = 9_887, 9_917, 20_121  # R-CNN's val1 / val2 (blacklisted images in neither) and the full val

# --------------------------------------------------------------------------- the recipe (conf/ defaults)
CLS_EPOCHS = 30                # conf/train_cls.yaml epochs
MULTIBOX_EPOCHS = 30           # conf/train_multibox.yaml epochs (on data.train = val1 in the recipe)
REGION_EPOCHS = 10             # conf/train_region.yaml epochs
REGIONS_PER_IMAGE = 64         # conf/train_region.yaml regions_per_image (2 images x 64 = R-CNN's 128 per batch)
MEMBERS = 6                    # conf/experiment/ilsvrc14.yaml members
SS_BOXES, MULTIBOX_BOXES = 1270, 200  # SS 2x boxes per image (benchmarks/proposals.md, coco128) + top 200 MultiBox
CASCADE_PASS = 0.215           # share of regions the demo's detector passes to members 1.. (benchmarks/README.md)

# ------------------------------------------------------------------------- measured on this CPU machine
SS_S_PER_IMAGE = 0.985         # SS 2x seconds per image, one core, width 500 (benchmarks/proposals.md, quiet run)

# ------------------------------------------------------------------------------ GPU assumptions (stated)
TRAIN_COST = 3.0               # a training step costs ~3 forward passes (forward + backward of twice the work)
EIGHT_GPU_TRAIN_SCALING = 6.72 # 8-GPU speed-up of training: NVIDIA DeepLearningExamples ResNet-50 AMP on DGX A100
EIGHT_GPU_INFER_SCALING = 8.0  # proposals and detection split images over ranks: no communication


def _per_image(results: dict, key: str, n: str) -> float | None:
    entry = results.get("sizes", {}).get(n, {}).get(key)
    return None if not entry else entry


def bill(crops_per_s: float, results: dict | None = None, with_train_images: bool = False,
         pretrain: bool = True) -> list[tuple]:
    """Rows ``(stage, items, unit, gpu_hours_1, gpu_hours_8, cpu_hours, note)``."""
    proposals = SS_BOXES + MULTIBOX_BOXES
    train_images = VAL1 + (DET_TRAIN_IMAGES if with_train_images else 0)
    propose_images = VAL + (DET_TRAIN_IMAGES if with_train_images else 0)
    train_rate = crops_per_s / TRAIN_COST
    rows = []

    def gpu(items: float, rate: float, scaling: float) -> tuple[float, float]:
        hours = items / rate / 3600
        return hours, hours / scaling

    items = CLS_EPOCHS * CLS_TRAIN_IMAGES if pretrain else 0
    rows.append(("pre-training (ImageNet, 224 px crops)" if pretrain else "BVLC GoogLeNet weights (no pre-training)",
                 items, "images", *gpu(items, train_rate, EIGHT_GPU_TRAIN_SCALING), 0.0,
                 f"{CLS_EPOCHS} epochs x {CLS_TRAIN_IMAGES:,}" if pretrain else "import only"))
    items = MULTIBOX_EPOCHS * VAL1
    rows.append(("MultiBox training", items, "images", *gpu(items, train_rate, EIGHT_GPU_TRAIN_SCALING), 0.0,
                 f"{MULTIBOX_EPOCHS} epochs x val1"))
    rows.append(("MultiBox proposals (train + val images)", propose_images, "images",
                 *gpu(propose_images, crops_per_s, EIGHT_GPU_INFER_SCALING), 0.0, "one 224 px forward per image"))
    ss_cpu = propose_images * SS_S_PER_IMAGE / 3600
    rows.append(("selective search 2x (CPU)", propose_images, "images", 0.0, 0.0, ss_cpu,
                 f"{SS_S_PER_IMAGE} s/image/core"))
    items = MEMBERS * REGION_EPOCHS * train_images * REGIONS_PER_IMAGE
    rows.append((f"region fine-tuning, {MEMBERS} members", items, "crops",
                 *gpu(items, train_rate, EIGHT_GPU_TRAIN_SCALING), 0.0,
                 f"{REGION_EPOCHS} epochs x {train_images:,} images x {REGIONS_PER_IMAGE} regions x {MEMBERS}"))
    for label, images in (("detection of val2, 6 members", VAL2), ("detection of val (official), 6 members", VAL)):
        items = images * proposals * MEMBERS
        rows.append((label, items, "crops", *gpu(items, crops_per_s, EIGHT_GPU_INFER_SCALING), 0.0,
                     f"{proposals} proposals/image"))
        cascade = images * proposals * (1 + (MEMBERS - 1) * CASCADE_PASS)
        rows.append((label + ", cascade", cascade, "crops", *gpu(cascade, crops_per_s, EIGHT_GPU_INFER_SCALING), 0.0,
                     f"{CASCADE_PASS:.0%} of regions to members 1-5"))
    if results:
        ev = _per_image(results, "eval", str(max(int(k) for k in results["sizes"])))
        if ev:
            n = max(int(k) for k in results["sizes"])
            rows.append(("evaluation of val (CPU)", VAL, "images", 0.0, 0.0, ev["cpu_s"] / n * VAL / 3600,
                         f"eval_map {ev['cpu_s'] / n * 1000:.1f} ms CPU/image at {n:,} images"))
    return rows


def table(rows: list[tuple], title: str) -> str:
    out = [f"**{title}**", "", "| stage | items | GPU h (1 GPU) | GPU h (8 GPUs, wall) | CPU core-h | basis |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    for stage, items, unit, g1, g8, cpu, note in rows:
        out.append(f"| {stage} | {items:,.0f} {unit} | {g1:,.2f} | {g8:,.2f} | {cpu:,.2f} | {note} |")
    main = [r for r in rows if "official" not in r[0] and "cascade" not in r[0]]
    g1, g8, cpu = (sum(r[k] for r in main) for k in (3, 4, 5))
    out.append(f"| **total** (val2 detection, no cascade) | | **{g1:,.1f}** | **{g8:,.2f}** | **{cpu:,.1f}** | |")
    return "\n".join(out)


def loader_workers(crops_per_s: float, regions_per_worker_s: float) -> str:
    """How many region-sampling loader workers keep one GPU's fine-tuning fed."""
    need = crops_per_s / TRAIN_COST
    return (f"Region fine-tuning consumes about {need:,.0f} crops/s per GPU at this rate; one loader worker "
            f"samples {regions_per_worker_s:,.0f} regions per CPU-second (500x375 JPEGs, measured): "
            f"{-(-need // regions_per_worker_s):.0f} workers per GPU, each on its own core.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, help="bench_scale.py's JSON (for the CPU-side measured figures)")
    ap.add_argument("--crops-per-s", type=float, nargs="*", default=[4000.0, 8400.0],
                    help="GPU region crops/s (bf16 inference) assumed; one table each")
    args = ap.parse_args()
    results = json.loads(args.results.read_text()) if args.results else None
    for rate in args.crops_per_s:
        for with_train, pretrain in ((False, True), (False, False), (True, True)):
            title = (f"{rate:,.0f} crops/s per GPU; {'val1 + 456,567 train images' if with_train else 'R-CNN split (train val1, test val2)'}; "
                     f"{'pre-training from scratch' if pretrain else 'BVLC start'}")
            print(table(bill(rate, results, with_train, pretrain), title) + "\n")
        real = (results or {}).get("real_size_train_data")
        if real:
            print(loader_workers(rate, real["regions_per_cpu_s"]) + "\n")


if __name__ == "__main__":
    main()
