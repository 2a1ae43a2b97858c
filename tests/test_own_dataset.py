"""The one command on a dataset of one's own: tools/demo.py experiment=small on tiny VOC and COCO folders.

Each test runs the whole chain as a user would (tiny sizes: 1 epoch of 2 steps per trainer, 1 member),
then checks what the chain promises: classes from the annotations, ground-truth crops cut from the
training split's two parts only, outputs named after the dataset's splits, evaluation with the data's
own rules, drawn test images, and a second run that redoes nothing.
"""
import json
import re
import subprocess
import sys

import pytest
import torch

from detect.classes import read_class_list
from detect.data.coco import read_coco
from detect.data.synthetic import make_detection_world
from detect.data.voc import read_voc
from detect.engine import init_identity, run_fingerprint
from conftest import TINY_RUN
from detect.models.googlenet import GoogLeNet

pytestmark = pytest.mark.slow

TINY = dict(num_classes=3, num_train=14, num_val=6, min_side=96, max_side=128, max_objects=3, min_object_size=24,
            empty_fraction=0.0, seed=0, extensions=[".jpg", ".JPG"])


def _demo(repo_root, *args):
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "demo.py"), "experiment=small", *args, *TINY_RUN],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"demo failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout + run.stderr


def _crop_images(work, part):
    """Image ids the ground-truth crops of ``part`` (train/val folders) were cut from."""
    return {p.name.split("_", 1)[1].rsplit("_", 1)[0] for p in (work / "data" / "gt_crops" / part).rglob("*.jpg")}


def test_voc_folder_end_to_end(tmp_path, repo_root):
    root, work = tmp_path / "voc", tmp_path / "work"
    make_detection_world(root, layout="voc", **TINY)
    out = _demo(repo_root, "data=voc", f"data.root={root}", f"work_dir={work}")

    test = read_voc(root, "test", classes_from="trainval")
    names = sorted({test.classes.names[int(label)] for r in test.records for label in r.labels})
    assert list(read_class_list(work / "classes.tsv").names) == names  # sorted names found in the annotations
    # pre-training crops: from the training split's two parts, never from the test split
    train_ids = {r.image_id for r in read_voc(root, "trainval", classes_from="trainval").records}
    train_crops, val_crops = _crop_images(work, "train"), _crop_images(work, "val")
    assert train_crops and val_crops and not train_crops & val_crops and train_crops | val_crops <= train_ids
    # outputs named after the dataset's splits (trainval's one store serves train and monitor)
    assert sorted(p.name for p in (work / "proposals").glob("*.npz")) == [
        "voc_test_ss2x+multibox200.npz", "voc_trainval_ss2x+multibox200.npz"]
    assert (work / "detections" / "voc_test.txt").is_file()
    report = json.loads((work / "eval" / "eval_voc_test.json").read_text())
    assert report["rules"] == "voc" and report["num_images"] == 6 and report["split_name"] == "test"
    assert f"mAP@0.5 on voc_test (6 images; small, 1 members), voc rules: {report['mean_ap']:.4f}" in out
    assert len(list((work / "detect").glob("*.png"))) == 2  # drawn test images (.jpg and .JPG)
    assert re.search(r"no init=: every network starts from random weights and learns from the \d+ training images", out)
    assert re.search(r"cost: \d+\.\d min wall in this run \(10 of 10 stages run\)\nper stage: prepare \d+ s, "
                     r"train_cls \d+ s, .*, draw \d+ s", out)

    again = _demo(repo_root, "data=voc", f"data.root={root}", f"work_dir={work}")
    assert again.count("done earlier, outputs verified: skipped") == 10 and "finished in" not in again
    assert re.search(r"\(0 of 10 stages run; the skipped ones took \d+\.\d min when they ran\)\n"
                     r"per stage: prepare \d+ s \(earlier\), ", again)

    # the user edits the dataset: a test image replaced in place (same name and size, new pixels) and a
    # training box moved. The same command trains again over its own checkpoints and detects and scores
    # again; nothing is reported from outputs made with the old data
    from PIL import Image, ImageOps
    image = test.records[0].path
    with Image.open(image) as im:
        ImageOps.invert(im.convert("RGB")).save(image)
    xml = root / "Annotations" / f"{sorted(train_ids)[1]}.xml"
    text = xml.read_text()
    start = text.index("<xmin>") + len("<xmin>")
    end = text.index("</xmin>", start)
    xml.write_text(text[:start] + str(int(text[start:end]) + 2) + text[end:])
    stamp = (work / "eval" / "eval_voc_test.json").stat().st_mtime_ns
    third = _demo(repo_root, "data=voc", f"data.root={root}", f"work_dir={work}")
    assert "done earlier" not in third
    for trainer in ("cls", "multibox", "region/member0"):
        assert f"{trainer}/checkpoint.pt: written by a run with other inputs or settings (differs in: data" in third
    assert third.count("training from the start (restart_on_change=true)") == 3
    assert (work / "eval" / "eval_voc_test.json").stat().st_mtime_ns != stamp


