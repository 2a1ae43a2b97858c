"""How well proposals cover ground truth: coverage (recall) at IoU 0.5 and at the ILSVRC small-object
threshold, mean best overlap (MABO), and recall as a function of the number of proposals.

``plus_one=True`` measures widths as ILSVRC's evaluator does (``x2 - x1 + 1``, inclusive pixel
boxes) both for the IoU and for the small-object threshold ``min(0.5, wh / ((w + 10)(h + 10)))``;
``plus_one=False`` (COCO-style continuous boxes) uses ``x2 - x1``. Ignored ground truth (VOC
``difficult``, COCO ``iscrowd``) and blacklisted (image, class) pairs are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detect.boxes import box_iou
from detect.evaluation import ilsvrc_thresholds

__all__ = ["ProposalRecall", "best_proposal_overlaps", "proposal_recall", "store_recall"]


def _widen(boxes: np.ndarray, plus_one: bool) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return boxes + [0.0, 0.0, 1.0, 1.0] if plus_one else boxes


def best_proposal_overlaps(gt: np.ndarray, proposals: np.ndarray, ks: Sequence[int] = (), plus_one: bool = True):
    """Best IoU of each ground-truth box over all proposals, and over the first ``k`` for each ``k``:
    gt ``[G, 4]``, proposals ``[N, 4]`` xyxy -> (``float64[G]``, ``float64[len(ks), G]``)."""
    g, p = _widen(gt, plus_one), _widen(proposals, plus_one)
    # column k: the best IoU over the first k proposals (column 0: none, IoU 0)
    running = np.maximum.accumulate(np.concatenate([np.zeros((len(g), 1)), box_iou(g, p)], axis=1), axis=1)
    return running[:, -1], running[:, np.clip(np.asarray(ks, np.int64), 0, len(p))].T


@dataclass
class ProposalRecall:
    """Coverage figures of one method on one dataset split (``recall_at_k[i]`` belongs to ``ks[i]``)."""

    num_images: int
    num_gt: int
    boxes_per_image: float
    coverage_050: float
    coverage_ilsvrc: float
    mabo: float
    ks: list[int]
    recall_at_k: list[float]
    recall_ilsvrc_at_k: list[float]


def proposal_recall(gts: Sequence[np.ndarray], proposals: Sequence[np.ndarray], keep: Sequence[np.ndarray] | None = None,
                    ks: Sequence[int] = (1, 10, 100, 1000), iou_threshold: float = 0.5,
                    plus_one: bool = True) -> ProposalRecall:
    """Coverage of ground truth by proposals over a dataset.

    gts[i]: ``[G_i, 4]`` ground truth of image i; proposals[i]: ``[N_i, 4]`` in rank order;
    keep[i]: ``bool[G_i]`` ground truth that counts (None: all). ``coverage_050`` = share of counted
    boxes with a proposal at IoU >= ``iou_threshold``; ``coverage_ilsvrc`` uses the per-box threshold
    of :func:`ilsvrc_thresholds`; ``mabo`` = mean best overlap; recall over the first ``k`` proposals.
    """
    if len(gts) != len(proposals):
        raise ValueError(f"{len(gts)} ground-truth lists but {len(proposals)} proposal lists")
    ks = [int(k) for k in ks]
    per_image = [(np.zeros(0), np.zeros((len(ks), 0)), np.zeros(0))]  # (best, at_k, thresholds); for no image at all
    for i, (gt, props) in enumerate(zip(gts, proposals)):
        gt = np.asarray(gt, np.float64).reshape(-1, 4)
        if keep is not None:
            gt = gt[np.asarray(keep[i], bool).reshape(-1)]
        per_image.append((*best_proposal_overlaps(gt, props, ks, plus_one), ilsvrc_thresholds(gt, plus_one=plus_one)))
    best, at_k, thr = (np.concatenate(column, axis=-1) for column in zip(*per_image))  # at_k: along the images
    n = len(best)
    share = (lambda m: float(m.mean()) if n else 0.0)
    return ProposalRecall(
        num_images=len(gts),
        num_gt=n,
        boxes_per_image=float(np.mean([len(np.asarray(p).reshape(-1, 4)) for p in proposals])) if len(proposals) else 0.0,
        coverage_050=share(best >= iou_threshold),
        coverage_ilsvrc=share(best >= thr),
        mabo=share(best),
        ks=ks,
        recall_at_k=[share(row >= iou_threshold) for row in at_k],
        recall_ilsvrc_at_k=[share(row >= thr) for row in at_k],
    )


def store_recall(store, dataset, ks: Sequence[int] = (1, 10, 100, 1000), iou_threshold: float = 0.5,
                 plus_one: bool = True, skipped=None) -> ProposalRecall:
    """:func:`proposal_recall` of a ``ProposalStore`` on a ``DetectionDataset`` (ignored and blacklisted
    ground truth left out). Images the store lacks are recorded in ``skipped`` (a SkipLog) and left out."""
    gts, props, keeps = [], [], []
    for rec in dataset.records:
        if rec.image_id not in store:
            if skipped is not None:
                skipped.add(rec.path, "no proposals stored for this image")
            continue
        black = np.array([(rec.index, int(l)) in dataset.blacklist for l in rec.labels], bool)
        gts.append(rec.boxes)
        keeps.append(~rec.ignore & ~black)
        props.append(store.get(rec.image_id))
    return proposal_recall(gts, props, keeps, ks, iou_threshold, plus_one)
