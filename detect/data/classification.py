"""ImageNet-style classification data: class folders, or a flat folder with a labels file.

Layouts read by :func:`read_split`:
- class folders: ``<image_dir>/<wnid>/*.JPEG`` (any image extension);
- a flat folder plus ``labels_file`` with ``<file> <label>`` lines, the label a wnid / class name or a
  0-based index, or the ILSVRC2012 ground-truth form: one 1-based class id per line, line ``i`` for
  the ``i``-th image of the folder in sorted order.
Classes come from a class-list file (``detect.classes.read_class_list``: ``classes.tsv``, the ILSVRC
lists) or, without one, from the sorted folder names.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detect.classes import ClassList
from detect.distributed import DistributedContext
from detect.runtime import worker_threads
from detect.data.folder import is_image_name
from detect.data.images import SampleError, read_image
from detect.data.records import SkippedItem, as_class_list, text_lines

log = logging.getLogger(__name__)

__all__ = ["ClassificationSplit", "ClassificationDataset", "ClassificationBatch", "read_split", "collate_skip", "make_loader"]


@dataclass
class ClassificationSplit:
    """``samples``: ``[(image path, 0-based label)]``; ``classes``: the class list the labels index."""

    samples: list[tuple[Path, int]]
    classes: ClassList
    root: Path

    def __len__(self) -> int:
        return len(self.samples)


def _is_image(p: Path) -> bool:
    return p.is_file() and is_image_name(p.name)


def _folder_classes(folders: list[Path], root: Path, labels_file) -> ClassList:
    """The classes without a class list: the sorted class folder names (a flat folder has none)."""
    if labels_file is not None:
        raise ValueError(f"{labels_file}: a flat image folder needs a class list (classes=...)")
    if not folders:
        raise ValueError(f"{root}: no class folders and no class list given")
    return ClassList.from_names(sorted(p.name for p in folders))


def _parse_label(token: str, classes: ClassList, where: str, one_based: bool) -> int:
    if token in classes:
        return classes.index(token)
    try:
        index = int(token) - (1 if one_based else 0)
    except ValueError:
        raise ValueError(f"{where}: unknown class {token!r}") from None
    if not 0 <= index < len(classes):
        raise ValueError(f"{where}: label {token} outside the {len(classes)} classes")
    return index


def read_split(image_dir: str | Path, classes: ClassList | str | Path | None = None,
               labels_file: str | Path | None = None) -> ClassificationSplit:
    """The images of one split with their labels (module docstring); ``FileNotFoundError`` / ``ValueError``
    naming the folder or file and line for a missing folder, an unknown class folder or label, no image."""
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    samples: list[tuple[Path, int]] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if labels_file is None else []
    cl = as_class_list(classes, lambda: _folder_classes(folders, root, labels_file))
    if labels_file is None:
        for folder in folders:
            if folder.name not in cl:
                raise ValueError(f"{folder}: folder is not a class of the class list ({len(cl)} classes)")
            samples += [(p, cl.index(folder.name)) for p in sorted(folder.iterdir()) if _is_image(p)]
    else:
        lines = text_lines(labels_file, "labels file", comments=True)
        if lines and all(len(parts) == 1 for _, parts in lines):  # ILSVRC2012 ground truth: 1-based ids
            images = sorted(p for p in root.iterdir() if _is_image(p))
            if len(images) != len(lines):
                raise ValueError(f"{labels_file}: {len(lines)} labels but {len(images)} images in {root}")
            samples = [(p, _parse_label(parts[0], cl, f"{labels_file}:{n}", one_based=True))
                       for p, (n, parts) in zip(images, lines)]
        else:
            for n, parts in lines:
                if len(parts) < 2:
                    raise ValueError(f"{labels_file}:{n}: expected '<file> <label>', got {' '.join(parts)!r}")
                samples.append((root / parts[0], _parse_label(parts[1], cl, f"{labels_file}:{n}", one_based=False)))
    if not samples:
        raise ValueError(f"{root}: no images found")
    log.info("%s: %d images of %d classes", root, len(samples), len(cl))
    return ClassificationSplit(samples, cl, root)


class ClassificationDataset(Dataset):
    """``dataset[i] -> (Tensor image, int label)``, or a :class:`SkippedItem` when the image cannot be read
    (reported; :func:`collate_skip` drops it). transform: ``ndarray[H, W, 3] uint8 -> Tensor``."""

    def __init__(self, split: ClassificationSplit, transform: Callable):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        path, label = self.split.samples[i]
        try:
            return self.transform(read_image(path)), label
        except SampleError as e:  # ImageError names the file; settings errors are not caught
            log.warning("skipped %s", e)
            return SkippedItem(str(path), str(e))


class ClassificationBatch(NamedTuple):
    """images ``Tensor[B, ...] float32``, labels ``Tensor[B] int64``; ``dropped``: unreadable samples removed,
    ``skipped``: their :class:`SkippedItem` entries."""

    images: torch.Tensor
    labels: torch.Tensor
    dropped: int = 0
    skipped: tuple = ()


def collate_skip(items: list) -> ClassificationBatch:
    """Stack ``(image, label)`` items, dropping :class:`SkippedItem` (unreadable) ones; an all-unreadable
    batch is empty (``B = 0``), which the engine skips and counts."""
    good = [it for it in items if not isinstance(it, SkippedItem)]
    skipped = tuple(it for it in items if isinstance(it, SkippedItem))
    images = torch.stack([im for im, _ in good]) if good else torch.empty(0)
    labels = torch.tensor([lb for _, lb in good], dtype=torch.long)
    return ClassificationBatch(images, labels, len(skipped), skipped)


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, ctx: DistributedContext,
                seed: int = 0) -> DataLoader:
    """A DataLoader with :func:`collate_skip`: shuffled (seeded) and with full batches only for
    training; split over the processes by a DistributedSampler when ``ctx`` is distributed
    (``batch_size`` is per process)."""
    sampler, generator = None, None
    if ctx.distributed:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=train,
                                     seed=seed, drop_last=train)
    elif train:
        generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate_skip, drop_last=train, generator=generator,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=False, worker_init_fn=worker_threads)
