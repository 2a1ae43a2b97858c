"""Inference backends for region-scoring networks: eager PyTorch and ONNX Runtime.

A *scorer* is a callable ``crops: Tensor[N, 3, S, S] float32 (prepared with the scorer's
``input_convention``, that of the model's weights) -> Tensor[N, C] float32 logits`` with a ``device``
(where it wants its crops: the CPU for ONNX Runtime); it alone decides the device, autocast and memory
format of its network (the region scorer, :mod:`detect.scoring`, only calls it).

- ``torch``: :class:`TorchScorer`, the module in eval mode under ``torch.inference_mode``, channels-last
  (faster than NCHW on the project's CPU: benchmarks/README.md), with autocast on CUDA.
- ``onnxruntime``: the member exported to ONNX (dynamic batch; cached beside the detector checkpoint and
  checked against the weights in memory, :mod:`detect.export`) and run by ONNX Runtime's CPU provider,
  faster than eager PyTorch on a CPU (figures: benchmarks/README.md).
- ``auto``: ONNX Runtime on a CPU device (when onnxruntime is importable), torch otherwise.

Precision of the ONNX Runtime backend (``precision``): ``fp32``, the export as it is; ``int8``, the
export quantized on ``calibration`` inputs (:mod:`detect.quantize`), an error when it cannot be made (no
calibration inputs, the torch backend, a failed quantization); ``auto``, int8 on the CPUs where
:mod:`detect.quantize` measured it faster with no measurable loss of mAP (benchmarks/int8.md), when
calibration inputs exist; fp32 otherwise, and fp32 with a warning when the int8 model cannot be made.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from detect.export import cached_onnx_export, session_options
from detect.models.convention import IMAGENET, InputConvention
from detect.quantize import Int8Recipe, QuantizationError, cached_int8_export, cpu_has_int8_dot

log = logging.getLogger(__name__)

__all__ = ["TorchScorer", "OnnxScorer", "as_scorer", "make_scorer", "make_scorers", "resolve_backend", "resolve_precision",
           "describe_scoring", "PRECISIONS"]

Scorer = Callable[[torch.Tensor], torch.Tensor]
PRECISIONS = ("fp32", "int8", "auto")


class TorchScorer:
    """Eager PyTorch scorer; float32 logits. ``amp``: "auto" (bf16 on CUDA when supported, else fp16; none on
    CPU), "bf16", "fp16" or "none". ``channels_last``: NHWC convolutions (on every device)."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", amp: str = "auto",
                 channels_last: bool = True):
        self.device, self.channels_last = torch.device(device), channels_last
        self.input_convention = getattr(model, "input_convention", IMAGENET)
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if amp == "auto":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if self.device.type == "cuda" else "none"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
        self.precision = "fp32" if amp == "none" else amp  # (describe_scoring)

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        crops = crops.to(self.device, non_blocking=True)
        if self.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.model(crops).float()


def as_scorer(member: nn.Module | Scorer) -> Scorer:
    """``member`` as a scorer: a scorer as it is; a module as a :class:`TorchScorer` on the device of its
    parameters (its defaults: autocast on CUDA, channels-last)."""
    if not isinstance(member, nn.Module):
        if not callable(member) or not hasattr(member, "device"):
            raise TypeError(f"{type(member).__name__} is neither a module nor a scorer (a callable with a device)")
        return member
    param = next(member.parameters(), None)
    return TorchScorer(member, param.device if param is not None else "cpu")


