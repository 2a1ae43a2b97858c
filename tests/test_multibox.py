"""MultiBox: priors, matching loss against brute force, network shapes, decoding, data, proposer, tool."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detect.data.records import SkippedItem
from proposals.multibox.loss import match, match_priors, multibox_loss
from proposals.multibox.priors import compute_priors, normalised_boxes

TINY_BACKBONE = {"width": 0.125, "batch_norm": True, "lrn": False, "dropout": 0.0}


# ---------------------------------------------------------------- loss
def _brute_force_loss(boxes, logits, gt, alpha):
    """Minimum of F over every bipartite assignment of min(K, G) pairs, for one image (plain loops)."""
    K, G = len(boxes), len(gt)
    best = None
    pairs_list = (
        [list(zip(perm, range(G))) for perm in itertools.permutations(range(K), G)]
        if G <= K
        else [list(zip(range(K), perm)) for perm in itertools.permutations(range(G), K)]
    )
    for pairs in pairs_list:
        matched = {i for i, _ in pairs}
        total = 0.0
        for i, j in pairs:
            c = torch.sigmoid(logits[i]).double()
            total += alpha / 2 * float(((boxes[i] - gt[j]) ** 2).sum()) - float(torch.log(c))
        for i in range(K):
            if i not in matched:
                total -= float(torch.log(1 - torch.sigmoid(logits[i]).double()))
        best = total if best is None else min(best, total)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_loss_equals_brute_force_minimum(seed):
    g = torch.Generator().manual_seed(seed)
    B, K = 3, int(torch.randint(1, 6, (), generator=g))
    boxes = torch.rand(B, K, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(B, K, generator=g, dtype=torch.float64) * 2
    gt = [torch.rand(int(torch.randint(0, 4, (), generator=g)), 4, generator=g, dtype=torch.float64) for _ in range(B)]
    alpha = 0.3 + seed
    loss = multibox_loss(boxes, logits, gt, alpha)
    expected = np.mean([_brute_force_loss(boxes[b], logits[b], gt[b], alpha) for b in range(B)])
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def _brute_force_prior_matching(priors, gt):
    """Every injective assignment of min(K, G) ground-truth boxes to priors; the one of least summed
    squared distance -> (prior index list, gt index list)."""
    K, G = len(priors), len(gt)
    best, best_pairs = None, None
    if G <= K:
        candidates = ([(p, j) for j, p in enumerate(perm)] for perm in itertools.permutations(range(K), G))
    else:
        candidates = ([(i, j) for i, j in zip(range(K), perm)] for perm in itertools.permutations(range(G), K))
    for pairs in candidates:
        cost = sum(float(((priors[i] - gt[j]) ** 2).sum()) for i, j in pairs)
        if best is None or cost < best:
            best, best_pairs = cost, pairs
    return best_pairs


@pytest.mark.parametrize("seed", range(6))
def test_loss_with_prior_matching_equals_brute_force(seed):
    """Training with priors: the assignment is the least-distance matching of ground truth to priors
    (brute force over all of them), and F is evaluated there with the predictions."""
    g = torch.Generator().manual_seed(100 + seed)
    B, K = 2, int(torch.randint(1, 6, (), generator=g))
    priors = torch.rand(K, 4, generator=g, dtype=torch.float64)
    boxes = priors + 0.1 * torch.randn(B, K, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(B, K, generator=g, dtype=torch.float64) * 2
    gt = [torch.rand(int(torch.randint(0, 5, (), generator=g)), 4, generator=g, dtype=torch.float64) for _ in range(B)]
    alpha = 0.3 + seed
    expected = []
    for b in range(B):
        pairs = _brute_force_prior_matching(priors, gt[b]) if len(gt[b]) else []
        rows, cols = match_priors(priors, gt[b])
        assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(pairs)
        c = torch.sigmoid(logits[b]).double()
        total = -float(torch.log(1 - c).sum())
        for i, j in pairs:
            total += alpha / 2 * float(((boxes[b, i] - gt[b][j]) ** 2).sum()) - float(torch.log(c[i])) \
                + float(torch.log(1 - c[i]))
        expected.append(total)
    loss = multibox_loss(boxes, logits, gt, alpha, priors=priors)
    assert float(loss) == pytest.approx(np.mean(expected), rel=1e-5, abs=1e-5)


def test_prior_matching_ignores_confidences_prediction_matching_does_not():
    # prediction 0 sits on the ground truth but has low confidence; prior 1 is the nearer prior
    priors = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.9, 0.9]])
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1]]])
    logits = torch.tensor([[-6.0, 6.0]])
    gt = [torch.tensor([[0.5, 0.5, 1.0, 1.0]])]
    assert match_priors(priors, gt[0])[0].tolist() == [1]
    assert match(boxes[0], logits[0], gt[0], alpha=0.3)[0].tolist() == [1]  # confidence wins at small alpha
    assert match(boxes[0], logits[0], gt[0], alpha=1000.0)[0].tolist() == [0]  # location wins at large alpha


def test_loss_hand_made_case():
    # two predictions, one ground truth equal to prediction 1: prediction 1 must take it
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    logits = torch.zeros(1, 2)  # c = 0.5 everywhere
    gt = [torch.tensor([[0.5, 0.5, 1.0, 1.0]])]
    rows, cols = match(boxes[0], logits[0], gt[0], alpha=1.0)
    assert rows.tolist() == [1] and cols.tolist() == [0]
    # = -log 0.5 (matched, zero distance) - log(1 - 0.5) (unmatched)
    assert float(multibox_loss(boxes, logits, gt, 1.0)) == pytest.approx(2 * np.log(2), rel=1e-6)


def test_loss_without_boxes_is_confidence_term_only_and_gradients_flow():
    boxes = torch.rand(2, 4, 4, requires_grad=True)
    logits = torch.randn(2, 4, requires_grad=True)
    gt = [torch.zeros(0, 4), torch.tensor([[0.1, 0.1, 0.6, 0.7]])]
    loss = multibox_loss(boxes, logits, gt, alpha=2.0)
    loss.backward()
    assert torch.isfinite(loss)
    # image 0 has no boxes: no location gradient, confidence gradient = sigmoid(z) / B
    assert torch.all(boxes.grad[0] == 0)
    assert torch.allclose(logits.grad[0], torch.sigmoid(logits[0].detach()) / 2, atol=1e-6)
    assert boxes.grad[1].abs().sum() > 0
    only_conf = multibox_loss(boxes[:1], logits[:1], gt[:1], alpha=2.0)
    assert float(only_conf.detach()) == pytest.approx(float(-F.logsigmoid(-logits[0].detach()).sum()), rel=1e-6)


def test_loss_is_stable_for_extreme_logits():
    boxes = torch.rand(1, 3, 4)
    logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = multibox_loss(boxes, logits, [torch.rand(2, 4)], alpha=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- priors
def _random_boxes(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((n, 2)), rng.random((n, 2))
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)


def test_priors_reproducible_and_valid():
    pts = _random_boxes(500, 0)
    p1 = compute_priors(pts, k=20, seed=3, iterations=30)
    p2 = compute_priors(pts[::-1].copy(), k=20, seed=3, iterations=30)  # order of the data does not matter
    p3 = compute_priors(pts, k=20, seed=4, iterations=30)
    assert p1.shape == (20, 4) and p1.dtype == np.float32
    assert np.array_equal(p1, compute_priors(pts, k=20, seed=3, iterations=30))
    assert not np.array_equal(p1, p3)
    assert np.allclose(p1, p2, atol=1e-6)  # same seed, permuted input: same result
    assert (p1[:, 2] >= p1[:, 0]).all() and (p1[:, 3] >= p1[:, 1]).all()
    assert p1.min() >= 0 and p1.max() <= 1


def test_priors_find_obvious_clusters():
    centres = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9], [0.0, 0.4, 1.0, 0.6]])
    rng = np.random.default_rng(0)
    pts = np.concatenate([c + rng.normal(0, 0.005, (50, 4)) for c in centres])
    priors = compute_priors(pts, k=3, seed=0, iterations=50)
    d = np.abs(priors[:, None, :] - centres[None]).max(-1)
    assert (d.min(0) < 0.01).all()


def test_priors_with_fewer_distinct_boxes_than_k():
    pts = np.array([[0.1, 0.1, 0.5, 0.5]] * 10 + [[0.2, 0.3, 0.9, 0.8]] * 5)
    priors = compute_priors(pts, k=8, seed=0)
    assert priors.shape == (8, 4)
    for box in np.unique(pts, axis=0):
        assert np.abs(priors - box).max(1).min() < 1e-6
    assert np.array_equal(priors, compute_priors(pts, k=8, seed=0))
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        compute_priors(np.zeros((0, 4)), k=8)


def test_normalised_boxes_leave_out_ignored():
    from detect.data.records import DetectionRecord

    r = DetectionRecord("a", "a.jpg", 200, 100, [[0, 0, 100, 50], [10, 10, 20, 20]], [0, 1], [False, True])
    e = DetectionRecord("b", "b.jpg", 50, 50, np.zeros((0, 4)), [], [])
    assert np.allclose(normalised_boxes([r, e]), [[0, 0, 0.5, 0.5]])


# ---------------------------------------------------------------- network and decoding
def test_network_shapes_and_zero_offsets_give_priors():
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(0)
    net = MultiBoxNet(TINY_BACKBONE, num_priors=7, input_size=96).eval()
    priors = _random_boxes(7, 1).astype(np.float32)
    net.set_priors(priors)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        boxes, logits = net(torch.randn(2, 3, 96, 96))
    assert boxes.shape == (2, 7, 4) and logits.shape == (2, 7)
    assert torch.allclose(boxes, torch.from_numpy(priors).expand(2, -1, -1))
    with pytest.raises(ValueError, match="priors of shape"):
        net.set_priors(np.zeros((6, 4)))
    net.train()
    torch.nn.init.normal_(net.head.weight, std=0.01)
    boxes, logits = net(torch.randn(2, 3, 96, 96))
    multibox_loss(boxes, logits, [torch.rand(2, 4), torch.zeros(0, 4)], 1.0).backward()
    assert net.head.weight.grad.abs().sum() > 0
    first = next(p for p in net.backbone.parameters() if p.dim() == 4)  # conv1's weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_grid_head_reads_the_spatial_map():
    """grid > 1: the linear layer sees each cell of the pooled map, so moving content across the
    image changes the features it reads, where global pooling cannot tell a mirrored image apart."""
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(0)
    net = MultiBoxNet(TINY_BACKBONE, num_priors=5, input_size=128, grid=4).eval()
    assert net.head.in_features == net.backbone.feature_dim * 16
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        boxes, logits = net(x)
        fmap = net.backbone.forward_features(x)
        cells = torch.nn.functional.adaptive_avg_pool2d(fmap, 4).flatten(1)
        expected = net.head(cells)
    assert boxes.shape == (2, 5, 4) and logits.shape == (2, 5)
    assert torch.allclose(logits, expected[:, 20:], atol=1e-6)
    assert torch.allclose(boxes, net.priors + expected[:, :20].reshape(2, 5, 4), atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        MultiBoxNet(TINY_BACKBONE, num_priors=5, input_size=128, grid=0)


def test_loss_fn_matches_to_the_models_priors_also_under_ddp_wrapping():
    from proposals.multibox.model import MultiBoxNet
    from proposals.multibox.training import MultiBoxLossFn

    torch.manual_seed(0)
    net = MultiBoxNet(TINY_BACKBONE, num_priors=6, input_size=96).eval()
    net.set_priors(_random_boxes(6, 2).astype(np.float32))
    from proposals.multibox.data import MultiBoxBatch

    batch = MultiBoxBatch(torch.randn(2, 3, 96, 96), [torch.tensor([[0.1, 0.1, 0.5, 0.6]]), torch.zeros(0, 4)])
    with torch.no_grad():
        boxes, logits = net(batch[0])
        expected = multibox_loss(boxes, logits, batch[1], 0.3, priors=net.priors)
        by_pred = multibox_loss(boxes, logits, batch[1], 0.3)

    class Wrapped(torch.nn.Module):  # the attribute layout of DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    with torch.no_grad():
        for model in (net, Wrapped(net)):
            loss, extra = MultiBoxLossFn(0.3, match="priors")(model, batch, "cpu")
            assert float(loss) == pytest.approx(float(expected), rel=1e-6)
        assert float(MultiBoxLossFn(0.3, match="predictions")(net, batch, "cpu")[0]) == pytest.approx(float(by_pred), rel=1e-6)
    with pytest.raises(ValueError, match="loss.match"):
        MultiBoxLossFn(0.3, match="nearest")


def test_decode_boxes_to_pixels_ordered_and_clipped():
    from proposals.multibox.model import decode_boxes

    boxes = torch.tensor([[0.1, 0.2, 0.5, 1.0], [0.6, 0.7, 0.2, 0.1], [-0.2, 0.5, 1.3, 0.6]])
    out = decode_boxes(boxes, width=200, height=100)
    expected = torch.tensor([[20.0, 20.0, 100.0, 100.0], [40.0, 10.0, 120.0, 70.0], [0.0, 50.0, 200.0, 60.0]])
    assert out.dtype == torch.float32 and torch.allclose(out, expected)


def test_preprocess_warps_and_normalises():
    from detect.models.googlenet import IMAGENET_MEAN, IMAGENET_STD
    from proposals.multibox.model import preprocess

    img = np.zeros((30, 70, 3), dtype=np.uint8)
    img[..., 0] = 255
    x = preprocess([img, img[:, :20]], 48)
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.tensor((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    assert torch.allclose(x[:, 1], torch.tensor(-IMAGENET_MEAN[1] / IMAGENET_STD[1]))
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess([np.zeros((10, 10), dtype=np.uint8)], 48)


# ---------------------------------------------------------------- data
def test_crop_boxes_hand_made():
    from proposals.multibox.data import crop_boxes

    boxes = np.array([[10, 10, 30, 30], [0, 0, 12, 40], [90, 90, 100, 100]], dtype=np.float32)
    out = crop_boxes(boxes, (10, 0, 60, 50), min_visible=0.5)
    # box 0 inside; box 1 keeps 2/12 of its width -> dropped; box 2 outside -> dropped
    assert np.allclose(out, [[0, 10, 20, 30]])


def _write_world(root, n=4, size=(80, 60)):
    """A tiny detection set: images with one white rectangle each, as DetectionRecords."""
    from PIL import Image

    from detect.classes import ClassList
    from detect.data.records import DetectionDataset, DetectionRecord

    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        w, h = size
        img = np.zeros((h, w, 3), dtype=np.uint8)
        x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x2, y2 = x1 + int(rng.integers(10, w // 2)), y1 + int(rng.integers(10, h // 2))
        img[y1:y2, x1:x2] = 255
        path = root / f"img{i}.png"
        Image.fromarray(img).save(path)
        records.append(DetectionRecord(f"img{i}", path, w, h, [[x1, y1, x2, y2]], [0], [False], index=i + 1))
    return DetectionDataset(records, ClassList.from_names(["box"]), name="tiny")


def test_dataset_flip_keeps_boxes_on_the_object(tmp_path):
    from proposals.multibox.data import MultiBoxDataset, collate_multibox

    ds = _write_world(tmp_path)
    plain = MultiBoxDataset(ds, input_size=64, train=False)
    flipped = MultiBoxDataset(ds, input_size=64, train=True, flip=1.0, min_crop=1.0)
    x, b = plain[0]
    xf, bf = flipped[0]
    r = ds.records[0]
    assert np.allclose(b.numpy(), r.boxes / [r.width, r.height, r.width, r.height], atol=1e-6)
    assert torch.allclose(bf[:, [0, 2]], 1 - b[:, [2, 0]]) and torch.allclose(bf[:, [1, 3]], b[:, [1, 3]])
    assert torch.allclose(xf, x.flip(-1), atol=1e-5)
    # random crops: the bright object still fills the (normalised) box it is given
    cropped = MultiBoxDataset(ds, input_size=64, train=True, flip=0.5, min_crop=0.7, crop_probability=1.0)
    torch.manual_seed(0)
    for i in range(len(ds)):
        xc, bc = cropped[i]
        for box in (bc.numpy() * 64).round().astype(int):
            inside = xc[0, box[1] + 1 : box[3] - 1, box[0] + 1 : box[2] - 1]
            assert inside.numel() == 0 or inside.mean() > 1.5  # white after normalisation is ~2.2
    # an unreadable image is reported, counted and dropped by the collate function
    ds.records[1].path.write_bytes(b"not an image")
    items = [plain[i] for i in range(len(ds))]
    assert isinstance(items[1], SkippedItem) and items[1].file == str(ds.records[1].path)
    batch = collate_multibox(items)
    assert batch.images.shape == (3, 3, 64, 64) and len(batch.boxes) == 3
    assert batch.dropped == 1 and batch.skipped == (items[1],)


# ---------------------------------------------------------------- proposer
def _save_checkpoint(path, k=6, priors=None):
    from detect.io import atomic_torch_save
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(0)
    kwargs = {"backbone_kwargs": TINY_BACKBONE, "num_priors": k, "input_size": 96}
    net = MultiBoxNet(**kwargs)
    net.set_priors(_random_boxes(k, 2) if priors is None else priors)
    with torch.no_grad():
        net.head.weight.zero_()  # offsets zero: the boxes are the priors; logits = bias
        net.head.bias[: 4 * k].zero_()
        net.head.bias[4 * k :] = torch.arange(k, dtype=torch.float32)  # confidence grows with the index
    atomic_torch_save({"model_kwargs": kwargs, "model_state": net.state_dict(), "priors": net.priors.clone()}, path)
    return net.priors.numpy().copy()


def test_proposer_returns_priors_in_pixels_sorted_by_confidence(tmp_path):
    from proposals.base import Proposals
    from proposals.multibox import MultiBoxProposer

    priors = _save_checkpoint(tmp_path / "mb.pt")
    proposer = MultiBoxProposer(str(tmp_path / "mb.pt"), top_k=4, device="cpu", batch_size=2)
    assert proposer.name == "multibox"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 120), (200, 90), (96, 96)]]
    batch = proposer.propose_batch(images)
    for image, p in zip(images, batch):
        h, w = image.shape[:2]
        assert isinstance(p, Proposals) and p.boxes.shape == (4, 4) and p.boxes.dtype == np.float32
        assert p.scores.dtype == np.float32 and np.all(np.diff(p.scores) <= 0)
        # offsets are zero, so the boxes are the 4 most confident priors (the last ones) scaled to pixels
        expected = priors[::-1][:4] * np.array([w, h, w, h], dtype=np.float32)
        assert np.allclose(p.boxes, expected, atol=1e-3)
        assert (p.boxes >= 0).all() and (p.boxes[:, 2] <= w).all() and (p.boxes[:, 3] <= h).all()
        single = proposer(image)
        assert np.allclose(single.boxes, p.boxes, atol=1e-4) and np.allclose(single.scores, p.scores, atol=1e-5)
    assert np.allclose(batch[0].scores, 1 / (1 + np.exp(-np.array([5, 4, 3, 2.0]))), atol=1e-5)
    grey = proposer(np.zeros((40, 30), dtype=np.uint16))  # direct arrays of other forms are converted
    assert np.allclose(grey.boxes, priors[::-1][:4] * np.array([30, 40, 30, 40], dtype=np.float32), atol=1e-3)
    with pytest.raises(ValueError, match="empty"):
        proposer(np.zeros((0, 10, 3), dtype=np.uint8))


def test_proposer_backends_agree_and_auto_falls_back_to_torch(tmp_path, caplog):
    """ONNX Runtime and torch give the same proposals (spatial head, paper-style LRN backbone); with
    backend=auto an export that cannot be cached falls back to torch, an explicit onnxruntime raises."""
    from detect.backends import OnnxScorer, TorchScorer
    from detect.io import atomic_torch_save
    from proposals.multibox import MultiBoxProposer
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(1)
    kwargs = {"backbone_kwargs": {**TINY_BACKBONE, "batch_norm": False, "lrn": True}, "num_priors": 8,
              "input_size": 96, "grid": 3}
    net = MultiBoxNet(**kwargs)
    net.set_priors(_random_boxes(8, 3))
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)  # offsets and confidences depend on the image
    path = tmp_path / "mb.pt"
    atomic_torch_save({"model_kwargs": kwargs, "model_state": net.state_dict()}, path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(70, 120), (150, 90)]]
    eager = MultiBoxProposer(str(path), top_k=8, device="cpu", backend="torch")
    onnx = MultiBoxProposer(str(path), top_k=8, device="cpu", backend="onnxruntime")
    assert isinstance(eager.net, TorchScorer) and isinstance(onnx.net, OnnxScorer)
    assert (tmp_path / "mb.pt.onnx" / "multibox.onnx").is_file()
    ours = eager.propose_batch(images)
    for a, b in zip(ours, onnx.propose_batch(images)):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    assert not np.allclose(ours[0].scores, ours[1].scores, atol=1e-4)  # the outputs depend on the image

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    atomic_torch_save({"model_kwargs": kwargs, "model_state": net.state_dict()}, blocked / "mb.pt")
    (blocked / "mb.pt.onnx").write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING"):
        auto = MultiBoxProposer(str(blocked / "mb.pt"), top_k=8, device="cpu", backend="auto")
    assert isinstance(auto.net, TorchScorer) and "eager PyTorch" in caplog.text
    np.testing.assert_allclose(auto(images[0]).boxes, eager(images[0]).boxes, atol=1e-4)
    with pytest.raises(OSError):
        MultiBoxProposer(str(blocked / "mb.pt"), top_k=8, device="cpu", backend="onnxruntime")


def test_proposer_rejects_bad_checkpoint(tmp_path):
    from detect.io import atomic_torch_save
    from proposals.multibox import MultiBoxProposer

    atomic_torch_save({"model_state": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*model_kwargs"):
        MultiBoxProposer(str(tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        MultiBoxProposer(str(tmp_path / "missing.pt"), device="cpu")
    # the checkpoint of a training run that stopped after epoch 3 of 12 (as a killed train_multibox leaves it)
    _save_checkpoint(tmp_path / "mb.pt")
    ckpt = torch.load(tmp_path / "mb.pt", weights_only=True)
    atomic_torch_save({**ckpt, "raw_state": ckpt["model_state"], "epoch": 3, "step": 0, "epochs": 12}, tmp_path / "mb.pt")
    with pytest.raises(ValueError, match=r"mb\.pt: a training checkpoint saved at the end of epoch 3 of 12"):
        MultiBoxProposer(str(tmp_path / "mb.pt"), device="cpu")


# ---------------------------------------------------------------- training tool
@pytest.mark.slow
def test_train_multibox_tool_smoke(tmp_path, repo_root):
    """Two steps of tools/train_multibox.py on a tiny generated world; the checkpoint feeds the proposer."""
    import subprocess
    import sys

    from detect.io import load_checkpoint
    from proposals.multibox import MultiBoxProposer

    if not (repo_root / "conf" / "data" / "synthetic.yaml").is_file():
        pytest.skip("conf/data/synthetic.yaml (the data group) is not there yet")
    work = tmp_path / "work"
    args = [
        sys.executable, str(repo_root / "tools" / "train_multibox.py"), f"work_dir={work}", "init=null",
        "model.width=0.125", "model.batch_norm=true", "multibox.input_size=96",
        "multibox.num_priors=16", "batch_size=4", "epochs=1", "max_steps_per_epoch=2", "num_workers=0",
        "data.generate.num_train=10", "data.generate.num_val=4", "data.generate.min_side=96",
        "data.generate.max_side=128", "data.generate.num_classes=3", "evaluation.top_k=8",
    ]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "coverage@0.5 top8:" in run.stdout
    ckpt = load_checkpoint(work / "multibox" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["model_kwargs"]["num_priors"] == 16
    assert tuple(ckpt["priors"].shape) == (16, 4) and torch.equal(ckpt["priors"], ckpt["model_state"]["priors"])
    image = np.full((90, 130, 3), 127, dtype=np.uint8)
    p = MultiBoxProposer(str(work / "multibox" / "checkpoint.pt"), top_k=8, device="cpu")(image)
    assert p.boxes.shape == (8, 4) and np.all(np.diff(p.scores) <= 0)
    assert (p.boxes[:, 2] <= 130).all() and (p.boxes[:, 3] <= 90).all()


def test_backbone_initialised_from_a_classification_checkpoint(tmp_path):
    from detect.io import atomic_torch_save
    from detect.models.googlenet import GoogLeNet
    from detect.models.weights import load_pretrained
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(1)
    cls = GoogLeNet(num_classes=5, aux_logits=True, **TINY_BACKBONE)
    atomic_torch_save({"model_kwargs": {}, "model_state": cls.state_dict()}, tmp_path / "cls.pt")
    torch.manual_seed(2)
    net = MultiBoxNet(TINY_BACKBONE, num_priors=4, input_size=96)
    load_pretrained(net.backbone, tmp_path / "cls.pt")
    own = net.backbone.state_dict()
    assert own and all(torch.equal(v, cls.state_dict()[k]) for k, v in own.items())
    x = torch.randn(1, 3, 96, 96)
    assert torch.allclose(net.eval().backbone.embed(x), cls.eval().embed(x), atol=1e-6)


def test_evaluate_coverage_counts_top_k_only():
    from proposals.multibox.data import MultiBoxBatch
    from proposals.multibox.training import evaluate_coverage

    class Fixed(torch.nn.Module):
        def forward(self, x):
            boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [1.0, 0.0, 0.6, 0.4]]]).expand(len(x), -1, -1)
            return boxes, torch.tensor([[3.0, 1.0, 2.0]]).expand(len(x), -1)

    gt = [torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.6, 0.0, 1.0, 0.4]]), torch.zeros(0, 4)]
    loader = [MultiBoxBatch(torch.zeros(2, 3, 8, 8), gt)]
    # top 2 by confidence: boxes 0 and 2 (2 is given with x1 > x2 and is put in order) -> 2 of 3 covered
    assert evaluate_coverage(Fixed(), loader, "cpu", top_k=2)["coverage"] == pytest.approx(2 / 3)
    assert evaluate_coverage(Fixed(), loader, "cpu", top_k=3)["coverage"] == pytest.approx(1.0)
    assert evaluate_coverage(Fixed(), loader, "cpu", top_k=1)["n_gt"] == 3


def test_config_composes_and_instantiates(repo_root, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from proposals.multibox import MultiBoxNet
    from proposals.multibox.training import MultiBoxLossFn

    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg = compose("train_multibox", overrides=[f"work_dir={tmp_path}", "model.width=0.125",
                                                   "multibox.num_priors=10"])
    assert cfg.checkpoint == f"{tmp_path}/multibox/checkpoint.pt" and cfg.init == f"{tmp_path}/cls/checkpoint.pt"
    backbone_kwargs = instantiate(cfg.model, aux_logits=False).model_kwargs
    model = instantiate(cfg.multibox, backbone_kwargs=backbone_kwargs, _convert_="all")
    assert isinstance(model, MultiBoxNet) and model.num_priors == 10 and isinstance(instantiate(cfg.loss), MultiBoxLossFn)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    assert instantiate(cfg.scheduler)(optimizer).step_size == cfg.scheduler.step_size
