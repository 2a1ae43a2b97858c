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


@pytest.mark.slow
def test_worker_pool_matches_in_process(tmp_path):
    paths, ids = _images(tmp_path, 4)
    make = functools.partial(SelectiveSearch, resize_width=60, min_box_size=5)
    one = propose_dataset(paths, ids, make(), tmp_path / "1" / "s.npz", make, workers=1, progress=False)
    two = propose_dataset(paths, ids, make(), tmp_path / "2" / "s.npz", make, workers=2, progress=False)
    assert one.merged and two.merged
    a, b = ProposalStore.load(one.path), ProposalStore.load(two.path)
    assert a.boxes_per_image().sum() > 0 and np.array_equal(a.boxes, b.boxes)


# ------------------------------------------------------------------ the file format (version 3: memory-mapped)


def _legacy_store(path, image_ids, boxes, meta=None):
    """A store as the format-1 writer wrote it: the same members, deflate-compressed, no format_version."""
    np.savez_compressed(path, image_ids=np.asarray(image_ids, dtype=str), boxes=np.concatenate(boxes).astype(np.uint16),
                        offsets=np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64),
                        meta=np.asarray(json.dumps(meta or {}, sort_keys=True)))


def _random_store(n, seed=0, max_boxes=30):
    rng = np.random.default_rng(seed)
    ids = [f"n{rng.integers(10**7, 10**8)}/img_{i:05d}" for i in range(n)]
    rng.shuffle(ids)
    boxes = [rng.uniform(0, 500, (int(rng.integers(0, max_boxes)), 4)).astype(np.float32) for _ in ids]
    scores = [rng.uniform(0, 1, len(b)).astype(np.float32) for b in boxes]
    return ids, boxes, scores


def test_loaded_store_is_memory_mapped_and_lookups_match_a_dict(tmp_path):
    ids, boxes, scores = _random_store(300)
    ProposalStore.from_lists(ids, boxes, scores, {"method": "m"}).save(tmp_path / "s.npz")
    store = ProposalStore.load(tmp_path / "s.npz")
    assert isinstance(store.boxes, np.memmap) and isinstance(store.scores, np.memmap)
    reference = dict(zip(ids, boxes))  # the obvious lookup, against the binary search over id_order
    for image_id in ids:
        assert np.abs(store.get(image_id) - reference[image_id]).max(initial=0) <= 0.5
        assert len(store.get_scores(image_id)) == len(reference[image_id])
    assert store.image_ids == ids and len(store) == 300 and list(store.boxes_per_image()) == [len(b) for b in boxes]
    for absent in ("", ids[0] + "x", ids[0][:-1], "z" * 200, "\x00", ids[0].upper()):
        assert absent not in store
        with pytest.raises(KeyError):
            store.get(absent)
    # numpy alone still reads the file
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["image_ids"].tolist() == ids and z["boxes"].dtype == np.uint16


def test_resave_and_merge_give_the_bytes_of_a_fresh_save(tmp_path):
    paths, ids = _images(tmp_path, 10, broken={3})
    out = tmp_path / "m" / "s.npz"
    propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=3, progress=False)
    loaded = ProposalStore.load(out)
    loaded.save(tmp_path / "again.npz")  # from the memory-mapped arrays
    fresh = ProposalStore.from_lists(ids, [loaded.get(i) for i in ids], [loaded.get_scores(i) for i in ids], loaded.meta)
    fresh.save(tmp_path / "fresh.npz")
    assert out.read_bytes() == (tmp_path / "again.npz").read_bytes() == (tmp_path / "fresh.npz").read_bytes()


def test_three_ranks_with_uneven_chunks_merge_to_the_same_bytes(tmp_path):
    paths, ids = _images(tmp_path, 13)
    one = propose_dataset(paths, ids, BoxesFromSize(), tmp_path / "1" / "s.npz", chunk_size=2, progress=False)
    out = tmp_path / "3" / "s.npz"
    for rank in (1, 2, 0):  # rank 0 last: it merges
        summary = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, rank=rank, world_size=3, progress=False)
    assert summary.merged and out.read_bytes() == one.path.read_bytes()


