"""The detector: image -> proposals -> warped crops -> ensemble softmax -> per-class NMS -> detections.

A detector file (``bundle_detector``) holds every member's ``model_kwargs`` and ``model_state``, the
class list, the detector settings (:class:`DetectorSettings`) and the proposer as a plain spec with its
MultiBox network embedded (:mod:`proposals.spec`): the file alone is enough on another machine. It is
data: it loads with ``weights_only=True``, and nothing in it can choose code to run (the proposer is
rebuilt only into the project's own proposer classes, member networks only as GoogLeNet). Each
member records the input convention of its weights in its ``model_kwargs`` and scores crops prepared
in it (:mod:`detect.scoring`; a member fine-tuned from BVLC's weights reads BGR 0..255 crops, ours
ImageNet-normalised ones).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision import ops

from detect.backends import as_scorer, make_scorers
from detect.classes import ClassList
from detect.data.images import ImageError, read_image
from detect.distributed import resolve_device
from detect.io import atomic_torch_save, load_checkpoint
from detect.limits import LIMITS, dataclass_from_file
from detect.models.convention import IMAGENET
from detect.models.googlenet import GoogLeNet
from detect.models.weights import model_from_entry, strip_module_prefix
from detect.quantize import Int8Recipe, crops_to_inputs
from detect.scoring import RegionWarp, WarpScorer, usable_boxes
from proposals.spec import build_proposer, check_spec, set_params

log = logging.getLogger(__name__)

__all__ = ["DetectionResult", "Detector", "DetectorSettings", "per_class_nms", "bundle_detector", "DETECTOR_FORMAT"]

DETECTOR_FORMAT = "googlenet-detector-v2"


@dataclass(frozen=True)
class DetectorSettings:
    """Everything the detector does besides its networks and proposer; saved as one
    (``dataclasses.asdict``), loaded with ``from_dict``, overridden with ``replace``; checked when built.

    crop_size, context: the warp (:func:`detect.region.warp_regions`), as the members were trained;
    nms_iou, score_threshold, max_per_image: :func:`per_class_nms`; batch_size: crops per forward;
    min_size: proposals narrower or shorter than this (pixels, after clipping) are dropped;
    cascade_threshold: None or :func:`detect.scoring.ensemble_probs`'s cascade; max_pixels: None or the
    downscaling bound of :class:`detect.scoring.RegionWarp` (conf/detect.yaml). Sizes and counts are
    bounded above by :data:`detect.limits.LIMITS` (a file asking for more is refused)."""

    crop_size: int = 224
    context: int = 16
    nms_iou: float = 0.3
    score_threshold: float = 0.01
    max_per_image: int = 100
    batch_size: int = 128
    min_size: float = 2.0
    cascade_threshold: float | None = None
    max_pixels: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):  # each a finite number of its annotated type ("int", "float | None", ...)
            value, integer = getattr(self, f.name), f.type.startswith("int")
            if value is None and f.type.endswith("None"):
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (integer and float(value) != int(value)):
                raise ValueError(f"detector setting {f.name}={value!r}: "
                                 f"expected a finite {'integer' if integer else 'number'}")
            object.__setattr__(self, f.name, int(value) if integer else float(value))
        checks = [(self.crop_size >= 8, "crop_size must be >= 8"),
                  *[(getattr(self, n) is None or getattr(self, n) <= LIMITS[n], f"{n} must be <= {LIMITS[n]:,}")
                    for n in ("crop_size", "batch_size", "max_per_image", "max_pixels")],
                  (self.max_pixels is None or self.max_pixels >= 1, "max_pixels must be >= 1"),
                  (0 <= self.context and 2 * self.context < self.crop_size, "context must be >= 0 and < crop_size / 2"),
                  (0 < self.nms_iou <= 1, "nms_iou must be in (0, 1]"),
                  (0 <= self.score_threshold <= 1, "score_threshold must be in [0, 1]"),
                  (self.max_per_image >= 1 and self.batch_size >= 1, "max_per_image and batch_size must be >= 1"),
                  (self.min_size >= 0, "min_size must be >= 0"),
                  (self.cascade_threshold is None or 0 <= self.cascade_threshold <= 1, "cascade_threshold must be in [0, 1]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"detector settings: {message} ({self})")

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "settings") -> "DetectorSettings":
        """Settings from plain values; unknown names or bad values are a ``ValueError`` naming ``source``.
        ``mean`` / ``std`` (the normalisation files stored before each member recorded its own) are ignored."""
        return dataclass_from_file(cls, values, source, "detector settings", ignore=("mean", "std"))

    def replace(self, **changes) -> "DetectorSettings":
        """A copy with ``changes`` (unknown names are a ``ValueError``)."""
        return self.from_dict({**dataclasses.asdict(self), **changes}, "overrides")


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
    K <= max_per_image."""
    scores = probs[:, 1:]
    rows, cols = torch.where(scores >= score_threshold)
    cand_boxes, cand_scores = boxes[rows].float(), scores[rows, cols].float()
    keep = ops.batched_nms(cand_boxes, cand_scores, cols, nms_iou)[:max_per_image]
    return cand_boxes[keep], cand_scores[keep], cols[keep].long()


