"""Input conventions: the one preparation function, their records in checkpoints, and every consumer
applying the one its weights expect (transforms, MultiBox, region crops, ensembles mixing conventions,
the detector file and its ONNX exports)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detect.classes import ClassList
from detect.io import atomic_torch_save, load_checkpoint
from detect.models.convention import BVLC, IMAGENET, IMAGENET_MEAN, IMAGENET_STD, RGB01, InputConvention, WithInputConvention
from detect.models.googlenet import GoogLeNet
from detect.models.weights import load_model, load_pretrained
from detect.pipeline import Detector, DetectorSettings, bundle_detector
from detect.region import RegionDataset, normalize_image, warp_regions
from detect.scoring import ensemble_probs
from detect.data.records import DetectionRecord
from detect.data.transforms import TestTransform
from proposals.multibox.model import preprocess

TINY = dict(width=0.125, aux_logits=False, lrn=False, dropout=0.0)


def _image(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_normalize_rules_and_round_trip():
    image = _image()
    x = torch.from_numpy(image).permute(2, 0, 1)
    bvlc = BVLC.normalize(x)
    expected = x.flip(0).double() - torch.tensor([104.0, 117.0, 123.0]).view(3, 1, 1)  # BGR 0..255 minus mean
    assert bvlc.dtype == torch.float32 and torch.equal(bvlc.double(), expected)
    # ImageNet: bit-identical to the formula used before conventions existed
    old = x.float().div_(255.0).sub_(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div_(torch.tensor(IMAGENET_STD).view(3, 1, 1))
    assert torch.equal(IMAGENET.normalize(x), old) and torch.equal(IMAGENET.normalize(x[None])[0], old)
    # float 0..1 input is the same picture: plain RGB01 crops then a model's own convention
    plain = RGB01.normalize(x)
    assert torch.allclose(BVLC.normalize(plain), bvlc, atol=1e-4) and torch.equal(IMAGENET.normalize(plain), old)
    assert torch.equal(x, torch.from_numpy(image).permute(2, 0, 1))  # the input is never modified
    for c in (IMAGENET, BVLC, RGB01):
        assert InputConvention.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert InputConvention.from_dict(None) == IMAGENET and "BGR 0-255 minus mean (104, 117, 123)" == BVLC.describe()
    for bad in ({"channel_order": "GBR"}, {"std": [1, 0, 1]}, {"mean": [1, 2]}, {"scale": -1}, {"gamma": 2.2}):
        with pytest.raises(ValueError, match="input convention"):
            InputConvention.from_dict({**IMAGENET.to_dict(), **bad})


def test_checkpoints_record_and_carry_the_convention(tmp_path):
    source = GoogLeNet(num_classes=3, **TINY)
    source.set_input_convention(BVLC)
    atomic_torch_save({"model_kwargs": source.model_kwargs, "model_state": source.state_dict()}, tmp_path / "b.pt")
    target = GoogLeNet(num_classes=5, **TINY)
    assert target.input_convention == IMAGENET
    load_pretrained(target, tmp_path / "b.pt")
    assert target.input_convention == BVLC and target.model_kwargs["input_convention"] == BVLC.to_dict()
    model, ckpt = load_model(tmp_path / "b.pt")
    assert model.input_convention == BVLC and InputConvention.from_dict(ckpt["model_kwargs"]["input_convention"]) == BVLC
    # a checkpoint from before conventions were recorded means ImageNet (and so does a torchvision state dict)
    kwargs = {k: v for k, v in source.model_kwargs.items() if k != "input_convention"}
    atomic_torch_save({"model_kwargs": kwargs, "model_state": source.state_dict()}, tmp_path / "old.pt")
    load_pretrained(target, tmp_path / "old.pt")
    assert target.input_convention == IMAGENET and load_model(tmp_path / "old.pt")[0].input_convention == IMAGENET
    atomic_torch_save(source.state_dict(), tmp_path / "raw.pth")
    target.set_input_convention(BVLC)
    load_pretrained(target, tmp_path / "raw.pth")
    assert target.input_convention == IMAGENET


def test_transforms_multibox_and_region_crops_follow_the_convention(tmp_path):
    image = np.zeros((60, 80, 3), np.uint8)
    image[...] = (200, 100, 50)  # RGB
    bgr_minus_mean = torch.tensor([50 - 104.0, 100 - 117.0, 200 - 123.0])
    crops = TestTransform(32, crops=10, convention=BVLC)(image)
    assert crops.shape == (10, 3, 32, 32) and torch.allclose(crops.mean((0, 2, 3)), bgr_minus_mean, atol=1e-3)
    x = preprocess([image, image[:30]], 24, BVLC)
    assert torch.allclose(x.mean((0, 2, 3)), bgr_minus_mean, atol=1e-4)
    assert torch.allclose(preprocess([image], 24)[0], IMAGENET.normalize(torch.from_numpy(image).permute(2, 0, 1))[:, :24, :24])
    Image.fromarray(image).save(tmp_path / "a.png")
    record = DetectionRecord("a", tmp_path / "a.png", 80, 60, np.array([[10, 10, 50, 40]], np.float32), np.array([0]),
                             np.array([False]), 1)
    regions, labels = RegionDataset([record], {}.__getitem__, BVLC, regions_per_image=2, crop_size=16, context=0)[0]
    assert regions.shape == (2, 3, 16, 16) and torch.allclose(regions.mean((0, 2, 3)), bgr_minus_mean, atol=1e-4)


def test_warp_pads_with_each_conventions_mean():
    """A region reaching beyond the image shows the mean colour of the convention it was warped in (zero
    after normalising): BVLC's (104, 117, 123) BGR for a BVLC member, ImageNet's mean for ours."""
    image = _image(32, 32)
    outside = torch.tensor([[-40.0, 0.0, -8.0, 32.0]])  # wholly left of the image
    for c in (IMAGENET, BVLC):
        crop = warp_regions(normalize_image(image, c), outside, size=8, context=0)
        assert torch.equal(crop, torch.zeros_like(crop))


def _members_with(conventions, num_classes=4, seed=0):
    torch.manual_seed(seed)
    members = []
    for c in conventions:
        m = GoogLeNet(num_classes=num_classes, batch_norm=True, **TINY).eval()
        m.set_input_convention(c)
        members.append(m)
    return members


def _manual_probs(members, image, boxes, crop_size, context):
    """Each member on crops of the image prepared in its own convention, softmax averaged."""
    out = []
    for m in members:
        crops = warp_regions(normalize_image(image, m.input_convention), torch.as_tensor(boxes), crop_size, context)
        with torch.no_grad():
            out.append(m(crops).softmax(1))
    return torch.stack(out).mean(0)


def test_ensemble_mixing_conventions_gives_each_member_its_own_crops(tmp_path):
    classes = ClassList.from_names(["a", "b", "c"])
    members = _members_with([IMAGENET, BVLC, IMAGENET])
    image = _image(48, 64)
    boxes = np.array([[0, 0, 30, 20], [10, 5, 64, 48], [-4, -4, 20, 30]], np.float32)
    det = Detector(None, members, classes, crop_size=64, context=4, batch_size=2)
    assert det.scorer.conventions == [IMAGENET, BVLC]  # two warps per batch, not three
    expected = _manual_probs(members, image, boxes, 64, 4)
    assert torch.allclose(det.score(image, boxes), expected, atol=1e-5)
    # the guard: the BVLC member fed ImageNet crops would score differently
    wrong = _manual_probs([members[0], _members_with([IMAGENET])[0], members[2]], image, boxes, 64, 4)
    assert not torch.allclose(det.score(image, boxes), wrong, atol=1e-3)
    with pytest.raises(ValueError, match="one crop batch per convention"):
        ensemble_probs(det.scorers, torch.zeros(1, 3, 64, 64))
    # the detector file keeps each member's convention; both backends apply it
    ckpts = [{"model_kwargs": m.model_kwargs, "model_state": m.state_dict()} for m in members]
    path = tmp_path / "detector.pt"
    bundle_detector(ckpts, classes, DetectorSettings(crop_size=64, context=4, batch_size=2), path)
    for backend in ("torch", "onnxruntime"):
        loaded = Detector.from_checkpoint(path, backend=backend, stored_proposer=False)
        assert [s.input_convention for s in loaded.scorers] == [IMAGENET, BVLC, IMAGENET]
        assert torch.allclose(loaded.score(image, boxes), expected, atol=1e-4), backend
    sidecar = json.loads((tmp_path / "detector.pt.onnx" / "member1.json").read_text())
    assert InputConvention.from_dict(sidecar["input_convention"]) == BVLC
    cascade = Detector.from_checkpoint(path, backend="torch", stored_proposer=False, cascade_threshold=0.0)
    assert torch.allclose(cascade.score(image, boxes), expected, atol=1e-5)  # everything passes: all members


def test_detector_files_without_member_conventions_are_refused(tmp_path):
    classes = ClassList.from_names(["a", "b", "c"])
    member = _members_with([BVLC])[0]
    kwargs = {k: v for k, v in member.model_kwargs.items() if k != "input_convention"}
    settings = DetectorSettings(crop_size=64, context=4)
    # a member checkpoint from before conventions were recorded is bundled with ImageNet's (what it meant)
    bundle_detector([{"model_kwargs": kwargs, "model_state": member.state_dict()}], classes, settings,
                    tmp_path / "new.pt")
    assert load_checkpoint(tmp_path / "new.pt")["members"][0]["model_kwargs"]["input_convention"] == IMAGENET.to_dict()
    # a detector file written before members recorded conventions (its settings held mean / std) is refused
    old = load_checkpoint(tmp_path / "new.pt")
    old["members"][0]["model_kwargs"].pop("input_convention")
    old["settings"].update(mean=[0.5] * 3, std=[0.25] * 3)
    atomic_torch_save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt: member 0 records no input convention.*step=bundle"):
        Detector.from_checkpoint(tmp_path / "old.pt", backend="torch", stored_proposer=False)
    # stored mean / std settings are ignored: each member's own convention prepares its crops
    old["members"][0]["model_kwargs"]["input_convention"] = BVLC.to_dict()
    atomic_torch_save(old, tmp_path / "mixed.pt")
    loaded = Detector.from_checkpoint(tmp_path / "mixed.pt", backend="torch", stored_proposer=False)
    assert [s.input_convention for s in loaded.scorers] == [BVLC] and loaded.settings == settings


def test_with_input_convention_prepares_plain_crops():
    member = _members_with([BVLC])[0]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(WithInputConvention(member)(x), member(BVLC.normalize(x)))
