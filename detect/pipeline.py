"""The detector: image -> proposals -> warped crops -> ensemble softmax -> per-class NMS -> detections.

A detector checkpoint (``bundle_detector``) is one file holding every member's ``model_kwargs`` and
``model_state``, the class list and the detector settings (crop size, context, NMS, proposer
config); it loads with ``weights_only=True``.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision import ops

from detect.backends import make_scorers
from detect.classes import ClassList
from detect.data.images import read_image
from detect.distributed import resolve_device
from detect.io import atomic_torch_save, load_checkpoint
from detect.models.googlenet import IMAGENET_MEAN, IMAGENET_STD, GoogLeNet
from detect.region import Ensemble, normalize_image, warp_regions

log = logging.getLogger(__name__)

__all__ = ["DetectionResult", "Detector", "per_class_nms", "bundle_detector", "DETECTOR_FORMAT"]

DETECTOR_FORMAT = "googlenet-detector-v1"


@dataclass
class DetectionResult:
    """Detections of one image, best first: boxes ndarray[K, 4] float32 xyxy pixels, scores ndarray[K]
    float32, labels ndarray[K] int64 (0-based classes)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def per_class_nms(boxes: Tensor, probs: Tensor, nms_iou: float = 0.3, score_threshold: float = 0.01,
                  max_per_image: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """R-CNN's post-processing: each class column is thresholded and suppressed on its own.

    boxes: Tensor[N, 4] xyxy; probs: Tensor[N, C + 1] (column 0 background).
    returns (boxes Tensor[K, 4], scores Tensor[K], labels Tensor[K] int64 0-based), score-descending,
    K <= max_per_image.
    """
    scores = probs[:, 1:]
    rows, cols = torch.where(scores >= score_threshold)
    cand_boxes, cand_scores = boxes[rows].float(), scores[rows, cols].float()
    keep = ops.batched_nms(cand_boxes, cand_scores, cols, nms_iou)[:max_per_image]
    return cand_boxes[keep], cand_scores[keep], cols[keep].long()


class Detector:
    """The GoogLeNet detector of ILSVRC 2014, R-CNN style.

    proposer: callable ``ndarray[H, W, 3] uint8 -> Proposals`` (or None when proposals are always passed in)
    ensemble: :class:`detect.region.Ensemble` (member outputs: background + ``len(classes)`` columns)
    classes: ClassList; crop_size, context: the warp (see :func:`detect.region.warp_regions`);
    nms_iou, score_threshold, max_per_image: :func:`per_class_nms`; batch_size: crops per forward;
    min_size: proposals narrower or shorter than this (pixels, after clipping) are dropped;
    device: "auto", "cpu", "cuda", ...; channels_last: NHWC convolutions (helps on CUDA).
    """

    def __init__(self, proposer: Callable | None, ensemble: Ensemble, classes: ClassList, crop_size: int = 224,
                 context: int = 16, nms_iou: float = 0.3, score_threshold: float = 0.01, max_per_image: int = 100,
                 batch_size: int = 128, device: str | torch.device = "cpu", min_size: float = 2.0,
                 channels_last: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, config: dict | None = None):
        self.proposer = proposer
        self.classes = classes
        self.crop_size, self.context = crop_size, context
        self.nms_iou, self.score_threshold, self.max_per_image = nms_iou, score_threshold, max_per_image
        self.batch_size, self.min_size = batch_size, min_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.ensemble = ensemble.to(self.device).eval()
        if channels_last:
            self.ensemble.to(memory_format=torch.channels_last)
        self.config = dict(config or {})

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """The live proposer's boxes for ``image``: ndarray[N, 4] float32."""
        if self.proposer is None:
            raise ValueError("this detector has no proposer: pass the proposals in")
        return np.asarray(self.proposer(image).boxes, dtype=np.float32).reshape(-1, 4)

    @torch.inference_mode()
    def score(self, image: np.ndarray, boxes: np.ndarray | Tensor) -> Tensor:
        """Ensemble probabilities of the warped ``boxes: [N, 4]`` of ``image: ndarray[H, W, 3] uint8``.

        returns Tensor[N, C + 1] float32 on the detector's device. Crops are warped and scored
        ``batch_size`` at a time (all of an image's crops at once would not fit in memory).
        """
        tensor = normalize_image(image, self.mean, self.std, self.device)
        boxes = torch.as_tensor(np.asarray(boxes, np.float32) if not isinstance(boxes, Tensor) else boxes,
                                dtype=torch.float32, device=self.device).reshape(-1, 4)
        out = []
        for i in range(0, len(boxes), self.batch_size):
            crops = warp_regions(tensor, boxes[i:i + self.batch_size], self.crop_size, self.context)
            if self.channels_last:
                crops = crops.contiguous(memory_format=torch.channels_last)
            out.append(self.ensemble(crops))
        if not out:
            return torch.zeros((0, len(self.classes) + 1), device=self.device)
        return torch.cat(out)

    def detect(self, image: np.ndarray, proposals: np.ndarray | None = None) -> DetectionResult:
        """Detections of ``image: ndarray[H, W, 3] uint8`` RGB, from ``proposals: ndarray[N, 4]`` xyxy
        (e.g. a ProposalStore entry) or, when None, from the live proposer."""
        height, width = image.shape[:2]
        boxes = self.proposals(image) if proposals is None else np.asarray(proposals, np.float32).reshape(-1, 4)
        boxes = torch.from_numpy(np.ascontiguousarray(boxes)).to(self.device)
        boxes = ops.clip_boxes_to_image(boxes, (height, width))
        boxes = boxes[ops.remove_small_boxes(boxes, self.min_size)] if len(boxes) else boxes
        probs = self.score(image, boxes)
        if probs.shape[1] != len(self.classes) + 1:
            raise ValueError(f"the ensemble gives {probs.shape[1]} columns for {len(self.classes)} classes + background")
        b, s, l = per_class_nms(boxes, probs, self.nms_iou, self.score_threshold, self.max_per_image)
        return DetectionResult(b.cpu().numpy().astype(np.float32), s.cpu().numpy().astype(np.float32),
                               l.cpu().numpy().astype(np.int64))

    __call__ = detect

    def detect_many(self, items: Iterable[tuple[Any, Any, np.ndarray | None]], prefetch: int = 2
                    ) -> Iterator[tuple[Any, np.ndarray | None, DetectionResult | None, Exception | None]]:
        """Detect over ``items`` = ``(key, image path, cached proposals or None)``, yielding
        ``(key, image, result, None)``, or ``(key, None, None, error)`` for an image that cannot be used.

        Reading the next images and computing their proposals (OpenCV and ONNX Runtime release the GIL)
        runs in a background thread, ``prefetch`` images ahead, while the current image's crops are
        scored, so the scoring device does not wait for selective search.
        """
        def prepare(path, cached):
            image = read_image(path)
            boxes = self.proposals(image) if cached is None else np.asarray(cached, np.float32).reshape(-1, 4)
            return image, boxes

        items = iter(items)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: deque = deque()
            for key, path, cached in itertools.islice(items, prefetch + 1):
                pending.append((key, pool.submit(prepare, path, cached)))
            while pending:
                key, future = pending.popleft()
                nxt = next(items, None)
                if nxt is not None:
                    pending.append((nxt[0], pool.submit(prepare, nxt[1], nxt[2])))
                try:
                    image, boxes = future.result()
                    result = self.detect(image, boxes)
                except ValueError as e:  # ImageError names the file; proposer refusals
                    yield key, None, None, e
                    continue
                yield key, image, result, None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", proposer: Any = "stored",
                        backend: str = "auto", amp: str = "auto", onnx_cache: str | Path | None = None,
                        **overrides) -> "Detector":
        """Load a :func:`bundle_detector` file.

        proposer: "stored" builds the proposer recorded in the checkpoint (``config["proposer"]``, a
        Hydra ``_target_`` dict; None when there is none); anything else (a callable or None) replaces it.
        backend: "auto" (ONNX Runtime on a CPU, eager torch on a GPU), "torch" or "onnxruntime"
        (:mod:`detect.backends`); amp: autocast on CUDA ("auto" = bf16 where supported, "none" = off);
        onnx_cache: folder of the cached ONNX exports (default: ``<path>.onnx/`` beside the checkpoint).
        overrides: Detector settings replacing the stored ones (e.g. ``score_threshold=0.1``,
        ``cascade_threshold=0.2``, ``members=[0]``).
        """
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != DETECTOR_FORMAT:
            raise ValueError(f"{path}: not a detector checkpoint (format {DETECTOR_FORMAT!r}); "
                             "build one with tools/train_region.py's bundle step")
        config = dict(ckpt.get("config", {}))
        settings = {k: config[k] for k in ("crop_size", "context", "nms_iou", "score_threshold", "max_per_image",
                                           "batch_size", "min_size", "mean", "std") if k in config}
        cascade = overrides.pop("cascade_threshold", config.get("cascade_threshold"))
        use = overrides.pop("members", None)
        settings.update(overrides)
        member_entries = ckpt["members"] if use is None else [ckpt["members"][i] for i in use]
        members = []
        for k, entry in enumerate(member_entries):
            model = GoogLeNet(**{**dict(entry["model_kwargs"]), "init_weights": False})
            try:
                model.load_state_dict(entry["model_state"])
            except RuntimeError as e:
                raise ValueError(f"{path}: member {k} weights do not fit its model_kwargs ({e})") from e
            members.append(model.eval())
        classes = ClassList(tuple(ckpt["classes"]["wnids"]), tuple(ckpt["classes"]["names"]))
        if isinstance(proposer, str) and proposer == "stored":
            proposer = None
            if config.get("proposer"):
                from hydra.utils import instantiate  # the stored proposer is a _target_ config
                proposer = instantiate(config["proposer"])
        device = resolve_device(device)
        crop_size = int(settings.get("crop_size", 224))
        scorers = make_scorers(members, backend, device, crop_size, amp=amp,
                               cache_dir=onnx_cache or Path(f"{path}.onnx"))
        return cls(proposer, Ensemble(scorers, cascade), classes, device=device, config=config, **settings)


