"""ILSVRC-shaped worlds, the scale benchmark's measuring, and the paper's recipe composed stage by stage
at 200 classes in the 2014 layout (benchmarks/ilsvrc_world.py, bench_scale.py, ilsvrc14_rehearsal.py)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmarks.ilsvrc_world import StandInProposer, make_ilsvrc2014_world
from detect.data.ilsvrc import read_image_list

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(tool: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(tool, overrides=overrides)


@pytest.mark.slow  # runs a benchmark script
def test_world_reads_as_ilsvrc_2014_with_val1_val2_and_blacklist(tmp_path):
    from hydra.utils import instantiate

    root = tmp_path / "world"
    record = make_ilsvrc2014_world(root, images=130, blacklist_fraction=0.05)
    lists = root / "devkit" / "data" / "det_lists"
    val = [n for n, _ in read_image_list(lists / "val.txt")]
    val1, val2 = ([n for n, _ in read_image_list(lists / f) ] for f in ("val1.txt", "val2.txt"))
    black = {int(line.split()[0]) for line in (root / "devkit" / "data" / "ILSVRC2014_det_validation_blacklist.txt").read_text().splitlines()}
    assert len(val) == 130 and len(black) == record["blacklisted"] == 6
    assert not set(val1) & set(val2) and set(val1) | set(val2) == {val[k - 1] for k in range(1, 131) if k not in black}
    assert [i for _, i in read_image_list(lists / "val2.txt")] == list(range(1, len(val2) + 1))  # own index column

    overrides = ["experiment=ilsvrc14", "data=ilsvrc2014", f"data.root={root}", f"data.devkit={root / 'devkit'}",
                 f"data.blacklist={root / 'devkit' / 'data' / 'ILSVRC2014_det_validation_blacklist.txt'}",
                 f"data_cls.root={tmp_path / 'cls'}", f"work_dir={tmp_path / 'work'}"]
    cfg = _compose("eval_map", overrides)
    train, held_out = instantiate(cfg.data.train_full), instantiate(cfg.data.val)  # the recipe: val1 / val2
    assert len(train.classes) == 200 and train.classes.wnids[0] == "n02672831"  # the real list, official order
    assert [r.image_id for r in train.records] == val1 and [r.image_id for r in held_out.records] == val2
    parts = [instantiate(cfg.data.train), instantiate(cfg.data.monitor)]  # val1 less a held-out share, and that share
    assert sorted(r.image_id for p in parts for r in p.records) == sorted(val1) and all(len(p) for p in parts)
    assert not held_out.blacklist  # blacklisted images are in neither half
    cfg.data.val.image_list = None  # the full official val list: the blacklist applies by official index
    full = instantiate(cfg.data.val)
    assert {i for i, _ in full.blacklist} == black and len(full.records) == 130
    assert all(len(r.boxes) == len(r.labels) >= 1 for r in full.records)

    assert make_ilsvrc2014_world(root, images=130, blacklist_fraction=0.05) == record  # reused as it is
    with pytest.raises(FileExistsError, match="other parameters"):
        make_ilsvrc2014_world(root, images=131)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        make_ilsvrc2014_world(tmp_path / "mine", images=3)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"


@pytest.mark.slow  # runs a benchmark script
def test_stand_in_proposer_counts_sizes_and_store_dtype(tmp_path):
    from proposals.store_format import ProposalStore

    rng = np.random.default_rng(0)
    proposer = StandInProposer(2000, large=5, large_side=24)
    stores = []
    for k in range(40):
        h, w = (int(v) for v in rng.integers(64, 129, 2))
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = proposer(image)
        sides = np.stack([p.boxes[:, 2] - p.boxes[:, 0], p.boxes[:, 3] - p.boxes[:, 1]], axis=1)
        assert p.boxes.shape == (2000, 4) and np.all(np.diff(p.scores) <= 0)
        assert (sides[:5] >= 24 - 1e-3).all() and (sides[5:] < 24).all()
        assert p.boxes.min() >= 0 and p.boxes[:, 2].max() <= w and p.boxes[:, 3].max() <= h
        assert np.array_equal(proposer(image).boxes, p.boxes)
        stores.append(p.boxes)
    ProposalStore.from_lists([str(k) for k in range(40)], stores).save(tmp_path / "s.npz")
    assert ProposalStore.load(tmp_path / "s.npz").boxes.dtype == np.uint16  # in-image boxes round into uint16


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # runs a benchmark script
def test_measured_peak_memory_is_the_child_s_own(repo_root):
    """A child's peak memory is its own, even measured from this (large, torch-importing) process: a
    child allocating 200 MB reads about 200 MB more than one allocating nothing, and far less than us."""
    bench = _load(repo_root / "benchmarks" / "bench_scale.py", "bench_scale_under_test")
    small = bench.run_measured([sys.executable, "-c", "print('RESULT {\"x\": 1}')"])
    big = bench.run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(25_000_000); print(a.sum())"])
    assert small["x"] == 1 and big["peak_rss_mb"] - small["peak_rss_mb"] > 150, (small, big)
    assert small["peak_rss_mb"] < 100  # a bare interpreter, not this process's memory
    with pytest.raises(RuntimeError, match="failed"):
        bench.run_measured([sys.executable, "-c", "raise SystemExit(3)"])


@pytest.mark.slow
def test_recipe_every_stage_at_200_classes_in_process(tmp_path, repo_root, monkeypatch):
    """Every stage of experiment=ilsvrc14 (6 members, SS 2x + MultiBox, val1/val2) with the rehearsal's
    size overrides, composed from conf/ and run in this process on a 24-image world: each stage's
    output is there and has the shape the next stage needs."""
    from benchmarks.ilsvrc14_rehearsal import recipe_stages
    from benchmarks.ilsvrc_world import write_classification_folders
    from detect.io import load_checkpoint
    from proposals.store_format import ProposalStore

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    world, cls_root, work = tmp_path / "world", tmp_path / "cls", tmp_path / "run"
    record = make_ilsvrc2014_world(world, images=24)
    write_classification_folders(cls_root, num_classes=4, per_class=4, val_per_class=1)
    tools = {}
    stages = recipe_stages(world, cls_root, work, members=6, max_steps=1)
    assert [s[0] for s in stages] == ["train_cls", "train_multibox", "propose_train", "propose_val",
                                      *[f"train_region_{k}" for k in range(6)], "bundle", "detect_val", "eval_map"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only contends on the shared 2 cores
    try:
        for name, tool, args in stages:
            if tool not in tools:
                tools[tool] = _load(repo_root / "tools" / f"{tool}.py", f"tool_{tool}")
            cfg = _compose(tool, args)
            tools[tool].main(cfg)  # hydra.main passes a given config straight to the function
    finally:
        torch.set_num_threads(threads)
    val1, val2 = record["val1"], record["val2"]
    for split, n in (("val1", val1), ("val2", val2)):  # named after the recipe's splits
        store = ProposalStore.load(work / "proposals" / f"ilsvrc2014_{split}_ss2x+multibox200.npz")
        assert len(store) == n and isinstance(store.boxes, np.memmap) and store.boxes_per_image().min() > 0
    detector = load_checkpoint(work / "detector.pt")
    assert len(detector["members"]) == 6 and len(detector["classes"]["wnids"]) == 200
    assert detector["settings"]["crop_size"] == 64
    lines = (work / "detections" / "ilsvrc2014_val2.txt").read_text().splitlines()
    assert len({int(line.split()[0]) for line in lines}) == val2  # every val2 image has detections
    report = json.loads((work / "eval" / "eval_ilsvrc2014_val2.json").read_text())
    assert report["num_images"] == val2 and report["num_detections"] == len(lines)
