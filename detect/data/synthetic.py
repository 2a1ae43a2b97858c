"""The synthetic world: one scene renderer for a classification set and a detection set.

Each class is a fixed combination of a shape (circle, square, triangle, ...), a saturated colour and a
texture (solid, stripes, checks, dots, gradient); instances vary in size, aspect, rotation, colour and
texture phase. Backgrounds are cluttered with gradients, noise, lines and blobs in desaturated colours
and irregular shapes, which no class has. Class ids look like ILSVRC wnids: ``n99`` followed by the
6-digit 0-based class index (``n99000000``, ``n99000001``, ...); names read like ``"red solid circle"``.

Layouts written: :func:`make_classification_set`, ``root/{train,val}/<wnid>/<wnid>_<k>.JPEG`` and
``root/classes.tsv``; :func:`make_detection_world`, the ILSVRC 2015+ layout (``Data/DET/<split>/<name>.JPEG``,
``Annotations/DET/<split>/<name>.xml`` with 0-based inclusive pixel boxes, ``ImageSets/DET/<split>.txt`` of
``<name> <index>`` lines, index 1-based, and ``classes.tsv``), or the same world as a PASCAL VOC folder or
COCO files, for trying the chain on datasets of one's own.

Both are deterministic (same parameters -> the same bytes; each image draws from its own generator
seeded by ``(seed, split, image number)``) and idempotent under the ownership rules of every generator
(:mod:`detect.data.generated`, ``root/manifest.json``): a folder holding files they did not write (a real
dataset given by mistake as ``data.root``) is refused with :class:`ForeignDataError`, untouched.
"""
from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detect.classes import ClassList, write_class_list
from detect.data.generated import ForeignDataError, finish_root, prepare_root
from detect.data.images import write_jpeg
from detect.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["SceneClass", "scene_classes", "render_background", "render_object", "render_detection_image",
           "render_classification_image", "ilsvrc_xml", "make_classification_set", "make_detection_world",
           "ForeignDataError"]

RENDERER_VERSION = 1  # bump when the pictures change, so that old manifests no longer match
JPEG_QUALITY = 90

COLOURS = {  # saturated class colours (RGB); the clutter is desaturated so it never matches a class
    "red": (215, 35, 35), "green": (35, 165, 45), "blue": (35, 70, 215), "yellow": (235, 205, 25),
    "magenta": (205, 45, 195), "cyan": (25, 195, 205), "orange": (245, 130, 15), "purple": (115, 45, 170),
}
TEXTURES = ("solid", "striped", "checked", "dotted", "graded")
SHAPE_ASPECT = {"ellipse": 0.55, "arrow": 0.65}  # height / width of the shape before jitter; others 1


def _regular(n: int, radius: float = 1.0, start: float = -math.pi / 2) -> np.ndarray:
    t = start + np.arange(n) * 2 * math.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


_CROSS_W = 0.34
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {  # unit polygons in [-1, 1]^2, filled (1) or cut (0)
    "circle": [(_regular(48), 1)],
    "square": [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1)],
    "triangle": [(np.array([[0, -1], [1, 1], [-1, 1]], float), 1)],
    "star": [(_regular(10, np.tile([1.0, 0.45], 5)), 1)],  # 5 points, inner radius 0.45
    "cross": [(np.array([[-_CROSS_W, -1], [_CROSS_W, -1], [_CROSS_W, -_CROSS_W], [1, -_CROSS_W], [1, _CROSS_W],
                         [_CROSS_W, _CROSS_W], [_CROSS_W, 1], [-_CROSS_W, 1], [-_CROSS_W, _CROSS_W],
                         [-1, _CROSS_W], [-1, -_CROSS_W], [-_CROSS_W, -_CROSS_W]], float), 1)],
    "ring": [(_regular(48), 1), (_regular(48, 0.55), 0)],
    "diamond": [(np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float), 1)],
    "ellipse": [(_regular(48), 1)],
    "hexagon": [(_regular(6, start=0.0), 1)],
    "arrow": [(np.array([[-1, -0.35], [0.15, -0.35], [0.15, -1], [1, 0], [0.15, 1], [0.15, 0.35],
                         [-1, 0.35]], float), 1)],
    "pentagon": [(_regular(5), 1)],
    "crescent": [(_regular(48), 1), (_regular(48, 0.8) + np.array([0.45, -0.2]), 0)],
}


