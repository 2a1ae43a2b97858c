"""Classification: the loss every GoogLeNet trainer minimises and the accuracy loops (crop-averaged softmax).

Used by tools/train_cls.py and tools/train_region.py (:class:`ClassificationLoss`,
:func:`evaluate_classification` on the held-out split after each epoch of :func:`detect.engine.fit`) and
by tools/eval_cls.py (:func:`collect_probabilities`, :func:`topk_accuracy`: Table 3 of the paper).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from detect.distributed import all_reduce_sum

__all__ = ["ClassificationLoss", "evaluate_classification", "predict_proba", "collect_probabilities", "topk_accuracy"]


@torch.no_grad()
def evaluate_classification(model: nn.Module, loader: Iterable, device: torch.device | str,
                            background: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``model`` over ``loader``, summed over all processes.

    loader yields ``(images, labels, ...)``: images as :func:`predict_proba` takes them, labels
    ``Tensor[B] int64`` (negative ones not counted); ``None`` or empty batches (every sample unreadable)
    are skipped. Returns ``{"top1", "top5", "n"}`` (accuracies in 0..1; top-5 is top-k with k = min(5,
    classes)); with ``background`` (a region classifier's background label) also ``fg_acc`` and
    ``bg_acc``, the top-1 accuracy on the object and on the background samples."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = {"c1": 0.0, "c5": 0.0, "n": 0.0, "fg_hit": 0.0, "fg": 0.0, "bg_hit": 0.0, "bg": 0.0}
    for batch in loader:
        if batch is None or len(batch[1]) == 0:
            continue
        keep = batch[1] >= 0
        probs = predict_proba(model, batch[0][keep].to(device, non_blocking=True))
        labels = batch[1][keep].to(device)
        topk = probs.topk(min(5, probs.shape[1]), dim=1).indices
        hit = topk == labels[:, None]
        sums["c1"] += float(hit[:, 0].sum())
        sums["c5"] += float(hit.any(dim=1).sum())
        sums["n"] += len(labels)
        if background is not None:
            bg = labels == background
            for key, mask in (("bg", bg), ("fg", ~bg)):
                sums[f"{key}_hit"] += float(hit[mask, 0].sum())
                sums[key] += float(mask.sum())
    model.train(was_training)
    t = all_reduce_sum(sums, device)
    out = {"top1": t["c1"] / t["n"] if t["n"] else 0.0, "top5": t["c5"] / t["n"] if t["n"] else 0.0, "n": int(t["n"])}
    if background is not None:
        out.update(fg_acc=t["fg_hit"] / max(t["fg"], 1.0), bg_acc=t["bg_hit"] / max(t["bg"], 1.0))
    return out


def predict_proba(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax of ``model`` averaged over crops: ``images Tensor[B, 3, H, W]`` or ``Tensor[B, K, 3, H, W]``
    (K crops per image) float -> ``Tensor[B, C]`` float32."""
    crops = images.ndim == 5
    probs = _logits(model(images.flatten(0, 1) if crops else images)).float().softmax(dim=1)
    return probs.view(*images.shape[:2], -1).mean(dim=1) if crops else probs


@torch.no_grad()
def collect_probabilities(models: list[nn.Module], loader: Iterable, device: torch.device | str,
                          progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Crop-averaged softmax of every model on every image (one process), ``loader`` as in
    :func:`evaluate_classification`: ``(probs Tensor[M, N, C] float32, labels Tensor[N] int64, crops per
    image)``; an ensemble's prediction is ``probs.mean(0)`` (the average of softmax outputs, never of logits).
    """
    device = torch.device(device)
    for m in models:
        m.eval().to(device)
    probs, labels, crops = [], [], 0
    for batch in tqdm(loader, desc="classify", disable=not progress, leave=False):
        if batch is None or len(batch[1]) == 0:
            continue
        images = batch[0].to(device, non_blocking=True)
        crops = images.shape[1] if images.ndim == 5 else 1
        probs.append(torch.stack([predict_proba(m, images).cpu() for m in models]))
        labels.append(batch[1].cpu())
    if not probs:
        raise ValueError("no readable images to classify")
    return torch.cat(probs, dim=1), torch.cat(labels), crops


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows of ``probs Tensor[N, C]`` whose ``labels Tensor[N]`` is among the ``k`` highest."""
    k = min(k, probs.shape[1])
    return float((probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean())


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


class ClassificationLoss:
    """Cross-entropy of the main head plus ``aux_weight`` x that of each auxiliary head (the paper: 0.3),
    for image classification and for region classifiers alike (``background=0``: the region column).

    ``__call__(model, batch, device)`` with batch ``(images Tensor[B, 3, H, W], labels Tensor[B] int64, ...)``
    returns ``(loss, {"top1"})`` (training-batch accuracy of the main head), and with ``background`` also
    ``fg_acc`` (accuracy on the other labels) and ``fg_share`` (their share of the batch)."""

    def __init__(self, aux_weight: float = 0.3, label_smoothing: float = 0.0, background: int | None = None):
        self.aux_weight, self.label_smoothing = float(aux_weight), float(label_smoothing)
        self.background = background

    def __call__(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch[0].to(device, non_blocking=True)
        labels = batch[1].to(device, non_blocking=True)
        out = model(images)  # the model's memory format is fit's choice (TrainSettings.channels_last)
        logits = _logits(out)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        if not isinstance(out, torch.Tensor):
            for aux in out[1:]:
                if aux is not None:
                    loss = loss + self.aux_weight * F.cross_entropy(aux, labels, label_smoothing=self.label_smoothing)
        hit = logits.detach().argmax(1) == labels
        metrics = {"top1": float(hit.float().mean())}
        if self.background is not None:
            fg = labels != self.background
            metrics.update(fg_share=float(fg.float().mean()), fg_acc=float(hit[fg].float().mean()) if fg.any() else 0.0)
        return loss, metrics