def test_stores_of_earlier_formats_are_refused_saying_what_to_do(tmp_path):
    ids, boxes, _ = _random_store(5, seed=3)
    _legacy_store(tmp_path / "v1.npz", ids, boxes)
    arrays = _store_arrays(ids[:3], [np.ones((2, 4))] * 3)
    arrays["format_version"] = np.asarray(2, np.int64)
    for name in ("digests", "index_crc32"):
        del arrays[name]
    _stored_zip(tmp_path / "v2.npz", arrays)
    for name, fmt in (("v1.npz", "format 1"), ("v2.npz", "format 2")):
        with pytest.raises(ValueError, match=f"{name}: a proposal store of {fmt}.*run tools/propose.py again"):
            ProposalStore.load(tmp_path / name)


def test_propose_dataset_never_overwrites_a_store_of_an_earlier_format(tmp_path):
    """A store of the same images and settings in format 1 at the output path is refused with what to do,
    and kept; once deleted, the run writes it in the current format."""
    from detect.io import OutputConflict

    paths, ids = _images(tmp_path, 5)
    out = tmp_path / "s.npz"
    propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, progress=False)
    reference = out.read_bytes()
    store = ProposalStore.load(out)
    _legacy_store(tmp_path / "old.npz", ids, [store.get(i) for i in ids], store.meta)
    del store  # (its file is replaced below; writers always replace, never truncate a mapped file)
    (tmp_path / "old.npz").replace(out)
    old = out.read_bytes()
    with pytest.raises(OutputConflict, match="s.npz: exists and is not a proposal store of the current format "
                                             r"\(a proposal store of format 1.*delete it and run tools/propose.py again"):
        propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, progress=False)
    assert out.read_bytes() == old
    arrays = _store_arrays(ids, [np.ones((2, 4))] * 5)  # format 2: no checksums
    arrays["format_version"] = np.asarray(2, np.int64)
    _stored_zip(out, {k: v for k, v in arrays.items() if k not in ("digests", "index_crc32")})
    with pytest.raises(OutputConflict, match="of format 2.*delete it and run tools/propose.py again"):
        propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, progress=False)
    out.unlink()
    again = propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, progress=False)
    assert again.merged and again.chunks_computed == 3 and out.read_bytes() == reference


def test_a_partial_result_of_an_earlier_version_is_refused_saying_what_to_do(tmp_path):
    """A chunk without ``box_range`` (written before chunks recorded it) stops the merge, naming the file
    and the folder to delete."""
    import zipfile

    paths, ids = _images(tmp_path, 4)
    out = tmp_path / "s.npz"
    propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, stop_after_chunks=1, progress=False)
    (chunk,) = tmp_path.glob(".s.parts-*/w1_r0_c000000.npz")
    with zipfile.ZipFile(chunk) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "box_range.npy"}
    with zipfile.ZipFile(chunk, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match=f"{chunk.name}: a partial result of an earlier version.*delete "
                                         f".*{chunk.parent.name} and run again"):
        propose_dataset(paths, ids, BoxesFromSize(), out, chunk_size=2, progress=False)
    assert not out.exists()


def _store_arrays(ids, boxes):
    """The members of a format-3 store (digests of zero, index checksum made by :func:`_with_crc`)."""
    counts = [len(b) for b in boxes]
    return {"format_version": np.asarray(3, np.int64), "image_ids": np.asarray(ids, dtype=str),
            "id_order": np.argsort(np.asarray(ids, dtype=str)).astype(np.int64),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "boxes": np.concatenate(boxes).astype(np.uint16), "meta": np.asarray("{}"),
            "digests": np.zeros((len(ids), 2), np.uint32), "index_crc32": np.asarray(0, np.uint32)}


