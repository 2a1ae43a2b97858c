"""GoogLeNet: Table 1 shapes and counts, options, torchvision compatibility, loading, configs."""
from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from detect.io import atomic_torch_save
from detect.models.googlenet import (
    INCEPTION_TABLE,
    GoogLeNet,
    GoogLeNetConfig,
    LocalResponseNorm,
    GoogLeNetOutputs,
    _trunc_normal_,
    googlenet_torchvision,
)
from detect.models.weights import load_model, load_pretrained

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"

# Table 1 of the paper: output size of every stage at a 224x224 input, (C, H, W).
TABLE1 = {
    "conv1": (64, 112, 112),
    "maxpool1": (64, 56, 56),
    "conv2": (64, 56, 56),
    "conv3": (192, 56, 56),
    "maxpool2": (192, 28, 28),
    "inception3a": (256, 28, 28),
    "inception3b": (480, 28, 28),
    "maxpool3": (480, 14, 14),
    "inception4a": (512, 14, 14),
    "inception4b": (512, 14, 14),
    "inception4c": (512, 14, 14),
    "inception4d": (528, 14, 14),
    "inception4e": (832, 14, 14),
    "maxpool4": (832, 7, 7),
    "inception5a": (832, 7, 7),
    "inception5b": (1024, 7, 7),
}


@pytest.fixture(scope="module")
def paper_net() -> GoogLeNet:
    torch.manual_seed(0)
    return GoogLeNet()


