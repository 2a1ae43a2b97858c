"""YOLO (ultralytics) labels as a dataset of one's own: the reader, its faults, the rules it is scored by,
and the backend and precision recorded with the detections.

The sets are the built-in synthetic world written as COCO files, converted here to YOLO labels (so the
boxes read back can be checked against the COCO reader's, which reads the same pictures).
"""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import TINY_RUN
from detect.classes import ClassList
from detect.data import read_dataset
from detect.data.coco import read_coco
from detect.data.synthetic import make_detection_world
from detect.data.yolo import parse_yolo_label, read_yolo, read_yolo_yaml, yolo_label_path
from detect.detections import Detections
from detect.evaluation import evaluate, rules_for_dataset

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = dict(num_classes=3, num_train=14, num_val=6, min_side=96, max_side=128, max_objects=3, min_object_size=24,
            empty_fraction=0.0, seed=0, extensions=[".jpg", ".JPG"])


def make_yolo_world(root: Path, names_as_dict: bool = False, **params) -> Path:
    """The synthetic world as a YOLO set: ``images/{train,val}/``, ``labels/{train,val}/<stem>.txt``
    (normalised ``class cx cy w h``) and ``data.yaml``; returns the yaml. The COCO files stay under
    ``annotations/`` as the reference."""
    make_detection_world(root, layout="coco", **{**TINY, **params})
    names = None
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        ids = sorted(c["id"] for c in data["categories"])
        names = [next(c["name"] for c in data["categories"] if c["id"] == i) for i in ids]
        lines = {im["id"]: [] for im in data["images"]}
        size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        for a in data["annotations"]:
            (w, h), (x, y, bw, bh) = size[a["image_id"]], a["bbox"]
            lines[a["image_id"]].append(f"{ids.index(a['category_id'])} {(x + bw / 2) / w!r} {(y + bh / 2) / h!r} "
                                        f"{bw / w!r} {bh / h!r}")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for im in data["images"]:
            stem = Path(im["file_name"]).stem
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines[im["id"]]) + "\n")
    spec = {"path": ".", "train": "images/train", "val": "images/val",
            "names": dict(enumerate(names)) if names_as_dict else names}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def _write_yaml(root: Path, **spec) -> Path:
    spec.setdefault("names", ["a", "b", "c"])
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def _image(path: Path, width: int = 40, height: int = 30) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path)
    return path


def _label(root: Path, stem: str, text: str, split: str = "train") -> Path:
    path = root / "labels" / split / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _yolo_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval_map", overrides=["data=yolo", *overrides])


# ---------------------------------------------------------------- YOLO labels: the reader


def test_yolo_boxes_equal_the_coco_boxes_of_the_same_world(tmp_path):
    yaml_file = make_yolo_world(tmp_path / "w", names_as_dict=True)
    for split in ("train", "val"):
        yolo = read_yolo(yaml_file, split)
        coco = read_coco(tmp_path / "w" / "annotations" / f"instances_{split}.json", tmp_path / "w" / "images" / split)
        assert list(yolo.classes.names) == list(coco.classes.names) and len(yolo) == len(coco) > 0
        by_path = {r.path.name: r for r in coco.records}
        for r in yolo.records:
            ref = by_path[r.path.name]
            assert r.image_id == f"images/{split}/{r.path.name}" and (r.width, r.height) == (ref.width, ref.height)
            assert r.boxes.dtype == np.float32 and np.allclose(r.boxes, ref.boxes, atol=1e-3)  # xyxy pixels
            assert r.labels.tolist() == ref.labels.tolist() and not r.ignore.any()
        assert len(yolo.skipped) == 0 and len(yolo.warnings) == 0
    assert [r.index for r in read_yolo(yaml_file, "val").records] == list(range(1, 7))


