"""Resumable, sharded runs over a dataset: the one mechanism behind tools/propose.py and
tools/detect_dataset.py.

A run computes something for ``n`` items (images). Rank ``r`` of ``world_size`` takes the items
``r::world_size`` in chunks of ``chunk_size``; each chunk's result is a small ``.npz`` written atomically
into ``<output folder>/.<output stem>.parts-<fingerprint>/w<W>_r<r>_c<k>.npz``. The fingerprint names
everything the result depends on (inputs, image list, model weights, settings), so a run started
again with the same inputs skips the chunks that exist, and one with other inputs writes another
folder: old and new results are never mixed. A second process working on the same rank of the same
output is stopped by a lock. Rank 0 merges once every rank's chunks exist and removes the folder.

Ownership and clean-up: the folder's ``owner.json`` (:mod:`detect.records`) names its output. A run deletes
only the temporaries of its own killed chunk writes (:meth:`ChunkedRun.begin`) and, after a merge, the
abandoned folders of its output (:meth:`ChunkedRun.remove_abandoned`). Images enter a fingerprint through
:func:`image_list_digest`.
"""
from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from detect.io import (OutputLocked, atomic_open, digest, exclusive_lock, file_sha256, remove_stale_temps,
                       stat_signatures, temp_target)
from detect.records import OutputRecord

__all__ = ["ChunkedRun", "detections_record", "write_npz", "image_list_digest", "records_digest", "IMAGE_FINGERPRINTS"]

log = logging.getLogger(__name__)

IMAGE_FINGERPRINTS = ("stat", "sha256")  # how image_list_digest tells an image's content (conf: image_fingerprint)
_CHUNK = re.compile(r"w\d+_r\d+_c\d{6}\.npz")
_OWNER = "owner.json"


def image_list_digest(paths: Sequence[str | Path], keys: Sequence, content: str = "stat") -> str:
    """Hex sha256 of an image list as a run's input: each image's key (id, index: JSON-able), its path
    and its content, told by ``content``: ``"stat"`` (cheap: :func:`detect.io.stat_signatures`) or
    ``"sha256"`` (the bytes themselves: reads every image, slow on a large split; immune to copies).
    A missing or unreadable file counts as ``-1`` / ``"missing"`` (its error is the run's to report)."""
    if content not in IMAGE_FINGERPRINTS:
        raise ValueError(f"image_fingerprint={content!r}: expected one of {', '.join(IMAGE_FINGERPRINTS)}")
    if len(paths) != len(keys):
        raise ValueError(f"{len(paths)} image paths but {len(keys)} keys")
    return digest(["image-list-v2", content, list(keys), [str(p) for p in paths],
                   stat_signatures(paths) if content == "stat" else [_content_sha256(p) for p in paths]])


def records_digest(records: Sequence, content: str = "stat") -> str:
    """Hex sha256 of annotated images as a run's input: each record's id, path, annotated size (the frame
    its image is read in), boxes, labels and ignore flags, and its image's content (:func:`image_list_digest`)."""
    records = list(records)
    return digest([[[r.image_id, str(r.path), int(r.width), int(r.height), r.boxes, r.labels, r.ignore]
                    for r in records],
                   image_list_digest([r.path for r in records], [r.image_id for r in records], content)])