def _conv_linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_table1_shapes_at_224(paper_net):
    shapes = {}
    hooks = [getattr(paper_net, name).register_forward_hook(
        lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))) for name in TABLE1]
    hooks += [getattr(paper_net, aux).conv.register_forward_hook(
        lambda m, i, o, aux=aux: shapes.__setitem__(aux, tuple(i[0].shape[1:]))) for aux in ("aux1", "aux2")]
    paper_net.train()
    with torch.no_grad():
        out = paper_net(torch.randn(2, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert {k: shapes[k] for k in TABLE1} == TABLE1
    assert shapes["aux1"] == (512, 4, 4) and shapes["aux2"] == (528, 4, 4)  # after the 5x5/3 pool
    assert isinstance(out, GoogLeNetOutputs)
    assert out.logits.shape == out.aux1.shape == out.aux2.shape == (2, 1000)


def test_weight_count_matches_filter_counts():
    net = GoogLeNet(aux_logits=False)
    assert _conv_linear_weights(net) == 6_990_272
    # Inception 4c: 497.5 K weights from its own filter counts (Table 1 prints 463 K).
    assert _conv_linear_weights(net.inception4c) == 509_440
    # Every inception row against a plain formula from Table 1's filter counts.
    in_ch = {"3a": 192, "3b": 256, "4a": 480, "4b": 512, "4c": 512, "4d": 512, "4e": 528, "5a": 832, "5b": 832}
    for name, (c1, r3, c3, r5, c5, pp) in INCEPTION_TABLE.items():
        cin = in_ch[name]
        expected = cin * c1 + cin * r3 + r3 * c3 * 9 + cin * r5 + r5 * c5 * 25 + cin * pp
        assert _conv_linear_weights(getattr(net, f"inception{name}")) == expected, name


def test_multiply_adds_at_224(paper_net):
    macs = []

    def count(m, inputs, out):
        per_output = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features
        macs.append(out[0].numel() * per_output)

    hooks = [m.register_forward_hook(count) for m in paper_net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    paper_net.eval()
    with torch.no_grad():
        paper_net(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert abs(sum(macs) - 1.58e9) / 1.58e9 < 0.01


def _map_size(n: int) -> int:
    n = -(-n // 2)  # conv1 7x7/2 pad 3
    for _ in range(4):  # maxpool1..4, 3x3/2 ceil mode
        n = -(-(n - 3) // 2) + 1
    return n


@pytest.mark.parametrize("size", [(96, 96), (112, 112), (97, 130)])
def test_small_and_odd_inputs(size):
    net = GoogLeNet(num_classes=7, width=0.25, batch_norm=True)
    x = torch.randn(2, 3, *size)
    net.train()
    out = net(x)
    assert out.logits.shape == out.aux1.shape == out.aux2.shape == (2, 7)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 7)
        feats = net.embed(x)
        fmap = net.forward_features(x)
    assert feats.shape == (2, net.feature_dim) == (2, 256)
    assert fmap.shape[:2] == (2, 256) and fmap.shape[2:] == tuple(_map_size(s) for s in size)
    assert torch.allclose(feats, fmap.mean((2, 3)), atol=1e-6)


def test_eval_and_no_aux_return_tensor():
    net = GoogLeNet(num_classes=5, width=0.25, aux_logits=False).train()
    assert net.aux1 is None and net.aux2 is None
    out = net(torch.randn(2, 3, 96, 96))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_aux_pool_paper_and_fallback():
    net = GoogLeNet(num_classes=3, width=0.25, dropout=0.0, aux_dropout=0.0).eval()
    aux = net.aux1
    for size, pool in ((14, lambda x: nn.functional.avg_pool2d(x, 5, 3)),
                       (6, lambda x: nn.functional.adaptive_avg_pool2d(x, 4))):
        x = torch.randn(2, net.inception4a.out_channels, size, size)
        expected = aux.fc2(torch.relu(aux.fc1(torch.flatten(aux.conv(pool(x)), 1))))
        assert torch.allclose(aux(x), expected, atol=1e-6)


def test_width_batch_norm_lrn_options():
    net = GoogLeNet(width=0.25, batch_norm=True, lrn=False)
    assert net.conv1.conv.out_channels == 16 and net.inception3a.branch3[0].conv.out_channels == 8  # 16*0.25 -> 8
    assert net.feature_dim == 256 and net.fc.in_features == 256
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 3 + 9 * 6 + 2 and all(c.bias is None for c in convs)
    assert all(b.eps == 0.001 for b in bns)
    assert not any(isinstance(m, LocalResponseNorm) for m in net.modules())
    paper = GoogLeNet(width=0.25)
    lrns = [m for m in paper.modules() if isinstance(m, LocalResponseNorm)]
    assert len(lrns) == 2 and all((m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 1.0) for m in lrns)
    assert all(m.bias is not None for m in paper.modules() if isinstance(m, nn.Conv2d))
    k5 = {m.kernel_size for m in paper.inception4c.branch3.modules() if isinstance(m, nn.Conv2d)}
    assert k5 == {(1, 1), (5, 5)}


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_onnx_form_matches_torch(beta):
    """The export-time form (banded 1x1 conv, sqrt for beta 0.75) is the same function."""
    x = torch.randn(2, 12, 5, 7) * 30
    lrn = LocalResponseNorm(5, alpha=1e-4, beta=beta, k=1.0)
    ref = nn.LocalResponseNorm(5, alpha=1e-4, beta=beta, k=1.0)(x)
    assert torch.allclose(lrn.onnx_form(x), ref, atol=1e-5, rtol=1e-5) and not torch.allclose(ref, x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_matches_torch(channels_last):
    x = torch.randn(2, 12, 5, 7) * 30  # large values so that the normalisation matters
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(x)
    ref_x = x.detach().contiguous().requires_grad_(True)
    ref = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(ref_x)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5) and not torch.allclose(ref, x)
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(ref)
    ours.backward(grad)
    ref.backward(grad)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5, rtol=1e-5)


def test_trunc_normal_and_init():
    torch.manual_seed(0)
    w = torch.empty(200_000)
    _trunc_normal_(w, 0.5)
    assert w.abs().max() <= 1.0
    # A normal truncated at 2 std has std 0.8796 std.
    assert abs(w.std().item() - 0.8796 * 0.5) < 0.01 and abs(w.mean().item()) < 0.01
    net = GoogLeNet(width=0.25)
    assert net.fc.weight.abs().max() <= 0.02 and net.aux2.fc2.weight.abs().max() <= 0.02
    fan_in = net.inception5b.branch1.conv.weight[0].numel()
    assert net.inception5b.branch1.conv.weight.abs().max() <= 2 * (2 / fan_in) ** 0.5
    assert abs(net.inception5b.branch1.conv.weight.std().item() - 0.8796 * (2 / fan_in) ** 0.5) < 0.005
    assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, nn.Conv2d))


def _torchvision_state(tmp_path, seed, **kwargs) -> tuple[nn.Module, Path]:
    torch.manual_seed(seed)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, **kwargs)
    with torch.no_grad():  # non-trivial BatchNorm statistics so that eval mode tests them
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path / "googlenet-tv.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.mark.parametrize("transform_input", [False, True])
def test_torchvision_weights_give_identical_logits(tmp_path, transform_input):
    tv, path = _torchvision_state(tmp_path, seed=1, transform_input=transform_input)
    ours = googlenet_torchvision(transform_input=transform_input)
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    report = load_pretrained(ours, path)
    assert not report.missing and not report.mismatched and not report.unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), tv.eval()(x), atol=1e-6, rtol=0)
        assert torch.allclose(ours.embed(x), torch.flatten(tv.avgpool(_tv_features(tv, x)), 1), atol=1e-6, rtol=0)


