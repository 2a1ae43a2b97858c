"""The fault suite: hostile files, foreign folders and ordinary mistakes, each with the behaviour asserted.

Every case here is listed, with its outcome, in docs/FAULTS.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from detect.data import synthetic
from detect.data.synthetic import ForeignDataError, make_classification_set, make_detection_world

TINY_WORLD = dict(num_classes=2, num_train=2, num_val=1, min_side=64, max_side=72, max_objects=1)
TINY_CLS = dict(num_classes=2, train_per_class=1, val_per_class=1, image_size=32)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- a foreign data root


@pytest.mark.parametrize("layout, hint", [
    ({"Data/DET/val/a.JPEG": b"img", "Annotations/DET/val/a.xml": b"<annotation/>",
      "ImageSets/DET/val.txt": b"a 1\n"}, "data=ilsvrc"),
    ({"ILSVRC2013_DET_val/a.JPEG": b"img"}, "data=ilsvrc2014"),
    ({"JPEGImages/a.jpg": b"img", "Annotations/a.xml": b"<annotation/>"}, "data=voc"),
    ({"notes.txt": b"mine"}, "not data this generator wrote"),
])
def test_generator_refuses_a_real_dataset_root(tmp_path, layout, hint):
    """`propose.py data.root=/datasets/ILSVRC` without `data=ilsvrc` once deleted the dataset."""
    for rel, data in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    before = _snapshot(tmp_path)
    with pytest.raises(ForeignDataError) as err:
        make_detection_world(tmp_path, **TINY_WORLD)
    assert str(tmp_path) in str(err.value) and hint in str(err.value) and "nothing was removed" in str(err.value)
    assert _snapshot(tmp_path) == before


def test_classification_generator_refuses_an_imagenet_root(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "train" / "n01440764" / "x.JPEG").write_bytes(b"img")
    (tmp_path / "val").mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(ForeignDataError, match="data_cls=imagenet"):
        make_classification_set(tmp_path, **TINY_CLS)
    assert _snapshot(tmp_path) == before


def test_generator_never_follows_a_manifest_outside_its_root(tmp_path):
    """A forged manifest listing '../victim' is not the generator's: refused, the victim survives."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    root = tmp_path / "world"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"params": {}, "files": ["../victim.txt"], "complete": False}))
    (root / "other.txt").write_text("x")
    with pytest.raises(ForeignDataError):
        make_detection_world(root, **TINY_WORLD)
    assert victim.read_text() == "keep me"


def test_generator_does_not_clear_through_a_linked_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "DET" / "train").mkdir(parents=True)
    precious = elsewhere / "DET" / "train" / "synthetic_train_000001.JPEG"
    precious.write_bytes(b"precious")
    root = tmp_path / "world"
    make_detection_world(root, **TINY_WORLD)
    import shutil
    shutil.rmtree(root / "Data")
    os.symlink(elsewhere, root / "Data")
    with pytest.raises(ForeignDataError):
        make_detection_world(root, **dict(TINY_WORLD, num_train=1))
    assert precious.read_bytes() == b"precious"


def test_generator_resumes_an_interrupted_generation_of_its_own(tmp_path, monkeypatch):
    """Killed half-way: the manifest (written first, marked incomplete) lists the files, so a re-run
    may clear and rebuild them, temporary files of atomic writes included."""
    calls = {"n": 0}
    real = synthetic.render_detection_image

    def dies_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_detection_image", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        make_detection_world(tmp_path, **TINY_WORLD)
    monkeypatch.undo()
    (tmp_path / ".classes.tsv.abc123xy.tmp").write_text("half")  # what a killed atomic write leaves
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    make_detection_world(tmp_path, **TINY_WORLD)
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"]
    assert not (tmp_path / ".classes.tsv.abc123xy.tmp").exists()
    fresh = tmp_path.parent / (tmp_path.name + "_fresh")
    make_detection_world(fresh, **TINY_WORLD)
    assert _snapshot(tmp_path) == _snapshot(fresh)