@dataclass(frozen=True)
class SceneClass:
    """One class of the synthetic world: a fixed shape, colour and texture."""

    index: int
    shape: str
    colour: str
    texture: str

    @property
    def wnid(self) -> str:
        return f"n99{self.index:06d}"

    @property
    def name(self) -> str:
        return f"{self.colour} {self.texture} {self.shape}"


def scene_classes(num_classes: int) -> list[SceneClass]:
    """The first ``num_classes`` classes; class ``i`` has shape ``i % S`` and a colour/texture pair chosen
    so that every class is a different (shape, colour, texture) combination (at most S*C*T classes)."""
    shapes, colours = list(SHAPES), list(COLOURS)
    s_n, c_n, t_n = len(shapes), len(colours), len(TEXTURES)
    if not 1 <= num_classes <= s_n * c_n * t_n:
        raise ValueError(f"num_classes must be in 1..{s_n * c_n * t_n}, got {num_classes}")
    return [SceneClass(i, shapes[s], colours[(s + q) % c_n], TEXTURES[(s + q // c_n) % t_n])
            for i in range(num_classes) for q, s in [divmod(i, s_n)]]


def _dull_colour(rng: np.random.Generator) -> np.ndarray:
    """A desaturated colour: grey plus a small tint (float32[3])."""
    return (rng.uniform(40, 215) + rng.uniform(-30, 30, 3)).astype(np.float32)


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """An irregular closed outline (int32[K, 2]) that is none of the class shapes."""
    k = 14
    t = np.arange(k) * 2 * math.pi / k + rng.uniform(0, 2 * math.pi)
    r = radius * rng.uniform(0.45, 1.0, k)
    r = (r + np.roll(r, 1) + np.roll(r, -1)) / 3  # smooth the outline a little
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1).round().astype(np.int32)


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered background: ndarray[H, W, 3] uint8 RGB (gradient, noise, lines, blobs)."""
    a, b = _dull_colour(rng), _dull_colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = a + (b - a) * t[..., None]
    side = max(height, width)
    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        cv2.fillPoly(img, [_blob(rng, cx, cy, rng.uniform(0.05, 0.3) * side)], _dull_colour(rng).tolist())
    for _ in range(rng.integers(3, 11)):
        p = rng.uniform(0, 1, 4) * np.array([width, height, width, height])
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), _dull_colour(rng).tolist(),
                 int(rng.integers(1, 5)), cv2.LINE_AA)
    img += rng.normal(0, 7, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def render_object(rng: np.random.Generator, cls: SceneClass, size: float) -> tuple[np.ndarray, np.ndarray]:
    """One instance of ``cls``, longer side about ``size`` pixels: ``mask`` bool[h, w] (its full extent) and
    ``pixels`` uint8[h, w, 3] RGB, both the size of the rotated object's bounding patch."""
    aspect = SHAPE_ASPECT.get(cls.shape, 1.0) * math.exp(rng.uniform(-0.2, 0.2))
    half = np.array([1.0, aspect]) / max(1.0, aspect) * size / 2  # half width, half height
    theta = math.radians(rng.uniform(-15, 15))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    polys = [(pts * half) @ rot.T for pts, _ in SHAPES[cls.shape]]
    outline = np.concatenate(polys)
    lo, hi = np.floor(outline.min(axis=0)), outline.max(axis=0)
    w, h = (np.ceil(hi - lo) + 1).astype(int)
    mask = np.zeros((h, w), np.uint8)
    for p, (_, value) in zip(polys, SHAPES[cls.shape]):
        cv2.fillPoly(mask, [(p - lo).round().astype(np.int32)], int(value))

    # texture coordinates in the object's own frame, in units of its size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx + lo[0], yy + lo[1]
    u = (xx * math.cos(theta) + yy * math.sin(theta)) / size
    v = (-xx * math.sin(theta) + yy * math.cos(theta)) / size
    colour = np.clip(np.array(COLOURS[cls.colour], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
    dark = colour * 0.3
    freq = rng.uniform(3.5, 5.0)  # texture cycles across the object
    phase = rng.uniform(0, 1, 2)
    su, sv = u * freq + phase[0], v * freq + phase[1]
    if cls.texture == "solid":
        t = np.zeros_like(u)
    elif cls.texture == "striped":
        t = (np.floor(su) % 2).astype(np.float32)
    elif cls.texture == "checked":
        t = ((np.floor(su) + np.floor(sv)) % 2).astype(np.float32)
    elif cls.texture == "dotted":
        t = ((su % 1 - 0.5) ** 2 + (sv % 1 - 0.5) ** 2 < 0.09).astype(np.float32)
    elif cls.texture == "graded":
        t = np.clip(u + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown texture {cls.texture!r}")
    pixels = colour + (dark - colour) * t[..., None]
    return mask.astype(bool), pixels.clip(0, 255).astype(np.uint8)


def _paste_window(x0: int, y0: int, h: int, w: int, height: int, width: int):
    """Slices of the image and of a patch at (x0, y0) for their overlap (callers make sure there is one)."""
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def render_detection_image(rng: np.random.Generator, width: int, height: int, classes: list[SceneClass],
                           labels: list[int], min_object_size: float, max_object_fraction: float,
                           min_visible: float, max_attempts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a scene with objects of the given ``labels`` (larger ones behind smaller ones).
    Object sizes are log-uniform in [min_object_size, max_object_fraction * min(width, height)]. An object
    is kept only when it and every object behind it stay at least ``min_visible`` visible (clipping and
    occlusion together); one that cannot be placed in ``max_attempts`` tries is left out. Returns image
    uint8[H, W, 3], boxes int64[N, 4] (0-based inclusive xmin, ymin, xmax, ymax: the object's full extent
    clipped to the image) and labels int64[N]."""
    image = render_background(rng, height, width)
    top = max(min_object_size, max_object_fraction * min(width, height))
    sizes = np.exp(rng.uniform(math.log(min_object_size), math.log(top), len(labels)))
    order = np.argsort(-sizes, kind="stable")
    placed = []  # [label, full in-image mask, full area, visible mask]
    for k in order:
        mask, pixels = render_object(rng, classes[labels[k]], float(sizes[k]))
        h, w = mask.shape
        area = int(mask.sum())
        for _ in range(max_attempts):
            x0 = int(rng.integers(-w // 2, width - w // 2 + 1))
            y0 = int(rng.integers(-h // 2, height - h // 2 + 1))
            win = _paste_window(x0, y0, h, w, height, width)
            full = np.zeros((height, width), bool)
            full[win[0]] = mask[win[1]]
            if full.sum() < min_visible * area or any((vis & ~full).sum() < min_visible * a for _, _, a, vis in placed):
                continue
            for item in placed:
                item[3] &= ~full
            placed.append([int(labels[k]), full, area, full.copy()])
            image[win[0]][mask[win[1]]] = pixels[win[1]][mask[win[1]]]
            break
    boxes = [[xs.min(), ys.min(), xs.max(), ys.max()] for ys, xs in (np.nonzero(p[1]) for p in placed)]
    return image, np.array(boxes, np.int64).reshape(-1, 4), np.array([p[0] for p in placed], np.int64)


def render_classification_image(rng: np.random.Generator, size: int, cls: SceneClass) -> np.ndarray:
    """One object of ``cls`` (longer side 40-80 % of ``size``) near the centre of a cluttered ``size`` x ``size``
    image (uint8[S, S, 3] RGB)."""
    image = render_background(rng, size, size)
    mask, pixels = render_object(rng, cls, rng.uniform(0.4, 0.8) * size)
    h, w = mask.shape
    x0 = int(round((size - w) / 2 + rng.uniform(-0.12, 0.12) * size))
    y0 = int(round((size - h) / 2 + rng.uniform(-0.12, 0.12) * size))
    win = _paste_window(x0, y0, h, w, size, size)
    image[win[0]][mask[win[1]]] = pixels[win[1]][mask[win[1]]]
    return image


def ilsvrc_xml(folder: str, file_name: str, width: int, height: int, boxes: np.ndarray, names: list[str],
               voc: bool = False) -> str:
    """An ILSVRC annotation file, one ``object`` per box (0-based inclusive integer pixels); ``voc``: a PASCAL
    VOC one (1-based boxes, VOC's ``depth``, ``segmented``, ``pose``, ``truncated`` and ``difficult``)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = file_name
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "synthetic"
    size = ET.SubElement(root, "size")
    for key, value in {"width": width, "height": height, **({"depth": 3} if voc else {})}.items():
        ET.SubElement(size, key).text = str(value)
    if voc:
        ET.SubElement(root, "segmented").text = "0"
    for box, name in zip(boxes, names):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        for key in ("pose", "truncated", "difficult") if voc else ():
            ET.SubElement(obj, key).text = "Unspecified" if key == "pose" else "0"
        bb = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, key).text = str(int(value) + voc)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


LAYOUTS = {  # per layout: (image file, annotation file (COCO: None, one file per split), the split's list file)
    "ilsvrc": ("Data/DET/{split}/{name}.JPEG", "Annotations/DET/{split}/{name}.xml", "ImageSets/DET/{split}.txt"),
    "voc": ("JPEGImages/{name}{ext}", "Annotations/{name}.xml", "ImageSets/Main/{voc_split}.txt"),
    "coco": ("images/{split}/{name}{ext}", None, "annotations/instances_{split}.json"),
}
VOC_SPLITS = {"train": "trainval", "val": "test"}  # the world's splits as named in its VOC layout


def _world_files(params: dict, split: str, i: int) -> tuple[str, str | None, str]:
    """:data:`LAYOUTS`' files of image ``i`` (0-based) of ``split`` (its extension: ``extensions`` in turn)."""
    extensions = params.get("extensions", [""])
    fields = {"split": split, "name": f"synthetic_{split}_{i + 1:06d}", "ext": extensions[i % len(extensions)],
              "voc_split": VOC_SPLITS[split]}
    return tuple(None if path is None else path.format(**fields) for path in LAYOUTS[params.get("layout", "ilsvrc")])


def _planned_files(params: dict) -> list[str]:
    """Every file a generation with ``params`` writes, relative to its root (POSIX separators)."""
    if params["kind"] == "classification_set":
        files = [f"{split}/{cls.wnid}/{cls.wnid}_{k + 1:05d}.JPEG" for split in ("train", "val")
                 for cls in scene_classes(params["num_classes"]) for k in range(params[f"{split}_per_class"])]
        return files + ["classes.tsv"]
    files = []
    for split in ("train", "val"):
        for i in range(params[f"num_{split}"]):
            files += [f for f in _world_files(params, split, i)[:2] if f]
        files.append(_world_files(params, split, 0)[2])
    return files + (["classes.tsv"] if params.get("layout", "ilsvrc") == "ilsvrc" else [])


def _generate(root: str | Path, params: dict, what: str, write_split) -> ClassList:
    """``write_split(root, params, split)`` for train and val, then ``classes.tsv`` where planned, under the
    ownership rules (module docstring); returns the world's :class:`ClassList`."""
    root = Path(root)
    classes = scene_classes(params["num_classes"])
    class_list = ClassList(tuple(c.wnid for c in classes), tuple(c.name for c in classes))
    files = _planned_files(params)
    if prepare_root(root, params, files, f"synthetic {what}"):
        log.info("%s: %s up to date", root, what)
        return class_list
    for split in ("train", "val"):
        write_split(root, params, split)
    if "classes.tsv" in files:
        write_class_list(class_list, root / "classes.tsv")
    finish_root(root, params, files)
    return class_list


def _split_seed(seed: int, split: str) -> int:
    return {"train": 1, "val": 2}[split] + 10 * int(seed)


def make_classification_set(root: str | Path, num_classes: int = 8, train_per_class: int = 100,
                            val_per_class: int = 20, image_size: int = 128, seed: int = 0) -> ClassList:
    """Write the classification set (module docstring; one object per image); returns its :class:`ClassList`."""
    params = {"kind": "classification_set", "version": RENDERER_VERSION, "num_classes": int(num_classes),
              "train_per_class": int(train_per_class), "val_per_class": int(val_per_class),
              "image_size": int(image_size), "seed": int(seed)}
    return _generate(root, params, "classification set", _write_classification_split)


def _write_classification_split(root: Path, params: dict, split: str) -> None:
    per_class = params[f"{split}_per_class"]
    for cls in tqdm(scene_classes(params["num_classes"]), desc=f"synthetic cls {split}", leave=False):
        for k in range(per_class):
            rng = np.random.default_rng([_split_seed(params["seed"], split), cls.index, k])
            write_jpeg(root / split / cls.wnid / f"{cls.wnid}_{k + 1:05d}.JPEG",
                       render_classification_image(rng, params["image_size"], cls), JPEG_QUALITY)
    log.info("%s: wrote %d classes x %d %s images", root, params["num_classes"], per_class, split)


def make_detection_world(root: str | Path, num_classes: int = 8, num_train: int = 300, num_val: int = 100,
                         min_side: int = 192, max_side: int = 320, max_objects: int = 6,
                         empty_fraction: float = 0.1, seed: int = 0, min_object_size: float = 20.0,
                         max_object_fraction: float = 0.9, min_visible: float = 0.5,
                         max_attempts: int = 20, layout: str = "ilsvrc",
                         extensions: tuple[str, ...] = (".jpg",)) -> ClassList:
    """Write a detection set (module docstring); returns its ClassList. Each image is ``W x H``, both sides
    uniform in [min_side, max_side]; ``round(empty_fraction * n)`` images per split have no object, the
    others 1..max_objects. The first object of the k-th non-empty image is class ``k % num_classes`` (every
    class appears once there are enough images), the rest are uniform; sizes, visibility and placement:
    :func:`render_detection_image`. layout: ``ilsvrc`` (with ``classes.tsv``), ``voc`` (a VOC20xx folder:
    1-based boxes, class names, ``ImageSets/Main/trainval.txt`` = train, ``test.txt`` = val) or ``coco``
    (``annotations/instances_{train,val}.json``, ``images/{train,val}/``, category ids 1..C); the same seed
    draws the same pictures and boxes in every layout (:data:`LAYOUTS`). extensions: voc/coco image file
    extensions, used in turn (e.g. ``[".jpg", ".JPG"]``, to exercise readers); the files are JPEG whatever
    the name says."""
    if not (0 < min_side <= max_side) or max_objects < 1 or not 0 <= empty_fraction <= 1:
        raise ValueError(f"bad parameters: min_side={min_side} max_side={max_side} "
                         f"max_objects={max_objects} empty_fraction={empty_fraction}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {tuple(LAYOUTS)}")
    params = {"kind": "detection_world", "version": RENDERER_VERSION, "num_classes": int(num_classes),
              "num_train": int(num_train), "num_val": int(num_val), "min_side": int(min_side),
              "max_side": int(max_side), "max_objects": int(max_objects),
              "empty_fraction": float(empty_fraction), "seed": int(seed),
              "min_object_size": float(min_object_size), "max_object_fraction": float(max_object_fraction),
              "min_visible": float(min_visible), "max_attempts": int(max_attempts)}
    if layout != "ilsvrc":  # (ILSVRC-layout manifests keep their earlier form)
        extensions = [str(e) for e in extensions]
        if not extensions or not all(e.startswith(".") and "/" not in e and len(e) > 1 for e in extensions):
            raise ValueError(f"extensions={extensions!r}: expected file extensions such as ['.jpg', '.JPG']")
        params.update(layout=layout, extensions=extensions)
    return _generate(root, params, "detection world", _write_world_split)


def _draw_world_image(params: dict, classes: list[SceneClass], split: str, i: int,
                      non_empty: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i`` (0-based) of ``split``: :func:`render_detection_image`'s (image, boxes, labels). ``non_empty``:
    how many non-empty images of the split came before it (see :func:`make_detection_world`); None: no object."""
    rng = np.random.default_rng([_split_seed(params["seed"], split), 1000, i])
    width, height = (int(v) for v in rng.integers(params["min_side"], params["max_side"] + 1, 2))
    labels = []
    if non_empty is not None:
        n = int(rng.integers(1, params["max_objects"] + 1))
        labels = [non_empty % params["num_classes"]] + rng.integers(0, params["num_classes"], n - 1).tolist()
    return render_detection_image(rng, width, height, classes, labels, params["min_object_size"],
                                  params["max_object_fraction"], params["min_visible"], params["max_attempts"])


def _write_world_split(root: Path, params: dict, split: str) -> None:
    """Write the images of ``split``, their annotations and the split's list (or COCO file)."""
    layout, count = params.get("layout", "ilsvrc"), params[f"num_{split}"]
    voc = layout == "voc"
    classes = scene_classes(params["num_classes"])
    split_rng = np.random.default_rng([_split_seed(params["seed"], split)])
    empty = set(split_rng.permutation(count)[: int(round(params["empty_fraction"] * count))].tolist())
    lines, non_empty, n_boxes = [], 0, 0
    coco = {"images": [], "annotations": [], "categories": [{"id": c.index + 1, "name": c.name} for c in classes]}
    for i in tqdm(range(count), desc=f"synthetic det {split}", leave=False):
        image, boxes, labels = _draw_world_image(params, classes, split, i, None if i in empty else non_empty)
        non_empty += i not in empty
        n_boxes += len(boxes)
        image_rel, annotation_rel, _ = _world_files(params, split, i)
        write_jpeg(root / image_rel, image, JPEG_QUALITY)
        height, width = image.shape[:2]
        file_name, name = Path(image_rel).name, f"synthetic_{split}_{i + 1:06d}"
        if layout == "coco":
            coco["images"].append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):  # inclusive -> continuous xywh
                w, h = x2 - x1 + 1, y2 - y1 + 1
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                            "category_id": label + 1, "bbox": [x1, y1, w, h], "area": w * h,
                                            "iscrowd": 0})
            continue
        names = [classes[k].name if voc else classes[k].wnid for k in labels]
        atomic_write_text(root / annotation_rel, ilsvrc_xml("JPEGImages" if voc else split, file_name if voc else name,
                                                            width, height, boxes, names, voc=voc))
        lines.append(name if voc else f"{name} {i + 1}")
    list_file = root / _world_files(params, split, 0)[2]
    if layout == "coco":
        atomic_write_json(list_file, coco, indent=None)
    else:
        atomic_write_text(list_file, "".join(line + "\n" for line in lines))
    log.info("%s: %s split, %d images, %d boxes, %d empty", root, split, count, n_boxes, len(empty))
