"""Selective search: box contract, determinism, superpixel scale, malformed inputs, our ranking against
OpenCV's box set; union de-duplication."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detect.data.images import read_image
from proposals.base import Proposals, as_rgb_uint8
from proposals.merge import UnionProposer, union_boxes
from proposals.selective_search import SelectiveSearch, _rank, segmentation_side


def _scene(h=90, w=120, seed=0):
    """Blocks of flat colour with noise: several obvious regions."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    img[10:50, 10:60] = (220, 30, 30)
    img[40:80, 70:110] = (30, 30, 220)
    img[55:85, 15:45] = (30, 200, 30)
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def _check_contract(p: Proposals, h, w, min_size):
    assert p.boxes.dtype == np.float32 and p.boxes.ndim == 2 and p.boxes.shape[1] == 4
    b = p.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] - b[:, 0] >= min_size).all() and (b[:, 3] - b[:, 1] >= min_size).all()
    assert len(np.unique(np.round(b), axis=0)) == len(b)


@pytest.mark.parametrize("mode", ["rcnn_fast", "opencv_fast"])
def test_box_contract_and_determinism(mode):
    img = _scene()
    ss = SelectiveSearch(mode=mode, resize_width=100, min_box_size=10)
    a, b = ss(img), ss(img)
    assert len(a) > 3
    _check_contract(a, 90, 120, 10)
    assert np.array_equal(a.boxes, b.boxes)  # same order too: the ranking's generator is seeded per call
    # the red block (10..60, 10..50) is found by some box
    assert (np.abs(a.boxes - [10, 10, 60, 50]).max(axis=1) <= 4).any()


def test_boxes_map_back_to_original_size():
    img = _scene()
    big = np.kron(img, np.ones((4, 4, 1), np.uint8))  # 360 x 480, resized to width 120 inside
    p = SelectiveSearch(resize_width=120, min_box_size=10)(big)
    _check_contract(p, 360, 480, 10)
    assert (np.abs(p.boxes - [40, 40, 240, 200]).max(axis=1) <= 16).any()


def test_scale_two_gives_fewer_boxes_on_real_images(shared_data):
    folder = shared_data / "coco128" / "images" / "train2017"
    files = sorted(folder.glob("*.jpg"))[:3]
    one = SelectiveSearch(superpixel_scale=1.0, resize_width=200)
    two = SelectiveSearch(superpixel_scale=2.0, resize_width=200)
    n1 = n2 = 0
    for f in files:
        img = read_image(f)
        p1, p2 = one(img), two(img)
        _check_contract(p2, *img.shape[:2], 20)
        n1, n2 = n1 + len(p1), n2 + len(p2)
    assert 0 < n2 < 0.8 * n1


def test_names_and_bad_settings():
    assert SelectiveSearch().name == "ss2x" and SelectiveSearch(superpixel_scale=1.0).name == "ss1x"
    assert SelectiveSearch(mode="opencv_fast").name == "ss_opencv_fast"
    for bad in (dict(mode="slow"), dict(color_spaces=("xyz",)), dict(strategies=("colour",)), dict(superpixel_scale=0)):
        with pytest.raises(ValueError):
            SelectiveSearch(**bad)


@pytest.mark.parametrize("make, same_as_rgb", [
    (lambda im: im.mean(axis=2).astype(np.uint8), False),                               # 2-D grey
    (lambda im: np.concatenate([im, np.full(im.shape[:2] + (1,), 255, np.uint8)], axis=2), True),  # RGBA
    (lambda im: im.astype(np.uint16) * 257, True),                                      # 16-bit
    (lambda im: im.astype(np.float32) / 255, True),                                     # float 0..1
    (lambda im: im[:, :, :1], False),                                                   # one channel
])
def test_array_forms_give_boxes(make, same_as_rgb):
    ss = SelectiveSearch(resize_width=100, min_box_size=10)
    p = ss(make(_scene()))
    _check_contract(p, 90, 120, 10)
    assert len(p) > 0
    if same_as_rgb:  # converted back to exactly the same uint8 RGB image
        assert np.array_equal(p.boxes, ss(_scene()).boxes)


