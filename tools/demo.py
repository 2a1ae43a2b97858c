"""python tools/demo.py [experiment=demo_quick] - the whole pipeline on built-in synthetic data (see conf/demo.yaml)."""
import sys
from pathlib import Path

# `python tools/<tool>.py` puts tools/ first on sys.path, where tools/detect.py would hide the detect package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from detect.stages import Stage, StageError, run_stages, tree_digest


def build_stages(experiment: str, members: int, draw_images: int, extra: list[str], val_dir: str) -> list[Stage]:
    common = [f"experiment={experiment}", *extra]
    stages = [
        Stage("data", "make_synthetic", common),
        Stage("train_cls", "train_cls", common),
        Stage("train_multibox", "train_multibox", common),
        Stage("propose_train", "propose", [*common, "split=train"]),
        Stage("propose_val", "propose", [*common, "split=val"]),
    ]
    stages += [Stage(f"train_region_{k}", "train_region", [*common, f"member={k}"]) for k in range(members)]
    stages += [
        Stage("bundle", "train_region", [*common, "step=bundle", f"members={members}"]),
        Stage("detect_val", "detect_dataset", [*common, "split=val"]),
        Stage("eval_map", "eval_map", [*common, "split=val"]),
        Stage("draw", "detect", [val_dir, *common, f"max_images={draw_images}"]),
    ]
    return stages


@hydra.main(config_path="../conf", config_name="demo", version_base="1.3")
def main(cfg) -> None:
    experiment = HydraConfig.get().runtime.choices["experiment"]
    val_dir = str(Path(cfg.data.root) / "Data" / "DET" / "val")
    stages = build_stages(experiment, cfg.members, cfg.draw_images, list(cfg.stage_overrides), val_dir)
    try:
        tools_dir = Path(__file__).resolve().parent
        run_stages(stages, cfg.work_dir, tools_dir, stop_after=cfg.stop_after,
                   inputs_digest=tree_digest(tools_dir.parent / "conf"))
    except StageError as e:
        sys.exit(f"demo stopped: {e}\nre-run the same command to continue from this stage")
    report = Path(cfg.paths.eval_dir) / "eval_val.json"
    if cfg.stop_after is None and report.is_file():
        result = json.loads(report.read_text())
        print(f"\nmAP@0.5 on the synthetic val set ({experiment}, {cfg.members} members): {result['mean_ap']:.4f}")
        print(f"PR curves: {Path(cfg.paths.eval_dir) / 'pr_val.png'}")
        print(f"drawn detections: {Path(cfg.work_dir) / 'detect'}")


if __name__ == "__main__":
    main()
