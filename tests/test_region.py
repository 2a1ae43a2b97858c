"""Region warping, labels, sampling and the ensemble, against hand-made cases and slow references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detect.data.records import DetectionRecord, SkippedItem
from detect.models.convention import InputConvention
from detect.classify import ClassificationLoss, evaluate_classification
from detect.scoring import ensemble_probs
from detect.region import (RegionDataset, add_ground_truth, assign_region_labels,
                           collate_regions, context_boxes, normalize_image, sample_regions, warp_regions)

HALF = InputConvention(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # RGB 0..1 -> (x - 0.5) / 0.25


def _bilinear_zero_padded(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``img[C, H, W]`` at continuous pixel-index coordinates, zero outside (slow, per point)."""
    c, h, w = img.shape
    out = np.zeros((c, len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - y0, x - x0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = y0 + dy, x0 + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, i, j] += wy * wx * img[:, yy, xx]
    return out


def _warp_reference(img: np.ndarray, box, size: int, context: int) -> np.ndarray:
    """Dilate the box, then crop-and-resize with explicit zero padding, pixel centres at k + 0.5."""
    scale = size / (size - 2 * context)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = (box[2] - box[0]) * scale, (box[3] - box[1]) * scale
    x1, y1 = cx - bw / 2, cy - bh / 2
    xs = x1 + (np.arange(size) + 0.5) * bw / size - 0.5
    ys = y1 + (np.arange(size) + 0.5) * bh / size - 0.5
    return _bilinear_zero_padded(img, ys, xs)


def test_warp_matches_slow_reference_including_outside_parts():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(3, 23, 31, generator=gen)
    boxes = torch.tensor([[3.0, 4.0, 20.0, 15.0],      # inside, upsampled
                          [-5.0, -3.0, 12.0, 30.0],    # sticks out top-left and bottom
                          [0.0, 0.0, 31.0, 23.0],      # whole image: context is outside
                          [10.2, 5.7, 11.9, 6.3],      # tiny
                          [25.0, 1.0, 40.0, 9.5]])     # sticks out right
    size, context = 12, 2
    crops = warp_regions(image, boxes, size, context)
    assert crops.shape == (5, 3, size, size)
    for k, box in enumerate(boxes.tolist()):
        ref = _warp_reference(image.numpy().astype(np.float64), box, size, context)
        np.testing.assert_allclose(crops[k].numpy(), ref, atol=1e-4)


def test_warp_context_and_mean_fill():
    image = torch.ones(3, 40, 40)
    # the box is the whole image: 16 px of the 224 crop on each side fall outside; beyond the
    # one-pixel bilinear blend at the border they are exactly zero (the mean)
    crop = warp_regions(image, torch.tensor([[0.0, 0.0, 40.0, 40.0]]), 224, 16)[0]
    torch.testing.assert_close(crop[:, 20:204, 20:204], torch.ones(3, 184, 184))
    assert torch.all(crop[:, :, :13] == 0) and torch.all(crop[:, :13, :] == 0)
    assert torch.all(crop[:, :, 211:] == 0) and torch.all(crop[:, 211:, :] == 0)
    dil = context_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), 224, 16)
    torch.testing.assert_close(dil, torch.tensor([[10 - 20 * 16 / 192, 20 - 40 * 16 / 192,
                                                   30 + 20 * 16 / 192, 60 + 40 * 16 / 192]]))


def test_warp_empty_and_bad_input():
    assert warp_regions(torch.zeros(3, 5, 5), torch.zeros(0, 4), 8, 1).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError):
        warp_regions(torch.zeros(3, 5, 5), torch.zeros(1, 4), 8, 4)
    with pytest.raises(ValueError):
        warp_regions(torch.zeros(1, 3, 5, 5), torch.zeros(1, 4), 8, 1)


def test_normalize_image():
    image = np.full((2, 3, 3), 255, np.uint8)
    x = normalize_image(image, InputConvention(mean=(0.5, 0.5, 0.0), std=(0.5, 0.25, 1.0)))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((2, 3), 1.0)) and torch.allclose(x[1], torch.full((2, 3), 2.0))


def test_assign_region_labels_hand_made():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]])
    gt_labels = torch.tensor([4, 7, 2])
    ignore = torch.tensor([False, False, True])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 5.0],      # IoU 0.5 with gt 0 -> class 4 + 1
                              [0.0, 0.0, 10.0, 4.9],      # IoU 0.49 -> background
                              [21.0, 21.0, 30.0, 30.0],   # IoU 0.81 with gt 1 -> 8
                              [50.0, 50.0, 60.0, 60.0],   # only the ignored box -> -1 (unused)
                              [100.0, 100.0, 120.0, 120.0]])
    labels = assign_region_labels(proposals, gt, gt_labels, ignore, 0.5)
    assert labels.tolist() == [5, 0, 8, -1, 0]
    # best overlap wins among two ground truths
    two = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    assert assign_region_labels(torch.tensor([[2.0, 0.0, 11.0, 10.0]]), two, torch.tensor([0, 1])).tolist() == [2]
    assert assign_region_labels(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).tolist() == [0] * 5


