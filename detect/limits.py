"""Upper bounds on the sizes and counts a loaded file may ask for: detector files, checkpoints and proposer specs.

A file is data. A number in it that would make the loader allocate without bound (a width of 1e6, a
crop of 10^5 pixels, ten thousand members sharing one stored tensor) is refused with a ``ValueError``
naming the file and the field, before anything is built, instead of failing deep inside torch with
an allocation error that names neither. Each bound is far above anything the project trains or the
paper used (its value in brackets); raise one here, with its reason, when a real file needs more.
These are limits on files, not settings of a run: the settings themselves live in conf/.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["LIMITS", "check_bound", "check_finite_state", "dataclass_from_file"]

LIMITS: dict[str, float] = {
    "members": 32,               # ensemble members of a detector (the paper: 7)
    "width": 8.0,                # GoogLeNet channel multiplier (1.0; 8 is ~64x the paper's 6.8 M weights)
    "num_classes": 100_000,      # classifier outputs (ILSVRC detection: 201; ImageNet-21k: 21,842)
    "crop_size": 1024,           # warped crop side, pixels (224)
    "batch_size": 4096,          # crops (detector) or images (MultiBox) per forward pass (128)
    "max_per_image": 1_000_000,  # detections kept per image (100)
    "max_pixels": 2_000_000_000, # image pixels the detector scores at full size (conf/detect.yaml: 50 M)
    "superpixel_scale": 64.0,    # selective search superpixel size factor (R-CNN: 1, the paper: 2)
    "resize_width": 16_384,      # selective search working width, pixels (500)
    "max_side": 16_384,          # selective search working side, pixels (2000)
    "sigma": 100.0,              # selective search Gaussian smoothing (0.8)
    "ks": 100_000.0,             # selective search graph-segmentation k (50, 100)
    "num_priors": 100_000,       # MultiBox priors (the paper: 800 at most)
    "input_size": 2048,          # MultiBox input side, pixels (224)
    "grid": 64,                  # MultiBox pooled feature grid side (1 or a few)
    "top_k": 100_000,            # MultiBox boxes kept per image (200)
}


def check_bound(value: Any, name: str, source: str, low: float = 0.0, low_open: bool = True) -> None:
    """``ValueError`` naming ``source`` and ``name`` unless ``value`` is a finite number above ``low``
    (``low_open``: strictly) and at most ``LIMITS[name]``; None passes (an absent optional value)."""
    if value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value):
        raise ValueError(f"{source}: {name}={value!r} is not a finite number")
    if value < low or (low_open and value == low) or value > LIMITS[name]:
        raise ValueError(f"{source}: {name}={value!r} is outside {'(' if low_open else '['}{low:g}, {LIMITS[name]:g}] "
                         "(bounds of a loaded file: detect/limits.py)")


def check_finite_state(state: Any, source: str) -> None:
    """``ValueError`` naming ``source`` and the first tensor of the state dict ``state`` holding NaN or
    infinity (such weights score every region NaN: no detections, and no error without this check)."""
    import torch

    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source}: weights {name!r} hold NaN or infinity")


def dataclass_from_file(cls: type, values: Any, source: str, what: str, ignore: tuple[str, ...] = ()) -> Any:
    """``cls(**values)`` for a mapping read from ``source``: a ``ValueError`` naming ``source`` and ``what``
    when it is not a mapping, names anything but a field of ``cls`` (a file's contents choose no code) or
    holds a value ``cls`` refuses. The keys in ``ignore`` are dropped first."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: {what} is not a mapping")
    values = {k: v for k, v in values.items() if k not in ignore}
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{source}: unknown {what} {sorted(map(str, unknown))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {what} refused ({e})") from None