def test_coco_files_end_to_end_from_init_weights(tmp_path, repo_root):
    root, work = tmp_path / "coco", tmp_path / "work"
    make_detection_world(root, layout="coco", **TINY)
    torch.manual_seed(0)  # better weights of the user's: the chain starts from them instead of pre-training
    weights = GoogLeNet(num_classes=7, width=0.125, batch_norm=True)
    torch.save({"model_kwargs": weights.model_kwargs, "model_state": weights.state_dict()}, tmp_path / "init.pt")
    out = _demo(repo_root, "data=coco", f"data.root={root}", "data.train_name=train", "data.val_name=val",
                f"work_dir={work}", f"init={tmp_path / 'init.pt'}")

    assert "[train_cls]" not in out and not (work / "cls").exists() and not (work / "data" / "gt_crops").exists()
    assert "no init=" not in out
    classes = read_coco(root / "annotations" / "instances_train.json", root / "images" / "train").classes
    assert read_class_list(work / "classes.tsv") == classes  # the categories of the training file
    member = torch.load(work / "region" / "member0" / "checkpoint.pt", weights_only=True)
    assert member["fingerprint"]["init"] == run_fingerprint(init=init_identity(tmp_path / "init.pt"))["init"]
    assert sorted(p.name for p in (work / "proposals").glob("*.npz")) == [
        "coco_train_ss2x+multibox200.npz", "coco_val_ss2x+multibox200.npz"]
    report = json.loads((work / "eval" / "eval_coco_val.json").read_text())
    assert report["rules"] == "coco" and report["num_images"] == 6
    assert report["ap50_pycocotools"] == pytest.approx(report["mean_ap"], abs=1e-6)
    assert (work / "detections" / "coco_val.json").is_file()


# ---- issue 22: a Roboflow COCO export with the README's command, two training splits merged


def _as_roboflow(coco_root, root):
    """The synthetic COCO world re-laid as a Roboflow export: ``<split>/_annotations.coco.json`` beside the
    images, ids from 0 in every split, a supercategory with id 0 and no boxes; the world's training
    split becomes ``train`` and ``valid``, its val split ``test``."""
    import shutil

    train = json.loads((coco_root / "annotations" / "instances_train.json").read_text())
    val = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    parts = {"train": (train, train["images"][:10], "train"), "valid": (train, train["images"][10:], "train"),
             "test": (val, val["images"], "val")}
    for split, (data, images, source) in parts.items():
        (root / split).mkdir(parents=True)
        new_id = {im["id"]: k for k, im in enumerate(images)}
        out = {"categories": [{"id": 0, "name": "shapes", "supercategory": "none"}] + data["categories"],
               "images": [dict(im, id=new_id[im["id"]]) for im in images], "annotations": []}
        for a in data["annotations"]:
            if a["image_id"] in new_id:
                out["annotations"].append(dict(a, id=len(out["annotations"]), image_id=new_id[a["image_id"]]))
        for im in images:
            shutil.copy(coco_root / "images" / source / im["file_name"], root / split / im["file_name"])
        (root / split / "_annotations.coco.json").write_text(json.dumps(out))


