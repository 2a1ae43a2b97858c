"""Training data for MultiBox: detection records -> (warped image prepared with the backbone's input
convention, normalised boxes).

Class-agnostic: labels are dropped, ignored boxes (VOC difficult, COCO crowd) left out. Training
augmentation (:class:`MultiBoxDataset`, :func:`crop_boxes`): a mild random crop and horizontal flips,
drawn from torch's generator, which the DataLoader seeds per worker.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from detect.boxes import flip_boxes
from detect.data.images import SampleError, read_image
from detect.data.records import DetectionDataset, SkippedItem
from detect.models.convention import InputConvention
from proposals.multibox.model import preprocess

log = logging.getLogger(__name__)

__all__ = ["MultiBoxDataset", "MultiBoxBatch", "collate_multibox", "crop_boxes"]


def crop_boxes(boxes: np.ndarray, crop: tuple[float, float, float, float], min_visible: float) -> np.ndarray:
    """Boxes ``ndarray[N, 4]`` (pixels) seen through ``crop = (x1, y1, x2, y2)``: shifted to the crop's
    frame, clipped to it, and dropped when the visible area is below ``min_visible`` of the original
    (or zero). Returns ``ndarray[M, 4] float32`` in crop pixels."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = crop
    origin = np.array([x1, y1, x1, y1], dtype=np.float32)
    clipped = boxes.clip(origin, np.array([x2, y2, x2, y2], dtype=np.float32))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (visible > 0) & (visible >= min_visible * np.maximum(area, 0))
    return clipped[keep] - origin


class MultiBoxDataset(Dataset):
    """Items are ``(image Tensor[3, S, S] float32 prepared with ``convention``, boxes Tensor[G, 4]
    float32 normalised xyxy)``, or a :class:`SkippedItem` for an unreadable image (the collate
    function drops it and hands it on in the batch, so that the trainer reports it).

    dataset: a DetectionDataset; input_size: S; convention: the network's ``input_convention``
    (None = ImageNet); train: apply the augmentations;
    flip: probability of a horizontal flip; min_crop: smallest crop side as a fraction of the image
    side (1.0 = no crop); crop_probability: share of images cropped; min_visible: see :func:`crop_boxes`.
    """

    def __init__(self, dataset: DetectionDataset, input_size: int, convention: InputConvention | None = None,
                 train: bool = True, flip: float = 0.5, min_crop: float = 0.8, crop_probability: float = 0.5,
                 min_visible: float = 0.5):
        if not (input_size >= 8 and 0 <= flip <= 1 and 0 < min_crop <= 1 and 0 <= crop_probability <= 1
                and 0 <= min_visible <= 1):
            raise ValueError(f"MultiBox data settings: need input_size >= 8 and flip, crop_probability, min_visible in "
                             f"[0, 1], min_crop in (0, 1] (got input_size={input_size}, flip={flip}, min_crop={min_crop}, "
                             f"crop_probability={crop_probability}, min_visible={min_visible})")
        self.records = dataset.records
        self.input_size = input_size
        self.convention = InputConvention.from_dict(convention)
        self.train = train
        self.flip = flip
        self.min_crop = min_crop
        self.crop_probability = crop_probability
        self.min_visible = min_visible

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        try:
            image = read_image(record.path, (record.width, record.height))
        except SampleError as e:  # reported by the trainer through the batch (worker processes included)
            log.warning("skipped %s", e)
            return SkippedItem(str(record.path), f"unreadable image: {e}")
        boxes = record.boxes[~record.ignore].astype(np.float32)
        if self.train:
            image, boxes = self._augment(image, boxes)
        height, width = image.shape[:2]
        boxes = (boxes / np.array([width, height, width, height], dtype=np.float32)).clip(0.0, 1.0)
        x = preprocess([image], self.input_size, self.convention)[0]
        return x, torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4)

    def _augment(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        if self.min_crop < 1.0 and torch.rand(()).item() < self.crop_probability:
            fw, fh = (self.min_crop + (1.0 - self.min_crop) * torch.rand(2)).tolist()
            cw, ch = max(1, round(width * fw)), max(1, round(height * fh))
            x0 = int(torch.randint(0, width - cw + 1, ()).item())
            y0 = int(torch.randint(0, height - ch + 1, ()).item())
            image = image[y0 : y0 + ch, x0 : x0 + cw]
            boxes = crop_boxes(boxes, (x0, y0, x0 + cw, y0 + ch), self.min_visible)
            width, height = cw, ch
        if torch.rand(()).item() < self.flip:
            image = image[:, ::-1]
            boxes = flip_boxes(boxes, width)
        return np.ascontiguousarray(image), boxes


class MultiBoxBatch(NamedTuple):
    """images: Tensor[B, 3, S, S]; boxes: list of B Tensor[G_b, 4] normalised xyxy; dropped / skipped:
    the unreadable images of the batch (count and :class:`SkippedItem` entries)."""

    images: torch.Tensor
    boxes: list
    dropped: int = 0
    skipped: tuple = ()


def collate_multibox(items) -> MultiBoxBatch:
    """Stack images, keep boxes as a list; :class:`SkippedItem` entries (unreadable images) are dropped
    and handed on in the batch. B may be 0."""
    skipped = tuple(it for it in items if isinstance(it, SkippedItem))
    items = [it for it in items if not isinstance(it, SkippedItem)]
    if not items:
        return MultiBoxBatch(torch.zeros(0, 3, 1, 1), [], len(skipped), skipped)
    return MultiBoxBatch(torch.stack([x for x, _ in items]), [b for _, b in items], len(skipped), skipped)
