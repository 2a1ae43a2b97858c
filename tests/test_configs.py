"""Every tool config composes under every recipe, and its objects instantiate (CPU, tiny sizes, tmp_path)."""
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
TOOLS = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in ("common", "training"))  # shared blocks
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ILSVRC = ["data.root=/datasets/ILSVRC", "data_cls.root=/datasets/ILSVRC2012"]


def _compose(tool, experiment, tmp_path, extra=()):
    overrides = [f"experiment={experiment}", *extra]
    if experiment in ("ilsvrc14", "rcnn_baseline"):
        overrides += ILSVRC
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(tool, overrides=overrides)
    cfg.work_dir = str(tmp_path)
    return cfg


def test_every_tool_has_a_script_and_every_script_a_config():
    scripts = [p for p in (CONF.parent / "tools").glob("*.py") if p.is_file()]  # tools/detect.py/ is an alias
    configs = [m for p in scripts for m in re.findall(r'config_name="(\w+)"', p.read_text())]
    assert sorted(configs) == TOOLS
    assert {"none", "demo", "demo_quick", "ilsvrc14", "rcnn_baseline"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("tool", TOOLS)
def test_composes_and_resolves(tool, experiment, tmp_path):
    cfg = _compose(tool, experiment, tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.paths.detector.startswith(str(tmp_path))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipe_objects_instantiate(experiment, tmp_path):
    """The model, the proposers and the optimisers that a recipe selects build on the CPU at tiny width."""
    cfg = _compose("train_region", experiment, tmp_path, ["model.width=0.125"])
    model = instantiate(cfg.model, num_classes=3)
    assert model.feature_dim > 0
    instantiate(cfg.optimizer)(model.parameters())
    proposals = cfg.proposals
    sources = proposals.sources if "sources" in proposals else [proposals]
    for source in sources:
        if "MultiBox" in source._target_:
            continue  # needs a trained checkpoint: covered by tests/test_multibox.py
        proposer = instantiate(source)
        assert callable(proposer) and proposer.name


def test_recipes_choose_what_the_paper_describes(tmp_path):
    paper = _compose("train_region", "ilsvrc14", tmp_path)
    assert paper.members == 6 and paper.data.name == "ilsvrc"
    assert paper.model.batch_norm is False and paper.model.five_by_five and paper.model.lrn
    assert paper.proposals.sources[0].superpixel_scale == 2.0 and paper.proposals.caps[1] == 200
    assert paper.detector.nms_iou == 0.3 and paper.fg_iou == 0.5 and paper.fg_fraction == 0.25
    rcnn = _compose("propose", "rcnn_baseline", tmp_path)
    assert rcnn.proposals.superpixel_scale == 1.0 and "sources" not in rcnn.proposals
    demo = _compose("train_cls", "demo", tmp_path)
    assert demo.model.width == 0.25 and demo.crop_size == 96 and demo.epochs < 30
    quick = _compose("train_region", "demo_quick", tmp_path)
    assert quick.members == 1 and quick.epochs == 1