def _tv_features(tv, x):
    x = tv._transform_input(x)
    for name in ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                 "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                 "inception5a", "inception5b"]:
        x = getattr(tv, name)(x)
    return x


def test_torchvision_training_outputs_match(tmp_path):
    tv, path = _torchvision_state(tmp_path, seed=2, dropout=0.0, dropout_aux=0.0)
    ours = googlenet_torchvision(dropout=0.0, aux_dropout=0.0)
    load_pretrained(ours, path)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        a, b = ours.train()(x), tv.train()(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.aux1, b.aux_logits1, atol=1e-5) and torch.allclose(a.aux2, b.aux_logits2, atol=1e-5)


def test_load_pretrained_other_num_classes(tmp_path):
    source = GoogLeNet(num_classes=10, width=0.25, batch_norm=True)
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"model_kwargs": source.model_kwargs, "model_state": source.state_dict(), "epoch": 3}, path)
    torch.manual_seed(5)
    target = GoogLeNet(num_classes=4, width=0.25, batch_norm=True)
    fc_before = target.fc.weight.clone()
    report = load_pretrained(target, path)
    assert sorted(report.mismatched) == sorted(
        ["fc.weight", "fc.bias", "aux1.fc2.weight", "aux1.fc2.bias", "aux2.fc2.weight", "aux2.fc2.bias"])
    assert torch.equal(target.fc.weight, fc_before)
    assert torch.equal(target.inception4c.branch3[1].conv.weight, source.inception4c.branch3[1].conv.weight)
    assert torch.equal(target.aux1.fc1.weight, source.aux1.fc1.weight)
    # A raw state dict (torchvision style, here with a DDP prefix) loads the same way.
    raw = tmp_path / "raw.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, raw)
    assert len(load_pretrained(GoogLeNet(num_classes=4, width=0.25, batch_norm=True), raw).loaded) == len(report.loaded)


def test_load_pretrained_wrong_architecture(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="resnet.pth"):
        load_pretrained(GoogLeNet(width=0.25), path)
    # Paper layout (no BatchNorm, 5x5) against a torchvision file: the 5x5 branches differ, BN is absent.
    path = tmp_path / "tv.pth"
    torch.save(googlenet_torchvision(width=0.25).state_dict(), path)
    with pytest.raises(ValueError, match="tv.pth"):
        load_pretrained(GoogLeNet(width=0.25), path)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        load_pretrained(GoogLeNet(width=0.25), bad)


