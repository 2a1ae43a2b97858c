"""The proposal store file: proposals of a whole dataset split, looked up by image id, memory-mapped.

File format (version 3): a ``.npz`` of uncompressed members (memory-mapped where they lie in the file;
``numpy.load(path, allow_pickle=False)`` still reads it), written in this order with fixed zip timestamps,
so that equal content gives equal bytes:

- ``format_version`` int64 scalar (3);
- ``image_ids`` str[I] and ``id_order`` int64[I] (the ids' sorted order: lookups are a binary search);
- ``meta`` (a JSON string) and ``offsets`` int64[I + 1] (image ``i`` owns rows ``offsets[i]:offsets[i + 1]``);
- ``boxes`` uint16[M, 4] (rounded pixels; float32 when a coordinate falls outside 0..65535), xyxy, finite;
- ``scores`` float16[M] (optional);
- ``digests`` uint32[I, 2]: the CRC-32 of each image's box bytes and of its score bytes;
- ``index_crc32`` uint32 scalar: the CRC-32 of the data bytes of format_version, image_ids, id_order,
  meta, offsets and digests.

Integrity: opening checks every member's dtype and shape, that the offsets rise from 0 to M, that
``id_order`` sorts the ids strictly (no id repeats), and the index against ``index_crc32``: O(I), the
boxes are never read. Each lookup checks the rows it reads against that image's digest (per image, not
per chunk or once per file: exactly the bytes served, and damage after a first check is still caught);
a full pass is :meth:`ProposalStore.verify` (timings: benchmarks/scale.md). A damaged file is refused
with a ``ValueError`` naming it, the image and the problem; a file of an earlier format (1: compressed;
2: no digests) with one that says to run ``tools/propose.py`` again.

The writer streams image by image (:class:`StoreWriter`) and a lookup touches the pages of one image:
neither writing nor reading holds the whole split in memory. Run-dependent figures (seconds per image,
worker counts) go to a JSON sidecar (:func:`sidecar_path`). This module needs numpy only (no torch), so
that a process that only looks up proposals stays small.
"""
from __future__ import annotations

import bisect
import contextlib
import io
import json
import logging
import shutil
import struct
import tempfile
import zipfile
import zlib
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ProposalStore", "StoreWriter", "FORMAT_VERSION", "box_dtype_for", "sidecar_path", "store_meta",
           "check_coverage"]

FORMAT_VERSION = 3
_INDEX = ("format_version", "image_ids", "id_order", "meta", "offsets", "digests")  # covered by index_crc32
_UINT16_MAX = 65535
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: signature ... name length, extra length
_COPY_BLOCK = 16 << 20
_RECOMPUTE = "delete it and run tools/propose.py again to write it in the current format"


def sidecar_path(path: str | Path) -> Path:
    """The JSON beside a store that holds run-dependent figures (timing, workers, failed images)."""
    return Path(path).with_suffix(".json")


def box_dtype_for(low: float, high: float) -> np.dtype:
    """uint16 when every coordinate (in ``[low, high]``, NaN-free extremes) rounds into 0..65535, else float32
    (a box a hair outside the image, e.g. at -0.001, still rounds to 0 and keeps the split in uint16)."""
    return np.dtype(np.uint16) if np.round(low) >= 0 and np.round(high) <= _UINT16_MAX else np.dtype(np.float32)


def _ids_array(image_ids: Sequence[str]) -> np.ndarray:
    return np.asarray([str(i) for i in image_ids], dtype=str)  # no ids: <U1[0]


