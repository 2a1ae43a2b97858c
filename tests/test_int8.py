"""int8 region scoring (detect.quantize, precision= of detect.backends): the int8 model runs and stays
near fp32 on a small trained network, its cache is reused and made again when the weights, the
calibration inputs or the recipe change, and the error / fallback paths say what happened."""
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detect.backends import OnnxScorer, TorchScorer, make_scorer, resolve_precision
from detect.data.images import read_image
from detect.export import cached_onnx_export
from detect.models.convention import BVLC, IMAGENET
from detect.models.googlenet import GoogLeNet, LocalResponseNorm
from detect.quantize import (Int8Recipe, QuantizationError, cached_int8_export, cpu_has_int8_dot, fold_lrns,
                             lrn_effects, to_pixels)

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
    fp32, key, _ = cached_onnx_export(model, tmp_path, "m", CROP)
    assert key == json.loads((tmp_path / "m.json").read_text())["key"]
    return cached_int8_export(model, fp32, key, _calibration() if calibration is None else calibration, recipe)[0]


def _quantized_after_gemm(path) -> int:
    """QuantizeLinear nodes computing from a Gemm's output (the classifier's logits)."""
    import onnx

    graph = onnx.load(str(path)).graph
    tainted, count = set(), 0
    for n in graph.node:
        if n.op_type == "Gemm" or tainted.intersection(n.input):
            tainted.update(n.output)
            count += n.op_type == "QuantizeLinear"
    return count


def test_int8_scores_near_fp32_on_a_trained_network(trained, tmp_path):
    x, _ = _images(128, seed=20_000)
    fp32 = OnnxScorer(cached_onnx_export(trained, tmp_path, "m", CROP)[0])(x).softmax(1)
    int8_scorer = OnnxScorer(_int8(trained, tmp_path), precision="int8")
    out = int8_scorer(x).softmax(1)
    assert out.shape == fp32.shape and out.dtype == torch.float32
    diff = (out - fp32).abs()
    # measured on this network: top-1 agreement 1.0, max |dp| 0.07, mean |dp| 0.004
    assert (out.argmax(1) == fp32.argmax(1)).float().mean() >= 0.97
    assert diff.max().item() < 0.15 and diff.mean().item() < 0.01
    assert diff.max().item() > 1e-6  # it is a different (quantized) model, not the fp32 one
    # the logits (the Gemm's output) stay in float: no QuantizeLinear after the classifier
    assert _quantized_after_gemm(int8_scorer.path) == 0
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
    _int8(model, tmp_path, recipe=Int8Recipe(lrn_tolerance=0.0))  # other recipe
    assert json.loads((tmp_path / "m.int8.json").read_text())["recipe"]["lrn_tolerance"] == 0.0

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
    assert cpu_has_int8_dot({"amx_int8"}) and cpu_has_int8_dot({"avx512_vnni"}) and not cpu_has_int8_dot({"avx2"})
    assert not cpu_has_int8_dot({"avx_vnni"})  # not measured
    with pytest.raises(ValueError, match="lrn_tolerance"):
        Int8Recipe(lrn_tolerance=1.0)
    with pytest.raises(ValueError, match="unknown setting"):
        Int8Recipe.from_dict({"formats": "qdq"})


