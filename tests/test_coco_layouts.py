"""A user's own COCO data (issue 22): layouts found from data.root alone (a Roboflow export re-laid from
real COCO128 images, the official layout), several training splits, class lists, categories without
boxes, the pycocotools cross-check and annotation id 0, eval outputs named after the rules, and the
image ids of tools/detect_images.py's coco_results."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from detect.classes import ClassList
from detect.data import read_dataset
from detect.data.coco import find_coco_split, read_coco
from detect.data.splits import output_stem
from detect.detections import Detections, write_coco_results

CONF = Path(__file__).resolve().parents[1] / "conf"
SPLITS = {"train": 6, "valid": 3, "test": 3}  # images per split, taken in id order from COCO128


def _compose(overrides, config="eval_map"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


def roboflow_export(root: Path, coco128: Path, splits=SPLITS) -> dict:
    """Re-lay COCO128 images as a Roboflow COCO export: ``<split>/_annotations.coco.json`` beside the
    images (renamed as Roboflow does), ids from 0 in every split, categories renumbered from 1 under a
    supercategory with id 0 and no boxes. Returns ``{split: the JSON written}``."""
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    images = sorted(data["images"], key=lambda im: im["id"])
    names = {c["id"]: c["name"] for c in data["categories"]}
    chosen, start = {}, 0
    for split, n in splits.items():
        chosen[split], start = images[start:start + n], start + n
    used = sorted({a["category_id"] for a in data["annotations"]
                   if any(a["image_id"] == im["id"] for ims in chosen.values() for im in ims)})
    new_id = {c: k for k, c in enumerate(used, 1)}
    categories = [{"id": 0, "name": "objects", "supercategory": "none"}] + [
        {"id": new_id[c], "name": names[c], "supercategory": "objects"} for c in used]
    written = {}
    for split, ims in chosen.items():
        (root / split).mkdir(parents=True)
        out = {"info": {}, "licenses": [], "categories": categories, "images": [], "annotations": []}
        for k, im in enumerate(ims):
            file_name = f"{Path(im['file_name']).stem}_jpg.rf.{k:08x}.jpg"
            shutil.copy(coco128 / "images" / "train2017" / im["file_name"], root / split / file_name)
            out["images"].append({"id": k, "file_name": file_name, "width": im["width"], "height": im["height"]})
            for a in (a for a in data["annotations"] if a["image_id"] == im["id"]):
                out["annotations"].append({"id": len(out["annotations"]), "image_id": k,
                                           "category_id": new_id[a["category_id"]], "bbox": a["bbox"],
                                           "area": a["area"], "iscrowd": a["iscrowd"], "segmentation": []})
        (root / split / "_annotations.coco.json").write_text(json.dumps(out))
        written[split] = out
    return written


@pytest.fixture
def roboflow(tmp_path, shared_data):
    root = tmp_path / "cards"
    return root, roboflow_export(root, shared_data / "coco128")


def _boxes(written: dict) -> int:
    return len(written["annotations"])


# ---------------------------------------------------------------- (a) layouts found from data.root


def test_roboflow_export_read_with_the_readme_command(roboflow, tmp_path, caplog):
    root, written = roboflow
    cfg = _compose(["data=coco", f"data.root={root}", "data.train_name=train", "data.val_name=test",
                    f"work_dir={tmp_path / 'work'}"])
    with caplog.at_level(logging.WARNING, logger="detect.data.coco"):
        train = read_dataset(cfg.data.train_full)
        val = read_dataset(cfg.data.val)
    assert len(train) == SPLITS["train"] and len(val) == SPLITS["test"]
    assert sum(len(r.boxes) for r in train) == _boxes(written["train"])
    # test boxes of categories without a training box are no class: reported and skipped, as in VOC
    known = {int(w) for w in train.classes.wnids}
    kept = sum(a["category_id"] in known for a in written["test"]["annotations"])
    assert 0 < sum(len(r.boxes) for r in val) == kept
    assert sum(reason.startswith("not a class") for _, reason in val.skipped.entries) == _boxes(written["test"]) - kept
    assert all(r.path.parent == root / "train" and r.path.is_file() for r in train)
    # the supercategory (id 0, no boxes) is no class; the log names it; val takes the training classes
    assert "0" not in train.classes.wnids and "'objects' (id 0)" in caplog.text
    assert val.classes == train.classes
    assert output_stem(cfg.data, "val") == "coco_test"


def test_official_layout_with_images_beside_annotations(tmp_path, shared_data):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(shared_data / "coco128" / "annotations" / "instances_train2017.json", root / "annotations")
    (root / "train2017").symlink_to(shared_data / "coco128" / "images" / "train2017")  # as COCO 2017 ships it
    assert find_coco_split(root, "train2017") == (root / "annotations" / "instances_train2017.json",
                                                  root / "train2017")
    assert len(read_coco(root=root, split="train2017")) == 128
    # images/<name>/ is the first choice
    assert find_coco_split(shared_data / "coco128", "train2017")[1] == shared_data / "coco128" / "images" / "train2017"


def test_a_root_in_no_layout_lists_what_was_looked_for(roboflow, tmp_path):
    root, _ = roboflow
    with pytest.raises(FileNotFoundError, match=r"no COCO annotations for split 'val'.*val/_annotations\.coco\.json"
                                                r".*annotations/instances_val\.json.*holds \['test/', 'train/', 'valid/'\]"):
        read_coco(root=root, split="val")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_coco(root=tmp_path / "nowhere", split="train")
    (root / "annotations").mkdir()
    shutil.copy(root / "train" / "_annotations.coco.json", root / "annotations" / "instances_train.json")
    with pytest.raises(ValueError, match="in two layouts"):
        read_coco(root=root, split="train")


def test_files_named_without_root_need_the_training_files_named_too(tmp_path):
    """No root to find a ``classes_from`` split in: a ValueError saying what to give (was a TypeError)."""
    file = tmp_path / "val.json"
    file.write_text(json.dumps({"categories": [{"id": 1, "name": "cat"}], "images": [
        {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}))
    with pytest.raises(ValueError, match="classes_from 'train': no root to find its files in; give root, or "
                                         "classes_from_files"):
        read_coco(annotation_file=file, image_dir=tmp_path, classes_from="train", check_images=False)
    with pytest.raises(ValueError, match="split 'val': no root to find its files in; give root, or annotation_file"):
        read_coco(split="val", annotation_file=file, check_images=False)
    val = read_coco(annotation_file=file, image_dir=tmp_path, classes_from="train", classes_from_files=file,
                    check_images=False)
    assert val.classes.names == ("cat",) and len(val) == 1


def test_per_split_files_named_directly(roboflow, tmp_path):
    root, written = roboflow
    moved = tmp_path / "elsewhere.json"
    shutil.copy(root / "valid" / "_annotations.coco.json", moved)
    cfg = _compose(["data=coco", f"data.root={tmp_path / 'unused'}", "data.train_name=mine", "data.val_name=mine",
                    f"data.train_full.annotation_file={moved}", f"data.train_full.image_dir={root / 'valid'}",
                    f"data.val.annotation_file={moved}", f"data.val.image_dir={root / 'valid'}"])
    train, val = read_dataset(cfg.data.train_full), read_dataset(cfg.data.val)
    assert len(train) == len(val) == SPLITS["valid"] and val.classes == train.classes


def test_several_training_splits_read_as_one(roboflow, tmp_path):
    root, written = roboflow
    cfg = _compose(["data=coco", f"data.root={root}", "data.train_name=[train,valid]", "data.val_name=test"])
    train = read_dataset(cfg.data.train_full)
    assert len(train) == SPLITS["train"] + SPLITS["valid"]
    ids = [r.image_id for r in train]
    assert len(set(ids)) == len(ids) and "train/0" in ids and "valid/0" in ids  # both splits start at id 0
    assert [r.index for r in train] == list(range(1, len(train) + 1))
    assert sum(len(r.boxes) for r in train) == _boxes(written["train"]) + _boxes(written["valid"])
    assert output_stem(cfg.data, "train") == "coco_train+valid" and output_stem(cfg.data, "val") == "coco_test"
    assert read_dataset(cfg.data.val).classes == train.classes
    # categories that disagree are refused, naming both files
    other = json.loads((root / "valid" / "_annotations.coco.json").read_text())
    other["categories"][1]["name"] = "renamed"
    (root / "valid" / "_annotations.coco.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"train/_annotations\.coco\.json and .*valid/_annotations\.coco\.json: "
                                         "the categories differ"):
        read_dataset(cfg.data.train_full)


# ---------------------------------------------------------------- (b) class lists and categories without boxes


def test_class_list_honoured_by_name_or_id(roboflow, tmp_path, caplog):
    root, written = roboflow
    cats = {c["id"]: c["name"] for c in written["train"]["categories"]}
    counts = {}
    for a in written["train"]["annotations"]:
        counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    two = sorted(counts, key=counts.get)[-2:]  # two categories with boxes, listed in reverse id order
    listed = tmp_path / "classes.txt"
    listed.write_text(f"{cats[max(two)]}\n{cats[min(two)]}\n")
    cfg = _compose(["data=coco", f"data.root={root}", "data.train_name=train", "data.val_name=test",
                    f"data.classes={listed}"])
    with caplog.at_level(logging.WARNING):
        train = read_dataset(cfg.data.train_full)
    assert "skipped" not in caplog.text.replace("annotations skipped", "")  # left out on purpose: no line each
    assert "not a class (not logged one by one; '" in caplog.text
    assert train.classes == ClassList((str(max(two)), str(min(two))), (cats[max(two)], cats[min(two)]))
    assert sum(len(r.boxes) for r in train) == counts[two[0]] + counts[two[1]]
    assert sum(1 for _, reason in train.skipped.entries if reason.startswith("not a class")) == \
        _boxes(written["train"]) - counts[two[0]] - counts[two[1]]
    # the same names given inline on the command line (a Hydra list): the same classes and boxes
    inline = _compose(["data=coco", f"data.root={root}", "data.train_name=train", "data.val_name=test",
                       f"data.classes=[{cats[max(two)]!r},{cats[min(two)]!r}]"])
    assert [(r.image_id, r.boxes.tolist()) for r in read_dataset(inline.data.train_full)] == \
        [(r.image_id, r.boxes.tolist()) for r in train] and read_dataset(inline.data.train_full).classes == train.classes
    for bad in ("[]", f"[{cats[max(two)]!r},{cats[max(two)]!r}]"):
        with pytest.raises(ValueError, match="give distinct, non-empty class names"):
            read_dataset(_compose(["data=coco", f"data.root={root}", "data.train_name=train", "data.val_name=test",
                                   f"data.classes={bad}"]).data.train_full)
    # ids as prepare_data's classes.tsv writes them (category ids) name the same classes
    (tmp_path / "ids.tsv").write_text(f"{max(two)}\t{cats[max(two)]}\n{min(two)}\t{cats[min(two)]}\n")
    assert read_coco(root=root, split="train", classes=tmp_path / "ids.tsv").classes == train.classes
    # a listed class without a training box is refused; one that is no category too
    (tmp_path / "empty.txt").write_text("objects\n")
    with pytest.raises(ValueError, match=r"'objects' \(category id 0\) has no box in .*train/_annotations"):
        read_coco(root=root, split="train", classes=tmp_path / "empty.txt")
    (tmp_path / "unknown.txt").write_text("unicorn\n")
    with pytest.raises(ValueError, match="'unicorn' names no category"):
        read_coco(root=root, split="train", classes=tmp_path / "unknown.txt")


def test_evaluation_split_keeps_the_training_classes(roboflow):
    """A class with boxes in train but none in test stays a class of test (labels must agree)."""
    root, written = roboflow
    val = read_coco(root=root, split="test", classes_from="train")
    alone = read_coco(root=root, split="test")
    assert val.classes == read_coco(root=root, split="train").classes
    assert len(alone.classes) < len(val.classes)  # the test file alone has fewer categories with boxes


def test_training_classes_cached_for_the_evaluation_split(roboflow, tmp_path, monkeypatch):
    import detect.data.coco as coco

    root, _ = roboflow
    first = read_coco(root=root, split="test", classes_from="train", cache_dir=tmp_path / "cache")
    reads = []
    real = coco._read_part
    monkeypatch.setattr(coco, "_read_part", lambda name, *a: reads.append(name) or real(name, *a))
    again = read_coco(root=root, split="test", classes_from="train", cache_dir=tmp_path / "cache")
    assert again.classes == first.classes and reads == ["test"]  # the training JSON is not read again
    data = json.loads((root / "train" / "_annotations.coco.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != int(first.classes.wnids[0])]
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(data))
    changed = read_coco(root=root, split="test", classes_from="train", cache_dir=tmp_path / "cache")
    assert changed.classes.wnids == first.classes.wnids[1:] and reads[1:] == ["test", "train"]


def test_evaluation_without_the_training_split_uses_its_own_classes(roboflow, caplog):
    root, _ = roboflow
    with caplog.at_level(logging.WARNING, logger="detect.data.coco"):
        val = read_coco(root=root, split="test", classes_from="nowhere")
    assert val.classes == read_coco(root=root, split="test").classes
    assert "the training split's classes cannot be read" in caplog.text and "'nowhere'" in caplog.text


# ---------------------------------------------------------------- (c) pycocotools cross-check, annotation id 0


def _pycocotools_on_file(annotation_file: Path, results: Path, classes: ClassList) -> float:
    """AP50 by pycocotools on the file itself, over the categories of ``classes``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        ev = COCOeval(gt, gt.loadRes(str(results)), "bbox")
        ev.params.iouThrs, ev.params.maxDets = np.array([0.5]), [100]
        ev.params.catIds = [int(w) for w in classes.wnids]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][0, :, :, 0, 0]
    return float(p[:, (p > -1).all(axis=0)].mean())