class Detector:
    """The GoogLeNet detector of ILSVRC 2014, R-CNN style.

    proposer: callable ``ndarray[H, W, 3] uint8 -> Proposals`` (or None when proposals are always passed in)
    scorers: the ensemble's members (:func:`detect.backends.as_scorer`), each giving background +
    ``len(classes)`` columns, in the region scorer ``scorer`` (:class:`detect.scoring.WarpScorer` of the settings).
    classes: ClassList; settings: :class:`DetectorSettings` (keyword ``overrides`` replace single ones).
    """

    def __init__(self, proposer: Callable | None, scorers: Sequence[Callable], classes: ClassList,
                 settings: DetectorSettings | None = None, **overrides):
        if not scorers:
            raise ValueError("a detector needs at least one scorer")
        if {"device", "channels_last", "amp"} & set(overrides):
            raise TypeError("device, amp and channels_last are the scorers' choice: build them with "
                            "detect.backends.make_scorers(..., device=...) or TorchScorer(model, device, ...)")
        self.proposer, self.classes = proposer, classes
        self.settings = s = (settings or DetectorSettings()).replace(**overrides)
        self.scorer = WarpScorer([as_scorer(m) for m in scorers],
                                 RegionWarp(s.crop_size, s.context, s.batch_size, s.max_pixels), s.cascade_threshold)
        self.scorers, self.device = self.scorer.members, self.scorer.device

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """The live proposer's boxes for ``image``: ndarray[N, 4] float32."""
        if self.proposer is None:
            raise ValueError("this detector has no proposer: pass the proposals in")
        return np.asarray(self.proposer(image).boxes, dtype=np.float32).reshape(-1, 4)

    def score(self, image: np.ndarray, boxes: np.ndarray | Tensor) -> Tensor:
        """Ensemble probabilities of the warped ``boxes: [N, 4]`` of ``image: ndarray[H, W, 3] uint8``:
        ``Tensor[N, C + 1]`` float32 on the detector's device (:meth:`detect.scoring.WarpScorer.score`)."""
        if len(boxes) == 0:
            return torch.zeros((0, len(self.classes) + 1), device=self.device)
        return self.scorer.score(image, boxes)

    def detect(self, image: np.ndarray, proposals: np.ndarray | None = None) -> DetectionResult:
        """Detections of ``image: ndarray[H, W, 3] uint8`` RGB, from ``proposals: ndarray[N, 4]`` xyxy
        (e.g. a ProposalStore entry) or, when None, from the live proposer."""
        boxes = self.proposals(image) if proposals is None else proposals
        boxes = usable_boxes(boxes, image.shape, self.settings.min_size, self.device)
        probs = self.score(image, boxes)
        if probs.shape[1] != len(self.classes) + 1:
            raise ValueError(f"the ensemble gives {probs.shape[1]} columns for {len(self.classes)} classes + background")
        b, s, l = per_class_nms(boxes, probs, self.settings.nms_iou, self.settings.score_threshold,
                                self.settings.max_per_image)
        return DetectionResult(b.cpu().numpy().astype(np.float32), s.cpu().numpy().astype(np.float32),
                               l.cpu().numpy().astype(np.int64))

    __call__ = detect

    def detect_many(self, items: Iterable[tuple[Any, Any, np.ndarray | None, tuple[int, int] | None]],
                    prefetch: int = 2) -> Iterator[tuple[Any, np.ndarray | None, DetectionResult | None, Exception | None]]:
        """Detect over ``items`` = ``(key, image path, cached proposals or None, (width, height) of its
        annotation or None)`` (``read_image``'s ``size``: the frame the boxes are in), yielding
        ``(key, image, result, None)``, or ``(key, None, None, error)`` for an image that cannot be used:
        a ``ValueError`` naming the file (unreadable, refused by the proposer), or an :class:`ImageError`
        naming it for a ``MemoryError`` / ``RuntimeError`` (a failed allocation); the next images still run.
        The next images are read and proposed in a background thread (OpenCV and ONNX Runtime release
        the GIL), ``prefetch`` images ahead, while the current image's crops are scored.
        """
        def prepare(path, cached, size):
            image = read_image(path, size)
            boxes = self.proposals(image) if cached is None else np.asarray(cached, np.float32).reshape(-1, 4)
            return image, boxes

        items = iter(items)
        with ThreadPoolExecutor(max_workers=1) as pool:
            submit = lambda key, path, cached, size: (key, path, pool.submit(prepare, path, cached, size))  # noqa: E731
            pending = deque(submit(*item) for item in itertools.islice(items, prefetch + 1))
            while pending:
                key, path, future = pending.popleft()
                pending.extend(submit(*item) for item in itertools.islice(items, 1))
                try:
                    image, boxes = future.result()
                    result = self.detect(image, boxes)
                except ValueError as e:  # ImageError names the file; proposer refusals
                    error = e
                except (MemoryError, RuntimeError) as e:  # this image only: the others still run
                    error = ImageError(path, f"detection failed ({type(e).__name__}: {e})")
                    log.warning("%s", error)  # (the failure's traceback, holding its tensors, is let go here)
                else:
                    yield key, image, result, None
                    continue
                image = boxes = future = None
                yield key, None, None, error

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", proposer: Callable | None = None,
                        stored_proposer: bool = True, backend: str = "auto", amp: str = "auto",
                        onnx_cache: str | Path | None = None, members: Sequence[int] | None = None,
                        precision: str = "fp32", **overrides) -> "Detector":
        """Load a :func:`bundle_detector` file.

        proposer: replaces the stored proposer; otherwise the stored one is rebuilt from its spec when
        ``stored_proposer`` (None when the file has none), else the detector has none (proposals are
        passed in). backend, amp, precision: :func:`detect.backends.make_scorer`'s, precision for a stored
        MultiBox proposer too (int8 calibrated on the file's ``calibration``); onnx_cache: folder of the
        ONNX exports (default ``<path>.onnx/``); members: indices of the members to use (default all);
        overrides: :class:`DetectorSettings` values replacing the stored ones (e.g. ``score_threshold=0.1``).
        """
        contents = _read_detector(load_checkpoint(path), str(path))
        settings = contents["settings"].replace(**overrides)
        entries = contents["members"]
        if members is not None:
            bad = [i for i in members if not 0 <= int(i) < len(entries)]
            if bad or not members:
                raise ValueError(f"{path}: members={list(members)}: the detector has members 0..{len(entries) - 1}")
            entries = [entries[int(i)] for i in members]
        nets = [_member_network(entry, k, str(path)) for k, entry in enumerate(entries)]
        device = resolve_device(device)
        cache = Path(onnx_cache) if onnx_cache is not None else Path(f"{path}.onnx")
        if proposer is None and stored_proposer and contents["proposer"] is not None:
            proposer = build_proposer(set_params(contents["proposer"], precision=precision), str(path), onnx_cache=cache)
        calibration = contents["calibration"]  # uint8 RGB crops, prepared for each member in its own convention
        inputs = None if calibration is None else [crops_to_inputs(calibration["crops"], n.input_convention) for n in nets]
        scorers = make_scorers(nets, backend, device, settings.crop_size, amp=amp, cache_dir=cache, precision=precision,
                               calibration=inputs, int8_recipe=None if calibration is None else calibration["recipe"])
        return cls(proposer, scorers, contents["classes"], settings)


