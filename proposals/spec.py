"""Proposers as data: a plain spec that detector files and proposal stores record, rebuilt only into the
project's own proposer classes.

A spec is ``{"kind": <a key of PROPOSERS>, "params": {plain constructor arguments}}``; a proposer made
of others (a union) adds ``"sources": [spec, ...]``; one that runs a network (MultiBox) adds
``"network"``, the inference part of its checkpoint (``model_kwargs`` and ``model_state`` with the
priors; never a path), so that a detector file alone is enough on another machine. Nothing in a spec
names code: the kind picks one of the registered classes, every parameter must be one the class's
constructor takes and a plain value (None, bool, int, float, str or lists of them), numbers are bounded
by :data:`detect.limits.LIMITS`, and anything else is refused with a ``ValueError`` naming the source file.

Registering a proposer is one line of :data:`PROPOSERS`; the class itself declares the rest:
``spec_params()`` (its constructor arguments as plain values); ``spec_args`` (constructor arguments
that are not parameters, its input first: ``("sources",)``, ``("checkpoint", "onnx_cache")``);
``spec_input`` (``"sources"``: built from the specs of its sources, found on ``.sources``;
``"network"``: built from an embedded network, with ``network_entry()`` on a proposer and static
``load_network(checkpoint)`` and ``check_network(network, source)``; absent: neither); and
``name_for(params, source_names)`` (the store-file name from its parameters, defaults filled in) or a
constant ``name``. Parameters every proposer may take (``precision``, ``onnx_cache``) are set by name
on those whose constructor has them. Every use walks a spec the same way, sources first (:func:`_fold`).
"""
from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from detect.limits import check_bound
from proposals.base import Proposer

__all__ = ["PROPOSERS", "proposer_class", "proposer_spec", "spec_from_config", "check_spec", "build_proposer",
           "spec_name", "spec_nodes", "set_params"]

PROPOSERS = {  # kind -> the class its specs build ("module:Class", imported on first use)
    "selective_search": "proposals.selective_search:SelectiveSearch",
    "multibox": "proposals.multibox.proposer:MultiBoxProposer",
    "union": "proposals.merge:UnionProposer",
}
# name -> (lowest value, whether excluded); above, detect.limits.LIMITS: checked before the proposer is built
_BOUNDED = {"superpixel_scale": (0.0, True), "resize_width": (0.0, True), "max_side": (0.0, True),
            "sigma": (0.0, False), "ks": (0.0, True), "top_k": (0.0, True), "batch_size": (0.0, True)}


def proposer_class(kind: str) -> type:
    """The registered class of ``kind`` (a key of :data:`PROPOSERS`)."""
    module, name = PROPOSERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def _kind_of(cls: type) -> str | None:
    return next((kind for kind in PROPOSERS if proposer_class(kind) is cls), None)


def _signature(cls: type) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}


def _allowed_params(cls: type) -> set[str]:
    return set(_signature(cls)) - set(getattr(cls, "spec_args", ()))


def _fold(spec: Any, visit: Callable[[Mapping, list], Any], source: str) -> Any:
    """``visit(node, [the results of its sources])`` over ``spec`` and its sources, sources first: the
    one walk of a spec (or of a Hydra config, whose sources sit under the same key)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: a proposer spec must be a mapping, not {type(spec).__name__}")
    sources = spec.get("sources", [])
    if not isinstance(sources, list):
        raise ValueError(f"{source}: proposer sources must be a list of specs")
    return visit(spec, [_fold(s, visit, source) for s in sources])


def spec_nodes(spec: Mapping) -> list[dict]:
    """``spec`` and its sources, recursively: the dicts themselves (to be updated in place)."""
    return _fold(spec, lambda node, subs: [node] + [n for sub in subs for n in sub], "spec")


def _check_plain(value: Any, where: str) -> Any:
    """``value`` when it is None, bool, int, float, str or a list/tuple of those (as a list); else ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, where) for v in value]
    raise ValueError(f"{where}: {type(value).__name__} is not a plain value")


def proposer_spec(proposer: Proposer) -> dict:
    """The spec of one of the project's proposers (see the module docstring); networks embedded."""
    kind = _kind_of(type(proposer))
    if kind is None:
        raise ValueError(f"{type(proposer).__name__} is not one of the project's proposers ({', '.join(PROPOSERS)})")
    spec: dict = {"kind": kind, "params": {k: _check_plain(v, f"{kind}.{k}") for k, v in proposer.spec_params().items()}}
    role = getattr(proposer, "spec_input", None)
    if role == "sources":
        spec["sources"] = [proposer_spec(s) for s in proposer.sources]
    elif role == "network":
        spec["network"] = proposer.network_entry()
    return spec


def _target_class(target: Any, source: str) -> type:
    """The registered class a Hydra ``_target_`` names (only modules of the ``proposals`` package are imported)."""
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module.split(".")[0] == "proposals" else None
    except ImportError:
        cls = None
    if cls is None or _kind_of(cls) is None:
        raise ValueError(f"{source}: proposer {target!r} is not one of the project's proposers; refused")
    return cls


