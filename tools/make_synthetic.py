"""Write the synthetic detection world and classification set (idempotent; see detect.data.synthetic).

    python tools/make_synthetic.py                                   # both, default sizes
    python tools/make_synthetic.py data.generate.num_train=50 classification=false
"""
from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="make_synthetic", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.detection:
        if cfg.data.get("generate") is None:
            raise ValueError(f"data={cfg.data.name} has no generate block: nothing to generate")
        classes = instantiate(cfg.data.generate)
        log.info("detection world: %d classes in %s", len(classes), cfg.data.root)
    if cfg.classification:
        if cfg.data_cls.get("generate") is None:
            raise ValueError(f"data_cls={cfg.data_cls.name} has no generate block: nothing to generate")
        classes = instantiate(cfg.data_cls.generate)
        log.info("classification set: %d classes in %s", len(classes), cfg.data_cls.root)


if __name__ == "__main__":
    main()
