"""Classes of a VOC-layout folder of one's own, taken from its training split's annotations."""
import os

import pytest

from detect.data.voc import VOC_CLASSES, discover_voc_classes, read_voc


def _voc(root, splits: dict[str, dict[str, list[str]]]):
    """``splits``: split -> image name -> object names; 1-based boxes inside 100x80 images."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))
        for name, objects in images.items():
            objs = "".join(f"<object><name>{o}</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
                           f"<xmax>40</xmax><ymax>50</ymax></bndbox></object>" for o in objects)
            (root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><size><width>100</width><height>80</height></size>{objs}</annotation>")
            (root / "JPEGImages" / f"{name}.JPG").write_bytes(b"not decoded by the reader")


def test_sorted_names_of_the_training_split_shared_by_every_split(tmp_path):
    _voc(tmp_path, {"trainval": {"a": ["zebra", "Apple"], "b": ["mango", " zebra "], "c": []},
                    "test": {"t": ["mango", "kiwi"]}})  # kiwi appears in the test split only
    classes = discover_voc_classes(tmp_path, "trainval")
    assert classes.names == ("Apple", "mango", "zebra") and classes.wnids == classes.names  # string order
    train = read_voc(tmp_path, "trainval", classes_from="trainval")
    test = read_voc(tmp_path, "test", classes_from="trainval")
    assert train.classes == test.classes == classes
    assert test.records[0].labels.tolist() == [1]  # mango; kiwi is not a class of the training split
    assert len(test.skipped) == 1 and "unknown class" in test.skipped.entries[0][1]
    assert read_voc(tmp_path, "test").classes.names == VOC_CLASSES  # without classes_from: the 20 VOC classes


def test_real_voc_names_come_out_in_the_standard_order(tmp_path):
    _voc(tmp_path, {"trainval": {f"i{k}": [name] for k, name in enumerate(reversed(VOC_CLASSES))}})
    assert discover_voc_classes(tmp_path, "trainval").names == VOC_CLASSES


def test_cached_and_refreshed_when_an_annotation_changes(tmp_path):
    root, cache = tmp_path / "voc", tmp_path / "cache"
    _voc(root, {"trainval": {"a": ["cat"], "b": ["dog"]}})
    assert discover_voc_classes(root, "trainval", cache).names == ("cat", "dog")
    assert len(list(cache.glob("voc_trainval_classes_*.json"))) == 1
    xml = root / "Annotations" / "b.xml"
    xml.write_text(xml.read_text().replace("dog", "owl"))
    os.utime(xml, ns=(xml.stat().st_atime_ns, xml.stat().st_mtime_ns + 10**9))
    assert discover_voc_classes(root, "trainval", cache).names == ("cat", "owl")


def test_no_names_is_an_error_naming_the_list(tmp_path):
    _voc(tmp_path, {"trainval": {"a": [], "b": []}})
    with pytest.raises(ValueError, match=r"trainval.txt: no object names.*data.classes"):
        discover_voc_classes(tmp_path, "trainval")


def test_split_folders_with_the_xml_beside_each_image(tmp_path):
    """A Roboflow "Pascal VOC" export (train/, valid/, test/, each image with its XML beside it) reads as
    the same dataset as the VOC layout; a split found in neither layout names both and the folders seen."""
    voc, flat = tmp_path / "voc", tmp_path / "flat"
    _voc(voc, {"trainval": {"a": ["zebra", "Apple"], "b": ["mango"]}, "test": {"t": ["mango", "zebra"]}})
    for split, folder in (("trainval", "train"), ("test", "test")):
        (flat / folder).mkdir(parents=True)
        for name in (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            for src in (voc / "Annotations" / f"{name}.xml", voc / "JPEGImages" / f"{name}.JPG"):
                (flat / folder / src.name).write_bytes(src.read_bytes())
    for (split, folder) in (("trainval", "train"), ("test", "test")):
        a = read_voc(voc, split, classes_from="trainval", check_images=False)
        b = read_voc(flat, folder, classes_from="train", check_images=False)
        assert a.classes == b.classes and [r.image_id for r in a.records] == [r.image_id for r in b.records]
        assert all((x.boxes == y.boxes).all() and (x.labels == y.labels).all() for x, y in zip(a.records, b.records))
        assert [r.path.parent for r in b.records] == [flat / folder] * len(b.records)
    both = read_voc(flat, ["train", "test"], classes_from=["train", "test"], check_images=False)
    assert [r.image_id for r in both.records] == ["train/a", "train/b", "test/t"] and both.name == "voc_train+test"
    assert [r.index for r in both.records] == [1, 2, 3] and both.classes == a.classes
    assert (both.records[2].boxes == b.records[0].boxes).all()
    with pytest.raises(FileNotFoundError, match=r"split 'trainval' not found: neither .*trainval.txt .* nor a folder "
                                                r".*folders with annotation XML here: test, train"):
        read_voc(flat, "trainval", classes_from="trainval")


@pytest.mark.parametrize("split", [[], ["train", "train"]])
def test_an_empty_or_repeated_split_list_is_refused(tmp_path, split):
    """A list of no split would read nothing, a repeated name every image twice (duplicate ground truth):
    both are refused by name, as the COCO reader refuses them."""
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=r"VOC split=\[.*\]: give one or more distinct names"):
        read_voc(tmp_path, split, check_images=False)
    with pytest.raises(ValueError, match="VOC split=.*distinct names"):
        discover_voc_classes(tmp_path, split)
