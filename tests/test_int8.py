"""int8 region scoring (detect.quantize, precision= of detect.backends): the int8 model runs and stays
near fp32 on a small trained network, its cache is reused and made again when the weights, the
calibration inputs or the recipe change, and the error / fallback paths say what happened."""
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detect.backends import OnnxScorer, TorchScorer, cached_onnx_export, make_scorer, resolve_precision
from detect.models.googlenet import GoogLeNet, LocalResponseNorm
from detect.quantize import (Int8Recipe, QuantizationError, cached_int8_export, cpu_has_int8_dot, fold_lrns,
                             lrn_effects)

CROP = 32
CLASSES = 4  # background + 3


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised crops of a coloured square on noise; the label is the square's colour (0 = no square)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, CROP, CROP, generator=g) * 0.3
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    for i, c in enumerate(labels.tolist()):
        if c:
            x0, y0 = torch.randint(0, CROP - 20, (2,), generator=g).tolist()
            x[i, c - 1, y0:y0 + 20, x0:x0 + 20] += 2.0
    return x, labels


def _net() -> GoogLeNet:
    """A small BatchNorm GoogLeNet with the paper's two LRNs."""
    return GoogLeNet(num_classes=CLASSES, aux_logits=False, batch_norm=True, width=0.125, dropout=0.0)


