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
    read_coco_results,
    read_detections,
    read_ilsvrc_submission,
    write_coco_results,
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
                 "2 2 0.5 10 0 0 10\n"       # xmax < xmin: a valid line (the user's output), kept
                 "1.0 2 0.5 0 0 4 4\n"       # a non-integer image index
                 "2 3 0.4 7 7 7 9\n"         # zero width: kept
                 "3 3 0.25 1.5 2.5 30 40\n")
    skipped = SkipLog("lines")
    d = read_ilsvrc_submission(p, num_classes=3, skipped=skipped)
    assert d.image_index.tolist() == [1, 2, 2, 3] and d.labels.tolist() == [0, 1, 2, 2]
    np.testing.assert_array_equal(d.boxes[1], [10, 0, 0, 10])  # as written, not reordered or clipped
    assert [e[0] for e in skipped.entries] == [f"{p}:{n}" for n in (2, 4, 5, 6, 7, 8, 10)]
    reasons = [e[1] for e in skipped.entries]
    assert reasons[0] == "malformed line: expected 7 fields, got 6"
    assert reasons[2].startswith("unknown class: DET_ID 0") and reasons[3].startswith("unknown class: DET_ID 4")
    assert "non-finite" in reasons[5] and "non-integer" in reasons[6]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_ilsvrc_submission(tmp_path / "missing.txt")


def test_ilsvrc_unknown_images_reported_by_line(tmp_path):
    p = tmp_path / "det.txt"
    p.write_text("1 1 0.5 0 0 10 10\n7 1 0.5 0 0 10 10\n3 2 0.5 0 0 10 10\n")
    skipped = SkipLog("lines")
    d = read_ilsvrc_submission(p, 3, skipped, known_images=[1, 2, 3])
    assert d.image_index.tolist() == [1, 3]
    assert skipped.entries == [(f"{p}:2", "unknown image: index 7 is not in the dataset (not listed, or its "
                                          "annotation was skipped)")]


def _slow_read(path, num_classes, known):
    """Plain per-line reference of read_ilsvrc_submission: the lines kept and the line numbers skipped."""
    kept, bad = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            i, c = int(parts[0]), int(parts[1])
            v = [float(x) for x in parts[2:]]
            ok = len(parts) == 7 and i >= 1 and 1 <= c <= num_classes and all(np.isfinite(v)) and i in known
        except (ValueError, IndexError):
            ok = False
        if ok:
            kept.append((i, c - 1, *v))
        else:
            bad.append(n)
    return kept, bad


