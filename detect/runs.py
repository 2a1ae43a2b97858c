"""Resumable, sharded runs over a dataset: the one mechanism behind tools/propose.py and
tools/detect_dataset.py.

A run computes something for ``n`` items (images). Rank ``r`` of ``world_size`` takes the items
``r::world_size`` in chunks of ``chunk_size``; each chunk's result is a small ``.npz`` written atomically
into ``<output folder>/.<output stem>.parts-<fingerprint>/w<W>_r<r>_c<k>.npz``. The fingerprint names
everything the result depends on (inputs, image list, model weights, settings), so a run started
again with the same inputs skips the chunks that exist, and one with other inputs writes another
folder: old and new results are never mixed. A second process working on the same rank of the same
output is stopped by a lock. Rank 0 merges once every rank's chunks exist and removes the folder.
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from detect.io import atomic_open, exclusive_lock

__all__ = ["ChunkedRun", "write_npz", "read_npz", "run_fingerprint_of"]


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` atomically and reproducibly (sorted members, fixed zip timestamps)."""
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def read_npz(path: Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The members ``names`` (default all) of an ``.npz``; ``FileNotFoundError`` / ``ValueError`` naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (z.files if names is None else [n for n in names if n in z.files])}
    except Exception as e:  # truncated zip, not an npz, object arrays refused
        raise ValueError(f"{path}: not a readable partial-result file ({type(e).__name__}: {e})") from e


def run_fingerprint_of(*parts) -> str:
    """A short sha256 of JSON-able parts (what a run's result depends on)."""
    import hashlib

    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()[:12]


class ChunkedRun:
    """The partial results of one run (see the module docstring): names, presence, reading, writing.

    output: the run's final output file (the parts folder lives beside it); fingerprint: what the
    result depends on; n: number of items; chunk_size: items per partial file (a killed run redoes at
    most one chunk per rank); world_size: ranks sharing the items.
    """

    def __init__(self, output: str | Path, fingerprint: str, n: int, chunk_size: int, world_size: int = 1):
        if chunk_size < 1 or world_size < 1:
            raise ValueError(f"chunk_size and world_size must be >= 1 (got {chunk_size}, {world_size})")
        self.output = Path(output)
        self.dir = self.output.parent / f".{self.output.stem}.parts-{fingerprint}"
        self.n, self.chunk_size, self.world_size = int(n), int(chunk_size), int(world_size)

    def indices(self, rank: int) -> list[np.ndarray]:
        """Item indices of each chunk of ``rank`` (every ``world_size``-th item)."""
        mine = np.arange(rank, self.n, self.world_size, dtype=np.int64)
        return [mine[i:i + self.chunk_size] for i in range(0, len(mine), self.chunk_size)]

    def file(self, rank: int, chunk: int) -> Path:
        return self.dir / f"w{self.world_size}_r{rank}_c{chunk:06d}.npz"

    def pending(self, rank: int) -> list[int]:
        """The chunks of ``rank`` not written yet."""
        return [c for c in range(len(self.indices(rank))) if not self.file(rank, c).is_file()]

    def lock(self, rank: int) -> AbstractContextManager:
        """Held while a process works on ``rank``'s part of the output (whatever its inputs): a second
        one fails at once (``OutputLocked``) instead of computing the same output beside it."""
        return exclusive_lock(self.output.with_name(f"{self.output.name}.rank{rank}"))

    def write(self, rank: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk ``chunk`` of ``rank`` (its item indices are stored with it, as ``indices``)."""
        write_npz(self.file(rank, chunk), {**arrays, "indices": self.indices(rank)[chunk]})

    def all_present(self) -> bool:
        return all(self.file(r, c).is_file() for r in range(self.world_size) for c in range(len(self.indices(r))))

    def read(self, rank: int, chunk: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Chunk ``chunk`` of ``rank``; a file holding other items than expected is a ``ValueError``."""
        z = read_npz(self.file(rank, chunk), None if names is None else [*names, "indices"])
        if not np.array_equal(z.get("indices"), self.indices(rank)[chunk]):
            raise ValueError(f"{self.file(rank, chunk)}: holds other items than expected; delete {self.dir}")
        return z

    def chunks(self, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every chunk of every rank, rank by rank."""
        for r in range(self.world_size):
            for c in range(len(self.indices(r))):
                yield self.read(r, c, names)

    def remove(self) -> None:
        """Delete the partial files (after a merge); the folder is this run's own."""
        shutil.rmtree(self.dir, ignore_errors=True)
