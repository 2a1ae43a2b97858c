"""Classification data, the training transforms, the train_cls config and tool (1 process and torchrun)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from detect.classes import ClassList, write_class_list
from detect.data.classification import ClassificationDataset, collate_skip, read_split
from detect.data.records import SkipLog, SkippedItem
from detect.data.transforms import INTERPOLATIONS, TrainTransform, to_float_tensor
from detect.distributed import DistributedContext
from detect.engine import TrainSettings, fit
from detect.classify import ClassificationLoss
from detect.io import load_checkpoint
from detect.models.convention import BVLC, RGB01
from detect.models.googlenet import GoogLeNet
from detect.models.weights import load_model

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=googlenet_small", "model.width=0.125", "crop_size=64", "batch_size=4", "eval_batch_size=8",
        "num_workers=0", "data_cls.generate.train_per_class=4", "data_cls.generate.val_per_class=2",
        "data_cls.generate.image_size=64", "checkpoint_every=null"]


def _png(path: Path, value: int, size=(20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------ transforms
def test_train_transform_crop_area_and_aspect_ranges():
    t = TrainTransform(crop_size=32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    torch.manual_seed(0)
    areas, aspects = [], []
    for _ in range(300):
        top, left, h, w = t.crop_box(200, 300)
        assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 300
        areas.append(h * w / 60000)
        aspects.append(w / h)
    assert min(areas) >= 0.08 - 0.01 and max(areas) <= 1.0
    assert min(areas) < 0.2 and max(areas) > 0.6  # the whole range is drawn
    assert min(aspects) >= 0.75 - 0.03 and max(aspects) <= 4 / 3 + 0.03


def test_train_transform_output_and_interpolations(monkeypatch):
    t = TrainTransform(crop_size=24, brightness=0.4, contrast=0.4, saturation=0.4)
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    used = []
    import detect.data.transforms as tr
    real = tr._resize
    monkeypatch.setattr(tr, "_resize", lambda x, size, mode="bilinear": used.append(mode) or real(x, size, mode))
    torch.manual_seed(0)
    outs = [t(image) for _ in range(40)]
    assert all(o.shape == (3, 24, 24) and o.dtype == torch.float32 for o in outs)
    assert set(used) == set(INTERPOLATIONS)
    # normalised: a mid-grey image maps near (0.5 - mean) / std
    grey = TrainTransform(crop_size=8, brightness=0, contrast=0, saturation=0, flip_prob=0)(np.full((16, 16, 3), 128, np.uint8))
    expect = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(grey.mean(dim=(1, 2)), expect, atol=1e-4)


def test_flip_is_a_mirror():
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, :5] = 255  # left half white
    t = TrainTransform(crop_size=10, scale=(1, 1), ratio=(1, 1), brightness=0, contrast=0, saturation=0, flip_prob=1.0,
                       interpolations=("nearest",), convention=RGB01)
    out = t(image)
    assert torch.equal(out, to_float_tensor(image).flip(-1))


# ------------------------------------------------------------------------------------------ data
def test_read_split_folders_and_class_list(tmp_path):
    for wnid, v in (("n02", 10), ("n01", 20)):
        for k in range(2):
            _png(tmp_path / "train" / wnid / f"{k}.png", v)
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    split = read_split(tmp_path / "train")
    assert split.classes.wnids == ("n01", "n02") and len(split) == 4
    assert [lb for _, lb in split.samples] == [0, 0, 1, 1]
    write_class_list(ClassList(("n02", "n01"), ("two", "one")), tmp_path / "classes.tsv")
    split = read_split(tmp_path / "train", classes=tmp_path / "classes.tsv")
    assert [(p.parent.name, lb) for p, lb in split.samples][0] == ("n01", 1)
    write_class_list(ClassList(("n02",), ("two",)), tmp_path / "one.tsv")
    with pytest.raises(ValueError, match="n01"):
        read_split(tmp_path / "train", classes=tmp_path / "one.tsv")


def test_read_split_flat_folder_with_labels_file(tmp_path):
    for k in range(3):
        _png(tmp_path / "val" / f"img_{k}.png", 10 * k)
    write_class_list(ClassList(("n01", "n02", "n03"), ("a", "b", "c")), tmp_path / "classes.tsv")
    (tmp_path / "pairs.txt").write_text("img_0.png n03\nimg_1.png 0\nimg_2.png b\n")
    split = read_split(tmp_path / "val", classes=tmp_path / "classes.tsv", labels_file=tmp_path / "pairs.txt")
    assert [lb for _, lb in split.samples] == [2, 0, 1]
    (tmp_path / "gt.txt").write_text("3\n1\n2\n")  # ILSVRC2012 ground truth: 1-based, sorted image order
    split = read_split(tmp_path / "val", classes=tmp_path / "classes.tsv", labels_file=tmp_path / "gt.txt")
    assert [(p.name, lb) for p, lb in split.samples] == [("img_0.png", 2), ("img_1.png", 0), ("img_2.png", 1)]
    (tmp_path / "bad.txt").write_text("img_0.png n09\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: unknown class 'n09'"):
        read_split(tmp_path / "val", classes=tmp_path / "classes.tsv", labels_file=tmp_path / "bad.txt")


@pytest.mark.slow
def test_unreadable_image_is_reported_counted_and_skipped(tmp_path, caplog):
    for k in range(3):
        _png(tmp_path / "train" / "n01" / f"{k}.png", 50)
    (tmp_path / "train" / "n01" / "3_broken.png").write_bytes(b"\x89PNG not really")
    split = read_split(tmp_path / "train")
    ds = ClassificationDataset(split, TrainTransform(crop_size=64))
    assert isinstance(ds[3], SkippedItem) and ds[3].file.endswith("3_broken.png")
    assert "3_broken.png" in caplog.text
    batch = collate_skip([ds[i] for i in range(4)])
    assert batch.images.shape == (3, 3, 64, 64) and batch.dropped == 1 and batch.skipped == (ds[3],)
    empty = collate_skip([ds[3], ds[3]])
    assert len(empty.labels) == 0 and empty.dropped == 2
    # through the train loop: the epoch summary counts the dropped samples
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_skip)
    model = GoogLeNet(num_classes=2, width=0.125, aux_logits=False)
    caplog.clear()
    skipped = SkipLog("images")
    with caplog.at_level("INFO", logger="detect.engine"):
        fit(model, ClassificationLoss(), loader, torch.optim.SGD(model.parameters(), lr=0.01), None,
            TrainSettings(1, ema_decay=None, max_skipped_fraction=0.5), DistributedContext(), tmp_path / "c.pt",
            skipped=skipped)
    assert "skipped_samples 1" in caplog.text
    assert [f for f, _ in skipped.entries] == [str(tmp_path / "train" / "n01" / "3_broken.png")]
    # a quarter of the samples skipped is more than the default share: the run stops and says why
    with pytest.raises(RuntimeError, match="1 of 4 samples skipped.*3_broken.png"):
        fit(model, ClassificationLoss(), loader, torch.optim.SGD(model.parameters(), lr=0.01), None,
            TrainSettings(1, ema_decay=None), DistributedContext(), tmp_path / "d.pt", skipped=SkipLog("images"))


# ---------------------------------------------------------------------------------- config, tool
def test_config_composes_and_instantiates(tmp_path):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train_cls", overrides=[f"work_dir={tmp_path}", *TINY])
    assert cfg.model._target_.endswith("GoogLeNet") and cfg.optimizer.momentum == 0.9
    assert cfg.scheduler.step_size == 8 and cfg.scheduler.gamma == 0.96 and cfg.loss.aux_weight == 0.3
    model = instantiate(cfg.model, num_classes=3)
    opt = instantiate(cfg.optimizer)(params=model.parameters())
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
    assert instantiate(cfg.train_transform)(np.zeros((40, 50, 3), np.uint8)).shape == (3, 64, 64)
    assert cfg.checkpoint == f"{tmp_path}/cls/checkpoint.pt"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train_cls", overrides=["data_cls=imagenet", "data_cls.root=/x"])
    assert cfg.data_cls.train.image_dir == "/x/train"


def _run_tool(args, tmp_path, torchrun=False, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else [])
    cmd += [str(REPO / "tools" / "train_cls.py"), f"work_dir={tmp_path}", *TINY, *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_cls_tool_end_to_end_and_resume(tmp_path):
    # init: weights expecting BVLC's input (BGR 0..255 minus mean), as after init=bvlc_googlenet.caffemodel
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        init = instantiate(compose("train_cls", overrides=TINY).model, num_classes=5)
    init.set_input_convention(BVLC)
    torch.save({"model_kwargs": init.model_kwargs, "model_state": init.state_dict()}, tmp_path / "init.pt")
    r = _run_tool(["epochs=2", "max_steps_per_epoch=2", f"init={tmp_path / 'init.pt'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out top-1" in r.stdout and "(16 images" in r.stdout
    ck = load_checkpoint(tmp_path / "cls" / "checkpoint.pt")
    assert ck["epoch"] == 2 and len(ck["classes"]["wnids"]) == 8
    assert ck["model_kwargs"]["input_convention"] == BVLC.to_dict()  # the convention of the init weights
    model, _ = load_model(tmp_path / "cls" / "checkpoint.pt")  # model_state fits model_kwargs
    assert model.fc.out_features == 8
    # resuming without the init: the model would expect ImageNet input, the checkpoint's weights BVLC's: refused
    r = _run_tool(["epochs=3", "max_steps_per_epoch=2"], tmp_path)
    assert r.returncode != 0 and "differs in: init, model" in r.stderr
    r = _run_tool(["epochs=3", "max_steps_per_epoch=2", f"init={tmp_path / 'init.pt'}"], tmp_path)  # one more epoch
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout + r.stderr and "epoch 3/3" in r.stdout + r.stderr
    ck = load_checkpoint(tmp_path / "cls" / "checkpoint.pt")
    assert ck["epoch"] == 3 and ck["model_kwargs"]["input_convention"] == BVLC.to_dict()


@pytest.mark.slow
def test_train_cls_with_torchrun_on_cpu(tmp_path):
    r = _run_tool(["epochs=1", "max_steps_per_epoch=2"], tmp_path, torchrun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("held-out top-1") == 1  # printed by rank 0 only
    assert "rank 1/2" in r.stdout + r.stderr
    assert load_checkpoint(tmp_path / "cls" / "checkpoint.pt")["epoch"] == 1
