"""The MultiBox network: a GoogLeNet backbone and one linear layer predicting K boxes and K confidences.

Boxes are predicted as offsets from K priors (see :mod:`proposals.multibox.priors`) in coordinates
normalised by the image size; the image is warped anisotropically to ``input_size x input_size``
(like R-CNN's crops), so normalised coordinates map back to pixels of the original image by a
per-axis scale.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from detect.boxes import order_corners
from detect.models.convention import InputConvention
from detect.models.googlenet import GoogLeNet, GoogLeNetConfig

__all__ = ["MultiBoxNet", "preprocess", "decode_boxes", "top_k_boxes"]


class MultiBoxNet(nn.Module):
    """GoogLeNet (aux heads off) -> 5b map average-pooled to ``grid x grid`` -> dropout -> linear
    ``F * grid^2 -> 5K``.

    backbone_kwargs: the backbone's ``GoogLeNetConfig`` as plain values (``model_kwargs``; ``aux_logits`` is forced off)
    num_priors: K
    input_size: side of the square network input in pixels
    dropout: dropout before the linear layer
    grid: side of the pooled feature map the linear layer reads. 1 is GoogLeNet's global average
    pooling, which keeps little of *where* things are; Erhan et al.'s network read AlexNet's spatial
    6x6 map through fully connected layers, and a grid > 1 keeps that spatial layout (each prior can
    weigh the cells it lies in).
    The priors live in the buffer ``priors: Tensor[K, 4]`` (normalised xyxy; zeros until
    :meth:`set_priors` or ``load_state_dict``).
    """

    def __init__(self, backbone_kwargs: dict, num_priors: int = 200, input_size: int = 224, dropout: float = 0.4,
                 grid: int = 1):
        super().__init__()
        self.num_priors = int(num_priors)
        self.input_size = int(input_size)
        self.grid = int(grid)
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.backbone = GoogLeNet(GoogLeNetConfig.from_kwargs(backbone_kwargs, "MultiBox backbone_kwargs"), aux_logits=False)
        # the classifier is never used (embed() stops before it); dropping it keeps DDP free of unused parameters
        self.backbone.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.feature_dim * self.grid ** 2, 5 * self.num_priors)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("priors", torch.zeros(self.num_priors, 4))

    @property
    def input_convention(self) -> InputConvention:
        """The input the backbone's weights expect (it is part of ``backbone_kwargs``)."""
        return self.backbone.input_convention

    def set_priors(self, priors) -> None:
        """priors: ndarray | Tensor [K, 4], normalised xyxy."""
        priors = torch.as_tensor(np.asarray(priors, dtype=np.float32))
        if priors.shape != (self.num_priors, 4):
            raise ValueError(f"priors of shape {tuple(priors.shape)}, expected ({self.num_priors}, 4)")
        self.priors.copy_(priors.to(self.priors.device))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: Tensor[B, 3, S, S] normalised -> (boxes Tensor[B, K, 4] normalised xyxy = prior + offset,
        logits Tensor[B, K])."""
        fmap = self.backbone.forward_features(x)
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, self.grid), 1)  # grid 1 = embed()
        out = self.head(self.dropout(features))
        offsets = out[:, : 4 * self.num_priors].reshape(-1, self.num_priors, 4)
        logits = out[:, 4 * self.num_priors :]
        return self.priors.to(offsets.dtype) + offsets, logits


def preprocess(images: list[np.ndarray], input_size: int, convention: InputConvention | None = None) -> torch.Tensor:
    """Warp RGB uint8 images ``ndarray[H, W, 3]`` to ``input_size`` squares and prepare them with
    ``convention`` (the network's ``input_convention``; None = ImageNet). Returns
    ``Tensor[B, 3, S, S] float32`` (CPU)."""
    batch = np.empty((len(images), input_size, input_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
        batch[i] = cv2.resize(image, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
    return InputConvention.from_dict(convention).normalize(torch.from_numpy(batch).permute(0, 3, 1, 2))


def decode_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised xyxy ``Tensor[..., 4]`` -> pixels of a ``width x height`` image, coordinates put in
    order (x1 <= x2, y1 <= y2) and clipped to the image. Same shape, float32."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    return torch.minimum(order_corners(boxes.float() * scale).clamp(min=0), scale)


def top_k_boxes(boxes: torch.Tensor, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most confident predictions per image, most confident first (ties in prediction order):
    ``boxes Tensor[B, K, 4]``, ``logits Tensor[B, K]`` -> ``(Tensor[B, k, 4], Tensor[B, k])``."""
    logits, order = logits.float().sort(dim=1, descending=True, stable=True)
    order, logits = order[:, :k], logits[:, :k]
    return torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4)), logits
