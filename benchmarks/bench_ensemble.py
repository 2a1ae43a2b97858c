"""Ensemble against its members, and the cascade's effect on mAP and time, on a finished demo.

Runs tools/detect_dataset.py and tools/eval_map.py for each setting on the demo's val split (cached
proposals, same detector file) and prints members, cascade threshold, backend, seconds per image and
mAP@0.5 (ILSVRC rules). Needs a finished `make demo` (or pass --experiment / --work-dir).

    .venv/bin/python benchmarks/bench_ensemble.py
    .venv/bin/python benchmarks/bench_ensemble.py --cascade 0.05 0.2 --backends auto torch
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(tool: str, args: list[str]) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{tool} failed:\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--work-dir", default="work/demo")
    ap.add_argument("--members", type=int, default=2, help="members in the detector file")
    ap.add_argument("--cascade", type=float, nargs="*", default=[0.1, 0.3], help="cascade thresholds to try")
    ap.add_argument("--backends", nargs="*", default=["auto"], help="scoring backends for the full ensemble")
    args = ap.parse_args()
    out_dir = Path(args.work_dir) / "bench_ensemble"
    settings = [([k], None, "auto") for k in range(args.members)]
    settings += [(list(range(args.members)), None, b) for b in args.backends]
    settings += [(list(range(args.members)), c, "auto") for c in args.cascade]
    print(f"{'members':>10s} {'cascade':>8s} {'backend':>8s} {'s/image':>8s} {'mAP@0.5':>8s}")
    for members, cascade, backend in settings:
        tag = f"m{''.join(map(str, members))}_c{cascade}_{backend}"
        det = out_dir / f"{tag}.txt"
        common = [f"experiment={args.experiment}", f"work_dir={args.work_dir}", "split=val"]
        log = run("detect_dataset", [*common, f"output={det}", f"use_members=[{','.join(map(str, members))}]",
                                     f"cascade_threshold={'null' if cascade is None else cascade}",
                                     f"backend={backend}", "progress=false", "resume=false"])
        per_image = re.search(r"\(([\d.]+) s/image\)", log)
        run("eval_map", [*common, f"detections={det}", f"out_dir={out_dir / tag}"])
        report = json.loads((out_dir / tag / "eval_synthetic_val.json").read_text())
        print(f"{','.join(map(str, members)):>10s} {str(cascade):>8s} {backend:>8s} "
              f"{float(per_image.group(1)) if per_image else float('nan'):8.3f} {report['mean_ap']:8.4f}", flush=True)


if __name__ == "__main__":
    main()
