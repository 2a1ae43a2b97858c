"""Inference: a trained MultiBox checkpoint as a proposer (image -> top-k boxes with confidences)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from detect.backends import make_scorer
from detect.distributed import resolve_device
from detect.io import check_finished, load_checkpoint
from detect.limits import check_bound, check_finite_state
from proposals.base import Proposals, as_rgb_uint8
from proposals.multibox.model import MultiBoxNet, decode_boxes, preprocess, top_k_boxes

__all__ = ["MultiBoxProposer", "load_multibox"]


def load_multibox(path) -> tuple[MultiBoxNet, dict]:
    """Rebuild a MultiBoxNet (on the CPU) from a checkpoint file, or from an already loaded checkpoint dict
    (``model_kwargs`` + ``model_state``, the averaged weights; e.g. the network a detector file embeds).
    Returns ``(model in eval mode, checkpoint dict)``; ``ValueError`` names the file when a key is
    missing or the weights do not fit."""
    is_file = isinstance(path, (str, Path))
    ckpt = load_checkpoint(path) if is_file else path
    source = str(path) if is_file else "MultiBox network"
    check_finished(ckpt, source)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{source}: not a MultiBox checkpoint")
    for key in ("model_kwargs", "model_state"):
        if key not in ckpt:
            raise ValueError(f"{source}: not a MultiBox checkpoint (no {key!r})")
    kwargs = ckpt["model_kwargs"]
    if not isinstance(kwargs, Mapping) or not set(kwargs) <= _MODEL_ARGS:
        raise ValueError(f"{source}: MultiBox model_kwargs must be a mapping of {sorted(_MODEL_ARGS)}")
    try:
        model = MultiBoxNet(**kwargs)
        model.load_state_dict(ckpt["model_state"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{source}: MultiBox weights do not match model_kwargs ({e})") from e
    return model.eval(), dict(ckpt)


_MODEL_ARGS = {"backbone_kwargs", "num_priors", "input_size", "dropout", "grid"}  # MultiBoxNet's arguments
TRAINING_STATE = ("optimizer", "scheduler", "raw_state", "averaged_state", "scaler", "rng", "epoch_rng")


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

    checkpoint: path written by tools/train_multibox.py, or that checkpoint already loaded (as
    :func:`load_multibox` takes it); top_k: boxes kept per image (at most K); device: "auto" | "cpu" |
    "cuda[:N]"; batch_size: images per forward pass in :meth:`propose_batch`.
    backend, precision: as for region scoring (:mod:`detect.backends`); the int8 model is calibrated on
    the checkpoint's ``calibration`` images (``uint8 [N, S, S, 3]`` RGB at the input size, prepared in the
    network's input convention) with its ``int8_recipe``, which the detector bundle step adds to the
    network it embeds.
    amp: mixed precision of the torch backend on CUDA, "none" by default because the boxes are
    regressed coordinates (bf16 would round them to ~0.4 % of the image side).
    onnx_cache: folder of the ONNX export, keyed on the weights (default ``<checkpoint>.onnx/`` for a
    path; for a loaded dict without it, ``backend=auto`` runs torch).
    """

    name = "multibox"
    spec_input, spec_args = "network", ("checkpoint", "onnx_cache")  # proposals.spec: embedded, never a path

    def __init__(self, checkpoint: str | Path | Mapping, top_k: int = 200, device: str = "auto", batch_size: int = 32,
                 backend: str = "auto", amp: str = "none", onnx_cache: str | Path | None = None,
                 precision: str = "fp32"):
        self.device = resolve_device(device)
        self.model, ckpt = load_multibox(checkpoint)
        self._network = self.load_network(ckpt)
        self._params = {"top_k": int(top_k), "device": str(device), "batch_size": int(batch_size),
                        "backend": str(backend), "amp": str(amp), "precision": str(precision)}
        self.top_k = min(int(top_k), self.model.num_priors)
        self.batch_size = int(batch_size)
        if onnx_cache is None and isinstance(checkpoint, (str, Path)):
            onnx_cache = Path(f"{checkpoint}.onnx")
        if onnx_cache is None and backend == "auto":
            backend = "torch"
        calibration = ckpt.get("calibration")
        if calibration is not None:
            calibration = torch.as_tensor(calibration)
            if calibration.dtype != torch.uint8 or calibration.ndim != 4 or calibration.shape[-1] != 3:
                source = checkpoint if isinstance(checkpoint, (str, Path)) else "the embedded MultiBox network"
                raise ValueError(f"{source}: MultiBox calibration images must be uint8 [N, S, S, 3], "
                                 f"got {calibration.dtype} {tuple(calibration.shape)}")
            calibration = preprocess(list(calibration.numpy()), self.model.input_size, self.model.input_convention).numpy()
        self.net = make_scorer(_Flat(self.model), backend, self.device, self.model.input_size,
                               cache_dir=onnx_cache, name="multibox", amp=amp, precision=precision,
                               calibration=calibration, int8_recipe=ckpt.get("int8_recipe"))

    def spec_params(self) -> dict:
        """Constructor arguments besides the network (plain values; see :mod:`proposals.spec`)."""
        return dict(self._params)

    def network_entry(self) -> dict:
        """What a detector file embeds: :meth:`load_network` of the checkpoint (the priors in ``model_state``)."""
        return dict(self._network)

    @staticmethod
    def load_network(checkpoint: str | Path | Mapping) -> dict:
        """The inference part of a checkpoint (a path or a loaded dict), training state left out."""
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_multibox(checkpoint)[1]
        return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}

    @staticmethod
    def check_network(network: Mapping, source: str) -> None:
        """An embedded network's entries, the bounds of its sizes (and its backbone's width) and finite
        weights, checked before anything is built; ``ValueError`` naming ``source``."""
        kwargs, state = network.get("model_kwargs"), network.get("model_state")
        if not isinstance(kwargs, Mapping) or not isinstance(state, Mapping):
            raise ValueError(f"{source}: the MultiBox network's model_kwargs and model_state must be mappings")
        for name in ("num_priors", "input_size", "grid"):
            check_bound(kwargs.get(name), name, f"{source}: MultiBox model_kwargs")
        backbone = kwargs.get("backbone_kwargs")
        if isinstance(backbone, Mapping):
            for name in ("width", "num_classes"):
                check_bound(backbone.get(name), name, f"{source}: MultiBox backbone_kwargs")
        check_finite_state(state, f"{source}: MultiBox network")

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
            boxes, logits = top_k_boxes(flat[..., :4], flat[..., 4], self.top_k)
            for image, b, scores in zip(chunk, boxes, torch.sigmoid(logits)):
                height, width = image.shape[:2]
                out.append(Proposals(decode_boxes(b, width, height).cpu().numpy(), scores.cpu().numpy()))
        return out
