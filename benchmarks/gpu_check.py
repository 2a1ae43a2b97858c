"""A GPU check in one run (under 8 minutes on one GPU): what the paper's recipe needs from a GPU, as a
JSON report. Run through ``benchmarks/gpu_check.sh`` (which adds nvidia-smi and a hard time limit).

Sections (each timed with ``torch.cuda.synchronize``; a section that fails is recorded with its error
and the others still run; the exit code is 1 when any failed):
  train_step   the paper's GoogLeNet (aux heads on, 1000 classes) training steps, bf16 autocast,
               channels-last, SGD: images/s
  ddp          ``torchrun --nproc_per_node=1``: a process group with ``nccl`` (``gloo`` in the dry run)
               and one DistributedDataParallel training step, plus an all-reduce
  scoring      region scoring (the detector's scorer, detect.backends.TorchScorer) of 224-px crops at
               batch 64, 256 and 1024: eager fp32, eager bf16 autocast and torch.compile (bf16): crops/s
  detection    seconds per image of Detector.detect at 1,400 proposals (warp + score + per-class NMS)
               for 1 member and 6 members, with and without the cascade (the threshold set where 20 % of
               the regions pass to members 1.., as benchmarks/bench_scoring.py does)
  memory       the GPU's peak allocated and reserved memory over the run
Goals (evaluated on a real GPU only): the paper network at >= 4,000 crops/s with bf16 (best batch of
eager bf16 and compiled), and <= 1 s per image for 6 members (no cascade).

``--dry-run`` runs every section at tiny sizes on the CPU (width 0.125, 32-px crops, gloo, torch.compile
with the ``eager`` backend) to check the code paths without a GPU; its figures mean nothing.

    bash benchmarks/gpu_check.sh --out gpu_check.json      # on a GPU machine
    bash benchmarks/gpu_check.sh --dry-run                  # every code path on the CPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import torch
from torch import nn

from detect.backends import TorchScorer, make_scorers
from detect.classes import ClassList
from detect.classify import ClassificationLoss
from detect.models.googlenet import GoogLeNet
from detect.pipeline import Detector

GOAL_CROPS_PER_S = 4000.0
GOAL_SECONDS_PER_IMAGE = 1.0

FULL = {"device": "cuda", "width": 1.0, "crop": 224, "batches": [64, 256, 1024], "train_batch": 128, "train_steps": 20,
        "rounds": 5, "proposals": 1400, "members": 6, "det_batch": 256, "image_runs": 3, "ddp": "nccl",
        "compile_backend": "inductor", "time_budget_s": 420.0}
DRY = {"device": "cpu", "width": 0.125, "crop": 32, "batches": [2, 4, 8], "train_batch": 2, "train_steps": 1,
       "rounds": 1, "proposals": 12, "members": 6, "det_batch": 8, "image_runs": 1, "ddp": "gloo",
       "compile_backend": "eager", "time_budget_s": 600.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, rounds: int) -> float:
    """Median seconds of ``rounds`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(s: dict, device: torch.device) -> dict:
    """Images/s of full training steps (forward with aux heads, loss, backward, SGD) in bf16, channels-last."""
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=1000, aux_logits=True, width=s["width"]).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = ClassificationLoss(aux_weight=0.3)
    images = torch.randn(s["train_batch"], 3, s["crop"], s["crop"], device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (s["train_batch"],), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = loss_fn(model, (images, labels), device)
        loss.backward()
        optimizer.step()

    step()  # warm-up (cuDNN autotuning)
    seconds = _timed(lambda: [step() for _ in range(s["train_steps"])], device, 1)
    return {"images_per_s": s["train_batch"] * s["train_steps"] / seconds, "batch": s["train_batch"],
            "steps": s["train_steps"], "dtype": "bf16", "channels_last": True, "aux_heads": True}


def _ddp_worker(args) -> None:
    """Run under torchrun: a process group with ``args.backend`` (even for one process), one DDP step."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    start = time.perf_counter()
    dist.init_process_group(backend=args.backend, **({"device_id": device} if device.type == "cuda" else {}))
    try:
        model = GoogLeNet(num_classes=1000, aux_logits=True, width=args.width).to(device).train()
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
        images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
        labels = torch.randint(0, 1000, (args.batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = ClassificationLoss(0.3)(ddp, (images, labels), device)
        loss.backward()
        optimizer.step()
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        _sync(device)
        result = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "loss": float(loss),
                  "all_reduce": float(total), "seconds": time.perf_counter() - start}
    finally:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.out).write_text(json.dumps(result))


def ddp(s: dict, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(Path(__file__).resolve()),
               "_ddp", "--backend", s["ddp"], "--device", device.type, "--width", str(s["width"]),
               "--crop", str(s["crop"]), "--batch", str(s["train_batch"]), "--out", str(out)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}, timeout=300)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"torchrun failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
        result = json.loads(out.read_text())
    if result["backend"] != s["ddp"] or result["world_size"] != 1 or result["all_reduce"] != 1.0:
        raise RuntimeError(f"unexpected process group: {result}")
    return {**result, "wall_s_with_torchrun": time.perf_counter() - start}


def _scoring_model(s: dict, device: torch.device) -> GoogLeNet:
    torch.manual_seed(0)
    return GoogLeNet(num_classes=201, aux_logits=False, width=s["width"]).eval().to(device)


def scoring(s: dict, device: torch.device, deadline: float) -> dict:
    """Crops/s of the detector's scorer per mode and batch (ready-made normalised crops on the device)."""
    model = _scoring_model(s, device)
    scorers = {"eager_fp32": TorchScorer(model, device, amp="none"), "eager_bf16": TorchScorer(model, device, amp="bf16")}
    compiled = TorchScorer(_scoring_model(s, device), device, amp="bf16")
    compiled.model = torch.compile(compiled.model, backend=s["compile_backend"], dynamic=False)
    scorers["compile_bf16"] = compiled
    out: dict = {}
    for mode, scorer in scorers.items():
        out[mode] = {}
        for batch in s["batches"]:
            if time.monotonic() > deadline:
                out[mode][str(batch)] = "skipped: time budget spent"
                continue
            crops = torch.randn(batch, 3, s["crop"], s["crop"], device=device)
            start = time.perf_counter()
            seconds = _timed(lambda: scorer(crops), device, s["rounds"])
            out[mode][str(batch)] = {"crops_per_s": batch / seconds, "first_call_s": time.perf_counter() - start - s["rounds"] * seconds}
    return out


def _image_and_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 500x375 image and ``n`` boxes (benchmarks/bench_scoring.py's test image)."""
    from benchmarks.bench_scoring import _image_and_boxes as make

    return make(n, seed)


def detection(s: dict, device: torch.device, deadline: float) -> dict:
    """Seconds per image of Detector.detect at ``proposals`` boxes, bf16 scorers, 1 and ``members`` members,
    with and without the cascade."""
    classes = ClassList.from_names([f"c{i}" for i in range(200)])
    model = _scoring_model(s, device)
    image, boxes = _image_and_boxes(s["proposals"], seed=1)
    amp = "bf16" if device.type == "cuda" else "none"

    def detector(members: int, cascade: float | None) -> Detector:
        scorers = make_scorers([model] * members, "torch", device, s["crop"], amp=amp)
        return Detector(None, scorers, classes, cascade_threshold=cascade, crop_size=s["crop"],
                        context=max(1, 16 * s["crop"] // 224), batch_size=s["det_batch"])

    best = detector(1, None).score(image, boxes)[:, 1:].max(dim=1).values.float().cpu()
    threshold = float(torch.quantile(best.double(), 0.8))  # 20 % of the regions pass to members 1..
    out = {"proposals": s["proposals"], "batch": s["det_batch"], "cascade_threshold": threshold,
           "cascade_pass": float((best >= threshold).float().mean())}
    for label, members, cascade in (("1_member", 1, None), (f"{s['members']}_members", s["members"], None),
                                    (f"{s['members']}_members_cascade", s["members"], threshold)):
        if time.monotonic() > deadline:
            out[label] = "skipped: time budget spent"
            continue
        det = detector(members, cascade)
        seconds = _timed(lambda: det.detect(image, boxes), device, s["image_runs"])
        out[label] = {"s_per_image": seconds, "detections": len(det.detect(image, boxes))}
    return out


def goals(report: dict, dry_run: bool) -> dict:
    if dry_run:
        return {"evaluated": False, "why": "dry run (CPU, tiny sizes): figures mean nothing"}
    sc = report["sections"].get("scoring", {})
    bf16 = [v["crops_per_s"] for mode in ("eager_bf16", "compile_bf16") for v in sc.get(mode, {}).values()
            if isinstance(v, dict)]
    det = report["sections"].get("detection", {}).get("6_members", {})
    crops = max(bf16) if bf16 else None
    seconds = det.get("s_per_image") if isinstance(det, dict) else None
    return {"evaluated": True,
            "crops_per_s_bf16": {"goal": GOAL_CROPS_PER_S, "measured": crops, "met": crops is not None and crops >= GOAL_CROPS_PER_S},
            "s_per_image_6_members": {"goal": GOAL_SECONDS_PER_IMAGE, "measured": seconds,
                                      "met": seconds is not None and seconds <= GOAL_SECONDS_PER_IMAGE}}


def run(dry_run: bool, out: Path, sections: list[str] | None = None) -> dict:
    s = dict(DRY if dry_run else FULL)
    device = torch.device(s["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run to check the code paths on the CPU")
    threads = torch.get_num_threads()
    if dry_run:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend (the 2-core machine is shared)
    try:
        return _run(s, device, dry_run, out, sections)
    finally:
        torch.set_num_threads(threads)


def _run(s: dict, device: torch.device, dry_run: bool, out: Path, sections: list[str] | None) -> dict:
    start = time.monotonic()
    deadline = start + s["time_budget_s"]
    report = {"dry_run": dry_run, "settings": s, "torch": torch.__version__, "python": platform.python_version(),
              "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "sections": {}, "errors": {}}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    steps = {"train_step": lambda: train_step(s, device), "ddp": lambda: ddp(s, device),  # compiling last:
             "detection": lambda: detection(s, device, deadline), "scoring": lambda: scoring(s, device, deadline)}
    for name, fn in steps.items():
        if sections and name not in sections:
            continue
        t0 = time.perf_counter()
        try:
            report["sections"][name] = {**fn(), "section_s": time.perf_counter() - t0}
        except Exception as e:  # recorded; the other sections still run
            report["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
        out.write_text(json.dumps(report, indent=1) + "\n")  # what is done so far survives a kill
    if device.type == "cuda":
        report["sections"]["memory"] = {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                                        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
                                        "total_gib": torch.cuda.get_device_properties(device).total_memory / 2**30}
    else:
        import resource

        report["sections"]["memory"] = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                        "note": "CPU dry run: the process's peak resident memory, not a GPU's"}
    report["goals"] = goals(report, dry_run)
    report["total_s"] = time.monotonic() - start
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_ddp":
        ap = argparse.ArgumentParser()
        ap.add_argument("_ddp")
        ap.add_argument("--backend", required=True)
        ap.add_argument("--device", required=True)
        ap.add_argument("--width", type=float, required=True)
        ap.add_argument("--crop", type=int, required=True)
        ap.add_argument("--batch", type=int, required=True)
        ap.add_argument("--out", required=True)
        _ddp_worker(ap.parse_args())
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--dry-run", action="store_true", help="every code path at tiny sizes on the CPU")
    ap.add_argument("--sections", nargs="*", choices=["train_step", "ddp", "scoring", "detection"],
                    help="run only these sections (default all)")
    args = ap.parse_args()
    report = run(args.dry_run, args.out, args.sections)
    print(json.dumps({"goals": report["goals"], "errors": list(report["errors"]), "total_s": round(report["total_s"], 1)}, indent=1))
    if report["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
