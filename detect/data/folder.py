"""Image files: finding a dataset's images by name (:class:`ImageFinder`, which every reader uses), and
image folders as a dataset without ground truth.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from pathlib import Path

from PIL import Image

from detect.classes import ClassList
from detect.data.images import IMAGE_EXTENSIONS
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog

log = logging.getLogger(__name__)

__all__ = ["ImageFinder", "image_size", "is_image_name", "list_images", "read_image_folder", "size_from_image"]

EXIF_ORIENTATION = 0x0112  # the EXIF tag of the orientation


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (any letter case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _split_image_name(name: str) -> tuple[str, str]:
    """``"a/b.JPG"`` -> ``("a/b", ".JPG")``; a name without an image extension is all stem."""
    stem, ext = os.path.splitext(name)
    return (stem, ext) if ext.lower() in IMAGE_EXTENSIONS else (name, "")


def leaves_folder(name: str) -> bool:
    """True when a dataset-relative name (a list entry, a COCO ``file_name``) could point outside its folder:
    an absolute path, a drive, or a ``..`` part. Readers refuse those."""
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in n.split("/")


class ImageFinder:
    """Finds the image files of a dataset under ``folder`` by name, from one listing per sub-folder (not one
    ``stat`` or glob per image), whatever the extension and its case (``IMG_0001`` -> ``IMG_0001.JPG``,
    ``.jpeg``, ``.png`` ...). ``expected``: the dataset's usual extension (``".JPEG"`` for ILSVRC), preferred
    when several files share a stem and named in error messages."""

    def __init__(self, folder: str | Path, expected: str = ".jpg"):
        self.folder = Path(folder)
        self.expected = expected
        self._prefix = os.path.join(str(self.folder), "")  # plain string joins: pathlib is slow per image
        self._dirs: dict[str, tuple[set[str], dict[str, list[str]]]] = {}

    def _listing(self, sub: str) -> tuple[set[str], dict[str, list[str]]]:
        """(all file names, image stem -> image file names) of ``folder/sub``, listed once."""
        if sub not in self._dirs:
            files: set[str] = set()
            stems: dict[str, list[str]] = {}
            with (contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError),
                  os.scandir(self.folder / sub if sub else self.folder) as it):
                for entry in it:
                    with contextlib.suppress(OSError):  # is_file() may raise: such an entry is left out
                        if entry.is_file():
                            files.add(entry.name)
            for name in files:
                stem, ext = _split_image_name(name)
                if ext:
                    stems.setdefault(stem, []).append(name)
            self._dirs[sub] = (files, stems)
        return self._dirs[sub]

    def _rank(self, file_name: str, wanted_ext: str) -> tuple:
        ext = os.path.splitext(file_name)[1]
        return (ext != wanted_ext, ext.lower() != wanted_ext.lower(), IMAGE_EXTENSIONS.index(ext.lower()), file_name)

    def find(self, name: str) -> Path | None:
        """The image file for ``name`` (with or without an extension, possibly with sub-folders; one with an
        extension is first looked up exactly); ``None`` for an unknown stem; ``ValueError`` if it leaves the folder."""
        if leaves_folder(name):
            raise ValueError(f"{name!r}: image name points outside {self.folder}")
        sub, _, base = name.replace("\\", "/").rpartition("/")
        files, stems = self._listing(sub)
        if base in files and is_image_name(base):
            return Path(self._prefix + name)
        stem, ext = _split_image_name(base)
        candidates = stems.get(stem)
        if not candidates:
            return None
        best = min(candidates, key=lambda f: self._rank(f, ext or self.expected))
        return Path(self._prefix + (f"{sub}/{best}" if sub else best))

    def find_all(self, names: list[str], check: bool, max_missing: float) -> list[Path | None]:
        """:meth:`find` for every name (``None`` where not found); with ``check``, more than ``max_missing``
        (a share) of them missing raises :meth:`check_missing`'s ``FileNotFoundError``."""
        found = [self.find(name) for name in names]
        if check:
            self.check_missing([n for n, p in zip(names, found) if p is None], len(names), max_missing)
        return found

    def default_path(self, name: str) -> Path:
        """``folder/<name><expected>`` (``folder/<name>`` when it has an extension), for an image not found."""
        return Path(self._prefix + (name if _split_image_name(name)[1] else name + self.expected))

    def describe_missing(self, missing: list[str], total: int) -> str:
        """One line saying how many of ``total`` images were not found, as what, and what the folder
        holds instead (same stems with another extension, other letter case, or nothing)."""
        shown = f"<name>{self.expected}" if not any(_split_image_name(n)[1] for n in missing[:1]) else "<file_name>"
        text = (f"{len(missing)} of {total} images not found in {self.folder} as {shown} "
                f"(any letter case of {', '.join(IMAGE_EXTENSIONS)})")
        if not self.folder.is_dir():
            return f"{text}; the folder does not exist"
        other_ext, other_case, by_sub = Counter(), 0, {}
        for name in missing:
            sub, _, base = name.replace("\\", "/").rpartition("/")
            if sub not in by_sub:  # any file by exact stem, and the lower-cased stems, of each folder once
                files = sorted(self._listing(sub)[0])
                by_sub[sub] = ({os.path.splitext(f)[0]: f for f in reversed(files)},
                               {os.path.splitext(f)[0].lower() for f in files})
            by_stem, lowered = by_sub[sub]
            stem = _split_image_name(base)[0]
            if stem in by_stem:
                other_ext[os.path.splitext(by_stem[stem])[1] or "(no extension)"] += 1
            elif stem.lower() in lowered:
                other_case += 1
        hints = [f"found <name>{ext} for {n} (not a supported image extension)" for ext, n in other_ext.most_common(3)]
        if other_case:
            hints.append(f"found {other_case} with the name in another letter case")
        if not hints:
            files = sorted(self._listing("")[0])
            hints.append(f"the folder holds {len(files)} files" + (f", e.g. {', '.join(files[:3])}" if files else ""))
        return f"{text}; {'; '.join(hints)}"

    def check_missing(self, missing: list[str], total: int, max_share: float) -> None:
        """Raise ``FileNotFoundError`` (:meth:`describe_missing`) when more than ``max_share`` of ``total``
        images (or all) are missing; else log a warning."""
        if not missing:
            return
        text = self.describe_missing(missing, total)
        if len(missing) == total or len(missing) > max_share * total:
            raise FileNotFoundError(f"{text}; stopping (more than {max_share:.0%} missing)")
        log.warning("%s; they are skipped", text)