def test_palette_file_and_tiny_and_extreme(tmp_path):
    Image.fromarray(_scene()).convert("P").save(tmp_path / "p.png")
    ss = SelectiveSearch(resize_width=100, min_box_size=10)
    _check_contract(ss(read_image(tmp_path / "p.png")), 90, 120, 10)
    assert len(SelectiveSearch()(np.zeros((10, 10, 3), np.uint8))) == 0
    wide = np.tile(_scene(30, 100), (1, 20, 1))  # 30 x 2000
    _check_contract(SelectiveSearch()(wide), 30, 2000, 20)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))  # 2000 x 30: resize limited by max_side
    _check_contract(SelectiveSearch()(tall), 2000, 30, 20)
    # a flat image is one region: its box is the whole image, despite rounding in the resize (25 -> 2.5 px)
    for shape in [(25, 5000, 3), (5000, 21, 3), (333, 1000, 3)]:
        p = SelectiveSearch()(np.zeros(shape, np.uint8))
        assert p.boxes.tolist() == [[0, 0, shape[1], shape[0]]]


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((5, 5, 2), np.uint8),
                                 np.zeros((2, 3, 4, 5), np.uint8), np.array([["a"]])])
def test_malformed_arrays_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="image array"):
        SelectiveSearch()(bad)


def test_as_rgb_uint8_conversions():
    assert as_rgb_uint8(np.full((2, 2), 65535, np.uint16)).max() == 255
    assert as_rgb_uint8(np.ones((2, 2, 4), np.float64)).shape == (2, 2, 3)
    assert as_rgb_uint8(np.ones((2, 2), bool)).max() == 255


class Fixed:
    def __init__(self, name, boxes, scores=None):
        self.name, self.boxes, self.scores = name, np.asarray(boxes, np.float32), scores

    def __call__(self, image):
        return Proposals(self.boxes, self.scores)


def test_union_dedups_and_caps():
    ss = Fixed("ss2x", [[0, 0, 10, 10], [5, 5, 30, 30], [0.2, 0.1, 10.3, 9.8]])  # third = first after rounding
    mb = Fixed("multibox", [[100, 100, 150, 150], [0, 0, 10, 10], [5, 5, 31, 30], [1, 1, 2, 2]],
               np.array([0.5, 0.9, 0.8, 0.1], np.float32))
    u = UnionProposer([ss, mb], [None, 3])
    assert u.name == "ss2x+multibox3"
    out = u(None)
    # mb capped by score: [0,0,10,10] (dup of ss), [5,5,31,30], [100,100,150,150]
    assert np.array_equal(out.boxes, np.array([[0, 0, 10, 10], [5, 5, 30, 30], [5, 5, 31, 30],
                                               [100, 100, 150, 150]], np.float32))
    assert out.scores is None
    near = UnionProposer([ss, mb], [None, 3], dedup_iou=0.9)(None)
    assert len(near) == 3  # [5,5,31,30] has IoU 0.96 with [5,5,30,30]


def test_union_boxes_against_plain_loop():
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 40, (60, 2))
    boxes = np.concatenate([xy, xy + rng.integers(5, 30, (60, 2))], axis=1).astype(np.float32)
    got = union_boxes([boxes[:30], boxes[30:]], dedup_iou=0.5)
    kept = []
    for i, b in enumerate(boxes):
        ok = True
        for j in kept:
            k = boxes[j]
            iw = max(0, min(b[2], k[2]) - max(b[0], k[0]))
            ih = max(0, min(b[3], k[3]) - max(b[1], k[1]))
            inter = iw * ih
            union = (b[2] - b[0]) * (b[3] - b[1]) + (k[2] - k[0]) * (k[3] - k[1]) - inter
            if np.array_equal(np.round(b), np.round(k)) or inter / union > 0.5:
                ok = False
        if ok:
            kept.append(i)
    assert got.tolist() == kept


# ---- issue 21: our ranking gives OpenCV's box set in a reproducible order

