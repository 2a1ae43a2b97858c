"""BVLC GoogLeNet weights by path: .caffemodel (both encodings) and ONNX-zoo .onnx files with BVLC's layer
names and random weights, imported into model=googlenet and compared with an independent float64
reference forward of BVLC's own prototxt (tests/caffe_reference.py) at the logits and the aux heads."""
from __future__ import annotations

import hashlib
import json
import logging
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from caffe_reference import (bvlc_input, caffe_schema, input_mean, phase_test_layers, read_prototxt,
                             reference_forward, write_caffemodel, write_onnx)
from detect.io import atomic_torch_save
from detect.models import bvlc, weights
from detect.models.convention import BVLC, IMAGENET, InputConvention
from detect.models.googlenet import GoogLeNet
from detect.models.weights import load_model, load_pretrained
from proposals.multibox import MultiBoxNet

TOL = 1e-5  # relative: max |ours - reference| / max |reference|
OUTPUTS = ("loss3/classifier", "loss1/classifier", "loss2/classifier")  # logits, aux1, aux2


@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory):
    """Random BVLC-named weights, the reference outputs for two 224x224 images, and the three files."""
    d = shared_data / "bvlc_googlenet"
    schema = caffe_schema(d / "caffe.proto")
    train_val, deploy = read_prototxt(d / "train_val.prototxt", schema), read_prototxt(d / "deploy.prototxt", schema)
    rng = np.random.default_rng(0)
    ramp = np.broadcast_to(np.linspace(0, 255, 224)[None, :, None], (224, 224, 3)).astype(np.uint8).copy()
    ramp[..., 2] = 255 - ramp[..., 0]  # unequal channels, so that a channel swap shows
    images = np.stack([rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), ramp])
    mean = input_mean(train_val)
    weights: dict = {}
    blobs = reference_forward(phase_test_layers(train_val), weights, bvlc_input(images, mean), rng)
    tmp = tmp_path_factory.mktemp("bvlc")
    files = {"layer": tmp / "new.caffemodel", "layers": tmp / "v1.caffemodel", "onnx": tmp / "zoo.onnx"}
    write_caffemodel(files["layer"], train_val, weights, schema, "layer")
    write_caffemodel(files["layers"], train_val, weights, schema, "layers")
    write_onnx(files["onnx"], phase_test_layers(deploy), weights)
    return {"schema": schema, "net": train_val, "deploy": deploy, "weights": weights, "images": images, "mean": mean,
            "ref": {k: blobs[k] for k in OUTPUTS}, "files": files, "tmp": tmp}


def _outputs(model: GoogLeNet, images: np.ndarray, convention: InputConvention | None = None) -> dict:
    """Logits and aux logits of ``model`` (train-mode graph, dropout off) for uint8 RGB ``images``."""
    x = (convention or model.input_convention).normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():
        out = model(x) if model.aux_logits else (model(x),)
    return dict(zip(OUTPUTS, out))


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("encoding", ["layer", "layers"])
def test_caffemodel_matches_caffe_reference(world, encoding, caplog):
    model = GoogLeNet(init_weights=False)
    with caplog.at_level(logging.INFO, logger="detect.models.weights"):
        report = load_pretrained(model, world["files"][encoding])
    assert bvlc.weights_format(world["files"][encoding]) == "caffemodel"
    assert report.source.startswith("caffemodel") and ("V1" in report.source) == (encoding == "layers")
    assert len(report.loaded_layers) == 64 and len(report.loaded) == 128 and not report.skipped_layers
    assert not (report.missing or report.mismatched)
    assert model.input_convention == BVLC and model.model_kwargs["input_convention"] == BVLC.to_dict()
    # the sha1 is checked against BVLC's and the difference said
    assert report.sha1 == hashlib.sha1(world["files"][encoding].read_bytes()).hexdigest() and report.sha1_matches is False
    assert any("differs from BVLC's released" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    out = _outputs(model, world["images"])
    for name in OUTPUTS:
        assert _rel(out[name], world["ref"][name]) < TOL, name


def test_onnx_matches_caffe_reference_and_its_own_forward(world):
    import onnxruntime as ort

    path = world["files"]["onnx"]
    assert bvlc.weights_format(path) == "onnx"
    model = GoogLeNet(init_weights=False)
    report = load_pretrained(model, path)
    assert report.source == "onnx" and len(report.loaded_layers) == 58 and report.sha1_matches is None
    assert sorted(report.skipped_layers) == sorted(f"loss{k}/{n}" for k in (1, 2) for n in ("conv", "fc", "classifier"))
    assert len(report.missing) == 12 and model.input_convention == BVLC
    logits = _outputs(model, world["images"])["loss3/classifier"]
    assert _rel(logits, world["ref"]["loss3/classifier"]) < TOL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"data_0": bvlc_input(world["images"], world["mean"]).float().numpy()})[0]
    assert _rel(logits, torch.from_numpy(theirs).double()) < TOL  # the file's own forward (ONNX Runtime)