def _as_boxes(boxes, where: str) -> np.ndarray:
    """``boxes`` as ``ndarray[N, 4]``; ValueError naming ``where`` for any other shape (never reshaped)."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes of shape {boxes.shape}, expected (N, 4)")
    return boxes


def _index_crc(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32 of the data bytes of ``arrays``, in order (memory-mapped arrays are read, never copied whole)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8), crc)
    return crc


def _strictly_sorted(ids: np.ndarray, order: np.ndarray, block: int = 1 << 16) -> bool:
    """Whether ``ids[order]`` rises strictly (no repeated id), read ``block`` entries at a time."""
    for lo in range(0, len(order), block):
        chunk = ids[np.asarray(order[max(lo - 1, 0):lo + block])]  # the block and the last entry before it
        if (chunk[1:] <= chunk[:-1]).any():
            return False
    return True


class StoreWriter:
    """Write a store file image by image, in image order, holding one image at a time.

    image_ids: the I ids in store order; counts: boxes of each image (int[I]); box_dtype: uint16 (boxes
    are rounded, see :func:`box_dtype_for`) or float32; with_scores: whether :meth:`add` receives scores;
    meta: JSON-able dict. The file is written to a temporary name beside ``path`` and renamed over it by
    :meth:`commit` only (as a context manager: commit on success, :meth:`abort` on an error). Scores are
    spooled to an unnamed temporary file while the boxes stream, then copied in; each image's digests
    are computed from the bytes as they are written.
    """

    def __init__(self, path: str | Path, image_ids: Sequence[str], counts: Sequence[int] | np.ndarray,
                 box_dtype=np.uint16, with_scores: bool = False, meta: dict | None = None):
        from detect.io import atomic_open  # torch-free readers: imported only when writing

        self.path = Path(path)
        self.ids = _ids_array(image_ids)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if len(counts) != len(self.ids):
            raise ValueError(f"{self.path}: {len(counts)} box counts for {len(self.ids)} image ids")
        if (counts < 0).any():
            raise ValueError(f"{self.path}: negative box count")
        self.box_dtype = np.dtype(box_dtype)
        if self.box_dtype not in (np.dtype(np.uint16), np.dtype(np.float32)):
            raise ValueError(f"{self.path}: boxes are stored as uint16 or float32, not {self.box_dtype}")
        order = np.argsort(self.ids, kind="stable")
        if not _strictly_sorted(self.ids, order):
            raise ValueError(f"{self.path}: repeated image ids")
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._next = 0
        self._digests = np.zeros((len(self.ids), 2), np.uint32)  # CRC-32 of each image's box and score bytes
        # every member before the boxes, in file order (made before anything is written)
        self._index = {"format_version": np.asarray(FORMAT_VERSION, np.int64), "image_ids": self.ids,
                       "id_order": order.astype(np.int64),
                       "meta": np.asarray(json.dumps(dict(meta or {}), sort_keys=True)), "offsets": self.offsets}
        self._context = atomic_open(self.path, "wb")
        self._file = self._context.__enter__()
        self._scores = self._boxes = None
        try:
            self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self._scores = tempfile.TemporaryFile(dir=self.path.parent) if with_scores else None
            for name, array in self._index.items():
                self._write_member(name, array)
            self._boxes = self._open_member("boxes", self.box_dtype, (int(self.offsets[-1]), 4))
        except BaseException as e:
            self.abort(e)
            raise

    def _write_member(self, name: str, array: np.ndarray) -> None:
        with self._open_member(name, array.dtype, array.shape) as w:
            w.write(array.tobytes())

    def _open_member(self, name: str, dtype: np.dtype, shape: tuple) -> BinaryIO:
        """Start member ``name`` with the npy header of ``dtype[shape]`` (as ``numpy.save`` writes it)."""
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        # the size known in advance: zipfile then decides zip64 from it (deterministic)
        info.file_size = len(header.getvalue()) + int(np.prod(shape)) * dtype.itemsize
        w = self._zip.open(info, "w")
        w.write(header.getvalue())
        return w

    def add(self, boxes: np.ndarray, scores: np.ndarray | None = None) -> None:
        """The next image's ``boxes: ndarray[N, 4]`` xyxy pixels (N = its count) and ``scores: ndarray[N]``."""
        i = self._next
        if i >= len(self.ids):
            raise ValueError(f"{self.path}: more images added than the {len(self.ids)} announced")
        where = f"{self.path}: image {str(self.ids[i])!r}"
        boxes = _as_boxes(boxes, where)
        if len(boxes) != self.counts[i]:
            raise ValueError(f"{where} has {len(boxes)} boxes, {self.counts[i]} announced")
        if boxes.dtype.kind == "f" and not np.isfinite(boxes).all():
            raise ValueError(f"{where} has NaN or infinite box coordinates (the proposer's output is broken)")
        if self.box_dtype == np.uint16 and boxes.dtype != np.uint16:
            boxes = np.round(boxes)
            if len(boxes) and not (boxes.min() >= 0 and boxes.max() <= _UINT16_MAX):
                raise ValueError(f"{where} has coordinates outside 0..65535 for uint16 boxes")
        data = np.ascontiguousarray(boxes, dtype=self.box_dtype).tobytes()
        self._boxes.write(data)
        self._digests[i, 0] = zlib.crc32(data)
        if self._scores is not None:
            if scores is None or len(np.asarray(scores).reshape(-1)) != len(boxes):
                raise ValueError(f"{where} needs {len(boxes)} scores")
            data = np.asarray(scores, dtype=np.float16).reshape(-1).tobytes()
            self._scores.write(data)
            self._digests[i, 1] = zlib.crc32(data)
        self._next += 1

    def commit(self) -> None:
        """Finish the file (every image must have been added) and rename it over ``path``; :meth:`abort` on an error."""
        try:
            if self._next != len(self.ids):
                raise ValueError(f"{self.path}: {self._next} of {len(self.ids)} images added")
            self._boxes.close()
            if self._scores is not None:
                self._scores.seek(0)
                with self._open_member("scores", np.dtype(np.float16), (int(self.offsets[-1]),)) as w:
                    shutil.copyfileobj(self._scores, w, _COPY_BLOCK)
                self._scores.close()
            self._write_member("digests", self._digests)
            crc = _index_crc([*self._index.values(), self._digests])
            self._write_member("index_crc32", np.asarray(crc, np.uint32))
            self._zip.close()
        except BaseException as e:
            self.abort(e)
            raise
        self._context.__exit__(None, None, None)

    def abort(self, error: BaseException | None = None) -> None:
        """Drop the temporary file; ``path`` is left as it was."""
        if self._scores is not None:
            self._scores.close()
        with contextlib.suppress(ValueError, OSError, AttributeError):  # AttributeError: no zip opened yet
            if self._boxes is not None:
                self._boxes.close()
            self._zip.close()
        error = error or RuntimeError(f"{self.path}: store not written")
        self._context.__exit__(type(error), error, error.__traceback__)  # removes the temporary file

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort(exc)


