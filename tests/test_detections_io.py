"""Detection files: ILSVRC submission and COCO results round trips, malformed input, the resumable writer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detect.classes import ClassList
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog
from detect.detections import (
    Detections,
    SubmissionWriter,
    read_coco_results,
    read_detections,
    read_ilsvrc_submission,
    write_coco_results,
    write_detections,
    write_ilsvrc_submission,
)


def random_dets(seed=0, n=50, num_images=5, num_classes=3):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2)).astype(np.float32)
    return Detections(rng.integers(1, num_images + 1, n), rng.integers(0, num_classes, n),
                      rng.random(n).astype(np.float32), np.hstack([xy, xy + rng.uniform(1, 100, (n, 2))]))


def assert_same(a: Detections, b: Detections):
    np.testing.assert_array_equal(a.image_index, b.image_index)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def tiny_dataset(image_ids=("9", "25", "30"), wnids=("1", "3", "7")):
    recs = [DetectionRecord(i, Path(f"{i}.jpg"), 640, 480, np.zeros((0, 4)), [], [], index=k + 1)
            for k, i in enumerate(image_ids)]
    return DetectionDataset(recs, ClassList(tuple(wnids), tuple(f"n{w}" for w in wnids)), name="tiny")


def test_detections_helpers():
    d = random_dets()
    assert len(Detections.concat([d.select(slice(0, 10)), d.select(slice(10, None))])) == len(d)
    assert_same(Detections.concat([d.select(slice(0, 10)), d.select(slice(10, None))]), d)
    assert len(Detections.concat([])) == 0 and len(d.select(d.labels == 1)) == int((d.labels == 1).sum())
    one = Detections.for_image(4, [2], [0.5], [[1, 2, 3, 4]])
    assert one.image_index.tolist() == [4] and one.boxes.dtype == np.float32
    with pytest.raises(ValueError, match="lengths differ"):
        Detections([1, 2], [0], [0.5], [[0, 0, 1, 1]])


def test_ilsvrc_round_trip_exact(tmp_path):
    d = random_dets()
    write_ilsvrc_submission(tmp_path / "det.txt", d)
    first = (tmp_path / "det.txt").read_text().splitlines()[0].split()
    assert int(first[0]) == d.image_index[0] and int(first[1]) == d.labels[0] + 1  # DET_ID = label + 1
    assert_same(read_ilsvrc_submission(tmp_path / "det.txt", num_classes=3), d)


def test_ilsvrc_malformed_lines_reported_and_skipped(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("1 1 0.5 0 0 10 10\n"
                 "1 1 0.5 0 0 10\n"          # 6 fields
                 "\n"
                 "x 1 0.5 0 0 10 10\n"       # non-numeric
                 "2 0 0.5 0 0 10 10\n"       # DET_ID 0
                 "2 4 0.5 0 0 10 10\n"       # DET_ID > 3
                 "0 1 0.5 0 0 10 10\n"       # image index 0
                 "2 2 nan 0 0 10 10\n"       # non-finite
                 "2 2 0.5 10 0 0 10\n"       # xmax < xmin
                 "3 3 0.25 1.5 2.5 30 40\n")
    skipped = SkipLog("lines")
    d = read_ilsvrc_submission(p, num_classes=3, skipped=skipped)
    assert d.image_index.tolist() == [1, 3] and d.labels.tolist() == [0, 2]
    assert len(skipped) == 7
    assert [e[0] for e in skipped.entries] == [f"{p}:{n}" for n in (2, 4, 5, 6, 7, 8, 9)]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_ilsvrc_submission(tmp_path / "missing.txt")


def test_coco_results_round_trip_and_mapping(tmp_path):
    ds = tiny_dataset()
    d = random_dets(num_images=3)
    write_coco_results(tmp_path / "r.json", d, ds)
    entries = json.loads((tmp_path / "r.json").read_text())
    assert {e["image_id"] for e in entries} <= {9, 25, 30} and {e["category_id"] for e in entries} <= {1, 3, 7}
    e, k = entries[0], 0
    assert e["bbox"][2] == pytest.approx(float(d.boxes[k, 2] - d.boxes[k, 0]))
    back = read_coco_results(tmp_path / "r.json", ds)
    assert_same(Detections(back.image_index, back.labels, back.scores, d.boxes), d)
    np.testing.assert_allclose(back.boxes, d.boxes, atol=1e-4)
    # non-integer ids: image_id = record index, category_id = label + 1
    named = tiny_dataset(("a", "b", "c"), ("n1", "n2", "n3"))
    write_detections(tmp_path / "n.json", d, named)
    assert {e["image_id"] for e in json.loads((tmp_path / "n.json").read_text())} <= {1, 2, 3}
    assert_same(read_detections(tmp_path / "n.json", named).select(slice(None)), read_coco_results(tmp_path / "n.json", named))


def test_coco_results_bad_entries_skipped(tmp_path):
    ds = tiny_dataset()
    (tmp_path / "r.json").write_text(json.dumps([
        {"image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 10, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 9, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 9, "category_id": 3, "bbox": [1, 2, -3, 4], "score": 0.5},
        {"image_id": 9, "category_id": 3, "score": 0.5},
    ]))
    skipped = SkipLog()
    d = read_coco_results(tmp_path / "r.json", ds, skipped)
    assert len(d) == 1 and d.labels.tolist() == [1] and d.boxes.tolist() == [[1, 2, 4, 6]]
    assert len(skipped) == 4 and skipped.entries[0][0].endswith("entry 1")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json"):
        read_coco_results(tmp_path / "x.json", ds)


def test_format_from_extension(tmp_path):
    ds, d = tiny_dataset(), random_dets(num_images=3)
    write_detections(tmp_path / "a.txt", d, ds)
    assert_same(read_detections(tmp_path / "a.txt", ds), d)
    assert_same(read_detections(tmp_path / "a.txt", ds, format="ilsvrc"), d)
    with pytest.raises(ValueError, match="extension"):
        write_detections(tmp_path / "a.pkl", d, ds)


def test_submission_writer_resumes_after_a_crash(tmp_path):
    d = random_dets(n=40, num_images=6)
    path = tmp_path / "run" / "det.txt"
    with SubmissionWriter(path, resume=True) as w:
        for i in (1, 2, 3):
            w.add(i, d.select(d.image_index == i))
    # a crash while writing image 4: some lines written, a torn last line, image not marked done
    part = d.select(d.image_index == 4)
    with open(path, "a") as f:
        f.write("4 1 0.5 1 2 3 4\n4 2 0.")
    w = SubmissionWriter(path, resume=True)
    assert w.done == {1, 2, 3}
    for i in (4, 5, 6):
        w.add(i, d.select(d.image_index == i))
    w.close()
    got = read_ilsvrc_submission(path)
    order = np.argsort(d.image_index, kind="stable")
    assert_same(got, d.select(order))
    assert len(part) == int((got.image_index == 4).sum())
    with pytest.raises(ValueError, match="other images"):
        with SubmissionWriter(path, resume=True) as w2:
            assert w2.done == {1, 2, 3, 4, 5, 6}
            w2.add(7, d.select(d.image_index == 1))
    with SubmissionWriter(path, resume=False) as w3:
        assert w3.done == set()
    assert path.read_text() == ""