def test_generator_reads_manifests_of_earlier_versions(tmp_path):
    """Worlds generated before manifests listed their files (params only) are still recognised."""
    make_detection_world(tmp_path, **TINY_WORLD)
    params = json.loads((tmp_path / "manifest.json").read_text())["params"]
    (tmp_path / "manifest.json").write_text(json.dumps(params))
    make_detection_world(tmp_path, **dict(TINY_WORLD, num_train=1))  # owned files cleared and rebuilt
    assert not (tmp_path / "Data/DET/train/synthetic_train_000002.JPEG").exists()


# --------------------------------------------------------------------------- hostile detector files

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detect.classes import ClassList  # noqa: E402
from detect.io import atomic_torch_save, load_checkpoint  # noqa: E402
from detect.models.googlenet import GoogLeNet  # noqa: E402
from detect.pipeline import Detector, DetectorSettings, bundle_detector  # noqa: E402
from proposals.spec import build_proposer, embed_networks, spec_from_target_config, spec_name  # noqa: E402

CLASSES = ClassList.from_names(["cat", "dog"])


def _member():
    torch.manual_seed(0)
    net = GoogLeNet(num_classes=len(CLASSES) + 1, width=0.125, lrn=False, dropout=0.0).eval()
    return {"model_kwargs": net.model_kwargs, "model_state": net.state_dict()}


def _multibox_checkpoint(path: Path) -> Path:
    from proposals.multibox.model import MultiBoxNet

    torch.manual_seed(1)
    kwargs = {"backbone_kwargs": {"width": 0.125, "lrn": False, "dropout": 0.0}, "num_priors": 5, "input_size": 64}
    net = MultiBoxNet(**kwargs)
    net.set_priors(np.array([[0.1 * i, 0.1 * i, 0.5 + 0.1 * i, 0.5 + 0.1 * i] for i in range(5)], np.float32))
    atomic_torch_save({"model_kwargs": kwargs, "model_state": net.state_dict(), "optimizer": {"junk": 1}}, path)
    return path


UNION = {"_target_": "proposals.merge.UnionProposer", "caps": [None, 3], "sources": [
    {"_target_": "proposals.selective_search.SelectiveSearch", "mode": "opencv_fast", "resize_width": 80,
     "max_boxes": 20},
    {"_target_": "proposals.multibox.MultiBoxProposer", "checkpoint": "PLACEHOLDER", "top_k": 3, "device": "cpu",
     "backend": "torch"}]}


def _paper_like_detector(tmp_path: Path) -> Path:
    mb = _multibox_checkpoint(tmp_path / "train" / "multibox.pt")
    config = json.loads(json.dumps(UNION).replace("PLACEHOLDER", str(mb)))
    spec = embed_networks(spec_from_target_config(config))
    path = tmp_path / "train" / "detector.pt"
    bundle_detector([_member()], CLASSES, DetectorSettings(crop_size=64, context=4, score_threshold=0.0), path,
                    proposer=spec)
    return path


