"""Selective search (Uijlings et al.) on OpenCV-contrib's parts, with R-CNN's "fast mode".

R-CNN's fast mode (``selective_search_boxes.m``): colour spaces HSV and Lab; Felzenszwalb graph
segmentations with ``k`` in {50, 100}, ``min_size = k``, ``sigma = 0.8``; the strategies
colour+texture+size+fill and texture+size+fill; the image resized to width 500 first and the boxes
mapped back; boxes narrower or shorter than 20 px dropped; duplicates removed.

``ranking="seeded"`` (the default): OpenCV's graph segmentation gives the initial regions and its
strategy objects (``setImage`` / ``get`` / ``merge``) every similarity, so the values are OpenCV's own;
the greedy grouping loop of OpenCV's ``SelectiveSearchSegmentationImpl::hierarchicalGrouping`` runs
here (merge the most similar neighbouring pair; the new region's level is 1 + the larger level of the
two, its box the union), one hierarchy per (colour space, ``k``, strategy). Ranking is OpenCV's rule
(Uijlings et al.'s, the hierarchy counted from the initial segments): every region gets ``level * u``,
``u`` uniform in [0, 1) from ``numpy.random.default_rng(seed)``, all regions are sorted by it (stably)
and a repeated rectangle keeps its best rank. The order depends only on the image and ``seed``, and the
box set is that of OpenCV's ``process()`` (ranked with C's ``rand()`` draw for draw instead, ours gives
``process()``'s exact order: 32 of 32 coco128 images, benchmarks/proposals.md). Ties between equal
similarities, which OpenCV leaves to ``std::sort``, go to the pair formed first. The order counts
wherever boxes are taken from the front: ``max_boxes``, a union's cap, recall at k, and which of
several boxes that round to the same pixels after mapping back stays (the first).

``ranking="opencv"``, kept for comparison only, calls ``process()`` after ``srand(seed)``; C's
``rand()`` is also drawn from by other threads (those that importing ``onnxruntime`` starts), so its
order changes from run to run on a few images (benchmarks/ss_order_check.py). OpenCV's presets
(``switchToSelectiveSearchFast/Quality``) convert the base image with ``COLOR_BGR2*``, so they get BGR;
our own mode converts from RGB. The seeded path builds the presets' images, segmentations and
strategies step by step as OpenCV does, including what its quality preset really segments (the blue
channel where it meant hue, see ``_plan``).
"""
from __future__ import annotations

import ctypes
import heapq

import cv2
import numpy as np
from scipy import ndimage

from detect.boxes import clip_boxes, remove_small_boxes, unique_boxes, xywh_to_xyxy
from proposals.base import Proposals, as_rgb_uint8

__all__ = ["SelectiveSearch", "MODES", "RANKINGS", "COLOR_SPACES"]

MODES = ("rcnn_fast", "opencv_fast", "opencv_quality")
RANKINGS = ("seeded", "opencv")  # see the module docstring
COLOR_SPACES = {  # name -> conversion from RGB (None: keep RGB)
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2Lab,
    "rgb": None,
    "gray": cv2.COLOR_RGB2GRAY,
}
_seg = cv2.ximgproc.segmentation
_STRATEGY_PARTS = {p: getattr(_seg, f"createSelectiveSearchSegmentationStrategy{p.capitalize()}")
                   for p in ("color", "texture", "size", "fill")}

_libc = ctypes.CDLL(None)


def _make_strategy(name: str, shared: dict | None = None):
    """``"color_texture_size_fill"`` -> OpenCV's equal-weight multiple strategy of those parts.

    shared: part name -> object, reused across the strategies of one call (as OpenCV's presets share
    theirs); None makes fresh parts. Sharing is exact because ``setImage`` with the same ``image_id``
    restores a part's unmerged state before each hierarchy.
    """
    parts = name.split("_")
    if not parts or any(p not in _STRATEGY_PARTS for p in parts) or len(parts) > 4:
        raise ValueError(f"unknown strategy {name!r}: join up to four of {sorted(_STRATEGY_PARTS)} with '_'")
    shared = {} if shared is None else shared
    made = [shared.setdefault(p, _STRATEGY_PARTS[p]()) for p in parts]
    return made[0] if len(made) == 1 else _seg.createSelectiveSearchSegmentationStrategyMultiple(*made)


