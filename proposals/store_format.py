"""The proposal store file: proposals of a whole dataset split, looked up by image id, memory-mapped.

File format (version 2): a ``.npz`` whose members are stored uncompressed, so that the arrays can be
memory-mapped where they lie in the file (and ``numpy.load(path, allow_pickle=False)`` still reads it):

- ``format_version`` int64 scalar (2);
- ``image_ids`` str[I] and ``id_order`` int64[I] (the ids' sorted order: lookups are a binary search
  that reads a few entries, never the whole list);
- ``offsets`` int64[I + 1] (image ``i`` owns rows ``offsets[i]:offsets[i + 1]``);
- ``boxes`` uint16[M, 4] (rounded pixels; float32 when a coordinate falls outside 0..65535), xyxy;
- ``scores`` float16[M] (optional) and ``meta`` (a JSON string).

Members are written in that order with fixed zip timestamps, so equal content gives equal bytes, and
the writer streams image by image (:class:`StoreWriter`): neither writing nor reading ever holds the
whole split in memory. Opening reads the zip directory and maps the arrays; a lookup touches the pages
of one image. Run-dependent figures (seconds per image, worker counts) go to a JSON sidecar
(``<store>.json``, :func:`sidecar_path`).

Version 1 files (the same members, deflate-compressed, no ``id_order``) are still read, whole into
memory, with a warning; :func:`upgrade_store` rewrites one as version 2 without holding it in memory,
and ``tools/propose.py`` does so when it finds one complete (nothing is recomputed).

This module needs numpy only (no torch), so that a process that only looks up proposals stays small.
"""
from __future__ import annotations

import bisect
import io
import json
import logging
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ProposalStore", "StoreWriter", "FORMAT_VERSION", "box_dtype_for", "sidecar_path", "store_meta",
           "upgrade_store", "is_memory_mapped_store"]

FORMAT_VERSION = 2
_UINT16_MAX = 65535
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: signature ... name length, extra length
_REQUIRED = ("image_ids", "offsets", "boxes")
_COPY_BLOCK = 16 << 20


def sidecar_path(path: str | Path) -> Path:
    """The JSON beside a store that holds run-dependent figures (timing, workers, failed images)."""
    return Path(path).with_suffix(".json")


def box_dtype_for(low: float, high: float) -> np.dtype:
    """uint16 when every coordinate (in ``[low, high]``, NaN-free extremes) rounds into 0..65535, else float32
    (a box a hair outside the image, e.g. at -0.001, still rounds to 0 and keeps the split in uint16)."""
    return np.dtype(np.uint16) if np.round(low) >= 0 and np.round(high) <= _UINT16_MAX else np.dtype(np.float32)


def _ids_array(image_ids: Sequence[str]) -> np.ndarray:
    ids = [str(i) for i in image_ids]
    return np.asarray(ids, dtype=str) if ids else np.zeros(0, "<U1")


# --------------------------------------------------------------------------------------------- writing