def test_roboflow_export_end_to_end_two_training_splits(tmp_path, repo_root):
    world, root, work = tmp_path / "world", tmp_path / "export", tmp_path / "work"
    make_detection_world(world, layout="coco", **TINY)
    _as_roboflow(world, root)
    out = _demo(repo_root, "data=coco", f"data.root={root}", "data.train_name=[train,valid]", "data.val_name=test",
                f"work_dir={work}")
    classes = read_class_list(work / "classes.tsv")
    assert "0" not in classes.wnids and "'shapes' (id 0)" in out  # the boxless supercategory is no class
    assert sorted(p.name for p in (work / "proposals").glob("*.npz")) == [
        "coco_test_ss2x+multibox200.npz", "coco_train+valid_ss2x+multibox200.npz"]
    report = json.loads((work / "eval" / "eval_coco_test.json").read_text())
    assert report["rules"] == "coco" and report["num_images"] == 6 and report["split_name"] == "test"
    assert report["annotation_id_0_in"] == [str(root / "test" / "_annotations.coco.json")]
    crops = _crop_images(work, "train") | _crop_images(work, "val")
    assert {c.split("_")[0] for c in crops} == {"train", "valid"}  # crops from both training splits (ids <split>/<id>)


def test_small_boxes_in_large_photos_raise_the_segmented_size(tmp_path, repo_root):
    """Photos of 1200-1400 px with objects of 30-60 px: selective search (experiment=small's bounded 500)
    would see them at 11-25 px; the one command segments at up to 1000 px instead and says so; with
    segment_size.auto=false, or proposals set on the command line, it keeps 500."""
    root = tmp_path / "voc"
    make_detection_world(root, num_classes=2, num_train=6, num_val=2, min_side=1200, max_side=1400, max_objects=3,
                         min_object_size=30, max_object_fraction=0.05, empty_fraction=0.0, seed=0, layout="voc")
    args = ["data=voc", f"data.root={root}", "stop_after=prepare"]
    out = _demo(repo_root, *args, f"work_dir={tmp_path / 'a'}")
    assert "selective search segments images at a longer side of up to 1000 px instead of 500" in out
    for extra in (["segment_size.auto=false"], ["proposals.sources.0.min_box_size=20"]):
        out = _demo(repo_root, *args, *extra, f"work_dir={tmp_path / 'b'}")
        assert "selective search segments" not in out


def test_one_class_skips_the_pre_training_that_could_not_learn(tmp_path, repo_root):
    """A softmax over one class has loss 0: pre-training on one class's crops would run its epochs and
    change nothing. The one command leaves it out, says so, and starts MultiBox from random weights
    (``init=null``); train_cls.py itself refuses such a dataset, naming it."""
    root, work = tmp_path / "voc", tmp_path / "work"
    make_detection_world(root, layout="voc", **dict(TINY, num_classes=1))
    out = _demo(repo_root, "data=voc", f"data.root={root}", f"work_dir={work}", "stop_after=train_multibox")
    assert "one class (" in out and "no pre-training on the crops" in out and "[train_cls]" not in out
    assert not (work / "cls").exists() and not (work / "data" / "gt_crops").exists()
    multibox = torch.load(work / "multibox" / "checkpoint.pt", weights_only=True)
    assert multibox["fingerprint"]["init"] == run_fingerprint(init=init_identity(None))["init"]
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "train_cls.py"), "experiment=small", "data=voc",
                          f"data.root={root}", f"work_dir={tmp_path / 'cls'}", "device=cpu", "num_workers=0"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "classification needs at least two classes" in run.stderr + run.stdout
