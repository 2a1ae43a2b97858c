"""Dataset splits: the held-out monitoring share of a training split, and what outputs are called.

Blocks and splits. A data config (``conf/data/<name>.yaml``) has three reader blocks that the tools
take by name (``split=train|monitor|val``): ``train``, what the trainers learn from; ``monitor``, what
they watch while training (held-out region accuracy, MultiBox coverage), for a real dataset a seeded
share of its training split (:func:`holdout_part`), so that the test split is touched only by the final
detection and evaluation; ``val``, the evaluation split (VOC ``test``, COCO ``val2017``, ILSVRC ``val``).

Output names. Files derived from a block (proposal stores, detections, evaluation reports) are named
after the dataset's own split, never after the block: ``split_names`` in the data config maps each
block to it (VOC: ``train``/``monitor`` -> ``trainval``, ``val`` -> ``test``), and
:func:`output_stem` gives ``<data.name>_<split name>`` (``voc_test``). Both held-out parts of a
training split share its name: a proposal store holds the whole split and serves both. An evaluation
under other rules than the data's own adds them (``eval_coco_val2017_voc.json``, :func:`evaluation_paths`),
so that scoring one file under two sets of rules keeps both reports.

The holdout. Image ``i`` goes to the monitoring part when ``h(seed, image_id) < fraction``, ``h``
a sha256 of the seed and the image id mapped to [0, 1): the choice of an image depends on nothing
but its own id, so it is stable when images are added, removed or reordered, and the two parts are
disjoint and together cover every image. Only when the draw leaves a part empty (tiny sets) is the
image with the smallest (or largest) ``h`` moved over, so that neither part is ever empty.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from detect.data.records import DetectionDataset

log = logging.getLogger(__name__)

__all__ = ["BLOCKS", "HeldOutPart", "holdout_key", "holdout_part", "split_name", "output_stem",
           "proposal_store_path", "detections_path", "evaluation_paths"]

BLOCKS = ("train", "monitor", "val")  # the reader blocks every data config has
PARTS = ("train", "monitor")


def holdout_key(seed: int, image_id: str) -> float:
    """The holdout draw of one image: a number in [0, 1) fixed by ``seed`` and ``image_id`` alone."""
    digest = hashlib.sha256(f"{int(seed)}\x00{image_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@dataclass
class HeldOutPart(DetectionDataset):
    """One part of a training split (see the module docstring); ``whole`` is the split it came from.
    Records keep their ``index`` in ``whole`` (so proposal stores and blacklists still apply)."""

    whole: DetectionDataset | None = None
    part: str = "train"


def holdout_part(source: DetectionDataset, part: str, fraction: float, seed: int = 0) -> HeldOutPart:
    """The ``part`` (``"train"`` or ``"monitor"``) of ``source`` when a share ``fraction`` (strictly between
    0 and 1) of its images is drawn into ``monitor``; ``ValueError`` naming the setting for a bad fraction
    or part, or a ``source`` of fewer than 2 images."""
    if part not in PARTS:
        raise ValueError(f"holdout part {part!r}: expected one of {PARTS}")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"data.holdout.fraction={fraction}: the held-out share must be strictly between 0 and 1")
    records = source.records
    if len(records) < 2:
        raise ValueError(f"{source.name}: {len(records)} image(s); at least 2 are needed to hold a monitoring "
                         "share out of the training split")
    keys = [holdout_key(seed, r.image_id) for r in records]
    held = [k < fraction for k in keys]
    if not any(held):
        held[keys.index(min(keys))] = True
    if all(held):
        held[keys.index(max(keys))] = False
    chosen = [r for r, h in zip(records, held) if h == (part == "monitor")]
    indices = {r.index for r in chosen}
    blacklist = {(i, label) for i, label in source.blacklist if i in indices}
    log.info("%s: %s part, %d of %d images (held-out share %.3f, seed %d)", source.name, part, len(chosen),
             len(records), fraction, seed)
    return HeldOutPart(chosen, source.classes, name=f"{source.name}:{part}", blacklist=blacklist,
                       skipped=source.skipped, warnings=source.warnings, whole=source, part=part)


def _reader_blocks(data: Mapping) -> list[str]:
    """The keys of ``data`` that are reader blocks (a mapping with ``_target_``); unset values skipped."""
    blocks = []
    for key in data:
        try:
            value = data[key]
        except Exception:  # an unset mandatory value (root: ???) is no block
            continue
        if isinstance(value, Mapping) and "_target_" in value:
            blocks.append(key)
    return blocks


def split_name(data: Mapping, block: str) -> str:
    """The dataset's own name of the split that ``block`` of ``data`` reads: ``data.split_names[block]``
    (a list joined by ``+``), else the block name."""
    if block not in _reader_blocks(data):
        raise ValueError(f"split={block}: data={data.get('name')} has no such reader block "
                         f"(blocks: {_reader_blocks(data)})")
    name = (data.get("split_names") or {}).get(block, block)
    if isinstance(name, Sequence) and not isinstance(name, str):  # several splits read as one: train+valid
        return "+".join(str(n) for n in name)
    return str(name)


def output_stem(data: Mapping, block: str) -> str:
    """``<data.name>_<split name>``: the stem of every file made from ``block`` (e.g. ``voc_test``)."""
    return f"{data['name']}_{split_name(data, block)}"


def proposal_store_path(proposals_dir: str | Path, data: Mapping, block: str, method: str) -> Path:
    """Where tools/propose.py writes the proposals of ``block`` made by ``method`` (a proposer's name)."""
    return Path(proposals_dir) / f"{output_stem(data, block)}_{method}.npz"


def detections_path(detections_dir: str | Path, data: Mapping, block: str) -> Path:
    """Where tools/detect_dataset.py writes the detections of ``block`` (ILSVRC submission; ``.json`` beside it)."""
    return Path(detections_dir) / f"{output_stem(data, block)}.txt"


def evaluation_paths(eval_dir: str | Path, data: Mapping, block: str, rules: str, own_rules: str) -> tuple[Path, Path]:
    """``(report .json, PR curves .png)`` that tools/eval_map.py writes for ``block`` scored by ``rules``:
    ``eval_<stem>.json`` / ``pr_<stem>.png`` under the data's ``own_rules``, else ``eval_<stem>_<rules>...``."""
    stem = output_stem(data, block) + ("" if rules == own_rules else f"_{rules}")
    return Path(eval_dir) / f"eval_{stem}.json", Path(eval_dir) / f"pr_{stem}.png"
