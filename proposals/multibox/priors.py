"""MultiBox priors: k-means over ground-truth boxes normalised to ``[0, 1]`` by image size.

Each box is a 4-d point ``(x1, y1, x2, y2)``; the K cluster centres become the priors the network
predicts offsets from (Erhan et al., CVPR 2014, section 3.1). Seeded k-means++ initialisation and a
fixed number of Lloyd iterations (stopping early when no centre moves by more than ``tolerance``)
make the result a pure function of ``(boxes, k, seed, iterations)``.
"""
from __future__ import annotations

import logging

import numpy as np

from detect.boxes import order_corners

log = logging.getLogger(__name__)

__all__ = ["compute_priors", "normalised_boxes"]

_CHUNK = 65536  # points per distance block, bounds memory at ~_CHUNK * k * 8 bytes


def normalised_boxes(records) -> np.ndarray:
    """Ground-truth boxes of ``records`` (DetectionRecord iterable, ignored boxes left out) divided
    by their image's width/height. Returns ``ndarray[N, 4] float64`` in ``[0, 1]``."""
    parts = []
    for r in records:
        keep = ~r.ignore
        if not keep.any() or r.width <= 0 or r.height <= 0:
            continue
        scale = np.array([r.width, r.height, r.width, r.height], dtype=np.float64)
        parts.append((r.boxes[keep].astype(np.float64) / scale).clip(0.0, 1.0))
    return np.concatenate(parts) if parts else np.zeros((0, 4), dtype=np.float64)


def _nearest(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest centre. ``[N, 4], [K, 4] -> [N] int64, [N] float64``."""
    c2 = (centres**2).sum(1)
    index, dist = [np.zeros(0, np.int64)], [np.zeros(0)]
    for s in range(0, len(points), _CHUNK):
        p = points[s : s + _CHUNK]
        d = (p**2).sum(1)[:, None] - 2.0 * p @ centres.T + c2[None, :]
        index.append(d.argmin(1))
        dist.append(np.maximum(d.min(1), 0.0))
    return np.concatenate(index), np.concatenate(dist)


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D^2 sampling) of ``k <= len(distinct points)`` centres."""
    centres = [points[rng.integers(len(points))]]
    dist = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # every point already a centre (only with duplicates among the points)
            break
        i = rng.choice(len(points), p=dist / total)
        centres.append(points[i])
        dist = np.minimum(dist, ((points - points[i]) ** 2).sum(1))
    return np.stack(centres)


def compute_priors(boxes_normalised: np.ndarray, k: int = 200, seed: int = 0, iterations: int = 50,
                   tolerance: float = 1e-6) -> np.ndarray:
    """K prior boxes by k-means over normalised ground-truth boxes.

    boxes_normalised: ndarray[N, 4], xyxy in [0, 1] (see :func:`normalised_boxes`).
    Returns ``ndarray[k, 4] float32``, xyxy in [0, 1], sorted by area (largest first), deterministic
    for a given seed. With fewer distinct boxes than ``k`` every distinct box is a prior and the rest
    are copies of them jittered by a seeded +-0.02, clipped and kept ordered (x1 <= x2, y1 <= y2).
    Raises ``ValueError`` when there are no boxes or ``k < 1``.
    """
    points = np.asarray(boxes_normalised, dtype=np.float64).reshape(-1, 4)
    if k < 1:
        raise ValueError(f"number of priors must be >= 1, got {k}")
    if len(points) == 0:
        raise ValueError("no ground-truth boxes to compute MultiBox priors from")
    rng = np.random.default_rng(seed)
    distinct = np.unique(points, axis=0)  # sorted: independent of the input order
    if len(distinct) <= k:
        log.warning("only %d distinct boxes for %d priors: filling with jittered copies", len(distinct), k)
        extra = distinct[rng.integers(len(distinct), size=k - len(distinct))]
        extra = (extra + rng.uniform(-0.02, 0.02, size=extra.shape)).clip(0.0, 1.0)
        centres = np.concatenate([distinct, extra])
    else:
        centres = _kmeans_pp(distinct, k, rng)
        for it in range(iterations):
            index, dist = _nearest(points, centres)
            sums = np.zeros_like(centres)
            np.add.at(sums, index, points)
            counts = np.bincount(index, minlength=len(centres))
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
            for empty in np.flatnonzero(counts == 0):  # re-seed an empty cluster at the worst-served point
                far = int(dist.argmax())
                new[empty] = points[far]
                dist[far] = 0.0
            shift = np.abs(new - centres).max()
            centres = new
            if shift <= tolerance:
                log.debug("k-means converged after %d iterations", it + 1)
                break
    centres = order_corners(centres)
    area = (centres[:, 2] - centres[:, 0]) * (centres[:, 3] - centres[:, 1])
    order = np.lexsort((centres[:, 3], centres[:, 2], centres[:, 1], centres[:, 0], -area))
    return centres[order].astype(np.float32)