def _initial_regions(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A graph segmentation ``int32[H, W]`` (labels 0..n-1) -> what OpenCV's grouping starts from.

    Returns ``sizes int32[n, 1]`` (pixels per region), ``rects int64[n, 4]`` (xyxy, x2/y2 exclusive)
    and ``pairs int64[E, 2]`` (i < j): the neighbouring regions as OpenCV counts them (a pixel at
    row, column >= 1 touches its left, upper and upper-left neighbours).
    """
    n = int(regions.max()) + 1
    sizes = np.bincount(regions.ravel(), minlength=n).astype(np.int32).reshape(n, 1)
    slices = ndimage.find_objects(regions + 1, max_label=n)
    rects = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], np.int64).reshape(n, 4)
    other = np.stack([regions[1:, :-1], regions[:-1, 1:], regions[:-1, :-1]]).astype(np.int64)
    here = np.broadcast_to(regions[1:, 1:].astype(np.int64), other.shape)
    a, b = here[here != other], other[here != other]
    keys = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return sizes, rects, np.stack([keys // n, keys % n], axis=1)


def _group(image: np.ndarray, regions: np.ndarray, strategy, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One hierarchy, OpenCV's greedy grouping of ``regions`` under ``strategy`` (see the module docstring):
    every region's box ``int64[M, 4]`` (xyxy, exclusive) and level ``int64[M]`` (1 = initial). The strategy
    reads ``sizes`` in place, so the merged sizes are written into the same array."""
    sizes, rects, pairs = _initial_regions(regions)
    strategy.setImage(image, regions, sizes, image_id)
    n = len(rects)
    ids, levels, boxes = list(range(n)), [1] * n, rects.tolist()
    alive, neighbours = [True] * n, [set() for _ in range(n)]
    heap = []
    for i, j in pairs.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
        heap.append((-strategy.get(i, j), len(heap), i, j))
    heapq.heapify(heap)
    formed = len(heap)  # ties between equal similarities go to the pair formed first
    while heap:
        _, _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        ia, ib = ids[a], ids[b]
        strategy.merge(ia, ib)
        sizes[ia, 0] += sizes[ib, 0]
        sizes[ib, 0] = sizes[ia, 0]
        new, ba, bb = len(ids), boxes[a], boxes[b]
        ids.append(min(ia, ib))
        levels.append(max(levels[a], levels[b]) + 1)
        boxes.append([min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])])
        alive[a] = alive[b] = False
        alive.append(True)
        around = sorted((neighbours[a] | neighbours[b]) - {a, b})
        neighbours.append(set(around))
        for m in around:
            neighbours[m] -= {a, b}
            neighbours[m].add(new)
            heapq.heappush(heap, (-strategy.get(ids[new], ids[m]), formed, new, m))
            formed += 1
    return np.array(boxes, np.int64).reshape(-1, 4), np.array(levels, np.int64)


def _rank(rects: np.ndarray, levels: np.ndarray, seed: int) -> np.ndarray:
    """Selective search's ranking (module docstring): ``rects int64[M, 4]``, ``levels int64[M]`` -> distinct
    rects ``float32[K, 4]`` sorted by ``level * u`` (``u`` from ``default_rng(seed)``), each at its best rank."""
    u = np.random.default_rng(seed).random(len(levels))
    rects = rects[np.argsort(levels * u, kind="stable")]
    return rects[unique_boxes(rects)].astype(np.float32)


