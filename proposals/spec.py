"""Proposers as data: a plain spec that detector files and proposal stores record, rebuilt only into the
project's own proposer classes.

A spec is ``{"kind": <one of KINDS>, "params": {plain constructor arguments}}``; a union adds
``"sources": [spec, ...]``; a MultiBox proposer adds ``"network"``, the inference part of its
checkpoint (``model_kwargs`` and ``model_state`` with the priors; never a path), so that a detector
file alone is enough on another machine. Nothing in a spec names code: the kind picks one of three
classes, every parameter must be one the class's constructor takes and a plain value (None, bool, int,
float, str or lists of them), and anything else is refused with a ``ValueError`` naming the source file.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path
from typing import Any, Mapping

from proposals.base import Proposer

__all__ = ["KINDS", "proposer_spec", "build_proposer", "spec_digest", "spec_name", "spec_from_target_config", "embed_networks",
           "check_spec"]

KINDS = ("selective_search", "multibox", "union")
_TARGETS = {  # the Hydra ``_target_`` names of conf/proposals/*.yaml -> kinds
    "proposals.selective_search.SelectiveSearch": "selective_search",
    "proposals.SelectiveSearch": "selective_search",
    "proposals.multibox.MultiBoxProposer": "multibox",
    "proposals.multibox.proposer.MultiBoxProposer": "multibox",
    "proposals.merge.UnionProposer": "union",
    "proposals.UnionProposer": "union",
}
_NOT_PARAMS = {"multibox": {"checkpoint", "onnx_cache"}, "union": {"sources"}, "selective_search": set()}
_NETWORK_KEYS = ("model_kwargs", "model_state")
# parameters bounded above by detect.limits.LIMITS (name -> (lowest value, whether it is excluded)): a file
# asking for more is refused before the proposer is built
_BOUNDED = {"superpixel_scale": (0.0, True), "resize_width": (0.0, True), "max_side": (0.0, True),
            "sigma": (0.0, False), "ks": (0.0, True), "top_k": (0.0, True), "batch_size": (0.0, True)}
_NETWORK_BOUNDED = ("num_priors", "input_size", "grid")


def _classes() -> dict[str, type]:
    from proposals.merge import UnionProposer
    from proposals.multibox.proposer import MultiBoxProposer
    from proposals.selective_search import SelectiveSearch

    return {"selective_search": SelectiveSearch, "multibox": MultiBoxProposer, "union": UnionProposer}


def _allowed_params(kind: str) -> set[str]:
    params = inspect.signature(_classes()[kind].__init__).parameters
    return {n for n in params if n != "self"} - _NOT_PARAMS[kind]


def _check_plain(value: Any, where: str) -> Any:
    """``value`` when it is None, bool, int, float, str or a list/tuple of those (as a list); else ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, where) for v in value]
    raise ValueError(f"{where}: {type(value).__name__} is not a plain value")


def proposer_spec(proposer: Proposer) -> dict:
    """The spec of one of the project's proposers (see the module docstring); MultiBox networks embedded."""
    kind = getattr(proposer, "kind", None)
    if kind not in KINDS or not hasattr(proposer, "spec_params"):
        raise ValueError(f"{type(proposer).__name__} is not one of the project's proposers ({', '.join(KINDS)})")
    spec: dict = {"kind": kind, "params": {k: _check_plain(v, f"{kind}.{k}") for k, v in proposer.spec_params().items()}}
    if kind == "union":
        spec["sources"] = [proposer_spec(s) for s in proposer.sources]
    if kind == "multibox":
        spec["network"] = proposer.network_entry()
    return spec



def spec_from_target_config(config: Mapping, source: str = "config") -> dict:
    """A spec from a Hydra ``_target_`` config of one of our proposers (conf/proposals/*.yaml), without
    building anything: for detector files written before specs (format v1). MultiBox entries keep
    their ``checkpoint`` path under ``"checkpoint"`` (the caller decides whether to load it)."""
    if not isinstance(config, Mapping) or config.get("_target_") not in _TARGETS:
        target = config.get("_target_") if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"{source}: proposer {target!r} is not one of the project's proposers; refused")
    kind = _TARGETS[config["_target_"]]
    rest = {k: v for k, v in config.items() if k != "_target_"}
    spec: dict = {"kind": kind}
    if kind == "union":
        spec["sources"] = [spec_from_target_config(s, source) for s in rest.pop("sources", [])]
    if kind == "multibox":
        spec["checkpoint"] = rest.pop("checkpoint", None)
    spec["params"] = rest
    return spec


def embed_networks(spec: Mapping, source: str = "spec") -> dict:
    """A copy of ``spec`` whose MultiBox ``checkpoint`` paths are replaced by the networks they hold
    (inference part only), so that the spec no longer depends on any file."""
    from proposals.multibox.proposer import TRAINING_STATE, load_multibox

    out = dict(spec)
    if "sources" in out:
        out["sources"] = [embed_networks(s, source) for s in out["sources"]]
    if out.get("kind") == "multibox" and out.get("checkpoint") is not None:
        _, ckpt = load_multibox(out.pop("checkpoint"))
        out["network"] = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
    check_spec(out, source)
    return out