def test_deploy_only_caffemodel_leaves_the_aux_heads_initialised(world, tmp_path):
    """A .caffemodel saved from deploy.prototxt (no loss1/loss2 layers) still loads into a model with aux heads."""
    path = tmp_path / "deploy.caffemodel"
    write_caffemodel(path, world["deploy"], world["weights"], world["schema"], "layer")
    model = GoogLeNet(init_weights=False)
    report = load_pretrained(model, path)
    assert len(report.loaded_layers) == 58 and len(report.missing) == 12
    assert all(reason.startswith("not in the file") for reason in report.skipped_layers.values())
    assert _rel(_outputs(model, world["images"])["loss3/classifier"], world["ref"]["loss3/classifier"]) < TOL


def test_onnx_gemm_without_transb_is_transposed(world, tmp_path):
    """A zoo file may store a fully connected weight as (in, out) for Gemm(transB=0): it is transposed back."""
    import onnx

    model_proto = onnx.load(str(world["files"]["onnx"]))
    for node in model_proto.graph.node:
        if node.op_type == "Gemm":
            del node.attribute[:]
    for init in model_proto.graph.initializer:
        if init.name == "loss3/classifier_w_0":
            w = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(w.T), init.name))
    onnx.save(model_proto, str(tmp_path / "t.onnx"))
    model = GoogLeNet(aux_logits=False, init_weights=False)
    load_pretrained(model, tmp_path / "t.onnx")
    assert _rel(_outputs(model, world["images"])["loss3/classifier"], world["ref"]["loss3/classifier"]) < TOL


@pytest.mark.slow
def test_mapping_errors_fail_the_comparison(world, tmp_path):
    """Each mapping error the equality must catch: a swapped branch, a transposed fully connected weight,
    the wrong channel order. Every shape still fits, so only the forward comparison can see them."""
    w = world["weights"]
    swapped = dict(w)
    swapped["inception_4c/1x1"], swapped["inception_4c/3x3_reduce"] = w["inception_4c/3x3_reduce"], w["inception_4c/1x1"]
    transposed = dict(w)
    for name in ("loss3/classifier", "loss1/fc", "loss2/fc"):  # the values transposed, the stored shape kept
        weight = np.asarray(w[name][0])
        transposed[name] = [weight.T.reshape(weight.shape), w[name][1]]
    # 4c comes after aux1's branch point (4a): the swap breaks the logits and aux2, and leaves aux1 exact
    for weights, broken in ((swapped, ("loss3/classifier", "loss2/classifier")), (transposed, OUTPUTS)):
        path = tmp_path / "mutant.caffemodel"
        write_caffemodel(path, world["net"], weights, world["schema"], "layer")
        model = GoogLeNet(init_weights=False)
        load_pretrained(model, path)  # loads: nothing a loader can check is wrong
        out = _outputs(model, world["images"])
        for name in OUTPUTS:
            assert (_rel(out[name], world["ref"][name]) > 100 * TOL) == (name in broken), name
    model = GoogLeNet(init_weights=False)
    load_pretrained(model, world["files"]["layer"])
    rgb = InputConvention("RGB", 255.0, BVLC.mean, BVLC.std)  # BVLC's values, channels not swapped
    out = _outputs(model, world["images"], rgb)
    assert all(_rel(out[name], world["ref"][name]) > 100 * TOL for name in OUTPUTS)


