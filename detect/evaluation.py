"""Average precision of detections against a dataset's ground truth, under four sets of rules.

``ilsvrc`` follows the ILSVRC devkit's ``eval_detection.m``:
- widths use the +1 pixel convention (``plus_one=True``; the only place in the project that has it);
- a ground-truth box of size w x h is matched at IoU >= min(0.5, w*h / ((w + 10) * (h + 10)));
- within each image, detections of all classes in descending confidence each take the still-unmatched
  same-class ground truth with the highest IoU at or above that box's threshold, else are false positives;
- per class, detections over all images in descending confidence; AP = area under the monotone
  precision envelope (VOC 2010+); blacklisted (image index, class) pairs: detections dropped, ground
  truth not counted.
``voc``: IoU >= 0.5 (+1 widths); per class, detections over all images in descending confidence each
take the ground truth with the highest IoU; if it is taken already, a false positive; ``ignore``
(difficult) boxes neither count nor penalise. Area AP. ``voc07``: the same with 11-point AP.
``coco``: COCOeval's matching at IoU 0.5 (no +1; at most ``max_dets`` detections per image and class;
crowd = ``ignore`` boxes matched by intersection over detection area, reusable, and their detections
ignored; unmatched non-crowd ground truth preferred), AP50 with 101-point interpolation (equal to
pycocotools) or the area under the envelope (``interpolation="area"``).

Detections are scored exactly as given, as the official code scores them: nothing is clipped or
dropped here. Under ``ilsvrc``/``voc`` rules (+1 widths) a box with ``x2 < x1`` (or ``y2 < y1``) by a
pixel or more overlaps nothing and counts as a false positive, while ``x2 == x1`` is a box one pixel
wide and one inverted by less than a pixel still has a positive width; boxes reaching outside the
image are matched as they are. Under ``coco`` rules a box of zero or negative width or height overlaps
nothing; an unmatched detection whose area ``w * h`` lies outside COCOeval's "all" range ``[0, 1e10]``
(exactly one negative side) is ignored, as COCOeval ignores it, and one with zero area is a false
positive.

Ties in confidence are broken by image index, then by position in the ``Detections`` (for ``voc``: by
position only, the order of a VOC results file); ties in IoU by the ground truth's order in its
record (``coco``: the later one, as COCOeval does). Ground truth flagged ``ignore`` under ``ilsvrc``
rules: a detection taking it is neither true nor false positive (as under ``voc``), but, like any ground
truth under these rules, it is taken once (under ``voc`` every detection whose best box it is, is ignored).

Classes without ground truth (after the blacklist): ``classes_without_gt="skip"`` (default) leaves them
out of the mean (AP NaN, as COCOeval does); ``"zero"`` counts them as AP 0 so the mean is over all
classes (the devkit averages over all 200 classes, every one of which has ground truth on full val).
Detections whose image index is not in the dataset raise ``ValueError`` (``unknown_images="error"``,
default) or are dropped and counted (``"ignore"``).

Only numpy here (pycocotools is imported inside ``coco_ap50_pycocotools``).
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["RULES", "EvalResult", "average_precision", "coco_ap50_pycocotools", "evaluate", "ilsvrc_thresholds",
           "pair_iou", "rules_for_dataset"]

RULES = ("ilsvrc", "voc", "voc07", "coco")
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval's params.recThrs
VOC07_RECALL_THRESHOLDS = np.arange(11) * 0.1         # VOC2007 devkit's 0:0.1:1
COCO_AREA_ALL = (0.0, 1e5**2)                         # COCOeval's areaRng "all"


def rules_for_dataset(data) -> str:
    """The evaluation rules a data config declares: its ``rules`` key (``ilsvrc | voc | voc07 | coco``),
    set by the data format's box convention in ``conf/data/<name>.yaml`` (inclusive pixels and the
    devkit's matching: ``ilsvrc``/``voc``; continuous boxes: ``coco``, as for COCO and YOLO labels).
    Never guessed from a name. ``data``: the data config (a mapping). ``ValueError`` naming the config
    when it declares none or an unknown one."""
    rules = data.get("rules")
    if rules not in RULES:
        raise ValueError(f"data={data.get('name')} declares "
                         f"rules={rules!r}: the data config must say which rules score it "
                         f"(rules: {' | '.join(RULES)} in conf/data/<name>.yaml, or data.rules=... on the command line)")
    return str(rules)


def pair_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of box pairs ``a[i]``, ``b[i]`` (``[P, 4]`` xyxy each) -> ``float64[P]``; 0 where they do not overlap.

    ``plus_one``: ILSVRC/VOC pixel convention, width = x2 - x1 + 1. ``crowd: bool[P]``: for those pairs
    the denominator is the area of ``a`` (COCO's intersection over detection area for crowd boxes)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if plus_one else 0.0
    iw, ih = (np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]) + one).T
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    area_a, area_b = ((x[:, 2] - x[:, 0] + one) * (x[:, 3] - x[:, 1] + one) for x in (a, b))
    union = area_a + area_b - inter if crowd is None else np.where(crowd, area_a, area_a + area_b - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap & (union > 0), inter / union, 0.0)


def ilsvrc_thresholds(boxes: np.ndarray, iou_threshold: float = 0.5, pixel_tolerance: float = 10.0,
                      plus_one: bool = True) -> np.ndarray:
    """Per-ground-truth IoU threshold of the ILSVRC rules (small objects), ``[G, 4]`` -> ``float64[G]``:
    ``min(iou_threshold, w*h / ((w + tol) * (h + tol)))`` with ``w = x2 - x1 + 1`` (the +1 convention;
    ``plus_one=False``: ``w = x2 - x1``, for continuous coordinates). The one definition, used by the
    evaluator and by proposal coverage (:mod:`proposals.recall`)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = (boxes[:, 2:] - boxes[:, :2] + (1.0 if plus_one else 0.0)).T
    return np.minimum(iou_threshold, (w * h) / ((w + pixel_tolerance) * (h + pixel_tolerance)))


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """AP from a ranked list's ``recall[K]`` and ``precision[K]``.

    ``area``: area under the monotone precision envelope (VOC 2010+, ILSVRC); ``11point``: VOC2007's mean
    of the best precision at recall >= 0, 0.1, ..., 1; ``101point``: COCOeval's (envelope sampled at
    the first rank reaching recall 0, 0.01, ..., 1; 0 beyond the last)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if method == "area":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))
    if method == "11point":  # summed in the devkit's order
        return float(sum(precision[recall >= t].max(initial=0.0) / 11.0 for t in VOC07_RECALL_THRESHOLDS))
    if method == "101point":  # env[-1]: the 0 of thresholds beyond the last rank's recall
        env = np.r_[np.maximum.accumulate(precision[::-1])[::-1], 0.0]
        return float(env[np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")].mean())
    raise ValueError(f"unknown AP method {method!r} (area | 11point | 101point)")


def _rank(*keys: np.ndarray) -> np.ndarray:
    """Position of each element in ``np.lexsort(keys)`` order (the last key primary), ``int64[M]``."""
    order = np.lexsort(keys)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _candidates(det: dict, gt: dict, plus_one: bool, crowd: bool = False):
    """Every (detection, ground truth) pair of one image and class: ``d, g: int64[P]`` by detection, then
    gt, and their ``iou: float64[P]`` (``crowd``: ``ignore`` boxes by intersection over detection area)."""
    gt_order = np.argsort(gt["key"], kind="stable")
    sorted_keys = gt["key"][gt_order]
    start = np.searchsorted(sorted_keys, det["key"], side="left")
    counts = np.searchsorted(sorted_keys, det["key"], side="right") - start
    d = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    g = gt_order[np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(len(d), dtype=np.int64)]
    return d, g, pair_iou(det["boxes"][d], gt["boxes"][g], plus_one, gt["ignore"][g] if crowd else None)


def _greedy(det: dict, gt: dict, d: np.ndarray, g: np.ndarray, prefer: tuple, reusable: np.ndarray):
    """Each detection in descending confidence (ties by position) takes the first ground truth of its
    candidate pairs ``d, g`` (ordered by the lexsort keys ``prefer``) that is free or ``reusable``.
    Returns the gt each detection took (-1: none) ``int64[M]`` and its status ``int8[M]``: 1 true
    positive, 0 false positive, -1 ignored (took an ``ignore`` ground truth)."""
    m = len(det["score"])
    o = np.lexsort((*prefer, _rank(np.arange(m), -det["score"])[d]))
    out, taken, reuse = [-1] * m, bytearray(len(reusable)), reusable.tolist()
    for i, j in zip(d[o].tolist(), g[o].tolist()):
        if out[i] < 0 and (reuse[j] or not taken[j]):
            out[i], taken[j] = j, 1
    det_gt = np.asarray(out, dtype=np.int64)
    status = (det_gt >= 0).astype(np.int8)
    status[(det_gt >= 0) & gt["ignore"][np.maximum(det_gt, 0)]] = -1
    return det_gt, status


def _match_ilsvrc(det, gt, iou_threshold, pixel_tolerance):
    d, g, iou = _candidates(det, gt, plus_one=True)
    ok = (iou > 0) & (iou >= ilsvrc_thresholds(gt["boxes"], iou_threshold, pixel_tolerance)[g])
    return _greedy(det, gt, d[ok], g[ok], (g[ok], -iou[ok]), np.zeros(len(gt["key"]), bool))[1]


def _match_voc(det, gt, iou_threshold):
    d, g, iou = _candidates(det, gt, plus_one=True)
    o = np.lexsort((g, -iou, d))  # each detection's best ground truth (ties: the first in its record) ...
    first = np.diff(d[o], prepend=-1) != 0
    best = o[first & (iou[o] > 0) & (iou[o] >= iou_threshold)]  # ... is its only candidate
    return _greedy(det, gt, d[best], g[best], (), gt["ignore"])[1]


def _match_coco(det, gt, iou_threshold):
    d, g, iou = _candidates(det, gt, plus_one=False, crowd=True)
    ok = iou >= min(iou_threshold, 1 - 1e-10)
    d, g, iou = d[ok], g[ok], iou[ok]
    det_gt, status = _greedy(det, gt, d, g, (-g, -iou, gt["ignore"][g]), gt["ignore"])
    b = det["boxes"]  # unmatched, outside COCOeval's area range "all" (one negative side): ignored (module text)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    status[(det_gt < 0) & ((area < COCO_AREA_ALL[0]) | (area > COCO_AREA_ALL[1]))] = -1
    return status


@dataclass
class EvalResult:
    """Per-class AP and curves. ``ap: float64[C]`` (NaN: no ground truth, left out of the mean),
    ``num_gt, num_det: int64[C]``, ``precision[c], recall[c]: float64[K_c]`` in ranked order."""

    rules: str
    class_names: list[str]
    ap: np.ndarray
    num_gt: np.ndarray
    num_det: np.ndarray
    precision: list[np.ndarray]
    recall: list[np.ndarray]
    mean_ap: float
    median_ap: float
    num_unknown_detections: int = 0
    options: dict = field(default_factory=dict)

    def ranked_classes(self) -> list[int]:
        """Class labels sorted by AP, best first (classes with NaN AP last)."""
        return sorted(range(len(self.ap)), key=lambda c: (np.isnan(self.ap[c]), -np.nan_to_num(self.ap[c], nan=0.0)))

    def table(self) -> str:
        """Per-class AP table sorted by AP, then mean and median."""
        width = max([len(n) for n in self.class_names] + [5])
        lines = [f"{'class':<{width}}  {'AP':>7}  {'#gt':>7}  {'#det':>8}"]
        for c in self.ranked_classes():
            ap = "    n/a" if np.isnan(self.ap[c]) else f"{100 * self.ap[c]:7.2f}"
            lines.append(f"{self.class_names[c]:<{width}}  {ap}  {self.num_gt[c]:7d}  {self.num_det[c]:8d}")
        lines.append(f"mean AP ({self.rules}): {100 * self.mean_ap:.2f}   median AP: {100 * self.median_ap:.2f}")
        return "\n".join(lines)

    def to_json(self, curves: bool = True) -> dict:
        """Everything as plain JSON types (NaN AP as ``null``)."""
        number = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
        out = {"rules": self.rules, "options": self.options, "mean_ap": number(self.mean_ap),
               "median_ap": number(self.median_ap), "num_unknown_detections": self.num_unknown_detections,
               "classes": []}
        for c, name in enumerate(self.class_names):
            row = {"label": c, "name": name, "ap": number(self.ap[c]),
                   "num_gt": int(self.num_gt[c]), "num_det": int(self.num_det[c])}
            if curves:
                row.update(precision=self.precision[c].tolist(), recall=self.recall[c].tolist())
            out["classes"].append(row)
        return out


def _ground_truth(dataset, num_classes: int) -> dict:
    """Flattened ground truth: ``image`` (record position), ``index`` (1-based), ``labels``, ``boxes``, ``ignore``."""
    recs = dataset.records
    counts = np.array([len(r.labels) for r in recs], dtype=np.int64)
    pos = np.repeat(np.arange(len(recs), dtype=np.int64), counts)
    index = np.array([r.index for r in recs], dtype=np.int64)
    cat = (lambda xs, shape, dtype: np.concatenate(xs).astype(dtype) if len(xs) else np.zeros(shape, dtype))
    labels = cat([r.labels for r in recs], (0,), np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"dataset {dataset.name!r}: ground-truth label outside 0..{num_classes - 1}")
    return {"image": pos, "index": index[pos], "labels": labels,
            "boxes": cat([r.boxes for r in recs], (0, 4), np.float64).reshape(-1, 4),
            "ignore": cat([r.ignore for r in recs], (0,), bool)}


def evaluate(dataset, detections, rules: str = "ilsvrc", iou_threshold: float = 0.5, pixel_tolerance: float = 10.0,
             max_dets: int = 100, interpolation: str = "101point", classes_without_gt: str = "skip",
             unknown_images: str = "error") -> EvalResult:
    """AP per class and mAP of ``detections`` (a ``detect.detections.Detections``) on ``dataset``
    (a ``DetectionDataset``) under ``rules`` (``ilsvrc | voc | voc07 | coco``; see the module text).

    ``iou_threshold``: the 0.5 of every rule set; ``pixel_tolerance``: ILSVRC's small-object term (10);
    ``max_dets``: COCO's detections per image and class (100); ``interpolation``: COCO AP's ``101point``
    (pycocotools) or ``area``; ``classes_without_gt``: ``skip | zero``; ``unknown_images``: ``error | ignore``."""
    for name, value, allowed in (("rules", rules, RULES), ("classes_without_gt", classes_without_gt, ("skip", "zero")),
                                 ("unknown_images", unknown_images, ("error", "ignore"))):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r} ({' | '.join(allowed)})")
    num_classes = len(dataset.classes)
    gt = _ground_truth(dataset, num_classes)
    det, num_unknown = _place_detections(dataset, detections, unknown_images)
    if len(detections.labels) and (detections.labels.min() < 0 or detections.labels.max() >= num_classes):
        raise ValueError(f"detection labels outside 0..{num_classes - 1}")
    if dataset.blacklist:  # blacklisted (image index, label) pairs: drop detections, do not count ground truth
        black = np.array([i * num_classes + c for i, c in dataset.blacklist], dtype=np.int64)
        gt, det = ({k: v[~np.isin(x["index"] * num_classes + x["labels"], black)] for k, v in x.items()} for x in (gt, det))
    gt["key"] = gt["image"] * num_classes + gt["labels"]
    det["key"] = det["image"] * num_classes + det["labels"]

    if rules == "coco":  # at most max_dets per image and class: rank by (key, -score, position) less the key's start
        key = det["key"]
        keep = _rank(np.arange(len(key)), -det["score"], key) - np.searchsorted(np.sort(key), key) < max_dets
        det = {k: v[keep] for k, v in det.items()}

    status = (_match_ilsvrc(det, gt, iou_threshold, pixel_tolerance) if rules == "ilsvrc"
              else _match_coco(det, gt, iou_threshold) if rules == "coco" else _match_voc(det, gt, iou_threshold))

    method = {"ilsvrc": "area", "voc": "area", "voc07": "11point", "coco": interpolation}[rules]
    num_gt = np.bincount(gt["labels"][~gt["ignore"]], minlength=num_classes).astype(np.int64)
    num_det = np.bincount(det["labels"], minlength=num_classes).astype(np.int64)
    ap, precision, recall = _class_curves(det, status, num_gt, method, classes_without_gt,
                                          tie_by_image=rules not in ("voc", "voc07"))
    counted = ap[~np.isnan(ap)]
    options = {"iou_threshold": iou_threshold, "pixel_tolerance": pixel_tolerance, "max_dets": max_dets,
               "ap_method": method, "classes_without_gt": classes_without_gt, "unknown_images": unknown_images}
    mean, median = (float(f(counted)) if len(counted) else float("nan") for f in (np.mean, np.median))
    return EvalResult(rules, list(dataset.classes.names), ap, num_gt, num_det, precision, recall, mean, median,
                      num_unknown_detections=num_unknown, options=options)


def _place_detections(dataset, detections, unknown_images: str) -> tuple[dict[str, np.ndarray], int]:
    """The detections whose image is in ``dataset``, as arrays (``image``: position in ``dataset.records``;
    ``index``, ``labels``, ``score`` float64, ``boxes`` float64 [N, 4]), and the count of those on images
    that are not; with ``unknown_images="error"`` any such detection is a ``ValueError``."""
    record_index = np.array([r.index for r in dataset.records], dtype=np.int64)
    known = np.isin(detections.image_index, record_index)
    sorter = np.argsort(record_index, kind="stable")
    pos = sorter[np.searchsorted(record_index, detections.image_index[known], sorter=sorter)]
    num_unknown = int((~known).sum())
    if num_unknown and unknown_images == "error":
        bad = np.unique(detections.image_index[~known])[:5].tolist()
        raise ValueError(f"{num_unknown} detections refer to images not in dataset {dataset.name!r} "
                         f"(image indices {bad}...); pass unknown_images='ignore' to drop them")
    return {"image": pos, "index": detections.image_index[known], "labels": detections.labels[known],
            "score": detections.scores[known].astype(np.float64),
            "boxes": detections.boxes[known].astype(np.float64)}, num_unknown


def _class_curves(det: dict, status: np.ndarray, num_gt: np.ndarray, method: str, classes_without_gt: str,
                  tie_by_image: bool) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """AP ``float64[C]`` (NaN for a class without ground truth unless ``classes_without_gt="zero"``) and
    the precision and recall arrays of each class, from the matching ``status`` of each detection
    (1 true positive, 0 false positive, -1 not counted), ranked as the module text says."""
    m, num_classes = len(status), len(num_gt)
    tie = det["index"] if tie_by_image else np.zeros(m, dtype=np.int64)
    order = np.lexsort((np.arange(m), tie, -det["score"], det["labels"]))
    order = order[status[order] >= 0]
    labels_sorted = det["labels"][order]
    tp_sorted = status[order] == 1
    bounds = np.searchsorted(labels_sorted, np.arange(num_classes + 1))
    eps = np.spacing(1) if method == "101point" else 0.0  # COCOeval's tp / (tp + fp + eps)
    ap = np.full(num_classes, np.nan)
    precision, recall = [], []
    for c in range(num_classes):
        tp = np.cumsum(tp_sorted[bounds[c]:bounds[c + 1]]).astype(np.float64)
        fp = np.arange(1, len(tp) + 1, dtype=np.float64) - tp
        rec = tp / num_gt[c] if num_gt[c] else np.zeros_like(tp)
        prec = tp / (fp + tp + eps)  # fp + tp: the rank, from 1
        precision.append(prec)
        recall.append(rec)
        if num_gt[c]:
            ap[c] = average_precision(rec, prec, method)
        elif classes_without_gt == "zero":
            ap[c] = 0.0
    return ap, precision, recall


def coco_ap50_pycocotools(dataset, detections, max_dets: int = 100) -> float:
    """AP at IoU 0.5 (area all, ``max_dets`` per image) by pycocotools' COCOeval, for comparison.

    The ground truth is built in memory from ``dataset`` (image id = record index, category id =
    label + 1, ``ignore`` -> ``iscrowd``, area = box area, annotation ids from 1); detections of unknown
    images are dropped; no blacklist (COCO has none). Unlike pycocotools on a user's file holding an
    annotation ``id`` 0 (COCOeval takes a match to id 0 for "unmatched", ``dtm``/``gtm`` 0: a false
    positive), a detection matching it is a true positive here, as in :func:`evaluate` (the COCO reader
    warns about such files, naming them).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _ground_truth(dataset, len(dataset.classes))
    det, _ = _place_detections(dataset, detections, unknown_images="ignore")
    xywh = lambda b: np.hstack([b[:, :2], b[:, 2:] - b[:, :2]]).tolist()  # noqa: E731
    images = [{"id": int(r.index), "width": int(r.width), "height": int(r.height)} for r in dataset.records]
    anns = [{"id": k + 1, "image_id": i, "category_id": c + 1, "bbox": b, "area": b[2] * b[3], "iscrowd": int(ig)}
            for k, (i, c, b, ig) in enumerate(zip(gt["index"].tolist(), gt["labels"].tolist(), xywh(gt["boxes"]),
                                                  gt["ignore"].tolist()))]
    cats = [{"id": c + 1, "name": n} for c, n in enumerate(dataset.classes.names)]
    results = [{"image_id": i, "category_id": c + 1, "bbox": b, "score": s}
               for i, c, s, b in zip(det["index"].tolist(), det["labels"].tolist(), det["score"].tolist(),
                                     xywh(det["boxes"]))]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        coco_gt.createIndex()
        if not results:
            return 0.0 if any(not a["iscrowd"] for a in anns) else float("nan")
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [max_dets]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e5**2]], ["all"]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][0, :, :, 0, 0]  # [R, K] at IoU 0.5, area "all", maxDets max_dets
    p = p[:, (p > -1).all(axis=0)]
    return float(p.mean(axis=0).mean()) if p.size else float("nan")
