import numpy as np
import pytest
import torch
from PIL import Image

from detect.classes import ClassList, ilsvrc_det_classes, read_class_list, write_class_list
from detect.data.images import ImageError, read_image
from detect.io import atomic_open, atomic_torch_save, atomic_write_json, digest, load_checkpoint


def test_ilsvrc_classes_official_order():
    classes = ilsvrc_det_classes()
    assert len(classes) == 200
    assert classes.names[0] == "accordion" and classes.wnids[0] == "n02672831"
    assert classes.index("n02691156") == 1 and classes.index("airplane") == 1
    assert classes.names[-1] == "zebra"
    with pytest.raises(KeyError):
        classes.index("n00000000")


def test_packaged_class_list_equals_shared_copy(shared_data):
    assert read_class_list(shared_data / "ilsvrc" / "classes.tsv") == ilsvrc_det_classes()


def test_class_list_round_trip_and_errors(tmp_path):
    classes = ClassList(("a1", "b2"), ("apple", "banana split"))
    write_class_list(classes, tmp_path / "c.tsv")
    assert read_class_list(tmp_path / "c.tsv") == classes
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert read_class_list(tmp_path / "names.txt").names == ("cat", "dog")
    (tmp_path / "bad.tsv").write_text("1\tx\tone\n3\ty\tthree\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        read_class_list(tmp_path / "bad.tsv")
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_class_list(tmp_path / "missing.tsv")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\ndog\n".encode("latin-1"))  # saved by an editor in Latin-1
    with pytest.raises(ValueError, match=r"latin1.txt: a class list must be UTF-8 text \(byte 3"):
        read_class_list(tmp_path / "latin1.txt")
    with pytest.raises(ValueError):
        ClassList(("a", "a"), ("x", "y"))


def test_atomic_open_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("partial")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert list(tmp_path.iterdir()) == [target]


def test_checkpoint_round_trip_and_refuses_pickled_code(tmp_path):
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["w"], torch.arange(3))
    torch.save({"f": Image.new("RGB", (2, 2))}, tmp_path / "evil.pt")  # arbitrary object: refused
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:50])
    with pytest.raises(ValueError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda: Image.fromarray(np.full((5, 7), 100, np.uint8), "L")),
        ("RGBA", lambda: Image.fromarray(np.zeros((5, 7, 4), np.uint8), "RGBA")),
        ("P", lambda: Image.fromarray(np.zeros((5, 7, 3), np.uint8)).convert("P")),
        ("I;16", lambda: Image.fromarray(np.full((5, 7), 65535, np.uint16))),
        ("CMYK", lambda: Image.fromarray(np.zeros((5, 7, 3), np.uint8)).convert("CMYK")),
    ],
)
def test_read_image_converts_every_mode_to_rgb(tmp_path, mode, make):
    path = tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png")
    make().save(path)
    arr = read_image(path)
    assert arr.shape == (5, 7, 3) and arr.dtype == np.uint8
    if mode == "RGBA":  # fully transparent -> composited on white
        assert arr.min() == 255
    if mode == "I;16":
        assert arr.max() == 255


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="nothere.jpg: file not found"):
        read_image(tmp_path / "nothere.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="text.jpg"):
        read_image(tmp_path / "text.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_digest_covers_values_order_free_keys_and_array_contents():
    """One recipe for every fingerprint: dict key order does not matter; a changed value, dtype, shape
    or byte of an array or tensor does; ``length`` truncates."""
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) != digest({"a": "1"})
    base = np.arange(6, dtype=np.float32)
    assert digest(base) == digest(base.copy())
    for other in (base.astype(np.float64), base.reshape(2, 3), base + np.float32(1e-6) * (np.arange(6) == 5)):
        assert digest(other) != digest(base)
    t = torch.arange(4, dtype=torch.bfloat16)
    assert digest(t) == digest(t.clone()) and digest(t) != digest(t.float())
    assert digest({"w": t, "x": [base]}) != digest({"w": t, "x": [base[::-1].copy()]})
    assert digest(b"abc") != digest(b"abd") and len(digest("x", 12)) == 12


def test_digest_of_dicts_holding_arrays_does_not_depend_on_key_order():
    a, b = np.arange(3), torch.ones(2)
    assert digest({"x": a, "y": b}) == digest({"y": b, "x": a})
    assert digest({"x": a, "y": b}) != digest({"x": b, "y": a})


def test_read_image_returns_the_frame_the_annotation_was_drawn_in(tmp_path):
    """A 40x20 photo whose EXIF turns it by 90 degrees (orientation 6) is shown 20x40; annotated at 20x40
    (the tool applied EXIF) it comes oriented, at 40x20 (labelImg, MATLAB) as stored; at any other size its
    boxes cannot fit it, and the error names the file and both sizes."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white left edge in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    assert read_image(path).shape == (40, 20, 3)
    assert read_image(path, (20, 40)).shape == (40, 20, 3)
    assert read_image(path, (0, 0)).shape == (40, 20, 3)
    raw = read_image(path, (40, 20))
    assert raw.shape == (20, 40, 3) and raw[:, :8].min() > 200 and raw[:, 12:].max() < 60
    with pytest.raises(ImageError, match=r"turned.jpg: the image is 20x40 pixels but its annotation says 30x30"):
        read_image(path, (30, 30))