class SelectiveSearch:
    """Selective search proposals: ``image ndarray[H, W, 3] uint8 RGB -> Proposals(boxes float32[N, 4], None)``.

    mode: ``rcnn_fast`` (the settings below), ``opencv_fast`` / ``opencv_quality`` (OpenCV's presets,
        base and increment ``k`` = 150 x ``superpixel_scale``).
    superpixel_scale: multiplies every ``k`` and (rcnn_fast) the minimum segment size: 1.0 is R-CNN, 2.0 the
        setting of the GoogLeNet detection paper (larger superpixels, about half the boxes).
    resize_width: the image is resized to this width before segmenting (None: original size); the
        resize is further limited so that neither side exceeds ``max_side``.
    min_box_size: boxes with a side below this (original pixels) are dropped. R-CNN's
        ``selective_search_boxes.m`` filters at 20 px in the resized (500-wide) frame before mapping
        boxes back, i.e. at ``20 * width / 500`` original pixels; the two agree on ILSVRC's ~500-wide
        images, and here the threshold holds in the pixels the boxes are returned in (a box of an
        upscaled small image is never narrower than ``min_box_size``).
    max_boxes: keep at most this many (in rank order), None for all.
    num_threads: ``cv2.setNumThreads`` before each call (None leaves OpenCV's setting alone).
    seed: seeds the ranking's generator (``srand(seed)`` with ``ranking="opencv"``).
    ranking: ``"seeded"`` (reproducible in any process) or ``"opencv"`` (module docstring).
    Boxes come in rank order, exact duplicates (after mapping back and rounding) removed.
    """

    def __init__(self, mode: str = "rcnn_fast", superpixel_scale: float = 2.0, resize_width: int | None = 500,
                 min_box_size: float = 20, color_spaces=("hsv", "lab"), ks=(50, 100), sigma: float = 0.8,
                 strategies=("color_texture_size_fill", "texture_size_fill"), max_boxes: int | None = None,
                 num_threads: int | None = None, seed: int = 0, max_side: int = 2000, name: str | None = None,
                 ranking: str = "seeded"):
        if mode not in MODES:
            raise ValueError(f"unknown selective search mode {mode!r}; expected one of {MODES}")
        if ranking not in RANKINGS:
            raise ValueError(f"unknown selective search ranking {ranking!r}; expected one of {RANKINGS}")
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
        self.name = self.name_for({"mode": mode, "superpixel_scale": superpixel_scale, "name": name}, [])
        self.ranking = ranking  # every attribute is a constructor argument (spec_params)

    @staticmethod
    def name_for(params: dict, source_names=()) -> str:
        """The store-file name of these settings (``params``: mode, superpixel_scale, name): ``name``,
        else ``ss<scale>x`` (R-CNN fast mode) or ``ss_<mode>``."""
        if params["name"] is not None:
            return params["name"]
        return f"ss{float(params['superpixel_scale']):g}x" if params["mode"] == "rcnn_fast" else f"ss_{params['mode']}"

    def spec_params(self) -> dict:
        """Constructor arguments that rebuild this proposer: its attributes, tuples as lists (:mod:`proposals.spec`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

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

    def _plan(self, image: np.ndarray) -> tuple[list, list, tuple]:
        """What one call segments and groups: ``(images, graph segmenters, strategy names)``; one hierarchy
        per image x segmenter x strategy, in that loop order (OpenCV's ``process()`` order)."""
        if self.mode == "rcnn_fast":
            images = [image if COLOR_SPACES[c] is None else cv2.cvtColor(image, COLOR_SPACES[c])
                      for c in self.color_spaces]
            ks = [k * self.superpixel_scale for k in self.ks]
            return images, [_seg.createGraphSegmentation(self.sigma, k, int(round(k))) for k in ks], self.strategies
        # OpenCV's presets, step by step (switchToSelectiveSearchFast / Quality on a BGR base image)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        hsv, lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)
        images, steps = [hsv, lab], 3
        strategies: tuple = ("color_fill_texture_size", "fill_texture_size")
        if self.mode == "opencv_quality":
            grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            # OpenCV adds the hue plane, then splits the base image into the same Mat array, which
            # overwrites that plane with the blue channel in place: its quality preset segments blue
            blue = np.ascontiguousarray(bgr[:, :, 0])
            images += [grey, blue, cv2.merge([bgr[:, :, 2], bgr[:, :, 1], grey])]
            steps, strategies = 5, strategies + ("fill", "size")
        k = int(round(150 * self.superpixel_scale))  # k, 2k, ...; OpenCV's default minimum segment size, as its presets
        segmenters = [_seg.createGraphSegmentation(self.sigma, float(k * i)) for i in range(1, steps + 1)]
        return images, segmenters, strategies

    def _hierarchies(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every region of every hierarchy, in OpenCV's order: boxes ``int64[M, 4]`` (xyxy), levels ``int64[M]``."""
        images, segmenters, names = self._plan(image)
        shared: dict = {}
        strategies = [_make_strategy(s, shared) for s in names]
        groups = []  # (boxes, levels) of each hierarchy
        for image_id, (im, gs) in enumerate((im, gs) for im in images for gs in segmenters):
            regions = gs.processImage(im)
            groups += [_group(im, regions, strategy, image_id) for strategy in strategies]
        return np.concatenate([r for r, _ in groups]), np.concatenate([lv for _, lv in groups])

    def _opencv_rects(self, image: np.ndarray) -> np.ndarray:
        """Ranked distinct boxes ``float32[K, 4]`` (xyxy) from OpenCV's own selective search object:
        ``process()`` after ``srand(seed)``."""
        ss = _seg.createSelectiveSearchSegmentation()
        if self.mode == "rcnn_fast":
            images, segmenters, strategies = self._plan(image)
            for im in images:
                ss.addImage(im)
            for gs in segmenters:
                ss.addGraphSegmentation(gs)
            for s in strategies:
                ss.addStrategy(_make_strategy(s))
        else:
            ss.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # OpenCV's presets expect BGR
            k = int(round(150 * self.superpixel_scale))
            preset = ss.switchToSelectiveSearchFast if self.mode == "opencv_fast" else ss.switchToSelectiveSearchQuality
            preset(k, k, self.sigma)
        _libc.srand(self.seed)
        return xywh_to_xyxy(np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4))

    def __call__(self, image: np.ndarray) -> Proposals:
        """``image: ndarray[H, W, 3] uint8`` RGB (grey, RGBA, 16-bit arrays are converted) -> Proposals; zero
        boxes for an image with a side below ``min_box_size``; ``ValueError`` for an empty or malformed array
        and when OpenCV fails."""
        image = as_rgb_uint8(image)
        h, w = image.shape[:2]
        if min(h, w) < self.min_box_size:
            return Proposals(np.zeros((0, 4), np.float32))
        small, back = self._resize(image)
        if self.num_threads is not None:
            cv2.setNumThreads(int(self.num_threads))
        try:
            rects = (_rank(*self._hierarchies(small), self.seed) if self.ranking == "seeded"
                     else self._opencv_rects(small))
        except cv2.error as e:
            raise ValueError(f"selective search failed on an image of shape {image.shape}: {e.err or e}") from None
        return self._finish(rects, back, w, h)

    def _finish(self, rects: np.ndarray, back: np.ndarray, w: int, h: int) -> Proposals:
        """Ranked rects ``float32[K, 4]`` (xyxy, resized pixels) -> the boxes returned: mapped back by
        ``back``, clipped to ``w`` x ``h``, small ones and repeats dropped, at most ``max_boxes``."""
        boxes = clip_boxes(rects * back, w, h).astype(np.float32)
        boxes = boxes[remove_small_boxes(boxes, self.min_box_size)]
        return Proposals(boxes[unique_boxes(boxes)][: self.max_boxes])  # max_boxes None: all

    def __repr__(self) -> str:
        return (f"SelectiveSearch(mode={self.mode!r}, superpixel_scale={self.superpixel_scale}, "
                f"resize_width={self.resize_width}, ks={self.ks}, name={self.name!r})")


def segmentation_side(short_sides: np.ndarray, image_sides: np.ndarray, base: int, limit: int,
                      min_object_side: float = 32.0, share: float = 0.9, step: int = 50) -> int:
    """The longer side to segment a dataset's images at (``max_side`` with ``resize_width=None``), chosen
    from its training boxes so that small objects keep enough pixels for selective search to find them.

    short_sides: ``float[N]`` the shorter side of each training box (pixels); image_sides: ``float[N]`` the
    longer side of its image. A box needs its image segmented at ``image_side * min_object_side /
    short_side`` to keep ``min_object_side`` pixels, or at its own size when it is smaller than that (no
    upscaling); the result is that need at quantile ``share`` over the boxes, rounded up to ``step``,
    within ``[base, limit]`` (``base`` when there is no box). Images already smaller are segmented at their
    own size whatever the value. Recall by box size at the segmented size: benchmarks/own_dataset.md.
    """
    short_sides = np.asarray(short_sides, np.float64).reshape(-1)
    image_sides = np.asarray(image_sides, np.float64).reshape(-1)
    ok = (short_sides > 0) & (image_sides > 0)
    if not ok.any():
        return int(base)
    need = image_sides[ok] * np.minimum(1.0, min_object_side / short_sides[ok])
    side = int(np.ceil(np.quantile(need, share) / step) * step)
    return int(min(max(side, base), limit))