def test_stored_recipes_of_the_removed_settings():
    """Recipes stored before the trim name every setting: read at the values now always used, refused at others."""
    stored = {"format": "qdq", "activations": "u8", "weights": "s8", "per_channel": True, "lrn": "fold",
              "lrn_tolerance": 0.001953125, "head": "float", "calibration": "minmax", "percentile": 99.999,
              "reduce_range": False}
    assert Int8Recipe.from_dict(stored) == Int8Recipe()
    for removed in ({"lrn": "float"}, {"lrn": "int8"}, {"percentile": 99.9}, {"format": "qoperator"},
                    {"activations": "s8"}, {"per_channel": False}):
        with pytest.raises(ValueError, match=f"{next(iter(removed))} other than"):
            Int8Recipe.from_dict({**stored, **removed})


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
    _int8(trained, tmp_path)
    meta = json.loads((tmp_path / "m.int8.json").read_text())
    assert set(meta["lrn_effects"]) == {"lrn1", "lrn2"}
    assert meta["lrn_folded"] == [n for n, e in meta["lrn_effects"].items() if e <= 1 / 512]
    _int8(trained, tmp_path, recipe=Int8Recipe(lrn_tolerance=0.0))
    assert json.loads((tmp_path / "m.int8.json").read_text())["lrn_folded"] == []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic detection set (3 classes) and one proposal per training image."""
    from detect.data.ilsvrc import read_ilsvrc_det
    from detect.data.synthetic import make_detection_world

    root = tmp_path_factory.mktemp("world")
    make_detection_world(root, num_classes=3, num_train=6, num_val=2, min_side=64, max_side=96, max_objects=2,
                         empty_fraction=0.0, seed=0)
    records = read_ilsvrc_det(root, "train", classes=root / "classes.tsv").records
    proposals = {r.image_id: np.array([[2, 3, r.width - 10, r.height - 5]], np.float32) for r in records}
    return records, proposals


@pytest.mark.parametrize("convention", [IMAGENET, BVLC], ids=["imagenet", "bvlc"])
def test_calibration_crops_are_the_detectors_crops(world, tmp_path, caplog, convention):
    """Crops drawn in a convention are uint8 RGB; prepared in it again they are the crops the detector
    scores for a member of that convention, to within the uint8 rounding."""
    import dataclasses

    from detect.quantize import crops_to_inputs, draw_calibration_crops, to_pixels
    from detect.region import normalize_image, warp_regions

    records, proposals = world
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    broken = dataclasses.replace(records[0], path=tmp_path / "broken.jpg", image_id="broken")
    with caplog.at_level(logging.WARNING):
        crops = draw_calibration_crops([*records, broken], proposals.__getitem__, len(records), CROP, 2,
                                       convention, seed=0)
    assert crops.dtype == np.uint8 and crops.shape == (len(records), 3, CROP, CROP)
    inputs = torch.from_numpy(crops_to_inputs(crops, convention))

    def warps(c):
        return torch.cat([warp_regions(normalize_image(read_image(r.path), c),
                                       torch.from_numpy(proposals[r.image_id]), CROP, 2) for r in records])

    reference = warps(convention)
    # half a grey level in the convention's units
    step = 0.5 / 255 * convention.scale / min(convention.std) * 1.001 + 1e-4
    dist = (inputs[:, None] - reference[None]).abs().flatten(2).max(dim=2).values
    assert (dist.min(dim=1).values <= step).all()
    assert len(set(dist.argmin(dim=1).tolist())) == len(records)  # each image once
    # RGB pixels whatever the convention (the padding beyond the border: the mean colour, within a grey level)
    assert (to_pixels(reference, convention).int() - to_pixels(warps(IMAGENET), IMAGENET).int()).abs().max() <= 1
    other = BVLC if convention == IMAGENET else IMAGENET  # the other member's inputs from the same crops
    mismatch = (torch.from_numpy(crops_to_inputs(crops, other))[:, None] - warps(other)[None]).abs().flatten(2)
    other_step = 1.5 / 255 * other.scale / min(other.std) + 1e-4  # rounding + under a grey level of mean colour
    assert (mismatch.max(dim=2).values.min(dim=1).values <= other_step).all()
    again = draw_calibration_crops(records, proposals.__getitem__, 4, CROP, 2, convention, seed=0)
    assert np.array_equal(again, draw_calibration_crops(records, proposals.__getitem__, 4, CROP, 2,
                                                        convention, seed=0))  # seeded
    with pytest.raises(ValueError, match="none could be drawn"):
        draw_calibration_crops([broken], proposals.__getitem__, 4, CROP, 2, convention)


def test_detector_file_carries_calibration_and_loads_int8(trained, world, tmp_path, caplog, monkeypatch):
    from detect.classes import ClassList
    from detect.io import load_checkpoint
    from detect.pipeline import Detector, DetectorSettings, bundle_detector
    from detect.quantize import draw_calibration_crops

    records, proposals = world
    settings = DetectorSettings(crop_size=CROP, context=2, score_threshold=0.0, max_per_image=5)
    crops = draw_calibration_crops(records, proposals.__getitem__, 6, CROP, 2)
    member = [{"model_kwargs": trained.model_kwargs, "model_state": trained.state_dict()}]
    classes = ClassList.from_names(["a", "b", "c"])
    path = tmp_path / "detector.pt"
    bundle_detector(member, classes, settings, path, calibration={"crops": crops, "recipe": {"lrn_tolerance": 0.01}})
    raw = load_checkpoint(path)
    assert raw["calibration"]["crops"].dtype == torch.uint8 and raw["calibration"]["recipe"] == {"lrn_tolerance": 0.01}

    image = read_image(records[0].path)
    boxes = np.array([[0, 0, 40, 40], [10, 5, 60, 50], [20, 20, 64, 64]], np.float32)
    fp32 = Detector.from_checkpoint(path, precision="fp32")
    int8 = Detector.from_checkpoint(path, precision="int8")
    assert [m.precision for m in int8.scorers] == ["int8"]
    meta = json.loads((tmp_path / "detector.pt.onnx" / "member0.int8.json").read_text())
    assert meta["calibration_inputs"] == 6 and meta["recipe"] == {"lrn_tolerance": 0.01}
    a, b = fp32.score(image, boxes), int8.score(image, boxes)
    assert (a - b).abs().max().item() < 0.15 and not torch.equal(a, b)

    bare = tmp_path / "bare.pt"  # a detector file without calibration crops
    bundle_detector(member, classes, settings, bare)
    with pytest.raises(ValueError, match="needs calibration"):
        Detector.from_checkpoint(bare, precision="int8")
    monkeypatch.setattr("detect.backends.cpu_has_int8_dot", lambda flags=None: True)
    with caplog.at_level(logging.WARNING):
        auto = Detector.from_checkpoint(bare, precision="auto")
    assert [m.precision for m in auto.scorers] == ["fp32"] and "no calibration inputs" in caplog.text

    raw["calibration"]["crops"] = raw["calibration"]["crops"][:, :, :16]  # not the crop size
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: calibration crops"):
        Detector.from_checkpoint(tmp_path / "bad.pt")
    raw["calibration"] = {"crops": torch.from_numpy(crops), "recipe": {"format": "qdq", "exec": "x"}}
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: calibration recipe"):
        Detector.from_checkpoint(tmp_path / "bad.pt")


def _as_bvlc(model: GoogLeNet) -> GoogLeNet:
    """``model`` rewritten to take BVLC inputs (BGR 0..255 minus mean): conv1's weights scaled and their
    channels reversed, the mean difference moved into conv1's BatchNorm (exact away from the border)."""
    out = _net().eval()
    out.load_state_dict(model.state_dict())
    out.set_input_convention(BVLC)
    m_in, s_in = torch.tensor(IMAGENET.mean), torch.tensor(IMAGENET.std)
    m_b = torch.tensor(BVLC.mean).flip(0)  # in RGB order
    with torch.no_grad():
        w = model.conv1.conv.weight
        out.conv1.conv.weight.copy_((w / (255.0 * s_in).view(1, 3, 1, 1)).flip(1))
        shift = (w * ((m_b / 255.0 - m_in) / s_in).view(1, 3, 1, 1)).sum((1, 2, 3))
        out.conv1.bn.running_mean.sub_(shift)
    return out


