"""ONNX export of the scoring networks, and the one cache of the ONNX models made from them.

An export takes the network's prepared crops (``Tensor[N, 3, S, S]`` float32, dynamic batch) and gives
its single output. Exports and their int8 models (:mod:`detect.quantize`) are cached beside the
detector checkpoint by :func:`cached_onnx`: each file carries the key of what it was made from inside
itself (ONNX metadata :data:`EXPORT_KEY`) and in its sidecar JSON (with the file's sha256), compared with
that of the weights in memory when the file is loaded (read once: hashed, then given to ONNX Runtime).
A file made from other inputs (another detector's cache copied here, a sidecar edited to match a replaced
file), one whose sidecar key or content hash does not match, or one ONNX Runtime cannot load, is made
again, never silently used.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from detect.io import atomic_open, atomic_write_json, digest
from detect.models.convention import IMAGENET

if TYPE_CHECKING:  # onnxruntime is imported where a session is made
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

__all__ = ["EXPORT_KEY", "session_options", "with_metadata", "export_onnx", "cached_onnx", "cached_onnx_export"]

_EXPORT_FORMAT = 3  # bump when the export procedure changes: every cached export is then rebuilt
EXPORT_KEY = "googlenet_detect.export_key"  # ONNX metadata entry: the cache key of what an export was made from


def session_options(num_threads: int | None = None):
    """ONNX Runtime session options of every scorer: all graph optimisations, ``num_threads`` intra-op
    threads (None: torch's intra-op thread count, which follows ``OMP_NUM_THREADS`` and
    ``torch.set_num_threads``), one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def with_metadata(model_bytes: bytes, metadata: Mapping[str, str]) -> bytes:
    """A serialized ONNX model with the ``metadata`` entries (``metadata_props``) set, replacing any of
    the same names."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in metadata}
    onnx.helper.set_model_props(proto, {**kept, **{key: str(value) for key, value in metadata.items()}})
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: str | Path, crop_size: int, metadata: Mapping[str, str] | None = None) -> None:
    """Export ``model`` (eval mode, logits output) to ONNX with a dynamic batch axis, atomically;
    ``metadata``: entries written into the model's ``metadata_props`` (e.g. ``{EXPORT_KEY: key}``)."""
    model = model.eval().to("cpu")
    example = torch.zeros(2, 3, crop_size, crop_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["crops"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"crops": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    data = with_metadata(buffer.getvalue(), metadata) if metadata else buffer.getvalue()
    with atomic_open(Path(path), "wb") as f:
        f.write(data)


def cached_onnx(path: str | Path, key: str, make: Callable[[], Mapping], what: str, inputs: str,
                num_threads: int | None = None) -> tuple[Path, str, InferenceSession]:
    """``(path, key, its ONNX Runtime session of num_threads)``: an ONNX model made from the inputs of cache
    ``key``, reused or made again by the rules of the module docstring (``ValueError`` when a new one lacks
    ``key``). make: writes the model to ``path`` atomically, with ``{EXPORT_KEY: key}`` in its metadata, and
    returns plain facts for the sidecar ``<stem>.json`` (beside ``key`` and the sha256); the warning on a
    remake names the file, ``what`` it is (``"ONNX export"``) and the ``inputs`` of the key (``"weights or
    exporter"``)."""
    import onnxruntime as ort

    path = Path(path)
    sidecar = path.with_suffix(".json")

    def load(data: bytes):
        session = ort.InferenceSession(data, session_options(num_threads), providers=["CPUExecutionProvider"])
        found = session.get_modelmeta().custom_metadata_map.get(EXPORT_KEY)
        if found != key:
            raise ValueError(f"{path}: made from other weights or inputs than those loaded (its {EXPORT_KEY} "
                             f"{found!r} is not {key!r})")
        return session

    if path.is_file() and sidecar.is_file():
        try:
            meta, data = json.loads(sidecar.read_text()), path.read_bytes()
            if meta.get("key") == key and meta.get("sha256") == hashlib.sha256(data).hexdigest():
                return path, key, load(data)
            log.warning("%s: stale %s (%s changed), making it again", path, what, inputs)
        except Exception as e:  # corrupt JSON, truncated model, made from other weights, ...
            log.warning("%s: unusable %s (%s), making it again", path, what, e)
    path.parent.mkdir(parents=True, exist_ok=True)
    facts = make()
    data = path.read_bytes()
    atomic_write_json(sidecar, {"key": key, "sha256": hashlib.sha256(data).hexdigest(), **facts})
    return path, key, load(data)


def cached_onnx_export(model: nn.Module, cache_dir: str | Path, name: str, crop_size: int,
                       num_threads: int | None = None) -> tuple[Path, str, InferenceSession]:
    """``(cache_dir/<name>.onnx, its key, its session)``: a valid export of ``model`` (:func:`cached_onnx`,
    the session of ``num_threads``), exported when missing or stale; the key is a :func:`detect.io.digest`
    of the export format, the torch and onnx versions, the crop size, the module structure and the
    weights; the sidecar also records the crop size and the input convention the export's crops follow."""
    import onnx

    key = digest({"format": _EXPORT_FORMAT, "torch": torch.__version__, "onnx": onnx.__version__,
                  "crop_size": crop_size, "structure": repr(model), "weights": model.state_dict()})
    path = Path(cache_dir) / f"{name}.onnx"

    def make() -> dict:
        log.info("exporting %s to ONNX (crop size %d)", name, crop_size)
        export_onnx(model, path, crop_size, metadata={EXPORT_KEY: key})
        return {"crop_size": crop_size, "input_convention": getattr(model, "input_convention", IMAGENET).to_dict()}

    return cached_onnx(path, key, make, "ONNX export", "weights or exporter", num_threads)
