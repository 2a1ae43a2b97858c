"""Dataset readers: the real ILSVRC XMLs/lists/blacklist, COCO128 counts, a hand-made VOC tree, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detect.classes import ClassList, ilsvrc_det_classes
from detect.data import read_coco, read_dataset, read_ilsvrc_det, read_image_folder, read_voc
from detect.data.ilsvrc import parse_ilsvrc_xml, read_blacklist, read_image_list

REAL = {  # name: (val index, val2 index, number of objects) from the shared val.txt / val2.txt / XMLs
    "ILSVRC2012_val_00000022": (6, 9141, 9),
    "ILSVRC2012_val_00000166": (47, 57, 0),
    "ILSVRC2012_val_00000347": (93, 4996, 18),
    "ILSVRC2013_val_00000001": (15523, 4582, 1),
    "ILSVRC2013_val_00000010": (15532, 4622, 18),
}
PERSON = ilsvrc_det_classes().index("n00007846")


def _jpeg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))


@pytest.fixture
def tree_2014(shared_data, tmp_path) -> Path:
    """A 2013/2014-layout tree: the 5 real XMLs, blank JPEGs of their sizes, a devkit list of their lines."""
    classes = ilsvrc_det_classes()
    for name in REAL:
        xml = shared_data / "ilsvrc" / "xml" / f"{name}.xml"
        (tmp_path / "ILSVRC2013_DET_bbox_val").mkdir(exist_ok=True)
        (tmp_path / "ILSVRC2013_DET_bbox_val" / xml.name).symlink_to(xml)
        p = parse_ilsvrc_xml(xml, classes)
        _jpeg(tmp_path / "ILSVRC2013_DET_val" / f"{name}.JPEG", p.width, p.height)
    lists = tmp_path / "devkit" / "data" / "det_lists"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("".join(f"{n} {v[0]}\n" for n, v in sorted(REAL.items(), key=lambda kv: kv[1][0])))
    return tmp_path


def test_real_lists_and_blacklist(shared_data):
    ilsvrc = shared_data / "ilsvrc"
    val = read_image_list(ilsvrc / "val.txt")
    assert len(val) == 20121 and val[0] == ("ILSVRC2012_val_00000001", 1) and val[-1][1] == 20121
    assert len(read_image_list(ilsvrc / "val1.txt")) + len(read_image_list(ilsvrc / "val2.txt")) == 9887 + 9917
    blacklist = read_blacklist(ilsvrc / "ILSVRC2014_det_validation_blacklist.txt", ilsvrc_det_classes())
    assert len(blacklist) == 409 and (46, PERSON) in blacklist and (85, ilsvrc_det_classes().index("n07753275")) in blacklist


def test_real_xmls(shared_data):
    classes = ilsvrc_det_classes()
    for name, (_, _, count) in REAL.items():
        p = parse_ilsvrc_xml(shared_data / "ilsvrc" / "xml" / f"{name}.xml", classes)
        assert p.problems == () and p.error is None and len(p.boxes) == len(p.labels) == count
        assert p.boxes.dtype == np.float32 and p.labels.dtype == np.int64
        assert np.all(p.boxes[:, 2] <= p.width - 1) and np.all(p.boxes[:, 3] <= p.height - 1)
    p = parse_ilsvrc_xml(shared_data / "ilsvrc" / "xml" / "ILSVRC2012_val_00000022.xml", classes)
    assert (p.width, p.height) == (375, 500)
    np.testing.assert_array_equal(p.boxes[0], [8, 95, 155, 498])  # stored values, no conversion
    assert p.labels[0] == PERSON
    assert (p.boxes[:, 2] - p.boxes[:, 0]).min() == 12  # the small objects are there


def test_2014_layout(tree_2014):
    ds = read_ilsvrc_det(tree_2014, "val")
    assert len(ds.classes) == 200 and len(ds.skipped) == 0
    assert [r.index for r in ds] == sorted(v[0] for v in REAL.values())
    by_name = {r.image_id: r for r in ds}
    assert {n: len(r.boxes) for n, r in by_name.items()} == {n: v[2] for n, v in REAL.items()}
    assert by_name["ILSVRC2012_val_00000022"].width == 375
    assert all(not r.ignore.any() for r in ds)


def test_val2_list_and_blacklist_mapping(tree_2014, tmp_path):
    val2 = tmp_path / "val2_subset.txt"
    val2.write_text("".join(f"{n} {v[1]}\n" for n, v in REAL.items()))
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("6 n00007846\n46 n00007846\n")  # val index 6 is val_00000022; 46 is not in our list
    ds = read_ilsvrc_det(tree_2014, "val", image_list=val2, blacklist=blacklist)
    assert [r.index for r in ds] == [v[1] for v in REAL.values()]  # the list's own index column
    assert ds.blacklist == {(9141, PERSON)}  # mapped from val index 6 to val2 index 9141
    assert read_ilsvrc_det(tree_2014, "val", blacklist=blacklist).blacklist == {(6, PERSON), (46, PERSON)}


XML = """<annotation><folder>val</folder><filename>{name}</filename>{size}{objects}</annotation>"""
SIZE = "<size><width>100</width><height>80</height></size>"


def _obj(name, x1, y1, x2, y2):
    return (f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object>")


@pytest.fixture
def bad_tree(tmp_path) -> Path:
    """A 2015-layout tree with one problem per image."""
    good = _obj("n00007846", 10, 10, 50, 60)
    files = {
        "good": XML.format(name="good", size=SIZE, objects=good + _obj("n02084071", 0, 0, 99, 79)),
        "malformed": "<annotation><size><width>100</wid",
        "outside": XML.format(name="outside", size=SIZE, objects=good + _obj("n00007846", 50, 10, 140, 60)),
        "inverted": XML.format(name="inverted", size=SIZE, objects=good + _obj("n00007846", 50, 10, 40, 60)),
        "unknown": XML.format(name="unknown", size=SIZE, objects=_obj("n99999999", 1, 1, 5, 5) + good),
        "nosize": XML.format(name="nosize", size="", objects=good),
        "missing": None,
    }
    for name, text in files.items():
        _jpeg(tmp_path / "Data" / "DET" / "val" / f"{name}.JPEG", 64 if name == "nosize" else 100, 80)
        if text is not None:
            (tmp_path / "Annotations" / "DET" / "val").mkdir(parents=True, exist_ok=True)
            (tmp_path / "Annotations" / "DET" / "val" / f"{name}.xml").write_text(text)
    (tmp_path / "ImageSets" / "DET").mkdir(parents=True)
    (tmp_path / "ImageSets" / "DET" / "val.txt").write_text(
        "".join(f"{n} {i}\n" for i, n in enumerate(list(files) + ["noimage"], 1)))
    return tmp_path


def test_bad_input_is_counted_and_skipped(bad_tree):
    with pytest.raises(FileNotFoundError, match=r"1 of 8 images not found .* as <name>\.JPEG"):
        read_ilsvrc_det(bad_tree, "val")  # 1 in 8 missing: more than the default 10 %
    ds = read_ilsvrc_det(bad_tree, "val", max_missing_images=0.2)
    by_name = {r.image_id: r for r in ds}
    assert sorted(by_name) == ["good", "inverted", "nosize", "outside", "unknown"]
    assert len(by_name["good"].boxes) == 2
    for name in ("inverted", "unknown"):  # the bad object dropped, the good one kept
        np.testing.assert_array_equal(by_name[name].boxes, [[10, 10, 50, 60]])
    # a box reaching past the image is kept exactly as stored (the devkit scores it so), with a warning
    np.testing.assert_array_equal(by_name["outside"].boxes, [[10, 10, 50, 60], [50, 10, 140, 60]])
    assert (by_name["nosize"].width, by_name["nosize"].height) == (64, 80)  # read from the image header
    assert by_name["outside"].index == 3
    kinds = sorted(reason.split(":")[0] for _, reason in ds.skipped.entries)
    assert kinds == ["inverted box", "missing annotation", "missing image", "unknown class", "unreadable annotation"]
    files = {Path(f).name for f, _ in ds.skipped.entries}
    assert {"malformed.xml", "missing.xml", "inverted.xml", "noimage.JPEG"} <= files
    assert "5 annotations skipped" in ds.skipped.summary()
    warned = sorted((Path(f).name, r.split(":")[0]) for f, r in ds.warnings.entries)
    assert warned == [("nosize.xml", "size repaired from the image"), ("outside.xml", "box outside the image")]
    assert "kept with a warning" in ds.summary()
    kept = read_ilsvrc_det(bad_tree, "val", missing_annotation="empty", max_missing_images=0.2)
    missing = [r for r in kept if r.image_id == "missing"][0]
    assert len(missing.boxes) == 0 and (missing.width, missing.height) == (100, 80)


def test_malformed_xml_error_names_file(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="x.xml: malformed XML"):
        parse_ilsvrc_xml(path, ilsvrc_det_classes())
    path.write_text('<!DOCTYPE a [<!ENTITY e "boom">]><annotation>&e;</annotation>')
    with pytest.raises(ValueError, match="x.xml"):
        parse_ilsvrc_xml(path, ilsvrc_det_classes())


def test_2015_train_list_with_subfolders_and_own_classes(tmp_path):
    name = "ILSVRC2013_train/n01440764/n01440764_10026"
    _jpeg(tmp_path / "Data" / "DET" / "train" / f"{name}.JPEG", 100, 80)
    xml = tmp_path / "Annotations" / "DET" / "train" / f"{name}.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(XML.format(name=name, size=SIZE, objects=_obj("n99000001", 1, 2, 3, 4)))
    (tmp_path / "ImageSets" / "DET").mkdir(parents=True)
    (tmp_path / "ImageSets" / "DET" / "train.txt").write_text(f"{name} 1\n")
    (tmp_path / "classes.tsv").write_text("index\twnid\tname\n1\tn99000000\ta\n2\tn99000001\tb\n")
    ds = read_ilsvrc_det(tmp_path, "train")
    assert len(ds) == 1 and ds.classes.names == ("a", "b") and ds[0].labels.tolist() == [1]
    with pytest.raises(FileNotFoundError, match="nothing: dataset folder not found"):
        read_ilsvrc_det(tmp_path / "nothing", "val")


def test_coco128(shared_data):
    coco = shared_data / "coco128"
    ds = read_coco(coco / "annotations" / "instances_train2017.json", coco / "images" / "train2017")
    # 80 categories, 71 with a box: the 9 without one are no classes (issue 22)
    assert len(ds) == 128 and len(ds.classes) == 71 and len(ds.skipped) == 0
    assert sum(len(r.boxes) for r in ds) == 939
    assert sum(int(r.ignore.sum()) for r in ds) == 10
    assert len(np.unique(np.concatenate([r.labels for r in ds]))) == 71
    assert sum(len(r.boxes) == 0 for r in ds) == 2
    assert ds.classes.wnids[0] == "1" and ds.classes.names[0] == "person"
    assert all(r.path.is_file() for r in ds)
    first = ds[0]
    assert first.image_id == "9" and first.index == 1
    data = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    ann = next(a for a in data["annotations"] if a["image_id"] == 9)
    x, y, w, h = ann["bbox"]
    assert any(np.allclose(b, [x, y, x + w, y + h]) for b in first.boxes)


def test_coco_degenerate_and_unknown(tmp_path):
    data = {"images": [{"id": 5, "file_name": "a.jpg", "width": 10, "height": 10},
                       {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [1, 2, 0, 4], "iscrowd": 0},
                            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"id": 4, "image_id": 5, "category_id": 4, "bbox": [1, 2, 3, 4], "iscrowd": 0}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    ds = read_coco(path, tmp_path, check_images=False)
    assert ds.classes == ClassList(("7",), ("cat",))  # "dog" has no usable box: no class (issue 22)
    assert [r.image_id for r in ds] == ["2", "5"] and len(ds[0].boxes) == 0
    np.testing.assert_array_equal(ds[1].boxes, [[1, 2, 4, 6]])
    assert ds[1].labels.tolist() == [0]
    assert sorted(r.split(":")[0] for _, r in ds.skipped.entries) == ["degenerate box", "unknown class", "unknown image"]


VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>50</width><height>40</height><depth>3</depth></size>
{objects}</annotation>"""