def test_annotation_id_0_warned_and_the_cross_check_explained(roboflow, tmp_path, repo_root):
    pytest.importorskip("pycocotools")
    root, written = roboflow
    file = root / "test" / "_annotations.coco.json"
    val = read_coco(root=root, split="test", check_images=False)  # its own classes: every box scored
    assert [f for f, reason in val.warnings.entries if reason.startswith("annotation id 0")] == [str(file)]
    # exact detections of every box: our AP50 and the cross-check give 1; pycocotools on the file itself
    # counts the detection of the box with id 0 as a false positive
    dets = Detections.concat([Detections.for_image(r.index, r.labels, np.linspace(0.9, 0.5, len(r.labels)), r.boxes)
                              for r in val.records if len(r.labels)])
    write_coco_results(tmp_path / "det.json", dets, val)
    spec = importlib.util.spec_from_file_location("eval_map_tool", repo_root / "tools" / "eval_map.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    report = tool.run(_compose(["data=coco", f"data.root={root}", "data.train_name=test", "data.val_name=test",
                                f"detections={tmp_path / 'det.json'}", f"out_dir={tmp_path / 'eval'}",
                                "plot_best=0", "plot_worst=0", f"work_dir={tmp_path / 'work'}"]))
    assert report["mean_ap"] == pytest.approx(1.0) and report["ap50_pycocotools"] == pytest.approx(1.0)
    assert report["annotation_id_0_in"] == [str(file)]
    zero = next(a for a in written["test"]["annotations"] if a["id"] == 0)
    assert str(zero["category_id"]) in val.classes.wnids  # the box with id 0 is of a class: it is scored
    assert _pycocotools_on_file(file, tmp_path / "det.json", val.classes) < 1.0
    # renumbered from 1, pycocotools on the file agrees
    data = json.loads(file.read_text())
    for a in data["annotations"]:
        a["id"] += 1
    (tmp_path / "renumbered.json").write_text(json.dumps(data))
    assert _pycocotools_on_file(tmp_path / "renumbered.json", tmp_path / "det.json", val.classes) == pytest.approx(1.0)
    assert not read_coco(tmp_path / "renumbered.json", root / "test", check_images=False).warnings.entries