def test_detector_file_is_self_contained(tmp_path):
    """The MultiBox network travels inside the detector file: moved to another folder, with the
    MultiBox checkpoint gone, it gives the same detections."""
    path = _paper_like_detector(tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    before = Detector.from_checkpoint(path, backend="torch").detect(image)
    raw = load_checkpoint(path)
    assert "optimizer" not in raw["proposer"]["sources"][1]["network"]  # training state is not shipped
    assert "checkpoint" not in json.dumps(raw["proposer"]["sources"][1]["params"])
    moved = tmp_path / "elsewhere" / "det.pt"
    moved.parent.mkdir()
    shutil.move(path, moved)
    shutil.rmtree(tmp_path / "train")
    after = Detector.from_checkpoint(moved, backend="torch").detect(image)
    assert len(before) > 0
    np.testing.assert_array_equal(before.boxes, after.boxes)
    np.testing.assert_array_equal(before.scores, after.scores)


def _write_detector(path: Path, proposer, fmt="googlenet-detector-v2", **extra):
    obj = {"format": fmt, "members": [_member()], "classes": {"wnids": list(CLASSES.wnids), "names": list(CLASSES.names)},
           "settings": {"crop_size": 64, "context": 4}, "proposer": proposer, **extra}
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("proposer, message", [
    ({"kind": "pathlib.Path.write_text", "params": {}}, "not one of"),
    ({"kind": "selective_search", "params": {"_target_": "os.system"}}, "no parameter"),
    ({"kind": "union", "params": {}, "sources": [{"kind": "torch.load", "params": {}}]}, "not one of"),
    ({"kind": "multibox", "params": {"top_k": 5}, "checkpoint": "/etc/passwd"}, "not embedded"),
    ({"kind": "selective_search", "params": {"seed": {"_target_": "builtins.eval"}}}, "not a plain value"),
])
def test_hostile_detector_proposer_is_refused(tmp_path, proposer, message):
    path = _write_detector(tmp_path / "evil.pt", proposer)
    with pytest.raises(ValueError, match=message) as err:
        Detector.from_checkpoint(path, backend="torch")
    assert "evil.pt" in str(err.value)


def test_v1_detector_with_a_code_target_does_not_run_it(tmp_path):
    """Format v1 stored a Hydra _target_; a file naming pathlib.Path.write_text once wrote any file."""
    victim = tmp_path / "written.txt"
    config = {"crop_size": 64, "context": 4, "proposer": {"_target_": "pathlib.Path.write_text",
                                                          "self": str(victim), "data": "owned"}}
    path = _write_detector(tmp_path / "v1.pt", None, fmt="googlenet-detector-v1", config=config)
    with pytest.raises(ValueError, match="not one of the project's proposers"):
        Detector.from_checkpoint(path, backend="torch")
    assert not victim.exists()
    # a v1 file with one of our proposers and no file references still loads
    config["proposer"] = {"_target_": "proposals.selective_search.SelectiveSearch", "mode": "opencv_fast"}
    path = _write_detector(tmp_path / "v1ok.pt", None, fmt="googlenet-detector-v1", config=config)
    assert Detector.from_checkpoint(path, backend="torch").proposer.mode == "opencv_fast"
    config["proposer"] = dict(UNION)
    path = _write_detector(tmp_path / "v1mb.pt", None, fmt="googlenet-detector-v1", config=config)
    with pytest.raises(ValueError, match="by path"):
        Detector.from_checkpoint(path, backend="torch")


def test_pickled_code_in_a_detector_file_is_refused(tmp_path):
    """torch.load(weights_only=True) refuses a pickle that would run code."""
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import pickle

    path = tmp_path / "pickled.pt"
    path.write_bytes(pickle.dumps({"format": "googlenet-detector-v2", "x": Boom()}))
    with pytest.raises(ValueError, match="pickled.pt"):
        Detector.from_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o["settings"].update(context=40), "context"),
    (lambda o: o["settings"].update(unknown=1), "unknown detector settings"),
    (lambda o: o["settings"].update(nms_iou="0.3"), "nms_iou"),
    (lambda o: o["members"][0]["model_kwargs"].update(__class__="os.system"), "unknown model_kwargs"),
    (lambda o: o["members"][0]["model_state"].pop("fc.weight"), "do not fit"),
    (lambda o: o["classes"].update(names=["cat"]), "class list"),
    (lambda o: o.update(members=[]), "non-empty list of members"),
])
def test_malformed_detector_file_names_the_file(tmp_path, mutate, message):
    obj = {"format": "googlenet-detector-v2", "members": [_member()],
           "classes": {"wnids": list(CLASSES.wnids), "names": list(CLASSES.names)},
           "settings": {"crop_size": 64, "context": 4}, "proposer": None}
    mutate(obj)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message) as err:
        Detector.from_checkpoint(tmp_path / "bad.pt", backend="torch")
    assert "bad.pt" in str(err.value) or "overrides" in str(err.value)


def test_spec_roundtrip_rebuilds_the_same_proposer(tmp_path):
    mb = _multibox_checkpoint(tmp_path / "mb.pt")
    config = json.loads(json.dumps(UNION).replace("PLACEHOLDER", str(mb)))
    spec = embed_networks(spec_from_target_config(config))
    proposer = build_proposer(spec, "test")
    image = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    from hydra.utils import instantiate
    reference = instantiate(config, _convert_="all")
    np.testing.assert_array_equal(proposer(image).boxes, reference(image).boxes)
    assert proposer.name == reference.name
    assert spec_name(spec_from_target_config(config)) == reference.name  # the name, without loading MultiBox