def _with_crc(arrays):
    """``arrays`` with the index checksum of what they hold: the structural checks must catch their damage."""
    from proposals.store_format import _INDEX, _index_crc

    if all(k in arrays and arrays[k].dtype != object for k in _INDEX):
        arrays["index_crc32"] = np.asarray(_index_crc([arrays[k] for k in _INDEX]), np.uint32)
    return arrays


def _stored_zip(path, arrays):
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=True)
            zf.writestr(f"{name}.npy", buf.getvalue())


@pytest.mark.parametrize("damage", ["object_boxes", "offsets_backwards", "order_out_of_range", "future_version",
                                    "truncated", "ids_not_strings", "missing_boxes"])
def test_malformed_store_files_are_refused_naming_the_file(tmp_path, damage):
    ids, boxes = ["a", "b", "c"], [np.ones((2, 4)), np.ones((0, 4)), np.ones((3, 4))]
    arrays = _store_arrays(ids, boxes)
    path = tmp_path / "bad.npz"
    if damage == "object_boxes":
        arrays["boxes"] = np.array([object()] * 5, dtype=object)
    elif damage == "offsets_backwards":
        arrays["offsets"] = np.array([0, 3, 2, 5], np.int64)
    elif damage == "order_out_of_range":
        arrays["id_order"] = np.array([0, 1, 7], np.int64)
    elif damage == "future_version":
        arrays["format_version"] = np.asarray(99, np.int64)
    elif damage == "ids_not_strings":
        arrays["image_ids"] = np.arange(3)
    elif damage == "missing_boxes":
        del arrays["boxes"]
    _stored_zip(path, _with_crc(arrays))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="bad.npz"):
        ProposalStore.load(path)


def test_a_store_pickles_as_its_path(tmp_path):
    import pickle

    ids, boxes, scores = _random_store(200, seed=5, max_boxes=200)
    ProposalStore.from_lists(ids, boxes, scores).save(tmp_path / "s.npz")
    store = ProposalStore.load(tmp_path / "s.npz")
    blob = pickle.dumps(store.get)  # what a DataLoader worker receives (RegionDataset holds store.get)
    assert len(blob) < 2000 < store.boxes.nbytes
    get = pickle.loads(blob)
    assert np.array_equal(get(ids[7]), store.get(ids[7]))


_RSS_SCRIPT = """
import sys, numpy as np
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
from proposals.store_format import ProposalStore
before = rss()
store = ProposalStore.load(sys.argv[1])
for image_id in sys.argv[2:]:
    store.verify() if image_id == 'ALL' else store.get(image_id)
print(rss() - before, 'torch' in sys.modules)
"""


def test_a_lookup_reads_one_image_not_the_split(tmp_path, repo_root):
    """Resident memory of opening a 40 MB store and reading 3 images stays a few MB (the whole split was
    read for a store of format 1); the format module does not import torch."""
    import os
    import subprocess
    import sys

    n, per_image = 4000, 1000
    rng = np.random.default_rng(0)
    ids = [f"im{i:06d}" for i in range(n)]
    boxes = [rng.integers(0, 500, (per_image, 4)).astype(np.float32) for _ in range(n)]
    scores = [np.full(per_image, 0.5, np.float32)] * n
    ProposalStore.from_lists(ids, boxes, scores).save(tmp_path / "v3.npz")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}

    def grown(*lookups):
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "v3.npz"), *lookups],
                             capture_output=True, text=True, env=env, check=True).stdout.split()
        return float(out[0]), out[1] == "True"

    (mapped, torch_imported), (whole, _) = grown(ids[5], ids[2500], ids[-1]), grown("ALL")
    assert not torch_imported
    assert mapped < 8 and whole > 30, (mapped, whole)  # of 40 MB of boxes and scores (whole: the measure works)