# ---------------------------------------------------------------- (d) eval outputs named after the rules


def test_eval_under_other_rules_keeps_the_default_report(roboflow, tmp_path, repo_root):
    root, _ = roboflow
    val = read_coco(root=root, split="test", classes_from="train", check_images=False)
    dets = Detections.concat([Detections.for_image(r.index, r.labels, np.full(len(r.labels), 0.9), r.boxes + 3)
                              for r in val.records if len(r.labels)])
    write_coco_results(tmp_path / "det.json", dets, val)
    spec = importlib.util.spec_from_file_location("eval_map_tool", repo_root / "tools" / "eval_map.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    common = ["data=coco", f"data.root={root}", "data.train_name=train", "data.val_name=test",
              f"detections={tmp_path / 'det.json'}", f"out_dir={tmp_path / 'eval'}", f"work_dir={tmp_path / 'work'}"]
    tool.run(_compose(common))
    tool.run(_compose(common + ["rules=voc"]))
    tool.run(_compose(common + ["rules=coco"]))  # the data's own rules named explicitly: the default names
    names = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert names == ["eval_coco_test.json", "eval_coco_test_voc.json", "pr_coco_test.png", "pr_coco_test_voc.png"]
    assert json.loads((tmp_path / "eval" / "eval_coco_test.json").read_text())["rules"] == "coco"
    assert json.loads((tmp_path / "eval" / "eval_coco_test_voc.json").read_text())["rules"] == "voc"