def _content_sha256(path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return "missing"


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` atomically and reproducibly (sorted members, fixed zip timestamps)."""
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), zipfile.ZIP_DEFLATED)


class ChunkedRun:
    """The partial results of one run (see the module docstring): names, presence, reading, writing.

    output: the run's final output file (the parts folder lives beside it); fingerprint: what the
    result depends on; n: number of items; chunk_size: items per partial file (a killed run redoes at
    most one chunk per rank); world_size: ranks sharing the items."""

    def __init__(self, output: str | Path, fingerprint: str, n: int, chunk_size: int, world_size: int = 1):
        if chunk_size < 1 or world_size < 1:
            raise ValueError(f"chunk_size and world_size must be >= 1 (got {chunk_size}, {world_size})")
        self.output = Path(output)
        self.fingerprint = str(fingerprint)
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

    def begin(self, rank: int) -> None:
        """Start (or resume) ``rank``'s part, holding :meth:`lock`: remove the temporary files that killed
        writes of this rank's chunks left in the folder (no other process can be writing them now)."""
        if self.dir.is_dir() and not self.dir.is_symlink():
            remove_stale_temps(self.file(rank, 0), rf"w{self.world_size}_r{rank}_c\d{{6}}\.npz")

    def write(self, rank: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk ``chunk`` of ``rank`` (its item indices are stored with it, as ``indices``), the
        folder's ``owner.json`` (what output and inputs it belongs to) first."""
        if not (self.dir / _OWNER).is_file():
            OutputRecord(self.dir / _OWNER).begin({"output": self.output.name, "fingerprint": self.fingerprint,
                                                   "n": self.n, "chunk_size": self.chunk_size,
                                                   "world_size": self.world_size})
        write_npz(self.file(rank, chunk), {**arrays, "indices": self.indices(rank)[chunk]})

    def all_present(self) -> bool:
        return all(self.file(r, c).is_file() for r in range(self.world_size) for c in range(len(self.indices(r))))

    def read(self, rank: int, chunk: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The members ``names`` (default all) of chunk ``chunk`` of ``rank``; ``FileNotFoundError`` /
        ``ValueError`` naming the file when it is missing, unreadable or holds other items than expected."""
        path = self.file(rank, chunk)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if names is None or k in names or k == "indices"}
        except Exception as e:  # truncated zip, not an npz, object arrays refused
            raise ValueError(f"{path}: not a readable partial-result file ({type(e).__name__}: {e})") from e
        if not np.array_equal(arrays.get("indices"), self.indices(rank)[chunk]):
            raise ValueError(f"{path}: holds other items than expected; delete {self.dir}")
        return arrays

    def chunks(self, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every chunk of every rank, rank by rank."""
        for r in range(self.world_size):
            for c in range(len(self.indices(r))):
                yield self.read(r, c, names)

    def remove(self) -> None:
        """Delete this run's partial files after a merge (:func:`_remove_parts_folder`)."""
        _remove_parts_folder(self.dir, None)

    def remove_abandoned(self, holding: int | None = None) -> list[Path]:
        """After a successful merge: delete the parts folders that earlier runs of this output with other
        inputs left (their ``owner.json`` names this output; nothing but chunk files inside), unless a
        process holds a rank lock of this output (``holding``: the rank whose lock this process holds).
        Returns the folders removed."""
        pattern = re.compile(rf"\.{re.escape(self.output.stem)}\.parts-[0-9a-f]{{6,64}}")
        folders = [self.output.parent / e.name for e in os.scandir(self.output.parent)
                   if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False) and e.name != self.dir.name]
        if not folders or self._lock_in_use(holding):
            return []
        return [d for d in folders if _remove_parts_folder(d, self.output.name)]

    def _lock_in_use(self, holding: int | None) -> bool:
        """Whether another process holds a rank lock of this output (a run of other inputs may be writing)."""
        name = re.compile(rf"\.{re.escape(self.output.name)}\.rank(\d+)\.lock")
        for entry in os.scandir(self.output.parent):
            m = name.fullmatch(entry.name)
            if m is None or int(m[1]) == holding:
                continue
            try:
                with self.lock(int(m[1])):
                    pass
            except OutputLocked:
                log.info("%s: rank %s is being written by another process; old partial results kept", self.output,
                         m[1])
                return True
        return False


def _remove_parts_folder(folder: Path, owner: str | None) -> bool:
    """Delete a parts folder's chunk files, their temporaries and ``owner.json``, then the folder when that
    leaves it empty. ``owner``: the output name its ``owner.json`` must give (None: the caller's own
    folder, just merged). A folder holding anything else (a file of the user's, a link, a sub-folder)
    is left whole, with a warning. Returns whether the folder is gone."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if owner is not None:
        params = OutputRecord(folder / _OWNER).read().get("params")
        if not isinstance(params, dict) or params.get("output") != owner:
            log.info("%s: no owner record of this output; left in place", folder)
            return False
    entries = list(os.scandir(folder))
    ours = lambda name: _CHUNK.fullmatch(name) or name == _OWNER  # noqa: E731
    foreign = [e.name for e in entries if not (e.is_file(follow_symlinks=False)
                                               and (ours(e.name) or ours(temp_target(e.name) or "")))]
    if foreign:
        log.warning("%s: holds files that are not partial results (%s); left in place", folder, ", ".join(foreign[:3]))
        return False
    for e in entries:
        if e.name != _OWNER:
            (folder / e.name).unlink(missing_ok=True)
    (folder / _OWNER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something appeared meanwhile: left
        return False
    return True


def detections_record(output: str | Path) -> OutputRecord:
    """The run record of tools/detect_dataset.py's ``output`` (an ILSVRC submission ``.txt``, with its COCO
    results twin ``.json``): ``<output>.run.json`` beside it."""
    output = Path(output)
    return OutputRecord(output.with_name(f"{output.name}.run.json"), [output.name, output.with_suffix(".json").name])