def _member_network(entry: Any, k: int, source: str) -> GoogLeNet:
    """Member ``k`` of a detector file as a GoogLeNet in eval mode; anything else (a member that records no
    input convention: a file written before members recorded theirs) is a ValueError naming ``source``."""
    kwargs = entry.get("model_kwargs") if isinstance(entry, Mapping) else None
    if isinstance(kwargs, Mapping) and "input_convention" not in kwargs:
        raise ValueError(f"{source}: member {k} records no input convention (a detector file written before "
                         "members recorded theirs); build the detector again with tools/train_region.py step=bundle")
    return model_from_entry(entry, f"{source}: member {k}")


def _read_calibration(entry: Any, crop_size: int, source: str) -> dict | None:
    """The file's calibration entry, ``{"crops": ndarray[N, 3, S, S] uint8 RGB, "recipe": Int8Recipe}``, checked;
    None when the file has none."""
    if entry is None:
        return None
    crops = entry.get("crops") if isinstance(entry, Mapping) else None
    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8 or crops.ndim != 4 or len(crops) == 0 \
            or tuple(crops.shape[1:]) != (3, crop_size, crop_size):
        raise ValueError(f"{source}: calibration crops must be a non-empty uint8 tensor [N, 3, {crop_size}, {crop_size}]")
    recipe = Int8Recipe.from_dict(entry.get("recipe"), f"{source}: calibration recipe")
    return {"crops": crops.numpy(), "recipe": recipe}


