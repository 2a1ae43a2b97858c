import numpy as np
import pytest
import torch

from detect import boxes as B


def _iou_loop(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def _random_boxes(rng, n):
    xy = rng.uniform(0, 100, size=(n, 2))
    wh = rng.uniform(0, 50, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_iou_known_values():
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 5, 5]], dtype=np.float32)
    np.testing.assert_allclose(B.box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.25]], rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_iou_numpy_and_torch_match_plain_loop(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 9)
    ref = _iou_loop(a, b)
    np.testing.assert_allclose(B.box_iou(a, b), ref, atol=1e-12)
    np.testing.assert_allclose(B.box_iou(torch.tensor(a), torch.tensor(b)).numpy(), ref, atol=1e-6)


def test_clip_and_remove_small():
    boxes = np.array([[-5, -5, 50, 50], [10, 10, 15, 40], [70, 90, 130, 140]], dtype=np.float32)
    clipped = B.clip_boxes(boxes, width=100, height=120)
    np.testing.assert_array_equal(clipped, [[0, 0, 50, 50], [10, 10, 15, 40], [70, 90, 100, 120]])
    assert B.remove_small_boxes(clipped, 20).tolist() == [0, 2]
    t = B.clip_boxes(torch.tensor(boxes), width=100, height=120)
    np.testing.assert_array_equal(t.numpy(), clipped)
    assert B.remove_small_boxes(t, 20).tolist() == [0, 2]


def test_unique_boxes_keeps_first_occurrence_in_order():
    boxes = np.array([[3, 3, 9, 9], [0, 0, 1, 1], [3.2, 3, 9, 9], [0, 0, 1, 1]], dtype=np.float32)
    assert B.unique_boxes(boxes).tolist() == [0, 1]
    assert B.unique_boxes(np.zeros((0, 4))).tolist() == []


def test_xywh_to_xyxy():
    xywh = np.array([[1, 2, 3, 4]], dtype=np.float32)
    xyxy = B.xywh_to_xyxy(xywh)
    np.testing.assert_array_equal(xyxy, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(B.xywh_to_xyxy(torch.tensor(xywh)).numpy(), xyxy)


def test_flip_boxes_mirrors_and_is_an_involution():
    boxes = np.array([[10, 5, 30, 25], [0, 0, 100, 50]], dtype=np.float32)
    flipped = B.flip_boxes(boxes, 100)
    np.testing.assert_array_equal(flipped, [[70, 5, 90, 25], [0, 0, 100, 50]])
    np.testing.assert_array_equal(B.flip_boxes(flipped, 100), boxes)
    np.testing.assert_array_equal(boxes[0], [10, 5, 30, 25])  # input untouched
    np.testing.assert_array_equal(B.flip_boxes(torch.tensor(boxes), 100).numpy(), flipped)


def test_order_corners_numpy_and_torch_agree():
    import numpy as np
    import torch

    from detect.boxes import order_corners

    boxes = np.array([[10, 20, 5, 8], [1, 2, 3, 4], [7, 1, 7, 0]], np.float32)
    expected = np.array([[5, 8, 10, 20], [1, 2, 3, 4], [7, 0, 7, 1]], np.float32)
    np.testing.assert_array_equal(order_corners(boxes), expected)
    np.testing.assert_array_equal(order_corners(torch.from_numpy(boxes)[None]).numpy()[0], expected)


def test_top_k_boxes_most_confident_first_ties_in_order():
    import torch

    from proposals.multibox.model import top_k_boxes

    boxes = torch.arange(5 * 4, dtype=torch.float32).view(1, 5, 4)
    logits = torch.tensor([[0.5, 2.0, 0.5, -1.0, 3.0]])
    top, top_logits = top_k_boxes(boxes, logits, 3)
    assert top_logits.tolist() == [[3.0, 2.0, 0.5]]
    assert top[0, :, 0].tolist() == [16.0, 4.0, 0.0]  # boxes 4, 1, then the first of the tied 0 and 2
