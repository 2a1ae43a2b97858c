"""tools/eval_proposals.py measures IoU with the data format's own width rule unless told otherwise:
continuous boxes (x2 - x1) for COCO, inclusive pixels (x2 - x1 + 1) for ILSVRC and VOC."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from proposals.store import ProposalStore

# ground truth [0, 0, 9, 9] and the proposal [0, 0, 9, 19]: IoU 90 / 190 = 0.47 with x2 - x1, but
# 100 / 200 = 0.5 with the +1 rule: covered at IoU 0.5 only under the ILSVRC/VOC convention
GT_XYWH = [0, 0, 9, 9]
PROPOSAL = [0, 0, 9, 19]


def _run(repo_root, overrides):
    spec = importlib.util.spec_from_file_location("eval_proposals_tool", repo_root / "tools" / "eval_proposals.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval_proposals", overrides=overrides)
    return tool.main(cfg), cfg


@pytest.fixture
def coco_and_ilsvrc(tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 50, "height": 50}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_XYWH, "iscrowd": 0}]}))
    ilsvrc = tmp_path / "ilsvrc"
    (ilsvrc / "Annotations" / "DET" / "val").mkdir(parents=True)
    (ilsvrc / "ImageSets" / "DET").mkdir(parents=True)
    (ilsvrc / "ImageSets" / "DET" / "val.txt").write_text("1 1\n")
    (ilsvrc / "Annotations" / "DET" / "val" / "1.xml").write_text(
        "<annotation><size><width>50</width><height>50</height></size><object><name>n02672831</name><bndbox>"
        "<xmin>0</xmin><ymin>0</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    store = tmp_path / "store.npz"
    ProposalStore.from_lists(["1"], [np.array([PROPOSAL], np.float32)], meta={"method": "one"}).save(store)
    return coco, ilsvrc, store


def test_plus_one_follows_the_data_format(repo_root, tmp_path, coco_and_ilsvrc):
    coco, ilsvrc, store = coco_and_ilsvrc
    common = [f"stores=[{store}]", f"work_dir={tmp_path / 'work'}", "ks=[1]"]
    rows, _ = _run(repo_root, ["data=coco", f"data.root={coco}"] + common)
    assert rows["one"]["coverage_050"] == 0.0  # COCO: continuous widths, IoU 0.47
    report = json.loads((tmp_path / "work" / "eval" / "proposals_coco_val2017.json").read_text())  # named after the split
    assert report["plus_one"] is False
    rows, _ = _run(repo_root, ["data=coco", f"data.root={coco}", "plus_one=true"] + common)
    assert rows["one"]["coverage_050"] == 1.0  # set explicitly: the +1 rule
    rows, _ = _run(repo_root, ["data=ilsvrc", f"data.root={ilsvrc}"] + common)
    assert rows["one"]["coverage_050"] == 1.0  # ILSVRC: +1 widths, IoU 0.5, and no images needed
    rows, _ = _run(repo_root, ["data=ilsvrc", f"data.root={ilsvrc}", "plus_one=false"] + common)
    assert rows["one"]["coverage_050"] == 0.0
    with pytest.raises(SystemExit, match="plus_one must be auto, true or false"):
        _run(repo_root, ["data=ilsvrc", f"data.root={ilsvrc}", "plus_one=maybe"] + common)
