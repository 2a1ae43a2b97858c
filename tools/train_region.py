"""Fine-tune one GoogLeNet region classifier on warped proposal crops, then bundle the detector.

    python tools/train_region.py member=0 seed=0          # ${paths.region_dir}/member0/checkpoint.pt
    python tools/train_region.py member=1                 # another member: other seed, other sampling order
    python tools/train_region.py step=bundle members=2    # ${paths.detector}: all members + detector settings
    torchrun --nproc_per_node=2 tools/train_region.py member=0
"""
from __future__ import annotations

import logging
from pathlib import Path

import detect  # noqa: F401  (first: sets OpenMP's passive waiting before torch loads; see detect/__init__.py)

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from detect.classes import ClassList
from detect.distributed import barrier, cleanup, setup
from detect.data.records import SkipLog
from detect.data.splits import proposal_store_path
from detect.engine import TrainSettings, fit, init_identity, run_fingerprint, seed_everything
from detect.classify import ClassificationLoss, evaluate_classification
from detect.io import check_finished, load_checkpoint
from detect.models.bvlc import weights_format
from detect.models.convention import InputConvention
from detect.models.googlenet import GoogLeNet, GoogLeNetConfig
from detect.models.weights import load_pretrained
from detect.pipeline import DetectorSettings, bundle_detector
from detect.quantize import draw_calibration_crops, draw_calibration_images
from detect.region import RegionDataset, collate_regions
from detect.runs import records_digest
from detect.runtime import worker_threads
from proposals.spec import spec_from_config, spec_name, spec_nodes
from proposals.store import ProposalStore
from proposals.store_format import check_coverage

log = logging.getLogger("train_region")
# what a resumed checkpoint must have been trained with (epochs and logging may change between runs)
RUN_SETTINGS = ("crop_size", "context", "fg_iou", "fg_fraction", "hard_bg_fraction", "hard_bg_iou", "images_per_batch",
                "regions_per_image", "flip_prob", "aux_weight", "ema_decay", "grad_clip", "optimizer", "scheduler")


def store_path(cfg: DictConfig, split: str, given: str | None) -> Path:
    """The proposal store of ``split``: ``given``, or where tools/propose.py writes it."""
    if given:
        return Path(given)
    spec = spec_from_config(OmegaConf.to_container(cfg.proposals, resolve=True), "conf: proposals")
    return proposal_store_path(cfg.paths.proposals_dir, cfg.data, split, spec_name(spec))  # nothing built or loaded


