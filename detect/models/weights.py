"""Weights into networks: our checkpoints, torchvision's state dicts and BVLC GoogLeNet's public files.

:func:`load_pretrained` loads weights into a model built from a config (``init=`` of the trainers);
:func:`load_model` and :func:`model_from_entry` rebuild the network a file describes (its
``model_kwargs``: :meth:`GoogLeNetConfig.from_kwargs`, refusing anything else) with its weights. Both
detect the format by content (:func:`detect.models.bvlc.weights_format`) and adopt the input
convention the weights expect.

BVLC weights (``.caffemodel`` or ONNX-zoo ``.onnx``, read by :mod:`detect.models.bvlc`), policy: every
layer of the main network must be in the file and fit (else ``ValueError`` naming the file and the
layer); the auxiliary heads are optional (the ONNX file has none: they stay initialised and are
reported); a classifier for another number of classes (e.g. 201 region outputs) is left initialised
and reported, as ``load_pretrained`` does for our checkpoints. The file's sha1 is compared with
BVLC's for ``.caffemodel`` files: a mismatch is logged as a warning (the layers still load: e.g. a
copy fine-tuned in Caffe), and reported in ``LoadReport.sha1_matches``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detect.io import check_finished, load_checkpoint
from detect.limits import check_finite_state
from detect.models.bvlc import (BVLC_SHA1, CAFFE_TO_MODULE, CLASSIFIERS, FIXED_POOLS, LRN_LAYERS, POOL_LAYERS,
                                WeightsLayer, read_weights, weights_format)
from detect.models.convention import BVLC, InputConvention
from detect.models.googlenet import GoogLeNet, GoogLeNetConfig

log = logging.getLogger(__name__)

__all__ = ["LoadReport", "load_model", "load_pretrained", "model_from_entry", "strip_module_prefix"]


def model_from_entry(entry: Any, source: str) -> GoogLeNet:
    """The GoogLeNet a checkpoint-like entry (``model_kwargs`` + ``model_state``, a DDP / AveragedModel
    ``module.`` prefix allowed) describes, in eval mode. Anything that does not fit is a ``ValueError``
    naming ``source``: a width or class count beyond :data:`detect.limits.LIMITS` (checked before anything
    is allocated), weights holding NaN or infinity."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("model_kwargs"), Mapping) \
            or not isinstance(entry.get("model_state"), Mapping):
        raise ValueError(f"{source}: not a GoogLeNet checkpoint (needs 'model_kwargs' and 'model_state')")
    config = GoogLeNetConfig.from_kwargs(entry["model_kwargs"], source)
    check_finite_state(entry["model_state"], source)
    model = GoogLeNet(config, init_weights=False)
    try:
        model.load_state_dict(strip_module_prefix(entry["model_state"]), strict=True)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{source}: weights do not fit the stored model_kwargs ({e})") from e
    return model.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GoogLeNet, dict]:
    """Rebuild a GoogLeNet from our checkpoint (``model_kwargs`` + ``model_state``), or build it from
    BVLC GoogLeNet weights (a ``.caffemodel`` or an ONNX-zoo ``.onnx``, detected by content): a
    ``model=googlenet`` GoogLeNet of the file's size (its classifier's outputs; aux heads when the file
    has them) with every tensor loaded. Returns (model in eval mode, checkpoint); for BVLC weights the
    "checkpoint" is ``{"model_kwargs", "classes": None, "load_report"}`` (the file names no classes:
    its outputs are the ILSVRC 2012 synsets in sorted wnid order, Caffe's ``synsets.txt``)."""
    kind = weights_format(path)
    if kind != "torch":
        layers, source, sha1 = read_weights(path, kind)
        by_name = {layer.name: layer for layer in layers if layer.blobs}
        if "loss3/classifier" not in by_name:
            raise ValueError(f"{path}: no layer 'loss3/classifier': not BVLC GoogLeNet")
        num_classes = int(by_name["loss3/classifier"].blobs[-1].size)  # the bias: one value per output
        aux = all(f"loss{k}/{n}" in by_name for k in (1, 2) for n in ("conv", "fc", "classifier"))
        model = GoogLeNet(num_classes=num_classes, aux_logits=aux, init_weights=False)
        report = _load(model, Path(path), layers, source, sha1)
        if report.missing or report.mismatched:
            raise ValueError(f"{path}: not every tensor loaded ({report.missing + report.mismatched})")
        return model.eval().to(map_location), {"model_kwargs": model.model_kwargs, "classes": None,
                                               "load_report": report}
    ckpt = load_checkpoint(path, map_location=map_location)
    check_finished(ckpt, path)
    return model_from_entry(ckpt, str(path)), ckpt


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: tensor names (ours) loaded, left initialised for a shape mismatch,
    missing from the file, and present in the file but unknown to the model; ``source``: the file's
    format; for BVLC weights also the file's layers loaded and those not loaded with the reason, its
    sha1, and whether that is the sha1 BVLC published (None: no published sha1 to compare with)."""

    loaded: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    source: str = "checkpoint"
    loaded_layers: list[str] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)
    sha1: str | None = None
    sha1_matches: bool | None = None


def load_pretrained(model: GoogLeNet, path: str | Path) -> LoadReport:
    """Load pretrained weights into ``model`` and adopt the input convention they expect.

    ``path``, detected by content: our checkpoint (a dict with ``model_state``; its convention from
    its ``model_kwargs``, ImageNet when it records none), a raw state dict (torchvision's
    ``googlenet-1378be20.pth``: ImageNet), or BVLC GoogLeNet's ``.caffemodel`` / ONNX-zoo ``.onnx``
    (into a ``model=googlenet`` GoogLeNet of any ``num_classes``, aux heads or not, by the policy of the
    module docstring). For torch files every tensor whose name and shape match is loaded; layers whose
    shape differs (fc, aux fc2 for another num_classes) keep their initialisation and are logged.
    Raises ValueError naming the file when fewer than half of the model's tensors match (the wrong
    architecture).
    """
    kind = weights_format(path)
    if kind != "torch":
        _check_architecture(model, Path(path))
        return _load(model, Path(path), *read_weights(path, kind))
    obj = load_checkpoint(path)
    check_finished(obj, path)
    ours = isinstance(obj, dict) and "model_state" in obj
    state = obj["model_state"] if ours else obj
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint with 'model_state', got {type(state).__name__}")
    state = strip_module_prefix({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    own = model.state_dict()
    to_load = {k: state[k] for k in own if k in state and state[k].shape == own[k].shape}
    report = LoadReport(loaded=list(to_load), mismatched=[k for k in own if k in state and k not in to_load],
                        missing=[k for k in own if k not in state], unexpected=[k for k in state if k not in own],
                        source="checkpoint" if ours else "state dict")
    if len(report.loaded) < 0.5 * len(own):
        raise ValueError(f"{path}: only {len(report.loaded)} of the model's {len(own)} tensors match by name and "
                         f"shape (missing {len(report.missing)}, mismatched {len(report.mismatched)}): a different "
                         "architecture?")
    model.load_state_dict(to_load, strict=False)
    kwargs = obj.get("model_kwargs") if ours else None
    convention = InputConvention.from_dict(kwargs.get("input_convention") if isinstance(kwargs, dict) else None)
    if convention != model.input_convention:
        log.info("%s: input convention %s (the model was set to %s)", path, convention.describe(),
                 model.input_convention.describe())
    model.set_input_convention(convention)
    for level, names, what in ((logging.INFO, report.mismatched, "left initialised (shape differs)"),
                               (logging.WARNING, report.missing, "not in the file, left initialised"),
                               (logging.INFO, report.unexpected, "of the file unused")):
        if names:
            log.log(level, "%s: %d tensors %s: %s%s", path, len(names), what, ", ".join(names[:10]),
                    " ..." if len(names) > 10 else "")
    log.info("%s: loaded %d of %d tensors", path, len(report.loaded), len(own))
    return report


def strip_module_prefix(state: Mapping) -> dict:
    """Drop the ``module.`` prefix of DistributedDataParallel / AveragedModel keys (and AveragedModel's
    own ``n_averaged``)."""
    if any(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
    return dict(state)


def _check_architecture(model: nn.Module, path: Path) -> None:
    if not isinstance(model, GoogLeNet):
        raise ValueError(f"{path}: BVLC GoogLeNet weights load into a GoogLeNet, not a {type(model).__name__}")
    need = {"batch_norm": False, "five_by_five": True, "lrn": True, "width": 1.0, "pool4_size": 3,
            "aux_pool": "paper", "transform_input": False}
    wrong = {k: getattr(model.config, k) for k, v in need.items() if getattr(model.config, k) != v}
    if wrong:
        raise ValueError(f"{path}: BVLC GoogLeNet is the paper network (model=googlenet: "
                         f"{', '.join(f'{k}={v}' for k, v in need.items())}); this model has "
                         f"{', '.join(f'{k}={v}' for k, v in wrong.items())}")


def _fit(path: Path, layer: WeightsLayer, shape: tuple[int, ...]) -> np.ndarray:
    """The weight blob of ``layer`` in our layout ``shape``: leading singleton axes of V1 blobs dropped,
    a transposed fully connected weight transposed back. Never reshaped by element count."""
    w = layer.blobs[0]
    while w.ndim > len(shape) and w.shape[0] == 1:
        w = w.reshape(w.shape[1:])
    if layer.params.get("transpose"):
        if w.ndim != 2:
            raise ValueError(f"{path}: layer {layer.name!r}: transposed weight of shape {w.shape}")
        w = w.T
    if w.ndim != len(shape) or (w.shape != shape and w.shape[1:] != shape[1:]):
        raise ValueError(f"{path}: layer {layer.name!r} does not fit: weight {tuple(layer.blobs[0].shape)} "
                         f"{'(stored transposed) ' if layer.params.get('transpose') else ''}against the model's {shape}")
    return np.ascontiguousarray(w)


def _check_geometry(path: Path, layer: WeightsLayer, module: nn.Module) -> None:
    p = layer.params
    kind = {nn.Conv2d: "Convolution", nn.Linear: "InnerProduct"}.get(type(module), layer.type)
    if layer.type != kind:
        raise ValueError(f"{path}: layer {layer.name!r} is {layer.type}, expected {kind}")
    if isinstance(module, nn.Conv2d):
        if not p:
            return  # an ONNX weight no node uses: nothing to check beyond its shape
        want = {"stride": tuple(module.stride), "pad": tuple(module.padding), "dilation": tuple(module.dilation),
                "group": module.groups, "bias_term": True}
    elif isinstance(module, nn.Linear):
        want = {"bias_term": True}
    elif isinstance(module, nn.MaxPool2d):
        want = {"method": "MAX", "kernel": (module.kernel_size,) * 2, "stride": (module.stride,) * 2,
                "pad": (module.padding,) * 2, "global": False, "ceil": module.ceil_mode}
    elif hasattr(module, "alpha"):  # LocalResponseNorm
        want = {"local_size": module.size, "region": 0, "alpha": module.alpha, "beta": module.beta, "k": module.k}
    else:  # FIXED_POOLS
        method, k, s, pad = FIXED_POOLS[layer.name]
        want = {"method": method, "kernel": (k, k), "stride": (s, s), "pad": (pad, pad), "global": False, "ceil": True}
    for key, value in want.items():
        got = p.get(key, value)
        if isinstance(value, float):  # LRN constants are float32 in the file
            same = abs(got - value) <= 1e-6 * abs(value)
        else:
            same = tuple(np.atleast_1d(got)) == tuple(np.atleast_1d(value))
        if not same:
            raise ValueError(f"{path}: layer {layer.name!r} has {key}={got}, model=googlenet has {key}={value}: "
                             "not the network this model implements")


def _load(model: GoogLeNet, path: Path, layers: list[WeightsLayer], source: str, sha1: str) -> LoadReport:
    report = LoadReport(source=source, sha1=sha1)
    by_name: dict[str, WeightsLayer] = {}
    for layer in layers:
        if layer.name in by_name and (layer.blobs or by_name[layer.name].blobs):
            raise ValueError(f"{path}: layer name {layer.name!r} occurs twice")
        by_name.setdefault(layer.name, layer)
    modules = dict(model.named_modules())
    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for name, target in CAFFE_TO_MODULE.items():
        module, layer = modules.get(target), by_name.get(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):  # aux head not built, classifier replaced (MultiBox)
            if layer is not None and layer.blobs:
                report.skipped_layers[name] = f"no {target} in this model"
            continue
        if layer is None or not layer.blobs:
            if name.startswith(("loss1/", "loss2/")):
                report.missing += [f"{target}.weight", f"{target}.bias"]
                report.skipped_layers[name] = "not in the file: left initialised"
                continue
            raise ValueError(f"{path}: layer {name!r} (-> {target}) is missing from the file: not BVLC GoogLeNet")
        _check_geometry(path, layer, module)
        if len(layer.blobs) != 2:
            raise ValueError(f"{path}: layer {name!r} has {len(layer.blobs)} blobs, expected a weight and a bias")
        weight = _fit(path, layer, tuple(module.weight.shape))
        bias = layer.blobs[1].reshape(-1)
        if weight.shape != tuple(module.weight.shape) or bias.shape != tuple(module.bias.shape):
            if name not in CLASSIFIERS or weight.shape[0] != bias.shape[0]:
                raise ValueError(f"{path}: layer {name!r} does not fit: weight {weight.shape}, bias {bias.shape} "
                                 f"against the model's {tuple(module.weight.shape)}, {tuple(module.bias.shape)}")
            report.mismatched += [f"{target}.weight", f"{target}.bias"]
            report.skipped_layers[name] = (f"classifier of {weight.shape[0]} outputs, the model has "
                                           f"{module.weight.shape[0]}: left initialised")
            continue
        to_load[f"{target}.weight"] = torch.from_numpy(weight)
        to_load[f"{target}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
        report.loaded_layers.append(name)
    if source.startswith("caffemodel"):
        for name, target in {**LRN_LAYERS, **POOL_LAYERS}.items():
            if target not in modules or (name.startswith("loss") and name not in by_name):
                continue  # aux heads not built, or not in the file (a deploy-only file: they stay initialised)
            if name not in by_name:
                raise ValueError(f"{path}: layer {name!r} is missing from the file: not BVLC GoogLeNet")
            _check_geometry(path, by_name[name], modules[target])
    for name, layer in by_name.items():
        if layer.blobs and name not in CAFFE_TO_MODULE:
            report.skipped_layers[name] = "not a layer of model=googlenet"
    report.loaded = sorted(to_load)
    report.unexpected = [n for n in report.skipped_layers if n not in CAFFE_TO_MODULE]
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in to_load.items()}, strict=False)
    model.set_input_convention(BVLC)
    _log_report(path, report, len(own))
    return report


def _log_report(path: Path, report: LoadReport, total: int) -> None:
    if report.source.startswith("caffemodel"):
        report.sha1_matches = report.sha1 == BVLC_SHA1
        if report.sha1_matches:
            log.info("%s: sha1 %s: BVLC's released bvlc_googlenet.caffemodel", path, report.sha1)
        else:
            log.warning("%s: sha1 %s differs from BVLC's released bvlc_googlenet.caffemodel (%s): another snapshot, "
                        "a copy fine-tuned or altered, or a damaged download; its layers fit and were loaded",
                        path, report.sha1, BVLC_SHA1)
    else:
        log.info("%s: sha1 %s", path, report.sha1)
    log.info("%s (%s): loaded %d layers (%d of the model's %d tensors); input convention now %s", path,
             report.source, len(report.loaded_layers), len(report.loaded), total, BVLC.describe())
    by_reason: dict[str, list[str]] = {}
    for name, reason in report.skipped_layers.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        level = logging.WARNING if reason.startswith("not in the file") else logging.INFO
        log.log(level, "%s: not loaded (%s): %s", path, reason, ", ".join(names))