# ---------------------------------------------------------------- (e) tools/detect_images.py coco_results image ids


def _detect_tool(repo_root):
    spec = importlib.util.spec_from_file_location("detect_tool", repo_root / "tools" / "detect_images.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_coco_results_ids_come_from_the_annotation_file(roboflow, repo_root, caplog):
    root, written = roboflow
    tool = _detect_tool(repo_root)
    file = root / "valid" / "_annotations.coco.json"
    files = sorted((root / "valid").glob("*.jpg"), reverse=True)  # command-line order is not id order
    with caplog.at_level(logging.INFO, logger="detect"):
        ids = tool.coco_ids(files, str(file))
    expected = {im["file_name"]: im["id"] for im in written["valid"]["images"]}
    assert {p.name: i for p, i in ids.items()} == expected and list(ids.values()) != [0, 1, 2][:len(files)]
    assert f"the id of the image's file name in {file}" in caplog.text
    with pytest.raises(SystemExit, match=r"1 of 4 images have no \(single\) entry.*000000000009"):
        tool.coco_ids(files + [root / "train" / written["train"]["images"][0]["file_name"]], str(file))
    with caplog.at_level(logging.INFO, logger="detect"):
        assert tool.coco_ids(files, None) is None
    assert "position of the image among those processed" in caplog.text


@pytest.mark.slow
def test_detect_tool_writes_the_dataset_ids(roboflow, tmp_path, repo_root):
    import subprocess
    import sys

    from test_detect_tool import _tiny_detector

    root, written = roboflow
    detector = tmp_path / "detector.pt"
    _tiny_detector(detector, ClassList.from_names(["a", "b"]),
                   {"kind": "selective_search", "params": {"mode": "opencv_fast", "resize_width": 100, "max_boxes": 10}})
    images = [root / "valid" / im["file_name"] for im in written["valid"]["images"]][::-1]
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "detect_images.py"), *map(str, images),
                          f"detector={detector}", "device=cpu", f"out_dir={tmp_path / 'out'}", "draw=false", "show_threshold=0.0",
                          "coco_results=true", f"coco_annotations={root / 'valid' / '_annotations.coco.json'}",
                          f"work_dir={tmp_path / 'work'}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} == {im["id"] for im in written["valid"]["images"]}
    first = json.loads((tmp_path / "out" / f"{images[0].stem}.json").read_text())["detections"][0]
    assert any(r["image_id"] == len(images) - 1 and r["score"] == pytest.approx(first["score"]) for r in results)
