"""Pieces the training tool hands to ``detect.engine.fit``: the loss callable and the coverage evaluation."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from detect.io import load_checkpoint
from proposals.multibox.loss import multibox_loss
from proposals.multibox.model import decode_boxes, top_k_boxes
from proposals.multibox.priors import compute_priors, normalised_boxes
from proposals.recall import proposal_recall

log = logging.getLogger(__name__)

__all__ = ["MultiBoxLossFn", "evaluate_coverage", "resolve_priors"]


class MultiBoxLossFn:
    """``(model, batch, device) -> (loss, {"gt_per_image": float})`` for the engine.

    batch: a :class:`proposals.multibox.data.MultiBoxBatch` from ``collate_multibox``.
    match: "priors" assigns ground truth to the model's priors (Erhan et al.'s training with priors),
    "predictions" to the current predictions (see :mod:`proposals.multibox.loss`).
    """

    def __init__(self, alpha: float, match: str = "priors"):
        if match not in ("priors", "predictions"):
            raise ValueError(f"loss.match must be 'priors' or 'predictions', got {match!r}")
        self.alpha = alpha
        self.match = match

    def __call__(self, model, batch, device):
        gt = batch.boxes
        boxes, logits = model(batch.images.to(device, non_blocking=True))
        priors = getattr(model, "module", model).priors if self.match == "priors" else None  # DDP wraps
        loss = multibox_loss(boxes, logits, gt, self.alpha, priors=priors)
        return loss, {"gt_per_image": sum(len(g) for g in gt) / max(len(gt), 1)}


@torch.inference_mode()
def evaluate_coverage(model, loader, device, top_k: int, iou: float = 0.5) -> dict:
    """Coverage of the top-``top_k`` boxes (by confidence) of ``model`` on ``loader`` (a
    ``MultiBoxDataset`` loader without augmentation): share of ground-truth boxes with one of them at
    IoU >= ``iou`` (``proposals.recall``, in normalised coordinates, which leave IoU unchanged).
    Returns ``{"coverage", "mabo", "n_gt"}``."""
    was_training = model.training
    model.eval()
    proposals, gts = [], []
    for batch in loader:
        images, gt = batch.images, batch.boxes
        if len(gt) == 0:
            continue
        boxes, logits = model(images.to(device))
        top, _ = top_k_boxes(boxes, logits, top_k)
        proposals += list(decode_boxes(top, 1, 1).cpu().numpy())  # corners in order, clipped to the unit square
        gts += [g.numpy() for g in gt]
    model.train(was_training)
    r = proposal_recall(gts, proposals, ks=(top_k,), iou_threshold=iou, plus_one=False)
    return {"coverage": r.coverage_050, "mabo": r.mabo, "n_gt": r.num_gt}


def resolve_priors(checkpoint, dataset, k: int, seed: int, iterations: int, tolerance: float = 1e-6) -> np.ndarray:
    """The priors of a run: those stored in ``checkpoint`` when it exists (a resumed run), else k-means
    over ``dataset``'s normalised ground-truth boxes. Returns ``ndarray[k, 4] float32``."""
    if checkpoint is not None and Path(checkpoint).is_file():
        stored = load_checkpoint(checkpoint).get("priors")
        if stored is not None and tuple(stored.shape) == (k, 4):
            log.info("%s: using the stored priors", checkpoint)
            return np.asarray(stored, dtype=np.float32)
    boxes = normalised_boxes(dataset.records)
    log.info("computing %d priors from %d ground-truth boxes", k, len(boxes))
    return compute_priors(boxes, k=k, seed=seed, iterations=iterations, tolerance=tolerance)
