"""tools/detect_images.py end to end on a real photo with a tiny random detector built here."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detect.classes import ClassList
from detect.models.googlenet import GoogLeNet
from detect.pipeline import DetectorSettings, bundle_detector
from detect.plots import draw_detections, write_png


def _tiny_detector(path, classes, proposer):
    torch.manual_seed(0)
    member = GoogLeNet(num_classes=len(classes) + 1, width=0.125, lrn=False, dropout=0.0).eval()
    settings = DetectorSettings(crop_size=64, context=4, nms_iou=0.3, score_threshold=0.0, max_per_image=10,
                                batch_size=32)
    bundle_detector([{"model_kwargs": member.model_kwargs, "model_state": member.state_dict()}], classes, settings,
                    path, proposer=proposer)


def test_draw_detections_changes_only_box_pixels(tmp_path):
    image = np.zeros((60, 80, 3), np.uint8)
    drawn = draw_detections(image, np.array([[10, 20, 50, 55]], np.float32), np.array([0.9]), np.array([1]),
                            ["a", "b"])
    assert drawn.shape == image.shape and image.max() == 0  # the input is untouched
    assert drawn[20, 30].any() and drawn[54, 30].any() and not drawn[40, 30].any()  # edges drawn, inside not
    write_png(tmp_path / "x.png", drawn)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), drawn)


def test_former_name_runs_the_tool(tmp_path, repo_root):
    """`python tools/detect.py` (a folder run by its __main__.py: a file of that name would hide the `detect`
    package from the tools) runs tools/detect_images.py with the same arguments."""
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "detect.py"), f"work_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 1 and "no images given: python tools/detect_images.py" in run.stderr, run.stderr
    assert (repo_root / "tools" / "detect.py").is_dir()


@pytest.mark.slow
def test_detect_tool_on_real_photo_with_bad_inputs(tmp_path, shared_data, repo_root):
    photo = shared_data / "coco128" / "images" / "train2017" / "000000000009.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not available")
    classes = ClassList.from_names(["cat", "dog", "person"])
    detector = tmp_path / "detector.pt"
    _tiny_detector(detector, classes, {"kind": "selective_search",
                                       "params": {"mode": "opencv_fast", "resize_width": 160, "max_boxes": 40}})
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "out"
    cmd = [sys.executable, str(repo_root / "tools" / "detect_images.py"), str(photo), str(tmp_path / "missing.jpg"),
           str(corrupt), f"detector={detector}", "device=cpu", f"out_dir={out}", "show_threshold=0.0",
           "coco_results=true", f"work_dir={tmp_path / 'work'}"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "000000000009.jpg: 10 detections" in run.stdout
    assert "missing.jpg" in run.stdout and "corrupt.jpg" in run.stdout
    assert "1 of 3 images processed" in run.stdout
    result = json.loads((out / "000000000009.json").read_text())
    assert result["width"] == 640 and len(result["detections"]) == 10
    assert {d["class"] for d in result["detections"]} <= {"cat", "dog", "person"}
    scores = [d["score"] for d in result["detections"]]
    assert scores == sorted(scores, reverse=True)
    png = np.asarray(Image.open(out / "000000000009.png"))
    assert png.shape == (result["height"], 640, 3)
    assert not np.array_equal(png, np.asarray(Image.open(photo).convert("RGB")))  # boxes were drawn
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == 10 and all(c["image_id"] == 1 and 1 <= c["category_id"] <= 3 for c in coco)

    # nothing usable -> exit code 1 with the reason (run by the former name, tools/detect.py)
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "detect.py"), str(corrupt)] + cmd[5:],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 1 and "0 of 1 images processed" in run.stdout and "corrupt.jpg" in run.stdout