def test_box_dtype_follows_the_rounded_coordinates(tmp_path):
    from proposals.store_format import StoreWriter, box_dtype_for

    assert box_dtype_for(-0.001, 65535.4) == np.uint16  # a hair outside the image still rounds into range
    assert box_dtype_for(-0.6, 10) == np.float32 and box_dtype_for(0, 65535.6) == np.float32
    store = ProposalStore.from_lists(["a"], [np.array([[-0.001, 0.2, 10.4, 65535.4]], np.float32)])
    store.save(tmp_path / "s.npz")
    back = ProposalStore.load(tmp_path / "s.npz")
    assert back.boxes.dtype == np.uint16 and back.get("a").tolist() == [[0, 0, 10, 65535]]
    with pytest.raises(ValueError, match="outside 0..65535"), StoreWriter(tmp_path / "w.npz", ["a"], [1]) as w:
        w.add(np.array([[0, 0, -3, 5]], np.float32))
    assert not (tmp_path / "w.npz").exists() and not list(tmp_path.glob(".w.npz.*"))  # nothing half-written


def test_auto_workers_share_the_cores_among_local_ranks(monkeypatch):
    import os

    from proposals.store import resolve_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers("auto") == 16 and resolve_workers(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun --nproc_per_node=8: 2 proposer processes per rank
    assert resolve_workers("auto") == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert resolve_workers("auto") == 1


def test_writer_leaves_nothing_behind_when_images_are_missing_or_meta_is_not_json(tmp_path):
    from proposals.store_format import StoreWriter

    (tmp_path / "s.npz").write_bytes(b"previous")
    with pytest.raises(ValueError, match="1 of 2 images added"), StoreWriter(tmp_path / "s.npz", ["a", "b"], [1, 1]) as w:
        w.add(np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError):
        StoreWriter(tmp_path / "s.npz", ["a"], [1], meta={"x": object()})
    with pytest.raises(ValueError, match="repeated image ids"):
        StoreWriter(tmp_path / "s.npz", ["a", "a"], [1, 1])
    assert (tmp_path / "s.npz").read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_images_are_proposed_in_their_annotations_frame(tmp_path):
    """A photo whose EXIF turns it by 90 degrees, annotated on its stored 60x48 pixels: given the
    annotation's size the proposer sees those pixels (boxes in the annotation's frame), without it the
    upright 48x60 photo; the sizes enter the fingerprint, so changing them recomputes the store."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(np.full((48, 60, 3), 90, np.uint8)).save(path, exif=exif)
    stored = propose_dataset([path], ["t"], BoxesFromSize(), tmp_path / "a.npz", image_sizes=[(60, 48)],
                             progress=False)
    upright = propose_dataset([path], ["t"], BoxesFromSize(), tmp_path / "b.npz", progress=False)
    assert ProposalStore.load(stored.path).get("t")[0].tolist() == [0, 0, 60, 48]
    assert ProposalStore.load(upright.path).get("t")[0].tolist() == [0, 0, 48, 60]
    again = propose_dataset([path], ["t"], BoxesFromSize(), tmp_path / "a.npz", image_sizes=[(48, 60)],
                            progress=False)
    assert again.chunks_computed == 1 and ProposalStore.load(again.path).get("t")[0].tolist() == [0, 0, 48, 60]


def test_every_single_byte_damage_is_refused_naming_the_file_or_harmless(tmp_path):
    """Each byte of a small store flipped in turn: opening and reading every image either works or raises
    ValueError naming the file (a flipped zip version or npy header byte escaped as NotImplementedError,
    tokenize.TokenError or SystemError)."""
    good = tmp_path / "good.npz"
    ids = ["a", "b", "c"]
    ProposalStore.from_lists(ids, [np.ones((2, 4)), np.zeros((0, 4)), np.full((3, 4), 7.0)],
                             [np.ones(2), np.zeros(0), np.ones(3)]).save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    refused = 0
    for i in range(len(data)):
        bad.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        try:
            store = ProposalStore.load(bad)
            for image_id in ids:
                store.get(image_id), store.get_scores(image_id)
        except ValueError as e:
            assert "bad.npz" in str(e), (i, e)
            refused += 1
    assert refused > len(data) // 2  # the checks do see the damage, not merely survive it
