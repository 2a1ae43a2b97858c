"""Selective search (Uijlings et al.) on OpenCV-contrib's C++ implementation, with R-CNN's "fast mode".

R-CNN's fast mode (``selective_search_boxes.m``): colour spaces HSV and Lab; Felzenszwalb graph
segmentations with ``k`` in {50, 100}, ``min_size = k``, ``sigma = 0.8``; the strategies
colour+texture+size+fill and texture+size+fill; the image resized to width 500 first and the boxes
mapped back; boxes narrower or shorter than 20 px dropped; duplicates removed.
``superpixel_scale`` multiplies ``k`` and the minimum segment size: 1.0 is R-CNN, 2.0 is the setting
of the GoogLeNet detection paper (larger superpixels, about half the boxes).

OpenCV facts this relies on (``selectivesearchsegmentation.cpp``): ``process()`` runs every added image
through every graph segmentation and every strategy, ranks each region by ``rand() * level`` (C's
``rand``, so ``srand(seed)`` is called right before it for a reproducible order), sorts, drops repeated
rectangles and returns ``(x, y, w, h)``. The order is reproducible only while nothing else in the
process draws from ``rand()`` during ``process()``: the threads that importing ``onnxruntime`` starts
sometimes do, and then an image's boxes (the same set) come in another order (benchmarks/refactor.md).
Its presets (``switchToSelectiveSearchFast/Quality``) convert
the base image with ``COLOR_BGR2*``, so they get BGR; our own mode converts from RGB ourselves.
"""
from __future__ import annotations

import ctypes
import logging

import cv2
import numpy as np

from detect.boxes import clip_boxes, remove_small_boxes, unique_boxes, xywh_to_xyxy
from proposals.base import Proposals, as_rgb_uint8

log = logging.getLogger(__name__)

__all__ = ["SelectiveSearch", "MODES", "COLOR_SPACES", "STRATEGIES"]

MODES = ("rcnn_fast", "opencv_fast", "opencv_quality")
COLOR_SPACES = {  # name -> conversion from RGB (None: keep RGB)
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2Lab,
    "rgb": None,
    "gray": cv2.COLOR_RGB2GRAY,
}
_seg = cv2.ximgproc.segmentation
_STRATEGY_PARTS = {
    "color": _seg.createSelectiveSearchSegmentationStrategyColor,
    "texture": _seg.createSelectiveSearchSegmentationStrategyTexture,
    "size": _seg.createSelectiveSearchSegmentationStrategySize,
    "fill": _seg.createSelectiveSearchSegmentationStrategyFill,
}
STRATEGIES = ("color_texture_size_fill", "texture_size_fill", "color_size_fill", "size_fill", "fill", "size")

_libc = ctypes.CDLL(None)


def _make_strategy(name: str):
    """``"color_texture_size_fill"`` -> OpenCV's equal-weight multiple strategy of those parts (fresh objects)."""
    parts = name.split("_")
    if not parts or any(p not in _STRATEGY_PARTS for p in parts) or len(parts) > 4:
        raise ValueError(f"unknown strategy {name!r}: join up to four of {sorted(_STRATEGY_PARTS)} with '_'")
    made = [_STRATEGY_PARTS[p]() for p in parts]
    if len(made) == 1:
        return made[0]
    return _seg.createSelectiveSearchSegmentationStrategyMultiple(*made)