@pytest.mark.parametrize("config", [
    {"_target_": "proposals.selective_search.SelectiveSearch"},
    {"_target_": "proposals.selective_search.SelectiveSearch", "superpixel_scale": 1.0},
    {"_target_": "proposals.selective_search.SelectiveSearch", "mode": "opencv_quality"},
    {"_target_": "proposals.selective_search.SelectiveSearch", "name": "mine"},
    {"_target_": "proposals.merge.UnionProposer", "sources": [
        {"_target_": "proposals.selective_search.SelectiveSearch", "superpixel_scale": 2.5},
        {"_target_": "proposals.selective_search.SelectiveSearch", "mode": "opencv_fast"}], "caps": [None, 7]},
])
def test_spec_name_is_the_built_proposers_name(config):
    from hydra.utils import instantiate
    assert spec_name(spec_from_target_config(config)) == instantiate(config, _convert_="all").name


# --------------------------------------------------------------------------- error boundaries in training

from detect.data.records import DetectionRecord, SkipLog  # noqa: E402
from detect.distributed import DistributedContext  # noqa: E402
from detect.engine import CheckpointMismatch, TrainSettings, fit, run_fingerprint  # noqa: E402
from detect.engine import ClassificationLoss  # noqa: E402
from detect.region import RegionDataset, collate_regions  # noqa: E402
from detect.models.convention import InputConvention  # noqa: E402


def _region_records(tmp_path: Path, n: int = 4, readable: bool = True) -> list:
    from detect.plots import write_png

    records = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        if readable:
            write_png(path, np.full((40, 48, 3), 60 * (i % 4), np.uint8))
        else:
            path.write_bytes(b"not an image")
        records.append(DetectionRecord(f"img{i}", path, 48, 40, np.array([[5, 5, 30, 30]], np.float32),
                                       np.array([0]), np.array([False]), i + 1))
    return records


def test_a_settings_error_is_raised_when_the_dataset_is_built_not_skipped_per_item(tmp_path):
    """context >= crop_size / 2 once turned every item into a skipped one and trained nothing."""
    with pytest.raises(ValueError, match="context must be"):
        RegionDataset(_region_records(tmp_path), {}.__getitem__, InputConvention(mean=(0.5,) * 3, std=(0.25,) * 3), crop_size=16, context=8)
    from proposals.multibox.data import MultiBoxDataset
    from detect.data.records import DetectionDataset

    with pytest.raises(ValueError, match="min_crop"):
        MultiBoxDataset(DetectionDataset(_region_records(tmp_path), CLASSES), 64, min_crop=0.0)


def _tiny_region_fit(tmp_path, records, ckpt, **kwargs):
    ds = RegionDataset(records, {}.__getitem__, InputConvention(mean=(0.5,) * 3, std=(0.25,) * 3), regions_per_image=4, crop_size=64, context=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_regions, num_workers=kwargs.pop("workers", 0))
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=3, width=0.125, aux_logits=False, lrn=False, dropout=0.0)
    settings = TrainSettings(1, ema_decay=None, **{k: kwargs.pop(k) for k in ("resume", "max_skipped_fraction")
                                                   if k in kwargs})
    return fit(model, ClassificationLoss(background=0), loader, torch.optim.SGD(model.parameters(), lr=0.01), None,
               settings, DistributedContext(), ckpt, **kwargs)


def test_an_epoch_of_nothing_but_unreadable_images_stops_the_run(tmp_path):
    skipped = SkipLog("images")
    with pytest.raises(RuntimeError, match="no training step was taken.*img0.png"):
        _tiny_region_fit(tmp_path, _region_records(tmp_path, readable=False), tmp_path / "c.pt", skipped=skipped)
    assert not (tmp_path / "c.pt").exists()  # no checkpoint of untrained weights


