"""The MultiBox training objective (Erhan et al., CVPR 2014, section 3.2).

For one image with predictions ``l_i`` (boxes, normalised xyxy), confidences ``c_i = sigmoid(z_i)``
and ground truth ``g_j``::

    F(x, l, c) = alpha/2 * sum_ij x_ij ||l_i - g_j||^2 - sum_ij x_ij log c_i - sum_i (1 - sum_j x_ij) log(1 - c_i)

minimised over bipartite assignments ``x`` (each prediction and each ground truth matched at most
once, ``min(K, G)`` pairs). Since ``F = -sum_i log(1 - c_i) + sum_ij x_ij cost_ij`` with
``cost_ij = alpha/2 ||l_i - g_j||^2 - log c_i + log(1 - c_i)``, the optimal ``x`` is the linear sum
assignment of ``cost`` (Hungarian algorithm, scipy). The assignment is held fixed for the gradient.

Training with priors (Erhan et al.): when the predictions are residuals to K priors, the
assignment can be made between the ground truth and the *priors* instead of the predictions (cost
``alpha/2 ||p_i - g_j||^2``, the matching part that depends on locations only), and ``F`` is then
evaluated at that assignment. Each output slot then always answers for the same region of box
space, so its confidence learns "is there an object near my prior in this image" and its offsets a
residual. Matching against the predictions instead lets the network make any few slots confident and
have them matched to whatever ground truth the image holds (the confidence part of the cost outweighs
the location part at small alpha), a degenerate solution seen in our CPU runs (benchmarks/multibox.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["match", "match_priors", "multibox_loss"]


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Tensor[K, 4], Tensor[G, 4] -> Tensor[K, G] float32``: squared L2 distance of every pair."""
    return ((a.float()[:, None, :] - b.float()[None, :, :]) ** 2).sum(-1)


def _assign(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Least-cost bipartite assignment of a ``Tensor[K, G]`` cost (Hungarian algorithm, scipy) ->
    ``(row int64[M], col int64[M])``, ``M = min(K, G)``; empty when either side is empty."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


def match(pred_boxes: torch.Tensor, pred_logits: torch.Tensor, gt_boxes: torch.Tensor, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal bipartite matching for one image, the least-cost assignment of ``cost`` (module docstring):
    pred_boxes Tensor[K, 4], pred_logits Tensor[K], gt_boxes Tensor[G, 4] (normalised xyxy) ->
    ``(pred_index int64[M], gt_index int64[M])`` with ``M = min(K, G)``."""
    with torch.no_grad():
        logits = pred_logits.float()
        return _assign(0.5 * alpha * _squared_distances(pred_boxes, gt_boxes)
                       + (-F.logsigmoid(logits) + F.logsigmoid(-logits))[:, None])


def match_priors(priors: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Bipartite matching of ground truth to priors by squared L2 distance (training with priors): priors
    Tensor[K, 4], gt_boxes Tensor[G, 4] (normalised xyxy) -> ``(prior_index int64[M], gt_index int64[M])``
    with ``M = min(K, G)``."""
    return _assign(_squared_distances(priors, gt_boxes))  # neither side needs a gradient


def multibox_loss(pred_boxes: torch.Tensor, pred_logits: torch.Tensor, gt_boxes: list[torch.Tensor], alpha: float,
                  priors: torch.Tensor | None = None) -> torch.Tensor:
    """MultiBox loss: per-image objective ``F`` at the assignment, averaged over the batch.

    pred_boxes: Tensor[B, K, 4] float, predicted boxes (prior + offset), normalised xyxy
    pred_logits: Tensor[B, K] float, confidence logits (``c = sigmoid(logit)``)
    gt_boxes: list of B Tensor[G_b, 4], normalised xyxy (G_b may be 0: confidence term only)
    alpha: weight of the location term
    priors: None = the assignment minimising ``F`` over the predictions (:func:`match`); Tensor[K, 4] =
    the assignment of ground truth to these priors (:func:`match_priors`, training with priors)
    Returns a scalar Tensor (float32).
    """
    if pred_boxes.shape[:2] != pred_logits.shape or len(gt_boxes) != len(pred_boxes):
        raise ValueError(f"shape mismatch: boxes {tuple(pred_boxes.shape)}, logits {tuple(pred_logits.shape)}, "
                         f"{len(gt_boxes)} gt lists")
    pred_boxes, pred_logits = pred_boxes.float(), pred_logits.float()
    # every prediction first counts as unmatched: -log(1 - c_i)
    total = -F.logsigmoid(-pred_logits).sum()
    for b, gt in enumerate(gt_boxes):
        gt = gt.to(device=pred_boxes.device, dtype=torch.float32)
        pairs = match(pred_boxes[b], pred_logits[b], gt, alpha) if priors is None else match_priors(priors, gt)
        rows, cols = (torch.as_tensor(index, device=pred_boxes.device) for index in pairs)
        # matched pairs swap -log(1 - c_i) for -log c_i and add the location term
        z = pred_logits[b, rows]
        sq = ((pred_boxes[b, rows] - gt[cols]) ** 2).sum(-1)
        total = total + (0.5 * alpha * sq - F.logsigmoid(z) + F.logsigmoid(-z)).sum()
    return total / max(len(gt_boxes), 1)
