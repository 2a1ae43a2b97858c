"""An ILSVRC-shaped detection world for scale benchmarks and the recipe rehearsal: the 200 ILSVRC DET
classes, the ILSVRC 2013/2014 tarball layout, the devkit's lists, R-CNN's val1/val2 halves and a
blacklist, with small rendered images (networks are not what these benchmarks measure).

Layout written under ``root`` (what ``conf/data/ilsvrc2014.yaml`` reads):

- ``ILSVRC2013_DET_val/<name>.JPEG`` and ``ILSVRC2013_DET_bbox_val/<name>.xml``, names like the real
  ones (``ILSVRC2012_val_00000001``, ``ILSVRC2013_val_00000002``);
- ``devkit/data/det_lists/val.txt`` (``<name> <index>``, index 1..N), ``val1.txt`` and ``val2.txt``
  (R-CNN's split: the images of the blacklist in neither, each list with its own 1-based index
  column, as rbgirshick/rcnn's files are), ``devkit/data/ILSVRC2014_det_validation_blacklist.txt``
  (``<official val index> <wnid>``);
- ``world.json``: the parameters. A folder holding a world with the same parameters is reused; any
  other non-empty folder is refused (nothing is ever deleted).

Each class is drawn as one of the synthetic renderer's 200 shape x colour x texture combinations
(:mod:`detect.data.synthetic`), written under the real class's wnid. ``StandInProposer`` is the cheap
stand-in proposer of the scale benchmarks.

    python benchmarks/ilsvrc_world.py /tmp/world --images 1000
"""
from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from detect.classes import ilsvrc_det_classes
from detect.data.synthetic import render_detection_image, scene_classes
from proposals.base import Proposals

__all__ = ["make_ilsvrc2014_world", "StandInProposer", "write_classification_folders"]

VAL_DIRS = ("ILSVRC2013_DET_val", "ILSVRC2013_DET_bbox_val")
LISTS = Path("devkit") / "data" / "det_lists"
BLACKLIST = Path("devkit") / "data" / "ILSVRC2014_det_validation_blacklist.txt"
WORLD_VERSION = 1


def _xml(name: str, width: int, height: int, boxes: np.ndarray, wnids: list[str]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "ILSVRC2013_val"
    ET.SubElement(root, "filename").text = name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    for box, wnid in zip(boxes, wnids):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = wnid
        bb = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, key).text = str(int(value))
    return ET.tostring(root, encoding="unicode") + "\n"


