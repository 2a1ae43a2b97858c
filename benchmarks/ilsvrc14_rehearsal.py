"""The paper's recipe (``experiment=ilsvrc14``: the paper's network, 6 members, SS 2x + 200 MultiBox,
val1/val2) end to end on a tiny 200-class world in the ILSVRC 2014 layout (benchmarks/ilsvrc_world.py),
every distributed stage under ``torchrun --nproc_per_node=<nproc>`` on the CPU (gloo).

Only sizes and machine settings are overridden (listed in SIZE_OVERRIDES and per stage below): the
world's image count, the network width, crop and input sizes, batch sizes, epochs and steps, selective
search's segmentation width (the tiny images are segmented at their own scale instead of R-CNN's
500 px) and loader workers; plus one threshold to exercise detection (EXERCISE_OVERRIDES). Everything
else is the recipe: its data group is swapped for the 2014 layout (``data=ilsvrc2014``) and given the
world's devkit and blacklist.

Stages: train_cls (pre-training on a tiny ImageNet-style set) -> train_multibox -> propose train (val1)
and val (val2) -> train_region member 0..5 -> bundle -> detect_dataset val2 -> eval_map val2.

    .venv/bin/python benchmarks/ilsvrc14_rehearsal.py --work /tmp/rehearsal            # 2 ranks, 400 images
    .venv/bin/python benchmarks/ilsvrc14_rehearsal.py --work /tmp/r --images 60 --nproc 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# size and machine overrides per tool (nothing else of the recipe is changed)
SIZE_OVERRIDES = {
    "common": ["model.width=0.25"],
    "train_cls": ["crop_size=64", "batch_size=8", "eval_batch_size=16", "epochs=1", "checkpoint_every=null",
                  "num_workers=0"],
    "train_multibox": ["multibox.input_size=64", "batch_size=8", "evaluation.batch_size=16", "epochs=1",
                       "checkpoint_every=null", "num_workers=0"],
    "propose": ["proposals.sources.0.resize_width=null", "workers=1", "poll_s=1", "progress=false"],
    "train_region": ["crop_size=64", "context=4", "images_per_batch=2", "regions_per_image=16", "epochs=1",
                     "evaluation.images=8", "checkpoint_every=null", "num_workers=0"],
    "bundle": ["crop_size=64", "context=4"],
    "detect_dataset": ["progress=false"],
    "eval_map": [],
}
# the one setting changed to exercise a stage: members trained for a few steps give every one of the 200
# classes about 1/201 < the recipe's threshold 0.01, which would leave detection and evaluation nothing to
# handle; at 0 every image gets its max_per_image (100) detections after NMS
EXERCISE_OVERRIDES = {"detect_dataset": ["score_threshold=0.0"]}
DISTRIBUTED = {"train_cls", "train_multibox", "propose", "train_region", "detect_dataset"}


def recipe_stages(world: Path, cls_root: Path, work: Path, members: int, max_steps: int | None) -> list[tuple]:
    """``(name, tool, arguments)`` of every stage of the recipe on ``world``."""
    data = ["experiment=ilsvrc14", "data=ilsvrc2014", f"data.root={world}", f"data.devkit={world / 'devkit'}",
            f"data.blacklist={world / 'devkit' / 'data' / 'ILSVRC2014_det_validation_blacklist.txt'}",
            f"data_cls.root={cls_root}", f"work_dir={work}", *SIZE_OVERRIDES["common"]]
    steps = [] if max_steps is None else [f"max_steps_per_epoch={max_steps}"]

    def stage(name, tool, *extra, key=None):
        return name, tool, [*data, *SIZE_OVERRIDES[key or tool], *EXERCISE_OVERRIDES.get(key or tool, []), *extra]

    stages = [stage("train_cls", "train_cls", *steps), stage("train_multibox", "train_multibox", *steps),
              stage("propose_train", "propose", "split=train"), stage("propose_val", "propose", "split=val")]
    stages += [stage(f"train_region_{k}", "train_region", f"member={k}", *steps) for k in range(members)]
    stages += [stage("bundle", "train_region", "step=bundle", f"members={members}", key="bundle"),
               stage("detect_val", "detect_dataset", "split=val"), stage("eval_map", "eval_map", "split=val")]
    return stages


def command(tool: str, args: list[str], nproc: int, name: str) -> list[str]:
    script = str(REPO / "tools" / f"{tool}.py")
    if nproc > 1 and tool in DISTRIBUTED and name != "bundle":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]
    return [sys.executable, script, *args]


def rehearse(work: str | Path, images: int = 400, members: int = 6, nproc: int = 2, max_steps: int | None = None,
             cls_classes: int = 10, cls_per_class: int = 8, log=print) -> dict:
    """Write the worlds under ``work`` and run every stage; returns ``{"stages": {name: seconds}, "eval": report}``.
    A failing stage raises ``RuntimeError`` naming it, with the tail of its output (also in ``work/logs``)."""
    from benchmarks.ilsvrc_world import make_ilsvrc2014_world, write_classification_folders

    work = Path(work).resolve()
    world, cls_root, run = work / "world", work / "cls", work / "run"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record = make_ilsvrc2014_world(world, images)
    write_classification_folders(cls_root, num_classes=cls_classes, per_class=cls_per_class)
    timings = {"worlds": time.perf_counter() - start}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for name, tool, args in recipe_stages(world, cls_root, run, members, max_steps):
        cmd = command(tool, [*args, f"hydra.run.dir={work / 'hydra' / name}"], nproc, name)
        log(f"[{name}] $ {' '.join(cmd[1:])}")
        start = time.perf_counter()
        with open(logs / f"{name}.log", "w") as out:
            result = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        timings[name] = time.perf_counter() - start
        if result.returncode != 0:
            tail = (logs / f"{name}.log").read_text()[-4000:]
            raise RuntimeError(f"stage {name} failed ({result.returncode}); log {logs / (name + '.log')}:\n{tail}")
        log(f"[{name}] {timings[name]:.1f} s")
    report = json.loads((run / "eval" / "eval_ilsvrc2014_val2.json").read_text())  # <data>_<split name> (val2)
    return {"world": record, "stages": timings, "eval": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a new folder (or one of an earlier rehearsal)")
    ap.add_argument("--images", type=int, default=400, help="val images of the world (val1/val2 about half each)")
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--nproc", type=int, default=2, help="torchrun processes per distributed stage")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on training steps per epoch")
    ap.add_argument("--out", type=Path, help="JSON of the stage times and the evaluation summary")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = rehearse(args.work, args.images, args.members, args.nproc, args.max_steps)
    ev = result["eval"]
    summary = {"started": started, "images": args.images, "members": args.members, "nproc": args.nproc,
               "load": os.getloadavg(), "stages_s": {k: round(v, 1) for k, v in result["stages"].items()},
               "total_s": round(sum(result["stages"].values()), 1), "mean_ap": ev.get("mean_ap"),
               "num_images": ev.get("num_images"), "num_detections": ev.get("num_detections"),
               "classes_with_gt": sum(1 for c in ev.get("classes", []) if c.get("num_gt", 0) > 0) if isinstance(ev.get("classes"), list) else None,
               "world": result["world"]}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
