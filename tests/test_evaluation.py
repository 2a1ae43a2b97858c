"""AP under ILSVRC / VOC / COCO rules: hand-made cases with known answers, the vectorised evaluator
against plain-loop transcriptions of the devkits on random data, and COCO AP50 against pycocotools."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from detect.classes import ClassList
from detect.data.records import DetectionDataset, DetectionRecord
from detect.detections import Detections
from detect.evaluation import (
    average_precision,
    coco_ap50_pycocotools,
    evaluate,
    ilsvrc_thresholds,
    pair_iou,
    rules_for_dataset,
)


def make_dataset(gts, num_classes=3, blacklist=(), ignore=None, name="toy"):
    """``gts``: per image a list of (label, x1, y1, x2, y2); image index = position + 1."""
    records = []
    for i, objs in enumerate(gts):
        boxes = np.array([o[1:] for o in objs], dtype=np.float32).reshape(-1, 4)
        labels = np.array([o[0] for o in objs], dtype=np.int64)
        ig = np.zeros(len(objs), bool) if ignore is None else np.asarray(ignore[i], bool)
        records.append(DetectionRecord(f"img{i + 1}", Path(f"img{i + 1}.jpg"), 500, 400, boxes, labels, ig, index=i + 1))
    classes = ClassList.from_names([f"c{k}" for k in range(num_classes)])
    return DetectionDataset(records, classes, name=name, blacklist=set(blacklist))


def dets_of(rows):
    """``rows``: (image_index, label, score, x1, y1, x2, y2)."""
    rows = np.array(rows, dtype=np.float64).reshape(-1, 7)
    return Detections(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3:])


# ---------------------------------------------------------------- hand-made cases


def test_pair_iou_plus_one_and_crowd():
    a = np.array([[0, 0, 9, 9]])
    b = np.array([[5, 0, 14, 9]])
    assert pair_iou(a, b, plus_one=True)[0] == pytest.approx(50 / 150)
    assert pair_iou(a, b)[0] == pytest.approx(36 / (81 + 81 - 36))
    assert pair_iou(a, b, crowd=np.array([True]))[0] == pytest.approx(36 / 81)
    assert pair_iou(np.array([[0, 0, 9, 9]]), np.array([[10, 0, 20, 9]]), plus_one=True)[0] == 0.0


def test_small_object_threshold():
    thr = ilsvrc_thresholds(np.array([[10, 10, 19, 19], [0, 0, 499, 399]]))
    assert thr[0] == pytest.approx(100 / 400)  # w = h = 10 with the +1 convention
    assert thr[1] == 0.5


def test_duplicates_and_order():
    ds = make_dataset([[(0, 0, 0, 99, 99)]])
    # exact box first, then a duplicate and a miss: AP 1
    r = evaluate(ds, dets_of([(1, 0, 0.9, 0, 0, 99, 99), (1, 0, 0.8, 1, 1, 99, 99), (1, 0, 0.7, 300, 300, 350, 350)]))
    assert r.ap[0] == pytest.approx(1.0)
    np.testing.assert_allclose(r.precision[0], [1, 1 / 2, 1 / 3])
    # a false positive ranked first: precision 1/2 at recall 1
    r = evaluate(ds, dets_of([(1, 0, 0.95, 300, 300, 350, 350), (1, 0, 0.9, 0, 0, 99, 99)]))
    assert r.ap[0] == pytest.approx(0.5)


def test_misses_and_mean_over_classes():
    ds = make_dataset([[(0, 0, 0, 99, 99), (0, 200, 200, 299, 299), (1, 0, 0, 49, 49)]])
    r = evaluate(ds, dets_of([(1, 0, 0.9, 0, 0, 99, 99)]))
    assert r.ap[0] == pytest.approx(0.5) and r.ap[1] == 0.0 and np.isnan(r.ap[2])
    assert r.mean_ap == pytest.approx(0.25) and r.median_ap == pytest.approx(0.25)
    assert r.num_gt.tolist() == [2, 1, 0] and r.num_det.tolist() == [1, 0, 0]
    z = evaluate(ds, dets_of([(1, 0, 0.9, 0, 0, 99, 99)]), classes_without_gt="zero")
    assert z.ap[2] == 0.0 and z.mean_ap == pytest.approx(0.5 / 3)


def test_small_object_matched_below_half():
    ds = make_dataset([[(0, 10, 10, 19, 19)]])
    dets = dets_of([(1, 0, 0.9, 10, 10, 19, 39)])  # IoU (+1) = 100 / 300 = 1/3: >= 0.25, < 0.5
    assert evaluate(ds, dets, rules="ilsvrc").ap[0] == pytest.approx(1.0)
    assert evaluate(ds, dets, rules="voc").ap[0] == 0.0


def test_blacklisted_pair():
    ds = make_dataset([[(0, 0, 0, 99, 99)], [(0, 0, 0, 99, 99), (1, 0, 0, 99, 99)]], blacklist={(2, 0)})
    dets = dets_of([(2, 0, 0.99, 300, 300, 350, 350),  # blacklisted: ignored although a false positive
                    (1, 0, 0.9, 0, 0, 99, 99), (2, 1, 0.5, 0, 0, 99, 99)])
    r = evaluate(ds, dets)
    assert r.num_gt.tolist() == [1, 1, 0]  # the ground truth of (2, class 0) is not counted
    assert r.ap[0] == pytest.approx(1.0) and r.ap[1] == pytest.approx(1.0)
    assert r.num_det[0] == 1


def test_image_without_objects_gives_false_positive():
    ds = make_dataset([[(0, 0, 0, 99, 99)], []])
    r = evaluate(ds, dets_of([(2, 0, 0.95, 0, 0, 99, 99), (1, 0, 0.9, 0, 0, 99, 99)]))
    assert r.ap[0] == pytest.approx(0.5)


def test_unknown_image_error_or_ignored():
    ds = make_dataset([[(0, 0, 0, 99, 99)]])
    dets = dets_of([(7, 0, 0.95, 0, 0, 99, 99), (1, 0, 0.9, 0, 0, 99, 99)])
    with pytest.raises(ValueError, match="not in dataset"):
        evaluate(ds, dets)
    r = evaluate(ds, dets, unknown_images="ignore")
    assert r.num_unknown_detections == 1 and r.ap[0] == pytest.approx(1.0)


def test_ilsvrc_takes_next_free_box_where_voc_does_not():
    ds = make_dataset([[(0, 0, 0, 99, 99), (0, 20, 0, 119, 99)]])
    # both detections overlap the first box best; the second also overlaps the second box >= 0.5
    dets = dets_of([(1, 0, 0.9, 0, 0, 99, 99), (1, 0, 0.8, 5, 0, 104, 99)])
    assert evaluate(ds, dets, rules="ilsvrc").ap[0] == pytest.approx(1.0)
    assert evaluate(ds, dets, rules="voc").ap[0] == pytest.approx(0.5)


def test_difficult_boxes_neither_count_nor_penalise():
    ds = make_dataset([[(0, 0, 0, 99, 99), (0, 200, 200, 299, 299)]], ignore=[[False, True]])
    dets = dets_of([(1, 0, 0.95, 200, 200, 299, 299), (1, 0, 0.9, 0, 0, 99, 99)])
    for rules in ("voc", "voc07", "ilsvrc", "coco"):
        r = evaluate(ds, dets, rules=rules)
        assert r.num_gt[0] == 1 and r.ap[0] == pytest.approx(1.0), rules


def test_average_precision_methods():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(rec, prec, "area") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(rec, prec, "11point") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert average_precision(rec, prec, "101point") == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    with pytest.raises(ValueError):
        average_precision(rec, prec, "bogus")


def test_rules_for_dataset_and_json():
    assert rules_for_dataset({"name": "ilsvrc2014", "rules": "ilsvrc"}) == "ilsvrc"
    with pytest.raises(ValueError, match="declares rules=None"):  # declared by the data config, never guessed from a name
        rules_for_dataset({"name": "VOC2007"})
    ds = make_dataset([[(0, 0, 0, 99, 99)]])
    j = evaluate(ds, dets_of([(1, 0, 0.9, 0, 0, 99, 99)])).to_json()
    assert j["classes"][0]["ap"] == 1.0 and j["classes"][1]["ap"] is None and j["mean_ap"] == 1.0


def test_empty_detections_and_empty_dataset():
    ds = make_dataset([[(0, 0, 0, 99, 99)], []])
    for rules in ("ilsvrc", "voc", "voc07", "coco"):
        r = evaluate(ds, Detections.empty(), rules=rules)
        assert r.ap[0] == 0.0 and r.mean_ap == 0.0
    r = evaluate(make_dataset([]), Detections.empty())
    assert math.isnan(r.mean_ap) and r.to_json()["mean_ap"] is None


# ---------------------------------------------------------------- slow references


def _iou_plus_one(b, bb):
    bi = [max(b[0], bb[0]), max(b[1], bb[1]), min(b[2], bb[2]), min(b[3], bb[3])]
    iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
    if iw > 0 and ih > 0:
        ua = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) - iw * ih
        return iw * ih / ua
    return None


def _vocap(rec, prec):
    mrec, mpre = [0.0] + list(rec) + [1.0], [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def _ap_from_entries(entries, npos, eleven=False):
    tp = fp = 0
    rec, prec = [], []
    for status in entries:
        tp += status == 1
        fp += status == 0
        rec.append(tp / npos)
        prec.append(tp / (tp + fp) if tp + fp else 0.0)
    if eleven:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = [pr for r, pr in zip(rec, prec) if r >= t]
            ap += (max(p) if p else 0.0) / 11
        return ap
    return _vocap(rec, prec)


def devkit_reference(ds, dets, pixel_tolerance=10.0):
    """Plain-loop transcription of the ILSVRC devkit's eval_detection.m. Returns AP per class (NaN: no gt)."""
    C = len(ds.classes)
    npos = [0] * C
    gts = {}
    for r in ds.records:
        objs = []
        for b, c, ig in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
            if (r.index, c) in ds.blacklist:
                continue
            w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
            objs.append((b, c, min(0.5, w * h / ((w + pixel_tolerance) * (h + pixel_tolerance))), ig))
            npos[c] += not ig
        gts[r.index] = objs
    per_image = defaultdict(list)
    for j in range(len(dets)):
        i, c = int(dets.image_index[j]), int(dets.labels[j])
        if (i, c) not in ds.blacklist:
            per_image[i].append(j)
    entries = []  # (score, label, status) in image order, then confidence order within the image
    for i in sorted(per_image):
        js = sorted(per_image[i], key=lambda j: -float(dets.scores[j]))
        objs = gts[i]
        detected = [False] * len(objs)
        for j in js:
            b = dets.boxes[j].astype(np.float64).tolist()
            ovmax, kmax = -math.inf, -1
            for k, (bb, c, thr, _) in enumerate(objs):
                if c != dets.labels[j] or detected[k]:
                    continue
                ov = _iou_plus_one(b, bb)
                if ov is not None and ov >= thr and ov > ovmax:
                    ovmax, kmax = ov, k
            if kmax >= 0:
                detected[kmax] = True
                entries.append((float(dets.scores[j]), int(dets.labels[j]), -1 if objs[kmax][3] else 1))
            else:
                entries.append((float(dets.scores[j]), int(dets.labels[j]), 0))
    entries.sort(key=lambda e: -e[0])  # stable, as MATLAB's sort
    return np.array([_ap_from_entries([s for _, c2, s in entries if c2 == c], npos[c]) if npos[c] else math.nan
                     for c in range(C)])