def _member_array(path: Path, f: BinaryIO, info: zipfile.ZipInfo) -> np.ndarray:
    """The array of an uncompressed member, memory-mapped in place (no object dtypes; bounds checked)."""
    f.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise ValueError(f"{path}: {info.filename}: bad zip local header")
    start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    f.seek(start)
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f, max_header_size=10000)
    if dtype.hasobject or fortran:
        raise ValueError(f"{path}: {info.filename}: object or Fortran-ordered array refused")
    offset = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size:
        raise ValueError(f"{path}: {info.filename}: array size does not match the member")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _open_mapped(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of a store, memory-mapped, and its meta dict; the errors of :func:`store_meta`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: proposal file not found")
    with open(path, "rb") as f:
        try:
            zf = zipfile.ZipFile(f)
        except Exception as e:  # BadZipFile, OSError, NotImplementedError (a damaged version field) ...
            raise ValueError(f"{path}: not a readable proposal file ({type(e).__name__}: {e})") from e
        with zf:
            infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            missing = {"image_ids", "offsets", "boxes"} - set(infos)
            if missing:
                raise ValueError(f"{path}: not a proposal store (missing {sorted(missing)})")
            if "format_version" not in infos or any(i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 1
                                                    for i in infos.values()):
                raise ValueError(f"{path}: a proposal store of format 1 (compressed), no longer read: "
                                 f"{_RECOMPUTE}")
            names = ("format_version", "meta", "image_ids", "id_order", "offsets", "boxes", "scores", "digests",
                     "index_crc32")
            try:
                arrays = {name: _member_array(path, f, infos[name]) for name in names if name in infos}
            except Exception as e:  # a damaged npy header: ValueError, struct.error, tokenize.TokenError ...
                raise ValueError(f"{path}: not a readable proposal file ({type(e).__name__}: {e})") from None
    version = arrays["format_version"]
    if version.shape != () or version.dtype != np.int64 or int(version) != FORMAT_VERSION:
        found = int(version) if version.shape == () and version.dtype.kind in "iu" else f"{version.dtype}{list(version.shape)}"
        raise ValueError(f"{path}: a proposal store of format {found}; this version reads format "
                         f"{FORMAT_VERSION} only (format 2, without checksums, is no longer read): {_RECOMPUTE}")
    missing = {"id_order", "meta", "digests", "index_crc32"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: not a proposal store of format {FORMAT_VERSION} (missing {sorted(missing)})")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as e:
        raise ValueError(f"{path}: the store's meta is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the store's meta is not a JSON object")
    return arrays, meta


def store_meta(path: str | Path) -> dict:
    """The ``meta`` dict of a store file, its index and boxes unchecked (:meth:`ProposalStore.load` checks
    them); ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or not a store of the
    current format (module docstring)."""
    return _open_mapped(Path(path))[1]


class ProposalStore:
    """Proposals of a whole dataset split, looked up by image id.

    image_ids: list[str] (I); offsets: ndarray[I + 1] int64; boxes: ndarray[M, 4] (any float/uint16 dtype);
    scores: ndarray[M] or None; meta: JSON-able dict (method name, settings, failed images); id_order,
    source, digests: what :meth:`load` reads from a file (digests are checked at every lookup, module
    docstring). A loaded store keeps ``boxes``, ``scores`` and ``offsets`` as read-only ``np.memmap``, so
    its resident memory grows only with the images looked up.
    """

    def __init__(self, image_ids: Sequence[str], offsets: np.ndarray, boxes: np.ndarray,
                 scores: np.ndarray | None = None, meta: dict | None = None, *, id_order: np.ndarray | None = None,
                 source: Path | None = None, digests: np.ndarray | None = None):
        ids = image_ids if isinstance(image_ids, np.ndarray) and image_ids.dtype.kind == "U" else _ids_array(image_ids)
        self._ids = ids.reshape(-1)
        self.offsets, self.boxes, self.scores = offsets, boxes, scores  # as from_lists and load give them: checked below
        self.meta = dict(meta or {})
        self._source = source
        self._digests = digests
        n = len(self._ids)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4 or self.boxes.dtype.kind not in "fu":
            raise ValueError(f"proposal store: boxes are {self.boxes.dtype}{list(self.boxes.shape)}, not [M, 4] numbers")
        if self.offsets.dtype != np.int64 or self.offsets.shape != (n + 1,) or self.offsets[0] != 0 \
                or self.offsets[-1] != len(self.boxes) or (np.diff(self.offsets) < 0).any():
            raise ValueError("proposal store: offsets do not match image ids and boxes")
        if self.scores is not None and (self.scores.shape != (len(self.boxes),) or self.scores.dtype.kind != "f"):
            raise ValueError(f"proposal store: scores are {self.scores.dtype}{list(self.scores.shape)}, "
                             f"not [{len(self.boxes)}] floats")
        if id_order is None:
            id_order = np.argsort(self._ids, kind="stable")
        elif id_order.shape != (n,) or id_order.dtype != np.int64 or (n and (id_order.min() < 0 or id_order.max() >= n)):
            raise ValueError("proposal store: id_order is not an order of the image ids")
        if not _strictly_sorted(self._ids, id_order):
            raise ValueError("proposal store: repeated image ids, or id_order does not sort them")
        self._order = id_order

    @classmethod
    def from_lists(cls, image_ids: Sequence[str], boxes: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray] | None = None, meta: dict | None = None) -> "ProposalStore":
        """Build from per-image ``float32[N_i, 4]`` boxes (and ``float32[N_i]`` scores)."""
        boxes = [_as_boxes(b, f"proposals of image {i!r}").astype(np.float32) for i, b in zip(image_ids, boxes)]
        offsets = np.cumsum([0, *map(len, boxes)], dtype=np.int64)
        cat = np.concatenate([np.zeros((0, 4), np.float32), *boxes])
        sc = None if scores is None else np.concatenate([np.zeros(0, np.float32),
                                                         *(np.asarray(s, np.float32).reshape(-1) for s in scores)])
        return cls(image_ids, offsets, cat, sc, meta)

    @cached_property
    def image_ids(self) -> list[str]:
        """The I image ids in store order (built on first use: a list of every id)."""
        return self._ids.tolist()

    def __len__(self) -> int:
        return len(self._ids)

    def _position(self, image_id: str) -> int | None:
        """Row of ``image_id`` in ``image_ids``, by binary search over ``id_order`` (O(log I) entries read)."""
        key = str(image_id)  # compared as Python strings: a key longer than the stored width matches nothing
        ids, order = self._ids, self._order
        pos = bisect.bisect_left(range(len(ids)), key, key=lambda p: str(ids[order[p]]))
        return int(order[pos]) if pos < len(ids) and str(ids[order[pos]]) == key else None

    def __contains__(self, image_id: str) -> bool:
        return self._position(image_id) is not None

    def _read(self, image_id: str, column: int) -> np.ndarray:
        """Image ``image_id``'s boxes (column 0) or scores (1) as float32, checked against its digest."""
        i = self._position(image_id)
        if i is None:
            raise KeyError(f"no proposals stored for image {image_id!r}")
        rows = (self.boxes, self.scores)[column][int(self.offsets[i]):int(self.offsets[i + 1])]
        return np.array(self._verified(i, column, rows), dtype=np.float32)

    def _verified(self, i: int, column: int, rows: np.ndarray) -> np.ndarray:
        """``rows`` (image ``i``'s stored boxes, column 0, or scores, 1) after the check against its digest."""
        if self._digests is not None and zlib.crc32(rows) != int(self._digests[i, column]):
            raise ValueError(f"{self._source}: image {str(self._ids[i])!r}: its {('boxes', 'scores')[column]} do not "
                             "match the checksum written with the store: the file is damaged; delete it and run "
                             "tools/propose.py again")
        return rows

    def get(self, image_id: str) -> np.ndarray:
        """Boxes of one image: ``ndarray[N, 4] float32`` xyxy pixels, in the method's rank order; ValueError
        naming the file and the image when they are damaged or not finite."""
        boxes = self._read(image_id, 0)
        if not np.isfinite(boxes).all():
            raise ValueError(f"{self._source or 'proposal store'}: image {image_id!r}: NaN or infinite box coordinates")
        return boxes

    def get_scores(self, image_id: str) -> np.ndarray | None:
        """Scores of one image, ``ndarray[N] float32``, or None when the method has none."""
        return None if self.scores is None else self._read(image_id, 1)

    def boxes_per_image(self) -> np.ndarray:
        """``ndarray[I] int64``: number of boxes of each image."""
        return np.diff(np.asarray(self.offsets))

    def iter_images(self, block_rows: int = 1 << 20) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """``(boxes ndarray[N_i, 4], scores ndarray[N_i] or None)`` of each image in store order, stored
        dtypes, reading about ``block_rows`` rows at a time (for copying a store without holding it)."""
        offsets = np.asarray(self.offsets)
        starts = np.flatnonzero(np.diff(offsets[:-1] // block_rows, prepend=-1))  # images that open a block of rows
        for i, j in zip(starts.tolist(), [*starts[1:].tolist(), len(self)]):
            lo, hi = int(offsets[i]), int(offsets[j])
            boxes = np.asarray(self.boxes[lo:hi])
            scores = None if self.scores is None else np.asarray(self.scores[lo:hi])
            for k in range(i, j):
                a, b = int(offsets[k]) - lo, int(offsets[k + 1]) - lo
                yield self._verified(k, 0, boxes[a:b]), None if scores is None else self._verified(k, 1, scores[a:b])

    def verify(self) -> int:
        """Read every image once against its digest (the whole file); returns the images checked."""
        return sum(1 for _ in self.iter_images())

    def save(self, path: str | Path) -> None:
        """Write atomically in the current format (module docstring)."""
        b = self.boxes
        dtype = np.dtype(np.uint16) if b.dtype == np.uint16 or len(b) == 0 else \
            box_dtype_for(float(np.nanmin(b)), float(np.nanmax(b)))
        with StoreWriter(path, self._ids, self.boxes_per_image(), dtype, self.scores is not None, self.meta) as w:
            for boxes, scores in self.iter_images():
                w.add(boxes.astype(np.float32) if dtype == np.float32 else boxes, scores)

    @classmethod
    def load(cls, path: str | Path) -> "ProposalStore":
        """Open a store (memory-mapped), checking it as the module docstring says; ``FileNotFoundError`` /
        ``ValueError`` naming the file when it is missing, of an earlier format, malformed or damaged."""
        path = Path(path)
        arrays, meta = _open_mapped(path)
        try:
            ids = arrays["image_ids"]
            if ids.dtype.kind != "U" or ids.ndim != 1:
                raise ValueError("image_ids is not a list of strings")
            # the dtypes and shapes the writer gives (boxes' shape, offsets and order: the constructor's checks)
            expect = {"boxes": ((np.uint16, np.float32), None), "scores": ((np.float16,), 1),
                      "digests": ((np.uint32,), (len(ids), 2)), "index_crc32": ((np.uint32,), ())}
            for name, (dtypes, shape) in expect.items():
                a = arrays.get(name)
                if a is not None and (a.dtype not in [np.dtype(d) for d in dtypes] or (shape == 1 and a.ndim != 1)
                                      or (isinstance(shape, tuple) and a.shape != shape)):
                    raise ValueError(f"{name} is {a.dtype}{list(a.shape)}, not what the store writer writes")
            if _index_crc([arrays[k] for k in _INDEX]) != int(arrays["index_crc32"]):
                raise ValueError("the image index (ids, order, offsets, digests) does not match the checksum written "
                                 "with it: the file is damaged; delete it and run tools/propose.py again")
            return cls(ids, arrays["offsets"], arrays["boxes"], arrays.get("scores"), meta,
                       id_order=arrays["id_order"], source=path, digests=arrays["digests"])
        except (ValueError, TypeError) as e:
            raise ValueError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None

    def __getstate__(self) -> dict:
        """A store opened from a file pickles as its path (worker processes map the file again)."""
        if self._source is not None and isinstance(self.boxes, np.memmap):
            return {"source": str(self._source)}
        return {k: v for k, v in self.__dict__.items() if k != "image_ids"}

    def __setstate__(self, state: dict) -> None:
        if set(state) == {"source"}:
            self.__dict__.update(ProposalStore.load(state["source"]).__dict__)
        else:
            self.__dict__.update(state)


def check_coverage(store: ProposalStore, image_ids: Sequence[str], what: str, fallback: str) -> list[str]:
    """The ids of ``image_ids`` (the images of ``what``, e.g. "ilsvrc val") that ``store`` lacks, which
    will use ``fallback`` instead: their count and first ids are logged as a warning, and a store that
    holds none of them (another split or dataset) is a ``ValueError`` naming it."""
    stored = set(store._ids.tolist())  # built for this call: 0.5 s for 456k ids
    missing = [i for i in map(str, image_ids) if i not in stored]
    name = store._source or "the proposal store"
    if missing and len(missing) == len(image_ids):
        raise ValueError(f"{name}: holds none of the {len(image_ids)} images of {what} (first: "
                         f"{', '.join(missing[:3])}); a store of another split or dataset?")
    if missing:
        log.warning("%s: %d of %d images of %s are not in the store and use %s (first: %s)", name, len(missing),
                    len(image_ids), what, fallback, ", ".join(missing[:3]))
    return missing
