"""Per-class NMS against a plain loop, the detector on a tiny network, and the detector checkpoint."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torchvision import ops

from detect.classes import ClassList
from detect.io import load_checkpoint
from detect.models.convention import BVLC
from detect.models.googlenet import IMAGENET_MEAN, IMAGENET_STD, GoogLeNet
from detect.region import warp_regions
from detect.pipeline import DETECTOR_FORMAT, Detector, DetectorSettings, bundle_detector, per_class_nms
from proposals.base import Proposals

TINY = dict(width=0.125, aux_logits=True, lrn=False, dropout=0.0)


def test_per_class_nms_hand_made():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    probs = torch.tensor([[0.1, 0.8, 0.1],     # class 0 at 0.8
                          [0.2, 0.7, 0.1],     # overlaps box 0 (IoU 0.82) in class 0 -> suppressed
                          [0.5, 0.005, 0.495]])
    b, s, l = per_class_nms(boxes, probs, nms_iou=0.3, score_threshold=0.01, max_per_image=10)
    # class 1: box 2 at 0.495 and one of the overlapping boxes 0 / 1 at 0.1 (suppressed only within a class)
    assert l.tolist() == [0, 1, 1] and s.tolist() == pytest.approx([0.8, 0.495, 0.1])
    assert torch.equal(b[0], boxes[0]) and torch.equal(b[1], boxes[2])
    b, s, l = per_class_nms(boxes, probs, 0.3, 0.01, max_per_image=2)
    assert len(s) == 2 and s.tolist() == pytest.approx([0.8, 0.495])
    b, s, l = per_class_nms(boxes[:0], probs[:0], 0.3, 0.01, 10)
    assert b.shape == (0, 4) and len(s) == 0


def test_per_class_nms_matches_plain_loop():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=gen) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=gen) * 30], 1)
    probs = torch.rand(60, 5, generator=gen).softmax(1)
    b, s, l = per_class_nms(boxes, probs, 0.3, 0.15, 1000)
    expected = []
    for c in range(4):
        keep_rows = torch.where(probs[:, c + 1] >= 0.15)[0]
        for k in ops.nms(boxes[keep_rows], probs[keep_rows, c + 1], 0.3).tolist():
            expected.append((c, round(float(probs[keep_rows[k], c + 1]), 6)))
    got = sorted(zip(l.tolist(), [round(float(x), 6) for x in s]))
    assert got == sorted(expected)
    assert torch.all(s[:-1] >= s[1:])


class _GridProposer:
    name = "grid"

    def __call__(self, image):
        h, w = image.shape[:2]
        return Proposals(np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h], [-5, -5, w + 5, h + 5],
                                   [3, 3, 3.5, 40]], np.float32))


def _members(n, num_classes, seed=0):
    torch.manual_seed(seed)
    return [GoogLeNet(num_classes=num_classes + 1, **TINY).eval() for _ in range(n)]


@pytest.mark.slow
def test_detector_detects_and_roundtrips_checkpoint(tmp_path):
    classes = ClassList.from_names(["cat", "dog", "car"])
    members = _members(2, len(classes))
    det = Detector(_GridProposer(), members, classes, crop_size=64, context=4, nms_iou=0.3,
                   score_threshold=0.0, max_per_image=5, batch_size=2)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    res = det.detect(image)
    assert res.boxes.shape == (5, 4) and res.boxes.dtype == np.float32 and res.labels.dtype == np.int64
    assert np.all(res.scores[:-1] >= res.scores[1:]) and np.all(res.labels < 3)
    assert res.boxes.min() >= 0 and res.boxes[:, 2].max() <= 64 and res.boxes[:, 3].max() <= 48  # clipped
    # the tiny 0.5-pixel-wide proposal is dropped before scoring
    assert not np.any(res.boxes[:, 2] - res.boxes[:, 0] < 2)
    # scores are the ensemble's averaged softmax for the warped crop, computed here step by step: ImageNet
    # normalisation written out, R-CNN's warp (checked against a per-pixel loop in test_region), each
    # member's logits, softmax, mean over members; column label + 1 (0 is background)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    prepared = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    crop = warp_regions(prepared, torch.from_numpy(res.boxes[:1]), 64, 4)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(crop), dim=1) for m in members]).mean(0)
    assert float(res.scores[0]) == pytest.approx(float(expected[0, res.labels[0] + 1]), abs=1e-5)

    ckpts = [{"model_kwargs": m.model_kwargs, "model_state": m.state_dict()} for m in members]
    settings = DetectorSettings(crop_size=64, context=4, nms_iou=0.3, score_threshold=0.0, max_per_image=5,
                                batch_size=3)
    path = tmp_path / "detector.pt"
    bundle_detector(ckpts, classes, settings, path, proposer=None)
    raw = load_checkpoint(path)  # weights_only=True
    assert raw["format"] == DETECTOR_FORMAT and len(raw["members"]) == 2
    assert not any(k.startswith("aux") for k in raw["members"][0]["model_state"])
    loaded = Detector.from_checkpoint(path, device="cpu", proposer=_GridProposer())
    assert loaded.classes == classes and loaded.settings == settings
    res2 = loaded.detect(image)
    np.testing.assert_allclose(res2.scores, res.scores, atol=1e-5)
    np.testing.assert_allclose(res2.boxes, res.boxes, atol=1e-4)
    # cached proposals instead of the proposer; a single member; a cascade override
    one = Detector.from_checkpoint(path, stored_proposer=False, members=[0], cascade_threshold=0.9)
    assert len(one.scorers) == 1 and one.settings.cascade_threshold == 0.9
    res3 = one.detect(image, proposals=np.array([[0, 0, 32, 24]], np.float32))
    assert len(res3) == 3 and np.all(res3.boxes == [0, 0, 32, 24])
    with pytest.raises(ValueError, match="no proposer"):
        one.detect(image)


def test_detector_checkpoint_errors(tmp_path):
    classes = ClassList.from_names(["a"])
    member = _members(1, 2)[0]
    with pytest.raises(ValueError, match="expected 2"):
        bundle_detector([{"model_kwargs": member.model_kwargs, "model_state": member.state_dict()}],
                        classes, DetectorSettings(), tmp_path / "d.pt")
    torch.save({"model_state": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        Detector.from_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        Detector.from_checkpoint(tmp_path / "missing.pt")


def test_detector_no_proposals_gives_empty_result():
    classes = ClassList.from_names(["a", "b"])
    det = Detector(None, _members(1, 2), classes, crop_size=64, context=4)
    res = det.detect(np.zeros((20, 20, 3), np.uint8), proposals=np.zeros((0, 4), np.float32))
    assert res.boxes.shape == (0, 4) and len(res.scores) == 0


def test_detector_takes_scorers_and_leaves_device_to_them():
    from detect.backends import TorchScorer

    classes = ClassList.from_names(["a", "b"])
    det = Detector(None, _members(2, 2), classes, crop_size=64, context=4)
    assert all(isinstance(s, TorchScorer) for s in det.scorers) and det.device == torch.device("cpu")
    for wrong in ({"device": "cpu"}, {"channels_last": True}, {"amp": "bf16"}):
        with pytest.raises(TypeError, match="scorers' choice"):
            Detector(None, _members(1, 2), classes, **wrong)
    with pytest.raises(ValueError, match="at least one scorer"):
        Detector(None, [], classes)
    with pytest.raises(TypeError, match="neither a module nor a scorer"):
        Detector(None, [lambda crops: crops], classes)


def _run_tool(repo_root, cwd, tool, *overrides, fails=False):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(repo_root / "tools" / tool), *overrides], capture_output=True,
                         text=True, cwd=cwd, timeout=300)
    assert (run.returncode != 0) == fails, f"{tool} exit code {run.returncode}:\n{run.stdout}\n{run.stderr[-4000:]}"
    return run


@pytest.mark.slow
def test_train_region_bundle_and_detect_dataset_end_to_end(tmp_path, repo_root):
    """Two training steps of a tiny member, the detector bundle, then detection over a split (and its resume)."""
    from detect.data.ilsvrc import read_ilsvrc_det
    from detect.data.synthetic import make_detection_world
    from detect.detections import read_ilsvrc_submission
    from proposals.store import ProposalStore

    root = tmp_path / "data"
    make_detection_world(root, num_classes=3, num_train=4, num_val=3, min_side=96, max_side=128, max_objects=2,
                         empty_fraction=0.0, seed=0)
    rng = np.random.default_rng(0)
    stores = {}
    for split in ("train", "val"):
        ds = read_ilsvrc_det(root, split, classes=root / "classes.tsv")
        boxes = [np.concatenate([r.boxes + rng.normal(0, 3, r.boxes.shape),
                                 np.array([[0, 0, 40, 40], [30, 20, 90, 80]])]).clip(0, 95).astype(np.float32)
                 for r in ds.records]
        stores[split] = tmp_path / f"{split}.npz"
        ProposalStore.from_lists([r.image_id for r in ds.records], boxes).save(stores[split])
    common = [f"work_dir={tmp_path / 'work'}", f"data.root={root}", "~data.generate", "device=cpu", "num_workers=0"]
    # a "train_cls" checkpoint of another class count: the member takes its architecture and trunk weights,
    # and the input convention of those weights (here BVLC's, as for a network started from BVLC GoogLeNet)
    torch.manual_seed(0)
    pretrained = GoogLeNet(num_classes=5, width=0.125, batch_norm=True, lrn=False)
    pretrained.set_input_convention(BVLC)
    torch.save({"model_kwargs": pretrained.model_kwargs, "model_state": pretrained.state_dict()}, tmp_path / "cls.pt")
    run = _run_tool(repo_root, tmp_path, "train_region.py", *common, f"init={tmp_path / 'cls.pt'}", "crop_size=64", "context=4", "epochs=1", "max_steps_per_epoch=2", "images_per_batch=2",
              "regions_per_image=8", f"proposals_store={stores['train']}", "member=0",
              f"evaluation.proposals_store={stores['val']}")
    member = load_checkpoint(tmp_path / "work" / "region" / "member0" / "checkpoint.pt")
    assert member["model_kwargs"]["num_classes"] == 4 and member["step"] == 0 and member["epoch"] == 1
    assert member["model_kwargs"]["width"] == 0.125 and member["model_kwargs"]["batch_norm"] is True
    assert member["model_kwargs"]["input_convention"] == BVLC.to_dict()
    assert "val_fg_acc" in run.stdout + run.stderr  # held-out region accuracy logged after the epoch
    _run_tool(repo_root, tmp_path, "train_region.py", *common, "step=bundle", "members=1", "crop_size=64",
              "context=4", "detector.score_threshold=0.0", "detector.max_per_image=7", "proposals=opencv_fast")
    bundle = load_checkpoint(tmp_path / "work" / "detector.pt")
    assert bundle["settings"]["crop_size"] == 64 and bundle["proposer"]["params"]["mode"] == "opencv_fast"
    assert bundle["members"][0]["model_kwargs"]["input_convention"] == BVLC.to_dict()
    assert Detector.from_checkpoint(tmp_path / "work" / "detector.pt", backend="torch",
                                    stored_proposer=False).scorer.conventions == [BVLC]
    assert bundle["classes"]["names"] == list(read_ilsvrc_det(root, "val", classes=root / "classes.tsv").classes.names)
    # a second member killed before its run finished, or trained on other inputs: no detector is bundled
    second = tmp_path / "work" / "region" / "member1" / "checkpoint.pt"
    second.parent.mkdir()
    before = (tmp_path / "work" / "detector.pt").read_bytes()
    for doctored, message in (({"epoch": 0, "step": 1}, "member1/checkpoint.pt: a training checkpoint saved at epoch 1 "
                                                        "step 1 of 1: its run did not finish"),
                              ({"fingerprint": {**member["fingerprint"], "data": "other"}},
                               "member1/checkpoint.pt: trained on other inputs than .*member0.* \\(differs in: data\\)")):
        torch.save({**member, **doctored}, second)
        run = _run_tool(repo_root, tmp_path, "train_region.py", *common, "step=bundle", "members=2", "crop_size=64",
                        "context=4", "proposals=opencv_fast", fails=True)
        assert re.search(message, run.stderr), run.stderr[-2000:]
        assert (tmp_path / "work" / "detector.pt").read_bytes() == before

    run = _run_tool(repo_root, tmp_path, "detect_dataset.py", *common, "split=val",
                    f"proposals_store={stores['val']}")
    out = tmp_path / "work" / "detections" / "synthetic_val.txt"
    assert "21 detections on 3 images" in run.stdout
    dets = read_ilsvrc_submission(out, num_classes=3)
    assert sorted(set(dets.image_index.tolist())) == [1, 2, 3] and len(dets) == 21
    assert (tmp_path / "work" / "detections" / "synthetic_val.json").is_file()
    # ILSVRC ids are names, not integers: the COCO results say which image_id they use
    assert "synthetic_val.json: image ids not all integers (first: 'synthetic_val_000001')" in run.stdout
    assert {e["image_id"] for e in json.loads((out.with_suffix(".json")).read_text())} == {1, 2, 3}
    text = out.read_text()
    run = _run_tool(repo_root, tmp_path, "detect_dataset.py", *common, "split=val",
                    f"proposals_store={stores['val']}")  # resumed: nothing left to do, same file
    assert "is up to date" in run.stdout + run.stderr
    assert out.read_text() == text
    run = _run_tool(repo_root, tmp_path, "detect_dataset.py", *common, "split=val", "max_per_image=2",
                    f"proposals_store={stores['val']}")  # other settings: not resumed from the old shards
    assert "6 detections on 3 images" in run.stdout and len(read_ilsvrc_submission(out)) == 6
    # int8 scoring from the bundle's calibration crops; fp32 afterwards does not resume int8's shards
    assert bundle["calibration"]["crops"].dtype == torch.uint8 and bundle["calibration"]["crops"].shape[1:] == (3, 64, 64)
    other = [*common, "split=val", f"proposals_store={stores['val']}", f"output={tmp_path / 'q.txt'}"]
    run = _run_tool(repo_root, tmp_path, "detect_dataset.py", *other, "precision=int8")
    assert (tmp_path / "work" / "detector.pt.onnx" / "member0.int8.onnx").is_file()
    assert "21 detections on 3 images" in run.stdout
    run = _run_tool(repo_root, tmp_path, "detect_dataset.py", *other, "precision=fp32")
    assert "already done" not in run.stdout + run.stderr and "21 detections on 3 images" in run.stdout


@pytest.mark.parametrize("name", ["train_region", "detect", "detect_dataset"])
def test_tool_configs_compose_and_instantiate(name, repo_root, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(str(repo_root / "conf"), version_base="1.3"):
        cfg = compose(name, overrides=[f"work_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    if name == "train_region":
        assert cfg.checkpoint == f"{tmp_path}/region/member0/checkpoint.pt"
        assert cfg.images_per_batch * cfg.regions_per_image == 128 and cfg.fg_fraction * 128 == 32
        model = instantiate(cfg.model, num_classes=5, width=0.125)
        optimizer = instantiate(cfg.optimizer)(model.parameters())
        assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["momentum"] == 0.9
        assert optimizer.defaults["weight_decay"] == 5e-4 and cfg.aux_weight == 0.3
        assert instantiate(cfg.scheduler)(optimizer).step_size == cfg.scheduler.step_size
        assert instantiate(cfg.proposals).name
        assert cfg.detector.nms_iou == 0.3 and cfg.detector.crop_size == cfg.crop_size
    else:
        assert cfg.detector == f"{tmp_path}/detector.pt"
        if name == "detect_dataset":
            assert cfg.data.val._target_.startswith("detect.data.")
