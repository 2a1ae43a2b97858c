"""Pure box operations. Convention: float ``(x1, y1, x2, y2)`` in pixels of the original image.

Torch tensors go through ``torchvision.ops``; numpy arrays get small vectorised equivalents so that
data readers, proposal code and the evaluator need no tensor round trip. Conversions to and from
file formats (0-based inclusive ILSVRC XML, 1-based VOC XML, COCO ``xywh``) happen only at the edges.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision import ops

__all__ = ["box_iou", "clip_boxes", "flip_boxes", "order_corners", "remove_small_boxes", "unique_boxes",
           "xywh_to_xyxy"]


def order_corners(boxes):
    """Boxes ``[..., 4]`` (Tensor or ndarray) with each box's corners put in order, ``x1 <= x2`` and
    ``y1 <= y2`` (a box given as (x2, y2, x1, y1) becomes (x1, y1, x2, y2)); same shape and type."""
    if isinstance(boxes, torch.Tensor):
        return torch.cat([torch.minimum(boxes[..., :2], boxes[..., 2:]), torch.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    boxes = np.asarray(boxes)
    return np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1)


def box_iou(a, b):
    """Pairwise IoU. ``a: [N, 4]``, ``b: [M, 4]`` xyxy (both tensors or both arrays) -> ``[N, M]``
    (no +1 rule; an inverted box has area 0)."""
    if isinstance(a, torch.Tensor):
        return ops.box_iou(a, b)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter = (np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])).clip(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clip(min=0).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def clip_boxes(boxes, width: int, height: int):
    """Clip xyxy boxes to ``[0, width] x [0, height]``. Returns the same type as ``boxes``."""
    if isinstance(boxes, torch.Tensor):
        return ops.clip_boxes_to_image(boxes, (height, width))
    boxes = np.array(boxes, copy=True)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def flip_boxes(boxes, width: float):
    """Boxes of a horizontally mirrored image of ``width`` pixels: ``x1, x2 -> width - x2, width - x1``;
    ``[N, 4]`` array or tensor -> a new one of the same type."""
    flipped = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def remove_small_boxes(boxes, min_size: float):
    """Indices of boxes whose width and height are both ``>= min_size``. ``[N, 4]`` -> ``[K]`` int64."""
    tensor = isinstance(boxes, torch.Tensor)
    boxes = boxes if tensor else np.asarray(boxes)
    keep = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    return torch.where(keep)[0] if tensor else np.flatnonzero(keep)


def unique_boxes(boxes: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Indices of the first occurrence of each distinct box after rounding ``boxes * scale``:
    ``boxes: ndarray[N, 4]`` -> sorted ``ndarray[K]`` int64 (keeps the input order of survivors)."""
    boxes = np.asarray(boxes)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.round(boxes * scale).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first).astype(np.int64)


def xywh_to_xyxy(boxes):
    """``(x, y, w, h) -> (x1, y1, x2, y2)``. ``[N, 4]`` array or tensor; an array stays float64 when it is,
    else becomes float32."""
    if isinstance(boxes, torch.Tensor):
        return ops.box_convert(boxes, "xywh", "xyxy")
    boxes = np.array(boxes, dtype=np.float64 if np.asarray(boxes).dtype == np.float64 else np.float32)
    boxes[:, 2:] += boxes[:, :2]
    return boxes
