"""Proposal store: round trip, uint16 precision, reproducible bytes; the resumable, sharded dataset loop."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from PIL import Image

from proposals.base import Proposals
from proposals.selective_search import SelectiveSearch
from proposals.store import ProposalStore, propose_dataset, sidecar_path


class BoxesFromSize:
    """A deterministic stand-in proposer: boxes derived from the image content, with scores."""

    name = "fake"

    def __call__(self, image):
        h, w = image.shape[:2]
        v = float(image.mean())
        boxes = np.array([[0, 0, w, h], [1.25, 2.5, w / 2, h / 2 + v / 100]], np.float32)
        return Proposals(boxes, np.array([0.9, 0.1], np.float32))


def _images(tmp_path, n, broken=()):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / "img" / f"{i:03d}.png"
        p.parent.mkdir(exist_ok=True)
        if i in broken:
            p.write_bytes(b"not an image")
        else:
            small = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
            Image.fromarray(np.kron(small, np.ones((12, 12, 1), np.uint8))).save(p)
        paths.append(p)
    return paths, [p.stem for p in paths]


def test_round_trip_uint16_precision_and_lookup(tmp_path):
    rng = np.random.default_rng(1)
    boxes = [rng.uniform(0, 4000, (n, 4)).astype(np.float32) for n in (3, 0, 7)]
    scores = [rng.uniform(0, 1, len(b)).astype(np.float32) for b in boxes]
    store = ProposalStore.from_lists(["a", "b", "c"], boxes, scores, {"method": "x"})
    store.save(tmp_path / "s.npz")
    back = ProposalStore.load(tmp_path / "s.npz")
    assert back.image_ids == ["a", "b", "c"] and len(back) == 3 and "b" in back and "z" not in back
    assert back.boxes.dtype == np.uint16
    for i, k in enumerate("abc"):
        got = back.get(k)
        assert got.dtype == np.float32 and got.shape == boxes[i].shape
        assert np.abs(got - boxes[i]).max(initial=0) <= 0.5
        assert np.abs(back.get_scores(k) - scores[i]).max(initial=0) < 1e-3
    assert back.meta["method"] == "x"
    with pytest.raises(KeyError):
        back.get("z")


def test_large_coordinates_kept_as_float(tmp_path):
    store = ProposalStore.from_lists(["a"], [np.array([[0, 0, 70000.5, 10]], np.float32)])
    store.save(tmp_path / "s.npz")
    back = ProposalStore.load(tmp_path / "s.npz")
    assert back.boxes.dtype == np.float32 and back.get("a")[0, 2] == 70000.5 and back.scores is None


def test_same_content_same_bytes_and_bad_files(tmp_path):
    store = ProposalStore.from_lists(["a"], [np.ones((2, 4), np.float32)])
    store.save(tmp_path / "1.npz")
    store.save(tmp_path / "2.npz")
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npz"):
        ProposalStore.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ProposalStore.load(tmp_path / "missing.npz")


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    paths, ids = _images(tmp_path, 11, broken={4})
    full = propose_dataset(paths, ids, BoxesFromSize(), tmp_path / "a" / "s.npz", chunk_size=3, progress=False)
    assert full.merged and full.chunks_computed == 4 and len(full.skipped) == 1
    out = tmp_path / "b" / "s.npz"
    first = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=3, stop_after_chunks=2, progress=False)
    assert not first.merged and first.chunks_computed == 2 and not out.exists()
    second = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=3, progress=False)
    assert second.merged and second.chunks_computed == 2  # the finished chunks were not redone
    assert out.read_bytes() == (tmp_path / "a" / "s.npz").read_bytes()
    assert not any(p.name.startswith(".s.parts") for p in out.parent.iterdir())
    store = ProposalStore.load(out)
    assert store.meta["failed_images"] == ["004"] and len(store.get("004")) == 0
    assert len(store.get("000")) == 2 and store.scores is not None
    info = json.loads(sidecar_path(out).read_text())
    assert info["num_failed"] == 1 and "004" in info["failed"] and info["seconds_per_image"] >= 0
    again = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=3, progress=False)
    assert again.merged and again.chunks_computed == 0


def test_ranks_shard_and_rank0_merges(tmp_path):
    paths, ids = _images(tmp_path, 7)
    ref = tmp_path / "ref.npz"
    propose_dataset(paths, ids, BoxesFromSize(), ref, chunk_size=2, progress=False)
    out = tmp_path / "sharded" / "ref.npz"
    r0 = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, rank=0, world_size=2, progress=False)
    assert not r0.merged and not out.exists()  # rank 1 has not run yet
    r1 = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, rank=1, world_size=2, progress=False)
    assert not r1.merged and r1.chunks_computed == 2  # images 1, 3, 5 in chunks of 2
    r0 = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, rank=0, world_size=2, progress=False)
    assert r0.merged and r0.chunks_computed == 0
    a, b = ProposalStore.load(ref), ProposalStore.load(out)
    assert a.image_ids == b.image_ids and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.offsets, b.offsets)


def test_worker_pool_matches_in_process(tmp_path):
    paths, ids = _images(tmp_path, 4)
    make = functools.partial(SelectiveSearch, resize_width=60, min_box_size=5)
    one = propose_dataset(paths, ids, make(), tmp_path / "1" / "s.npz", make, workers=1, progress=False)
    two = propose_dataset(paths, ids, make(), tmp_path / "2" / "s.npz", make, workers=2, progress=False)
    assert one.merged and two.merged
    a, b = ProposalStore.load(one.path), ProposalStore.load(two.path)
    assert a.boxes_per_image().sum() > 0 and np.array_equal(a.boxes, b.boxes)
