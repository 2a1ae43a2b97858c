"""Fault suite for the dataset readers: images by stem whatever the extension's case (one listing, a
clear error for a missing pattern), VOC sizes missing or 0x0, COCO fields of the wrong type one by one,
hostile XML. Each case asserts what is kept, what is reported (file, index, reason) and that nothing
crashes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from detect.data import read_coco, read_ilsvrc_det, read_voc
from detect.data.folder import ImageFinder, list_images
from detect.data.xmlfile import parse_xml_bytes, read_xml_root


def _jpeg(path: Path, width: int = 40, height: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))
    path.write_bytes(data.tobytes())


# ---------------------------------------------------------------- images by stem


def test_image_finder_any_extension_case(tmp_path, monkeypatch):
    for name in ("IMG_0001.JPG", "IMG_0002.jpeg", "IMG_0003.PNG", "b.jpg", "b.png", "notes.txt", "c.JPEG"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.Jpg").write_bytes(b"x")
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))
    finder = ImageFinder(tmp_path, ".jpg")
    assert finder.find("IMG_0001") == tmp_path / "IMG_0001.JPG"
    assert finder.find("IMG_0002") == tmp_path / "IMG_0002.jpeg"
    assert finder.find("IMG_0003") == tmp_path / "IMG_0003.PNG"
    assert finder.find("b") == tmp_path / "b.jpg"  # the usual extension first when several share a stem
    assert finder.find("b.png") == tmp_path / "b.png"  # a name with an extension (COCO file_name): exact first
    assert finder.find("c.jpg") == tmp_path / "c.JPEG"  # else by stem
    assert finder.find("sub/d") == tmp_path / "sub" / "d.Jpg"
    assert finder.find("notes") is None and finder.find("missing") is None
    assert len(calls) == 2  # one listing per folder, not one lookup per image
    assert ImageFinder(tmp_path, ".png").find("b") == tmp_path / "b.png"


def test_missing_images_stop_with_the_pattern(tmp_path):
    folder = tmp_path / "JPEGImages"
    for k in range(10):
        (folder / f"IMG_{k}.heic" if k < 8 else folder / f"IMG_{k}.jpg").parent.mkdir(exist_ok=True)
        (folder / (f"IMG_{k}.heic" if k < 8 else f"IMG_{k}.jpg")).write_bytes(b"x")
    finder = ImageFinder(folder, ".jpg")
    names = [f"IMG_{k}" for k in range(10)]
    missing = [n for n in names if finder.find(n) is None]
    with pytest.raises(FileNotFoundError, match=r"8 of 10 images not found in .*JPEGImages as <name>\.jpg \(any letter "
                                                r"case of .*\); found <name>\.heic for 8 \(not a supported image extension\)"):
        finder.check_missing(missing, 10, 0.1)
    finder.check_missing(missing[:1], 10, 0.1)  # one in ten: a warning, not an error
    other_case = ImageFinder(folder, ".jpg")
    assert "found 2 with the name in another letter case" in other_case.describe_missing(["img_8", "img_9"], 2)
    nothing = ImageFinder(tmp_path / "nope", ".JPEG")
    assert nothing.describe_missing(["a"], 1).endswith("the folder does not exist")


def test_list_images_any_case(tmp_path):
    for name in ("a.JPG", "b.Png", "c.jpeg", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.Png", "c.jpeg"]


def test_readers_find_uppercase_extensions(tmp_path):
    # VOC: 3 of 4 images are .JPG, one .png
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    names = ["IMG_1", "IMG_2", "IMG_3", "IMG_4"]
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names) + "\n")
    for k, name in enumerate(names):
        _jpeg(root / "JPEGImages" / f"{name}{'.JPG' if k < 3 else '.png'}")
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml("<size><width>40</width><height>30</height></size>"))
    ds = read_voc(root, "test")
    assert [r.path.name for r in ds] == ["IMG_1.JPG", "IMG_2.JPG", "IMG_3.JPG", "IMG_4.png"] and len(ds.skipped) == 0
    # ILSVRC: .jpeg / .JPG in place of .JPEG
    il = tmp_path / "ilsvrc"
    for k, name in enumerate(["x1", "x2"]):
        _jpeg(il / "Data" / "DET" / "val" / f"{name}{'.jpeg' if k else '.JPG'}")
        (il / "Annotations" / "DET" / "val").mkdir(parents=True, exist_ok=True)
        (il / "Annotations" / "DET" / "val" / f"{name}.xml").write_text(
            "<annotation><size><width>40</width><height>30</height></size></annotation>")
    (il / "ImageSets" / "DET").mkdir(parents=True)
    (il / "ImageSets" / "DET" / "val.txt").write_text("x1 1\nx2 2\n")
    assert [r.path.name for r in read_ilsvrc_det(il, "val")] == ["x1.JPG", "x2.jpeg"]
    # COCO: file_name says .jpg, the file is .JPG
    _jpeg(tmp_path / "coco" / "img" / "7.JPG")
    ann = tmp_path / "coco" / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "7.jpg", "width": 40, "height": 30}],
                               "categories": [{"id": 1, "name": "a"}], "annotations": []}))
    assert read_coco(ann, tmp_path / "coco" / "img")[0].path.name == "7.JPG"


# ---------------------------------------------------------------- VOC sizes


def voc_xml(size: str, box=(5, 6, 20, 25)) -> str:
    x1, y1, x2, y2 = box
    return (f"<annotation>{size}<object><name>dog</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>")


@pytest.mark.parametrize("size", [
    "<size><width>0</width><height>0</height><depth>3</depth></size>",
    "",
    "<size><width>abc</width><height>30</height></size>",
    "<size><width>nan</width><height>inf</height></size>",
    "<size><width>-40</width><height>30</height></size>",
])
def test_voc_size_taken_from_the_image(tmp_path, size):
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    (root / "Annotations" / "a.xml").write_text(voc_xml(size))
    (root / "Annotations" / "b.xml").write_text(voc_xml("<size><width>40</width><height>30</height></size>"))
    _jpeg(root / "JPEGImages" / "a.jpg", 64, 48)
    _jpeg(root / "JPEGImages" / "b.jpg", 40, 30)
    ds = read_voc(root, "test")
    assert [r.image_id for r in ds] == ["a", "b"] and len(ds.skipped) == 0  # never dropped
    assert (ds[0].width, ds[0].height) == (64, 48) and (ds[1].width, ds[1].height) == (40, 30)
    np.testing.assert_array_equal(ds[0].boxes, [[4, 5, 19, 24]])  # its boxes kept
    assert [(Path(f).name, r.split(":")[0]) for f, r in ds.warnings.entries] == [("a.xml", "size repaired from the image")]
    assert "1 annotations kept with a warning" in ds.summary() and "size repaired from the image" in ds.summary()
    # evaluation without the images: the record is kept, its size unknown (0), also counted
    os.remove(root / "JPEGImages" / "a.jpg")
    gt_only = read_voc(root, "test", check_images=False)
    assert (gt_only[0].width, gt_only[0].height) == (0, 0) and len(gt_only[0].boxes) == 1
    assert gt_only.warnings.entries[0][1].startswith("size unknown")


# ---------------------------------------------------------------- COCO fields one by one


GOOD_IMAGE = {"id": 1, "file_name": "1.jpg", "width": 40, "height": 30}
GOOD_ANN = {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 12], "iscrowd": 0}
GOOD_CAT = {"id": 3, "name": "dog"}

BAD = [  # (list, bad entry, reason text): one wrongly typed or valued field each
    ("annotations", {**GOOD_ANN, "image_id": None}, "image_id None is null, not an integer"),
    ("annotations", {**GOOD_ANN, "image_id": "1"}, "image_id '1' is a string, not an integer"),
    ("annotations", {**GOOD_ANN, "image_id": [1]}, "image_id [1] is a list, not an integer"),
    ("annotations", {**GOOD_ANN, "image_id": 1.5}, "image_id 1.5 is not an integer"),
    ("annotations", {**GOOD_ANN, "image_id": 99}, "unknown image: image_id 99"),
    ("annotations", {**GOOD_ANN, "category_id": "3"}, "category_id '3' is a string, not an integer"),
    ("annotations", {**GOOD_ANN, "category_id": True}, "category_id True is a boolean, not an integer"),
    ("annotations", {**GOOD_ANN, "category_id": 4}, "unknown class: category_id 4"),
    ("annotations", {**GOOD_ANN, "bbox": "1234"}, "bbox '1234' is a string, not a list of 4 numbers"),
    ("annotations", {**GOOD_ANN, "bbox": [1, 2, 3]}, "bbox [1, 2, 3] is a list, not a list of 4 numbers"),
    ("annotations", {**GOOD_ANN, "bbox": [1, 2, "3", 4]}, "bbox value '3' is a string, not a number"),
    ("annotations", {**GOOD_ANN, "bbox": [1, 2, 1e999, 4]}, "bbox value inf is not finite"),
    ("annotations", {**GOOD_ANN, "bbox": [1, 2, 10 ** 400, 4]}, "bbox value (an integer of 401 digits) is out of range"),
    ("annotations", {**GOOD_ANN, "bbox": [1, 2, 0, 4]}, "degenerate box: bbox [1, 2, 0, 4] has width or height <= 0"),
    ("annotations", {**GOOD_ANN, "iscrowd": "0"}, "iscrowd '0' is a string, not 0 or 1"),
    ("annotations", {**GOOD_ANN, "iscrowd": 2}, "iscrowd 2 is an integer, not 0 or 1"),
    ("annotations", {k: v for k, v in GOOD_ANN.items() if k != "bbox"}, "missing bbox"),
    ("annotations", [1, 3, [1, 2, 10, 12]], "entry is a list, not an object"),
    ("annotations", "annotation", "entry is a string, not an object"),
    ("images", {**GOOD_IMAGE, "id": 2, "width": 1e999}, "width inf is not an integer"),
    ("images", {**GOOD_IMAGE, "id": 2, "width": "640"}, "width '640' is a string, not an integer"),
    ("images", {**GOOD_IMAGE, "id": 2, "height": 0}, "size 40x0 is not positive"),
    ("images", {k: v for k, v in GOOD_IMAGE.items() if k != "file_name"} | {"id": 2}, "missing file_name"),
    ("images", {**GOOD_IMAGE, "id": 2, "file_name": 5}, "file_name 5 is not a non-empty string"),
    ("images", {**GOOD_IMAGE, "id": 2, "file_name": "../../secret.jpg"}, "points outside the image folder"),
    ("images", {**GOOD_IMAGE, "id": 2, "file_name": "/etc/passwd"}, "points outside the image folder"),
    ("images", {**GOOD_IMAGE, "id": None}, "id None is null, not an integer"),
    ("images", {k: v for k, v in GOOD_IMAGE.items() if k != "id"}, "missing id"),
    ("images", {**GOOD_IMAGE}, "duplicate image id 1"),
    ("images", 7, "entry is an integer, not an object"),
    ("categories", {"id": 5}, "missing name"),
    ("categories", {"id": 5, "name": 5}, "name 5 is an integer, not a string"),
    ("categories", {"id": "5", "name": "cat"}, "id '5' is a string, not an integer"),
    ("categories", {"name": "cat"}, "missing id"),
    ("categories", None, "entry is null, not an object"),
]


@pytest.mark.parametrize("where, entry, reason", BAD, ids=[f"{b[0]}:{b[2][:30]}" for b in BAD])
def test_coco_wrongly_typed_field_reported_and_skipped(tmp_path, where, entry, reason):
    data = {"images": [GOOD_IMAGE, {**GOOD_IMAGE, "id": 3, "file_name": "3.jpg"}], "categories": [GOOD_CAT],
            "annotations": [GOOD_ANN, {**GOOD_ANN, "id": 11, "image_id": 3, "iscrowd": True}]}
    data[where].insert(1, entry)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    ds = read_coco(path, tmp_path, check_images=False)
    assert [r.image_id for r in ds] == ["1", "3"] and ds.classes.names == ("dog",)  # the rest kept
    np.testing.assert_array_equal(ds[0].boxes, [[1, 2, 11, 14]])
    assert ds[1].ignore.tolist() == [True]  # JSON true is crowd, as pycocotools reads it
    assert len(ds.skipped) == 1
    file, text = ds.skipped.entries[0]
    assert file.startswith(f"{path}: {where}[1]") and text.endswith(reason), (file, text)


def test_coco_boxes_outside_the_image_kept_as_stored(tmp_path):
    data = {"images": [GOOD_IMAGE], "categories": [GOOD_CAT],
            "annotations": [{**GOOD_ANN, "bbox": [30, 20, 25, 30]}, {**GOOD_ANN, "id": 2, "bbox": [-5, -5, 3, 3]}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    ds = read_coco(path, tmp_path, check_images=False)
    np.testing.assert_array_equal(ds[0].boxes, [[30, 20, 55, 50], [-5, -5, -2, -2]])
    assert [r.split(":")[0] for _, r in ds.warnings.entries] == ["box outside the image"] * 2 and not len(ds.skipped)


def test_coco_file_level_errors(tmp_path):
    path = tmp_path / "instances.json"
    for text, match in [("{", "not valid JSON"), ("[]", "not a COCO instances file"),
                        (json.dumps({"images": {}, "categories": []}), "'images' is an object, not a list"),
                        (json.dumps({"images": [], "categories": [{"id": "x"}]}), "no usable category")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_coco(path, tmp_path, check_images=False)


# ---------------------------------------------------------------- hostile XML


@pytest.mark.parametrize("text", [
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y"><!ENTITY z "&x;&x;&x;&x;">]><a>&z;</a>',
    '<!DOCTYPE a SYSTEM "file:///etc/passwd"><a>&x;</a>',
    '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/hostname">]><a>&x;</a>',
])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_xml_with_a_doctype_is_refused(tmp_path, text, encoding):
    if encoding == "utf-16":
        text = text.replace('<?xml version="1.0"?>', "")
        text = '<?xml version="1.0" encoding="UTF-16"?>' + text
    path = tmp_path / "a.xml"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(ValueError, match=r"a.xml: refused XML \(DTDForbidden"):
        read_xml_root(path)


def test_plain_xml_parses():
    root = parse_xml_bytes('<?xml version="1.0" encoding="UTF-16"?><a><b>é</b><!-- c --></a>'.encode("utf-16"))
    assert root.tag == "a" and root.findtext("b") == "é"


@pytest.mark.parametrize("name", ["../outside", "a/../../outside", "/etc/passwd", "C:/Windows/x", "..\\x"])
def test_image_list_names_may_not_leave_the_dataset_folder(tmp_path, name):
    """A list entry is a name inside the dataset: no absolute paths, drives or '..' (they once reached
    any file the user can read, as image and as annotation)."""
    (tmp_path / "ImageSets" / "DET").mkdir(parents=True)
    (tmp_path / "Annotations" / "DET" / "val").mkdir(parents=True)
    (tmp_path / "Data" / "DET" / "val").mkdir(parents=True)
    (tmp_path / "ImageSets" / "DET" / "val.txt").write_text(f"ok 1\n{name} 2\n")
    with pytest.raises(ValueError, match="val.txt:2: image name .* points outside"):
        read_ilsvrc_det(tmp_path, "val", check_images=False)
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "test.txt").write_text(f"ok\n{name}\n")
    with pytest.raises(ValueError, match="test.txt: image name .* points outside"):
        read_voc(voc, "test")
    with pytest.raises(ValueError, match="points outside"):
        ImageFinder(tmp_path).find(name)
