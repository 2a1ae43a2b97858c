"""Static int8 quantization of exported scorers with ONNX Runtime, calibrated on the data they score.

An fp32 ONNX export (:func:`detect.export.cached_onnx_export`) becomes an int8 model once:
``quant_pre_process`` (shape inference, graph clean-up), then ``quantize_static`` with activation ranges
calibrated on ``calibration`` inputs (the network's own float inputs: warped proposal crops of the
training split for a region classifier, resized training images for MultiBox). The quantization is the
variant measured best (benchmarks/int8.md): QDQ, uint8 activations, int8 per-channel weights, MinMax
ranges, the fully connected layers' outputs left in float; its one setting is an :class:`Int8Recipe`.
The int8 model is cached beside the fp32 export (:func:`cached_int8_export`).

The local response norms: in float they cost a large share of the int8 model's time (Sqrt and Div
between dequantize/quantize pairs, benchmarks/int8.md). An LRN whose largest effect on the calibration
inputs (:func:`lrn_effects`) stays below ``lrn_tolerance`` (default 1/512: every activation moves by less
than half an 8-bit step of its range) is replaced in the int8 model by the constant ``k^-beta`` its factor
tends to for small activations (the others are quantized in their exact form). The decision and the
measured effects are recorded in the ``.int8.json`` sidecar.

int8 gains on CPUs with 8-bit dot-product instructions (measured on a Xeon with AVX-512 VNNI and AMX-INT8:
:func:`cpu_has_int8_dot`); ONNX Runtime's u8s8 kernels on AVX2 alone are not expected to beat fp32.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detect.data.images import read_image
from detect.export import EXPORT_KEY, cached_onnx, export_onnx, with_metadata
from detect.io import digest
from detect.limits import dataclass_from_file
from detect.models.convention import InputConvention
from detect.models.googlenet import LocalResponseNorm

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

__all__ = ["Int8Recipe", "QuantizationError", "cached_int8_export", "lrn_effects", "fold_lrns", "cpu_has_int8_dot",
           "draw_calibration_crops", "draw_calibration_images", "crops_to_inputs", "to_pixels", "INT8_DOT_FLAGS"]

_INT8_FORMAT = 2  # bump when the quantization procedure changes: every cached int8 model is then rebuilt
# /proc/cpuinfo flags where int8 was measured faster (module docstring); AVX-VNNI alone (client CPUs): not measured
INT8_DOT_FLAGS = ("avx512_vnni", "amx_int8")
# Settings of recipes stored before the others were removed (detector files, MultiBox checkpoints, such as the
# demo's), at the values they were stored with; a stored recipe may name them at those values only
_FIXED = {"format": "qdq", "activations": "u8", "weights": "s8", "per_channel": True, "head": "float",
          "calibration": "minmax", "reduce_range": False, "lrn": "fold", "percentile": 99.999}


class QuantizationError(RuntimeError):
    """The int8 model cannot be made (unusable calibration data, the quantizer failed, ...); the text
    names the model and the cause."""


@dataclass(frozen=True)
class Int8Recipe:
    """How an fp32 export is quantized besides the fixed choices of the module docstring: ``lrn_tolerance``,
    the largest effect on the calibration inputs of an LRN that is folded (0 folds none, every LRN quantized)."""

    lrn_tolerance: float = 1.0 / 512

    def __post_init__(self):
        if not 0.0 <= float(self.lrn_tolerance) < 1.0:
            raise ValueError(f"int8 recipe: lrn_tolerance={self.lrn_tolerance} is not in [0, 1)")

    @classmethod
    def from_dict(cls, values: Mapping | None, source: str = "int8 recipe") -> "Int8Recipe":
        """A recipe from plain values (a stored one may name the removed settings at their fixed value,
        see ``_FIXED``); an unknown key or a bad value is a ``ValueError`` naming ``source``."""
        values = {} if values is None else values
        for name, fixed in _FIXED.items():
            if isinstance(values, Mapping) and values.get(name, fixed) != fixed:
                raise ValueError(f"{source}: {name} other than {fixed!r} is no longer made (the variant measured "
                                 "best is the only one: benchmarks/int8.md); bundle the detector again")
        return dataclass_from_file(cls, values, source, "setting(s)", ignore=tuple(_FIXED))

    def label(self) -> str:
        """Short name, e.g. ``qdq-u8s8-pc-lrnfold0.00195-headfloat-minmax``."""
        return f"qdq-u8s8-pc-lrnfold{self.lrn_tolerance:.3g}-headfloat-minmax"


def cpu_has_int8_dot(flags: Iterable[str] | None = None) -> bool:
    """True when the CPU has an 8-bit dot-product instruction set (:data:`INT8_DOT_FLAGS`); flags: its feature
    flags (None: those of ``/proc/cpuinfo``, none where it cannot be read, e.g. not Linux)."""
    if flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), ())
        except OSError:
            flags = ()
    return not set(INT8_DOT_FLAGS).isdisjoint(flags)


def draw_calibration_crops(records: Sequence, proposals: Callable[[str], np.ndarray], count: int, crop_size: int,
                           context: int, convention: InputConvention | Mapping | None = None, seed: int = 0,
                           min_size: float = 2.0) -> np.ndarray:
    """Warped proposal crops for calibrating int8 region classifiers: what the detector scores, as RGB pixels.

    records: DetectionRecord list (the training split); proposals: ``image_id -> ndarray[N, 4]`` xyxy
    (e.g. ``ProposalStore.get``; a missing entry (KeyError) falls back to the ground-truth boxes).
    Images are visited in a seeded random order (:func:`_draw`), ``ceil(count / len(records))`` of each
    one's :func:`detect.scoring.usable_boxes` drawn uniformly and warped as the detector warps them for a
    member of input ``convention`` (None = ImageNet), then turned back into pixels. Returns
    ``ndarray[count, 3, crop_size, crop_size] uint8`` RGB, which :func:`crops_to_inputs` prepares for each
    member in its own convention (to within half a grey level; beyond the image border a warp shows
    ``convention``'s mean colour, and ImageNet's and BVLC's means differ by under one grey level).
    """
    from detect.scoring import RegionWarp, usable_boxes

    convention, warp = InputConvention.from_dict(convention), RegionWarp(crop_size, context)
    per_image = -(-count // max(len(records), 1))

    def take(record, image: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        try:
            boxes = np.asarray(proposals(record.image_id), np.float32).reshape(-1, 4)
        except KeyError:
            boxes = np.zeros((0, 4), np.float32)
        boxes = usable_boxes(boxes if len(boxes) else record.boxes, image.shape, min_size)
        if len(boxes) == 0:
            return None
        pick = rng.choice(len(boxes), size=min(per_image, len(boxes)), replace=False)
        return to_pixels(warp.crops(image, boxes[torch.from_numpy(pick)], convention), convention).numpy()

    return _draw(records, count, seed, "calibration crops", take)


def _draw(records: Sequence, count: int, seed: int, what: str,
          take: Callable[[object, np.ndarray, np.random.Generator], np.ndarray | None]) -> np.ndarray:
    """The first ``count`` rows of ``take(record, image, rng)`` (``ndarray[k, ...]`` or None) over
    ``records`` read in the order of ``default_rng(seed).permutation`` (``rng``, that generator, draws
    on after it). Unreadable images are logged and skipped, fewer rows than ``count`` logged as a
    warning; ``ValueError`` when there is nothing to draw from or no row could be drawn."""
    if count < 1 or not records:
        raise ValueError(f"{what}: count={count} from {len(records)} images: nothing to draw")
    rng = np.random.default_rng(seed)
    out, skipped = [], []
    for index in rng.permutation(len(records)):
        try:
            image = read_image(records[index].path, (records[index].width, records[index].height))
        except ValueError as e:  # ImageError names the file
            log.warning("%s: skipped %s", what, e)
            skipped.append(records[index])
            continue
        rows = take(records[index], image, rng)
        if rows is not None:
            out.append(rows)
        if sum(len(r) for r in out) >= count:
            break
    if not out:
        raise ValueError(f"{what}: none could be drawn from {len(records)} images ({len(skipped)} unreadable)")
    out = np.concatenate(out)[:count]
    if len(out) < count:
        log.warning("%s: %d of the %d asked for (%d images unreadable)", what, len(out), count, len(skipped))
    return out


def to_pixels(inputs: torch.Tensor, convention: InputConvention | Mapping | None = None) -> torch.Tensor:
    """The inverse of ``convention.normalize``: ``Tensor[..., 3, H, W]`` float network inputs ->
    ``Tensor[..., 3, H, W] uint8`` RGB pixels (rounded, clamped to 0..255)."""
    c = InputConvention.from_dict(convention)
    mean, std = torch.tensor([c.mean, c.std], dtype=torch.float32).view(2, 3, 1, 1)
    x = (inputs.float() * std + mean) * (255.0 / c.scale)
    if c.channel_order == "BGR":
        x = x.flip(-3)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def draw_calibration_images(records: Sequence, count: int, size: int, seed: int = 0) -> np.ndarray:
    """Training images for calibrating an int8 MultiBox network: ``count`` images in a seeded random
    order (:func:`_draw`), resized as :func:`proposals.multibox.model.preprocess` resizes them (bilinear
    to ``size x size``). Returns ``ndarray[count, size, size, 3] uint8`` RGB."""
    import cv2

    return _draw(records, count, seed, "calibration images",
                 lambda record, image, rng: cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)[None])


def crops_to_inputs(crops: np.ndarray, convention: InputConvention | Mapping | None = None) -> np.ndarray:
    """``ndarray[N, 3, S, S] uint8`` RGB pixels -> the inputs of a network of input ``convention`` (None =
    ImageNet; :meth:`detect.models.convention.InputConvention.normalize`): ``ndarray[N, 3, S, S] float32``."""
    return InputConvention.from_dict(convention).normalize(torch.from_numpy(np.ascontiguousarray(crops))).numpy()


@torch.inference_mode()
def lrn_effects(model: nn.Module, calibration: np.ndarray, batch_size: int = 16) -> dict[str, float]:
    """Largest effect of each :class:`LocalResponseNorm` of ``model`` on ``calibration`` inputs.

    calibration: ``ndarray[N, 3, S, S] float32``. Returns ``{module name: max over every activation of
    1 - (d / k)^-beta}``, with ``d = k + alpha * (mean of x^2 over the size-channel window)``: how far the
    LRN's factor falls below the constant ``k^-beta`` (0 = the LRN is that constant here)."""
    lrns = {name: m for name, m in model.named_modules() if isinstance(m, LocalResponseNorm)}
    peak = dict.fromkeys(lrns.values(), 0.0)

    def record(module, inputs, output):
        x = inputs[0].float()
        mean_sq = F.avg_pool3d((x * x)[:, None], (module.size, 1, 1), stride=1,
                               padding=(module.size // 2, 0, 0), count_include_pad=True)
        peak[module] = max(peak[module], float(mean_sq.max()) * module.alpha)

    handles = [m.register_forward_hook(record) for m in lrns.values()]
    try:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        for i in range(0, len(calibration), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(calibration[i:i + batch_size], np.float32)).to(device))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return {name: 1.0 - (1.0 + peak[m] / m.k) ** -m.beta for name, m in lrns.items()}


class _Scale(nn.Module):
    """``x * factor``: a local response norm folded to its constant ``k^-beta``."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def fold_lrns(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """A copy of ``model`` whose :class:`LocalResponseNorm` modules ``names`` are replaced by their
    constant factor ``k^-beta`` (an identity when k = 1)."""
    model = copy.deepcopy(model)
    for name in names:
        parent, _, attr = name.rpartition(".")
        lrn = model.get_submodule(name)
        factor = lrn.k ** -lrn.beta
        setattr(model.get_submodule(parent), attr, nn.Identity() if factor == 1.0 else _Scale(factor))
    return model


def _head_nodes(model_path: Path) -> list[str]:
    """Names of the nodes to leave in float: every node computing from a Gemm's output (a classifier's
    logits, MultiBox's boxes and confidences, which share one tensor and so would share one 8-bit scale)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names, tainted = [], {o for n in graph.node if n.op_type == "Gemm" for o in n.output}
    for n in graph.node:  # exported graphs are topologically sorted
        if n.op_type != "Gemm" and tainted.intersection(n.input):
            tainted.update(n.output)
            names.append(n.name)
    return names


def _quantize_onnx(fp32_path: Path, out_path: Path, calibration: np.ndarray, metadata: Mapping[str, str]) -> None:
    """Write the int8 model of the ONNX file ``fp32_path`` to ``out_path`` (whose folder exists) atomically.

    calibration: ``ndarray[N, 3, S, S] float32`` network inputs (checked by the caller), 8 per forward pass,
    whose activation ranges set the quantization scales (all activations are held until the ranges are
    computed: keep N in the hundreds at most); metadata: entries written into the int8 model's
    ``metadata_props`` (replacing the fp32 model's of the same names). Raises :class:`QuantizationError`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent,
                                     ignore_cleanup_errors=True) as work:
        try:
            import onnxruntime as ort

            pre, quantized = Path(work) / "pre.onnx", Path(work) / "int8.onnx"
            quant_pre_process(str(fp32_path), str(pre))
            input_name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
            batches = iter([{input_name: np.ascontiguousarray(calibration[i:i + 8], np.float32)}
                            for i in range(0, len(calibration), 8)])
            reader = SimpleNamespace(get_next=lambda: next(batches, None))  # an ONNX Runtime CalibrationDataReader
            quantize_static(str(pre), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=_head_nodes(pre) or None, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]})
            quantized.write_bytes(with_metadata(quantized.read_bytes(), metadata))
            os.replace(quantized, out_path)  # same folder: atomic
        except Exception as e:  # the quantizer raises many kinds (ValueError, RuntimeError, ONNX errors)
            raise QuantizationError(f"{fp32_path}: int8 quantization failed ({type(e).__name__}: {e})") from e


def cached_int8_export(model: nn.Module, fp32_path: str | Path, fp32_key: str, calibration: np.ndarray,
                       recipe: Int8Recipe = Int8Recipe(),
                       num_threads: int | None = None) -> tuple[Path, str, InferenceSession]:
    """``(<dir>/<name>.int8.onnx, its key, its ONNX Runtime session of num_threads)``: a valid int8 model of
    ``model``, whose fp32 export is ``<dir>/<name>.onnx`` with cache key ``fp32_key``, quantized when
    missing or stale (:func:`detect.export.cached_onnx`).

    calibration: ``ndarray[N, 3, S, S] float32`` network inputs, prepared in ``model.input_convention``
    (:func:`crops_to_inputs`). The key covers the fp32 key, the recipe, the calibration inputs' digest,
    the input convention and the ONNX Runtime version; the sidecar also records the LRN decisions.
    Raises :class:`QuantizationError` when quantization fails."""
    import onnxruntime as ort

    fp32_path, calibration = Path(fp32_path), np.asarray(calibration)
    if calibration.ndim != 4 or len(calibration) == 0 or not np.issubdtype(calibration.dtype, np.floating):
        raise QuantizationError(f"{fp32_path}: calibration inputs must be a non-empty float array [N, C, H, W], "
                                f"got {calibration.dtype} {calibration.shape}")
    if not np.isfinite(calibration).all():
        raise QuantizationError(f"{fp32_path}: calibration inputs contain NaN or infinity")
    stem = fp32_path.name.removesuffix(".onnx")
    int8_path = fp32_path.with_name(f"{stem}.int8.onnx")
    header = {"format": _INT8_FORMAT, "fp32_key": fp32_key, "recipe": asdict(recipe),
              "calibration": digest(calibration), "calibration_inputs": len(calibration),
              "input_convention": InputConvention.from_dict(getattr(model, "input_convention", None)).to_dict(),
              "onnxruntime": ort.__version__}
    key = digest(header)

    def make() -> dict:
        log.info("quantizing %s to int8 (%s, %d calibration inputs)", fp32_path, recipe.label(), len(calibration))
        has_lrn = any(isinstance(m, LocalResponseNorm) for m in model.modules())
        effects = lrn_effects(model, calibration) if has_lrn else {}
        folded = [name for name, effect in effects.items() if effect <= recipe.lrn_tolerance]
        if effects:
            log.info("%s: LRN effects on the calibration inputs %s; folded (<= %g): %s", fp32_path.name,
                     {n: f"{e:.2g}" for n, e in effects.items()}, recipe.lrn_tolerance, folded or "none")
        with tempfile.TemporaryDirectory(prefix=f".{stem}.int8src.", dir=fp32_path.parent) as work:
            source = fp32_path
            if folded:
                source = Path(work) / "folded.onnx"
                export_onnx(fold_lrns(model, folded), source, int(calibration.shape[-1]))
            _quantize_onnx(source, int8_path, calibration, {EXPORT_KEY: key})
        return {**header, "lrn_effects": effects, "lrn_folded": folded}

    return cached_onnx(int8_path, key, make, "int8 model", "weights, calibration, recipe or ONNX Runtime", num_threads)