def bundle_detector(members: Sequence[dict], classes: ClassList, config: dict, path: str | Path) -> dict:
    """Write one detector file from member checkpoints (dicts with ``model_kwargs`` and ``model_state``).

    config: plain values only (crop_size, context, nms_iou, score_threshold, max_per_image, batch_size,
    cascade_threshold, proposer ``_target_`` dict, ...). Returns the saved dict.
    """
    if not members:
        raise ValueError("a detector needs at least one member checkpoint")
    entries = []
    for k, ckpt in enumerate(members):
        if "model_kwargs" not in ckpt or "model_state" not in ckpt:
            raise ValueError(f"member {k}: checkpoint lacks model_kwargs / model_state")
        kwargs = {**dict(ckpt["model_kwargs"]), "aux_logits": False}  # aux heads are for training only
        if kwargs.get("num_classes") != len(classes) + 1:
            raise ValueError(f"member {k}: {kwargs.get('num_classes')} outputs, expected {len(classes) + 1} "
                             f"({len(classes)} classes + background)")
        state = dict(ckpt["model_state"])
        if any(n.startswith("module.") for n in state):  # DDP / AveragedModel prefixes
            state = {n[len("module."):]: t for n, t in state.items() if n.startswith("module.")}
        state = {n: t.detach().cpu() for n, t in state.items() if not n.startswith(("aux1.", "aux2."))}
        entries.append({"model_kwargs": kwargs, "model_state": state})
    obj = {"format": DETECTOR_FORMAT, "members": entries,
           "classes": {"wnids": list(classes.wnids), "names": list(classes.names)}, "config": dict(config)}
    atomic_torch_save(obj, path)
    return obj