def test_add_ground_truth_skips_ignored():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    boxes, labels = add_ground_truth(torch.tensor([[30.0, 30.0, 40.0, 40.0]]), gt, torch.tensor([3, 1]),
                                     torch.tensor([False, True]))
    assert boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]
    assert labels.tolist() == [4, 0]


def test_sample_regions_quarter_positive():
    rng = np.random.default_rng(0)
    labels = torch.tensor([1] * 50 + [0] * 500 + [-1] * 20)
    pick = sample_regions(labels, 128, 0.25, rng)
    assert len(pick) == 128 and (labels[pick] > 0).sum() == 32 and (labels[pick] == 0).sum() == 96
    assert len(set(pick[:32].tolist())) == 32  # enough positives: without replacement
    few = torch.tensor([2, 3] + [0] * 10)
    pick = sample_regions(few, 16, 0.25, rng)
    assert (few[pick] > 0).sum() == 4 and (few[pick] == 0).sum() == 12
    assert (sample_regions(torch.tensor([0] * 5), 8, 0.25, rng) < 5).all()
    assert (torch.tensor([1, 1])[sample_regions(torch.tensor([1, 1]), 8, 0.25, rng)] == 1).all()
    with pytest.raises(ValueError):
        sample_regions(torch.tensor([-1, -1]), 8, 0.25, rng)


def _record(tmp_path, name, size=(40, 60)):
    arr = np.random.default_rng(1).integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    path = tmp_path / f"{name}.png"
    Image.fromarray(arr).save(path)
    return DetectionRecord(name, path, size[1], size[0], np.array([[5, 5, 30, 30]], np.float32),
                           np.array([2]), np.array([False]))


def test_region_dataset_items_and_flip(tmp_path):
    records = [_record(tmp_path, "a"), _record(tmp_path, "b")]
    props = {"a": np.array([[5, 5, 30, 29], [40, 0, 60, 40], [0, 0, 10, 10]], np.float32)}
    ds = RegionDataset(records, props.__getitem__, HALF,
                       regions_per_image=8, fg_fraction=0.25, crop_size=16, context=2, flip_prob=0.0, seed=3)
    crops, labels, _, _ = collate_regions([ds[0], ds[1]])
    assert crops.shape == (16, 3, 16, 16) and labels.shape == (16,)
    assert (labels[:8] == 3).sum() == 2 and (labels[:8] == 0).sum() == 6
    assert (labels[8:] == 3).all()  # "b" has no proposals: ground truth only
    # a horizontal flip of the image and boxes gives the mirrored crop of the same region
    ds_flip = RegionDataset(records[1:], {}.__getitem__, HALF, regions_per_image=1,
                            crop_size=16, context=2, flip_prob=1.0)
    ds_plain = RegionDataset(records[1:], {}.__getitem__, HALF, regions_per_image=1,
                             crop_size=16, context=2, flip_prob=0.0)
    torch.testing.assert_close(ds_flip[0][0], ds_plain[0][0].flip(-1), atol=1e-4, rtol=0)


def test_region_dataset_reports_bad_image(tmp_path):
    rec = _record(tmp_path, "a")
    rec.path.write_bytes(b"not an image")
    good = _record(tmp_path, "b")
    ds = RegionDataset([rec, good], {}.__getitem__, HALF, regions_per_image=4,
                       crop_size=16, context=2)
    assert isinstance(ds[0], SkippedItem) and ds[0].file == str(rec.path) and "image" in ds[0].reason
    crops, labels, dropped, skipped = collate_regions([ds[0], ds[1]])
    assert crops.shape == (4, 3, 16, 16) and dropped == 1 and skipped == (ds[0],)
    nothing = collate_regions([ds[0]])
    assert len(nothing.labels) == 0 and nothing.dropped == 1


class _Fixed(nn.Module):
    """A member whose logits are a fixed function of the crop's mean value."""

    def __init__(self, weights):
        super().__init__()
        self.w = torch.tensor(weights)

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None] * self.w[None]


def test_ensemble_averages_softmax():
    a, b = _Fixed([0.0, 1.0, 2.0]), _Fixed([3.0, -1.0, 0.0])
    x = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        probs = ensemble_probs([a, b], x)
    expected = (a(x).softmax(1) + b(x).softmax(1)) / 2
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))


