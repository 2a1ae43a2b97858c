"""Ownership of generated data folders: a generator only ever removes files its own manifest lists.

Every generator of the project (the synthetic world, ground-truth crops) writes into a folder that it
owns through ``root/manifest.json``, a :class:`detect.records.OutputRecord` (``{"params", "files",
"complete"}``; the files are not hashed: thousands of images). A generation calls
1. :func:`prepare_root` with its parameters and the list of files it will write. When the manifest
   records the same parameters and is complete, nothing is to be done (True). Otherwise the files of an
   earlier generation (those its manifest lists, complete or interrupted) are removed, the new manifest
   is written with ``complete: false`` and the generation runs;
2. :func:`finish_root` at the end, which marks the manifest complete.

A folder holding anything the manifest does not list (a real dataset given by mistake as a data root,
files added by hand, a manifest this generator cannot read) is refused with :class:`ForeignDataError`
before anything is touched, naming the folder, one such file and what the folder looks like.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from detect.io import remove_stale_temps, temp_target
from detect.records import OutputRecord

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "ForeignDataError", "prepare_root", "finish_root", "guess_dataset"]

MANIFEST = "manifest.json"


class ForeignDataError(ValueError):
    """The target folder holds files this generator did not write; nothing was removed or written."""


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


def _foreign_file(root: Path, owned: set[str]) -> str | None:
    """The first file under ``root`` (relative, POSIX) that is neither ``owned`` nor the manifest (nor the
    temporary of an interrupted write of one)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in dirnames:  # a linked folder leads outside root: never ours to clear
            if os.path.islink(os.path.join(dirpath, name)):
                return (rel_dir / name).as_posix()
        for name in sorted(filenames):
            target = (rel_dir / (temp_target(name) or name)).as_posix()  # a killed write's temporary: its target's
            if target not in owned and target != MANIFEST:
                return (rel_dir / name).as_posix()
    return None


def prepare_root(root: str | Path, params: dict, files: list[str], what: str) -> bool:
    """Make ``root`` ready for a generation with ``params`` that writes ``files`` (relative POSIX paths;
    module docstring); True when it is there already. what: names the data in messages."""
    root = Path(root)
    manifest = OutputRecord(root / MANIFEST, files)  # (ValueError for a file name outside root)
    if manifest.up_to_date(params, verify=False):
        return True
    owned = manifest.owned()
    if root.exists():
        if not root.is_dir():
            raise ForeignDataError(f"{root}: not a folder; the {what} needs a new or empty folder")
        foreign = _foreign_file(root, owned)
        if foreign is not None:
            if manifest.read():
                looks = f"an earlier {what} with files added by hand; move them out"
            elif manifest.path.is_file():  # e.g. written before manifests listed their files
                looks = (f"a {what} whose {MANIFEST} does not list the files it wrote (an older version's): "
                         "delete the folder yourself to generate it again")
            else:
                looks = f"{guess_dataset(root)} (this folder is where the {what} is written)"
            raise ForeignDataError(
                f"{root}: refusing to write the {what} here: the folder holds files this generator did "
                f"not write (e.g. {foreign}), and nothing was removed. It looks like {looks}. Generated data needs "
                f"a new or empty folder, or one this generator wrote ({MANIFEST} lists its files).")
    for rel in sorted(owned) + [MANIFEST]:
        path = root / rel
        if rel != MANIFEST and (path.is_file() or path.is_symlink()):
            path.unlink()
        remove_stale_temps(path)
    if owned:
        log.info("%s: removed %d files of an earlier generation", root, len(owned))
    parents = sorted({(root / rel).parent for rel in owned} - {root}, key=lambda p: len(p.parts), reverse=True)
    for folder in parents:  # prune the folders that the removal emptied, deepest first, never root
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    manifest.begin(params)
    return False


def finish_root(root: str | Path, params: dict, files: list[str]) -> None:
    """Mark the generation of ``files`` with ``params`` in ``root`` complete."""
    OutputRecord(Path(root) / MANIFEST, files).finish(params, verify=False)