class StoreWriter:
    """Write a store file image by image, in image order, holding one image at a time.

    image_ids: the I ids in store order; counts: boxes of each image (int[I]); box_dtype: uint16 (boxes
    are rounded; the caller guarantees every coordinate fits, see :func:`box_dtype_for`) or float32;
    with_scores: whether :meth:`add` receives scores; meta: JSON-able dict. The file is written to a
    temporary name beside ``path`` and renamed over it only by :meth:`commit` (a context manager
    commits on success and removes the temporary file on an error). Scores are spooled to an unnamed
    temporary file beside the store while the boxes stream, then copied in.
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
        if len(self.ids) > 1 and (self.ids[order][1:] == self.ids[order][:-1]).any():
            raise ValueError(f"{self.path}: repeated image ids")
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.with_scores = with_scores
        self._next = 0
        small = []  # every member but boxes and scores, in file order (made before anything is written)
        for name, array in (("format_version", np.asarray(FORMAT_VERSION, np.int64)), ("image_ids", self.ids),
                            ("id_order", order.astype(np.int64)),
                            ("meta", np.asarray(json.dumps(dict(meta or {}), sort_keys=True))),
                            ("offsets", self.offsets)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            small.append((name, buf.getvalue()))
        self._context = atomic_open(self.path, "wb")
        self._file = self._context.__enter__()
        self._scores = self._boxes = None
        try:
            self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self._scores = tempfile.TemporaryFile(dir=self.path.parent) if with_scores else None
            for name, data in small:
                self._write_member(name, data)
            self._boxes = self._open_member("boxes", self.box_dtype, (int(self.offsets[-1]), 4))
        except BaseException as e:
            self.abort(e)
            raise

    def _info(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        info.file_size = size  # known in advance: zipfile then decides zip64 from it (deterministic)
        return info

    def _write_member(self, name: str, data: bytes) -> None:
        with self._zip.open(self._info(name, len(data)), "w") as w:
            w.write(data)

    def _open_member(self, name: str, dtype: np.dtype, shape: tuple) -> BinaryIO:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        size = len(header.getvalue()) + int(np.prod(shape)) * dtype.itemsize
        w = self._zip.open(self._info(name, size), "w")
        w.write(header.getvalue())
        return w

    def add(self, boxes: np.ndarray, scores: np.ndarray | None = None) -> None:
        """The next image's ``boxes: ndarray[N, 4]`` xyxy pixels (N = its count) and ``scores: ndarray[N]``."""
        i = self._next
        if i >= len(self.ids):
            raise ValueError(f"{self.path}: more images added than the {len(self.ids)} announced")
        boxes = np.asarray(boxes).reshape(-1, 4)
        if len(boxes) != self.counts[i]:
            raise ValueError(f"{self.path}: image {self.ids[i]!r} has {len(boxes)} boxes, {self.counts[i]} announced")
        if self.box_dtype == np.uint16 and boxes.dtype != np.uint16:
            boxes = np.round(boxes)
            if len(boxes) and not (np.nanmin(boxes) >= 0 and np.nanmax(boxes) <= _UINT16_MAX):
                raise ValueError(f"{self.path}: image {self.ids[i]!r} has coordinates outside 0..65535 for uint16 boxes")
        self._boxes.write(np.ascontiguousarray(boxes, dtype=self.box_dtype).tobytes())
        if self.with_scores:
            if scores is None or len(np.asarray(scores).reshape(-1)) != len(boxes):
                raise ValueError(f"{self.path}: image {self.ids[i]!r} needs {len(boxes)} scores")
            self._scores.write(np.asarray(scores, dtype=np.float16).reshape(-1).tobytes())
        self._next += 1

    def commit(self) -> None:
        """Finish the file (every image must have been added) and rename it over ``path``; on any error
        the temporary file is removed and ``path`` is left as it was."""
        try:
            if self._next != len(self.ids):
                raise ValueError(f"{self.path}: {self._next} of {len(self.ids)} images added")
            self._boxes.close()
            if self._scores is not None:
                w = self._open_member("scores", np.dtype(np.float16), (int(self.offsets[-1]),))
                self._scores.seek(0)
                for block in iter(lambda: self._scores.read(_COPY_BLOCK), b""):
                    w.write(block)
                w.close()
                self._scores.close()
            self._zip.close()
        except BaseException as e:
            self.abort(e)
            raise
        self._context.__exit__(None, None, None)

    def abort(self, error: BaseException | None = None) -> None:
        """Drop the temporary file; ``path`` is left as it was."""
        if self._scores is not None:
            self._scores.close()
        try:
            if self._boxes is not None:
                self._boxes.close()
            self._zip.close()
        except (ValueError, OSError, AttributeError):
            pass
        error = error or RuntimeError(f"{self.path}: store not written")
        self._context.__exit__(type(error), error, error.__traceback__)  # removes the temporary file

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort(exc)


# --------------------------------------------------------------------------------------------- reading


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


