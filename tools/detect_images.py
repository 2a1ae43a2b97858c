"""Run the detector on images and folders; print a table, write JSON and a drawn PNG per image.

    python tools/detect_images.py photo.jpg holiday/ [Hydra overrides, e.g. detector=work/detector.pt device=cpu]

Hydra's command line accepts only `key=value` overrides, so the image arguments (anything without
`=` that is not a Hydra flag) are taken out of sys.argv before Hydra parses it; they are added to
the `images` list of conf/detect.yaml. Missing, corrupt or unsupported images are reported and the
rest still run; the exit code is 1 only when no image could be processed.

"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from detect.data.folder import list_images
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog
from detect.detections import Detections, write_coco_results
from detect.io import OutputConflict, atomic_write_json, refuse_inputs
from detect.records import OwnedFolder
from detect.pipeline import Detector
from detect.plots import draw_detections, write_png

log = logging.getLogger("detect")

HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                          "--config-dir", "-cd", "--info", "--experimental-rerun"}
IMAGE_ARGS: list[str] = []  # filled by split_image_args before Hydra runs (command line only)


def split_image_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(image arguments, the argv Hydra should see): bare words that are not Hydra flags or their values."""
    images, rest = [], [argv[0]]
    expect_value = False
    for arg in argv[1:]:
        if expect_value:
            rest.append(arg)
            expect_value = False
        elif arg.startswith("-"):
            rest.append(arg)
            expect_value = arg in HYDRA_FLAGS_WITH_VALUE
        elif "=" in arg and not Path(arg).exists():
            rest.append(arg)
        else:
            images.append(arg)
    return images, rest


def _table(name: str, result, classes) -> str:
    lines = [f"{name}: {len(result)} detections", f"  {'class':<28} {'score':>6}  box (x1, y1, x2, y2)"]
    for box, score, label in zip(result.boxes, result.scores, result.labels):
        lines.append(f"  {classes.names[label]:<28} {score:6.3f}  ({box[0]:.0f}, {box[1]:.0f}, {box[2]:.0f}, {box[3]:.0f})")
    return "\n".join(lines)


def claim_outputs(files: list[Path], input_dirs: list[str], out_dir: Path, draw: bool, coco: bool) -> dict:
    """``{image path: (json path, png path or None)}`` (plus ``"coco_results"``), every name claimed in
    ``out_dir`` before anything runs: an out_dir inside an input folder, or a file there that this tool
    did not write (an input image among them), stops the run at once with the reason."""
    for folder in input_dirs:
        if out_dir.resolve().is_relative_to(Path(folder).resolve()):
            raise OutputConflict(f"out_dir={out_dir} is inside the input folder {folder}: the drawn images would be "
                                 "written among the inputs (and read as inputs next time); choose another out_dir")
    refuse_inputs([out_dir / f"{p.stem}{ext}" for p in files for ext in (".json", ".png")], files,
                  "choose another out_dir")
    owned = OwnedFolder(out_dir, "detect")
    targets, used = {}, set()
    for k, path in enumerate(files, 1):
        name = path.stem if path.stem not in used else f"{path.stem}_{k}"
        used.add(name)
        targets[path] = (owned.claim(f"{name}.json"), owned.claim(f"{name}.png") if draw else None)
    if coco:
        targets["coco_results"] = owned.claim("coco_results.json")
    return targets


def write_outputs(path: Path, image: np.ndarray, result, target: tuple, classes, show_threshold: float,
                  draw: bool) -> None:
    """Print the table of ``path``'s detections at or above ``show_threshold``; write them as JSON to
    ``target[0]`` and, when ``draw``, drawn on the image as a PNG to ``target[1]``."""
    keep = result.scores >= show_threshold
    json_path, png_path = target
    print(_table(str(path), type(result)(result.boxes[keep], result.scores[keep], result.labels[keep]), classes))
    atomic_write_json(json_path, {
        "image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
        "detections": [{"class": classes.names[l], "wnid": classes.wnids[l], "label": int(l), "score": float(s),
                        "box": [float(v) for v in b]}
                       for b, s, l in zip(result.boxes[keep], result.scores[keep], result.labels[keep])]})
    if draw:
        write_png(png_path, draw_detections(image, result.boxes[keep], result.scores[keep], result.labels[keep],
                                            classes.names))