def _voc_obj(name, box, difficult=0):
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def test_voc_tiny_tree(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    (root / "Annotations" / "000001.xml").write_text(VOC_XML.format(
        name="000001", objects=_voc_obj("dog", (1, 1, 50, 40)) + _voc_obj("person", (10, 5, 20, 30), difficult=1)))
    (root / "Annotations" / "000002.xml").write_text(VOC_XML.format(
        name="000002", objects=_voc_obj("unicorn", (1, 1, 5, 5)) + _voc_obj("cat", (3, 3, 60, 9))))
    (root / "Annotations" / "000003.xml").write_text("not xml")
    _jpeg(root / "JPEGImages" / "000001.jpg", 50, 40)
    _jpeg(root / "JPEGImages" / "000002.JPG", 50, 40)  # found whatever the extension's case
    _jpeg(root / "JPEGImages" / "000003.jpeg", 50, 40)
    ds = read_voc(root, "test")
    assert len(ds.classes) == 20 and ds.classes.names[0] == "aeroplane" and ds.classes.names[-1] == "tvmonitor"
    assert [r.image_id for r in ds] == ["000001", "000002"] and ds[0].path == root / "JPEGImages" / "000001.jpg"
    assert ds[1].path == root / "JPEGImages" / "000002.JPG"
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 49, 39], [9, 4, 19, 29]])  # 1-based -> 0-based
    assert ds[0].labels.tolist() == [ds.classes.index("dog"), ds.classes.index("person")]
    assert ds[0].ignore.tolist() == [False, True]
    np.testing.assert_array_equal(ds[1].boxes, [[2, 2, 59, 8]])  # outside the 50 x 40 image: kept as stored
    assert sorted(r.split(":")[0] for _, r in ds.skipped.entries) == ["unknown class", "unreadable annotation"]
    assert [r.split(":")[0] for _, r in ds.warnings.entries] == ["box outside the image"]
    assert read_voc(root, "test", use_difficult=False)[0].labels.tolist() == [ds.classes.index("dog")]


