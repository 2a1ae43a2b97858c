"""The fault suite: hostile files, foreign folders and ordinary mistakes, each with the behaviour asserted.

Every case here is listed, with its outcome, in docs/FAULTS.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from detect.data import synthetic
from detect.data.synthetic import ForeignDataError, make_classification_set, make_detection_world

TINY_WORLD = dict(num_classes=2, num_train=2, num_val=1, min_side=64, max_side=72, max_objects=1)
TINY_CLS = dict(num_classes=2, train_per_class=1, val_per_class=1, image_size=32)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- a foreign data root


@pytest.mark.parametrize("layout, hint", [
    ({"Data/DET/val/a.JPEG": b"img", "Annotations/DET/val/a.xml": b"<annotation/>",
      "ImageSets/DET/val.txt": b"a 1\n"}, "data=ilsvrc"),
    ({"ILSVRC2013_DET_val/a.JPEG": b"img"}, "data=ilsvrc2014"),
    ({"JPEGImages/a.jpg": b"img", "Annotations/a.xml": b"<annotation/>"}, "data=voc"),
    ({"notes.txt": b"mine"}, "not data this generator wrote"),
])
def test_generator_refuses_a_real_dataset_root(tmp_path, layout, hint):
    """`propose.py data.root=/datasets/ILSVRC` without `data=ilsvrc` once deleted the dataset."""
    for rel, data in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    before = _snapshot(tmp_path)
    with pytest.raises(ForeignDataError) as err:
        make_detection_world(tmp_path, **TINY_WORLD)
    assert str(tmp_path) in str(err.value) and hint in str(err.value) and "nothing was removed" in str(err.value)
    assert _snapshot(tmp_path) == before


def test_classification_generator_refuses_an_imagenet_root(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "train" / "n01440764" / "x.JPEG").write_bytes(b"img")
    (tmp_path / "val").mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(ForeignDataError, match="data_cls=imagenet"):
        make_classification_set(tmp_path, **TINY_CLS)
    assert _snapshot(tmp_path) == before


def test_generator_never_follows_a_manifest_outside_its_root(tmp_path):
    """A forged manifest listing '../victim' is not the generator's: refused, the victim survives."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    root = tmp_path / "world"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"params": {}, "files": ["../victim.txt"], "complete": False}))
    (root / "other.txt").write_text("x")
    with pytest.raises(ForeignDataError):
        make_detection_world(root, **TINY_WORLD)
    assert victim.read_text() == "keep me"


def test_generator_does_not_clear_through_a_linked_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "DET" / "train").mkdir(parents=True)
    precious = elsewhere / "DET" / "train" / "synthetic_train_000001.JPEG"
    precious.write_bytes(b"precious")
    root = tmp_path / "world"
    make_detection_world(root, **TINY_WORLD)
    import shutil
    shutil.rmtree(root / "Data")
    os.symlink(elsewhere, root / "Data")
    with pytest.raises(ForeignDataError):
        make_detection_world(root, **dict(TINY_WORLD, num_train=1))
    assert precious.read_bytes() == b"precious"


def test_generator_resumes_an_interrupted_generation_of_its_own(tmp_path, monkeypatch):
    """Killed half-way: the manifest (written first, marked incomplete) lists the files, so a re-run
    may clear and rebuild them, temporary files of atomic writes included."""
    calls = {"n": 0}
    real = synthetic.render_detection_image

    def dies_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_detection_image", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        make_detection_world(tmp_path, **TINY_WORLD)
    monkeypatch.undo()
    (tmp_path / ".classes.tsv.abc123xy.tmp").write_text("half")  # what a killed atomic write leaves
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    make_detection_world(tmp_path, **TINY_WORLD)
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"]
    assert not (tmp_path / ".classes.tsv.abc123xy.tmp").exists()
    fresh = tmp_path.parent / (tmp_path.name + "_fresh")
    make_detection_world(fresh, **TINY_WORLD)
    assert _snapshot(tmp_path) == _snapshot(fresh)