def coco_ids(files: list[Path], annotation_file: str | None) -> dict[Path, int] | None:
    """``{image path: COCO image id}`` for coco_results.json: the ids of ``annotation_file``'s images
    by file name (every image must be there, else ``SystemExit`` naming those that are not); ``None``
    without a file (ids then number the processed images in order, from 1). Says which in the log."""
    if annotation_file is None:
        log.info("coco_results.json: image_id = position of the image among those processed, from 1 "
                 "(coco_annotations=<COCO json> uses a dataset's ids)")
        return None
    from detect.data.coco import coco_image_ids_by_name

    by_name = coco_image_ids_by_name(annotation_file)
    missing = [str(p) for p in files if p.name not in by_name]
    if missing:
        raise SystemExit(f"coco_annotations={annotation_file}: {len(missing)} of {len(files)} images have no "
                         f"(single) entry of that file name in its images list, so no COCO id: {missing[:5]}")
    log.info("coco_results.json: image_id = the id of the image's file name in %s", annotation_file)
    return {p: by_name[p.name] for p in files}


@hydra.main(config_path="../conf", config_name="detect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    args = list(cfg.images) + IMAGE_ARGS
    if not args:
        raise SystemExit("no images given: python tools/detect_images.py image.jpg [folder ...] [overrides]")
    overrides = {k: cfg[k] for k in ("score_threshold", "max_per_image", "cascade_threshold", "max_pixels")
                 if cfg[k] is not None}
    proposer = instantiate(cfg.proposer, _convert_="all") if cfg.proposer is not None else None
    detector = Detector.from_checkpoint(cfg.detector, device=cfg.device, proposer=proposer, backend=cfg.backend,
                                        amp=cfg.amp, precision=cfg.precision, **overrides)
    classes = detector.classes
    out_dir = Path(cfg.out_dir)
    skipped = SkipLog("images")
    files = []
    for arg in args:
        try:
            files += list_images(arg)
        except FileNotFoundError as e:
            skipped.add(arg, f"missing: {e}")
    if cfg.max_images is not None:
        files = files[: cfg.max_images]
    targets = claim_outputs(files, [a for a in args if Path(a).is_dir()], out_dir, cfg.draw, cfg.coco_results)
    ids = coco_ids(files, cfg.coco_annotations) if cfg.coco_results else None
    records, all_dets = [], []
    for path, image, result, error in detector.detect_many(((f, f, None, None) for f in files), prefetch=cfg.prefetch):
        if error is not None:  # ImageError (names the file), a proposer refusing it, a failed allocation, ...
            skipped.add(path, f"unusable: {error}")
            continue
        try:
            write_outputs(path, image, result, targets[path], classes, cfg.show_threshold, cfg.draw)
        except (MemoryError, RuntimeError) as e:  # e.g. drawing a huge image: this image only
            skipped.add(path, f"outputs not written in full ({type(e).__name__}: {e})")
            continue
        index = len(records) + 1
        records.append(DetectionRecord(str(ids[path]) if ids else str(path), path, image.shape[1], image.shape[0], np.zeros((0, 4)),
                                       np.zeros(0), np.zeros(0), index))
        all_dets.append(Detections.for_image(index, result.labels, result.scores, result.boxes))
    if cfg.coco_results and records:
        write_coco_results(targets["coco_results"], Detections.concat(all_dets),
                           DetectionDataset(records, classes, name="images"))
    print(f"{len(records)} of {len(records) + len(skipped)} images processed; results in {out_dir}")
    if len(skipped):
        print(skipped.summary())
        for file, reason in skipped.entries:
            print(f"  {file}: {reason}")
    if not records:
        raise SystemExit(1)


if __name__ == "__main__":
    IMAGE_ARGS[:], sys.argv[:] = split_image_args(sys.argv)
    main()
