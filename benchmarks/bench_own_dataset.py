"""The "own dataset" command on a VOC folder the project writes: wall time per stage and VOC mAP.

    .venv/bin/python benchmarks/bench_own_dataset.py --work /tmp/own_dataset [--format voc|coco|roboflow|roboflow_voc|yolo] [--photo]
    .venv/bin/python benchmarks/bench_own_dataset.py --work /tmp/own_real --format roboflow --real-coco ../shared/data/coco128

Writes the synthetic detection world (the demo's size: 8 classes, 300 training and 100 test images)
in one of four shapes users bring: a PASCAL VOC folder (1-based boxes, class names,
ImageSets/Main/trainval.txt and test.txt; every third image named ``.JPG``, the others ``.jpg``); the
official COCO layout (annotations/instances_<split>.json, images/<split>/); a Roboflow COCO export
(train/, valid/, test/, each with ``_annotations.coco.json`` beside its images, ids from 0, the
dataset's own supercategory as category 0 with no boxes; 15 % of the training images in valid/); a
Roboflow "Pascal VOC" export (the same three folders, each image with its VOC XML beside it); or an
ultralytics YOLO folder (images/<split>/, labels/<split>/*.txt with normalised cx cy w h, data.yaml
with ``names``). Then it runs, timed, exactly what a user runs:

    python tools/demo.py experiment=small data=voc data.root=<folder> work_dir=<work>/run

and prints the seconds of every stage (from the stage stamps), the proposal and detection cost per
image, the cost per ensemble member and the mAP with the data's own rules (VOC for VOC, COCO AP50 for
COCO). A summary JSON is written to ``<work>/summary.json``. ``--photo`` draws the world at the size of
phone photos (sides 1000-1500 pixels, objects from 30 pixels to 0.3 of the shorter side) instead of the
demo's 192-320 pixels: the case where selective search's segmented size decides what can be found.
``--real-coco`` takes real photos and their COCO annotations instead of the synthetic world (written as
a Roboflow export, the last ``--num-test`` images as the test split).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detect.data.synthetic import make_detection_world  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


DATA_OVERRIDES = {
    "voc": ["data=voc"],
    "coco": ["data=coco", "data.train_name=train", "data.val_name=val"],
    "roboflow": ["data=coco", "data.train_name=[train,valid]", "data.val_name=test"],
    "roboflow_voc": ["data=voc", "data.train_split=[train,valid]", "data.test_split=test"],
    "yolo": ["data=yolo"],
}


def _roboflow_folder(folder: Path, images: list[dict], annotations: list[dict], categories: list[dict],
                     image_dir: Path) -> None:
    """One split folder of a Roboflow COCO export: ``images`` copied from ``image_dir`` (bytes unchanged)
    and ``_annotations.coco.json`` beside them, image and annotation ids renumbered from 0 as Roboflow does."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    new_id = {im["id"]: k for k, im in enumerate(images)}
    for im in images:
        shutil.copyfile(image_dir / im["file_name"], folder / im["file_name"])
    anns = [a for a in annotations if a["image_id"] in new_id]
    doc = {"info": {"description": "written by bench_own_dataset.py"}, "categories": categories,
           "images": [{**im, "id": new_id[im["id"]]} for im in images],
           "annotations": [{**a, "id": k, "image_id": new_id[a["image_id"]]} for k, a in enumerate(anns)]}
    (folder / "_annotations.coco.json").write_text(json.dumps(doc))


def write_roboflow(coco_root: Path, out: Path, valid_share: float = 0.15) -> None:
    """The official-layout COCO world ``coco_root`` re-laid as a Roboflow export at ``out``: train/ and
    valid/ (every image whose rank modulo 1/valid_share is 0) from the training split, test/ from val;
    ids renumbered from 0 as Roboflow does, category 0 the dataset's supercategory (no boxes)."""

    def split(src_split: str, parts: dict[str, callable]) -> None:
        data = json.loads((coco_root / "annotations" / f"instances_{src_split}.json").read_text())
        categories = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
            {"id": c["id"], "name": c["name"], "supercategory": "shapes"} for c in data["categories"]]
        ranked = sorted(data["images"], key=lambda im: im["id"])
        for name, keep in parts.items():
            _roboflow_folder(out / name, [im for k, im in enumerate(ranked) if keep(k)], data["annotations"],
                             categories, coco_root / "images" / src_split)

    every = round(1 / valid_share)
    split("train", {"train": lambda k: k % every != 0, "valid": lambda k: k % every == 0})
    split("val", {"test": lambda k: True})