def test_generator_reads_manifests_of_earlier_versions(tmp_path):
    """Worlds generated before manifests listed their files (params only) are still recognised."""
    make_detection_world(tmp_path, **TINY_WORLD)
    params = json.loads((tmp_path / "manifest.json").read_text())["params"]
    (tmp_path / "manifest.json").write_text(json.dumps(params))
    make_detection_world(tmp_path, **dict(TINY_WORLD, num_train=1))  # owned files cleared and rebuilt
    assert not (tmp_path / "Data/DET/train/synthetic_train_000002.JPEG").exists()


# --------------------------------------------------------------------------- hostile detector files

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detect.classes import ClassList  # noqa: E402
from detect.io import atomic_torch_save, load_checkpoint  # noqa: E402
from detect.models.googlenet import GoogLeNet  # noqa: E402
from detect.pipeline import Detector, DetectorSettings, bundle_detector  # noqa: E402
from proposals.spec import build_proposer, embed_networks, spec_from_target_config  # noqa: E402

CLASSES = ClassList.from_names(["cat", "dog"])


def _member():
    torch.manual_seed(0)
    net = GoogLeNet(num_classes=len(CLASSES) + 1, width=0.125, lrn=False, dropout=0.0).eval()
    return {"model_kwargs": net.model_kwargs, "model_state": net.state_dict()}


def _multibox_checkpoint(path: Path) -> Path:
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(1)
    kwargs = {"backbone_kwargs": {"width": 0.125, "lrn": False, "dropout": 0.0}, "num_priors": 5, "input_size": 64}
    net = MultiBoxNet(**kwargs)
    net.set_priors(np.array([[0.1 * i, 0.1 * i, 0.5 + 0.1 * i, 0.5 + 0.1 * i] for i in range(5)], np.float32))
    atomic_torch_save({"model_kwargs": kwargs, "model_state": net.state_dict(), "optimizer": {"junk": 1}}, path)
    return path


UNION = {"_target_": "proposals.merge.UnionProposer", "caps": [None, 3], "sources": [
    {"_target_": "proposals.selective_search.SelectiveSearch", "mode": "opencv_fast", "resize_width": 80,
     "max_boxes": 20},
    {"_target_": "proposals.multibox.MultiBoxProposer", "checkpoint": "PLACEHOLDER", "top_k": 3, "device": "cpu",
     "backend": "torch"}]}


def _paper_like_detector(tmp_path: Path) -> Path:
    mb = _multibox_checkpoint(tmp_path / "train" / "multibox.pt")
    config = json.loads(json.dumps(UNION).replace("PLACEHOLDER", str(mb)))
    spec = embed_networks(spec_from_target_config(config))
    path = tmp_path / "train" / "detector.pt"
    bundle_detector([_member()], CLASSES, DetectorSettings(crop_size=64, context=4, score_threshold=0.0), path,
                    proposer=spec)
    return path


