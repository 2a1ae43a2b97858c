"""Test-time crops (1, 10, 144), ensemble averaging of softmax, and the eval_cls tool (Table 3)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from detect.data.synthetic import make_classification_set
from detect.data.transforms import TestTransform, crops_144, five_crops
from detect.classify import collect_probabilities, topk_accuracy
from detect.io import atomic_torch_save
from detect.models.convention import RGB01
from detect.models.googlenet import GoogLeNet

REPO = Path(__file__).resolve().parents[1]
PLAIN = {"convention": RGB01}


def _coords(h, w):
    """Float image whose channel 0 is x / 1000 and channel 1 is y / 1000 (so crops reveal their origin)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs / 1000, ys / 1000, torch.zeros(h, w)]).float()


def test_five_crops_positions():
    x = _coords(10, 12)
    tl, tr, bl, br, c = five_crops(x, 4)
    origin = lambda crop: (round(float(crop[0, 0, 0]) * 1000), round(float(crop[1, 0, 0]) * 1000))
    assert [origin(v) for v in (tl, tr, bl, br, c)] == [(0, 0), (8, 0), (0, 6), (8, 6), (4, 3)]


@pytest.mark.parametrize("h, w", [(60, 90), (90, 60), (64, 64)])
def test_144_crops_count_squares_and_mirrors(h, w):
    crops = crops_144(_coords(h, w), 16, scales=(32, 36, 40, 44))
    assert len(crops) == 144 and all(c.shape == (3, 16, 16) for c in crops)
    first, mirrors = crops[:72], crops[72:]
    assert all(torch.equal(m, c.flip(-1)) for c, m in zip(first, mirrors))
    # scale 32: the shorter side becomes 32; the three squares lie along the longer side
    long_side = round(max(h, w) * 32 / min(h, w))
    offsets = (0, (long_side - 32) // 2, long_side - 32)
    for square, off in enumerate(offsets):
        tl = first[square * 6]  # top-left corner crop of this square
        x0, y0 = float(tl[0, 0, 0]) * 1000, float(tl[1, 0, 0]) * 1000
        along = x0 if w >= h else y0  # original-image coordinate of the crop's origin along the long side
        assert along == pytest.approx(off * min(h, w) / 32, abs=2.0)
    # the 6th crop of a square is the whole square resized: it spans the square's full extent
    whole = first[5]
    assert float(whole[0].max() - whole[0].min()) * 1000 > 0.8 * min(h, w)


def test_test_transform_shapes_and_relative_sizes():
    image = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    assert TestTransform(32, crops=1)(image).shape == (3, 32, 32)
    assert TestTransform(32, crops=10)(image).shape == (10, 3, 32, 32)
    assert TestTransform(32, crops=144)(image).shape == (144, 3, 32, 32)
    t = TestTransform(112, crops=144)
    assert t.resize == 128 and t.scales == (128, 144, 160, 176)  # 256/224 .. 352/224 of the crop
    ten = TestTransform(32, crops=10, **PLAIN)(image)
    assert torch.equal(ten[5:], ten[:5].flip(-1))
    with pytest.raises(ValueError, match="crops"):
        TestTransform(32, crops=7)


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_ensemble_averages_softmax_not_logits():
    models = [Fixed([0.0, 100.0]), Fixed([10.0, 0.0]), Fixed([10.0, 0.0])]
    loader = [(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])), None]
    probs, labels, crops = collect_probabilities(models, loader, "cpu", progress=False)
    assert probs.shape == (3, 2, 2) and crops == 1
    ensemble = probs.mean(0)
    assert ensemble.argmax(1).tolist() == [0, 0]  # 2 of 3 softmax votes for class 0 ...
    logit_mean = torch.tensor([[0.0, 100.0], [10.0, 0.0], [10.0, 0.0]]).mean(0)
    assert logit_mean.argmax().item() == 1  # ... while the mean of logits says class 1
    assert topk_accuracy(ensemble, labels, 1) == 0.5 and topk_accuracy(ensemble, labels, 5) == 1.0


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_cls_tool", REPO / "tools" / "eval_cls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_cls_tool_table3(tmp_path, capsys):
    root = tmp_path / "data" / "cls_synthetic"
    classes = make_classification_set(root, num_classes=3, train_per_class=1, val_per_class=1, image_size=48)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = GoogLeNet(num_classes=3, width=0.125, batch_norm=True)
        path = tmp_path / f"m{seed}.pt"
        atomic_torch_save({"model_kwargs": model.model_kwargs, "model_state": model.state_dict(),
                           "classes": {"wnids": list(classes.wnids), "names": list(classes.names)},
                           "config": {"crop_size": 64}}, path)
        paths.append(str(path))
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval_cls", overrides=[f"work_dir={tmp_path}", f"checkpoints=[{paths[0]},{paths[1]}]",
                                             "num_workers=0", "data_cls.generate.num_classes=3"])
    rows = _load_tool().main(cfg)
    table = {(r["models"], r["crops"]): r for r in rows}
    assert set(table) == {(1, 1), (1, 10), (1, 144), (2, 1), (2, 10), (2, 144)}
    assert table[(2, 144)]["cost"] == 288 and table[(2, 144)]["images"] == 3
    out = capsys.readouterr().out
    assert "top-5 error" in out and "   144    288" in out
    report = json.loads((tmp_path / "eval" / "cls_table3.json").read_text())
    assert len(report["rows"]) == 6 and report["crop_size"] == 64
