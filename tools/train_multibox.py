"""Train MultiBox on a detection set's ground truth (class-agnostic); see conf/train_multibox.yaml.

    python tools/train_multibox.py init=null model.backbone_kwargs.width=0.25 model.input_size=112
    torchrun --nproc_per_node=2 tools/train_multibox.py ...
"""
from __future__ import annotations

import logging

import detect  # noqa: F401  (first: sets OpenMP's passive waiting before torch loads; see detect/__init__.py)

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from detect.distributed import barrier, cleanup, setup
from detect.data.records import SkipLog
from detect.engine import TrainSettings, fit, init_identity, run_fingerprint, seed_everything
from detect.models.weights import load_pretrained
from detect.runs import records_digest
from detect.runtime import worker_threads
from proposals.multibox.data import MultiBoxDataset, collate_multibox
from proposals.multibox.training import evaluate_coverage, resolve_priors

log = logging.getLogger("train_multibox")
# what a resumed checkpoint must have been trained with (epochs and logging may change between runs)
RUN_SETTINGS = ("multibox", "priors", "loss", "augment", "batch_size", "ema_decay", "grad_clip", "optimizer",
                "scheduler", "seed")


@hydra.main(config_path="../conf", config_name="train_multibox", version_base="1.3")
def main(cfg: DictConfig) -> float:
    ctx = setup(cfg.device)
    seed_everything(cfg.seed, ctx.rank)
    if cfg.data.get("generate") is not None and ctx.is_main:
        instantiate(cfg.data.generate)
    barrier()
    train_set, val_set = instantiate(cfg.data.train), instantiate(cfg.data[cfg.evaluation.split])

    backbone_kwargs = instantiate(cfg.model, aux_logits=False, init_weights=False).model_kwargs
    model = instantiate(cfg.multibox, backbone_kwargs=backbone_kwargs, _convert_="all")
    priors = resolve_priors(cfg.checkpoint if cfg.resume else None, train_set, model.num_priors, cfg.seed,
                            cfg.priors.iterations, cfg.priors.tolerance)
    model.set_priors(priors)
    if cfg.init:
        load_pretrained(model.backbone, cfg.init)  # also takes the input convention of those weights
    model_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.multibox, resolve=True).items() if k != "_target_"}
    model_kwargs["backbone_kwargs"] = model.backbone.model_kwargs  # aux_logits off, init's input convention

    train_data = MultiBoxDataset(train_set, model.input_size, model.input_convention, train=True, **cfg.augment)
    sampler = DistributedSampler(train_data, seed=cfg.seed) if ctx.distributed else None
    loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.num_workers, collate_fn=collate_multibox, worker_init_fn=worker_threads,
                        generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(MultiBoxDataset(val_set, model.input_size, model.input_convention, train=False),
                            batch_size=cfg.evaluation.batch_size, num_workers=cfg.num_workers,
                            collate_fn=collate_multibox, worker_init_fn=worker_threads)

    def evaluate(m):
        return evaluate_coverage(m, val_loader, ctx.device, cfg.evaluation.top_k, cfg.evaluation.iou)

    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    skipped = SkipLog("training images")
    averaged = fit(
        model=model, loss_fn=instantiate(cfg.loss), train_loader=loader, optimizer=optimizer,
        scheduler=scheduler, settings=TrainSettings.from_config(cfg), ctx=ctx, checkpoint_path=cfg.checkpoint,
        checkpoint_meta={"model_kwargs": model_kwargs, "priors": torch.from_numpy(priors),
                         "classes": {"wnids": [], "names": []}},
        evaluate=evaluate, skipped=skipped,
        fingerprint=run_fingerprint(
            data=[str(cfg.data.name), records_digest(train_set.records)],
            model=model_kwargs, init=init_identity(cfg.init), settings={k: resolved[k] for k in RUN_SETTINGS}),
    )
    result = evaluate(averaged)
    if ctx.is_main:
        log.info("held-out coverage of the top %d boxes at IoU %.2f: %.4f (%d ground-truth boxes); %s",
                 cfg.evaluation.top_k, cfg.evaluation.iou, result["coverage"], result["n_gt"], skipped.summary())
        print(f"coverage@{cfg.evaluation.iou} top{cfg.evaluation.top_k}: {result['coverage']:.4f} ({result['n_gt']} boxes)")
    cleanup()
    return result["coverage"]


if __name__ == "__main__":
    main()
