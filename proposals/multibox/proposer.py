"""Inference: a trained MultiBox checkpoint as a proposer (image -> top-k boxes with confidences)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detect.backends import make_scorer
from detect.distributed import resolve_device
from detect.io import load_checkpoint
from proposals.base import Proposals, as_rgb_uint8
from proposals.multibox.model import MultiBoxNet, decode_boxes, preprocess

log = logging.getLogger(__name__)

__all__ = ["MultiBoxProposer", "load_multibox"]


def load_multibox(path, map_location="cpu") -> tuple[MultiBoxNet, dict]:
    """Rebuild a MultiBoxNet from a checkpoint (``model_kwargs`` + ``model_state``, the averaged
    weights). Returns ``(model in eval mode, checkpoint dict)``; ``ValueError`` names the file when a
    key is missing or the weights do not fit."""
    ckpt = load_checkpoint(path, map_location=map_location)
    for key in ("model_kwargs", "model_state"):
        if key not in ckpt:
            raise ValueError(f"{path}: not a MultiBox checkpoint (no {key!r})")
    try:
        model = MultiBoxNet(**ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model_state"])
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: MultiBox weights do not match model_kwargs ({e})") from e
    return model.eval(), ckpt


class _Flat(nn.Module):
    """MultiBoxNet with one output, ``[B, K, 5]`` = boxes and logit, so that every backend serves it."""

    def __init__(self, net: MultiBoxNet):
        super().__init__()
        self.net = net

    @property
    def input_convention(self):
        return self.net.input_convention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, logits = self.net(x)
        return torch.cat([boxes, logits[..., None]], dim=-1)


class MultiBoxProposer:
    """``image ndarray[H, W, 3] uint8 RGB -> Proposals(boxes float32[top_k, 4] pixels, clipped, by
    decreasing confidence; scores float32[top_k] sigmoid)``.

    checkpoint: path written by tools/train_multibox.py; top_k: boxes kept per image (at most K);
    device: "auto" | "cpu" | "cuda[:N]"; batch_size: images per forward pass in :meth:`propose_batch`;
    backend: "auto" (ONNX Runtime on a CPU, torch on a GPU) | "torch" | "onnxruntime", as for region
    scoring (:mod:`detect.backends`); the ONNX export is cached in ``<checkpoint>.onnx/``, keyed on the
    weights; amp: mixed precision of the torch backend on CUDA, "none" by default because the boxes
    are regressed coordinates (bf16 would round them to ~0.4 % of the image side).
    """

    name = "multibox"

    def __init__(self, checkpoint: str, top_k: int = 200, device: str = "auto", batch_size: int = 32,
                 backend: str = "auto", amp: str = "none"):
        self.device = resolve_device(device)
        self.model, _ = load_multibox(checkpoint)
        self.top_k = min(int(top_k), self.model.num_priors)
        self.batch_size = int(batch_size)
        self.net = make_scorer(_Flat(self.model), backend, self.device, self.model.input_size,
                               cache_dir=Path(f"{checkpoint}.onnx"), name="multibox", amp=amp)

    def __call__(self, image: np.ndarray) -> Proposals:
        return self.propose_batch([image])[0]

    @torch.inference_mode()
    def propose_batch(self, images: list[np.ndarray]) -> list[Proposals]:
        """Proposals for each image of ``images`` (list of ndarray[H, W, 3] uint8 RGB; grey, RGBA,
        16-bit and float arrays are converted, empty or malformed ones raise ``ValueError``)."""
        images = [as_rgb_uint8(image) for image in images]
        out = []
        for s in range(0, len(images), self.batch_size):
            chunk = images[s : s + self.batch_size]
            flat = self.net(preprocess(chunk, self.model.input_size, self.model.input_convention))
            boxes, logits = flat[..., :4], flat[..., 4]
            scores, order = torch.sigmoid(logits.float()).sort(dim=1, descending=True)
            scores, order = scores[:, : self.top_k], order[:, : self.top_k]
            boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
            for image, b, sc in zip(chunk, boxes, scores):
                height, width = image.shape[:2]
                pixels = decode_boxes(b, width, height)
                out.append(Proposals(boxes=pixels.cpu().numpy().astype(np.float32), scores=sc.cpu().numpy().astype(np.float32)))
        return out
