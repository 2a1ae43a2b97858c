"""The synthetic world: determinism, idempotence, class coverage, boxes, layout readable by the ILSVRC reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detect.classes import read_class_list
from detect.data import synthetic
from detect.data.ilsvrc import read_ilsvrc_det
from detect.data.images import read_image
from detect.data.synthetic import (make_classification_set, make_detection_world, render_detection_image,
                                   scene_classes)

WORLD = dict(num_classes=5, num_train=24, num_val=10, min_side=96, max_side=128, max_objects=4,
             empty_fraction=0.2)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_detection_world(root, seed=3, **WORLD)
    return root


def test_classes_are_distinct_combinations():
    classes = scene_classes(480)
    assert len({(c.shape, c.colour, c.texture) for c in classes}) == 480
    assert len({c.shape for c in classes[:8]}) == 8  # the first classes differ in shape
    assert all(c.wnid.startswith("n99") and len(c.wnid) == 9 for c in classes)
    with pytest.raises(ValueError):
        scene_classes(481)


def test_detection_world_layout_and_reader(world):
    classes = read_class_list(world / "classes.tsv")
    assert len(classes) == 5 and classes.names[0] == "red solid circle"
    for split, count in (("train", 24), ("val", 10)):
        lines = (world / "ImageSets" / "DET" / f"{split}.txt").read_text().split("\n")[:-1]
        assert [int(line.split()[1]) for line in lines] == list(range(1, count + 1))
        ds = read_ilsvrc_det(world, split)
        assert len(ds) == count and len(ds.skipped) == 0
        assert ds.classes == classes
        assert sum(len(r.boxes) == 0 for r in ds) == round(0.2 * count)  # empty images exist
        assert set(np.concatenate([r.labels for r in ds]).tolist()) == set(range(5))  # every class appears
        for r in ds:
            image = read_image(r.path)
            assert image.shape == (r.height, r.width, 3)
            assert 96 <= r.width <= 128 and 96 <= r.height <= 128
            b = r.boxes
            assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
            assert np.all(b[:, 2] <= r.width - 1) and np.all(b[:, 3] <= r.height - 1)
            assert np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])
            assert len(b) <= 4


def test_deterministic_and_seed_dependent(world, tmp_path):
    again = tmp_path / "again"
    make_detection_world(again, seed=3, **WORLD)
    assert _tree_bytes(again) == _tree_bytes(world)
    other = tmp_path / "other"
    make_detection_world(other, seed=4, **WORLD)
    a, b = _tree_bytes(world), _tree_bytes(other)
    assert a.keys() == b.keys()
    assert a["Data/DET/val/synthetic_val_000001.JPEG"] != b["Data/DET/val/synthetic_val_000001.JPEG"]


def test_idempotent_and_regenerates_on_change(tmp_path, monkeypatch):
    params = dict(WORLD, num_train=4, num_val=2)
    make_detection_world(tmp_path, **params)
    before = _tree_bytes(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("rendered although the manifest matched")

    monkeypatch.setattr(synthetic, "render_detection_image", no_work)
    make_detection_world(tmp_path, **params)  # manifest matches: nothing rendered
    assert _tree_bytes(tmp_path) == before
    monkeypatch.undo()

    stale = tmp_path / "Data" / "DET" / "train" / "stale.JPEG"  # not written by the generator: never removed
    stale.write_bytes(b"x")
    with pytest.raises(synthetic.ForeignDataError, match="stale.JPEG.*files added by hand"):
        make_detection_world(tmp_path, **dict(params, num_train=3))
    assert stale.read_bytes() == b"x" and _tree_bytes(tmp_path) == dict(before, **{"Data/DET/train/stale.JPEG": b"x"})
    stale.unlink()
    make_detection_world(tmp_path, **dict(params, num_train=3))  # different parameters: rebuilt
    assert len(read_ilsvrc_det(tmp_path, "train")) == 3
    assert sorted(p.name for p in (tmp_path / "Data" / "DET" / "train").iterdir()) == [
        f"synthetic_train_{i:06d}.JPEG" for i in (1, 2, 3)]


def test_occlusion_keeps_half_visible_and_boxes_are_full_extent(monkeypatch):
    """Objects replaced by solid squares of unique colours on black: count what stays visible."""
    sizes = []

    def square(rng, cls, size):
        s = int(round(size))
        sizes.append(s)
        return np.ones((s, s), bool), np.full((s, s, 3), len(sizes), np.uint8)

    monkeypatch.setattr(synthetic, "render_object", square)
    monkeypatch.setattr(synthetic, "render_background", lambda rng, h, w: np.zeros((h, w, 3), np.uint8))
    classes = scene_classes(6)
    rng = np.random.default_rng(7)
    occluded = 0
    for _ in range(20):
        sizes.clear()
        image, boxes, labels = render_detection_image(rng, 160, 120, classes, [0, 1, 2, 3, 4, 5], 20, 0.9, 0.5, 20)
        assert image.shape == (120, 160, 3) and len(boxes) == len(labels) >= 1
        # objects are drawn largest first; their colour is the call number (1-based), in drawing order
        colours = [c for c in range(1, len(sizes) + 1) if (image[..., 0] == c).any()]
        assert len(colours) == len(boxes)
        for colour, box in zip(colours, boxes):
            s = sizes[colour - 1]
            visible = image[..., 0] == colour
            assert visible.sum() >= 0.5 * s * s  # at least half of the full square is visible
            ys, xs = np.nonzero(visible)
            assert box[0] <= xs.min() and box[1] <= ys.min() and box[2] >= xs.max() and box[3] >= ys.max()
            w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
            assert w <= s and h <= s and (w == s or box[0] == 0 or box[2] == 159)  # full extent, clipped
            assert h == s or box[1] == 0 or box[3] == 119
            occluded += visible.sum() < w * h
    assert occluded > 0  # occlusion does happen


def test_classification_set(tmp_path):
    classes = make_classification_set(tmp_path, num_classes=4, train_per_class=3, val_per_class=2, image_size=64)
    assert len(classes) == 4
    assert read_class_list(tmp_path / "classes.tsv") == classes
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == list(classes.wnids)
        for wnid in classes.wnids:
            files = sorted((tmp_path / split / wnid).glob("*.JPEG"))
            assert len(files) == n
            assert read_image(files[0]).shape == (64, 64, 3)
    before = _tree_bytes(tmp_path)
    make_classification_set(tmp_path / "copy", num_classes=4, train_per_class=3, val_per_class=2, image_size=64)
    assert _tree_bytes(tmp_path / "copy") == {k: v for k, v in before.items()}
    # the object is in the picture: the centre differs from a background rendered alone
    image = read_image(tmp_path / "train" / classes.wnids[0] / f"{classes.wnids[0]}_00001.JPEG")
    red = (image[..., 0].astype(int) - image[..., 1:].max(-1)) > 80
    assert red.sum() > 0.1 * 64 * 64


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return compose(config_name="make_synthetic", overrides=overrides)


def test_synthetic_configs_compose_and_instantiate(tmp_path):
    from hydra.utils import instantiate

    cfg = _compose([f"work_dir={tmp_path}", "data.generate.num_train=4", "data.generate.num_val=3",
                    "data.generate.num_classes=3", "data_cls.generate.train_per_class=1",
                    "data_cls.generate.val_per_class=1", "data_cls.generate.num_classes=3"])
    assert cfg.detection and cfg.classification
    assert len(instantiate(cfg.data.generate)) == 3
    assert len(instantiate(cfg.data_cls.generate)) == 3
    train, val = instantiate(cfg.data.train), instantiate(cfg.data.val)
    assert (len(train), len(val)) == (4, 3) and train.classes.names[0] == "red solid circle"
    assert (tmp_path / "data" / "synthetic_det" / "manifest.json").is_file()