class OnnxScorer:
    """ONNX Runtime (CPU provider) scorer for an exported model file; ``session``: a ready session of it
    (:func:`detect.export.cached_onnx`'s), or None to load the file with ``num_threads``;
    ``input_convention``: that of the exported weights; ``precision``: "fp32" | "int8", the file's kind."""

    def __init__(self, onnx_path: str | Path, num_threads: int | None = None,
                 input_convention: InputConvention | None = None, precision: str = "fp32", session=None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.device = torch.device("cpu")
        self.input_convention = input_convention or IMAGENET
        self.precision = precision
        self.session = session if session is not None else ort.InferenceSession(
            str(self.path), session_options(num_threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(logits)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``onnxruntime`` on CPU when importable, else ``torch``."""
    if backend not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"unknown backend {backend!r}: expected auto, torch or onnxruntime")
    if backend == "onnxruntime" and device.type != "cpu":
        raise ValueError("the onnxruntime backend runs on the CPU; use backend=torch on GPU")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnxruntime not installed: scoring with eager PyTorch")
        return "torch"
    return "onnxruntime"


def resolve_precision(precision: str, backend: str, has_calibration: bool, cpu_flags: set[str] | None = None) -> str:
    """``fp32`` or ``int8`` for ``precision`` under the resolved ``backend``, by the rules of the module
    docstring (a ``ValueError`` saying what to do where ``int8`` cannot be made); has_calibration:
    calibration inputs exist; cpu_flags: the CPU's feature flags (None: this CPU's)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and backend != "onnxruntime":
        raise ValueError("precision=int8 runs on ONNX Runtime: use backend=auto on a CPU or backend=onnxruntime")
    if precision == "int8" and not has_calibration:
        raise ValueError("precision=int8 needs calibration inputs (the detector file's calibration crops: "
                         "bundle it again with tools/train_region.py step=bundle)")
    if precision != "auto" or backend != "onnxruntime":
        return precision if precision != "auto" else "fp32"
    if not cpu_has_int8_dot(cpu_flags):
        log.info("precision=auto: no AVX-512 VNNI or AMX on this CPU, where int8 was measured faster: fp32")
        return "fp32"
    if not has_calibration:
        log.warning("precision=auto: no calibration inputs for an int8 model: fp32 (bundle the detector "
                    "again to store calibration crops)")
        return "fp32"
    return "int8"


def make_scorer(model: nn.Module, backend: str, device: str | torch.device, input_size: int,
                cache_dir: str | Path | None = None, name: str = "model", amp: str = "auto",
                num_threads: int | None = None, precision: str = "fp32",
                calibration: np.ndarray | None = None, int8_recipe: Int8Recipe | dict | None = None) -> Scorer:
    """One scorer for ``model`` (single tensor output; inputs ``[N, 3, input_size, input_size]``).

    ``cache_dir`` holds the ONNX export ``<name>.onnx`` and the int8 model ``<name>.int8.onnx``
    (required for ``onnxruntime``). With ``backend=auto``, an export that cannot be made (read-only
    folder, full disk, an operator the exporter lacks) falls back to torch with a warning; an explicit
    ``onnxruntime`` raises. backend, precision: module docstring; amp: :class:`TorchScorer`'s;
    calibration: ``ndarray[N, 3, input_size, input_size] float32`` network inputs for the int8 model's
    activation ranges (None: none); int8_recipe: an :class:`Int8Recipe` or its plain values (None: the defaults)."""
    device = torch.device(device)
    chosen = resolve_backend(backend, device)
    wanted = resolve_precision(precision, chosen, calibration is not None)
    if chosen == "torch":
        return TorchScorer(model, device, amp=amp)
    if cache_dir is None:
        raise ValueError("backend onnxruntime needs a cache_dir for its exports")
    try:
        path, key, session = cached_onnx_export(model, cache_dir, name, input_size, num_threads)
    except (OSError, RuntimeError) as e:  # the exporter's errors are RuntimeErrors
        if backend != "auto" or precision == "int8":
            raise
        log.warning("no ONNX export of %s in %s (%s): running it in eager PyTorch", name, cache_dir, e)
        return TorchScorer(model, device, amp=amp)
    convention = getattr(model, "input_convention", None)
    if wanted == "int8":
        try:
            recipe = int8_recipe if isinstance(int8_recipe, Int8Recipe) else Int8Recipe.from_dict(int8_recipe)
            int8_path, _, int8_session = cached_int8_export(model, path, key, calibration, recipe, num_threads)
            return OnnxScorer(int8_path, input_convention=convention, precision="int8", session=int8_session)
        except (QuantizationError, OSError) as e:
            if precision == "int8":
                raise
            log.warning("no int8 model of %s (%s): scoring in fp32", name, e)
    return OnnxScorer(path, input_convention=convention, session=session)


def make_scorers(members: list[nn.Module], backend: str, device: str | torch.device, crop_size: int,
                 cache_dir: str | Path | None = None, amp: str = "auto", num_threads: int | None = None,
                 precision: str = "fp32", calibration: np.ndarray | Sequence[np.ndarray] | None = None,
                 int8_recipe: Int8Recipe | dict | None = None) -> list[Scorer]:
    """One scorer per member (see :func:`make_scorer`; the exports are ``member<k>.onnx``).
    calibration: one array for every member, or a list with one per member (their inputs differ)."""
    per_member = list(calibration) if isinstance(calibration, (list, tuple)) else [calibration] * len(members)
    if len(per_member) != len(members):
        raise ValueError(f"{len(per_member)} calibration arrays for {len(members)} members")
    return [make_scorer(m, backend, device, crop_size, cache_dir, f"member{k}", amp, num_threads, precision,
                        per_member[k], int8_recipe) for k, m in enumerate(members)]


def describe_scoring(scorers: Sequence[Scorer]) -> dict:
    """Which backend and precision scored the regions, for run records and reports:
    ``{"backend": str, "precision": str, "members": [{"backend", "precision", "device"}, ...]}``;
    ``backend``/``precision`` are the members' common value, ``"mixed"`` where they differ. A
    :class:`TorchScorer`'s precision is its autocast dtype (``bf16``, ``fp16``) or ``fp32``."""
    members = [{"backend": "torch" if isinstance(s, TorchScorer) else "onnxruntime" if isinstance(s, OnnxScorer)
                else type(s).__name__, "precision": str(getattr(s, "precision", "unknown")),
                "device": str(getattr(s, "device", "unknown"))} for s in scorers]
    values = {key: {m[key] for m in members} for key in ("backend", "precision")}
    return {**{k: v.pop() if len(v) == 1 else "mixed" if v else "none" for k, v in values.items()}, "members": members}
