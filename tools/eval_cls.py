"""Table 3 of the paper: top-1/top-5 error of one model and of the ensemble, for 1, 10 and 144 crops.

    python tools/eval_cls.py 'checkpoints=[a.pt,b.pt]' 'schemes=[1,10,144]'
    python tools/eval_cls.py 'checkpoints=[/weights/bvlc_googlenet.caffemodel]' data_cls=imagenet data_cls.root=...

Each model gets the crops prepared with its own input convention (a BVLC model BGR 0..255, ours
ImageNet-normalised), so ensembles may mix them. BVLC weights name no classes: their outputs are the
ILSVRC 2012 synsets in sorted wnid order (Caffe's ``synsets.txt``), which the split's classes must be.
"""
from __future__ import annotations

import logging

import detect  # noqa: F401  (first: sets OpenMP's passive waiting before torch loads; see detect/__init__.py)

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from detect.classes import ClassList
from detect.data.classification import ClassificationDataset, ClassificationSplit, make_loader
from detect.data.transforms import TestTransform
from detect.distributed import DistributedContext, resolve_device
from detect.classify import collect_probabilities, topk_accuracy
from detect.io import atomic_write_json
from detect.models.convention import RGB01, WithInputConvention
from detect.models.weights import load_model

log = logging.getLogger("eval_cls")


def _relabel(split: ClassificationSplit, classes: ClassList) -> ClassificationSplit:
    """Express the split's labels in the models' class order (matched by wnid)."""
    if split.classes == classes:
        return split
    missing = [w for w in split.classes.wnids if w not in classes]
    if missing:
        raise ValueError(f"{split.root}: classes unknown to the models: {missing[:5]}")
    to_model = [classes.index(w) for w in split.classes.wnids]
    return ClassificationSplit([(p, to_model[y]) for p, y in split.samples], classes, split.root)


def _classes(path: str, ckpt: dict, split_classes: ClassList) -> ClassList:
    """The output classes of a model: those its checkpoint records, or for weights that name none
    (BVLC's) the split's classes in sorted wnid order, which must number the model's outputs."""
    if ckpt.get("classes"):
        return ClassList.from_dict(ckpt["classes"], str(path))
    n = int(ckpt["model_kwargs"]["num_classes"])
    if len(split_classes) != n:
        raise ValueError(f"{path}: the file names no classes; its {n} outputs are the ILSVRC 2012 synsets in sorted "
                         f"wnid order (Caffe's synsets.txt), but the evaluation split has {len(split_classes)} classes")
    order = sorted(range(n), key=lambda i: split_classes.wnids[i])
    return ClassList(tuple(split_classes.wnids[i] for i in order), tuple(split_classes.names[i] for i in order))


@hydra.main(config_path="../conf", config_name="eval_cls", version_base="1.3")
def main(cfg: DictConfig) -> list[dict]:
    device = resolve_device(cfg.device)
    models, ckpts = zip(*[load_model(path, map_location="cpu") for path in cfg.checkpoints])
    crop_size = cfg.crop_size or ckpts[0].get("config", {}).get("crop_size", 224)
    if cfg.generate_data and "generate" in cfg.data_cls:
        instantiate(cfg.data_cls.generate)
    split = instantiate(cfg.data_cls.val)
    classes = _classes(cfg.checkpoints[0], ckpts[0], split.classes)
    for path, ck in zip(cfg.checkpoints, ckpts):
        if _classes(path, ck, split.classes).wnids != classes.wnids:
            raise ValueError(f"{path}: class list differs from {cfg.checkpoints[0]}'s")
    split = _relabel(split, classes)
    conventions = [m.input_convention.describe() for m in models]
    for path, convention in zip(cfg.checkpoints, conventions):
        log.info("%s: input %s", path, convention)
    prepared = [WithInputConvention(m) for m in models]  # plain RGB 0..1 crops in, each model's convention applied

    rows = []
    for crops in cfg.schemes:
        transform = TestTransform(crop_size, crops=crops, resize=cfg.resize, scales=tuple(cfg.scales), convention=RGB01)
        loader = make_loader(ClassificationDataset(split, transform), cfg.batch_size, False, cfg.num_workers,
                             DistributedContext(device=device))
        probs, labels, per_image = collect_probabilities(prepared, loader, device)
        for n_models, p in ((1, probs[0]), (len(models), probs.mean(0))):
            rows.append({"models": n_models, "crops": per_image, "cost": n_models * per_image,
                         "top1_error": 1 - topk_accuracy(p, labels, 1), "top5_error": 1 - topk_accuracy(p, labels, 5),
                         "images": len(labels)})
            if len(models) == 1:
                break
    rows.sort(key=lambda r: (r["models"], r["crops"]))
    print(f"{'models':>7} {'crops':>6} {'cost':>6} {'top-1 error':>12} {'top-5 error':>12}")
    for r in rows:
        print(f"{r['models']:>7} {r['crops']:>6} {r['cost']:>6} {100 * r['top1_error']:>11.2f}% {100 * r['top5_error']:>11.2f}%")
    atomic_write_json(cfg.report, {"checkpoints": list(cfg.checkpoints), "input_conventions": conventions,
                                   "crop_size": crop_size, "rows": rows})
    log.info("wrote %s", cfg.report)
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