def test_misfitting_layers_are_refused_naming_the_layer(world, tmp_path):
    w, schema = world["weights"], world["schema"]

    def refused(net, weights, encoding, match, model=None):
        path = tmp_path / f"bad.{encoding}.caffemodel"
        write_caffemodel(path, net, weights, schema, encoding)
        with pytest.raises(ValueError, match=match):
            load_pretrained(model or GoogLeNet(init_weights=False), path)

    # a fully connected weight stored as (in, out) without Caffe's transpose flag
    refused(world["net"], {**w, "loss1/fc": [np.asarray(w["loss1/fc"][0]).T, w["loss1/fc"][1]]}, "layers",
            r"bad.layers.caffemodel: layer 'loss1/fc' does not fit")
    # a layer of the main network without weights
    refused(world["net"], {k: v for k, v in w.items() if k != "inception_5b/pool_proj"}, "layer",
            r"'inception_5b/pool_proj' \(-> inception5b.branch4.1.conv\) is missing")
    # the network in the file differs from ours: convolution stride, LRN constant, pooling rounding
    for layer_name, change, match in (
            ("conv1/7x7_s2", lambda l: l.convolution_param.stride.__setitem__(0, 1), r"'conv1/7x7_s2' has stride=\(1, 1\)"),
            ("pool1/norm1", lambda l: setattr(l.lrn_param, "alpha", 1e-3), r"'pool1/norm1' has alpha="),
            ("pool3/3x3_s2", lambda l: setattr(l.pooling_param, "round_mode", 1), r"'pool3/3x3_s2' has ceil=False")):
        net = deepcopy(world["net"])
        change(next(layer for layer in net.layer if layer.name == layer_name))
        refused(net, w, "layer", match)


def test_wrong_architecture_is_refused(world):
    for kwargs in ({"batch_norm": True}, {"width": 0.5}, {"lrn": False}, {"five_by_five": False}):
        with pytest.raises(ValueError, match="model=googlenet"):
            load_pretrained(GoogLeNet(init_weights=False, **kwargs), world["files"]["layer"])


def test_other_class_counts_and_the_multibox_backbone(world):
    """A region classifier (201 outputs) keeps its classifiers initialised; the trunk is BVLC's."""
    model = GoogLeNet(num_classes=201, init_weights=False)
    report = load_pretrained(model, world["files"]["layers"])
    assert len(report.loaded_layers) == 61 and len(report.mismatched) == 6
    assert set(report.skipped_layers) == set(OUTPUTS) and "201" in report.skipped_layers["loss3/classifier"]
    assert torch.equal(model.inception4c.branch3[1].conv.weight.double(),
                       torch.from_numpy(np.asarray(world["weights"]["inception_4c/5x5"][0])).float().double())
    assert model.input_convention == BVLC
    net = MultiBoxNet(GoogLeNet(aux_logits=False).model_kwargs, num_priors=4)
    report = load_pretrained(net.backbone, world["files"]["onnx"])
    assert len(report.loaded_layers) == 57 and report.skipped_layers["loss3/classifier"].startswith("no fc")
    assert net.input_convention == BVLC


def test_sha1_of_the_released_file_is_recognised(world, monkeypatch, caplog):
    path = world["files"]["layer"]
    monkeypatch.setattr(weights, "BVLC_SHA1", hashlib.sha1(path.read_bytes()).hexdigest())
    with caplog.at_level(logging.INFO, logger="detect.models.weights"):
        report = load_pretrained(GoogLeNet(init_weights=False), path)
    assert report.sha1_matches is True
    assert any("BVLC's released bvlc_googlenet.caffemodel" in r.message and r.levelno == logging.INFO
               for r in caplog.records)