class SelectiveSearch:
    """Selective search proposals: ``image ndarray[H, W, 3] uint8 RGB -> Proposals(boxes float32[N, 4], None)``.

    mode: ``rcnn_fast`` (the settings below), ``opencv_fast`` / ``opencv_quality`` (OpenCV's presets,
        base and increment ``k`` = 150 x ``superpixel_scale``).
    superpixel_scale: multiplies every ``k`` and (rcnn_fast) the minimum segment size.
    resize_width: the image is resized to this width before segmenting (None: original size); the
        resize is further limited so that neither side exceeds ``max_side``.
    min_box_size: boxes with a side below this (original pixels) are dropped. R-CNN's
        ``selective_search_boxes.m`` filters at 20 px in the resized (500-wide) frame before mapping
        boxes back, i.e. at ``20 * width / 500`` original pixels; the two agree on ILSVRC's ~500-wide
        images, and here the threshold holds in the pixels the boxes are returned in (a box of an
        upscaled small image is never narrower than ``min_box_size``).
    max_boxes: keep at most this many (in rank order), None for all.
    num_threads: ``cv2.setNumThreads`` before each call (None leaves OpenCV's setting alone).
    seed: ``srand(seed)`` before OpenCV ranks its regions, so that equal inputs give equal order.
    Boxes come in OpenCV's rank order, exact duplicates (after mapping back and rounding) removed.
    """

    def __init__(
        self,
        mode: str = "rcnn_fast",
        superpixel_scale: float = 2.0,
        resize_width: int | None = 500,
        min_box_size: float = 20,
        color_spaces=("hsv", "lab"),
        ks=(50, 100),
        sigma: float = 0.8,
        strategies=("color_texture_size_fill", "texture_size_fill"),
        max_boxes: int | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        max_side: int = 2000,
        name: str | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown selective search mode {mode!r}; expected one of {MODES}")
        if superpixel_scale <= 0:
            raise ValueError(f"superpixel_scale must be > 0, got {superpixel_scale}")
        for c in color_spaces:
            if c not in COLOR_SPACES:
                raise ValueError(f"unknown colour space {c!r}; expected one of {sorted(COLOR_SPACES)}")
        for s in strategies:
            _make_strategy(s)  # fail early on a bad name
        self.mode = mode
        self.superpixel_scale = float(superpixel_scale)
        self.resize_width = resize_width
        self.min_box_size = float(min_box_size)
        self.color_spaces = tuple(color_spaces)
        self.ks = tuple(float(k) for k in ks)
        self.sigma = float(sigma)
        self.strategies = tuple(strategies)
        self.max_boxes = max_boxes
        self.num_threads = num_threads
        self.seed = int(seed)
        self.max_side = int(max_side)
        self.name = self.name_for(mode, superpixel_scale, name)

    @staticmethod
    def name_for(mode: str, superpixel_scale: float, name: str | None = None) -> str:
        """The store-file name of these settings: ``name``, else ``ss<scale>x`` (R-CNN fast mode) or ``ss_<mode>``."""
        if name is not None:
            return name
        return f"ss{float(superpixel_scale):g}x" if mode == "rcnn_fast" else f"ss_{mode}"

    kind = "selective_search"  # proposals.spec: how detector files and proposal stores record it

    def spec_params(self) -> dict:
        """Constructor arguments that rebuild this proposer (plain values; see :mod:`proposals.spec`)."""
        return {"mode": self.mode, "superpixel_scale": self.superpixel_scale, "resize_width": self.resize_width,
                "min_box_size": self.min_box_size, "color_spaces": list(self.color_spaces), "ks": list(self.ks),
                "sigma": self.sigma, "strategies": list(self.strategies), "max_boxes": self.max_boxes,
                "num_threads": self.num_threads, "seed": self.seed, "max_side": self.max_side, "name": self.name}

    def _resize(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resized image and the per-axis factors ``float32[4]`` that map its xyxy boxes back."""
        h, w = image.shape[:2]
        scale = 1.0 if self.resize_width is None else self.resize_width / w
        scale = min(scale, self.max_side / max(h, w))
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if (new_w, new_h) == (w, h):
            return image, np.ones(4, np.float32)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        back = np.array([w / new_w, h / new_h] * 2, np.float32)  # exact per axis, despite the rounding
        return cv2.resize(image, (new_w, new_h), interpolation=interp), back

    def _segmenter(self, image: np.ndarray):
        ss = _seg.createSelectiveSearchSegmentation()
        if self.mode == "rcnn_fast":
            for c in self.color_spaces:
                code = COLOR_SPACES[c]
                ss.addImage(image if code is None else cv2.cvtColor(image, code))
            for k in self.ks:
                k = k * self.superpixel_scale
                ss.addGraphSegmentation(_seg.createGraphSegmentation(self.sigma, k, int(round(k))))
            for s in self.strategies:
                ss.addStrategy(_make_strategy(s))
        else:
            ss.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # OpenCV's presets expect BGR
            k = int(round(150 * self.superpixel_scale))
            if self.mode == "opencv_fast":
                ss.switchToSelectiveSearchFast(k, k, self.sigma)
            else:
                ss.switchToSelectiveSearchQuality(k, k, self.sigma)
        return ss

    def __call__(self, image: np.ndarray) -> Proposals:
        """``image: ndarray[H, W, 3] uint8`` RGB (grey, RGBA, 16-bit arrays are converted) -> Proposals.

        Images with a side below ``min_box_size`` give zero boxes. Raises ``ValueError`` for an empty or
        malformed array and when OpenCV fails.
        """
        image = as_rgb_uint8(image)
        h, w = image.shape[:2]
        if min(h, w) < self.min_box_size:
            return Proposals.empty()
        small, back = self._resize(image)
        if self.num_threads is not None:
            cv2.setNumThreads(int(self.num_threads))
        try:
            ss = self._segmenter(small)
            _libc.srand(self.seed)
            rects = ss.process()
        except cv2.error as e:
            raise ValueError(f"selective search failed on an image of shape {image.shape}: {e.err or e}") from None
        rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        boxes = clip_boxes(xywh_to_xyxy(rects) * back, w, h).astype(np.float32)
        boxes = boxes[remove_small_boxes(boxes, self.min_box_size)]
        boxes = boxes[unique_boxes(boxes)]
        if self.max_boxes is not None:
            boxes = boxes[: self.max_boxes]
        return Proposals(boxes)

    def __repr__(self) -> str:
        return (f"SelectiveSearch(mode={self.mode!r}, superpixel_scale={self.superpixel_scale}, "
                f"resize_width={self.resize_width}, ks={self.ks}, name={self.name!r})")
