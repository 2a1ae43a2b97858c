"""Proposal recall on hand-made boxes; every proposals config composes; propose.py stopped halfway and
restarted gives the same bytes as an uninterrupted run; eval_proposals.py writes its table, JSON and PNG."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from detect.evaluation import ilsvrc_thresholds
from proposals.recall import best_proposal_overlaps, proposal_recall
from proposals.selective_search import SelectiveSearch
from proposals.store import ProposalStore


def test_ilsvrc_threshold_known_values():
    # a 10 x 10 box (inclusive 0..9 with +1 widths): 100 / (20 * 20) = 0.25; large boxes: 0.5
    thr = ilsvrc_thresholds(np.array([[0, 0, 9, 9], [0, 0, 99, 99]], np.float32))
    assert np.allclose(thr, [0.25, 0.5])
    assert np.allclose(ilsvrc_thresholds(np.array([[0, 0, 10, 10]]), plus_one=False), 0.25)


def test_recall_hand_made():
    gt = [np.array([[0, 0, 99, 99], [200, 200, 209, 209]], np.float32), np.array([[0, 0, 49, 49]], np.float32)]
    props = [
        np.array([[300, 300, 400, 400], [0, 0, 99, 49], [203, 203, 212, 212]], np.float32),  # IoU 0.5, 49/151
        np.array([[0, 0, 49, 49]], np.float32),                                                # IoU 1
    ]
    r = proposal_recall(gt, props, ks=[1, 2, 3], plus_one=True)
    small = 49 / 151  # 7x7 overlap over 10x10 + 10x10 - 49; below 0.5 but above the ILSVRC 0.25
    assert r.num_gt == 3 and r.num_images == 2 and r.boxes_per_image == 2.0
    assert r.coverage_050 == pytest.approx(2 / 3) and r.coverage_ilsvrc == pytest.approx(1.0)
    assert r.mabo == pytest.approx((0.5 + small + 1.0) / 3)
    assert r.recall_at_k == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert r.recall_ilsvrc_at_k == pytest.approx([1 / 3, 2 / 3, 1.0])
    ignored = proposal_recall(gt, props, keep=[np.array([True, False]), np.array([False])], ks=[1])
    assert ignored.num_gt == 1 and ignored.coverage_050 == 1.0
    empty = proposal_recall([np.zeros((1, 4))], [np.zeros((0, 4))], ks=[1])
    assert empty.coverage_050 == 0.0 and empty.mabo == 0.0


def test_best_overlaps_against_loop():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (30, 2))], axis=1)
    gt, props = boxes[:5], boxes[5:]
    best, at_k = best_proposal_overlaps(gt, props, ks=[3, 100], plus_one=False)
    for g in range(5):
        ious = []
        for p in props:
            iw = max(0, min(gt[g, 2], p[2]) - max(gt[g, 0], p[0]))
            ih = max(0, min(gt[g, 3], p[3]) - max(gt[g, 1], p[1]))
            a = (gt[g, 2] - gt[g, 0]) * (gt[g, 3] - gt[g, 1]) + (p[2] - p[0]) * (p[3] - p[1])
            ious.append(iw * ih / (a - iw * ih))
        assert best[g] == pytest.approx(max(ious)) and at_k[0, g] == pytest.approx(max(ious[:3]))
        assert at_k[1, g] == pytest.approx(max(ious))


@pytest.mark.parametrize("name", ["ss_paper", "ss_rcnn", "opencv_fast", "opencv_quality", "multibox", "union"])
def test_proposal_configs_compose(repo_root, name):
    with initialize_config_dir(str(repo_root / "conf"), version_base="1.3"):
        cfg = compose("propose", overrides=[f"proposals={name}", "~data"])
    assert cfg.proposals._target_.startswith("proposals.") and cfg.workers == "auto"
    if name in ("multibox", "union"):
        node = cfg.proposals if name == "multibox" else cfg.proposals.sources[-1]
        assert node.checkpoint.endswith("multibox/checkpoint.pt") and node.top_k == 200
        return
    ss = instantiate(cfg.proposals, _convert_="all")
    assert isinstance(ss, SelectiveSearch)
    assert ss.superpixel_scale == {"ss_paper": 2.0}.get(name, 1.0)
    assert ss.mode == {"opencv_fast": "opencv_fast", "opencv_quality": "opencv_quality"}.get(name, "rcnn_fast")


def _tool(repo_root, tool, conf_dir, work, *overrides):
    cmd = [sys.executable, str(repo_root / "tools" / tool), "--config-dir", str(conf_dir),
           "data=tiny", f"work_dir={work}", "hydra.run.dir=" + str(work / "logs"), *overrides]
    done = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(0)
    img = tmp_path / "img"
    img.mkdir()
    for i in range(7):
        small = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
        Image.fromarray(np.kron(small, np.ones((12, 12, 1), np.uint8))).save(img / f"{i}.png")
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(
        f"name: tiny\nroot: {img}\nval:\n  _target_: detect.data.folder.read_image_folder\n  paths: [{img}]\n")
    return tmp_path / "conf"


@pytest.mark.slow
def test_propose_stopped_and_resumed_matches_uninterrupted(repo_root, tiny_data, tmp_path):
    common = ["proposals.resize_width=72", "proposals.min_box_size=8", "chunk_size=2", "workers=1", "progress=false"]
    _tool(repo_root, "propose.py", tiny_data, tmp_path / "a", *common)
    _tool(repo_root, "propose.py", tiny_data, tmp_path / "b", *common, "stop_after_chunks=2")
    out_b = tmp_path / "b" / "proposals" / "tiny_val_ss2x.npz"
    assert not out_b.exists() and len(list(out_b.parent.glob(".tiny_val_ss2x.parts-*/*.npz"))) == 2
    _tool(repo_root, "propose.py", tiny_data, tmp_path / "b", *common)
    out_a = tmp_path / "a" / "proposals" / "tiny_val_ss2x.npz"
    assert out_b.read_bytes() == out_a.read_bytes()
    store = ProposalStore.load(out_b)
    assert len(store) == 7 and store.boxes_per_image().min() > 0
    table = _tool(repo_root, "eval_proposals.py", tiny_data, tmp_path / "b", "plus_one=false")
    assert "ss2x" in table
    report = json.loads((tmp_path / "b" / "eval" / "proposals_tiny_val.json").read_text())
    assert report["methods"]["ss2x"]["num_images"] == 7
    assert (tmp_path / "b" / "eval" / "proposals_tiny_val.png").stat().st_size > 1000
