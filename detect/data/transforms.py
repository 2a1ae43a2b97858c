"""Image transforms of the paper's classification recipe (section 6) and its test-time crops (section 7).

Training: a random crop of ``scale`` (8%-100%) of the image area with aspect ratio in ``ratio``
(3/4-4/3), resized to ``crop_size`` with a random interpolation among bilinear, area, nearest and
bicubic, photometric distortions, a random horizontal flip, then the input convention of the
weights being trained (:mod:`detect.models.convention`). Test: 1 crop (centre), 10 crops (4 corners +
centre, and their mirrors) or the 144 crops of section 7; every size is relative to ``crop_size`` (the
paper's 256 / 224 resize and 256/288/320/352 scales are ratios: 96-pixel crops resize to 110, etc.).
Inputs are ``ndarray[H, W, 3] uint8`` RGB (``detect.data.images.read_image``) or ``Tensor[3, H, W]``
uint8; outputs are float32 tensors prepared with the transform's ``convention``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from detect.models.convention import InputConvention

__all__ = ["TrainTransform", "TestTransform", "to_float_tensor", "resize_shorter", "five_crops", "crops_144",
           "INTERPOLATIONS"]

INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")


def to_float_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``ndarray[H, W, 3] uint8`` or ``Tensor[3, H, W] uint8`` -> ``Tensor[3, H, W] float32`` in 0..1."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an image of shape [H, W, 3], got {image.shape}")
        image = torch.from_numpy(np.require(image, requirements="CW")).permute(2, 0, 1)  # torch wants C, writable
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``Tensor[C, H, W]`` float to ``size = (h, w)`` (:data:`INTERPOLATIONS`; ``area``: true area averaging)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x[None], size=size, mode=mode, **kwargs)[0]
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out


def resize_shorter(x: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize ``Tensor[C, H, W]`` (bilinear) so that its shorter side is ``shorter`` pixels (aspect kept)."""
    h, w = x.shape[-2:]
    size = (shorter, max(1, round(w * shorter / h))) if h <= w else (max(1, round(h * shorter / w)), shorter)
    return _resize(x, size)


class TrainTransform:
    """The paper's training augmentation; ``__call__(image) -> Tensor[3, crop_size, crop_size] float32``.
    scale: range of the crop's area as a fraction of the image; ratio: range of its aspect (w / h);
    interpolations: drawn uniformly per image; brightness/contrast/saturation/hue: ColorJitter
    strengths (0 = off); flip_prob: probability of a horizontal flip; convention: the input convention
    of the network fed (``InputConvention``, its dict form, or None = ImageNet). Draws use torch's RNG."""

    def __init__(self, crop_size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), interpolations: Sequence[str] = INTERPOLATIONS,
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0,
                 flip_prob: float = 0.5, convention: InputConvention | dict | None = None):
        self.crop_size = int(crop_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolations = tuple(interpolations)
        for mode in self.interpolations:
            if mode not in INTERPOLATIONS:
                raise ValueError(f"unknown interpolation {mode!r}, expected one of {INTERPOLATIONS}")
        self.jitter = v2.ColorJitter(brightness, contrast, saturation, hue) if any((brightness, contrast, saturation, hue)) else None
        self.flip_prob = float(flip_prob)
        self.convention = InputConvention.from_dict(convention)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A random ``(top, left, h, w)`` of ``scale`` of the area and aspect ``ratio``; the whole image
        (centre-cropped to the ratio range: the largest such crop) when 10 draws fail."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:  # top, then left
                return int(torch.randint(0, height - h + 1, (1,))), int(torch.randint(0, width - w + 1, (1,))), h, w
        w, h = min(width, round(height * self.ratio[1])), min(height, round(width / self.ratio[0]))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = to_float_tensor(image)
        top, left, h, w = self.crop_box(*x.shape[-2:])
        mode = self.interpolations[int(torch.randint(len(self.interpolations), (1,)))]
        x = _resize(x[:, top:top + h, left:left + w], (self.crop_size, self.crop_size), mode)
        if self.jitter is not None:
            x = self.jitter(x).clamp_(0.0, 1.0)
        if self.flip_prob > 0 and torch.rand(1).item() < self.flip_prob:
            x = x.flip(-1)
        return self.convention.normalize(x)


def five_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right and centre ``size`` x ``size`` crops of ``Tensor[C, H, W]``."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} smaller than the crop {size}")
    t, l = (h - size) // 2, (w - size) // 2
    return [x[:, :size, :size], x[:, :size, w - size:], x[:, h - size:, :size], x[:, h - size:, w - size:],
            x[:, t:t + size, l:l + size]]


def crops_144(x: torch.Tensor, size: int, scales: Sequence[int]) -> list[torch.Tensor]:
    """Section 7's crops: for each shorter-side scale, the left/centre/right (top/centre/bottom for
    portrait) squares; of each square the 4 corner and centre ``size`` crops and the whole square
    resized to ``size``; then all of them mirrored. ``len = len(scales) * 3 * 6 * 2``."""
    crops = []
    for s in scales:
        r = resize_shorter(x, int(s))
        h, w = r.shape[-2:]
        side = min(h, w)
        for o in (0, (max(h, w) - side) // 2, max(h, w) - side):
            square = r[:, o:o + side, :] if h > w else r[:, :, o:o + side]
            crops += five_crops(square, size)
            crops.append(_resize(square, (size, size)))
    return crops + [c.flip(-1) for c in crops]


class TestTransform:
    """Test-time crops; ``__call__(image)`` -> ``Tensor[3, S, S]`` (``crops=1``) or ``Tensor[K, 3, S, S]``
    (``crops=K``, 10 or 144), float32, prepared with ``convention`` (as :class:`TrainTransform`;
    ``detect.models.convention.RGB01`` leaves plain RGB 0..1 crops). resize: the shorter side for 1 and
    10 crops, in units of a 224 crop (256 -> 256/224 x crop_size); scales: those of the 144 crops, same units."""

    __test__ = False  # not a pytest class

    def __init__(self, crop_size: int = 224, crops: int = 1, resize: float = 256, scales: Sequence[float] = (256, 288, 320, 352),
                 convention: InputConvention | dict | None = None):
        if crops not in (1, 10, 144):
            raise ValueError(f"crops must be 1, 10 or 144, got {crops}")
        self.crop_size, self.crops = int(crop_size), int(crops)
        factor = self.crop_size / 224
        self.resize = max(self.crop_size, round(resize * factor))
        self.scales = tuple(max(self.crop_size, round(s * factor)) for s in scales)
        self.convention = InputConvention.from_dict(convention)

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = to_float_tensor(image)
        if self.crops == 144:
            return self.convention.normalize(torch.stack(crops_144(x, self.crop_size, self.scales)))
        five = five_crops(resize_shorter(x, self.resize), self.crop_size)
        if self.crops == 1:
            return self.convention.normalize(five[4].contiguous())
        return self.convention.normalize(torch.stack(five + [c.flip(-1) for c in five]))