def check_spec(spec: Any, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` unless ``spec`` is plainly one of our proposers (recursively)."""
    _check_spec(spec, source)
    for s in spec.get("sources", []) if isinstance(spec.get("sources"), list) else []:
        check_spec(s, source)


def _check_spec(spec: Any, source: str) -> None:
    if not isinstance(spec, Mapping) or spec.get("kind") not in KINDS:
        kind = spec.get("kind") if isinstance(spec, Mapping) else type(spec).__name__
        raise ValueError(f"{source}: proposer kind {kind!r} is not one of {', '.join(KINDS)}; refused")
    kind = spec["kind"]
    extra = set(spec) - {"kind", "params", "sources", "network", "checkpoint"}
    if extra:
        raise ValueError(f"{source}: unexpected entries {sorted(extra)} in the {kind} proposer spec")
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise ValueError(f"{source}: {kind} proposer parameters are not a mapping")
    unknown = set(params) - _allowed_params(kind)
    if unknown:
        raise ValueError(f"{source}: {kind} proposer has no parameter(s) {sorted(unknown)}; refused")
    for k, v in params.items():
        _check_plain(v, f"{source}: {kind} proposer parameter {k!r}")
        _check_numbers(k, v, f"{source}: {kind} proposer parameter")


def _check_numbers(name: str, value: Any, source: str) -> None:
    """NaN and infinity are refused in every parameter (lists included); those in ``_BOUNDED`` must lie
    within their bounds (:data:`detect.limits.LIMITS`)."""
    from detect.limits import check_bound

    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{source} {name}={v!r} is not a finite number")
        if name in _BOUNDED and v is not None:
            check_bound(v, name, source, *_BOUNDED[name])


def _check_network(network: Mapping, source: str) -> None:
    """Bounds of an embedded MultiBox network's sizes (and its backbone's width) and finite weights,
    checked before anything is built."""
    from detect.limits import check_bound, check_finite_state

    kwargs, state = network["model_kwargs"], network["model_state"]
    if not isinstance(kwargs, Mapping) or not isinstance(state, Mapping):
        raise ValueError(f"{source}: the MultiBox network's model_kwargs and model_state must be mappings")
    for name in _NETWORK_BOUNDED:
        check_bound(kwargs.get(name), name, f"{source}: MultiBox model_kwargs")
    backbone = kwargs.get("backbone_kwargs")
    if isinstance(backbone, Mapping):
        for name in ("width", "num_classes"):
            check_bound(backbone.get(name), name, f"{source}: MultiBox backbone_kwargs")
    check_finite_state(state, f"{source}: MultiBox network")


def build_proposer(spec: Mapping, source: str = "spec", onnx_cache: str | Path | None = None) -> Proposer:
    """Rebuild a proposer from its spec, refusing anything that is not plainly one of ours.

    source: names the file in errors; onnx_cache: folder for the ONNX exports of embedded MultiBox
    networks (None: MultiBox runs in torch). A MultiBox entry must embed its network: a spec that
    names a checkpoint file instead is refused (a loaded file may not point at other files).
    """
    _check_spec(spec, source)
    kind, params = spec["kind"], dict(spec.get("params", {}))
    cls = _classes()[kind]
    args: list = []
    if kind == "union":
        sources = spec.get("sources")
        if not isinstance(sources, list) or not sources:
            raise ValueError(f"{source}: a union proposer spec needs a list of sources")
        args = [[build_proposer(s, source, onnx_cache) for s in sources]]
    elif kind == "multibox":
        network = spec.get("network")
        if not isinstance(network, Mapping) or any(k not in network for k in _NETWORK_KEYS):
            raise ValueError(f"{source}: the MultiBox proposer's network (model_kwargs, model_state) is not "
                             "embedded; rebuild the detector with tools/train_region.py step=bundle")
        _check_network(network, source)
        args = [network]
        params["onnx_cache"] = None if onnx_cache is None else Path(onnx_cache)
    try:
        return cls(*args, **params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {kind} proposer refused ({e})") from e


def spec_name(spec: Mapping) -> str:
    """The ``name`` of the proposer ``spec`` describes (its proposal stores' file-name part), by the
    class's own rule and without building it (no MultiBox network is loaded)."""
    kind, params = spec["kind"], dict(spec.get("params") or {})
    cls = _classes()[kind]
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    value = lambda key: params.get(key, defaults.get(key))  # noqa: E731
    if kind == "union":
        return cls.name_for([spec_name(s) for s in spec.get("sources", [])], value("caps"), value("name"))
    if kind == "selective_search":
        return cls.name_for(value("mode"), value("superpixel_scale"), value("name"))
    return cls.name


def spec_digest(spec: Mapping) -> str:
    """sha256 of a spec, embedded networks counted by their weights: what a proposal store was made with."""
    from detect.io import state_digest

    def plain(s: Mapping) -> dict:
        out = {k: v for k, v in s.items() if k not in ("network", "sources")}
        if "sources" in s:
            out["sources"] = [plain(x) for x in s["sources"]]
        if "network" in s:
            out["network"] = {"model_kwargs": s["network"]["model_kwargs"],
                              "weights": state_digest(s["network"]["model_state"])}
        return out

    return hashlib.sha256(json.dumps(plain(spec), sort_keys=True, default=str).encode()).hexdigest()
