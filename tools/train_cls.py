"""Train a GoogLeNet classifier (the paper's section 6 recipe); one process or ``torchrun`` (DDP).

    python tools/train_cls.py model=googlenet_small crop_size=96 epochs=5
    python -m torch.distributed.run --nproc_per_node=2 tools/train_cls.py ...
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detect import distributed
from detect.data.classification import ClassificationDataset, make_loader
from detect.data.records import SkipLog
from detect.engine import TrainSettings, fit, init_identity, run_fingerprint, seed_everything
from detect.classify import evaluate_classification
from detect.models.weights import load_pretrained
from detect.runs import image_list_digest

log = logging.getLogger("train_cls")
# what a resumed checkpoint must have been trained with (epochs and logging may change between runs)
RUN_SETTINGS = ("crop_size", "batch_size", "ema_decay", "grad_clip", "loss", "optimizer", "scheduler",
                "train_transform", "seed", "amp")


@hydra.main(config_path="../conf", config_name="train_cls", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    ctx = distributed.setup(cfg.device)
    try:
        seed_everything(cfg.seed, ctx.rank)
        if "generate" in cfg.data_cls and ctx.is_main:
            instantiate(cfg.data_cls.generate)
        distributed.barrier()
        train_split, val_split = instantiate(cfg.data_cls.train), instantiate(cfg.data_cls.val)
        classes = train_split.classes
        if val_split.classes != classes:
            raise ValueError(f"{val_split.root}: class list differs from the training split's")
        if len(classes) < 2:  # a softmax over one class has loss 0 and no gradient: it would train nothing
            raise ValueError(f"{train_split.root}: {len(classes)} class ({', '.join(classes.names)}): classification "
                             "needs at least two classes to tell apart")

        resolved = OmegaConf.to_container(cfg, resolve=True)
        skipped = SkipLog("training images")
        model = instantiate(cfg.model, num_classes=len(classes))
        if cfg.init:
            load_pretrained(model, cfg.init)  # also takes the input convention of those weights
        convention = model.input_convention.to_dict()  # the data is prepared as these weights expect
        train_loader = make_loader(ClassificationDataset(train_split, instantiate(cfg.train_transform, convention=convention)),
                                   cfg.batch_size, True, cfg.num_workers, ctx, cfg.seed)
        val_loader = make_loader(ClassificationDataset(val_split, instantiate(cfg.val_transform, convention=convention)),
                                 cfg.eval_batch_size, False, cfg.num_workers, ctx, cfg.seed)
        optimizer = instantiate(cfg.optimizer)(params=model.parameters())
        scheduler = instantiate(cfg.scheduler)(optimizer=optimizer)
        averaged = fit(
            model=model, loss_fn=instantiate(cfg.loss), train_loader=train_loader, optimizer=optimizer,
            scheduler=scheduler, settings=TrainSettings.from_config(cfg), ctx=ctx, checkpoint_path=Path(cfg.checkpoint),
            checkpoint_meta={"model_kwargs": model.model_kwargs,
                             "classes": classes.to_dict(),
                             "config": OmegaConf.to_container(cfg, resolve=True)},
            evaluate=lambda m: evaluate_classification(m, val_loader, ctx.device), skipped=skipped,
            fingerprint=run_fingerprint(
                data=[str(cfg.data_cls.name), image_list_digest([p for p, _ in train_split.samples],
                                                                [int(label) for _, label in train_split.samples])],
                classes=list(classes.wnids), model=model.model_kwargs, init=init_identity(cfg.init),
                settings={k: resolved[k] for k in RUN_SETTINGS}),
        )
        if ctx.is_main and len(skipped):
            print(skipped.summary(), flush=True)
        result = evaluate_classification(averaged, val_loader, ctx.device)
        if ctx.is_main:
            print(f"held-out top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  ({result['n']} images, "
                  f"checkpoint {cfg.checkpoint})", flush=True)
        return result
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