def write_roboflow_voc(voc_root: Path, out: Path, valid_share: float = 0.15) -> None:
    """The VOC world ``voc_root`` re-laid as a Roboflow "Pascal VOC" export at ``out``: train/ and valid/
    (every image whose rank modulo 1/valid_share is 0) from trainval, test/ from test, each image with its
    XML beside it."""
    import shutil

    every = round(1 / valid_share)
    for voc_list, parts in (("trainval", lambda k: "valid" if k % every == 0 else "train"), ("test", lambda k: "test")):
        for k, stem in enumerate((voc_root / "ImageSets" / "Main" / f"{voc_list}.txt").read_text().split()):
            folder = out / parts(k)
            folder.mkdir(parents=True, exist_ok=True)
            image = next((voc_root / "JPEGImages").glob(f"{stem}.*"))
            shutil.copyfile(image, folder / image.name)
            shutil.copyfile(voc_root / "Annotations" / f"{stem}.xml", folder / f"{stem}.xml")


def write_yolo(voc_root: Path, out: Path) -> None:
    """The VOC world ``voc_root`` re-laid as an ultralytics YOLO folder at ``out``: images/{train,val},
    labels/{train,val}/<stem>.txt (class cx cy w h, normalised), data.yaml with the sorted class names."""
    import shutil

    from detect.data.xmlfile import read_xml_root

    def objects(xml: Path):
        root = read_xml_root(xml)
        size = root.find("size")
        w, h = float(size.findtext("width")), float(size.findtext("height"))
        for obj in root.iter("object"):
            b = obj.find("bndbox")
            x1, y1, x2, y2 = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            yield obj.findtext("name"), w, h, x1 - 1, y1 - 1, x2, y2

    lists = {"train": "trainval", "val": "test"}
    names = sorted({o[0] for stem in (voc_root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
                    for o in objects(voc_root / "Annotations" / f"{stem}.xml")})
    index = {n: k for k, n in enumerate(names)}
    for split, voc_list in lists.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem in (voc_root / "ImageSets" / "Main" / f"{voc_list}.txt").read_text().split():
            image = next((voc_root / "JPEGImages").glob(f"{stem}.*"))
            shutil.copyfile(image, out / "images" / split / image.name)
            lines = [f"{index[n]} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                     for n, w, h, x1, y1, x2, y2 in objects(voc_root / "Annotations" / f"{stem}.xml")]
            (out / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    yaml_names = "".join(f"  {k}: {n}\n" for k, n in enumerate(names))
    (out / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{yaml_names}")


def write_real_roboflow(annotation_file: Path, image_dir: Path, out: Path, num_test: int,
                        valid_share: float = 0.15) -> None:
    """Real photos with their COCO annotations (e.g. ../shared/data/coco128) re-laid as a Roboflow export
    at ``out``: the last ``num_test`` images (by id) in test/, of the others every ``1 / valid_share``-th
    in valid/ and the rest in train/; ids from 0 and Roboflow's boxless supercategory as category 0 (the
    real categories keep their ids, their crowd flags, segmentations and areas)."""
    data = json.loads(annotation_file.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])
    train, test = images[:-num_test], images[-num_test:]
    step = max(2, round(1 / valid_share))
    parts = {"train": [im for k, im in enumerate(train) if k % step != step - 1],
             "valid": [im for k, im in enumerate(train) if k % step == step - 1], "test": test}
    categories = [{"id": 0, "name": "objects", "supercategory": "none"}] + data["categories"]
    for split, chosen in parts.items():
        _roboflow_folder(out / split, chosen, data["annotations"], categories, image_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the dataset and the run")
    p.add_argument("--format", choices=list(DATA_OVERRIDES), default="voc")
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--photo", action="store_true", help="photo-sized images with small objects")
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for tools/demo.py")
    p.add_argument("--real-coco", type=Path, metavar="FOLDER",
                   help="real photos instead of the synthetic world: a folder with annotations/instances_*.json and "
                        "images/<name>/ (e.g. ../shared/data/coco128), written as a Roboflow export (--format roboflow)")
    p.add_argument("--num-test", type=int, default=28, help="with --real-coco: the images (last ids) held out as test/")
    args = p.parse_args()
    size = dict(min_side=1000, max_side=1500, min_object_size=30.0, max_object_fraction=0.3) if args.photo else {}
    work = Path(args.work).resolve()
    data_root = work / f"{args.format}_world"
    start = time.perf_counter()
    layout = {"roboflow": "coco", "yolo": "voc", "roboflow_voc": "voc"}.get(args.format, args.format)
    source = work / f"{layout}_source" if layout != args.format else data_root
    if args.real_coco is not None:
        if args.format != "roboflow":
            raise SystemExit("--real-coco writes a Roboflow export: use it with --format roboflow")
        (annotation_file,) = sorted((args.real_coco / "annotations").glob("instances_*.json"))
        image_dir = args.real_coco / "images" / annotation_file.stem.removeprefix("instances_")
        write_real_roboflow(annotation_file, image_dir, data_root, args.num_test)
    else:
        make_detection_world(source, num_train=args.num_train, num_val=args.num_val, layout=layout,
                             extensions=[".jpg", ".jpg", ".JPG"], **size)
        writer = {"roboflow": write_roboflow, "yolo": write_yolo, "roboflow_voc": write_roboflow_voc}.get(args.format)
        if writer is not None:
            writer(source, data_root)
    print(f"dataset written in {time.perf_counter() - start:.1f} s: {data_root}", flush=True)
    data = DATA_OVERRIDES[args.format]
    cmd = [sys.executable, str(ROOT / "tools" / "demo.py"), "experiment=small", *data, f"data.root={data_root}",
           f"work_dir={work / 'run'}", f"members={args.members}", *args.extra]
    print("$ " + " ".join(cmd[1:]), flush=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the command failed with exit code {result.returncode}")
    run = work / "run"
    stages = {}
    for stamp in sorted((run / "stages").glob("*.json"), key=lambda s: s.stat().st_mtime):
        info = json.loads(stamp.read_text())
        stages[info["name"]] = info["seconds"]
    reports = sorted((run / "eval").glob("eval_*.json"), key=lambda f: f.stat().st_mtime)
    if not reports:
        raise SystemExit(f"no evaluation report in {run / 'eval'}")
    report = json.loads(reports[-1].read_text())
    per_image = {}
    for store in sorted((run / "proposals").glob("*.json")):
        side = json.loads(store.read_text())
        if "seconds_per_image" in side:
            per_image[store.stem] = side["seconds_per_image"]
    members = [stages[k] for k in stages if k.startswith("train_region_")]
    summary = {"command": " ".join(cmd[1:]), "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "wall_seconds": wall, "stage_seconds": stages, "proposal_seconds_per_image": per_image,
               "seconds_per_member": members, "test_images": report.get("num_images"),
               "rules": report.get("rules"), "mean_ap": report["mean_ap"],
               "ap50_pycocotools": report.get("ap50_pycocotools")}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"\n{args.format}: mAP@0.5 {report['mean_ap']:.4f} ({summary['rules']} rules, {summary['test_images']} test images), "
          f"wall {wall / 60:.1f} min, {len(members)} members, CPU {summary['cpu']} x{summary['cores']}, "
          f"load average {load_before[0]:.1f} before / {summary['load_average_after'][0]:.1f} after")


if __name__ == "__main__":
    main()