def test_int8_members_calibrate_in_their_own_convention(trained, world, tmp_path):
    """A detector mixing an ImageNet member and a BVLC one: each int8 model is calibrated on the stored
    RGB crops prepared in its member's convention, and each scores near its fp32 model."""
    from detect.classes import ClassList
    from detect.pipeline import Detector, DetectorSettings, bundle_detector
    from detect.io import digest
    from detect.quantize import crops_to_inputs, draw_calibration_crops

    records, proposals = world
    bvlc = _as_bvlc(trained)
    x, _ = _images(64, seed=30_000)  # ImageNet-prepared crops of pixels within 0..255
    x = x.clamp(-2.0, 2.0)
    pixels = to_pixels(x, IMAGENET)
    with torch.inference_mode():
        same = trained(IMAGENET.normalize(pixels)).softmax(1) - bvlc(BVLC.normalize(pixels)).softmax(1)
    assert same.abs().max().item() < 0.02  # the rewrite is the same classifier

    settings = DetectorSettings(crop_size=CROP, context=2, score_threshold=0.0, max_per_image=5)
    crops = draw_calibration_crops(records, proposals.__getitem__, 8, CROP, 2)
    members = [{"model_kwargs": m.model_kwargs, "model_state": m.state_dict()} for m in (trained, bvlc)]
    path = tmp_path / "detector.pt"
    bundle_detector(members, ClassList.from_names(["a", "b", "c"]), settings, path, calibration={"crops": crops})
    int8 = Detector.from_checkpoint(path, precision="int8")
    assert [m.input_convention for m in int8.scorers] == [IMAGENET, BVLC]
    for k, convention in enumerate((IMAGENET, BVLC)):
        meta = json.loads((tmp_path / "detector.pt.onnx" / f"member{k}.int8.json").read_text())
        assert meta["input_convention"] == convention.to_dict()
        assert meta["calibration"] == digest(crops_to_inputs(crops, convention))
    diffs = []
    for k, (member, convention) in enumerate(zip((trained, bvlc), (IMAGENET, BVLC))):
        inputs = convention.normalize(pixels)
        with torch.inference_mode():
            diffs.append((int8.scorers[k](inputs).softmax(1) - member(inputs).softmax(1)).abs())
    # measured: |dp| mean 0.0032 / 0.0034, max 0.035 / 0.053
    assert all(d.mean().item() < 0.01 and d.max().item() < 0.15 for d in diffs)
    # mutation guard: the BVLC member calibrated on ImageNet-prepared inputs (the convention ignored) is far off
    fp32_key = json.loads((tmp_path / "detector.pt.onnx" / "member1.json").read_text())["key"]
    wrong = OnnxScorer(cached_int8_export(bvlc, tmp_path / "detector.pt.onnx" / "member1.onnx", fp32_key,
                                          crops_to_inputs(crops, IMAGENET))[0])
    inputs = BVLC.normalize(pixels)
    with torch.inference_mode():
        bad = (wrong(inputs).softmax(1) - bvlc(inputs).softmax(1)).abs().mean().item()  # measured 0.30
    assert bad > 5 * diffs[1].mean().item()


