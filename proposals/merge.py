"""The union of several proposal sources (selective search plus the top MultiBox boxes), de-duplicated."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchvision import ops

from detect.boxes import unique_boxes
from proposals.base import Proposals, Proposer

__all__ = ["UnionProposer", "union_boxes"]


def _cap(p: Proposals, cap: int | None) -> Proposals:
    """The first ``cap`` boxes; by descending score when the source has scores."""
    order = (np.arange(len(p)) if p.scores is None else np.argsort(-p.scores, kind="stable"))[:cap]
    return Proposals(p.boxes[order], None if p.scores is None else p.scores[order])


def union_boxes(parts: Sequence[np.ndarray], dedup_iou: float | None = None) -> np.ndarray:
    """Concatenate ``float32[N_i, 4]`` boxes in order and drop duplicates -> indices ``int64[K]`` (ascending):
    exact duplicates after rounding to whole pixels (the first occurrence stays) and, with ``dedup_iou``,
    every box whose IoU with an earlier kept box exceeds it."""
    boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in parts]) if parts else np.zeros((0, 4), np.float32)
    keep = unique_boxes(boxes)
    if dedup_iou is not None and len(keep) > 1:
        # NMS with scores that fall with position = greedy "keep unless close to an earlier kept box"
        rank = torch.arange(len(keep), 0, -1, dtype=torch.float32)
        kept = ops.nms(torch.from_numpy(boxes[keep]).float(), rank, float(dedup_iou)).numpy()
        keep = np.sort(keep[kept])
    return keep.astype(np.int64)


class UnionProposer:
    """``image -> Proposals``: every source's boxes (each capped) in source order, duplicates removed.

    sources: proposers (e.g. ``SelectiveSearch``, ``MultiBoxProposer``); caps: per source, the number of
        boxes kept (by score when it has scores, else its own order), None = all.
    dedup_iou: also drop boxes whose IoU with an earlier kept box exceeds this (None: exact duplicates only).
    Scores: kept only when every source has scores, else None. ``name`` joins the sources' names.
    """

    def __init__(self, sources: Sequence[Proposer], caps: Sequence[int | None] | None = None,
                 dedup_iou: float | None = None, name: str | None = None):
        sources = list(sources)
        caps = [None] * len(sources) if caps is None else list(caps)
        if not sources:
            raise ValueError("UnionProposer needs at least one source")
        if len(caps) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(caps)} caps")
        self.sources, self.caps, self.dedup_iou = sources, caps, dedup_iou
        self.name = self.name_for({"caps": caps, "name": name}, [s.name for s in sources])

    spec_input, spec_args = "sources", ("sources",)  # proposals.spec: a union's spec holds its sources' specs

    @staticmethod
    def name_for(params: dict, source_names: Sequence[str]) -> str:
        """The store-file name of a union (``params``: caps, name): ``name``, else the sources' names
        joined, each with its cap."""
        caps = [None] * len(source_names) if params["caps"] is None else list(params["caps"])
        return params["name"] or "+".join(n if c is None else f"{n}{c}" for n, c in zip(source_names, caps))

    def spec_params(self) -> dict:
        """Constructor arguments besides the sources (plain values; see :mod:`proposals.spec`)."""
        return {"caps": list(self.caps), "dedup_iou": self.dedup_iou, "name": self.name}

    def __call__(self, image: np.ndarray) -> Proposals:
        """``image: ndarray[H, W, 3] uint8`` RGB -> ``Proposals(boxes float32[N, 4], scores float32[N] | None)``."""
        parts = [_cap(src(image), cap) for src, cap in zip(self.sources, self.caps)]
        keep = union_boxes([p.boxes for p in parts], self.dedup_iou)
        boxes = np.concatenate([p.boxes for p in parts])[keep]
        with_scores = all(p.scores is not None for p in parts)
        return Proposals(boxes, np.concatenate([p.scores for p in parts])[keep] if with_scores else None)