def _open_mapped(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a version-2 store, memory-mapped; None when the file is a version-1 (compressed) store."""
    with open(path, "rb") as f:
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: not a readable proposal file ({type(e).__name__}: {e})") from e
        with zf:
            infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            missing = set(_REQUIRED) - set(infos)
            if missing:
                raise ValueError(f"{path}: not a proposal store (missing {sorted(missing)})")
            if "format_version" not in infos or any(i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 1
                                                    for i in infos.values()):
                return None
            arrays = {}
            for name in ("format_version", "meta", "image_ids", "id_order", "offsets", "boxes", "scores"):
                if name in infos:
                    try:
                        arrays[name] = _member_array(path, f, infos[name])
                    except (ValueError, OSError, struct.error) as e:
                        raise ValueError(f"{path}: not a readable proposal file ({e})") from None
    version = int(np.asarray(arrays["format_version"]))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: proposal store format {version} is not known to this version "
                         f"(which reads {FORMAT_VERSION}); update the code or re-run tools/propose.py")
    if "id_order" not in arrays:
        raise ValueError(f"{path}: not a proposal store (missing ['id_order'])")
    return arrays


def _read_whole(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # truncated zip, not an npz, object arrays refused
        raise ValueError(f"{path}: not a readable proposal file ({type(e).__name__}: {e})") from e


def store_meta(path: str | Path) -> dict:
    """The ``meta`` dict of a store file of either version, without reading its arrays;
    ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or not a store."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: proposal file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            missing = set(_REQUIRED) - names
            if missing:
                raise ValueError(f"not a proposal store (missing {sorted(missing)})")
            if "meta" not in names:
                return {}
            with zf.open("meta.npy") as f:
                meta = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable proposal file ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the store's meta is not a JSON object")
    return meta


def is_memory_mapped_store(path: str | Path) -> bool:
    """True for a version-2 store file, False for a version-1 (compressed) one; ValueError otherwise."""
    return _open_mapped(Path(path)) is not None


class ProposalStore:
    """Proposals of a whole dataset split, looked up by image id.

    image_ids: list[str] (I); offsets: ndarray[I + 1] int64; boxes: ndarray[M, 4] (any float/uint16 dtype);
    scores: ndarray[M] or None; meta: JSON-able dict (method name, settings, failed images).
    A store opened by :meth:`load` keeps its arrays memory-mapped (``boxes``, ``scores``, ``offsets``
    are then read-only ``np.memmap``), so its resident memory grows only with the images looked up.
    """

    def __init__(self, image_ids: Sequence[str], offsets: np.ndarray, boxes: np.ndarray,
                 scores: np.ndarray | None = None, meta: dict | None = None, *, id_order: np.ndarray | None = None,
                 source: Path | None = None):
        self._ids = image_ids if isinstance(image_ids, np.ndarray) and image_ids.dtype.kind == "U" \
            else _ids_array(image_ids)
        self._ids = self._ids.reshape(-1)
        self.offsets = offsets if isinstance(offsets, np.memmap) else np.asarray(offsets, dtype=np.int64)
        self.boxes = np.asarray(boxes).reshape(-1, 4) if not isinstance(boxes, np.memmap) else boxes
        self.scores = None if scores is None else (scores if isinstance(scores, np.memmap) else np.asarray(scores).reshape(-1))
        self.meta = dict(meta or {})
        self._source = source
        self._id_list: list[str] | None = None
        n = len(self._ids)
        if self.offsets.dtype != np.int64 or self.offsets.shape != (n + 1,) or self.offsets[0] != 0 \
                or self.offsets[-1] != len(self.boxes) or (np.diff(self.offsets) < 0).any():
            raise ValueError("proposal store: offsets do not match image ids and boxes")
        if self.scores is not None and len(self.scores) != len(self.boxes):
            raise ValueError("proposal store: scores and boxes differ in length")
        if id_order is None:
            id_order = np.argsort(self._ids, kind="stable")
            if n > 1 and (self._ids[id_order][1:] == self._ids[id_order][:-1]).any():
                raise ValueError("proposal store: repeated image ids")
        elif id_order.shape != (n,) or id_order.dtype != np.int64 or (n and (id_order.min() < 0 or id_order.max() >= n)):
            raise ValueError("proposal store: id_order is not an order of the image ids")
        self._order = id_order
        self._width = self._ids.dtype.itemsize // 4  # characters of the fixed-width id array

    @classmethod
    def from_lists(cls, image_ids: Sequence[str], boxes: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray] | None = None, meta: dict | None = None) -> "ProposalStore":
        """Build from per-image ``float32[N_i, 4]`` boxes (and ``float32[N_i]`` scores)."""
        counts = [len(np.asarray(b).reshape(-1, 4)) for b in boxes]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cat = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]) if boxes else np.zeros((0, 4), np.float32)
        sc = None
        if scores is not None:
            sc = np.concatenate([np.asarray(s, np.float32).reshape(-1) for s in scores]) if scores else np.zeros(0, np.float32)
        return cls(image_ids, offsets, cat, sc, meta)

    # ----------------------------------------------------------------------------- lookups

    @property
    def image_ids(self) -> list[str]:
        """The I image ids in store order (built on first use: a list of every id)."""
        if self._id_list is None:
            self._id_list = self._ids.tolist()
        return self._id_list

    def __len__(self) -> int:
        return len(self._ids)

    def _position(self, image_id: str) -> int | None:
        """Row of ``image_id`` in ``image_ids``, by binary search over ``id_order`` (O(log I) entries read)."""
        key = str(image_id)
        if len(key) > self._width:
            return None
        ids, order = self._ids, self._order
        pos = bisect.bisect_left(range(len(ids)), key, key=lambda p: str(ids[order[p]]))
        if pos < len(ids):
            i = int(order[pos])
            if str(ids[i]) == key:
                return i
        return None

    def __contains__(self, image_id: str) -> bool:
        return self._position(image_id) is not None

    def _rows(self, image_id: str) -> slice:
        i = self._position(image_id)
        if i is None:
            raise KeyError(f"no proposals stored for image {image_id!r}")
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def get(self, image_id: str) -> np.ndarray:
        """Boxes of one image: ``ndarray[N, 4] float32`` xyxy pixels, in the method's rank order."""
        return np.array(self.boxes[self._rows(image_id)], dtype=np.float32)

    def get_scores(self, image_id: str) -> np.ndarray | None:
        """Scores of one image, ``ndarray[N] float32``, or None when the method has none."""
        return None if self.scores is None else np.array(self.scores[self._rows(image_id)], dtype=np.float32)

    def boxes_per_image(self) -> np.ndarray:
        """``ndarray[I] int64``: number of boxes of each image."""
        return np.diff(np.asarray(self.offsets))

    def iter_images(self, block_rows: int = 1 << 20) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """``(boxes ndarray[N_i, 4], scores ndarray[N_i] or None)`` of each image in store order, stored
        dtypes, reading about ``block_rows`` rows at a time (for copying a store without holding it)."""
        offsets = np.asarray(self.offsets)
        i, n = 0, len(self)
        while i < n:
            j = int(np.searchsorted(offsets, offsets[i] + block_rows, side="right")) - 1
            j = min(max(j, i + 1), n)
            lo, hi = int(offsets[i]), int(offsets[j])
            boxes = np.asarray(self.boxes[lo:hi])
            scores = None if self.scores is None else np.asarray(self.scores[lo:hi])
            for k in range(i, j):
                a, b = int(offsets[k]) - lo, int(offsets[k + 1]) - lo
                yield boxes[a:b], None if scores is None else scores[a:b]
            i = j

    # ----------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """Write atomically (format version 2): boxes rounded to uint16 (float32 if a coordinate falls
        outside 0..65535), scores as float16."""
        b = self.boxes
        if b.dtype == np.uint16 or len(b) == 0:
            dtype = np.dtype(np.uint16)
        else:
            dtype = box_dtype_for(float(np.nanmin(b)), float(np.nanmax(b)))
        with StoreWriter(path, self._ids, self.boxes_per_image(), dtype, self.scores is not None, self.meta) as w:
            for boxes, scores in self.iter_images():
                w.add(boxes.astype(np.float32) if dtype == np.float32 else boxes, scores)

    @classmethod
    def load(cls, path: str | Path) -> "ProposalStore":
        """Open a store (memory-mapped; a version-1 file is read whole, with a warning);
        ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or malformed."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: proposal file not found")
        arrays = _open_mapped(path)
        legacy = arrays is None
        if legacy:
            arrays = _read_whole(path)
            missing = set(_REQUIRED) - set(arrays)
            if missing:
                raise ValueError(f"{path}: not a proposal store (missing {sorted(missing)})")
            size = sum(a.nbytes for a in arrays.values())
            log.warning("%s: a proposal store in the older compressed format, read whole into memory (%.0f MB); "
                        "re-run tools/propose.py with the same settings to rewrite it memory-mapped (nothing is "
                        "recomputed)", path, size / 2**20)
        try:
            meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
            ids = arrays["image_ids"]
            if ids.dtype.kind != "U" or ids.ndim != 1:
                raise ValueError("image_ids is not a list of strings")
            return cls(ids, arrays["offsets"], arrays["boxes"], arrays.get("scores"), meta,
                       id_order=None if legacy else arrays["id_order"], source=path)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None

    def __getstate__(self) -> dict:
        """A store opened from a file pickles as its path (worker processes map the file again)."""
        if self._source is not None and isinstance(self.boxes, np.memmap):
            return {"source": str(self._source)}
        return {k: v for k, v in self.__dict__.items() if k != "_id_list"}

    def __setstate__(self, state: dict) -> None:
        if set(state) == {"source"}:
            self.__dict__.update(ProposalStore.load(state["source"]).__dict__)
        else:
            self.__dict__.update(state, _id_list=None)


