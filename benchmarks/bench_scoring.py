"""Region scoring throughput per backend, side by side in one run (issue: fast region scoring).

Measures, for the paper's GoogLeNet (width 1.0, 200 classes + background, 224x224 crops):
  - bare torch eager forward (inference mode, channels-last: the issue's reference) on ready-made crops,
  - bare ONNX Runtime forward on the same crops,
  - the pipeline's region scoring (Detector.score = detect.scoring.WarpScorer: normalise, warp with
    grid_sample, ensemble softmax)
    with backend=torch and with backend=auto (ONNX Runtime on a CPU),
all at the same batch size, the models timed in turns (round-robin) so that load drift hits them alike;
then seconds per image of the detector (warp + score + NMS) at --proposals boxes, per --settings entry
``backend:members`` (the ensemble shares each warped crop batch) or ``backend:members:cascade``: the
cascade (member 0 on every region, the other members on the regions whose best foreground probability
under member 0 reaches the threshold). With random weights every class probability is near 1/201, so
the threshold is set to the quantile of member 0's best foreground probability that lets
--cascade-pass of the regions through (the share a trained detector passes at its threshold; printed).

    .venv/bin/python benchmarks/bench_scoring.py                       # defaults: 256 crops, batch 64
    .venv/bin/python benchmarks/bench_scoring.py --settings auto:1 auto:6 auto:6:cascade --image-runs 1
    .venv/bin/python benchmarks/bench_scoring.py --image-runs 0 --lrn-traced   # + the LRN export forms
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from detect.backends import OnnxScorer, TorchScorer, make_scorers
from detect.classes import ClassList
from detect.export import cached_onnx_export, export_onnx, session_options
from detect.models.googlenet import GoogLeNet, LocalResponseNorm
from detect.pipeline import Detector
from detect.region import context_boxes, normalize_image, warp_regions


def _image_and_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    xy = rng.uniform(0, [450, 330], size=(n, 2))
    wh = rng.uniform(20, 200, size=(n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [500, 375])], axis=1).astype(np.float32)
    return image, boxes


def ort_kernel_times(onnx_path, crops: torch.Tensor, threads: int | None = None, runs: int = 3):
    """ONNX Runtime's kernel time in microseconds over ``runs`` + 1 forwards of ``crops`` (the scorers'
    session options, with the profiler on): ``(per operator type, per node name)``, two Counters."""
    import collections
    import json

    import onnxruntime as ort

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort_profile_")) / "run")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = crops.contiguous().numpy()
    for _ in range(runs + 1):
        session.run(None, {session.get_inputs()[0].name: x})
    per_op, per_node = collections.Counter(), collections.Counter()
    for e in json.loads(Path(session.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            per_node[e["name"]] += e["dur"]
    return per_op, per_node


def _profile_ort(onnx_path, crops: torch.Tensor, threads: int, runs: int = 3) -> None:
    """Share of ONNX Runtime's kernel time per operator type over ``runs`` forwards of ``crops``."""
    per_op, _ = ort_kernel_times(onnx_path, crops, threads, runs)
    total = sum(per_op.values())
    print(f"\nONNX Runtime kernel time by operator ({runs + 1} forwards of {len(crops)} crops, profiler on):")
    for op, us in per_op.most_common(12):
        print(f"  {op:24s} {100 * us / total:5.1f} %")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=256, help="crops per timed round (a multiple of --batch)")
    ap.add_argument("--batch", type=int, default=64, help="crops per forward pass")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported), after one warm-up")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--width", type=float, default=1.0, help="GoogLeNet width multiplier")
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--proposals", type=int, default=1400, help="boxes per image for the seconds/image figures")
    ap.add_argument("--settings", nargs="*", default=["torch:1", "auto:1", "auto:6", "auto:6:cascade",
                                                      "torch:6", "torch:6:cascade"],
                    help="backend:members[:cascade] per seconds-per-image figure")
    ap.add_argument("--cascade-pass", type=float, default=0.2,
                    help="share of regions the cascade passes to members 1.. (the demo detector passes 0.215 at 0.3)")
    ap.add_argument("--image-runs", type=int, default=1, help="images timed per setting (0 = skip)")
    ap.add_argument("--lrn-traced", action="store_true",
                    help="also time bare ONNX Runtime on an export whose LRN is the traced F.local_response_norm "
                         "(the export before LocalResponseNorm.onnx_form)")
    ap.add_argument("--ort-profile", action="store_true",
                    help="print ONNX Runtime's kernel time per operator type over 4 forwards of one batch (its profiler)")
    return ap.parse_args()