def check_given_stores(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """A store named explicitly (``keys`` of cfg, e.g. ``evaluation.proposals_store``) must exist:
    ``FileNotFoundError`` naming the key and the path (only the default store may be absent)."""
    for key in keys:
        given = OmegaConf.select(cfg, key)
        if given and not Path(given).is_file():
            raise FileNotFoundError(f"{key}={given}: no such proposal store (a store given explicitly must exist; "
                                    f"make it with tools/propose.py, or leave {key} unset)")


def _open_store(path: Path, records, what: str) -> ProposalStore | None:
    """The proposal store at ``path`` checked against the ``records`` it is for (images it lacks are
    counted and logged; one that holds none of them is refused), or None when the default store is
    absent (conf/train_region.yaml: training then uses ground-truth regions only, with a warning)."""
    if path.is_file():
        store = ProposalStore.load(path)
        missing = check_coverage(store, [r.image_id for r in records], what, "ground-truth regions only")
        log.info("%s: proposals for %d of the %d images of %s", path, len(records) - len(missing), len(records), what)
        return store
    log.warning("%s: no proposal store (proposals_store unset and none at the default path); %s uses "
                "ground-truth regions only", path, what)
    return None


def build_member(cfg: DictConfig, num_outputs: int) -> torch.nn.Module:
    """The member network: the init checkpoint's architecture when it records one (``model_from_init``),
    else ``cfg.model`` (BVLC weights: ``model=googlenet``); either way with ``num_outputs`` classifier outputs."""
    if cfg.init and cfg.model_from_init and weights_format(cfg.init) == "torch":
        ckpt = load_checkpoint(cfg.init)
        if isinstance(ckpt, dict) and "model_kwargs" in ckpt:
            log.info("%s: member built with the checkpoint's model_kwargs (cfg.model not used)", cfg.init)
            return GoogLeNet(GoogLeNetConfig.from_kwargs(ckpt["model_kwargs"], str(cfg.init)), num_classes=num_outputs)
    return instantiate(cfg.model, num_classes=num_outputs)


def region_dataset(cfg: DictConfig, records, store: ProposalStore | None, seed: int, train: bool,
                   convention) -> RegionDataset:
    """Training regions (flips, new draws every epoch) or held-out ones (no flips, fixed draws), prepared
    with ``convention`` (the member's input convention)."""
    lookup = store.get if store is not None else {}.__getitem__
    return RegionDataset(records, lookup, convention,
                         regions_per_image=cfg.regions_per_image, fg_fraction=cfg.fg_fraction, fg_iou=cfg.fg_iou,
                         crop_size=cfg.crop_size, context=cfg.context, flip_prob=cfg.flip_prob if train else 0.0,
                         seed=seed, resample=train, hard_bg_fraction=cfg.hard_bg_fraction,
                         hard_bg_iou=cfg.hard_bg_iou)


def train(cfg: DictConfig) -> None:
    check_given_stores(cfg, ("proposals_store", "evaluation.proposals_store") if cfg.evaluation.images
                       else ("proposals_store",))
    ctx = setup(cfg.device)
    seed = int(cfg.seed) + int(cfg.member_seed_stride) * int(cfg.member)
    seed_everything(seed, ctx.rank)
    if cfg.data.get("generate") is not None and ctx.is_main:
        instantiate(cfg.data.generate)
    barrier()
    dataset = instantiate(cfg.data[cfg.split])
    classes = dataset.classes

    model = build_member(cfg, len(classes) + 1)
    if cfg.init:
        load_pretrained(model, cfg.init)  # also takes the input convention of those weights
    store = _open_store(store_path(cfg, cfg.split, cfg.proposals_store), dataset.records, f"{cfg.data.name} {cfg.split}")
    regions = region_dataset(cfg, dataset.records, store, seed, train=True, convention=model.input_convention)
    sampler = DistributedSampler(regions, seed=seed) if ctx.distributed else None
    loader = DataLoader(regions, batch_size=cfg.images_per_batch, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.num_workers, collate_fn=collate_regions, worker_init_fn=worker_threads,
                        drop_last=len(regions) > cfg.images_per_batch, generator=torch.Generator().manual_seed(seed))
    evaluate = None
    if cfg.evaluation.images:
        held_out = instantiate(cfg.data[cfg.evaluation.split]).records[:cfg.evaluation.images]
        val_store = _open_store(store_path(cfg, cfg.evaluation.split, cfg.evaluation.proposals_store), held_out,
                                f"{cfg.data.name} {cfg.evaluation.split} (evaluation)")
        val_loader = DataLoader(region_dataset(cfg, held_out, val_store, cfg.seed, train=False,
                                               convention=model.input_convention),
                                batch_size=cfg.images_per_batch, num_workers=cfg.num_workers,
                                collate_fn=collate_regions, worker_init_fn=worker_threads)

        def evaluate(m):
            return evaluate_classification(m, val_loader, ctx.device, background=0)

    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer) if cfg.scheduler else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    skipped = SkipLog("training images")
    fit(model=model, loss_fn=ClassificationLoss(cfg.aux_weight, background=0), train_loader=loader, optimizer=optimizer,
        scheduler=scheduler, settings=TrainSettings.from_config(cfg), ctx=ctx, checkpoint_path=cfg.checkpoint,
        checkpoint_meta={"model_kwargs": model.model_kwargs, "member": int(cfg.member), "seed": seed,
                         "classes": classes.to_dict()},
        evaluate=evaluate, skipped=skipped,
        fingerprint=run_fingerprint(
            data=[str(cfg.data.name), records_digest(dataset.records)],
            proposals=None if store is None else [store.meta.get("fingerprint"), len(store)],
            classes=list(classes.wnids), model=model.model_kwargs, init=init_identity(cfg.init),
            settings={**{k: resolved[k] for k in RUN_SETTINGS}, "seed": seed}))
    if ctx.is_main:
        if len(skipped):
            print(skipped.summary(), flush=True)
        gt_only = " (no proposal store: trained on ground-truth regions only)" if store is None else ""
        print(f"region classifier member {cfg.member} ({len(classes)} classes + background){gt_only}: {cfg.checkpoint}")
    cleanup()