@pytest.fixture(scope="module")
def trained():
    """The small network trained end to end for 20 steps (~15 s on 2 cores): the trunk's features carry
    the classes, as a trained detector's do (a random trunk with a fitted classifier is far more
    fragile under int8 than any trained network), and the probabilities are confident but not
    saturated, so that int8 errors show in them."""
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(20):
        x, y = _images(32, seed=step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _images(128, seed=10_000)
    with torch.inference_mode():
        probs = model(x).softmax(1)
    assert (probs.argmax(1) == y).float().mean() > 0.9  # it did learn the task
    assert 0.6 < probs.max(1).values.mean() < 0.99  # confident, not saturated
    return model


def _calibration(n: int = 32, seed: int = 500) -> np.ndarray:
    return _images(n, seed)[0].numpy()


def _int8(model, tmp_path, calibration=None, recipe=Int8Recipe()):
    fp32 = cached_onnx_export(model, tmp_path, "m", CROP)
    key = json.loads((tmp_path / "m.json").read_text())["key"]
    return cached_int8_export(model, fp32, key, _calibration() if calibration is None else calibration, recipe)


def test_int8_scores_near_fp32_on_a_trained_network(trained, tmp_path):
    x, _ = _images(128, seed=20_000)
    fp32 = OnnxScorer(cached_onnx_export(trained, tmp_path, "m", CROP))(x).softmax(1)
    int8_scorer = OnnxScorer(_int8(trained, tmp_path), precision="int8")
    out = int8_scorer(x).softmax(1)
    assert out.shape == fp32.shape and out.dtype == torch.float32
    diff = (out - fp32).abs()
    # measured on this network: top-1 agreement 1.0, max |dp| 0.07, mean |dp| 0.004
    assert (out.argmax(1) == fp32.argmax(1)).float().mean() >= 0.97
    assert diff.max().item() < 0.15 and diff.mean().item() < 0.01
    assert diff.max().item() > 1e-6  # it is a different (quantized) model, not the fp32 one
    # mutation guard: calibrating on inputs 50x too small saturates every activation; the tolerance sees it
    bad = OnnxScorer(_int8(trained, tmp_path / "bad", calibration=_calibration() * 0.02))(x).softmax(1)
    assert (bad - fp32).abs().mean().item() > 2 * diff.mean().item()


def test_int8_model_is_cached_and_made_again_on_change(trained, tmp_path):
    model = _net().eval()
    model.load_state_dict(trained.state_dict())
    path = _int8(model, tmp_path)
    meta = json.loads((tmp_path / "m.int8.json").read_text())
    stamp = path.stat().st_mtime_ns
    assert _int8(model, tmp_path).stat().st_mtime_ns == stamp  # reused

    _int8(model, tmp_path, calibration=_calibration(seed=501))  # other calibration inputs
    assert json.loads((tmp_path / "m.int8.json").read_text())["calibration"] != meta["calibration"]
    _int8(model, tmp_path, recipe=Int8Recipe(per_channel=False))  # other recipe
    assert json.loads((tmp_path / "m.int8.json").read_text())["recipe"]["per_channel"] is False

    x, _ = _images(16, seed=3)
    before = OnnxScorer(_int8(model, tmp_path))(x)
    with torch.no_grad():
        model.fc.bias.add_(torch.tensor([20.0, 0.0, 0.0, 0.0]))  # background everywhere
    after_meta = json.loads((tmp_path / "m.int8.json").read_text())
    path = _int8(model, tmp_path)
    assert json.loads((tmp_path / "m.int8.json").read_text())["fp32_key"] != after_meta["fp32_key"]
    after = OnnxScorer(path)(x)
    assert (after.argmax(1) == 0).all() and not (before.argmax(1) == 0).all()  # the new weights are in it

    path.write_bytes(path.read_bytes()[:500])  # truncated: made again
    assert OnnxScorer(_int8(model, tmp_path))(x).shape == (16, CLASSES)


def test_precision_choice():
    vnni = {"avx512f", "avx512_vnni"}
    assert resolve_precision("fp32", "onnxruntime", True, vnni) == "fp32"
    assert resolve_precision("auto", "onnxruntime", True, vnni) == "int8"
    assert resolve_precision("auto", "onnxruntime", True, {"avx2", "fma"}) == "fp32"  # AVX2 only: not faster
    assert resolve_precision("auto", "onnxruntime", False, vnni) == "fp32"  # nothing to calibrate on
    assert resolve_precision("auto", "torch", True, vnni) == "fp32"
    assert resolve_precision("int8", "onnxruntime", True, set()) == "int8"  # asked for: made anywhere
    with pytest.raises(ValueError, match="needs calibration"):
        resolve_precision("int8", "onnxruntime", False)
    with pytest.raises(ValueError, match="runs on ONNX Runtime"):
        resolve_precision("int8", "torch", True)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", "onnxruntime", True)
    assert cpu_has_int8_dot({"amx_int8"}) and cpu_has_int8_dot({"avx_vnni"}) and not cpu_has_int8_dot({"avx2"})
    with pytest.raises(ValueError, match="lrn"):
        Int8Recipe(lrn="fast")
    with pytest.raises(ValueError, match="unknown setting"):
        Int8Recipe.from_dict({"formats": "qdq"})


def test_make_scorer_int8_error_and_fallback(trained, tmp_path, caplog, monkeypatch):
    x, _ = _images(8, seed=4)
    scorer = make_scorer(trained, "onnxruntime", "cpu", CROP, tmp_path, "m", precision="int8",
                         calibration=_calibration())
    assert scorer.precision == "int8" and scorer.path.name == "m.int8.onnx"
    assert scorer(x).shape == (8, CLASSES)
    broken = _calibration()
    broken[0, 0, 0, 0] = np.nan
    with pytest.raises(QuantizationError, match="NaN"):
        make_scorer(trained, "onnxruntime", "cpu", CROP, tmp_path / "a", "m", precision="int8", calibration=broken)
    monkeypatch.setattr("detect.backends.cpu_has_int8_dot", lambda flags=None: True)
    with caplog.at_level(logging.WARNING):
        fallback = make_scorer(trained, "onnxruntime", "cpu", CROP, tmp_path / "b", "m", precision="auto",
                               calibration=broken)
    assert fallback.precision == "fp32" and "scoring in fp32" in caplog.text
    assert (fallback(x) - TorchScorer(trained)(x)).abs().max().item() < 1e-3
    with pytest.raises(ValueError, match="runs on ONNX Runtime"):
        make_scorer(trained, "torch", "cpu", CROP, tmp_path, "m", precision="int8", calibration=_calibration())


def test_lrn_effects_match_the_layer():
    """The measured effect is 1 - (LRN(x) / x) / k^-beta at its largest, checked against torch's LRN."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
    for scale, foldable in ((1.0, True), (300.0, False)):
        x = np.random.default_rng(0).normal(size=(6, 3, 12, 12)).astype(np.float32) * scale
        effect = lrn_effects(model, x)["1"]
        with torch.inference_mode():
            y = model[0](torch.from_numpy(x))
            ratio = F.local_response_norm(y, 5, 1e-4, 0.75, 2.0) / y / 2.0 ** -0.75
        assert effect == pytest.approx(1 - ratio[y.abs() > 1e-6].min().item(), rel=1e-3, abs=1e-7)
        assert (effect <= 1 / 512) == foldable
        folded = fold_lrns(model, ["1"])
        with torch.inference_mode():
            exact, approx = model(torch.from_numpy(x)), folded(torch.from_numpy(x))
        assert isinstance(model[1], LocalResponseNorm)  # the original is untouched
        assert ((approx - exact).abs() <= effect * exact.abs() / (1 - effect) + 1e-6).all()


def test_fold_recipe_records_its_decision(trained, tmp_path):
    _int8(trained, tmp_path, recipe=Int8Recipe(lrn="fold"))
    meta = json.loads((tmp_path / "m.int8.json").read_text())
    assert set(meta["lrn_effects"]) == {"lrn1", "lrn2"}
    assert meta["lrn_folded"] == [n for n, e in meta["lrn_effects"].items() if e <= 1 / 512]
    _int8(trained, tmp_path, recipe=Int8Recipe(lrn="fold", lrn_tolerance=0.0))
    assert json.loads((tmp_path / "m.int8.json").read_text())["lrn_folded"] == []
