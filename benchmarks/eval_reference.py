"""A plain numpy reimplementation of the ILSVRC devkit's ``eval_detection.m``: the reference that
``benchmarks/bench_eval.py --end-to-end`` times ``tools/eval_map.py`` against.

    python benchmarks/eval_reference.py <ILSVRC root (2015 layout)> <submission.txt> [<blacklist.txt>]

Written the way a careful user would port the MATLAB: numpy and the standard library only (its XML
parser, ``np.loadtxt``), loops where the devkit loops. Prints ``{"mean_ap": ...}`` as one JSON line.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

CLASSES = Path(__file__).resolve().parents[1] / "detect" / "data" / "ilsvrc_det_classes.tsv"


def _read_ground_truth(root: Path, label_of: dict) -> tuple[list, list, list, list, np.ndarray]:
    """The val list's image ids and, per image, the labels, boxes and overlap thresholds of its objects
    (``min(0.5, wh / ((w + 10)(h + 10)))``, +1 widths), and the positives per class."""
    lines = (root / "ImageSets/DET/val.txt").read_text().splitlines()
    names, ids = zip(*(line.split() for line in lines if line.strip()))
    num_pos = np.zeros(201)
    gt_labels, gt_boxes, gt_thr = [], [], []
    for name in names:
        ann = ET.parse(root / "Annotations/DET/val" / f"{name}.xml").getroot()
        labels, boxes = [], []
        for obj in ann.findall("object"):
            c = label_of[obj.findtext("name")]
            b = obj.find("bndbox")
            labels.append(c)
            boxes.append([float(b.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
            num_pos[c] += 1
        bb = np.array(boxes).reshape(-1, 4)
        w, h = bb[:, 2] - bb[:, 0] + 1, bb[:, 3] - bb[:, 1] + 1
        gt_labels.append(np.array(labels, int))
        gt_boxes.append(bb)
        gt_thr.append(np.minimum(0.5, w * h / ((w + 10) * (h + 10))))
    return [int(i) for i in ids], gt_labels, gt_boxes, gt_thr, num_pos


def _match_image(p: np.ndarray, labels: np.ndarray, boxes: np.ndarray, thr: np.ndarray, bl: set) -> list[tuple]:
    """``(tp, confidence, class)`` of one image's predictions ``p`` (rows of the submission) in descending
    confidence, each matched to the best still-free same-class box above its threshold; blacklisted
    classes ``bl`` are left out."""
    p = p[np.argsort(-p[:, 2], kind="stable")]
    detected = np.zeros(len(labels), bool)
    out = []
    for row in p:
        c = int(row[1])
        if c in bl:
            continue
        bb = row[3:7]
        cand = np.flatnonzero((labels == c) & ~detected)
        tp = 0
        if len(cand):
            g = boxes[cand]
            iw = np.minimum(bb[2], g[:, 2]) - np.maximum(bb[0], g[:, 0]) + 1
            ih = np.minimum(bb[3], g[:, 3]) - np.maximum(bb[1], g[:, 1]) + 1
            ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1) - iw * ih
            with np.errstate(divide="ignore", invalid="ignore"):
                ov = np.where((iw > 0) & (ih > 0), iw * ih / ua, -np.inf)
            ok = ov >= thr[cand]
            if ok.any():
                best = cand[ok][np.argmax(ov[ok])]  # the first of equal overlaps, as `ov > ovmax`
                detected[best] = True
                tp = 1
        out.append((tp, row[2], c))
    return out


def _vocap(tp_all: np.ndarray, conf_all: np.ndarray, lab_all: np.ndarray, num_pos: np.ndarray) -> list[float]:
    """AP per class 1..200 over all images (VOCap) of the matched predictions."""
    order = np.argsort(-conf_all, kind="stable")
    tp_all, lab_all = tp_all[order], lab_all[order]
    ap = []
    for c in range(1, 201):
        t = tp_all[lab_all == c]
        tp = np.cumsum(t)
        fp = np.cumsum(1 - t)
        rec = tp / num_pos[c]
        prec = tp / np.maximum(tp + fp, 1e-300)
        mrec = np.concatenate([[0], rec, [1]])
        mpre = np.concatenate([[0], prec, [0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        j = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        ap.append(float(np.sum((mrec[j] - mrec[j - 1]) * mpre[j])))
    return ap


def plain_reference(root: Path, submission: Path, blacklist: Path | None) -> dict:
    """eval_detection.m, transcribed plainly with numpy and the standard library's XML parser: read the
    list and every XML, the blacklist, the predictions (np.loadtxt), group per image, match each image's
    detections in descending confidence to the best still-free same-class box above its threshold,
    then AP per class over all images (VOCap). Returns {"mean_ap", "ap"}."""
    rows = [line.split("\t") for line in CLASSES.read_text().splitlines()[1:] if line.strip()]
    label_of = {wnid: int(index) for index, wnid, _ in rows}
    ids, gt_labels, gt_boxes, gt_thr, num_pos = _read_ground_truth(root, label_of)
    black = {}
    if blacklist is not None:
        for line in blacklist.read_text().splitlines():
            if line.strip():
                i, w = line.split()
                black.setdefault(int(i), set()).add(label_of[w])
    pred = np.loadtxt(submission, ndmin=2)
    img = pred[:, 0].astype(int)
    order = np.argsort(img, kind="stable")
    pred = pred[order]
    starts = np.searchsorted(pred[:, 0], ids, side="left")
    ends = np.searchsorted(pred[:, 0], ids, side="right")
    matched = []
    for k, i in enumerate(ids):
        bl = black.get(i, set())
        matched += _match_image(pred[starts[k]:ends[k]], gt_labels[k], gt_boxes[k], gt_thr[k], bl)
        for c in bl:
            num_pos[c] -= int((gt_labels[k] == c).sum())
    tp_all, conf_all, lab_all = (np.array(col) for col in zip(*matched)) if matched else (np.zeros(0),) * 3
    ap = _vocap(tp_all, conf_all, lab_all, num_pos)
    return {"mean_ap": float(np.mean(ap)), "ap": ap}



if __name__ == "__main__":
    root, submission = Path(sys.argv[1]), Path(sys.argv[2])
    blacklist = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps({"mean_ap": plain_reference(root, submission, blacklist)["mean_ap"]}))
