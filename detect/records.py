"""Records of outputs: what they were made from, which files are the tool's own, whether writing finished.

An :class:`OutputRecord` is one JSON file, written atomically beside (or above) a tool's outputs:
``{"params": <what they were made from>, "files": [<paths relative to the root>], "complete": <bool>,
"sha256": {<path>: <hex>}, ...<entries for readers>}``. A tool calls ``begin`` before it replaces any
output (the record claims the files and is not complete), writes the outputs atomically, and calls
``finish`` last. So a killed run is never taken for finished; ``up_to_date`` holds only for a complete
record of the same params whose files still hold the recorded bytes (changed inputs or outputs: computed
again); a tool replaces or deletes only the files its record lists, never a path outside the root.

Used for the detections' run record, a parts folder's ``owner.json`` (:mod:`detect.runs`), the demo's
stage stamps (:mod:`detect.stages`) and the generators' ``manifest.json`` (not hashed: thousands of images).
:class:`OwnedFolder` is the same ownership for single files a tool writes into a folder of the user's.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from detect.io import OutputConflict, atomic_write_json, file_sha256

__all__ = ["OutputRecord", "OwnedFolder", "is_inside"]

log = logging.getLogger(__name__)


def is_inside(rel: str) -> bool:
    """A plain relative POSIX path that stays inside its root (no '..', no empty part, hence no absolute path)."""
    return "\\" not in rel and all(p not in ("", ".", "..") for p in rel.split("/"))


class OutputRecord:
    """The record at ``path`` of the outputs under ``root`` (default: the record's folder).

    files: the outputs' paths relative to ``root`` when they are known in advance (the default of the
    methods' ``files``); ``params``: any JSON value, compared by equality."""

    def __init__(self, path: str | Path, files: Sequence[str] | None = None, root: str | Path | None = None):
        self.path = Path(path)
        self.root = self.path.parent if root is None else Path(root)
        self.files = None if files is None else self._files(files)

    def read(self) -> dict:
        """The record; ``{}`` when it is missing, unreadable, or names a file outside the root."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, list) or "params" not in record or not all(isinstance(f, str) and is_inside(f)
                                                                            for f in files):
            return {}
        return record

    def owned(self) -> set[str]:
        """The files the record lists (complete or not): the tool's own to replace or delete."""
        return set(self.read().get("files", ()))

    def begin(self, params: Any, files: Sequence[str] | None = None) -> None:
        """Claim ``files`` for a run with ``params`` that is about to write them (never up to date until finished)."""
        atomic_write_json(self.path, {"params": params, "files": self._files(files), "complete": False})

    def finish(self, params: Any, info: dict | None = None, files: Sequence[str] | None = None,
               verify: bool = True) -> None:
        """Record ``files`` as the complete outputs of ``params`` (with their sha256 when ``verify``);
        ``info``: more entries for readers of the record."""
        files = self._files(files)
        record = {**(info or {}), "params": params, "files": files, "complete": True}
        if verify:
            record["sha256"] = {f: file_sha256(self.root / f) for f in files}
        atomic_write_json(self.path, record)

    def up_to_date(self, params: Any, verify: bool = True) -> bool:
        """True when a complete run with ``params`` wrote the outputs (the ``files`` given, when given) and,
        with ``verify``, every one still holds the bytes it recorded."""
        record = self.read()
        if not record.get("complete") or record["params"] != params:
            return False
        if self.files is not None and sorted(record["files"]) != sorted(self.files):
            return False
        return not verify or all(self.vouches_for(f, record) for f in record["files"])

    def vouches_for(self, file: str, record: dict | None = None) -> bool:
        """True when the record (``record``: as :meth:`read` gives it) is complete and ``file`` (relative to
        the root) still holds the bytes it recorded for it."""
        record = self.read() if record is None else record
        recorded = record.get("sha256") if record.get("complete") else None
        digest = recorded.get(file) if isinstance(recorded, dict) else None
        try:
            if digest is not None and file_sha256(self.root / file) == digest:
                return True
        except OSError:
            pass
        log.info("%s: %s is missing or changed since it was recorded", self.path, self.root / file)
        return False

    def _files(self, files: Sequence[str] | None) -> list[str]:
        files = list(files if files is not None else self.files or ())
        bad = [f for f in files if not is_inside(f)]
        if bad:
            raise ValueError(f"{self.path}: recorded files must stay inside {self.root}, got {bad[0]!r}")
        return files


class OwnedFolder:
    """A folder that a tool writes into, and the record of what it wrote there (``.<tool>-outputs``,
    one file name per line, appended). :meth:`claim` lets the tool write a name only when no such file
    exists yet or the tool wrote it before: a file of the user's (or of another tool) is never
    overwritten (:class:`OutputConflict`)."""

    def __init__(self, folder: str | Path, tool: str):
        self.folder = Path(folder)
        self.record = self.folder / f".{tool}-outputs"
        self.tool = tool
        self.owned = {ln for ln in self.record.read_text(encoding="utf-8").splitlines() if ln} \
            if self.record.is_file() else set()

    def claim(self, name: str) -> Path:
        """The path of ``name`` in the folder, now recorded as this tool's; refused when it is someone else's file."""
        if not name or "/" in name or name.startswith("."):
            raise OutputConflict(f"{name!r}: not a plain file name for {self.folder}")
        path = self.folder / name
        if name not in self.owned:
            if path.exists() or path.is_symlink():
                raise OutputConflict(f"{path}: exists and was not written by {self.tool}; not overwritten "
                                     "(choose another out_dir or move the file)")
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.record, "a", encoding="utf-8") as f:
                f.write(name + "\n")
            self.owned.add(name)
        return path