def test_skips_in_loader_workers_reach_the_report(tmp_path):
    records = _region_records(tmp_path, n=6)
    records[2].path.write_bytes(b"broken")
    skipped = SkipLog("images")
    _tiny_region_fit(tmp_path, records, tmp_path / "c.pt", skipped=skipped, max_skipped_fraction=0.5, workers=2)
    assert [f for f, _ in skipped.entries] == [str(records[2].path)]


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    records = _region_records(tmp_path)
    ckpt = tmp_path / "c.pt"
    _tiny_region_fit(tmp_path, records, ckpt, fingerprint=run_fingerprint(data=["a", 1], settings={"lr": 0.01}))
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointMismatch, match="differs in: data"):
        _tiny_region_fit(tmp_path, records, ckpt, fingerprint=run_fingerprint(data=["b", 1], settings={"lr": 0.01}))
    assert ckpt.read_bytes() == before  # left as it was
    # the same run resumes (already finished: nothing to do)
    _tiny_region_fit(tmp_path, records, ckpt, fingerprint=run_fingerprint(data=["a", 1], settings={"lr": 0.01}))


# --------------------------------------------------------------------------- outputs never overwrite inputs

def _tool(repo_root: Path, tool: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo_root / "tools" / tool), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_detect_tool_never_writes_over_inputs_or_foreign_files(tmp_path, repo_root):
    from detect.plots import write_png

    detector = tmp_path / "det.pt"
    bundle_detector([_member()], CLASSES, DetectorSettings(crop_size=64, context=4, score_threshold=0.0), detector,
                    proposer={"kind": "selective_search", "params": {"mode": "opencv_fast", "max_boxes": 10}})
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_png(imgs / "rgba.png", np.full((40, 50, 3), 90, np.uint8))
    before = (imgs / "rgba.png").read_bytes()
    common = [f"detector={detector}", "backend=torch", f"work_dir={tmp_path / 'work'}"]
    # out_dir = the input folder (the reported case) and a folder inside it
    for out in (imgs, imgs / "out"):
        run = _tool(repo_root, "detect.py", imgs, f"out_dir={out}", *common, cwd=tmp_path)
        assert run.returncode != 0 and "input folder" in run.stderr, run.stdout + run.stderr
    # an image given by file name, out_dir its own folder: the drawn PNG would replace it
    run = _tool(repo_root, "detect.py", imgs / "rgba.png", f"out_dir={imgs}", *common, cwd=tmp_path)
    assert run.returncode != 0 and "overwrite an input" in run.stderr, run.stdout + run.stderr
    assert (imgs / "rgba.png").read_bytes() == before
    # a file of the user's in out_dir with the name an output would take: kept, and the run refuses
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgba.json").write_text("my notes")
    run = _tool(repo_root, "detect.py", imgs, f"out_dir={out}", *common, cwd=tmp_path)
    assert run.returncode != 0 and "not written by detect" in run.stderr
    assert (out / "rgba.json").read_text() == "my notes" and not (out / "rgba.png").exists()
    # its own earlier outputs are replaced on a re-run
    (out / "rgba.json").unlink()
    for _ in range(2):
        run = _tool(repo_root, "detect.py", imgs, f"out_dir={out}", *common, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((out / "rgba.json").read_text())["width"] == 50


def test_outputs_follow_the_umask(tmp_path):
    """mkstemp makes 0600 files; outputs are made readable as the user's umask allows (a colleague in
    the group could not read results before)."""
    code = ("import os, sys; os.umask(0o002); from detect.io import atomic_write_text; "
            "atomic_write_text(sys.argv[1], 'x')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "shared.txt")], check=True, timeout=60)
    assert (os.stat(tmp_path / "shared.txt").st_mode & 0o777) == 0o664
    code = code.replace("0o002", "0o077")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "private.txt")], check=True, timeout=60)
    assert (os.stat(tmp_path / "private.txt").st_mode & 0o777) == 0o600


# --------------------------------------------------------------------------- resumable detections

def _detect_dataset_setup(tmp_path: Path):
    from detect.data.ilsvrc import read_ilsvrc_det
    from proposals.store import ProposalStore

    root = tmp_path / "world"
    make_detection_world(root, num_classes=2, num_train=1, num_val=4, min_side=64, max_side=72, max_objects=1,
                         empty_fraction=0.0)
    ds = read_ilsvrc_det(root, "val", classes=root / "classes.tsv")
    store = tmp_path / "val.npz"
    ProposalStore.from_lists([r.image_id for r in ds.records],
                             [np.array([[0, 0, 30, 30], [10, 10, 60, 60]], np.float32)] * len(ds)).save(store)
    classes = ds.classes
    torch.manual_seed(0)
    net = GoogLeNet(num_classes=len(classes) + 1, width=0.125, lrn=False, dropout=0.0).eval()
    bundle_detector([{"model_kwargs": net.model_kwargs, "model_state": net.state_dict()}], classes,
                    DetectorSettings(crop_size=64, context=4, score_threshold=0.0, max_per_image=3),
                    tmp_path / "det.pt")
    args = [f"work_dir={tmp_path / 'work'}", f"data.root={root}", "~data.generate", "device=cpu", "backend=torch",
            f"detector={tmp_path / 'det.pt'}", f"proposals_store={store}", "split=val", "progress=false"]
    return root, args, tmp_path / "work" / "detections" / "synthetic_val.txt"