def test_ensemble_cascade_keeps_member0_scores_for_unpassed():
    a, b = _Fixed([0.0, 1.0, 0.0]), _Fixed([0.0, 0.0, 5.0])
    x = torch.stack([torch.full((3, 2, 2), v) for v in (-4.0, 0.0, 4.0)])
    p0 = a(x).softmax(1)
    with torch.no_grad():
        probs = ensemble_probs([a, b], x, cascade_threshold=0.5)
    passed = p0[:, 1:].max(1).values >= 0.5
    assert passed.tolist() == [False, False, True]
    torch.testing.assert_close(probs[~passed], p0[~passed])
    torch.testing.assert_close(probs[passed], ((p0 + b(x).softmax(1)) / 2)[passed])


def test_region_loss_weights_aux_heads():
    from detect.models.googlenet import GoogLeNetOutputs

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    aux = torch.zeros(2, 3)
    labels = torch.tensor([0, 1])
    main = nn.functional.cross_entropy(logits, labels)
    aux_ce = nn.functional.cross_entropy(aux, labels)
    batch = collate_regions([(torch.zeros(2, 3, 4, 4), labels)])
    region_loss = ClassificationLoss(0.3, background=0)
    loss, metrics = region_loss(lambda x: GoogLeNetOutputs(logits, aux, aux), batch, torch.device("cpu"))
    assert float(loss) == pytest.approx(float(main + 0.6 * aux_ce))
    assert metrics == {"top1": 0.5, "fg_share": 0.5, "fg_acc": 0.0}
    loss, _ = region_loss(lambda x: logits, batch, torch.device("cpu"))  # eval-mode output
    assert float(loss) == pytest.approx(float(main))


def test_region_dataset_draws_differ_by_seed_and_call(tmp_path):
    records = [_record(tmp_path, "a")]
    props = {"a": np.random.default_rng(0).uniform(0, 30, (200, 2)).repeat(2, 1).astype(np.float32)
             + np.array([0, 0, 10, 10], np.float32)}
    def make(seed):
        return RegionDataset(records, props.__getitem__, HALF, regions_per_image=16,
                             crop_size=8, context=1, flip_prob=0.0, seed=seed)
    a, b = make(0), make(1)
    first, again = a[0][0], a[0][0]
    assert not torch.equal(first, again)            # a new draw every epoch
    assert torch.equal(make(0)[0][0], first)        # reproducible from the seed
    assert not torch.equal(b[0][0], first)          # another member samples differently


def test_evaluate_regions_counts_hits():
    model = _Fixed([0.0, 1.0, -1.0])  # predicts class column 1 for positive-mean crops, 2 (via -1) for negative
    crops = torch.stack([torch.full((3, 2, 2), v) for v in (1.0, 1.0, -1.0, -1.0)])
    batch = collate_regions([(crops, torch.tensor([1, 0, 2, 0])), SkippedItem("x.jpg", "unreadable")])
    metrics = evaluate_classification(model, [batch, None], "cpu", background=0)
    assert metrics["top1"] == 0.5 and metrics["fg_acc"] == 1.0 and metrics["bg_acc"] == 0.0 and metrics["n"] == 4
    ignored = collate_regions([(crops, torch.tensor([1, -1, 2, -1]))])  # label -1: not used, not counted
    assert evaluate_classification(model, [ignored], "cpu", background=0)["n"] == 2


def test_hard_backgrounds_take_their_share_of_the_background_quota():
    from detect.region import best_gt_overlaps, sample_regions

    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # the object itself: IoU 1
                          [0.0, 0.0, 5.0, 5.0],       # a part of it: IoU 0.25 (hard)
                          [50.0, 50.0, 60.0, 60.0],   # elsewhere: IoU 0
                          [40.0, 40.0, 70.0, 70.0]])  # elsewhere: IoU 0
    iou = best_gt_overlaps(boxes, gt)
    assert torch.allclose(iou, torch.tensor([1.0, 0.25, 0.0, 0.0]))
    labels = torch.tensor([1, 0, 0, 0])
    hard = iou >= 0.1
    rng = np.random.default_rng(0)
    pick = sample_regions(labels, 400, 0.25, rng, hard, hard_fraction=0.5).tolist()
    assert pick.count(0) == 100                                         # the positives' quota
    assert 170 < pick.count(1) < 230                                    # 150 hard + a third of 150 uniform
    plain = sample_regions(labels, 400, 0.25, np.random.default_rng(0))
    assert 60 < plain.tolist().count(1) < 140                           # uniform: about a third of 300 bg
    assert best_gt_overlaps(boxes, gt, torch.tensor([True])).eq(0).all()   # ignored ground truth counts for nothing
