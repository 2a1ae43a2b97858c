"""The input convention of a network's weights: how a uint8 RGB image becomes what the weights expect.

Weights are trained on inputs prepared one way, and only that way gives their accuracy. Our own
networks (and torchvision's) take RGB values in 0..1 normalised by the ImageNet mean and std
(:data:`IMAGENET`); BVLC's Caffe GoogLeNet, and the ONNX model zoo's GoogLeNet converted from it, take
BGR values in 0..255 minus the per-channel mean (104, 117, 123), without a std (:data:`BVLC`).
Folding one convention into conv1's weights is not exact where conv1 zero-pads the border, so the
convention travels with the weights instead: ``GoogLeNet.input_convention`` (also in its
``model_kwargs``, hence in every checkpoint and detector file), and every consumer prepares the input
with :meth:`InputConvention.normalize` of the weights it feeds. A checkpoint that records none is
:data:`IMAGENET` (what the project used before conventions were recorded).

Zero in the normalised space is each convention's mean colour: a region warped beyond the image
border (``detect.region.warp_regions`` pads with zeros after normalising) shows the mean colour of
the convention its crops were normalised with, so crops are warped once per convention.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputConvention", "IMAGENET", "BVLC", "RGB01", "WithInputConvention"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConvention:
    """What the weights expect as input.

    channel_order: "RGB" or "BGR", the order of the input channels.
    scale: the value range before the mean is taken away: 1.0 (0..1) or 255.0 (0..255).
    mean, std: per input channel, in ``channel_order`` and in ``scale`` units:
    ``input[c] = (pixel[c] / 255 * scale - mean[c]) / std[c]``.
    """

    channel_order: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise ValueError(f"input convention: channel_order must be RGB or BGR, got {self.channel_order!r}")
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"input convention: mean and std need 3 values each, got {mean} and {std}")
        if not float(self.scale) > 0 or not all(s > 0 for s in std):
            raise ValueError(f"input convention: scale and std must be positive, got {self.scale} and {std}")
        for name, value in (("channel_order", order), ("scale", float(self.scale)), ("mean", mean), ("std", std)):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """Plain values (stored in checkpoints, loadable with ``weights_only=True``)."""
        return {"channel_order": self.channel_order, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping | "InputConvention" | None) -> "InputConvention":
        """From :meth:`to_dict`'s form; None (a checkpoint that records none) is :data:`IMAGENET`."""
        if d is None:
            return IMAGENET
        if isinstance(d, InputConvention):
            return d
        unknown = set(d) - {"channel_order", "scale", "mean", "std"}
        if unknown:
            raise ValueError(f"input convention: unknown keys {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})

    def describe(self) -> str:
        """e.g. ``BGR 0-255 minus mean (104, 117, 123)`` or ``RGB 0-1, mean (...), std (...)``."""
        values = f"0-{self.scale:g}"
        mean = ", ".join(f"{v:g}" for v in self.mean)
        if all(s == 1.0 for s in self.std):
            return f"{self.channel_order} {values} minus mean ({mean})"
        return f"{self.channel_order} {values}, mean ({mean}), std ({', '.join(f'{v:g}' for v in self.std)})"

    def normalize(self, images: Tensor) -> Tensor:
        """The network input for RGB images or crops.

        images: ``Tensor[..., 3, H, W]`` RGB, uint8 (0..255) or float (0..1), any device
        returns ``Tensor[..., 3, H, W]`` float32 (float64 stays float64) on the same device, a new
        tensor (the input is never modified).
        """
        if images.shape[-3] != 3:
            raise ValueError(f"expected 3 RGB channels at dim -3, got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float()
            if self.scale != 255.0:
                x = x.div_(255.0 / self.scale)
        else:
            x = images.float() if images.dtype != torch.float64 else images
            x = x * self.scale if self.scale != 1.0 else x.clone()
        if self.channel_order == "BGR":
            x = x.flip(-3)
        x = x.sub_(torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1))
        if any(s != 1.0 for s in self.std):
            x = x.div_(torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1))
        return x


IMAGENET = InputConvention()  # torchvision's and our own checkpoints: RGB 0..1, ImageNet mean / std
BVLC = InputConvention("BGR", 255.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0))  # BVLC's train_val.prototxt mean_value
RGB01 = InputConvention("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # plain RGB 0..1: input of WithInputConvention


class WithInputConvention(nn.Module):
    """``model`` fed plain RGB: ``forward(x)`` prepares ``x`` (``Tensor[B, 3, H, W]`` RGB, uint8 or float
    0..1) with ``model.input_convention`` and returns ``model(prepared)``. Lets models of different
    conventions share one batch of crops (e.g. an ensemble in ``tools/eval_cls.py``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor):
        return self.model(self.model.input_convention.normalize(x))