@pytest.mark.slow
def test_detect_dataset_does_not_resume_from_another_image_list(tmp_path, repo_root):
    """Changing the image list once gave '20 of 20 images already done' and the old detections."""
    from detect.detections import read_ilsvrc_submission

    root, args, out = _detect_dataset_setup(tmp_path)
    run = _tool(repo_root, "detect_dataset.py", *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(set(read_ilsvrc_submission(out).image_index.tolist())) == [1, 2, 3, 4]
    lines = (root / "ImageSets/DET/val.txt").read_text().splitlines()
    (root / "ImageSets/DET/val.txt").write_text("\n".join(lines[2:]) + "\n")  # now 2 images, indices 3, 4
    run = _tool(repo_root, "detect_dataset.py", *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "already done" not in run.stdout + run.stderr
    assert sorted(set(read_ilsvrc_submission(out).image_index.tolist())) == [3, 4]


@pytest.mark.slow
def test_detect_dataset_second_writer_is_stopped_and_foreign_output_kept(tmp_path, repo_root):
    from detect.io import exclusive_lock

    _, args, out = _detect_dataset_setup(tmp_path)
    run = _tool(repo_root, "detect_dataset.py", *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    with exclusive_lock(out.with_name(f"{out.name}.rank0")):  # another run is writing rank 0's part
        run = _tool(repo_root, "detect_dataset.py", *args, "resume=false", cwd=tmp_path)
    assert run.returncode != 0 and "another run is writing" in run.stderr
    assert out.read_text() == text
    mine = tmp_path / "my_submission.txt"
    mine.write_text("1 1 0.5 0 0 10 10\n")
    run = _tool(repo_root, "detect_dataset.py", *args, f"output={mine}", cwd=tmp_path)
    assert run.returncode != 0 and "not written by detect_dataset" in run.stderr
    assert mine.read_text() == "1 1 0.5 0 0 10 10\n"


@pytest.mark.slow
def test_proposal_store_follows_the_multibox_weights_not_its_path(tmp_path, repo_root):
    """A store made with an earlier MultiBox checkpoint at the same path is made again, not reused."""
    from proposals.store import ProposalStore

    root, _, _ = _detect_dataset_setup(tmp_path)
    mb = _multibox_checkpoint(tmp_path / "mb.pt")
    out = tmp_path / "store.npz"
    args = [f"work_dir={tmp_path / 'work'}", f"data.root={root}", "~data.generate", "proposals=multibox",
            f"proposals.checkpoint={mb}", "proposals.backend=torch", "proposals.top_k=3", "workers=0",
            f"output={out}", "progress=false"]
    assert _tool(repo_root, "propose.py", *args, cwd=tmp_path).returncode == 0
    first = ProposalStore.load(out)
    ckpt = torch.load(mb, weights_only=True)
    priors = ckpt["model_state"]["priors"]
    ckpt["model_state"]["priors"] = priors.flip(0).contiguous()  # "retrained": other boxes come out
    torch.save(ckpt, mb)
    run = _tool(repo_root, "propose.py", *args, cwd=tmp_path)
    assert run.returncode == 0 and "nothing to do" not in run.stdout + run.stderr
    second = ProposalStore.load(out)
    assert first.meta["fingerprint"] != second.meta["fingerprint"]
    # a file of the user's at the output path is never replaced
    mine = tmp_path / "notes.npz"
    mine.write_bytes(b"my data")
    run = _tool(repo_root, "propose.py", *args[:-2], f"output={mine}", "progress=false", cwd=tmp_path)
    assert run.returncode != 0 and "not a proposal store" in run.stderr and mine.read_bytes() == b"my data"


def test_a_trainer_never_overwrites_weights_it_did_not_write(tmp_path):
    """checkpoint= pointing at the user's pretrained weights (with resume=false) once replaced them."""
    weights = tmp_path / "pretrained.pt"
    torch.save({"model_kwargs": {}, "model_state": GoogLeNet(num_classes=3, width=0.125).state_dict()}, weights)
    before = weights.read_bytes()
    from detect.io import OutputConflict

    for resume in (False, True):
        with pytest.raises(OutputConflict, match="not a training checkpoint"):
            _tiny_region_fit(tmp_path, _region_records(tmp_path), weights, resume=resume)
    assert weights.read_bytes() == before



def test_detect_dataset_resumes_a_killed_run_chunk_by_chunk(tmp_path, repo_root):
    """Killed after its first chunk, the run computes only the rest and merges the same result as an
    uninterrupted run (detect.runs: the mechanism proposals use too)."""
    import importlib.util

    from detect.data.records import DetectionRecord
    from detect.detections import Detections
    from detect.runs import ChunkedRun

    spec = importlib.util.spec_from_file_location("detect_dataset_tool", repo_root / "tools" / "detect_dataset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    records = [DetectionRecord(f"img{i}", Path(f"img{i}.jpg"), 10, 10, np.zeros((0, 4)), [], [], i + 1)
               for i in range(5)]

    class FakeDetector:
        def __init__(self, die_after=None):
            self.seen, self.die_after = [], die_after

        def detect_many(self, items, prefetch=2):
            from detect.pipeline import DetectionResult

            for record, _, _ in items:
                if self.die_after is not None and len(self.seen) == self.die_after:
                    raise KeyboardInterrupt
                self.seen.append(record.index)
                k = record.index
                yield record, None, DetectionResult(np.array([[k, k, k + 5, k + 5]], np.float32),
                                                    np.array([0.1 * k], np.float32), np.array([k % 2])), None

    def merged(run):
        dets = Detections.concat(Detections(z["image_index"], z["labels"], z["scores"], z["boxes"])
                                 for z in run.chunks(("image_index", "labels", "scores", "boxes")))
        return dets.select(dets.image_index.argsort(kind="stable"))

    run = ChunkedRun(tmp_path / "out.txt", "key", len(records), chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        tool.detect_chunks(FakeDetector(die_after=3), records, None, run, 0, 2, False)
    assert run.pending(0) == [1, 2]  # chunk 0 (images 1, 2) is on disk; chunk 1 was cut short
    again = FakeDetector()
    tool.detect_chunks(again, records, None, run, 0, 2, False)
    assert again.seen == [3, 4, 5] and run.all_present()
    whole = ChunkedRun(tmp_path / "whole.txt", "key", len(records), chunk_size=2)
    tool.detect_chunks(FakeDetector(), records, None, whole, 0, 2, False)
    a, b = merged(run), merged(whole)
    assert a.image_index.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(a.boxes, b.boxes) and np.testing.assert_array_equal(a.scores, b.scores)


# ---- issue 21: reproducible selective search order

def test_selective_search_order_unchanged_beside_onnxruntime_threads(shared_data):
    """OpenCV's ranking drew C's rand(), which onnxruntime's threads share: 3 of 180 calls came in another
    order once onnxruntime was imported. Here a session runs on one thread and another calls rand() in a
    loop (the same disturbance, made certain) while selective search runs again: same boxes, same order."""
    import threading

    import numpy as np

    from benchmarks.ss_order_check import onnxruntime_session_thread, rand_thread
    from detect.data.images import read_image
    from proposals.selective_search import SelectiveSearch

    files = sorted((shared_data / "coco128" / "images" / "train2017").glob("*.jpg"))[:2]
    images = [read_image(f) for f in files]
    ss = SelectiveSearch(resize_width=200)
    first = [ss(im).boxes for im in images]
    stop = threading.Event()
    threads = [onnxruntime_session_thread(stop), rand_thread(stop)]
    try:
        second = [ss(im).boxes for im in images]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    for f, a, b in zip(files, first, second):
        assert len(a) > 100 and np.array_equal(a, b), f"{f.name}: the box order changed"