def test_format_detection_and_unreadable_files(world, tmp_path):
    torch_file = tmp_path / "ours.pt"
    atomic_torch_save({"model_kwargs": {}, "model_state": {}}, torch_file)
    assert bvlc.weights_format(torch_file) == "torch"
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\x07" * 100)
    with pytest.raises(ValueError, match="junk.caffemodel"):
        load_pretrained(GoogLeNet(init_weights=False), junk)
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(world["files"]["layer"].read_bytes()[:3_000_000])
    assert bvlc.weights_format(truncated) == "caffemodel"
    with pytest.raises(ValueError, match=r"truncated.caffemodel: not a readable .caffemodel"):
        load_pretrained(GoogLeNet(init_weights=False), truncated)
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        load_pretrained(GoogLeNet(init_weights=False), tmp_path / "missing.caffemodel")


def test_onnx_external_data_and_quantised_weights_are_refused(tmp_path):
    import onnx
    from onnx import helper

    for name, tensor, match in (
            ("external", helper.make_tensor("conv1/7x7_s2_w_0", onnx.TensorProto.FLOAT, [1], [0.0]), "external file"),
            ("int8", helper.make_tensor("conv1/7x7_s2_w_0", onnx.TensorProto.INT8, [1], [0]), "not float")):
        if name == "external":
            tensor.ClearField("float_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value="../../outside.bin")
        node = helper.make_node("Conv", ["data_0", "conv1/7x7_s2_w_0"], ["y"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("data_0", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], [tensor])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        assert bvlc.weights_format(path) == "onnx"
        with pytest.raises(ValueError, match=f"{name}.onnx.*{match}"):
            load_pretrained(GoogLeNet(init_weights=False), path)


def test_load_model_builds_the_network_from_the_file(world):
    model, ckpt = load_model(world["files"]["layers"])
    assert not model.training and model.aux_logits and ckpt["classes"] is None
    assert ckpt["model_kwargs"]["num_classes"] == 1000 and ckpt["model_kwargs"]["input_convention"] == BVLC.to_dict()
    with torch.no_grad():
        logits = model(BVLC.normalize(torch.from_numpy(world["images"]).permute(0, 3, 1, 2)))
    assert _rel(logits, world["ref"]["loss3/classifier"]) < TOL


def test_eval_cls_with_bvlc_weights_and_a_mixed_ensemble(world, repo_root, tmp_path):
    """eval_cls takes a .caffemodel by path (classes: the split's, in sorted wnid order) and ensembles it
    with one of our checkpoints, each model reading crops in its own convention."""
    import importlib.util

    from detect.data.synthetic import make_classification_set

    root = tmp_path / "data" / "cls_synthetic"
    classes = make_classification_set(root, num_classes=3, train_per_class=1, val_per_class=1, image_size=48)
    net = deepcopy(world["net"])
    weights = dict(world["weights"])
    for name in OUTPUTS:  # a 3-class "BVLC" network: the first three rows of each classifier
        next(layer for layer in net.layer if layer.name == name).inner_product_param.num_output = 3
        weights[name] = [np.asarray(weights[name][0])[:3], np.asarray(weights[name][1])[:3]]
    caffemodel = tmp_path / "bvlc3.caffemodel"
    write_caffemodel(caffemodel, net, weights, world["schema"], "layer")
    ours = GoogLeNet(num_classes=3, width=0.125, batch_norm=True)
    order = sorted(range(3), key=lambda i: classes.wnids[i])
    atomic_torch_save({"model_kwargs": ours.model_kwargs, "model_state": ours.state_dict(),
                       "classes": {"wnids": [classes.wnids[i] for i in order], "names": [classes.names[i] for i in order]}},
                      tmp_path / "ours.pt")
    spec = importlib.util.spec_from_file_location("eval_cls_tool", repo_root / "tools" / "eval_cls.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with initialize_config_dir(str(repo_root / "conf"), version_base="1.3"):
        cfg = compose("eval_cls", overrides=[f"work_dir={tmp_path}", f"checkpoints=[{caffemodel},{tmp_path / 'ours.pt'}]",
                                             "num_workers=0", "data_cls.generate.num_classes=3", "schemes=[1]"])
    rows = tool.main(cfg)
    assert {(r["models"], r["crops"]) for r in rows} == {(1, 1), (2, 1)} and rows[0]["images"] == 3
    report = json.loads((tmp_path / "eval" / "cls_table3.json").read_text())
    assert report["input_conventions"] == [BVLC.describe(), IMAGENET.describe()]