def test_image_folder_and_dispatch(tmp_path):
    _jpeg(tmp_path / "b" / "z.jpg", 30, 20)
    _jpeg(tmp_path / "a.JPEG", 10, 12)
    (tmp_path / "b" / "c").mkdir()
    cv2.imwrite(str(tmp_path / "b" / "c" / "y.png"), np.zeros((5, 6, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    ds = read_dataset({"_target_": "detect.data.read_image_folder", "paths": [str(tmp_path)]})
    assert [r.path.relative_to(tmp_path).as_posix() for r in ds] == ["a.JPEG", "b/c/y.png", "b/z.jpg"]
    assert [(r.width, r.height) for r in ds] == [(10, 12), (6, 5), (30, 20)]
    assert [r.index for r in ds] == [1, 2, 3] and all(len(r.boxes) == 0 for r in ds)
    assert len(ds.skipped) == 1
    assert len(read_image_folder(tmp_path / "a.JPEG")) == 1
    with pytest.raises(FileNotFoundError, match="nope"):
        read_image_folder([tmp_path / "nope"])


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return compose(config_name="make_synthetic", overrides=overrides)


def test_data_configs_instantiate(shared_data, tree_2014, tmp_path):
    from hydra.utils import instantiate

    work = f"work_dir={tmp_path / 'work'}"
    coco = _compose(["data=coco", f"data.root={shared_data / 'coco128'}", "data.val_name=train2017", work])
    assert len(instantiate(coco.data.train_full)) == 128 and len(instantiate(coco.data.val)) == 128
    train, monitor = instantiate(coco.data.train), instantiate(coco.data.monitor)  # the held-out share
    assert len(train) + len(monitor) == 128 and 0 < len(monitor) < 30
    assert not {r.image_id for r in train} & {r.image_id for r in monitor}

    val2 = tmp_path / "val2.txt"
    val2.write_text("".join(f"{n} {v[1]}\n" for n, v in REAL.items()))
    blacklist = shared_data / "ilsvrc" / "ILSVRC2014_det_validation_blacklist.txt"
    old = _compose(["data=ilsvrc2014", f"data.root={tree_2014}", f"data.val2_list={val2}", f"data.blacklist={blacklist}",
                    "experiment=ilsvrc14", "data.train_full.image_list=null", work])
    assert [r.index for r in instantiate(old.data.val)] == [v[1] for v in REAL.values()]  # the recipe's val2
    assert len(instantiate(old.data.train_full)) == 5  # the devkit's val list (the recipe trains on split val)
    assert len(instantiate(old.data.train)) + len(instantiate(old.data.monitor)) == 5
    plain = _compose(["data=ilsvrc2014", f"data.root={tree_2014}", work])
    assert [r.index for r in instantiate(plain.data.val)] == sorted(v[0] for v in REAL.values())  # official val

    new_root = tmp_path / "ilsvrc2015"
    (new_root / "Data" / "DET").mkdir(parents=True)
    (new_root / "Data" / "DET" / "val").symlink_to(tree_2014 / "ILSVRC2013_DET_val")
    (new_root / "Annotations" / "DET").mkdir(parents=True)
    (new_root / "Annotations" / "DET" / "val").symlink_to(tree_2014 / "ILSVRC2013_DET_bbox_val")
    (new_root / "ImageSets" / "DET").mkdir(parents=True)
    shutil.copy(tree_2014 / "devkit" / "data" / "det_lists" / "val.txt", new_root / "ImageSets" / "DET" / "val.txt")
    new = _compose(["data=ilsvrc", f"data.root={new_root}", work])
    ds = instantiate(new.data.val)
    assert len(ds) == 5 and ds[0].index == 6
    assert list((tmp_path / "work" / "cache").glob("ilsvrc_2015_val_*.npz"))  # parsed XML cached in the work dir

    with pytest.raises(Exception, match="root"):
        instantiate(_compose(["data=voc"]).data.val)  # root: ??? must be given