def scoring_section(args, model: GoogLeNet, classes: ClassList, cache: str, image: np.ndarray, boxes: np.ndarray,
                    crops: list[torch.Tensor]) -> Path:
    """Crops/s of the bare forwards (eager, ONNX Runtime, ``--lrn-traced``) and of the detector's scoring;
    returns the ONNX export's path."""
    onnx_path = cached_onnx_export(model, cache, "member0", args.crop_size)[0]
    eager, ort = TorchScorer(model, "cpu"), OnnxScorer(onnx_path, num_threads=args.threads)  # eager: channels-last
    detectors = {b: Detector(None, make_scorers([model], b, "cpu", args.crop_size, cache_dir=cache),
                             classes, crop_size=args.crop_size, batch_size=args.batch)
                 for b in ("torch", "auto")}
    runs = {
        "bare torch eager forward": lambda: [eager(c).softmax(1) for c in crops],
        "bare ONNX Runtime forward": lambda: [ort(c).softmax(1) for c in crops],
        "pipeline, backend=torch": lambda: detectors["torch"].score(image, boxes),
        "pipeline, backend=auto (onnxruntime)": lambda: detectors["auto"].score(image, boxes),
    }
    if args.lrn_traced:  # the same weights exported with LRN as torch's decomposition (Pow, 3-D average pool)
        form = LocalResponseNorm.onnx_form
        LocalResponseNorm.onnx_form = lambda self, x: F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        try:
            traced_path = Path(cache) / "traced_lrn.onnx"
            export_onnx(model, traced_path, args.crop_size)
        finally:
            LocalResponseNorm.onnx_form = form
        traced = OnnxScorer(traced_path, num_threads=args.threads)
        diff = (traced(crops[0]).softmax(1) - ort(crops[0]).softmax(1)).abs().max().item()
        print(f"LRN export forms: max abs probability difference {diff:.2g}")
        runs["bare ONNX Runtime forward, LRN traced"] = lambda: [traced(c).softmax(1) for c in crops]
    times = {k: [] for k in runs}
    for r in range(args.rounds + 1):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    rate = {k: args.crops / statistics.median(v) for k, v in times.items()}
    print(f"\nregion scoring, paper GoogLeNet width {args.width}, {args.crop_size}x{args.crop_size} crops, "
          f"batch {args.batch}, {args.threads} threads, median of {args.rounds} rounds of {args.crops} crops")
    print(f"{'path':40s} {'crops/s':>9s} {'vs eager':>9s} {'vs bare ORT':>12s}")
    for k, v in rate.items():
        print(f"{k:40s} {v:9.1f} {v / rate['bare torch eager forward']:9.2f} "
              f"{v / rate['bare ONNX Runtime forward']:12.2f}")
    return onnx_path


def warp_section(args, tensor: torch.Tensor, boxes: np.ndarray) -> None:
    """The warp alone: grid_sample (what warp_regions does) against the roi_align formulation it replaced."""
    padded = torch.nn.functional.pad(tensor, (1, 1, 1, 1))[None]
    batches = [torch.from_numpy(boxes[i:i + args.batch]) for i in range(0, args.crops, args.batch)]

    def roi_align_warp(b: torch.Tensor) -> torch.Tensor:
        rois = context_boxes(b, args.crop_size, 16) + 1.0
        rois = torch.cat([rois.new_zeros((len(rois), 1)), rois], dim=1)
        return roi_align(padded, rois, output_size=(args.crop_size, args.crop_size), spatial_scale=1.0,
                         sampling_ratio=1, aligned=True)

    warps = {"warp_regions (grid_sample)": lambda b: warp_regions(tensor, b, args.crop_size, 16),
             "roi_align, aligned, 1 sample": roi_align_warp}
    diff = (warps["warp_regions (grid_sample)"](batches[0]) - roi_align_warp(batches[0])).abs().max().item()
    wtimes = {k: [] for k in warps}
    for r in range(args.rounds + 1):
        for name, fn in warps.items():
            start = time.perf_counter()
            for b in batches:
                fn(b)
            if r:
                wtimes[name].append((time.perf_counter() - start) / len(batches))
    print(f"\nwarp alone, ms per batch of {args.batch} (max abs difference between the two {diff:.2g})")
    for k, v in wtimes.items():
        print(f"{k:40s} {statistics.median(v) * 1e3:9.1f}")


def image_section(args, model: GoogLeNet, classes: ClassList, cache: str) -> None:
    """Seconds per image (warp + score + per-class NMS) of each ``--settings`` backend:members[:cascade]."""
    image, boxes = _image_and_boxes(args.proposals, seed=1)
    print(f"\nseconds per image, {args.proposals} proposals (warp + score + per-class NMS), "
          f"{args.image_runs} image(s) each")
    threshold = None
    for setting in args.settings:
        backend, members, *rest = setting.split(":")
        members, cascade = int(members), bool(rest)
        if cascade and threshold is None:  # member 0's best foreground probability per region
            first = Detector(None, make_scorers([model], "auto", "cpu", args.crop_size, cache_dir=cache),
                             classes, crop_size=args.crop_size, batch_size=args.batch)
            best = first.score(image, boxes)[:, 1:].max(dim=1).values
            threshold = float(torch.quantile(best.double(), 1.0 - args.cascade_pass))
            passed = float((best >= threshold).float().mean())
            print(f"  cascade threshold {threshold:.6g}: {passed:.3f} of the regions pass to members 1..")
        scorers = make_scorers([model] * members, backend, "cpu", args.crop_size, cache_dir=cache)
        det = Detector(None, scorers, classes, crop_size=args.crop_size, batch_size=args.batch,
                       cascade_threshold=threshold if cascade else None)
        start = time.perf_counter()
        for _ in range(args.image_runs):
            det.detect(image, boxes)
        label = f"backend={backend} members={members}" + (" cascade" if cascade else "")
        print(f"  {label:36s} {(time.perf_counter() - start) / args.image_runs:8.1f} s/image", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = ClassList.from_names([f"c{i}" for i in range(200)])
    model = GoogLeNet(num_classes=201, aux_logits=False, width=args.width).eval()
    cache = tempfile.mkdtemp(prefix="bench_scoring_")
    image, boxes = _image_and_boxes(args.crops)
    tensor = normalize_image(image)  # ImageNet convention
    crops = [warp_regions(tensor, torch.from_numpy(boxes[i:i + args.batch]), args.crop_size, 16)
             for i in range(0, args.crops, args.batch)]
    onnx_path = scoring_section(args, model, classes, cache, image, boxes, crops)
    if args.ort_profile:
        _profile_ort(onnx_path, crops[0], args.threads)
    warp_section(args, tensor, boxes)
    if args.image_runs:
        image_section(args, model, classes, cache)


if __name__ == "__main__":
    main()