VARIANTS = {  # extra line kinds mixed into a random file; whether the numpy fast path should take it
    "plain": ([], True),
    "crlf_tabs_and_odd_ids": (["1.0 2 0.5 1 2 3 4", "+3 1 0.5 1 2 3 4", "4 2e0 0.5 1 2 3 4", "5 1 1e-3 -1.5e2 2 3 4"], True),
    "hex_and_underscores": (["0x10 1 0.5 1 2 3 4", "3 1 0.5 1_0 2 3 4"], False),
    "words": (["3 1 abc 1 2 3 4", "# a comment"], False),
    "unicode": (["3 1 0.5 1 2 3 4 é"], False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("seed", range(3))
def test_vectorised_submission_reader_equals_line_by_line(tmp_path, monkeypatch, seed, variant):
    import detect.detections as det_io

    rng = np.random.default_rng(seed)
    extra, fast_expected = VARIANTS[variant]
    lines = []
    for _ in range(300):
        r = rng.random()
        i, c = int(rng.integers(0, 12)), int(rng.integers(0, 6))
        box = rng.uniform(-20, 300, 4).round(2).tolist()  # inverted, zero-size and off-image boxes included
        if r < 0.05:
            lines.append(f"{i} {c} 0.5 1 2")
        elif r < 0.07:
            lines.append(f"{i} {c} 0.5 1 2 3 4 5")
        elif r < 0.1:
            lines.append("" if r < 0.09 else "   ")
        elif r < 0.12:
            lines.append(f"{i} {c} inf 1 2 3 4")
        elif r < 0.14:
            lines.append(f"{i} {c} nan 1 2 3 4")
        else:
            lines.append(f"{i} {c} {rng.random():.4f} " + " ".join(map(str, box)))
    for line in extra:
        lines.insert(int(rng.integers(0, len(lines))), line)
    sep = "\r\n" if variant == "crlf_tabs_and_odd_ids" else "\n"
    text = sep.join(line.replace(" ", "\t", 1) if variant != "plain" and k % 3 == 0 else line for k, line in enumerate(lines))
    path = tmp_path / "det.txt"
    path.write_text(text + sep, encoding="utf-8", newline="")
    took = []
    real = det_io._tokenise_fast
    monkeypatch.setattr(det_io, "_tokenise_fast", lambda t, bad: took.append(real(t, {}) is not None) or real(t, bad))
    known = set(range(1, 10))
    skipped = SkipLog("lines")
    got = read_ilsvrc_submission(path, 4, skipped, known_images=known)
    assert took == [fast_expected]  # the path under test is the one taken
    kept, bad = _slow_read(path, 4, known)
    ref = np.array(kept).reshape(-1, 7)
    np.testing.assert_array_equal(got.image_index, ref[:, 0])
    np.testing.assert_array_equal(got.labels, ref[:, 1])
    np.testing.assert_allclose(got.scores, ref[:, 2].astype(np.float32))
    np.testing.assert_allclose(got.boxes, ref[:, 3:].astype(np.float32))
    assert [int(f.rsplit(":", 1)[1]) for f, _ in skipped.entries] == bad
    assert len(bad) > 0 and (got.boxes[:, 2] < got.boxes[:, 0]).any()  # the test covers both kinds


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
    write_coco_results(tmp_path / "n.json", d, named)
    assert {e["image_id"] for e in json.loads((tmp_path / "n.json").read_text())} <= {1, 2, 3}
    assert_same(read_detections(tmp_path / "n.json", named).select(slice(None)), read_coco_results(tmp_path / "n.json", named))


def test_coco_results_bad_entries_skipped(tmp_path):
    ds = tiny_dataset()
    good = {"image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}
    bad = [  # one wrongly typed or unknown field each; every one reported with its index, none crashes
        {**good, "image_id": 10},             # unknown image
        {**good, "category_id": 2},           # unknown category
        {k: v for k, v in good.items() if k != "bbox"},
        {**good, "image_id": [9]},            # a list image_id
        {**good, "image_id": None},
        {**good, "image_id": "9"},            # a string is not the id 9 (pycocotools would not match it)
        {**good, "image_id": True},
        {**good, "category_id": "3"},
        {**good, "bbox": "1234"},             # not [1, 2, 3, 4]
        {**good, "bbox": [1, 2, 3]},
        {**good, "bbox": [1, 2, "3", 4]},
        {**good, "bbox": [1, 2, float("inf"), 4]},
        {**good, "score": None},
        {**good, "score": "0.5"},
        {**good, "score": float("nan")},
        {**good, "score": 10 ** 400},         # a JSON integer beyond float's range (crashed with OverflowError)
        {**good, "bbox": [1, 2, 3, -10 ** 400]},
        [9, 3, [1, 2, 3, 4], 0.5],            # an entry that is not an object
        "entry",
    ]
    kept = [
        {**good, "bbox": [1, 2, -3, 4]},      # negative width: scored as pycocotools scores it
        {**good, "bbox": [5, 5, 0, 0]},       # zero area: kept
        {**good, "image_id": 25.0},           # an integral float is the id 25 to pycocotools too
        {**good, "bbox": [-50, 600, 900, 10]},  # outside the image: kept as written
    ]
    entries = [good] + bad + kept
    text = json.dumps(entries).replace("Infinity", "1e999").replace("NaN", "NaN")
    (tmp_path / "r.json").write_text(text)
    skipped = SkipLog()
    d = read_coco_results(tmp_path / "r.json", ds, skipped)
    assert len(d) == 1 + len(kept) and d.labels.tolist() == [1] * 5
    assert d.boxes.tolist()[:3] == [[1, 2, 4, 6], [1, 2, -2, 6], [5, 5, 5, 5]]
    assert d.image_index.tolist() == [1, 1, 1, 2, 1]
    assert [e[0] for e in skipped.entries] == [f"{tmp_path / 'r.json'}: entry {k}" for k in range(1, 1 + len(bad))]
    reasons = [e[1] for e in skipped.entries]
    assert reasons[0] == "unknown image: image_id 10" and reasons[1] == "unknown class: category_id 2"
    assert "missing bbox" in reasons[2] and "is a list, not an integer" in reasons[3]
    assert "is a string, not an integer" in reasons[5] and "bbox '1234' is a string" in reasons[8]
    assert all(r.startswith(("malformed entry", "unknown image", "unknown class")) for r in reasons)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json"):
        read_coco_results(tmp_path / "x.json", ds)
    (tmp_path / "y.json").write_text('{"image_id": 9}')
    with pytest.raises(ValueError, match="y.json: expected a JSON list"):
        read_coco_results(tmp_path / "y.json", ds)


def test_format_from_extension(tmp_path):
    ds, d = tiny_dataset(), random_dets(num_images=3)
    write_ilsvrc_submission(tmp_path / "a.txt", d)
    assert_same(read_detections(tmp_path / "a.txt", ds), d)
    assert_same(read_detections(tmp_path / "a.txt", ds, format="ilsvrc"), d)
    with pytest.raises(ValueError, match="extension"):
        read_detections(tmp_path / "a.pkl", ds)
