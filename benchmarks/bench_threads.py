"""tools/train_cls.py images/s with threads=1 against threads=2 (and more), side by side in one run.

    .venv/bin/python benchmarks/bench_threads.py --setting 1 --setting 2 --setting 2,OMP_WAIT_POLICY=PASSIVE

A setting is ``threads[,NAME=VALUE...]``: the tool's ``threads=`` and environment variables for its process.

Each run is the real tool (experiment=demo: width-0.25 network, 96-pixel crops, batch 32, one loader
process) on the synthetic classification set, for one epoch of ``--steps`` steps into a fresh
checkpoint; the figure is the epoch's ``images_per_s`` as fit logs it (data loading waits included).
Settings are interleaved round by round (1, 2, 1, 2, ...) so that a change in the machine's load hits
every setting alike; the load average is printed beside every run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"epoch 1/1 .*images_per_s ([0-9.]+)")


def run(setting: str, steps: int, work: Path, run_id: str) -> float:
    threads, *env_items = setting.split(",")
    env = dict(item.split("=", 1) for item in env_items)
    cmd = [sys.executable, str(ROOT / "tools" / "train_cls.py"), "experiment=demo", f"work_dir={work}",
           f"threads={threads}", "epochs=1", f"max_steps_per_epoch={steps}", f"checkpoint={work}/cls_{run_id}.pt",
           "resume=false", f"hydra.run.dir={work}/logs/{run_id}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    match = RATE.search(out.stderr + out.stdout)
    if match is None:
        raise SystemExit(f"no images_per_s in the output of {' '.join(cmd)}")
    return float(match.group(1))


def runnable() -> int:
    """Runnable tasks on the machine right now (the 4th field of /proc/loadavg), this one included."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", action="append", help="threads[,NAME=VALUE...] (repeat; default: 1 and 2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    settings = args.setting or ["1", "2"]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_threads_"))
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic.py"), "experiment=demo", f"work_dir={work}",
                    "detection=false", f"hydra.run.dir={work}/logs/make"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    rates: dict[str, list[float]] = {t: [] for t in settings}
    for r in range(args.rounds):
        for t in settings:
            load = os.getloadavg()[0]
            rate = run(t, args.steps, work, f"r{r}_s{settings.index(t)}")
            rates[t].append(rate)
            print(f"round {r + 1} threads={t}: {rate:7.1f} images/s (load average before: {load:.2f}, "
                  f"runnable now: {runnable()})", flush=True)
    base = statistics.median(rates[settings[0]])
    for t in settings:
        med = statistics.median(rates[t])
        print(f"threads={t}: median {med:7.1f} images/s over {args.rounds} runs ({med / base:.2f}x threads={settings[0]}); "
              f"runs {', '.join(f'{x:.1f}' for x in rates[t])}")


if __name__ == "__main__":
    main()