def voc_reference(ds, dets, eleven=False):
    """Plain-loop transcription of VOCevaldet.m (per class; difficult = ignore)."""
    C = len(ds.classes)
    aps = []
    for c in range(C):
        gt, npos = {}, 0
        for r in ds.records:
            keep = [(b, ig) for b, l, ig in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist())
                    if l == c and (r.index, c) not in ds.blacklist]
            gt[r.index] = {"bb": [k[0] for k in keep], "diff": [k[1] for k in keep], "det": [False] * len(keep)}
            npos += sum(not k[1] for k in keep)
        js = [j for j in range(len(dets)) if dets.labels[j] == c and (int(dets.image_index[j]), c) not in ds.blacklist]
        js.sort(key=lambda j: -float(dets.scores[j]))
        entries = []
        for j in js:
            g = gt[int(dets.image_index[j])]
            b = dets.boxes[j].astype(np.float64).tolist()
            ovmax, jmax = -math.inf, -1
            for k, bb in enumerate(g["bb"]):
                ov = _iou_plus_one(b, bb)
                if ov is not None and ov > ovmax:
                    ovmax, jmax = ov, k
            if ovmax >= 0.5:
                if not g["diff"][jmax]:
                    entries.append(0 if g["det"][jmax] else 1)
                    g["det"][jmax] = True
                else:
                    entries.append(-1)
            else:
                entries.append(0)
        aps.append(_ap_from_entries(entries, npos, eleven) if npos else math.nan)
    return np.array(aps)


