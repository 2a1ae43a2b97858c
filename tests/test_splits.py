"""The held-out monitoring split (seeded, stable, disjoint, covering) and the output names of splits."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from detect.classes import ClassList
from detect.data.records import DetectionDataset, DetectionRecord
from detect.data.splits import (holdout_key, holdout_part, output_stem, proposal_store_path, split_name,
                                detections_path)


def _dataset(ids, blacklist=()):
    records = [DetectionRecord(i, Path(f"/x/{i}.jpg"), 10, 10, np.zeros((1, 4)), [0], [False], k)
               for k, i in enumerate(ids, 1)]
    return DetectionDataset(records, ClassList.from_names(["a"]), name="toy", blacklist=set(blacklist))


def _ids(part):
    return [r.image_id for r in part.records]


def test_parts_are_disjoint_cover_everything_and_keep_indices():
    ids = [f"img{k:04d}" for k in range(1000)]
    data = _dataset(ids, blacklist={(3, 0), (7, 0)})
    train, monitor = holdout_part(data, "train", 0.1, 5), holdout_part(data, "monitor", 0.1, 5)
    assert set(_ids(train)).isdisjoint(_ids(monitor))
    assert sorted(_ids(train) + _ids(monitor)) == ids
    assert 60 <= len(monitor) <= 140  # binomial(1000, 0.1): 100 +- 4 sigma
    assert all(data.records[r.index - 1] is r for r in train.records + monitor.records)  # source indices kept
    assert train.blacklist | monitor.blacklist == data.blacklist
    assert train.whole is data and monitor.part == "monitor"
    # the draw is the documented rule (splits.py's docstring), transcribed here independently: the first
    # 8 bytes of sha256("<seed>\0<image id>") as a big-endian fraction of 2**64, held out when < fraction
    def rule(seed, image_id):
        return int.from_bytes(hashlib.sha256(f"{seed}\x00{image_id}".encode()).digest()[:8], "big") / 2 ** 64

    assert _ids(monitor) == [i for i in ids if rule(5, i) < 0.1]
    assert [holdout_key(5, i) for i in ids[:20]] == [rule(5, i) for i in ids[:20]]


def test_seeded_and_stable_when_images_are_added_removed_or_reordered():
    ids = [f"img{k:04d}" for k in range(400)]
    base = set(_ids(holdout_part(_dataset(ids), "monitor", 0.2, 0)))
    assert base == set(_ids(holdout_part(_dataset(ids), "monitor", 0.2, 0)))  # same seed, same split
    assert base != set(_ids(holdout_part(_dataset(ids), "monitor", 0.2, 1)))  # another seed, another split
    shuffled = list(reversed(ids[:300])) + [f"new{k}" for k in range(50)]
    moved = set(_ids(holdout_part(_dataset(shuffled), "monitor", 0.2, 0)))
    assert moved & set(ids) == base & set(ids[:300])  # no image changed sides


def test_tiny_sets_never_leave_a_part_empty_and_bad_settings_are_refused():
    for n in (2, 3, 5):
        data = _dataset([f"i{k}" for k in range(n)])
        for fraction in (0.01, 0.99):
            train, monitor = holdout_part(data, "train", fraction, 0), holdout_part(data, "monitor", fraction, 0)
            assert len(train) >= 1 and len(monitor) >= 1 and len(train) + len(monitor) == n
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="data.holdout.fraction"):
            holdout_part(_dataset(["a", "b"]), "train", bad, 0)
    with pytest.raises(ValueError, match="at least 2"):
        holdout_part(_dataset(["a"]), "train", 0.1, 0)
    with pytest.raises(ValueError, match="part"):
        holdout_part(_dataset(["a", "b"]), "test", 0.1, 0)


def test_output_names_are_the_datasets_own_split_names():
    reader = {"_target_": "detect.data.voc.read_voc"}
    data = OmegaConf.create({"name": "voc", "split_names": {"train": "trainval", "monitor": "trainval", "val": "test"},
                             "train": reader, "monitor": reader, "val": reader})
    assert split_name(data, "val") == "test" and output_stem(data, "val") == "voc_test"
    assert output_stem(data, "train") == output_stem(data, "monitor") == "voc_trainval"
    assert proposal_store_path("p", data, "train", "ss2x") == Path("p/voc_trainval_ss2x.npz")
    assert detections_path("d", data, "val") == Path("d/voc_test.txt")
    plain = OmegaConf.create({"name": "mine", "train": reader, "val": reader})  # no split_names: the block name
    assert output_stem(plain, "val") == "mine_val"
    with pytest.raises(ValueError, match="split=test.*blocks"):
        split_name(data, "test")
    with pytest.raises(ValueError, match="split=name"):
        split_name(data, "name")
    unset = OmegaConf.create({"name": "voc", "root": "???", "val": reader})  # root not given yet
    with pytest.raises(ValueError, match=r"split=test.*\['val'\]"):
        split_name(unset, "test")