def test_multibox_int8_from_embedded_calibration_images(world, tmp_path):
    """MultiBox passes precision through and calibrates on the images embedded with its network."""
    from detect.quantize import draw_calibration_images
    from proposals.multibox import MultiBoxProposer
    from proposals.multibox.model import MultiBoxNet

    records, _ = world
    torch.manual_seed(1)
    kwargs = {"backbone_kwargs": {"width": 0.125, "batch_norm": True, "lrn": True}, "num_priors": 8,
              "input_size": 64, "grid": 2}
    net = MultiBoxNet(**kwargs).eval()
    net.set_priors(np.random.default_rng(0).uniform(0, 0.5, (8, 2)).repeat(2, 1) + [0, 0, 0.4, 0.4])
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)
    images = draw_calibration_images(records, 4, 64, seed=0)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    network = {"model_kwargs": kwargs, "model_state": net.state_dict()}
    fp32 = MultiBoxProposer(network, top_k=8, device="cpu", onnx_cache=tmp_path / "a", precision="fp32")
    with pytest.raises(ValueError, match="needs calibration"):
        MultiBoxProposer(network, top_k=8, device="cpu", onnx_cache=tmp_path / "a", precision="int8")
    network = {**network, "calibration": torch.from_numpy(images), "int8_recipe": {"per_channel": True}}
    int8 = MultiBoxProposer(network, top_k=8, device="cpu", onnx_cache=tmp_path / "a", precision="int8")
    assert int8.net.precision == "int8" and int8.spec_params()["precision"] == "int8"
    assert "calibration" in int8.network_entry()  # a detector re-bundled from this proposer keeps it
    image = read_image(records[1].path)
    assert int8(image).boxes.shape == (8, 4)
    from proposals.multibox.model import preprocess

    x = preprocess([image, read_image(records[2].path)], 64)
    a, b = fp32.net(x), int8.net(x)  # [2, 8, 5]: normalised boxes and the confidence logit
    diff = (a - b).abs()
    corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
    # an untrained network (random head on a random trunk) is far more fragile under int8 than a trained
    # one (benchmarks/int8.md measures the demo's MultiBox); measured here: mean 0.025, max 0.11
    assert diff.mean().item() < 0.05 and corr > 0.9 and diff.max().item() > 0