def random_world(seed, num_images=12, num_classes=4, ignore_rate=0.0, crowd_big=False):
    """Random ground truth (small objects, empty images, ignore flags, blacklisted pairs) and
    detections (jittered copies, exact duplicates, random boxes; scores rounded so that ties occur)."""
    rng = np.random.default_rng(seed)
    gts, ignore = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 6)) if rng.random() > 0.2 else 0
        objs, igs = [], []
        for _ in range(n):
            w, h = (rng.integers(3, 25, 2) if rng.random() < 0.3 else rng.integers(20, 200, 2)).tolist()
            x, y = rng.integers(0, 250, 2).tolist()
            objs.append((int(rng.integers(0, num_classes)), x, y, x + w, y + h))
            igs.append(bool(rng.random() < ignore_rate))
        gts.append(objs)
        ignore.append(igs)
    blacklist = {(int(rng.integers(1, num_images + 1)), int(rng.integers(0, num_classes))) for _ in range(2)}
    ds = make_dataset(gts, num_classes, blacklist, ignore)
    rows = []
    for i, objs in enumerate(gts):
        for c, x1, y1, x2, y2 in objs:
            for _ in range(int(rng.integers(0, 4))):
                j = rng.normal(0, 0.12 * max(x2 - x1, y2 - y1, 4), 4)
                rows.append((i + 1, c if rng.random() > 0.1 else int(rng.integers(0, num_classes)),
                             round(float(rng.random()), 1), x1 + j[0], y1 + j[1], max(x1 + j[0], x2 + j[2]), max(y1 + j[1], y2 + j[3])))
            if rng.random() < 0.2:
                rows.append((i + 1, c, round(float(rng.random()), 1), x1, y1, x2, y2))
                rows.append(rows[-1])  # an exact duplicate
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.integers(0, 300, 2).tolist()
            w, h = rng.integers(5, 150, 2).tolist()
            rows.append((i + 1, int(rng.integers(0, num_classes)), round(float(rng.random()), 1), x, y, x + w, y + h))
    order = rng.permutation(len(rows))
    return ds, dets_of([rows[k] for k in order])


