"""Prepare a dataset for the chain: class list, a summary of the splits, classification pre-training data.

    python tools/prepare_data.py data=voc data.root=/datasets/VOC2007            # classes.tsv + ground-truth crops
    python tools/prepare_data.py data=coco data.root=/datasets/coco classification=false
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from detect.classes import read_class_list, write_class_list
from detect.data.splits import split_name
from detect.records import OwnedFolder

log = logging.getLogger("prepare_data")


def summary(blocks: dict, classes) -> str:
    """A table: per class, the boxes (ignored ones in brackets) of every block; images per block."""
    names = list(blocks)
    counts = {b: np.bincount(np.concatenate([r.labels[~r.ignore] for r in d.records] or [np.zeros(0, int)]),
                             minlength=len(classes)) for b, d in blocks.items()}
    ignored = {b: sum(int(r.ignore.sum()) for r in d.records) for b, d in blocks.items()}
    width = max([len(n) for n in classes.names] + [5])
    lines = [f"{'class':<{width}} " + " ".join(f"{n:>10s}" for n in names)]
    lines += [f"{classes.names[c]:<{width}} " + " ".join(f"{int(counts[b][c]):10d}" for b in names)
              for c in range(len(classes))]
    lines.append(f"{'boxes':<{width}} " + " ".join(f"{int(counts[b].sum()):10d}" for b in names))
    lines.append(f"{'ignored':<{width}} " + " ".join(f"{ignored[b]:10d}" for b in names))
    lines.append(f"{'images':<{width}} " + " ".join(f"{len(blocks[b]):10d}" for b in names))
    return "\n".join(lines)


def write_classes(classes, path: Path) -> None:
    """Write the class list to ``path`` unless the same list is there; never over a file of someone else's."""
    if path.is_file():
        try:
            if read_class_list(path) == classes:
                return
        except ValueError:
            pass
    OwnedFolder(path.parent, "prepare_data").claim(path.name)
    write_class_list(classes, path)


@hydra.main(config_path="../conf", config_name="prepare_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.data.get("generate") is not None:
        instantiate(cfg.data.generate)
    blocks = {b: instantiate(cfg.data[b]) for b in cfg.blocks}
    first = next(iter(blocks.values()))
    classes = first.classes
    for b, d in blocks.items():
        if d.classes != classes:
            raise ValueError(f"data={cfg.data.name}: block {b} ({split_name(cfg.data, b)}) has {len(d.classes)} classes, "
                             f"block {cfg.blocks[0]} has {len(classes)}; every block must share one class list")
        if not len(d):
            raise ValueError(f"data={cfg.data.name}: block {b} ({split_name(cfg.data, b)}) has no images")
    write_classes(classes, Path(cfg.classes_file))
    header = ", ".join(f"{b} = {split_name(cfg.data, b)}" for b in blocks)
    print(f"{cfg.data.name}: {len(classes)} classes ({header})\n{summary(blocks, classes)}\n"
          f"class list: {cfg.classes_file}", flush=True)
    if cfg.classification:
        if cfg.data_cls.get("generate") is None:
            raise ValueError(f"data_cls={cfg.data_cls.name} has no generate block: nothing to prepare "
                             "(classification=false when pre-training data is given or init= replaces it)")
        instantiate(cfg.data_cls.generate)
        print(f"classification data ({cfg.data_cls.name}): {cfg.data_cls.root}", flush=True)


if __name__ == "__main__":
    main()
