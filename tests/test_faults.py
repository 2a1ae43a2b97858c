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