@pytest.mark.parametrize("seed", range(40))
def test_ilsvrc_equals_devkit_loop(seed):
    ds, dets = random_world(seed, ignore_rate=0.1 if seed % 4 == 3 else 0.0)
    got = evaluate(ds, dets, rules="ilsvrc").ap
    np.testing.assert_allclose(got, devkit_reference(ds, dets), rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", range(25))
def test_voc_equals_vocevaldet_loop(seed):
    ds, dets = random_world(100 + seed, ignore_rate=0.2)
    np.testing.assert_allclose(evaluate(ds, dets, rules="voc").ap, voc_reference(ds, dets), atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(evaluate(ds, dets, rules="voc07").ap, voc_reference(ds, dets, eleven=True),
                               atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_coco_equals_pycocotools_random(seed):
    ds, dets = random_world(200 + seed, num_images=15, ignore_rate=0.15)
    ds.blacklist = set()  # COCO has no blacklist
    ours = evaluate(ds, dets, rules="coco", interpolation="101point").mean_ap
    assert ours == pytest.approx(coco_ap50_pycocotools(ds, dets), abs=1e-9)


def degenerate(dets: Detections, seed: int) -> tuple[Detections, np.ndarray]:
    """The detections with a third of the boxes made degenerate, as a user's detector may write them:
    inverted by several pixels, inverted by less than one pixel, zero width or height, and off the
    image (negative or beyond it). Returns (detections, which rows were changed)."""
    rng = np.random.default_rng(seed)
    b = dets.boxes.astype(np.float64).copy()
    kind = np.where(rng.random(len(b)) < 0.35, rng.integers(0, 6, len(b)), -1)
    b[kind == 0] = b[kind == 0][:, [2, 3, 0, 1]]                       # both sides inverted
    b[kind == 1, 2] = b[kind == 1, 0] - rng.uniform(1.5, 30, int((kind == 1).sum()))   # x2 < x1 by pixels
    b[kind == 2, 3] = b[kind == 2, 1] - 0.5                            # y2 < y1 by half a pixel (+1 rule: overlaps)
    b[kind == 3, 2] = b[kind == 3, 0]                                  # zero width
    b[kind == 4] -= 350                                                # wholly off the image (negative)
    b[kind == 5, 2:] += 400                                            # reaching far past the border
    return Detections(dets.image_index, dets.labels, dets.scores, b), kind >= 0


@pytest.mark.parametrize("seed", range(12))
def test_degenerate_detections_scored_as_the_devkits(seed):
    """Inverted, zero-area and off-image boxes (the user's output) against the plain transcriptions of
    eval_detection.m (ILSVRC), VOCevaldet.m (VOC, VOC07) and pycocotools (COCO)."""
    ds, dets = random_world(300 + seed, ignore_rate=0.1 if seed % 3 == 2 else 0.0)
    dets, changed = degenerate(dets, seed)
    assert changed.any() and ((dets.boxes[:, 2] < dets.boxes[:, 0]) | (dets.boxes[:, 3] < dets.boxes[:, 1])).any()
    ilsvrc = evaluate(ds, dets, rules="ilsvrc").ap
    np.testing.assert_allclose(ilsvrc, devkit_reference(ds, dets), atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(evaluate(ds, dets, rules="voc").ap, voc_reference(ds, dets), atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(evaluate(ds, dets, rules="voc07").ap, voc_reference(ds, dets, eleven=True),
                               atol=1e-9, equal_nan=True)
    coco_ds = DetectionDataset(ds.records, ds.classes, ds.name)  # COCO has no blacklist
    assert evaluate(coco_ds, dets, rules="coco").mean_ap == pytest.approx(coco_ap50_pycocotools(coco_ds, dets), abs=1e-9)
    if seed == 0:  # guard: dropping the degenerate rows (what the reader used to do) changes the result
        kept = dets.select(~changed)
        assert not np.allclose(evaluate(ds, kept, rules="ilsvrc").ap, ilsvrc, equal_nan=True)


def test_degenerate_box_cases_by_hand():
    ds = make_dataset([[(0, 10, 10, 19, 19), (0, 100, 100, 199, 199)]])
    # y2 < y1 by half a pixel: width 10, height 0.5 under the +1 rule; IoU 5/100 = 0.05 < 0.25: a miss
    r = evaluate(ds, dets_of([(1, 0, 0.9, 10, 10, 19, 9.5)]), rules="ilsvrc")
    assert r.precision[0].tolist() == [0.0]
    # inverted by a pixel or more: overlaps nothing, a false positive ranked first, halving the AP
    rows = [(1, 0, 0.95, 199, 199, 100, 100), (1, 0, 0.9, 100, 100, 199, 199), (1, 0, 0.8, 10, 10, 19, 19)]
    for rules in ("ilsvrc", "voc"):
        assert evaluate(ds, dets_of(rows), rules=rules).precision[0].tolist() == pytest.approx([0, 0.5, 2 / 3])
    # COCO: one negative side -> negative area -> ignored when unmatched (as COCOeval); zero area -> a miss
    coco = evaluate(ds, dets_of([(1, 0, 0.95, 150, 100, 100, 199)] + rows[1:]), rules="coco")
    assert coco.precision[0].tolist() == pytest.approx([1.0, 1.0]) and coco.ap[0] == pytest.approx(1.0)
    assert coco_ap50_pycocotools(ds, dets_of([(1, 0, 0.95, 150, 100, 100, 199)] + rows[1:])) == pytest.approx(1.0)
    zero = dets_of([(1, 0, 0.95, 150, 150, 150, 199)] + rows[1:])
    assert evaluate(ds, zero, rules="coco").precision[0].tolist() == pytest.approx([0, 0.5, 2 / 3])
    assert coco_ap50_pycocotools(ds, zero) == pytest.approx(evaluate(ds, zero, rules="coco").ap[0])
    both = dets_of([(1, 0, 0.95, 199, 199, 100, 100)] + rows[1:])  # two negative sides: positive area, a miss
    assert evaluate(ds, both, rules="coco").ap[0] == pytest.approx(coco_ap50_pycocotools(ds, both))
    assert evaluate(ds, both, rules="coco").ap[0] < 0.9


def test_coco_max_dets_per_image_and_class():
    ds = make_dataset([[(0, 0, 0, 99, 99)]])
    rows = [(1, 0, 0.9 - 0.001 * k, 300, 300, 350, 350) for k in range(5)] + [(1, 0, 0.1, 0, 0, 99, 99)]
    assert evaluate(ds, dets_of(rows), rules="coco", max_dets=5).ap[0] == 0.0
    assert evaluate(ds, dets_of(rows), rules="coco", max_dets=6).ap[0] == pytest.approx(
        coco_ap50_pycocotools(ds, dets_of(rows)))


# ---------------------------------------------------------------- COCO128 against pycocotools


@pytest.fixture(scope="module")
def coco128(shared_data):
    coco = pytest.importorskip("detect.data.coco", reason="detect.data.coco (read_coco) not written yet")
    root = shared_data / "coco128"
    return coco.read_coco(root / "annotations" / "instances_train2017.json", root / "images" / "train2017")


def perturbed(ds, seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for r in ds.records:
        for b, c in zip(r.boxes.astype(np.float64), r.labels):
            w, h = b[2] - b[0], b[3] - b[1]
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                parts.append(Detections.for_image(r.index, [c if rng.random() > 0.1 else rng.integers(len(ds.classes))],
                                                  [rng.random()], [[b[0] + j[0], b[1] + j[1], b[2] + j[2], b[3] + j[3]]]))
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 300, (k, 2))
        parts.append(Detections.for_image(r.index, rng.integers(0, len(ds.classes), k), rng.random(k),
                                          np.hstack([xy, xy + rng.uniform(10, 200, (k, 2))])))
    return Detections.concat(parts)


def test_coco128_ap50_matches_pycocotools(coco128):
    dets = perturbed(coco128)
    ref = coco_ap50_pycocotools(coco128, dets)
    ours = evaluate(coco128, dets, rules="coco", interpolation="101point")
    assert ours.mean_ap == pytest.approx(ref, abs=1e-6)
    area = evaluate(coco128, dets, rules="coco", interpolation="area")
    # area under the envelope vs. 101 samples of it: documented difference below 0.01 AP here
    assert abs(area.mean_ap - ref) < 0.01


# ---------------------------------------------------------------- tools/eval_map.py end to end


def _load_tool(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_map_tool", repo_root / "tools" / "eval_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose(repo_root, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        return compose(config_name="eval_map", overrides=overrides)


TINY_OBJECTS = {"a": [("n00000001", 10, 10, 59, 59), ("n00000002", 100, 20, 179, 99)],
                "b": [("n00000001", 5, 5, 14, 14)],  # a 10 x 10 object: IoU threshold 0.25
                "c": []}


def make_tiny_ilsvrc(root: Path) -> None:
    """ILSVRC 2015+ layout: Data/DET/val, Annotations/DET/val, ImageSets/DET/val.txt, classes.tsv."""
    from PIL import Image

    (root / "Data/DET/val").mkdir(parents=True)
    (root / "Annotations/DET/val").mkdir(parents=True)
    (root / "ImageSets/DET").mkdir(parents=True)
    (root / "classes.tsv").write_text("index\twnid\tname\n1\tn00000001\tsquare\n2\tn00000002\tdisc\n")
    (root / "ImageSets/DET/val.txt").write_text("".join(f"{n} {k + 1}\n" for k, n in enumerate(TINY_OBJECTS)))
    for name, objs in TINY_OBJECTS.items():
        Image.new("RGB", (200, 120), (90, 120, 150)).save(root / f"Data/DET/val/{name}.JPEG")
        xml_objs = "".join(f"<object><name>{w}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                           f"<ymax>{y2}</ymax></bndbox></object>" for w, x1, y1, x2, y2 in objs)
        (root / f"Annotations/DET/val/{name}.xml").write_text(
            f"<annotation><folder>val</folder><filename>{name}</filename><size><width>200</width>"
            f"<height>120</height></size>{xml_objs}</annotation>")


TINY_SUBMISSION = ("1 1 0.9 10 10 59 59\n"
                   "1 2 0.8 104 22 181 99\n"
                   "2 1 0.7 5 5 14 34\n"      # IoU 1/3 with the small object: a match under ILSVRC rules only
                   "3 2 0.95 0 0 50 50\n"     # an image without objects
                   "3 2 oops\n")              # malformed: reported and skipped


def test_eval_map_tool_on_tiny_ilsvrc(tmp_path, repo_root):
    make_tiny_ilsvrc(tmp_path / "data")
    (tmp_path / "det.txt").write_text(TINY_SUBMISSION)
    tool = _load_tool(repo_root)
    common = [f"data.root={tmp_path / 'data'}", f"detections={tmp_path / 'det.txt'}", f"work_dir={tmp_path / 'work'}"]
    report = tool.run(_compose(repo_root, common))
    assert report["rules"] == "ilsvrc" and report["skipped_lines"] == 1 and report["skipped_annotations"] == 0
    assert [c["ap"] for c in report["classes"]] == pytest.approx([1.0, 0.5])
    assert report["mean_ap"] == pytest.approx(0.75)
    out = tmp_path / "work" / "eval"
    assert json.loads((out / "eval_synthetic_val.json").read_text())["mean_ap"] == pytest.approx(0.75)
    assert (out / "pr_synthetic_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    voc = tool.run(_compose(repo_root, common + ["rules=voc", f"out_dir={tmp_path / 'voc'}"]))
    assert voc["mean_ap"] == pytest.approx(0.5)


def test_eval_map_tool_unknown_images(tmp_path, repo_root):
    """A line naming an image that is not in the split is reported with file:line and skipped, like a
    malformed one; the rest is scored. A file where nothing is left stops with the cause."""
    make_tiny_ilsvrc(tmp_path / "data")
    (tmp_path / "det.txt").write_text(TINY_SUBMISSION + "9 1 0.99 0 0 10 10\n")
    tool = _load_tool(repo_root)
    common = [f"data.root={tmp_path / 'data'}", f"detections={tmp_path / 'det.txt'}", f"out_dir={tmp_path / 'out'}",
              f"work_dir={tmp_path / 'work'}"]
    report = tool.run(_compose(repo_root, common))
    assert report["skipped_lines"] == 2 and report["mean_ap"] == pytest.approx(0.75)
    (tmp_path / "other.txt").write_text("9 1 0.99 0 0 10 10\n12 2 0.5 0 0 10 10\n")
    with pytest.raises(ValueError, match=r"other.txt: no detections to evaluate on ilsvrc_val \(3 images\); every one "
                                         r"was skipped: 2 detection lines skipped:\n +2 +unknown image"):
        tool.run(_compose(repo_root, common + [f"detections={tmp_path / 'other.txt'}"]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        tool.run(_compose(repo_root, common + [f"detections={tmp_path / 'empty.txt'}"]))


def test_eval_map_tool_coco128_beside_pycocotools(tmp_path, repo_root, coco128, shared_data):
    from detect.detections import write_coco_results

    write_coco_results(tmp_path / "det.json", perturbed(coco128, seed=1), coco128)
    tool = _load_tool(repo_root)
    report = tool.run(_compose(repo_root, ["data=coco", f"data.root={shared_data / 'coco128'}", "data.val_name=train2017",
                                           f"detections={tmp_path / 'det.json'}", f"out_dir={tmp_path / 'out'}",
                                           "curves_in_json=false", f"work_dir={tmp_path / 'work'}"]))
    assert report["rules"] == "coco" and "precision" not in report["classes"][0]
    assert report["mean_ap"] == pytest.approx(report["ap50_pycocotools"], abs=1e-6)


def test_real_ilsvrc_annotations_small_objects_and_blacklist(shared_data):
    """The 5 real val XMLs: exact detections give AP 1; small objects matched below IoU 0.5 count under
    ILSVRC rules and not under VOC rules; a blacklisted pair removes that class's ground truth there."""
    ilsvrc = pytest.importorskip("detect.data.ilsvrc", reason="detect.data.ilsvrc not written yet")
    from detect.classes import read_class_list

    root = shared_data / "ilsvrc"
    classes = read_class_list(root / "classes.tsv")
    val_index = dict(line.split() for line in (root / "val.txt").read_text().splitlines())
    records, parts = [], []
    for xml in sorted((root / "xml").glob("*.xml")):
        p = ilsvrc.parse_ilsvrc_xml(xml, classes)
        w, h, boxes, labels = p.width, p.height, p.boxes, p.labels
        index = int(val_index[xml.stem])
        records.append(DetectionRecord(xml.stem, xml, w, h, boxes, labels, np.zeros(len(labels), bool), index))
        dets = boxes.astype(np.float64).copy()
        thr = ilsvrc_thresholds(boxes)
        small = thr < 0.5
        hh = boxes[:, 3] - boxes[:, 1] + 1
        target = (thr + 0.5) / 2  # between the small-object threshold and 0.5
        dets[small, 3] = boxes[small, 1] + np.round(hh[small] / target[small]) - 1
        parts.append(Detections.for_image(index, labels, np.linspace(0.9, 0.5, len(labels)), dets))
    ds = DetectionDataset(records, classes, name="ilsvrc_val5")
    dets = Detections.concat(parts)
    ious = pair_iou(dets.boxes, np.concatenate([r.boxes for r in records]), plus_one=True)
    small = ilsvrc_thresholds(np.concatenate([r.boxes for r in records])) < 0.5
    assert small.any() and (ious[small] < 0.5).all()
    r = evaluate(ds, dets, rules="ilsvrc")
    present = np.flatnonzero(r.num_gt)
    assert r.mean_ap == pytest.approx(1.0) and len(present) == len(np.unique(dets.labels))
    assert evaluate(ds, dets, rules="voc").mean_ap < 1.0
    label = int(records[2].labels[0])
    ds.blacklist = {(records[2].index, label)}
    b = evaluate(ds, dets)
    assert b.num_gt[label] == r.num_gt[label] - int((records[2].labels == label).sum())
    assert b.num_det[label] == r.num_det[label] - int((records[2].labels == label).sum())