def test_image_lists_path_key_and_yaml_elsewhere(tmp_path):
    """``train``/``val`` as .txt lists (``./`` entries relative to the list), ``path`` relative to the yaml,
    the yaml outside the dataset folder given with ``root``; labels found by the images/ -> labels/ rule."""
    data = tmp_path / "sets" / "mine"
    make_yolo_world(data)
    train = sorted(p.name for p in (data / "images" / "train").iterdir())
    (data / "train.txt").write_text("".join(f"./images/train/{n}\n" for n in train[:5]))
    (data / "val.txt").write_text(f"{data / 'images' / 'val' / sorted((data / 'images' / 'val').iterdir())[0].name}\n")
    elsewhere = tmp_path / "sets" / "mine.yaml"
    elsewhere.write_text(yaml.safe_dump({"path": "mine", "train": "train.txt", "val": ["val.txt"],
                                         "names": ["x", "y", "z"]}))
    ds = read_yolo(elsewhere, "train", root=tmp_path / "sets")
    assert [r.path.name for r in ds.records] == train[:5] and list(ds.classes.names) == ["x", "y", "z"]
    assert ds.records[0].image_id == f"mine/images/train/{train[0]}"
    assert len(read_yolo(elsewhere, "val", root=tmp_path / "sets")) == 1
    # without root, the yaml's folder is the dataset folder and `path: mine` lies inside it
    assert len(read_yolo(elsewhere, "train")) == 5