def test_detector_file_is_self_contained(tmp_path):
    """The MultiBox network travels inside the detector file: moved to another folder, with the
    MultiBox checkpoint gone, it gives the same detections."""
    path = _paper_like_detector(tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    before = Detector.from_checkpoint(path, backend="torch").detect(image)
    raw = load_checkpoint(path)
    assert "optimizer" not in raw["proposer"]["sources"][1]["network"]  # training state is not shipped
    assert "checkpoint" not in json.dumps(raw["proposer"]["sources"][1]["params"])
    moved = tmp_path / "elsewhere" / "det.pt"
    moved.parent.mkdir()
    shutil.move(path, moved)
    shutil.rmtree(tmp_path / "train")
    after = Detector.from_checkpoint(moved, backend="torch").detect(image)
    assert len(before) > 0
    np.testing.assert_array_equal(before.boxes, after.boxes)
    np.testing.assert_array_equal(before.scores, after.scores)


def _write_detector(path: Path, proposer, fmt="googlenet-detector-v2", **extra):
    obj = {"format": fmt, "members": [_member()], "classes": {"wnids": list(CLASSES.wnids), "names": list(CLASSES.names)},
           "settings": {"crop_size": 64, "context": 4}, "proposer": proposer, **extra}
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("proposer, message", [
    ({"kind": "pathlib.Path.write_text", "params": {}}, "not one of"),
    ({"kind": "selective_search", "params": {"_target_": "os.system"}}, "no parameter"),
    ({"kind": "union", "params": {}, "sources": [{"kind": "torch.load", "params": {}}]}, "not one of"),
    ({"kind": "multibox", "params": {"top_k": 5}, "checkpoint": "/etc/passwd"}, "not embedded"),
    ({"kind": "selective_search", "params": {"seed": {"_target_": "builtins.eval"}}}, "not a plain value"),
])
def test_hostile_detector_proposer_is_refused(tmp_path, proposer, message):
    path = _write_detector(tmp_path / "evil.pt", proposer)
    with pytest.raises(ValueError, match=message) as err:
        Detector.from_checkpoint(path, backend="torch")
    assert "evil.pt" in str(err.value)


def test_v1_detector_with_a_code_target_does_not_run_it(tmp_path):
    """Format v1 stored a Hydra _target_; a file naming pathlib.Path.write_text once wrote any file."""
    victim = tmp_path / "written.txt"
    config = {"crop_size": 64, "context": 4, "proposer": {"_target_": "pathlib.Path.write_text",
                                                          "self": str(victim), "data": "owned"}}
    path = _write_detector(tmp_path / "v1.pt", None, fmt="googlenet-detector-v1", config=config)
    with pytest.raises(ValueError, match="not one of the project's proposers"):
        Detector.from_checkpoint(path, backend="torch")
    assert not victim.exists()
    # a v1 file with one of our proposers and no file references still loads
    config["proposer"] = {"_target_": "proposals.selective_search.SelectiveSearch", "mode": "opencv_fast"}
    path = _write_detector(tmp_path / "v1ok.pt", None, fmt="googlenet-detector-v1", config=config)
    assert Detector.from_checkpoint(path, backend="torch").proposer.mode == "opencv_fast"
    config["proposer"] = dict(UNION)
    path = _write_detector(tmp_path / "v1mb.pt", None, fmt="googlenet-detector-v1", config=config)
    with pytest.raises(ValueError, match="by path"):
        Detector.from_checkpoint(path, backend="torch")


def test_pickled_code_in_a_detector_file_is_refused(tmp_path):
    """torch.load(weights_only=True) refuses a pickle that would run code."""
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import pickle

    path = tmp_path / "pickled.pt"
    path.write_bytes(pickle.dumps({"format": "googlenet-detector-v2", "x": Boom()}))
    with pytest.raises(ValueError, match="pickled.pt"):
        Detector.from_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o["settings"].update(context=40), "context"),
    (lambda o: o["settings"].update(unknown=1), "unknown detector settings"),
    (lambda o: o["settings"].update(nms_iou="0.3"), "nms_iou"),
    (lambda o: o["members"][0]["model_kwargs"].update(__class__="os.system"), "unknown model_kwargs"),
    (lambda o: o["members"][0]["model_state"].pop("fc.weight"), "do not fit"),
    (lambda o: o["classes"].update(names=["cat"]), "class list"),
    (lambda o: o.update(members=[]), "non-empty list of members"),
])
def test_malformed_detector_file_names_the_file(tmp_path, mutate, message):
    obj = {"format": "googlenet-detector-v2", "members": [_member()],
           "classes": {"wnids": list(CLASSES.wnids), "names": list(CLASSES.names)},
           "settings": {"crop_size": 64, "context": 4}, "proposer": None}
    mutate(obj)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message) as err:
        Detector.from_checkpoint(tmp_path / "bad.pt", backend="torch")
    assert "bad.pt" in str(err.value) or "overrides" in str(err.value)


def test_spec_roundtrip_rebuilds_the_same_proposer(tmp_path):
    mb = _multibox_checkpoint(tmp_path / "mb.pt")
    config = json.loads(json.dumps(UNION).replace("PLACEHOLDER", str(mb)))
    spec = embed_networks(spec_from_target_config(config))
    proposer = build_proposer(spec, "test")
    image = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    from hydra.utils import instantiate
    reference = instantiate(config, _convert_="all")
    np.testing.assert_array_equal(proposer(image).boxes, reference(image).boxes)
    assert proposer.name == reference.name