def spec_from_config(config: Mapping, source: str = "config", embed: bool = False) -> dict:
    """The spec of a Hydra ``_target_`` config of one of our proposers (conf/proposals/*.yaml), nothing
    built. embed: load the networks the config names by path into the spec (what a detector file keeps;
    checked), else leave them out (enough for :func:`spec_name`, without loading a checkpoint)."""
    def node(config: Mapping, sources: list) -> dict:
        cls = _target_class(config.get("_target_"), source)
        args = getattr(cls, "spec_args", ())
        spec = {"kind": _kind_of(cls), "params": {k: v for k, v in config.items() if k not in ("_target_", *args)}}
        role = getattr(cls, "spec_input", None)
        if role == "sources":
            spec["sources"] = sources
        elif role == "network" and embed:
            spec["network"] = cls.load_network(config.get(args[0]))
        return spec

    spec = _fold(config, node, source)
    if embed:
        check_spec(spec, source)
    return spec


def check_spec(spec: Any, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` unless ``spec`` is plainly one of our proposers (recursively)."""
    _fold(spec, lambda node, _: _check_node(node, source), source)


def _check_node(spec: Mapping, source: str) -> None:
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in PROPOSERS:
        raise ValueError(f"{source}: proposer kind {kind!r} is not one of {', '.join(PROPOSERS)}; refused")
    cls = proposer_class(kind)
    role = getattr(cls, "spec_input", None)
    if role == "network" and not isinstance(spec.get("network"), Mapping):
        raise ValueError(f"{source}: the {kind} proposer's network is not embedded; rebuild the detector with "
                         "tools/train_region.py step=bundle (in code: spec_from_config(..., embed=True))")
    extra = set(spec) - {"kind", "params", role}
    if extra:
        raise ValueError(f"{source}: unexpected entries {sorted(map(str, extra))} in the {kind} proposer spec")
    if role == "sources" and not spec.get("sources"):
        raise ValueError(f"{source}: a {kind} proposer spec needs a list of sources")
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise ValueError(f"{source}: {kind} proposer parameters are not a mapping")
    unknown = set(params) - _allowed_params(cls)
    if unknown:
        raise ValueError(f"{source}: {kind} proposer has no parameter(s) {sorted(map(str, unknown))}; refused")
    for k, v in params.items():
        _check_plain(v, f"{source}: {kind} proposer parameter {k!r}")
        for number in v if isinstance(v, list) else [v]:  # NaN and infinity refused everywhere, lists included
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{source}: {kind} proposer parameter {k}={number!r} is not a finite number")
            if k in _BOUNDED and number is not None:
                check_bound(number, k, f"{source}: {kind} proposer parameter", *_BOUNDED[k])
    if role == "network":
        cls.check_network(spec["network"], source)


def build_proposer(spec: Mapping, source: str = "spec", onnx_cache: str | Path | None = None) -> Proposer:
    """Rebuild a proposer from its spec, refusing anything that is not plainly one of ours (:func:`check_spec`).

    source: names the file in errors; onnx_cache: folder for the ONNX exports of embedded networks, given
    to the proposers that take one (None: they run in torch). A network must be embedded: a spec that
    names a checkpoint file instead is refused (a loaded file may not point at other files).
    """
    check_spec(spec, source)

    def build(node: Mapping, sources: list) -> Proposer:
        kind = node["kind"]
        cls = proposer_class(kind)
        params = dict(node.get("params", {}))
        if "onnx_cache" in _signature(cls):
            params["onnx_cache"] = None if onnx_cache is None else Path(onnx_cache)
        role = getattr(cls, "spec_input", None)
        args = [sources] if role == "sources" else [node["network"]] if role == "network" else []
        try:
            return cls(*args, **params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {kind} proposer refused ({e})") from e

    return _fold(spec, build, source)


def set_params(spec: Mapping, **values) -> dict:
    """A copy of ``spec`` with ``values`` set on every proposer in it whose constructor takes them (e.g.
    ``precision``); the spec must have passed :func:`check_spec`."""
    def node(s: Mapping, sources: list) -> dict:
        allowed = _allowed_params(proposer_class(s["kind"]))
        out = {**s, "params": {**dict(s.get("params") or {}), **{k: v for k, v in values.items() if k in allowed}}}
        return {**out, "sources": sources} if "sources" in s else out

    return _fold(spec, node, "spec")


def spec_name(spec: Mapping) -> str:
    """The ``name`` of the proposer ``spec`` describes (its proposal stores' file-name part), by the
    class's own rule and without building it (no network is loaded)."""
    def name(node: Mapping, source_names: list[str]) -> str:
        cls = proposer_class(node["kind"])
        if not hasattr(cls, "name_for"):
            return cls.name
        defaults = {n: p.default for n, p in _signature(cls).items() if p.default is not inspect.Parameter.empty}
        return cls.name_for({**defaults, **dict(node.get("params") or {})}, source_names)

    return _fold(spec, name, "spec")
