"""Atomic file output and safe checkpoint loading.

Every output of the project is written to a temporary file in the same folder and renamed over the
target, so a killed job leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch is imported inside the two functions that need it: readers and evaluation run without it
    import torch

__all__ = ["digest", "file_sha256", "stat_signatures", "exclusive_lock", "OutputLocked", "OutputConflict",
           "refuse_inputs", "atomic_open", "temp_target", "remove_stale_temps", "atomic_write_text",
           "atomic_write_json", "atomic_torch_save", "load_checkpoint", "check_finished", "UnfinishedTraining"]


def _read_umask() -> int:
    """The process umask, read without changing it where /proc tells it (else set and restored at once)."""
    try:
        return int(re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M)[1], 8)
    except (OSError, TypeError):  # no /proc, or no Umask line (TypeError: no match)
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


_UMASK = _read_umask()
log = logging.getLogger(__name__)
_TEMP = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")  # atomic_open's temporary: mkstemp's 8 characters between


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` (fsync'd), else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs follow the user's umask like open() does
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_target(name: str) -> str | None:
    """The name of the file that :func:`atomic_open`'s temporary ``name`` (``.<target>.<8 random
    characters>.tmp``) was to replace; None when ``name`` is no such temporary."""
    match = _TEMP.fullmatch(name)
    return match[1] if match else None


def remove_stale_temps(path: str | Path, targets: str | None = None) -> int:
    """Delete the temporary files that :func:`atomic_open` left beside ``path`` when its process was killed
    (plain files only: a link or folder is never one of ours); returns how many. ``targets``: a regular
    expression of the target names in ``path``'s folder instead of ``path``'s own name (e.g. every chunk
    file of one rank). Call it only while holding the lock of ``path`` (:func:`exclusive_lock`), so that
    no writer of ours is filling one now."""
    path = Path(path)
    pattern = re.compile(targets or re.escape(path.name))
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return 0
    stale = [e.name for e in entries
             if pattern.fullmatch(temp_target(e.name) or "") and e.is_file(follow_symlinks=False)]
    for name in stale:
        (path.parent / name).unlink(missing_ok=True)
    if stale:
        log.info("%s: removed %d temporary file(s) left by an interrupted write", path, len(stale))
    return len(stale)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors, containers and plain values only);
    ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or unreadable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, ...
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


class UnfinishedTraining(ValueError):
    """A trainer's checkpoint was given as a trained model, but the run that wrote it stopped early."""


def checkpoint_position(epoch: int, step: int) -> str:
    """A checkpoint's position in words (``epoch`` counts finished epochs when ``step`` is 0)."""
    return f"the end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1} step {step}"


def check_finished(state: Any, path: str | Path, epochs: int | None = None) -> None:
    """Refuse to use ``state`` (a loaded checkpoint) as a trained model when it is a trainer's checkpoint
    (it holds ``raw_state``) whose run stopped before its last epoch (killed, interrupted, a step that
    diverged): :class:`UnfinishedTraining` naming where it stopped. ``epochs``: the planned count, for
    checkpoints that do not record theirs. Weights of other origins pass unchecked."""
    if not isinstance(state, dict) or "raw_state" not in state:
        return
    planned = state.get("epochs", epochs)
    epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
    if step or (planned is not None and epoch < int(planned)):
        of = f" of {planned}" if planned is not None else ""
        raise UnfinishedTraining(
            f"{path}: a training checkpoint saved at {checkpoint_position(epoch, step)}{of}: its run did not finish, so it is not a trained "
            "model. Run the same trainer command again to finish it (it resumes there)")


def digest(value: Any, length: int | None = None) -> str:
    """Hex sha256 of plain data: the one recipe for keys and fingerprints of what an output was made from.
    value: None, bool, int, float, str, lists/tuples and dicts of them (keys sorted), numpy arrays and
    torch tensors (dtype, shape and bytes), ``bytes``; anything else by its ``str`` (a ``Path``).
    length: keep only the first ``length`` hex digits (None: all 64)."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (bytes, bytearray, memoryview)):
            return f"<bytes {hashlib.sha256(v).hexdigest()}>"
        if hasattr(v, "detach"):  # a torch tensor: its bytes as uint8, whatever its dtype (bf16 included)
            import torch

            v = v.detach().cpu().contiguous()
            data = v.reshape(-1).view(torch.uint8).numpy()
            return f"<tensor {v.dtype} {tuple(v.shape)} {hashlib.sha256(data).hexdigest()}>"
        if hasattr(v, "__array__"):
            import numpy as np

            v = np.ascontiguousarray(v)
            return f"<array {v.dtype.str} {v.shape} {hashlib.sha256(v.reshape(-1).view(np.uint8)).hexdigest()}>"
        return v

    return hashlib.sha256(json.dumps(plain(value), sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OutputLocked(RuntimeError):
    """Another process is writing the same output."""


@contextmanager
def exclusive_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock for writing ``target`` (``flock`` on ``.<name>.lock`` beside it): a
    second writer of the same output fails at once with :class:`OutputLocked` naming the output and the
    process that holds it, instead of interleaving its lines with the first one's. The lock file is left in
    place (removing it would let two processes lock different files of the same name)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f".{target.name}.lock")
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield
        return
    with open(lock_path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise OutputLocked(f"{target}: another run is writing this output ({holder}, lock {lock_path}); "
                               "wait for it to finish or write elsewhere") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class OutputConflict(ValueError):
    """An output would replace a file the tool did not write (an input, or a file of the user's)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def refuse_inputs(outputs: list[str | Path], inputs: list[str | Path], hint: str = "") -> None:
    """Raise :class:`OutputConflict` when an output path is one of the inputs (the same file)."""
    existing = [Path(p) for p in inputs if Path(p).exists()]
    for out in map(Path, outputs):
        if out.exists() and any(_same_file(out, inp) for inp in existing):
            raise OutputConflict(f"{out}: this output would overwrite an input file; {hint or 'write elsewhere'}")


def stat_signatures(paths) -> bytes:
    """Each file's ``(size, mtime_ns, ctime_ns, inode)`` as int64 bytes, ``-1`` for a missing one: the
    cheap content signature of a file list (a file rewritten in place or replaced by a rename changes at
    least one of them, the inode even within the clock's resolution; ``cp -p`` keeps the mtime but not
    the ctime)."""
    import numpy as np

    stats = np.full((len(paths), 4), -1, dtype=np.int64)
    for k, path in enumerate(paths):
        try:
            st = os.stat(path)
        except OSError:
            continue
        stats[k] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return stats.tobytes()