def draw_calibration(cfg: DictConfig, settings: DetectorSettings, proposer: dict | None,
                     convention: InputConvention) -> dict | None:
    """Inputs for int8 models, drawn from the training split (cfg.calibration): warped proposal crops for
    the members (uint8 RGB, warped in ``convention``, member 0's; returned, for the detector file) and
    resized images added to every network embedded in ``proposer`` (MultiBox); None when
    ``calibration.crops`` is 0."""
    calib = cfg.calibration
    if not calib.crops and not calib.multibox_images:
        return None
    records = instantiate(cfg.data[cfg.split]).records
    recipe = OmegaConf.to_container(calib.recipe, resolve=True)
    networks = [s for s in spec_nodes(proposer) if "network" in s] if calib.multibox_images and proposer else []
    for spec in networks:
        size = int(spec["network"]["model_kwargs"].get("input_size", 224))
        images = draw_calibration_images(records, int(calib.multibox_images), size, seed=int(calib.seed))
        spec["network"] = {**spec["network"], "calibration": torch.from_numpy(images), "int8_recipe": recipe}
    if not calib.crops:
        return None
    check_given_stores(cfg, ("proposals_store",))
    store = _open_store(store_path(cfg, cfg.split, cfg.proposals_store), records, f"{cfg.data.name} {cfg.split}")
    crops = draw_calibration_crops(records, store.get if store is not None else {}.__getitem__, int(calib.crops),
                                   settings.crop_size, settings.context, convention,
                                   seed=int(calib.seed), min_size=settings.min_size)
    log.info("calibration: %d crops, %d MultiBox images per network", len(crops), calib.multibox_images)
    return {"crops": crops, "recipe": recipe}


def bundle(cfg: DictConfig) -> None:
    paths = [Path(cfg.paths.region_dir) / f"member{k}" / "checkpoint.pt" for k in range(int(cfg.members))]
    members = [load_checkpoint(p) for p in paths]
    classes = ClassList.from_dict(members[0]["classes"], str(paths[0]))
    shared = {k: v for k, v in (members[0].get("fingerprint") or {}).items() if k != "settings"}
    for p, m in zip(paths, members):
        check_finished(m, p, int(cfg.epochs))
        if ClassList.from_dict(m["classes"], str(p)) != classes:
            raise ValueError(f"{p}: trained on other classes than {paths[0]}")
        differ = sorted(k for k in shared if (m.get("fingerprint") or {}).get(k) != shared[k])
        if differ:  # members differ by their seed only
            raise ValueError(f"{p}: trained on other inputs than {paths[0]} (differs in: {', '.join(differ)}); "
                             "train every member with the same data, proposals and model")
    settings = DetectorSettings.from_dict(OmegaConf.to_container(cfg.detector, resolve=True), "conf: detector")
    proposer = spec_from_config(OmegaConf.to_container(cfg.proposals, resolve=True), "conf: proposals", embed=True)
    provenance = {"data": str(cfg.data.name), "members": [str(p) for p in paths]}
    convention = InputConvention.from_dict(members[0]["model_kwargs"].get("input_convention"))
    calibration = draw_calibration(cfg, settings, proposer, convention)
    bundle_detector(members, classes, settings, cfg.paths.detector, proposer=proposer, provenance=provenance,
                    calibration=calibration)
    print(f"detector with {len(members)} members ({len(classes)} classes): {cfg.paths.detector}")


@hydra.main(config_path="../conf", config_name="train_region", version_base="1.3")
def main(cfg: DictConfig) -> None:
    steps = {"train": train, "bundle": bundle}
    if cfg.step not in steps:
        raise ValueError(f"step={cfg.step!r}: expected one of {sorted(steps)}")
    steps[cfg.step](cfg)


if __name__ == "__main__":
    main()
