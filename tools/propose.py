"""Proposals for a whole dataset split; see conf/propose.yaml.

    python tools/propose.py data=ilsvrc split=val proposals=ss_paper
    RANK=1 WORLD_SIZE=4 python tools/propose.py ...   # or torchrun: rank r takes every 4th image
"""
from __future__ import annotations

import functools
import logging
import os

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detect.data.splits import HeldOutPart, proposal_store_path, split_name
from detect.io import digest
from proposals.spec import proposer_spec
from proposals.store import propose_dataset

log = logging.getLogger("propose")


@hydra.main(config_path="../conf", config_name="propose", version_base="1.3")
def main(cfg: DictConfig) -> None:
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if cfg.data.get("generate") is not None and rank == 0:
        instantiate(cfg.data.generate)
    dataset = instantiate(cfg.data[cfg.split])
    if isinstance(dataset, HeldOutPart):  # a store holds the dataset's whole split: it serves train and monitor
        log.info("split=%s is the %s part of %s: proposing for the whole split (%d images)", cfg.split,
                 dataset.part, dataset.whole.name, len(dataset.whole))
        dataset = dataset.whole
    proposer_cfg = OmegaConf.to_container(cfg.proposals, resolve=True)
    proposer = instantiate(proposer_cfg, _convert_="all")
    output = cfg.output or proposal_store_path(cfg.paths.proposals_dir, cfg.data, cfg.split, proposer.name)
    summary = propose_dataset(
        [r.path for r in dataset.records], [r.image_id for r in dataset.records], proposer, output,
        functools.partial(instantiate, proposer_cfg, _convert_="all"),
        workers=cfg.workers, chunk_size=cfg.chunk_size, rank=rank, world_size=world_size,
        stop_after_chunks=cfg.stop_after_chunks, merge_timeout_s=cfg.merge_timeout_s, poll_s=cfg.poll_s,
        meta={"dataset": cfg.data.name, "split": split_name(cfg.data, cfg.split), "proposals": proposer_cfg,
              "proposer": digest(proposer_spec(proposer))},  # the weights too, not only the checkpoint path
        progress=cfg.progress, image_fingerprint=cfg.image_fingerprint,
        image_sizes=[(r.width, r.height) for r in dataset.records],  # each image in its annotation's frame
    )
    if summary.merged:
        log.info("proposals in %s; %s", summary.path, summary.skipped.summary())
    else:
        log.info("computed %d chunks (rank %d of %d); not merged yet", summary.chunks_computed, rank, world_size)


if __name__ == "__main__":
    main()
