"""tools/eval_map.py on ILSVRC data as a devkit user has it: the plain command on a ground-truth-only
folder of either layout, the devkit's cached ground truth .mat, the annotation cache, the error texts,
and an evaluation path that never imports torch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detect.classes import ilsvrc_det_classes
from detect.data.ilsvrc import read_ilsvrc_det
from detect.detections import read_ilsvrc_submission
from test_evaluation import devkit_reference  # the plain transcription of eval_detection.m

CLASSES = ilsvrc_det_classes()


def make_world(seed: int = 0, num_images: int = 30):
    """Random ground truth over the real 200 classes (a few used), with small objects and empty images."""
    rng = np.random.default_rng(seed)
    names = [f"ILSVRC2013_val_{k:08d}" for k in range(1, num_images + 1)]
    gt = {}
    for name in names:
        w, h = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        objs = []
        for _ in range(int(rng.integers(0, 4))):
            c = int(rng.integers(0, 5))
            bw, bh = (rng.integers(4, 20, 2) if rng.random() < 0.3 else rng.integers(20, 150, 2)).tolist()
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            objs.append((c, x, y, x + bw - 1, y + bh - 1))
        gt[name] = (w, h, objs)
    return names, gt


def xml_text(name, w, h, objs) -> str:
    body = "".join(f"<object><name>{CLASSES.wnids[c]}</name><bndbox><xmin>{x1}</xmin><xmax>{x2}</xmax><ymin>{y1}</ymin>"
                   f"<ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objs)
    return f"<annotation><folder>val</folder><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{body}</annotation>"


def write_ground_truth_only(root: Path, layout: str, names, gt, list_offset: int = 100) -> None:
    """The annotations and the official list of ``layout`` (no images at all)."""
    if layout == "2015":
        xml_dir, list_path = root / "Annotations" / "DET" / "val", root / "ImageSets" / "DET" / "val.txt"
    else:
        xml_dir, list_path = root / "ILSVRC2013_DET_bbox_val", root / "devkit" / "data" / "det_lists" / "val.txt"
    xml_dir.mkdir(parents=True)
    list_path.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        (xml_dir / f"{name}.xml").write_text(xml_text(name, *gt[name]))
    list_path.write_text("".join(f"{n} {list_offset + k}\n" for k, n in enumerate(names, 1)))


def write_submission(path: Path, names, gt, seed: int = 0, list_offset: int = 100) -> None:
    """Jittered copies of the ground truth and random boxes, a quarter of them inverted, zero-area or
    off the image (a user's output, scored as the devkit scores it), plus two bad lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for k, name in enumerate(names, 1):
        w, h, objs = gt[name]
        for c, x1, y1, x2, y2 in objs + [(int(rng.integers(0, 5)), 10, 10, 60, 80)]:
            for _ in range(int(rng.integers(1, 3))):
                b = np.array([x1, y1, x2, y2], float) + rng.normal(0, 3, 4)
                r = rng.random()
                if r < 0.1:
                    b = b[[2, 3, 0, 1]]  # inverted
                elif r < 0.17:
                    b[2] = b[0]          # zero width
                elif r < 0.25:
                    b += 1000            # off the image
                lines.append(f"{list_offset + k} {c + 1} {rng.random():.4f} " + " ".join(f"{v:.2f}" for v in b))
    lines += ["1 1 0.5 0 0 10 10", f"{list_offset + 1} 1 0.5 0 0 10"]  # an unknown image, a short line
    path.write_text("\n".join(lines) + "\n")


def _compose(repo_root, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        return compose(config_name="eval_map", overrides=overrides)


def _tool(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_map_tool", repo_root / "tools" / "eval_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def world(tmp_path):
    names, gt = make_world()
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text(f"102 {CLASSES.wnids[gt[names[1]][2][0][0] if gt[names[1]][2] else 0]}\n105 {CLASSES.wnids[3]}\n")
    write_submission(tmp_path / "det.txt", names, gt)
    return names, gt, blacklist, tmp_path / "det.txt"


@pytest.mark.parametrize("layout", ["2015", "2014"])
def test_plain_command_on_ground_truth_only_folder(tmp_path, repo_root, world, layout):
    names, gt, blacklist, det = world
    root = tmp_path / f"ILSVRC{layout}"
    write_ground_truth_only(root, layout, names, gt)
    tool = _tool(repo_root)
    base = ["data=ilsvrc", f"data.root={root}", f"data.blacklist={blacklist}", f"detections={det}",
            f"work_dir={tmp_path / 'work'}"]
    report = tool.run(_compose(repo_root, base))
    assert report["num_images"] == len(names) and report["skipped_annotations"] == 0
    assert report["skipped_lines"] == 2  # the unknown image and the short line; degenerate boxes are scored
    ds = read_ilsvrc_det(root, "val", blacklist=blacklist, check_images=False)
    dets = read_ilsvrc_submission(det, 200, known_images=[r.index for r in ds])
    assert report["num_detections"] == len(dets) and (dets.boxes[:, 2] < dets.boxes[:, 0]).any()
    ref = devkit_reference(ds, dets)
    assert report["mean_ap"] == pytest.approx(np.nanmean(ref), abs=1e-12)
    assert [c["ap"] for c in report["classes"]] == pytest.approx([None if np.isnan(a) else a for a in ref], abs=1e-12)
    # the layout as Hydra passes it (an int), and the wrong one named in one line
    other = "2014" if layout == "2015" else "2015"
    assert tool.run(_compose(repo_root, base + [f"data.layout={layout}"]))["mean_ap"] == report["mean_ap"]
    with pytest.raises(FileNotFoundError, match=f"layout={other} but .* the folder has the {layout} layout .*use layout={layout} or auto"):
        tool.run(_compose(repo_root, base + [f"data.layout={other}"]))


def write_devkit_mat(path: Path, names, gt, list_offset: int = 100) -> None:
    """The devkit's cache as eval_detection.m saves it (gt_img_ids, gt_obj_labels, gt_obj_bboxes,
    gt_obj_thr, num_pos_per_class), with small integers stored as uint8/uint16 as MATLAB does."""
    import scipy.io

    n = len(names)
    labels, bboxes, thrs = np.empty((1, n), object), np.empty((1, n), object), np.empty((1, n), object)
    num_pos = np.zeros(200)
    for i, name in enumerate(names):
        objs = gt[name][2]
        if not objs:
            labels[0, i], bboxes[0, i], thrs[0, i] = np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0))
            continue
        lab = np.array([[o[0] + 1 for o in objs]], np.uint8)
        box = np.array([o[1:] for o in objs], np.uint16).T  # 4 x n
        w = box[2].astype(float) - box[0] + 1
        h = box[3].astype(float) - box[1] + 1
        labels[0, i], bboxes[0, i] = lab, box
        thrs[0, i] = np.minimum(0.5, w * h / ((w + 10) * (h + 10)))[None]
        for o in objs:
            num_pos[o[0]] += 1
    scipy.io.savemat(path, {"gt_img_ids": np.arange(list_offset + 1, list_offset + n + 1, dtype=np.uint16)[:, None],
                            "gt_obj_labels": labels, "gt_obj_bboxes": bboxes, "gt_obj_thr": thrs,
                            "num_pos_per_class": num_pos[None]})


def test_devkit_ground_truth_mat_in_place_of_xml(tmp_path, repo_root, world, caplog):
    names, gt, blacklist, det = world
    xml_root, mat_root = tmp_path / "xml", tmp_path / "mat"
    write_ground_truth_only(xml_root, "2015", names, gt)
    (mat_root / "ImageSets" / "DET").mkdir(parents=True)  # the list only: no annotations folder at all
    (mat_root / "ImageSets" / "DET" / "val.txt").write_text((xml_root / "ImageSets" / "DET" / "val.txt").read_text())
    mat = tmp_path / "ILSVRC2015_det_validation_ground_truth.mat"
    write_devkit_mat(mat, names, gt)
    tool = _tool(repo_root)
    common = [f"data.blacklist={blacklist}", f"detections={det}", f"work_dir={tmp_path / 'work'}", "curves_in_json=false"]
    from_xml = tool.run(_compose(repo_root, ["data=ilsvrc", f"data.root={xml_root}"] + common))
    from_mat = tool.run(_compose(repo_root, ["data=ilsvrc", f"data.root={mat_root}", f"data.ground_truth={mat}"] + common))
    assert from_mat["classes"] == from_xml["classes"] and from_mat["mean_ap"] == from_xml["mean_ap"]
    a = read_ilsvrc_det(xml_root, "val", check_images=False)
    with caplog.at_level("WARNING", logger="detect.data.ilsvrc"):
        b = read_ilsvrc_det(mat_root, "val", check_images=False, ground_truth=mat)
    assert "gt_obj_thr" not in caplog.text  # the stored thresholds follow the devkit's rule
    assert [r.image_id for r in a] == [r.image_id for r in b] and [r.index for r in a] == [r.index for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        np.testing.assert_array_equal(ra.labels, rb.labels)
    import scipy.io

    stored = {k: v for k, v in scipy.io.loadmat(mat).items() if not k.startswith("__")}
    first = next(i for i, t in enumerate(stored["gt_obj_thr"][0]) if t.size)
    stored["gt_obj_thr"][0, first] = stored["gt_obj_thr"][0, first] + 0.01  # thresholds no longer the rule's
    scipy.io.savemat(tmp_path / "thr.mat", stored)
    with caplog.at_level("WARNING", logger="detect.data.ilsvrc"):
        read_ilsvrc_det(mat_root, "val", check_images=False, ground_truth=tmp_path / "thr.mat")
    assert f"{stored['gt_obj_thr'][0, first].size} stored gt_obj_thr values differ" in caplog.text
    # a .mat that is not the devkit's cache: one line naming the file and what is missing
    scipy.io.savemat(tmp_path / "other.mat", {"rec": np.zeros((1, 3))})
    with pytest.raises(ValueError, match=r"other.mat: not the devkit's ground-truth cache: needs gt_img_ids, "
                                         r"gt_obj_labels, gt_obj_bboxes \(has rec\)"):
        read_ilsvrc_det(mat_root, "val", check_images=False, ground_truth=tmp_path / "other.mat")
    (tmp_path / "broken.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match="broken.mat: not a readable MATLAB file"):
        read_ilsvrc_det(mat_root, "val", check_images=False, ground_truth=tmp_path / "broken.mat")


def test_error_texts_name_the_cause(tmp_path):
    names, gt = make_world(num_images=3)
    with pytest.raises(FileNotFoundError, match=r"nowhere: dataset folder not found \(data.root\)"):
        read_ilsvrc_det(tmp_path / "nowhere", "val")
    (tmp_path / "empty" / "misc").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no ILSVRC DET val data: expected Annotations/DET/val \(2015\+ layout\) "
                                                r"or ILSVRC2013_DET_bbox_val \(2013/2014 layout\); the folder has: misc"):
        read_ilsvrc_det(tmp_path / "empty", "val")
    lists_only = tmp_path / "lists"
    (lists_only / "ImageSets" / "DET").mkdir(parents=True)
    (lists_only / "ImageSets" / "DET" / "val.txt").write_text("a 1\n")
    with pytest.raises(FileNotFoundError, match=r"Annotations/DET/val: no annotations for split 'val' \(2015 layout\)"):
        read_ilsvrc_det(lists_only, "val")
    root = tmp_path / "gt"
    write_ground_truth_only(root, "2015", names, gt)
    with pytest.raises(FileNotFoundError, match=r"3 of 3 images not found in .*Data/DET/val as <name>\.JPEG .*; "
                                                r"the folder does not exist; stopping"):
        read_ilsvrc_det(root, "val")  # a reader that needs the images, on a folder without any
    assert len(read_ilsvrc_det(root, "val", check_images=False)) == 3
    with pytest.raises(ValueError, match="layout must be auto, 2015 or 2014"):
        read_ilsvrc_det(root, "val", layout=2016)
    (root / "ImageSets" / "DET" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no image list val.txt in ImageSets/DET; give image_list="):
        read_ilsvrc_det(root, "val", check_images=False)


def test_annotation_cache(tmp_path, monkeypatch):
    import detect.data.ilsvrc as ilsvrc

    names, gt = make_world(num_images=6)
    root = tmp_path / "gt"
    write_ground_truth_only(root, "2015", names, gt)
    os.chmod(root / "Annotations" / "DET" / "val", 0o555)  # the dataset folder is read-only: the cache goes elsewhere
    cache = tmp_path / "work" / "cache"
    first = read_ilsvrc_det(root, "val", check_images=False, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1 and not list(root.rglob("*.npz"))
    calls = []
    real_parse = ilsvrc._parse_ilsvrc_raw
    monkeypatch.setattr(ilsvrc, "_parse_ilsvrc_raw", lambda p, c: calls.append(p) or real_parse(p, c))
    again = read_ilsvrc_det(root, "val", check_images=False, cache_dir=cache)
    assert calls == []  # nothing parsed: all from the cache
    assert [r.boxes.tolist() for r in again] == [r.boxes.tolist() for r in first]
    # an edited file: the cache is refreshed (all files parsed again), and the edit is seen
    os.chmod(root / "Annotations" / "DET" / "val", 0o755)
    w, h, objs = gt[names[0]]
    (root / "Annotations" / "DET" / "val" / f"{names[0]}.xml").write_text(xml_text(names[0], w, h, objs + [(4, 1, 1, 9, 9)]))
    edited = read_ilsvrc_det(root, "val", check_images=False, cache_dir=cache)
    assert len(calls) == 6 and len(edited[0].boxes) == len(first[0].boxes) + 1
    calls.clear()
    assert len(read_ilsvrc_det(root, "val", check_images=False, cache_dir=cache)[0].boxes) == len(objs) + 1
    assert calls == []
    # a damaged cache file is ignored and rewritten
    next(cache.glob("*.npz")).write_bytes(b"garbage")
    assert len(read_ilsvrc_det(root, "val", check_images=False, cache_dir=cache)) == 6 and len(calls) == 6


def test_plain_command_line_without_torch(tmp_path, repo_root, world):
    """The command a devkit user types, as a subprocess: it works, and torch is never imported."""
    names, gt, blacklist, det = world
    root = tmp_path / "ILSVRC"
    write_ground_truth_only(root, "2015", names, gt)
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    cmd = [sys.executable, "-X", "importtime", str(repo_root / "tools" / "eval_map.py"), "data=ilsvrc",
           f"data.root={root}", f"data.blacklist={blacklist}", f"detections={det}", f"work_dir={tmp_path / 'work'}"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mean AP (ilsvrc)" in run.stdout
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported and not any(m == "torch" or m.startswith("torch.") for m in imported)
    bad = subprocess.run(cmd[:5] + [f"data.root={tmp_path / 'missing'}", f"detections={det}"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode != 0 and "missing: dataset folder not found (data.root)" in bad.stderr


def test_parallel_parse_equals_serial(tmp_path, monkeypatch):
    """Worker processes (a cold cache on a large folder) give exactly the serial result, errors included."""
    import detect.data.cache as cache
    import detect.data.ilsvrc as ilsvrc

    names, gt = make_world(seed=3, num_images=40)
    root = tmp_path / "gt"
    write_ground_truth_only(root, "2015", names, gt)
    xml_dir = root / "Annotations" / "DET" / "val"
    (xml_dir / f"{names[7]}.xml").write_text("<annotation><object>")  # malformed
    (xml_dir / f"{names[23]}.xml").unlink()  # missing
    (xml_dir / f"{names[30]}.xml").write_text(xml_text(names[30], 50, 50, [(1, 9, 9, 3, 3)]))  # an inverted box
    monkeypatch.setattr(cache, "MIN_FILES_PER_WORKER", 5)
    serial = cache.parse_annotation_files(xml_dir, names, ilsvrc._parse_ilsvrc_raw, None, "t", 1, CLASSES, workers=1)
    parallel = cache.parse_annotation_files(xml_dir, names, ilsvrc._parse_ilsvrc_raw, None, "t", 1, CLASSES, workers=3)
    for key in ("width", "height", "counts", "boxes", "labels", "flags"):
        np.testing.assert_array_equal(getattr(parallel, key), getattr(serial, key))
    assert parallel.errors == serial.errors and set(serial.errors) == {7, 23} and serial.errors[23] == "missing"
    assert parallel.problems == serial.problems and list(serial.problems) == [30]