def _rect_sets(ss: SelectiveSearch, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small, _ = ss._resize(image)
    return _rank(*ss._hierarchies(small), ss.seed), ss._opencv_rects(small)


@pytest.mark.parametrize("mode", ["rcnn_fast", "opencv_fast", "opencv_quality"])
def test_seeded_ranking_gives_opencv_box_set(mode):
    ss = SelectiveSearch(mode=mode, resize_width=100, min_box_size=10)
    ours, theirs = _rect_sets(ss, _scene())
    assert len(ours) > 10 and len(np.unique(ours, axis=0)) == len(ours)
    assert {tuple(b) for b in ours.tolist()} == {tuple(b) for b in theirs.tolist()}


def test_seeded_ranking_gives_opencv_box_set_on_real_images(shared_data):
    files = sorted((shared_data / "coco128" / "images" / "train2017").glob("*.jpg"))[:2]
    for f in files:
        ours, theirs = _rect_sets(SelectiveSearch(resize_width=200), read_image(f))
        assert len(ours) > 100
        assert {tuple(b) for b in ours.tolist()} == {tuple(b) for b in theirs.tolist()}, f.name


def test_seed_changes_the_order_not_the_set():
    img = _scene()
    a, b, c = (SelectiveSearch(resize_width=100, min_box_size=10, seed=s)(img).boxes for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert {tuple(x) for x in a.tolist()} == {tuple(x) for x in c.tolist()}


def test_rank_rule_level_times_uniform_and_best_rank_of_a_repeat():
    rects = np.array([[0, 0, 5, 5], [1, 1, 6, 6], [0, 0, 5, 5], [2, 2, 9, 9]], np.int64)
    levels = np.array([3, 2, 1, 4], np.int64)
    u = np.random.default_rng(7).random(4)
    value = levels * u
    best = {0: min(value[0], value[2]), 1: value[1], 3: value[3]}  # rect 2 repeats rect 0
    want = rects[sorted(best, key=best.get)]
    assert np.array_equal(_rank(rects, levels, 7), want)
    # an initial region (level 1) precedes the top of a deep hierarchy in most seeds
    firsts = [_rank(np.array([[0, 0, 9, 9], [0, 0, 1, 1]]), np.array([50, 1]), s)[0].tolist() for s in range(20)]
    assert firsts.count([0, 0, 1, 1]) >= 15


def test_ranking_setting_is_in_the_spec_and_changes_store_fingerprints():
    """Stores made before the seeded ranking (spec without ``ranking``) are computed again, not reused."""
    from detect.io import digest
    from proposals.spec import build_proposer, proposer_spec, spec_name

    spec = proposer_spec(SelectiveSearch())
    assert spec["params"]["ranking"] == "seeded"
    before = {"kind": spec["kind"], "params": {k: v for k, v in spec["params"].items() if k != "ranking"}}
    assert build_proposer(before).ranking == "seeded"  # an old detector file's proposer ranks the new way
    assert digest(before) != digest(spec)  # so propose.py's store fingerprint differs
    assert digest(proposer_spec(SelectiveSearch(ranking="opencv"))) != digest(spec)
    assert spec_name(before) == spec_name(spec) == "ss2x"  # the store file name stays
    with pytest.raises(ValueError, match="ranking"):
        SelectiveSearch(ranking="random")


def test_segmentation_side_follows_the_small_boxes():
    """The segmented side keeps 32 px for 90 % of the boxes, within [base, limit], in steps of 50."""
    # 4000-pixel photos: boxes of 400 px need 320, of 100 px need 1280 (over the limit), of 10 px their own size
    assert segmentation_side([400] * 10, [4000] * 10, 500, 1500) == 500            # large boxes: the base stays
    assert segmentation_side([100] * 10, [4000] * 10, 500, 1000) == 1000           # small ones: up to the limit
    assert segmentation_side([100] * 10, [4000] * 10, 500, 2000) == 1300           # 1280 rounded up to 50
    assert segmentation_side([200] * 10, [4000] * 10, 500, 2000) == 650            # 640 rounded up
    assert segmentation_side([10] * 10, [300] * 10, 500, 2000) == 500              # tiny boxes of small images
    assert segmentation_side([400] * 8 + [100] * 2, [4000] * 10, 500, 2000, share=0.9) > 500  # the 10 % count
    assert segmentation_side([400] * 95 + [100] * 5, [4000] * 100, 500, 2000, share=0.9) == 500
    assert segmentation_side([], [], 500, 1000) == 500
