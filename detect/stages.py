"""Running a chain of tools as stages that a re-run can skip only when their outputs are intact.

Each stage is one command (``python tools/<tool>.py <overrides>``). After a stage succeeds, a stamp file
records the files it created or changed under the work folder (path, size, sha256) and the digest of
the stamp before it. A re-run skips a stage only when its stamp exists, was made with the same command
and after the same upstream stamps, and every recorded output still has its recorded hash; otherwise
the stage runs again (the tools themselves resume from their own checkpoints), and so does every stage
after it. An interrupted stage leaves no stamp.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from detect.io import atomic_write_json, file_sha256

log = logging.getLogger(__name__)

__all__ = ["Stage", "run_stages", "StageError", "tree_digest"]


class StageError(RuntimeError):
    pass


@dataclass
class Stage:
    """``name``: unique label; ``tool``: script under ``tools/`` (without ``.py``); ``args``: its arguments."""

    name: str
    tool: str
    args: list[str] = field(default_factory=list)

    def command(self, python: str, tools_dir: Path) -> list[str]:
        return [python, str(tools_dir / f"{self.tool}.py"), *self.args]



def _snapshot(root: Path, exclude: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``root`` outside ``exclude``."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not any((d / n) == e for e in exclude)]
        for n in filenames:
            p = d / n
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def tree_digest(folder: str | Path, pattern: str = "*.yaml") -> str:
    """sha256 over the relative paths and contents of the files matching ``pattern`` under ``folder``."""
    h = hashlib.sha256()
    folder = Path(folder)
    for p in sorted(folder.rglob(pattern)):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _stamp_valid(stamp_path: Path, command: list[str], upstream: str, root: Path) -> bool:
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("command") != command[1:] or stamp.get("upstream") != upstream:
        return False
    for rel, (size, digest) in stamp.get("outputs", {}).items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != size or file_sha256(p) != digest:
            log.warning("stage %s: output %s changed or missing; running the stage again", stamp["name"], p)
            return False
    return True


def run_stages(stages: list[Stage], work_dir: str | Path, tools_dir: str | Path, python: str | None = None,
               env: dict | None = None, stop_after: str | None = None, inputs_digest: str = "") -> dict[str, float]:
    """Run ``stages`` in order, skipping those whose stamp is still valid. Returns seconds per stage run.

    ``inputs_digest`` (e.g. :func:`tree_digest` of the config folder) is chained into every stamp, so a
    changed configuration runs every stage again (each tool then resumes or skips its own finished work).
    Stamps live in ``<work_dir>/stages/``; logs (``<work_dir>/logs``) are not outputs. A failing stage
    raises :class:`StageError` naming it and its exit code (the stages before it stay stamped).
    """
    root = Path(work_dir).resolve()
    stamps = root / "stages"
    stamps.mkdir(parents=True, exist_ok=True)
    exclude = (stamps, root / "logs")
    python = python or sys.executable
    upstream = inputs_digest
    timings: dict[str, float] = {}
    for stage in stages:
        command = stage.command(python, Path(tools_dir))
        stamp_path = stamps / f"{stage.name}.json"
        if _stamp_valid(stamp_path, command, upstream, root):
            log.info("[%s] done earlier, outputs verified: skipped", stage.name)
        else:
            stamp_path.unlink(missing_ok=True)
            log.info("[%s] $ %s", stage.name, " ".join(command[1:]))
            before = _snapshot(root, exclude)
            start = time.perf_counter()
            result = subprocess.run(command, env={**os.environ, **(env or {})})
            timings[stage.name] = time.perf_counter() - start
            if result.returncode != 0:
                raise StageError(f"stage {stage.name} failed with exit code {result.returncode}: {' '.join(command[1:])}")
            after = _snapshot(root, exclude)
            changed = {rel for rel, meta in after.items() if before.get(rel) != meta}
            outputs = {rel: (after[rel][0], file_sha256(root / rel)) for rel in sorted(changed)}
            atomic_write_json(stamp_path, {"name": stage.name, "command": command[1:], "upstream": upstream,
                                           "seconds": timings[stage.name], "outputs": outputs})
            log.info("[%s] finished in %.1f s", stage.name, timings[stage.name])
        upstream = file_sha256(stamp_path)
        if stop_after == stage.name:
            break
    return timings
