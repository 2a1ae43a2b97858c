"""Region scoring: an image and its boxes in, the ensemble's class probabilities out.

A region scorer (:class:`RegionScorer`) has ``score(image, boxes) -> probs`` and a ``device``.
:class:`WarpScorer` is R-CNN's: each region warped to a fixed-size crop (:class:`RegionWarp`), prepared
once per distinct input convention of the members, and classified by an ensemble (:func:`ensemble_probs`)
whose members each read the crops of their own convention.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision import ops

from detect.classify import predict_proba
from detect.models.convention import IMAGENET, InputConvention
from detect.region import normalize_image, warp_regions

log = logging.getLogger(__name__)

__all__ = ["RegionScorer", "WarpScorer", "RegionWarp", "usable_boxes", "input_conventions", "ensemble_probs"]


class RegionScorer(Protocol):
    """``score(image ndarray[H, W, 3] uint8 RGB, boxes Tensor[N, 4] xyxy pixels) -> Tensor[N, C + 1]``
    probabilities on ``device``."""

    device: torch.device

    def score(self, image: np.ndarray, boxes: Tensor) -> Tensor: ...


def usable_boxes(boxes: np.ndarray | Tensor, image_shape: tuple[int, ...], min_size: float,
                 device: str | torch.device = "cpu") -> Tensor:
    """The boxes a detector scores: ``boxes [N, 4]`` xyxy clipped to the image (``image_shape``: ``(H,
    W, ...)``), those narrower or shorter than ``min_size`` pixels dropped. Returns ``Tensor[M, 4]``
    float32 on ``device``."""
    boxes = torch.as_tensor(np.asarray(boxes, np.float32) if not isinstance(boxes, Tensor) else boxes,
                            dtype=torch.float32, device=device).reshape(-1, 4)
    boxes = ops.clip_boxes_to_image(boxes, tuple(image_shape[:2]))
    return boxes[ops.remove_small_boxes(boxes, min_size)] if len(boxes) else boxes


@dataclass(frozen=True)
class RegionWarp:
    """R-CNN's warp of an image's regions into crops, ``batch_size`` at a time (all of an image's crops
    at once would not fit in memory): :func:`detect.region.warp_regions` with ``crop_size`` and
    ``context``. max_pixels: None, or an image of more pixels has its regions warped from a copy
    downscaled to about that many (area interpolation; the boxes stay in the original's pixels), so that
    the float image prepared per input convention (12 bytes a pixel) stays bounded."""

    crop_size: int = 224
    context: int = 16
    batch_size: int = 128
    max_pixels: int | None = None

    def batches(self, image: np.ndarray, boxes: Tensor, conventions: Sequence[InputConvention],
                device: str | torch.device = "cpu") -> Iterator[dict[InputConvention, Tensor]]:
        """``{convention: Tensor[B, 3, crop_size, crop_size]}`` for each batch of ``boxes: Tensor[N, 4]``
        of ``image: ndarray[H, W, 3] uint8`` RGB, in order: the image prepared once per convention (on
        ``device``), every batch warped from it."""
        image, boxes = self._bounded(image, boxes)
        tensors = {c: normalize_image(image, c, device) for c in conventions}
        for i in range(0, len(boxes), self.batch_size):
            yield {c: warp_regions(t, boxes[i:i + self.batch_size], self.crop_size, self.context)
                   for c, t in tensors.items()}

    def crops(self, image: np.ndarray, boxes: Tensor, convention: InputConvention | None = None) -> Tensor:
        """All the crops of ``boxes`` in one ``convention`` (None = ImageNet), as a scorer of that
        convention sees them: ``Tensor[N, 3, crop_size, crop_size]`` float32 on the CPU."""
        convention = InputConvention.from_dict(convention)
        return torch.cat([b[convention] for b in self.batches(image, boxes, [convention])])

    def _bounded(self, image: np.ndarray, boxes: Tensor) -> tuple[np.ndarray, Tensor]:
        """``(image, boxes)``, or for an image above ``max_pixels`` (class docstring) the downscaled copy and
        the boxes scaled to it, logged as a warning."""
        height, width = image.shape[:2]
        limit = self.max_pixels
        if limit is None or height * width <= limit:
            return image, boxes
        import cv2

        factor = math.sqrt(limit / (height * width))
        size = (max(1, int(width * factor)), max(1, int(height * factor)))
        log.warning("image of %dx%d pixels (%.0f M) is above max_pixels=%d: its regions are warped from a copy "
                    "downscaled to %dx%d", width, height, height * width / 1e6, limit, *size)
        small = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
        scale = torch.tensor([size[0] / width, size[1] / height] * 2, dtype=boxes.dtype, device=boxes.device)
        return small, boxes * scale


class WarpScorer:
    """R-CNN's region scorer (module docstring).

    members: scorers of :mod:`detect.backends` (crops are warped on member 0's device);
    cascade_threshold: see :func:`ensemble_probs`.
    """

    def __init__(self, members: Sequence[Callable], warp: RegionWarp, cascade_threshold: float | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.warp = warp
        self.cascade_threshold = cascade_threshold
        self.device = self.members[0].device
        self.conventions = input_conventions(self.members)

    @torch.inference_mode()
    def score(self, image: np.ndarray, boxes: Tensor) -> Tensor:
        """Ensemble probabilities of the warped ``boxes: Tensor[N, 4]`` (N >= 1) of ``image: ndarray[H, W,
        3] uint8`` RGB: ``Tensor[N, C + 1]`` float32 on member 0's device."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
        if len(boxes) == 0:
            raise ValueError("no boxes to score")
        return torch.cat([ensemble_probs(self.members, crops, self.cascade_threshold)
                          for crops in self.warp.batches(image, boxes, self.conventions, self.device)])


def input_conventions(members: Sequence[Callable]) -> list[InputConvention]:
    """The distinct input conventions of ``members`` (scorers or modules; ImageNet's for one that names
    none), in first-member order: the crop batches an ensemble of them needs."""
    return list(dict.fromkeys(getattr(m, "input_convention", IMAGENET) for m in members))


def ensemble_probs(members: Sequence[Callable], crops: Tensor | Mapping[InputConvention, Tensor],
                   cascade_threshold: float | None = None) -> Tensor:
    """Average of the members' softmax probabilities over the same B regions.

    members: region classifiers ``Tensor[B, 3, S, S] -> logits Tensor[B, C + 1]`` (scorers, or modules in
    eval mode: :func:`detect.classify.predict_proba`), each with the ``input_convention`` of its weights
    (ImageNet when it names none). crops: ``{convention: Tensor[B, 3, S, S]}`` for every one of
    :func:`input_conventions` (a bare Tensor when there is one). cascade_threshold: None scores every region
    with every member; a float lets member 0 score all regions and the others only those whose best
    foreground probability under member 0 is ``>= cascade_threshold`` (the rest keep member 0's).
    returns Tensor[B, C + 1] float32, rows summing to 1.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    conventions = input_conventions(members)
    if isinstance(crops, Tensor):
        if len(conventions) > 1:
            raise ValueError(f"the members expect {len(conventions)} input conventions: pass one crop "
                             "batch per convention ({convention: crops})")
        crops = {conventions[0]: crops}
    batches = [crops[getattr(m, "input_convention", IMAGENET)] for m in members]
    probs = predict_proba(members[0], batches[0])
    rows = slice(None) if cascade_threshold is None else probs[:, 1:].max(dim=1).values >= cascade_threshold
    if len(members) == 1 or (cascade_threshold is not None and not rows.any()):
        return probs
    total = probs[rows].clone()
    for member, batch in zip(members[1:], batches[1:]):
        total += predict_proba(member, batch[rows])
    probs[rows] = total / len(members)
    return probs