def list_images(paths) -> list[Path]:
    """Image files among ``paths`` (files, or folders searched recursively), sorted per argument, without
    duplicates; ``FileNotFoundError`` naming a path that does not exist."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = {}  # the resolved path -> the path as found first
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(Path(folder) / f for folder, _, files in os.walk(p) for f in files if is_image_name(f))
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in found:
            out.setdefault(f.resolve(), f)
    return list(out.values())


def read_image_folder(paths, classes: ClassList | None = None) -> DetectionDataset:
    """Records without boxes for the images under ``paths`` (:func:`list_images`; unreadable ones skipped
    and counted); ``image_id`` is the file's path as found, ``index`` 1-based."""
    skipped = SkipLog("images")
    records = []
    for f in list_images(paths):
        try:
            width, height = image_size(f)
        except ValueError as e:
            skipped.add(f, f"unreadable image: {e}")
            continue
        records.append(DetectionRecord(str(f), f, width, height, [], [], [], len(records) + 1))
    if len(skipped):
        log.warning("%s", skipped.summary())
    return DetectionDataset(records, classes or ClassList((), ()), name="folder", skipped=skipped)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, EXIF rotation applied (as ``read_image`` does);
    ``ValueError`` naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable image header ({e})") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: image too large ({e})") from None
    return width, height


def size_from_image(image_path: Path, annotation: str | Path, reason: str, warnings: SkipLog) -> tuple[int, int]:
    """``(width, height)`` from the image header for an annotation whose own size is unusable (``reason``),
    counted in ``warnings``; ``(0, 0)`` (unknown, also counted) when the image is absent or unreadable."""
    if not os.path.isfile(image_path):
        warnings.add(annotation, f"size unknown: {reason}, and no image {Path(image_path).name}")
        return 0, 0
    try:
        width, height = image_size(image_path)
    except ValueError as e:
        warnings.add(annotation, f"size unknown: {reason}, and {e}")
        return 0, 0
    warnings.add(annotation, f"size repaired from the image: {reason}; {width}x{height} from {Path(image_path).name}")
    return width, height