def upgrade_store(path: str | Path) -> bool:
    """Rewrite a version-1 (compressed) store at ``path`` as version 2, streaming its members (the
    arrays are never all in memory); the bytes equal those of a fresh version-2 write of the same
    content. Returns False (and does nothing) when the file is version 2 already."""
    path = Path(path)
    if _open_mapped(path) is not None:
        return False
    with zipfile.ZipFile(path) as zf:
        names = {i.filename[:-4] for i in zf.infolist() if i.filename.endswith(".npy")}
        small = {}
        for name in ("image_ids", "offsets", "meta"):
            if name in names:
                with zf.open(f"{name}.npy") as f:
                    small[name] = np.lib.format.read_array(f, allow_pickle=False)
        offsets = np.asarray(small["offsets"], np.int64)
        meta = json.loads(str(small["meta"])) if "meta" in small else {}

        def rows(name: str):
            f = zf.open(f"{name}.npy")
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f, max_header_size=10000)
            if dtype.hasobject or fortran:
                raise ValueError(f"{path}: {name}: object or Fortran-ordered array refused")
            width = int(np.prod(shape[1:], dtype=np.int64))
            return f, dtype, width

        bf, bdtype, _ = rows("boxes")
        sf, sdtype, _ = rows("scores") if "scores" in names else (None, None, None)
        dtype = np.dtype(np.uint16) if bdtype == np.uint16 else np.dtype(np.float32)
        counts = np.diff(offsets)
        with StoreWriter(path, small["image_ids"], counts, dtype, sf is not None, meta) as w:
            for n in counts.tolist():
                boxes = np.frombuffer(bf.read(n * 4 * bdtype.itemsize), bdtype).reshape(-1, 4)
                scores = None if sf is None else np.frombuffer(sf.read(n * sdtype.itemsize), sdtype)
                w.add(boxes.astype(dtype, copy=False), scores)
        bf.close()
        if sf is not None:
            sf.close()
    log.info("%s: rewritten as a memory-mapped store (format version %d)", path, FORMAT_VERSION)
    return True
