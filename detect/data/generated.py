"""Ownership of generated data folders: a generator only ever removes files its own manifest lists.

Every generator of the project (the synthetic world, ground-truth crops) writes into a folder that it
owns through ``root/manifest.json``: ``{"params", "files", "complete"}``. A generation

1. calls :func:`prepare_root` with its parameters and the list of files it will write. When the
   manifest records the same parameters and is complete, nothing is to be done (True). Otherwise the
   files of an earlier generation (those its manifest lists, complete or interrupted) are removed, the
   new manifest is written with ``complete: false`` and the generation runs;
2. calls :func:`finish_root` at the end, which marks the manifest complete.

A folder holding anything the manifest does not list (a real dataset given by mistake as a data root,
files added by hand) is refused with :class:`ForeignDataError` before anything is touched, naming the
folder, one such file and what the folder looks like.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from detect.io import atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "ForeignDataError", "prepare_root", "finish_root", "read_manifest", "is_inside",
           "guess_dataset"]

MANIFEST = "manifest.json"


class ForeignDataError(ValueError):
    """The target folder holds files this generator did not write; nothing was removed or written."""


def is_inside(rel: str) -> bool:
    """A plain relative POSIX path that stays inside its root (no absolute path, no '..', no empty part)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts)


def read_manifest(root: Path, legacy_files: Callable[[dict], list[str]] | None = None) -> dict | None:
    """The manifest of an earlier generation as ``{"params", "files", "complete"}``, or None.

    ``legacy_files(data)``: for manifests of an older form that hold only the parameters, the files
    those parameters write (raise KeyError/TypeError/ValueError when ``data`` is no such manifest).
    A manifest naming any path outside ``root`` is not one a generator wrote: None.
    """
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if "params" in data and isinstance(data.get("files"), list):
        files = [f for f in data["files"] if isinstance(f, str)]
        if len(files) != len(data["files"]) or not all(is_inside(f) for f in files):
            return None
        return {"params": data["params"], "files": files, "complete": bool(data.get("complete"))}
    if legacy_files is not None:
        try:
            return {"params": data, "files": legacy_files(data), "complete": True}
        except (KeyError, TypeError, ValueError):
            return None
    return None


def guess_dataset(root: Path) -> str:
    """What a folder a generator refuses probably is, as the data group to pass instead."""
    if (root / "Data" / "DET").is_dir() or (root / "Annotations" / "DET").is_dir():
        return "an ILSVRC DET folder (2015+ layout): pass data=ilsvrc"
    if any(root.glob("ILSVRC201*_DET_*")):
        return "an ILSVRC DET folder (2013/2014 layout): pass data=ilsvrc2014"
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        return "a PASCAL VOC folder: pass data=voc"
    if any(root.glob("annotations/*.json")) or any(root.glob("*.json")):
        return "a COCO-style folder: pass data=coco"
    if (root / "train").is_dir() or (root / "val").is_dir():
        return "an ImageNet-style classification folder: pass data_cls=imagenet"
    return "not data this generator wrote"


def _is_leftover_temp(rel_dir: Path, name: str, owned: set[str]) -> bool:
    """A temporary file of an interrupted atomic write (``.<target>.<random>.tmp``, see detect.io) of
    a file the generator owns."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:].rsplit(".", 2)[0]
    rel = (rel_dir / target).as_posix()
    return rel in owned or rel == MANIFEST


def _foreign_file(root: Path, owned: set[str]) -> str | None:
    """The first file under ``root`` (relative, POSIX) that is neither ``owned`` nor the manifest."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in dirnames:  # a linked folder leads outside root: never ours to clear
            if os.path.islink(os.path.join(dirpath, name)):
                return (rel_dir / name).as_posix()
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if rel in owned or rel == MANIFEST or _is_leftover_temp(rel_dir, name, owned):
                continue
            return rel
    return None


def prepare_root(root: str | Path, params: dict, files: list[str], what: str,
                 legacy_files: Callable[[dict], list[str]] | None = None) -> bool:
    """Make ``root`` ready for a generation with ``params`` that writes ``files`` (relative POSIX
    paths); True when a complete generation with the same ``params`` is there already.

    what: names the data in messages (e.g. "synthetic detection world").
    Only files that the existing manifest lists are ever removed; a folder holding anything else is
    refused with :class:`ForeignDataError` before anything is touched.
    """
    root = Path(root)
    bad = [f for f in files if not is_inside(f)]
    if bad:
        raise ValueError(f"{root}: generated file names must stay inside the folder, got {bad[0]!r}")
    state = read_manifest(root, legacy_files)
    if state is not None and state["complete"] and state["params"] == params:
        return True
    owned = set(state["files"]) if state is not None else set()
    if root.exists():
        if not root.is_dir():
            raise ForeignDataError(f"{root}: not a folder; the {what} needs a new or empty folder")
        foreign = _foreign_file(root, owned)
        if foreign is not None:
            looks = (f"an earlier {what} with files added by hand; move them out" if state is not None
                     else f"{guess_dataset(root)} (this folder is where the {what} is written)")
            raise ForeignDataError(
                f"{root}: refusing to write the {what} here: the folder holds files this generator did "
                f"not write (e.g. {foreign}), and nothing was removed. It looks like {looks}. Generated data needs "
                f"a new or empty folder, or one this generator wrote ({MANIFEST} lists its files).")
    for rel in sorted(owned):
        path = root / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
        for temp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
            temp.unlink()
    if owned:
        log.info("%s: removed %d files of an earlier generation", root, len(owned))
    parents = sorted({(root / rel).parent for rel in owned} - {root}, key=lambda p: len(p.parts), reverse=True)
    for folder in parents:  # prune the folders that the removal emptied, deepest first, never root
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / MANIFEST, {"params": params, "files": list(files), "complete": False})
    return False


def finish_root(root: str | Path, params: dict, files: list[str]) -> None:
    """Mark the generation of ``files`` with ``params`` in ``root`` complete."""
    atomic_write_json(Path(root) / MANIFEST, {"params": params, "files": list(files), "complete": True})
