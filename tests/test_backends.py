"""ONNX Runtime and eager PyTorch agree; the cached export is reused, and rebuilt when stale or corrupt."""
import json

import pytest
import torch

from detect.backends import OnnxScorer, TorchScorer, make_scorers, resolve_backend
from detect.export import cached_onnx_export, export_onnx
from detect.models.googlenet import GoogLeNet, LocalResponseNorm

CROP = 96


def _member(batch_norm: bool, seed: int = 0) -> GoogLeNet:
    torch.manual_seed(seed)
    model = GoogLeNet(num_classes=11, aux_logits=True, batch_norm=batch_norm, width=0.25).eval()
    if batch_norm:  # non-trivial running statistics, so that folding BN into the export is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("batch_norm", [False, True], ids=["paper", "batch_norm"])
def test_onnxruntime_matches_torch(tmp_path, batch_norm):
    model = _member(batch_norm)
    crops = torch.randn(5, 3, CROP, CROP)
    ref = TorchScorer(model, "cpu")(crops).softmax(1)
    path, _, session = cached_onnx_export(model, tmp_path, "m", CROP)
    out = OnnxScorer(path, session=session)(crops).softmax(1)
    assert out.shape == (5, 11)
    assert (out - ref).abs().max().item() <= 1e-4
    # dynamic batch: another batch size runs on the same export
    assert OnnxScorer(path)(torch.randn(1, 3, CROP, CROP)).shape == (1, 11)


def test_lrn_export_matches_torch_where_normalisation_matters(tmp_path):
    """LRN is exported in its own operator form; large inputs make the normalisation count."""
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
    export_onnx(layer, tmp_path / "lrn.onnx", 8)
    x = torch.randn(4, 3, 8, 8) * 50
    with torch.inference_mode():
        ref = layer(x)
        plain = layer[0](x)
    out = OnnxScorer(tmp_path / "lrn.onnx")(x)
    assert (out - plain).abs().max().item() > 1.0  # the layer does change its input here
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_export_cache_reused_then_rebuilt_when_weights_change(tmp_path):
    model = _member(False)
    path, key, _ = cached_onnx_export(model, tmp_path, "m", CROP)
    stamp = path.stat().st_mtime_ns
    _, _, hit = cached_onnx_export(model, tmp_path, "m", CROP, num_threads=3)
    assert path.stat().st_mtime_ns == stamp  # cache hit, its session of the threads asked for
    assert hit.get_session_options().intra_op_num_threads == 3  # (conftest: torch has 2 at most)
    assert json.loads((tmp_path / "m.json").read_text())["key"] == key
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    cached_onnx_export(model, tmp_path, "m", CROP)
    assert json.loads((tmp_path / "m.json").read_text())["key"] != key
    crops = torch.randn(3, 3, CROP, CROP)
    diff = OnnxScorer(path)(crops).softmax(1) - TorchScorer(model)(crops).softmax(1)
    assert diff.abs().max().item() <= 1e-4  # the rebuilt export has the new weights


def test_corrupt_export_is_rebuilt(tmp_path):
    model = _member(False)
    path, _, _ = cached_onnx_export(model, tmp_path, "m", CROP)
    path.write_bytes(path.read_bytes()[:1000])
    rebuilt, _, _ = cached_onnx_export(model, tmp_path, "m", CROP)
    crops = torch.randn(2, 3, CROP, CROP)
    assert (OnnxScorer(rebuilt)(crops) - TorchScorer(model)(crops)).abs().max().item() < 1e-3


def test_backend_choice():
    assert resolve_backend("auto", torch.device("cpu")) == "onnxruntime"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tensorrt", torch.device("cpu"))
    with pytest.raises(ValueError):
        make_scorers([_member(False)], "onnxruntime", "cpu", CROP, cache_dir=None)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_torch_scorer_autocast_path(amp):
    """The mixed-precision branch (what CUDA runs by default) works wherever autocast does, here on
    the CPU: float32 logits out, probabilities near the float32 ones, and not bit-identical to them."""
    model = _member(False)
    crops = torch.randn(4, 3, CROP, CROP)
    ref = TorchScorer(model, "cpu", amp="none")(crops)
    mixed = TorchScorer(model, "cpu", amp=amp)
    assert mixed.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    out = mixed(crops)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out.softmax(1) - ref.softmax(1)).abs().max().item() < 0.02
    assert not torch.equal(out, ref)  # the reduced precision did take effect