def make_ilsvrc2014_world(root: str | Path, images: int = 1000, min_side: int = 64, max_side: int = 128,
                          max_objects: int = 4, blacklist_fraction: float = 0.016, seed: int = 0,
                          progress: bool = False) -> dict:
    """Write (or reuse) the world described in the module docstring; returns its ``world.json`` content.

    images: val images (the real val has 20,121); sides uniform in [min_side, max_side]; 1..max_objects
    objects per image of uniform classes (the first object of image k is class k % 200, so every class
    appears once there are 200 images); blacklist_fraction: share of images with one blacklisted
    (image, class) pair (the real blacklist: 317 of 20,121 images).
    """
    root = Path(root)
    params = {"version": WORLD_VERSION, "images": int(images), "min_side": int(min_side), "max_side": int(max_side),
              "max_objects": int(max_objects), "blacklist_fraction": float(blacklist_fraction), "seed": int(seed)}
    manifest = root / "world.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        if recorded.get("params") == params and recorded.get("complete"):
            return recorded
        raise FileExistsError(f"{root}: holds an ILSVRC-shaped world with other parameters ({recorded.get('params')}); "
                              "give a new folder")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: not empty and not a world written here; give a new folder")
    classes = ilsvrc_det_classes()
    scenes = scene_classes(len(classes))
    image_dir, xml_dir = (root / d for d in VAL_DIRS)
    image_dir.mkdir(parents=True)
    xml_dir.mkdir(parents=True)
    (root / LISTS).mkdir(parents=True)
    rng_split = np.random.default_rng([seed, 1])
    start = time.perf_counter()
    names, labels_of, n_boxes = [], [], 0
    for i in range(images):
        rng = np.random.default_rng([seed, 2, i])
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        n = int(rng.integers(1, max_objects + 1))
        labels = [i % len(classes)] + rng.integers(0, len(classes), n - 1).tolist()
        image, boxes, labels = render_detection_image(rng, width, height, scenes, labels, min_object_size=12,
                                                      max_object_fraction=0.9, min_visible=0.5, max_attempts=20)
        name = f"ILSVRC{2012 + (i % 3 == 2)}_val_{i + 1:08d}"
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"{name}: JPEG encoding failed")
        (image_dir / f"{name}.JPEG").write_bytes(data.tobytes())
        (xml_dir / f"{name}.xml").write_text(_xml(name, width, height, boxes, [classes.wnids[l] for l in labels]))
        names.append(name)
        labels_of.append(labels)
        n_boxes += len(boxes)
        if progress and (i + 1) % 1000 == 0:
            print(f"  world: {i + 1}/{images} images, {time.perf_counter() - start:.0f} s", flush=True)
    (root / LISTS / "val.txt").write_text("".join(f"{n} {k + 1}\n" for k, n in enumerate(names)))
    black = sorted(rng_split.choice(images, size=int(round(blacklist_fraction * images)), replace=False).tolist())
    black_lines = [f"{k + 1} {classes.wnids[int(labels_of[k][0]) if len(labels_of[k]) else 0]}\n" for k in black]
    (root / BLACKLIST).write_text("".join(black_lines))
    rest = np.array(sorted(set(range(images)) - set(black)), np.int64)
    rng_split.shuffle(rest)
    halves = (rest[: len(rest) // 2], rest[len(rest) // 2:])
    for list_name, half in zip(("val1.txt", "val2.txt"), halves):
        (root / LISTS / list_name).write_text("".join(f"{names[k]} {j + 1}\n" for j, k in enumerate(half.tolist())))
    record = {"params": params, "complete": True, "boxes": n_boxes, "blacklisted": len(black),
              "val1": len(halves[0]), "val2": len(halves[1]), "seconds": round(time.perf_counter() - start, 2)}
    manifest.write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_classification_folders(root: str | Path, num_classes: int = 10, per_class: int = 4, val_per_class: int = 2,
                                 image_size: int = 64, seed: int = 0):
    """A tiny ImageNet-style set (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) for pre-training stages:
    :func:`detect.data.synthetic.make_classification_set`, read by ``data_cls=imagenet``."""
    from detect.data.synthetic import make_classification_set

    return make_classification_set(root, num_classes=num_classes, train_per_class=per_class,
                                   val_per_class=val_per_class, image_size=image_size, seed=seed)


class StandInProposer:
    """A cheap, deterministic proposer for scale benchmarks: ``num_boxes`` boxes per image, of which the
    first ``large`` have both sides >= ``large_side`` pixels (clipped to the image) and the others are
    smaller than ``large_side``; scores descending. Boxes depend on the image size and content.

    A detector whose ``min_size`` is ``large_side`` then scores ``large`` regions per image, which keeps
    the network's share of a detection benchmark small while every stage handles ``num_boxes``.
    """

    name = "standin"

    def __init__(self, num_boxes: int = 2000, large: int = 5, large_side: float = 24.0, seed: int = 0):
        if not 0 <= large <= num_boxes:
            raise ValueError(f"large={large} must be in 0..num_boxes={num_boxes}")
        self.num_boxes, self.large, self.large_side, self.seed = num_boxes, large, float(large_side), seed

    def __call__(self, image: np.ndarray) -> Proposals:
        h, w = image.shape[:2]
        rng = np.random.default_rng([self.seed, h, w, int(image[::16, ::16].sum())])
        n_small = self.num_boxes - self.large
        side_small = rng.uniform(2.0, min(self.large_side - 1, w - 1, h - 1), (n_small, 2))
        side_large = np.stack([rng.uniform(min(self.large_side, w), w, self.large),
                               rng.uniform(min(self.large_side, h), h, self.large)], axis=1)
        sides = np.concatenate([side_large, side_small])
        x1 = rng.uniform(0, 1, len(sides)) * (w - sides[:, 0])
        y1 = rng.uniform(0, 1, len(sides)) * (h - sides[:, 1])
        boxes = np.stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1).astype(np.float32)
        scores = np.linspace(1.0, 0.0, len(boxes), dtype=np.float32)
        return Proposals(boxes, scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--min-side", type=int, default=64)
    ap.add_argument("--max-side", type=int, default=128)
    args = ap.parse_args()
    print(json.dumps(make_ilsvrc2014_world(args.root, args.images, args.min_side, args.max_side, progress=True), indent=2))


if __name__ == "__main__":
    main()
