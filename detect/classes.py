"""Class lists. The ILSVRC DET list (200 classes, DET_ID 1..200, official order) ships as package data;
other datasets carry their own classes (VOC names, COCO categories, a ``classes.tsv`` of ours).

Labels everywhere in the library are 0-based indices into a :class:`ClassList`; the ILSVRC DET_ID of
label ``i`` is ``i + 1``. Region classifiers put background at index 0 and class ``i`` at ``i + 1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from detect.io import atomic_write_text

__all__ = ["ClassList", "ilsvrc_det_classes", "read_class_list", "write_class_list"]


@dataclass(frozen=True)
class ClassList:
    """An ordered list of classes: ``wnids[i]`` (a stable identifier) and ``names[i]`` (for people)."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.wnids) != len(self.names):
            raise ValueError(f"{len(self.wnids)} class ids but {len(self.names)} names")
        if len(set(self.wnids)) != len(self.wnids):
            raise ValueError("class ids are not unique")

    def __len__(self) -> int:
        return len(self.wnids)

    def index(self, key: str) -> int:
        """0-based label of a class given its id (wnid) or its name; ``KeyError`` when unknown."""
        if key not in self._lookup:
            raise KeyError(f"unknown class {key!r}")
        return self._lookup[key]

    def __contains__(self, key: str) -> bool:
        return key in self._lookup

    @cached_property
    def _lookup(self) -> dict[str, int]:
        """``{name or wnid: label}``, wnids winning over names (computed once per list)."""
        return {**{n: i for i, n in enumerate(self.names)}, **{w: i for i, w in enumerate(self.wnids)}}

    @classmethod
    def from_names(cls, names) -> "ClassList":
        names = tuple(str(n) for n in names)
        return cls(wnids=names, names=names)

    def to_dict(self) -> dict:
        """``{"wnids": [...], "names": [...]}``: how checkpoints and detector files store a class list."""
        return {"wnids": list(self.wnids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, value, source: str = "classes") -> "ClassList":
        """The inverse of :meth:`to_dict`; anything but equally long lists of strings is a ``ValueError``
        naming ``source``."""
        wnids, names = (value.get("wnids"), value.get("names")) if isinstance(value, dict) else (None, None)
        if not (isinstance(wnids, (list, tuple)) and isinstance(names, (list, tuple)) and len(wnids) == len(names)
                and all(isinstance(x, str) for x in [*wnids, *names])):
            raise ValueError(f"{source}: the class list must be equally long lists of wnids and names (strings)")
        try:
            return cls(tuple(wnids), tuple(names))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def _parse_tsv(text: str, source: str) -> ClassList:
    """Parse ``index<TAB>wnid<TAB>name`` rows (header optional, index 1-based and in order),
    ``wnid<TAB>name`` rows, or one name per line."""
    wnids, names = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if lineno == 1 and parts[0].strip().lower() in ("index", "id", "det_id"):
            continue
        if len(parts) >= 3:
            try:
                index = int(parts[0])
            except ValueError as e:
                raise ValueError(f"{source}:{lineno}: first column must be an index, got {parts[0]!r}") from e
            if index != len(wnids) + 1:
                raise ValueError(f"{source}:{lineno}: index {index}, expected {len(wnids) + 1}")
            parts = parts[1:3]
        wnids.append(parts[0].strip())  # a name alone is its own wnid
        names.append(parts[-1].strip())
    if not wnids:
        raise ValueError(f"{source}: no classes")
    return ClassList(tuple(wnids), tuple(names))


def read_class_list(path: str | Path) -> ClassList:
    """Read a class list file (see :func:`_parse_tsv` for the accepted forms)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read class list ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: a class list must be UTF-8 text (byte {e.start}: {e.reason})") from None
    return _parse_tsv(text, str(path))


def write_class_list(classes: ClassList, path: str | Path) -> None:
    """Write ``index wnid name`` rows (the format of the ILSVRC list), atomically."""
    rows = ["index\twnid\tname"] + [f"{i + 1}\t{w}\t{n}" for i, (w, n) in enumerate(zip(classes.wnids, classes.names))]
    atomic_write_text(path, "\n".join(rows) + "\n")


def ilsvrc_det_classes() -> ClassList:
    """The 200 ILSVRC 2014 DET classes in official order (label ``i`` is DET_ID ``i + 1``)."""
    text = resources.files("detect").joinpath("data/ilsvrc_det_classes.tsv").read_text(encoding="utf-8")
    return _parse_tsv(text, "detect/data/ilsvrc_det_classes.tsv")