def test_roboflow_layout(tmp_path):
    """Roboflow's export: ``train: ../train/images`` beside ``train/images`` and ``train/labels``."""
    _image(tmp_path / "train" / "images" / "a.jpg")
    (tmp_path / "train" / "labels").mkdir()
    (tmp_path / "train" / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    ds = read_yolo(_write_yaml(tmp_path, train="../train/images", nc=3), "train")
    assert [r.labels.tolist() for r in ds.records] == [[1]] and ds.records[0].image_id == "train/images/a.jpg"


def test_label_path_rule():
    assert yolo_label_path("/d/images/train/a.JPG", "/d") == Path("/d/labels/train/a.txt")
    assert yolo_label_path("/d/images/x/images/b.png", "/d") == Path("/d/images/x/labels/b.txt")  # the last one
    assert yolo_label_path("/d/pics/c.jpg", "/d") == Path("/d/pics/c.txt")                        # none: beside it
    assert yolo_label_path("/images/d/c.jpg", "/images/d") == Path("/images/d/c.txt")             # never above root


def test_missing_labels_are_background_and_counted(tmp_path):
    for k in range(3):
        _image(tmp_path / "images" / "train" / f"im{k}.jpg")
    _label(tmp_path, "im0", "0 0.5 0.5 0.5 0.5\n")
    _label(tmp_path, "im1", "")  # an empty label file: a background image, said nowhere
    ds = read_yolo(_write_yaml(tmp_path, train="images/train"), "train")
    assert [len(r.boxes) for r in ds.records] == [1, 0, 0]
    assert ds.records[0].boxes.tolist() == [[10.0, 7.5, 30.0, 22.5]]  # 40x30 image
    assert [(Path(f).name, reason.split(":")[0]) for f, reason in ds.warnings.entries] == [("im2.txt", "no label file")]
    (tmp_path / "labels" / "train" / "im0.txt").unlink()
    (tmp_path / "labels" / "train" / "im1.txt").unlink()
    with pytest.raises(ValueError, match="none of the 3 images has a label file"):
        read_yolo(tmp_path / "data.yaml", "train")


@pytest.mark.parametrize("line, kind", [
    ("3 0.5 0.5 0.2 0.2", "class index out of range"),
    ("-1 0.5 0.5 0.2 0.2", "class index out of range"),
    ("1.5 0.5 0.5 0.2 0.2", "class index out of range"),
    ("0 0.5 nan 0.2 0.2", "bad value"),
    ("0 0.5 inf 0.2 0.2", "bad value"),
    ("0 1.5 0.5 0.2 0.2", "out-of-range value"),
    ("0 0.5 0.5 -0.2 0.2", "out-of-range value"),
    ("0 0.5 0.5 0 0.2", "degenerate box"),
    ("0 0.5 0.5 0.2", "bad line"),
    ("0 0.5 0.5 0.2 0.2 0.1", "bad line"),
    ("zero 0.5 0.5 0.2 0.2", "bad value"),
])
def test_a_bad_line_leaves_its_image_out_named_and_counted(tmp_path, line, kind):
    for k in range(2):
        _image(tmp_path / "images" / "train" / f"im{k}.jpg")
    _label(tmp_path, "im0", "0 0.5 0.5 0.2 0.2\n")
    bad = _label(tmp_path, "im1", f"1 0.5 0.5 0.2 0.2\n{line}\n")
    ds = read_yolo(_write_yaml(tmp_path, train="images/train"), "train")
    assert [r.path.name for r in ds.records] == ["im0.jpg"]
    assert len(ds.skipped) == 1
    file, reason = ds.skipped.entries[0]
    assert file == str(bad) and reason.startswith(f"{kind}: line 2") and "left out" in reason


def test_polygon_and_keypoint_lines_give_boxes(tmp_path):
    image = _image(tmp_path / "images" / "im.jpg", 100, 50)
    label = tmp_path / "labels" / "im.txt"
    label.parent.mkdir()
    label.write_text("1 0.1 0.2 0.5 0.2 0.3 0.8\n")  # a triangle: its bounding box
    w, h, boxes, labels, *_ = parse_yolo_label(label, image, 3)
    assert (w, h, labels) == (100, 50, [1]) and np.allclose(boxes, [[10, 10, 50, 40]])
    label.write_text("0 0.5 0.5 0.2 0.4 0.1 0.1 2 0.9 0.9 1\n")  # pose: kpt_shape [2, 3] after the box
    assert np.allclose(parse_yolo_label(label, image, 3, keypoints=6)[2], [[40, 15, 60, 35]])
    with pytest.raises(ValueError, match="out-of-range value: line 1: 2"):  # without kpt_shape: a polygon
        parse_yolo_label(label, image, 3)


def test_an_edge_past_the_image_by_rounding_is_the_edge(tmp_path):
    """cx - w/2 of values written with 6 decimals can fall 1e-6 below 0 (26 "box outside the image"
    warnings on the demo's world written as YOLO): such an edge is the image's; a box that really reaches
    past the image (0.15 of its width) stays as written and is reported."""
    image = _image(tmp_path / "images" / "im.jpg", 100, 50)
    label = tmp_path / "labels" / "im.txt"
    label.parent.mkdir()
    label.write_text("0 0.050000 0.500000 0.100001 0.200000\n1 0.950000 0.5 0.100003 0.2\n")
    boxes = parse_yolo_label(label, image, 3)[2]
    assert boxes[0][0] == 0.0 and boxes[1][2] == 100.0 and np.allclose(boxes, [[0, 20, 10, 30], [90, 20, 100, 30]])
    label.write_text("0 0.95 0.5 0.4 0.2\n")
    assert np.allclose(parse_yolo_label(label, image, 3)[2], [[75, 20, 115, 30]])
    ds = read_yolo(_write_yaml(tmp_path, train="images"), "train")
    assert [reason for _, reason in ds.warnings.entries] == ["box outside the image: [75.0, 20.0, 115.0, 30.0] in "
                                                             "100x50 (kept as stored)"]


def test_unreadable_missing_duplicate_and_orphan_files_are_counted(tmp_path):
    for k in range(4):
        _image(tmp_path / "images" / "train" / f"im{k}.jpg")
        _label(tmp_path, f"im{k}", "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "images" / "train" / "im3.jpg").write_bytes(b"not an image")
    (tmp_path / "labels" / "train" / "im2.txt").write_bytes(b"\xff\xfe\x00bad")
    _label(tmp_path, "gone", "0 0.5 0.5 0.2 0.2\n")  # a label without an image
    ds = read_yolo(_write_yaml(tmp_path, train="images/train"), "train")
    kinds = sorted(reason.split(":")[0] for _, reason in ds.skipped.entries)
    assert kinds == ["missing image", "unreadable image", "unreadable label"] and len(ds) == 2
    # a list naming a missing image and one image twice
    (tmp_path / "list.txt").write_text("images/train/im0.jpg\nimages/train/im0.jpg\nimages/train/im9.jpg\n"
                                       + "".join(f"images/train/im{k}.jpg\n" for k in (1, 1, 1, 1, 1, 1, 1, 1, 1)))
    ds = read_yolo(_write_yaml(tmp_path, train="list.txt"), "train", max_missing_images=0.5)
    kinds = sorted(reason.split(":")[0] for _, reason in ds.skipped.entries)
    assert kinds == ["duplicate image"] * 9 + ["missing image"] and len(ds) == 2
    with pytest.raises(FileNotFoundError, match="1 of 3 images not found"):
        read_yolo(tmp_path / "data.yaml", "train", max_missing_images=0.2)


@pytest.mark.parametrize("spec, key", [
    ({"path": "../elsewhere", "train": "images/train"}, "path"),
    ({"path": "/etc", "train": "images/train"}, "path"),
    ({"train": "../../images/train"}, "train"),
    ({"train": ["images/train", "/tmp"]}, "train"),
    ({"train": "list.txt"}, "line 2"),
])
def test_paths_leading_outside_the_dataset_are_refused(tmp_path, spec, key):
    root = tmp_path / "set"
    _image(root / "images" / "train" / "im0.jpg")
    _label(root, "im0", "0 0.5 0.5 0.2 0.2\n")
    (root / "list.txt").write_text("./images/train/im0.jpg\n../../outside.jpg\n")
    yaml_file = _write_yaml(root, **spec)
    with pytest.raises(ValueError, match=f"{key} .*leads outside the dataset folder") as e:
        read_yolo(yaml_file, "train")
    assert str(root / ("list.txt" if key == "line 2" else "data.yaml")) in str(e.value)


@pytest.mark.parametrize("spec, message", [
    ({"names": ["a", "a"]}, "appears more than once"),
    ({"names": {0: "a", 2: "b"}}, "indices 0..1"),
    ({"names": []}, "non-empty list"),
    ({"names": ["a", None]}, "non-empty string"),
    ({"names": ["a", "b"], "nc": 3}, "nc is 3"),
    ({"names": ["a"], "train": None}, "no 'train' entry"),
    ({"names": ["a"], "train": "missing_folder"}, "neither a folder"),
    ({"names": ["a"], "train": "images/train", "kpt_shape": "17x3"}, "kpt_shape"),
])
def test_bad_data_yaml_is_refused_naming_it(tmp_path, spec, message):
    _image(tmp_path / "images" / "train" / "im0.jpg")
    yaml_file = _write_yaml(tmp_path, **{"train": "images/train", **spec})
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        read_yolo(yaml_file, "train")
    assert str(yaml_file) in str(e.value)
    (tmp_path / "data.yaml").write_text("names: [a\n")
    with pytest.raises(ValueError, match="not a readable YAML"):
        read_yolo_yaml(root=tmp_path)
    with pytest.raises(ValueError, match="data.root=<folder with data.yaml>"):
        read_yolo_yaml()


def test_data_classes_restrict_and_reorder_by_name(tmp_path, caplog):
    for k in range(2):
        _image(tmp_path / "images" / "train" / f"im{k}.jpg")
    _label(tmp_path, "im0", "0 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.2 0.2\n")
    _label(tmp_path, "im1", "1 0.5 0.5 0.2 0.2\n")
    yaml_file = _write_yaml(tmp_path, train="images/train", names=["cat", "dog", "bird"])
    with caplog.at_level(logging.WARNING):
        ds = read_yolo(yaml_file, "train", classes=ClassList.from_names(["bird", "cat"]))
    assert [r.labels.tolist() for r in ds.records] == [[1, 0], []]
    assert [reason for _, reason in ds.skipped.entries] == ["unknown class: object 1 ('dog') is not in data.classes"]
    # a class left out on purpose is counted and named once in the summary, not warned about object by object
    assert "skipped" not in caplog.text.replace("annotations skipped", "")
    assert "unknown class (not logged one by one; 'dog' 1)" in caplog.text
    inline = read_yolo(yaml_file, "train", classes=["bird", "cat"])  # data.classes=[bird,cat] on the command line
    assert inline.classes == ds.classes and [r.labels.tolist() for r in inline.records] == [[1, 0], []]
    with pytest.raises(ValueError, match="'cow' is not among the names"):
        read_yolo(yaml_file, "train", classes=ClassList.from_names(["cow"]))


def test_cache_follows_the_label_files(tmp_path, caplog):
    for k in range(2):
        _image(tmp_path / "images" / "train" / f"im{k}.jpg")
        _label(tmp_path, f"im{k}", "0 0.5 0.5 0.2 0.2\n")
    yaml_file = _write_yaml(tmp_path, train="images/train")
    first = read_yolo(yaml_file, "train", cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="detect.data.cache"):
        again = read_yolo(yaml_file, "train", cache_dir=tmp_path / "cache")
    assert "from the cache" in caplog.text and [r.boxes.tolist() for r in again] == [r.boxes.tolist() for r in first]
    _label(tmp_path, "im1", "0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.5 0.5\n")
    changed = read_yolo(yaml_file, "train", cache_dir=tmp_path / "cache")
    assert [len(r.boxes) for r in changed] == [1, 2]


# ---------------------------------------------------------------- YOLO labels: the rules that score them


def test_yolo_config_reads_the_set_by_root_or_yaml_file(tmp_path):
    yaml_file = make_yolo_world(tmp_path / "w")
    cfg = _yolo_cfg(f"data.root={tmp_path / 'w'}", f"work_dir={tmp_path / 'work'}")
    val = read_dataset(cfg.data.val, check_images=False)
    assert val.name == "yolo_val" and len(val) == 6
    assert len(read_dataset(_yolo_cfg(f"data.yaml_file={yaml_file}").data.val)) == 6
    train, monitor = read_dataset(cfg.data.train), read_dataset(cfg.data.monitor)
    assert len(train) + len(monitor) == 14 and not {r.image_id for r in train} & {r.image_id for r in monitor}
    dets = Detections.concat(Detections.for_image(r.index, r.labels, np.ones(len(r.labels)), r.boxes) for r in val)
    assert evaluate(val, dets, rules=rules_for_dataset(cfg.data)).mean_ap == pytest.approx(1.0)


def test_yolo_sets_are_scored_with_continuous_boxes(tmp_path):
    """A detection covering 48 % of a 20 x 20 box: IoU 0.48 with continuous boxes (a miss), 0.51 with
    the +1 widths of the VOC/ILSVRC rules (a match). The YOLO config's declared rules score it a miss."""
    _image(tmp_path / "images" / "val" / "im.jpg", 100, 100)
    _label(tmp_path, "im", "0 0.5 0.5 0.2 0.2\n", split="val")
    _write_yaml(tmp_path, val="images/val")
    cfg = _yolo_cfg(f"data.root={tmp_path}")
    val = read_dataset(cfg.data.val)
    assert val.records[0].boxes.tolist() == [[40.0, 40.0, 60.0, 60.0]]
    dets = Detections(np.array([1]), np.array([0]), np.array([0.9]), np.array([[40.0, 40.0, 60.0, 49.6]]))
    assert rules_for_dataset(cfg.data) == "coco"
    assert evaluate(val, dets, rules=rules_for_dataset(cfg.data)).mean_ap == 0.0
    assert evaluate(val, dets, rules="voc").mean_ap == 1.0  # what guessing the VOC rules would have given


def test_rules_come_from_the_data_config_never_from_its_name():
    assert rules_for_dataset({"name": "my_voc_copy", "rules": "coco"}) == "coco"
    with pytest.raises(ValueError, match="data=coco_like declares rules=None"):
        rules_for_dataset({"name": "coco_like"})
    with pytest.raises(ValueError, match="rules='pascal'"):
        rules_for_dataset({"name": "voc", "rules": "pascal"})
    for name in ("coco", "voc", "ilsvrc", "ilsvrc2014", "synthetic", "yolo"):
        declared = yaml.safe_load((CONF / "data" / f"{name}.yaml").read_text())["rules"]
        assert declared == {"coco": "coco", "voc": "voc", "yolo": "coco"}.get(name, "ilsvrc"), name


# ---------------------------------------------------------------- the backend and precision that scored the detections


def _load_eval_map(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_map_tool", repo_root / "tools" / "eval_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_describe_scoring_names_backend_and_precision(tmp_path):
    import torch

    from detect.backends import OnnxScorer, TorchScorer, describe_scoring
    from detect.export import cached_onnx_export

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3)).eval()
    path = cached_onnx_export(net, tmp_path, "m", 16)[0]
    fp32, int8 = OnnxScorer(path), OnnxScorer(path, precision="int8")
    assert describe_scoring([int8, int8]) == {"backend": "onnxruntime", "precision": "int8",
                                              "members": [{"backend": "onnxruntime", "precision": "int8",
                                                           "device": "cpu"}] * 2}
    assert describe_scoring([fp32, int8])["precision"] == "mixed"
    mixed = describe_scoring([TorchScorer(net, "cpu"), fp32])
    assert (mixed["backend"], mixed["precision"]) == ("mixed", "fp32")
    assert describe_scoring([TorchScorer(net, "cpu", amp="bf16")])["precision"] == "bf16"


def test_eval_map_reports_the_recorded_backend_and_precision(tmp_path, repo_root, capsys):
    """The run record beside the detections says int8 was chosen by precision=auto: the report and the
    printed summary say so; a record of other detections, or none, is reported as unknown."""
    from detect.detections import write_ilsvrc_submission

    make_yolo_world(tmp_path / "w")
    cfg = _yolo_cfg(f"data.root={tmp_path / 'w'}", f"work_dir={tmp_path / 'work'}",
                    f"detections={tmp_path / 'det' / 'yolo_val.txt'}", "plot_best=0", "plot_worst=0")
    val = read_dataset(cfg.data.val)
    dets = Detections.concat(Detections.for_image(r.index, r.labels, np.ones(len(r.labels)), r.boxes) for r in val)
    (tmp_path / "det").mkdir()
    write_ilsvrc_submission(tmp_path / "det" / "yolo_val.txt", dets)
    record = tmp_path / "det" / "yolo_val.txt.run.json"
    scoring = {"backend": "onnxruntime", "precision": "int8", "members": [],
               "requested": {"backend": "auto", "precision": "auto"}}
    from detect.io import file_sha256

    vouched = {"params": "k", "files": ["yolo_val.txt", "yolo_val.json"], "complete": True,
               "sha256": {"yolo_val.txt": file_sha256(tmp_path / "det" / "yolo_val.txt")}}
    record.write_text(json.dumps({**vouched, "detections": len(dets), "scoring": scoring}))
    tool = _load_eval_map(repo_root)
    report = tool.run(cfg)
    assert report["rules"] == "coco" and report["mean_ap"] == pytest.approx(1.0)
    assert report["scoring"] == scoring and report["scoring_text"] == "onnxruntime int8, chosen by precision=auto"
    assert "scored by: onnxruntime int8, chosen by precision=auto" in capsys.readouterr().out
    saved = json.loads((tmp_path / "work" / "eval" / "eval_yolo_val.json").read_text())
    assert saved["scoring"]["precision"] == "int8"
    record.write_text(json.dumps({**vouched, "detections": len(dets) + 1, "scoring": scoring}))
    assert tool.run(cfg)["scoring"] is None and "unknown" in capsys.readouterr().out
    # a record of the same count that vouches for other bytes, or of an unfinished run: unknown
    record.write_text(json.dumps({**vouched, "sha256": {"yolo_val.txt": "0" * 64}, "detections": len(dets),
                                  "scoring": scoring}))
    assert tool.run(cfg)["scoring"] is None and "not the file" in capsys.readouterr().out
    record.write_text(json.dumps({**vouched, "complete": False, "detections": len(dets), "scoring": scoring}))
    assert tool.run(cfg)["scoring"] is None and "not a finished run" in capsys.readouterr().out
    record.unlink()
    report = tool.run(cfg)
    assert report["scoring"] is None and report["scoring_text"].startswith("unknown (no run record")


# ---------------------------------------------------------------- YOLO labels: the one command




@pytest.mark.slow
def test_yolo_folder_end_to_end(tmp_path, repo_root):
    """tools/demo.py experiment=small data=yolo on the tiny world as YOLO labels: classes from names,
    outputs named after the yaml's splits, COCO (continuous) rules, and the backend and precision that
    scored the detections in the run record, the report and the final line."""
    root, work = tmp_path / "yolo", tmp_path / "work"
    make_yolo_world(root)
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "demo.py"), "experiment=small", "data=yolo",
                          f"data.root={root}", f"work_dir={work}", *TINY_RUN],
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"demo failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    from detect.classes import read_class_list

    assert list(read_class_list(work / "classes.tsv").names) == list(read_yolo(root / "data.yaml", "val").classes.names)
    assert sorted(p.name for p in (work / "proposals").glob("*.npz")) == [
        "yolo_train_ss2x+multibox200.npz", "yolo_val_ss2x+multibox200.npz"]
    record = json.loads((work / "detections" / "yolo_val.txt.run.json").read_text())
    assert record["scoring"]["backend"] in ("onnxruntime", "torch") and record["scoring"]["requested"]["precision"] == "auto"
    report = json.loads((work / "eval" / "eval_yolo_val.json").read_text())
    assert report["rules"] == "coco" and report["num_images"] == 6 and report["split_name"] == "val"
    assert report["scoring"] == record["scoring"]
    assert report["ap50_pycocotools"] == pytest.approx(report["mean_ap"], abs=1e-6)
    assert (f"mAP@0.5 on yolo_val (6 images; small, 1 members), coco rules: {report['mean_ap']:.4f} "
            f"(scored by {report['scoring_text']})") in out
    assert len(list((work / "detect").glob("*.png"))) == 2
