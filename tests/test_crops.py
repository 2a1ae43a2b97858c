"""Ground-truth crops: what is cut, from where, idempotence, and the ownership rules of generated data."""
import dataclasses

import numpy as np
import pytest

from detect.classes import read_class_list
from detect.data import crops as crops_module
from detect.data.classification import read_split
from detect.data.crops import crop_box, cut_gt_crops
from detect.data.generated import ForeignDataError
from detect.data.ilsvrc import read_ilsvrc_det
from detect.data.images import read_image
from detect.data.synthetic import make_detection_world

WORLD = dict(num_classes=3, num_train=6, num_val=3, min_side=96, max_side=128, max_objects=3, min_object_size=12,
             seed=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    make_detection_world(root, **WORLD)
    train = read_ilsvrc_det(root, "train", classes=root / "classes.tsv")
    val = read_ilsvrc_det(root, "val", classes=root / "classes.tsv")
    train.records[0].ignore[:] = True  # as VOC difficult / COCO crowd: never cut
    return train, val


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_crop_window_grows_by_context_and_clips():
    assert crop_box(np.array([10, 20, 29, 59]), 100, 100, 0.0) == (10, 20, 30, 60)
    assert crop_box(np.array([10, 20, 29, 59]), 100, 100, 0.5) == (0, 0, 40, 80)  # 9.5 / 19.5 px each side
    assert crop_box(np.array([90, 90, 99, 99]), 100, 100, 0.5) == (85, 85, 100, 100)


def test_cuts_every_usable_box_into_class_folders(world, tmp_path):
    train, val = world
    min_size = 20
    classes = cut_gt_crops(tmp_path, train, val, context=0.0, min_size=min_size, max_side=40)
    assert classes == train.classes and read_class_list(tmp_path / "classes.tsv") == classes
    for split, data in (("train", train), ("val", val)):
        want = {}
        for r in data.records:
            for k, (box, label, ign) in enumerate(zip(r.boxes, r.labels, r.ignore)):
                if not ign and min(box[2] - box[0], box[3] - box[1]) >= min_size:
                    want[f"{split}/{classes.wnids[label]}/{r.index:06d}_{r.image_id}_{k:02d}.jpg"] = (r, box)
        assert want and sorted(want) == [f for f in _files(tmp_path) if f.startswith(split + "/")]
        for rel, (r, box) in want.items():  # the crop is the box, downscaled to at most 40 px
            crop = read_image(tmp_path / rel)
            w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
            assert max(crop.shape[:2]) <= 40
            assert crop.shape[1] / crop.shape[0] == pytest.approx(w / h, rel=0.15)
    assert not any(f.startswith(f"train/{train.classes.wnids[0]}/{train.records[0].index:06d}_") for f in _files(tmp_path))
    split = read_split(tmp_path / "train", tmp_path / "classes.tsv")
    assert len(split) == sum(f.startswith("train/") for f in _files(tmp_path))


def test_idempotent_recut_on_change_and_refuses_foreign_files(world, tmp_path, monkeypatch):
    train, val = world
    cut_gt_crops(tmp_path, train, val)
    before = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)}

    def no_read(path):
        raise AssertionError("read an image although the crops were up to date")

    monkeypatch.setattr(crops_module, "read_image", no_read)
    cut_gt_crops(tmp_path, train, val)
    monkeypatch.undo()
    assert {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)} == before

    cut_gt_crops(tmp_path, train, val, context=0.3)  # other settings: cut again, old crops replaced
    after = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)}
    assert after.keys() == before.keys() and after != before

    mine = tmp_path / "train" / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(ForeignDataError, match="notes.txt"):
        cut_gt_crops(tmp_path, train, val, context=0.0)
    assert mine.read_text() == "mine" and {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)} == {
        **after, "train/notes.txt": b"mine"}


def test_refuses_a_dataset_folder_and_reports_what_cannot_be_cut(world, tmp_path):
    train, val = world
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"img")
    with pytest.raises(ForeignDataError, match="data=voc"):
        cut_gt_crops(tmp_path, train, val)
    assert _files(tmp_path) == ["JPEGImages/a.jpg"]
    with pytest.raises(ValueError, match="no ground-truth box"):
        cut_gt_crops(tmp_path / "new", train, val, min_size=10_000)


def test_a_corrected_annotation_size_cuts_the_crops_again(world, tmp_path, monkeypatch):
    """The frame an image is read in follows its annotated size (EXIF turned or not), so crops cut in the
    other frame must not be kept when an annotation's size changes."""
    train, val = world
    cut_gt_crops(tmp_path, train, val)
    reads = []
    monkeypatch.setattr(crops_module, "read_image", lambda path, size=None: reads.append(size) or read_image(path))
    cut_gt_crops(tmp_path, train, val)
    assert reads == []  # up to date
    i = next(i for i, r in enumerate(train.records) if i and r.width != r.height and len(r.boxes))
    turned = dataclasses.replace(train.records[i], width=train.records[i].height, height=train.records[i].width)
    changed = dataclasses.replace(train, records=[*train.records[:i], turned, *train.records[i + 1:]])
    cut_gt_crops(tmp_path, changed, val)
    assert (turned.width, turned.height) in reads
