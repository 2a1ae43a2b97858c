"""Running a chain of tools as stages that a re-run can skip only when their outputs are intact.

Each stage is one command (``python tools/<tool>.py <overrides>``). After a stage succeeds, its stamp (a
:class:`detect.records.OutputRecord` with the command and the digest of the stamp before it as params)
records the files it created or changed under the work folder, with their sha256. A re-run skips a stage
only when its stamp is up to date; otherwise the stage runs again (the tools themselves resume from their
own checkpoints), and so does every stage after it. An interrupted stage leaves no stamp.
"""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from detect.io import digest, file_sha256
from detect.records import OutputRecord

log = logging.getLogger(__name__)

__all__ = ["Stage", "run_stages", "StageError", "tree_digest", "cost_lines"]


class StageError(RuntimeError):
    """A stage's command failed."""


@dataclass
class Stage:
    """``name``: unique label; ``tool``: script under ``tools/`` (without ``.py``); ``args``: its arguments."""

    name: str
    tool: str
    args: list[str] = field(default_factory=list)


def _snapshot(root: Path, exclude: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``root`` outside ``exclude``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in exclude]
        for n in filenames:
            p = d / n
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def tree_digest(folder: str | Path) -> str:
    """:func:`detect.io.digest` of the relative paths and contents of the ``*.yaml`` files under ``folder``."""
    folder = Path(folder)
    return digest({p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.yaml"))})


def run_stages(stages: list[Stage], work_dir: str | Path, tools_dir: str | Path, stop_after: str | None = None,
               inputs_digest: str = "") -> dict[str, tuple[float, bool]]:
    """Run ``stages`` in order, skipping those whose stamp is still valid. Returns ``{name: (seconds, ran)}``
    of each stage reached: the seconds it took now (``ran``), or those its stamp recorded (skipped).

    ``inputs_digest`` (e.g. :func:`tree_digest` of the config folder) is chained into every stamp, so a
    changed configuration runs every stage again (each tool then resumes or skips its own finished work).
    Stamps live in ``<work_dir>/stages/``; logs (``<work_dir>/logs``) are not outputs. A failing stage
    raises :class:`StageError` naming it and its exit code (the stages before it stay stamped)."""
    root = Path(work_dir).resolve()
    stamps = root / "stages"
    stamps.mkdir(parents=True, exist_ok=True)
    exclude = (stamps, root / "logs")
    upstream = inputs_digest
    timings: dict[str, tuple[float, bool]] = {}
    for stage in stages:
        command = [sys.executable, str(Path(tools_dir) / f"{stage.tool}.py"), *stage.args]
        stamp = OutputRecord(stamps / f"{stage.name}.json", root=root)
        params = {"command": command[1:], "upstream": upstream}
        if stamp.up_to_date(params):
            log.info("[%s] done earlier, outputs verified: skipped", stage.name)
            seconds = stamp.read().get("seconds")
            timings[stage.name] = (float(seconds) if isinstance(seconds, (int, float)) else float("nan"), False)
        else:
            stamp.path.unlink(missing_ok=True)
            log.info("[%s] $ %s", stage.name, " ".join(command[1:]))
            before = _snapshot(root, exclude)
            start = time.perf_counter()
            result = subprocess.run(command)
            seconds = time.perf_counter() - start
            if result.returncode != 0:
                raise StageError(f"stage {stage.name} failed with exit code {result.returncode}: "
                                 f"{' '.join(command[1:])}")
            after = _snapshot(root, exclude)
            changed = sorted(rel for rel, meta in after.items() if before.get(rel) != meta)
            stamp.finish(params, {"name": stage.name, "seconds": seconds}, changed)
            timings[stage.name] = (seconds, True)
            log.info("[%s] finished in %.1f s", stage.name, seconds)
        upstream = file_sha256(stamp.path)
        if stop_after == stage.name:
            break
    return timings


def cost_lines(timings: dict[str, tuple[float, bool]], wall: float) -> list[str]:
    """What a chain cost, for its last lines: the wall time of this run and the seconds of each stage
    (``timings`` as :func:`run_stages` returns them; a skipped stage shows its earlier run's, marked)."""
    ran = sum(r for _, r in timings.values())
    head = f"cost: {wall / 60:.1f} min wall in this run ({ran} of {len(timings)} stages run"
    earlier = [s for s, r in timings.values() if not r and not math.isnan(s)]
    head += f"; the skipped ones took {sum(earlier) / 60:.1f} min when they ran)" if ran < len(timings) else ")"
    parts = [f"{name} {'?' if math.isnan(s) else f'{s:.0f}'} s{'' if r else ' (earlier)'}"
             for name, (s, r) in timings.items()]
    return [head, "per stage: " + ", ".join(parts)]
