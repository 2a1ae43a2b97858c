"""What every proposer returns, the protocol a proposer follows, and the input guard they share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detect.data.images import to_uint8

__all__ = ["Proposals", "Proposer", "as_rgb_uint8"]


@dataclass
class Proposals:
    """Candidate boxes of one image.

    boxes: ndarray[N, 4] float32, xyxy pixels of the original image, in the proposer's rank order
    scores: ndarray[N] float32 (higher = more likely an object) or None when the method has none
    """

    boxes: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
            if len(self.scores) != len(self.boxes):
                raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.boxes)


class Proposer(Protocol):
    """``proposer(image: ndarray[H, W, 3] uint8 RGB) -> Proposals``; ``name`` names the method in file names."""

    name: str

    def __call__(self, image: np.ndarray) -> Proposals: ...


def as_rgb_uint8(image) -> np.ndarray:
    """Bring a directly passed array to ``ndarray[H, W, 3] uint8`` RGB, or raise ``ValueError`` saying why.

    Accepts 2-D grey, ``[H, W, 1]``, ``[H, W, 3]``, ``[H, W, 4]`` (alpha dropped), bool, 16-bit and float
    (0..1 or 0..max) arrays. Empty arrays, other ranks and channel counts are refused.
    """
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"image array has unsupported dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array of shape {arr.shape}: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image array of shape {arr.shape}")
    arr = to_uint8(arr)
    return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3])