def _read_detector(ckpt: Any, source: str) -> dict:
    """``{"members", "classes", "settings", "proposer" (spec or None), "calibration"}`` of a loaded
    detector file, checked (the proposer: :func:`proposals.spec.check_spec`)."""
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != DETECTOR_FORMAT:  # googlenet-detector-v1 files (proposer as a Hydra _target_) are no longer read
        raise ValueError(f"{source}: not a detector file of format {DETECTOR_FORMAT!r} (format {fmt!r}); "
                         "build the detector (again) with tools/train_region.py step=bundle")
    members = ckpt.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{source}: a detector file needs a non-empty list of members")
    if len(members) > LIMITS["members"]:
        raise ValueError(f"{source}: {len(members)} members; a detector file may hold at most {LIMITS['members']} "
                         "(bounds of a loaded file: detect/limits.py)")
    classes = ClassList.from_dict(ckpt.get("classes"), source)
    if not len(classes):
        raise ValueError(f"{source}: the detector's class list is empty")
    if not isinstance(ckpt.get("settings"), Mapping):  # defaults would silently replace the settings it was built with
        raise ValueError(f"{source}: the detector file has no 'settings' block (crop size, context, thresholds); "
                         "bundle it again with tools/train_region.py step=bundle")
    settings, spec = DetectorSettings.from_dict(ckpt["settings"], source), ckpt.get("proposer")
    if spec is not None:
        check_spec(spec, source)
    return {"members": members, "classes": classes, "settings": settings, "proposer": spec,
            "calibration": _read_calibration(ckpt.get("calibration"), settings.crop_size, source)}


def bundle_detector(members: Sequence[dict], classes: ClassList, settings: DetectorSettings, path: str | Path,
                    proposer: Mapping | None = None, provenance: Mapping | None = None,
                    calibration: Mapping | None = None) -> dict:
    """Write one detector file from member checkpoints (dicts with ``model_kwargs`` and ``model_state``).

    proposer: a proposer spec with its networks embedded (:func:`proposals.spec.proposer_spec` of a live
    proposer, or :func:`proposals.spec.spec_from_config` of a config's with ``embed=True``), or None;
    provenance: plain facts about the training (data name, ...); calibration: for int8 scoring,
    ``{"crops": ndarray[N, 3, S, S] uint8`` RGB (:func:`detect.quantize.draw_calibration_crops`),
    ``"recipe": plain Int8Recipe values}``, or None. Returns the saved dict.
    """
    if not members:
        raise ValueError("a detector needs at least one member checkpoint")
    if proposer is not None:
        check_spec(proposer, "the detector's proposer")  # networks embedded, never a path
    entries = []
    for k, ckpt in enumerate(members):
        if "model_kwargs" not in ckpt or "model_state" not in ckpt:
            raise ValueError(f"member {k}: checkpoint lacks model_kwargs / model_state")
        kwargs = {"input_convention": IMAGENET.to_dict(),  # that of checkpoints from before conventions were recorded
                  **dict(ckpt["model_kwargs"]), "aux_logits": False}  # aux heads are for training only
        if kwargs.get("num_classes") != len(classes) + 1:
            raise ValueError(f"member {k}: {kwargs.get('num_classes')} outputs, expected {len(classes) + 1} "
                             f"({len(classes)} classes + background)")
        state = {n: t.detach().cpu() for n, t in strip_module_prefix(ckpt["model_state"]).items()
                 if not n.startswith(("aux1.", "aux2."))}
        entries.append({"model_kwargs": kwargs, "model_state": state})
    obj = {"format": DETECTOR_FORMAT, "members": entries, "classes": classes.to_dict(),
           "settings": dataclasses.asdict(settings), "proposer": None if proposer is None else dict(proposer),
           "provenance": dict(provenance or {})}
    if calibration is not None:
        crops = torch.as_tensor(np.asarray(calibration["crops"]))
        obj["calibration"] = {"crops": crops, "recipe": dataclasses.asdict(Int8Recipe.from_dict(calibration.get("recipe")))}
        _read_calibration(obj["calibration"], settings.crop_size, str(path))
    atomic_torch_save(obj, path)
    return obj