@pytest.mark.parametrize("bad, message", [
    ([("width", 1)], "ck.pt: model_kwargs is not a mapping"),
    ({"__class__": "os.system"}, r"ck.pt: unknown model_kwargs \['__class__'\]"),
    ({"init_weights": False}, "ck.pt: unknown model_kwargs"),
    ({"width": 0.0}, "ck.pt: .*width=0.0 is outside"),
    ({"num_classes": 2.5}, "ck.pt: .*num_classes is an integer"),
    ({"num_classes": True}, "ck.pt: .*num_classes=True"),
    ({"lrn": "yes"}, "ck.pt: .*lrn, transform_input are true or false"),
    ({"dropout": 1.5}, "ck.pt: .*dropout"),
    ({"aux_pool": "max"}, "ck.pt: .*aux_pool"),
    ({"pool4_size": 9}, "ck.pt: .*pool4_size"),
    ({"input_convention": {"channel_order": "GBR"}}, "ck.pt: .*channel_order"),
])
def test_config_from_kwargs_refuses(bad, message):
    with pytest.raises(ValueError, match=message):
        GoogLeNetConfig.from_kwargs(bad, "ck.pt")


def test_build_and_load_model_round_trip(tmp_path):
    model = googlenet_torchvision(num_classes=6, width=0.25)
    config = GoogLeNetConfig.from_kwargs(model.model_kwargs, "ck.pt")
    assert config == model.config and GoogLeNet(config).model_kwargs == model.model_kwargs
    path = tmp_path / "cls" / "checkpoint.pt"
    atomic_torch_save({"model_kwargs": model.model_kwargs, "model_state": model.state_dict(),
                       "classes": {"wnids": list("abcdef"), "names": list("abcdef")}, "epoch": 1}, path)
    loaded, ckpt = load_model(path)
    assert ckpt["epoch"] == 1 and not loaded.training and loaded.model_kwargs == model.model_kwargs
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    atomic_torch_save({"model_state": model.state_dict()}, tmp_path / "nokwargs.pt")
    with pytest.raises(ValueError, match="nokwargs.pt"):
        load_model(tmp_path / "nokwargs.pt")
    atomic_torch_save({"model_kwargs": {**model.model_kwargs, "num_classes": 9}, "model_state": model.state_dict()},
                      tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt"):
        load_model(tmp_path / "mismatch.pt")


def test_channels_last_gives_same_output():
    net = GoogLeNet(num_classes=5, width=0.25, batch_norm=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last))
        emb = net.embed(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5) and emb.shape == (2, 256)
    net.train()
    net(x.to(memory_format=torch.channels_last)).logits.sum().backward()


@pytest.mark.parametrize("name", ["googlenet", "googlenet_bn", "googlenet_small"])
def test_model_configs_instantiate(name):
    text = (CONF_DIR / f"{name}.yaml").read_text()
    for line in text.splitlines():  # every option carries a one-line comment
        if line and not line.startswith("#") and not line.startswith("_target_"):
            assert "#" in line, line
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    model = hydra.utils.instantiate(cfg, num_classes=201, width=0.25 if name != "googlenet_small" else cfg.width)
    assert isinstance(model, GoogLeNet) and model.fc.out_features == 201
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 201)
    if name == "googlenet_bn":
        assert model.model_kwargs["batch_norm"] and not model.model_kwargs["five_by_five"]


class _RecordOps(TorchDispatchMode):
    """Records every aten call with the shapes and strides (memory format) of its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        layout = tuple((tuple(a.shape), a.stride()) for a in args if isinstance(a, torch.Tensor))
        self.calls.append((str(func), layout))
        return func(*args, **(kwargs or {}))


def test_torchvision_variant_runs_torchvision_ops():
    """Speed parity by construction: the same aten calls on the same shapes and memory formats."""
    calls = []
    ours = googlenet_torchvision()
    theirs = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    for model in (ours, theirs):
        model = model.eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, 3, 64, 64).to(memory_format=torch.channels_last)
        with torch.inference_mode(), _RecordOps() as rec:
            model(x)
        calls.append(rec.calls)
    assert len(calls[0]) == 197 and calls[0] == calls[1]
