"""How each stage's cost grows with the number of images: time per image and peak memory at several
sizes of an ILSVRC-shaped world (benchmarks/ilsvrc_world.py), and the proposal store at ILSVRC-train
scale. Every measurement runs in its own process; its peak resident memory comes from ``os.wait4``
(the process and the children it waited for), its wall time from the parent.

Stages, per world size N (the val split: N images, its val1/val2 halves and blacklist):
  world          writing the world (JPEG + XML + lists)
  read           detect.data.ilsvrc.read_ilsvrc_det of the full val list
  propose        proposals.store.propose_dataset with the stand-in proposer (~2,000 boxes per image):
                 chunks (everything but the last chunk) and merge (the last chunk + the merge), for the
                 current code and for the reference (proposals/store.py at --reference, the npz-in-memory
                 store), side by side
  lookup         a process importing only the store module: open the store, look up --lookups images
  train_data     detect.region.RegionDataset over val1 (what each train_region loader worker does per
                 image: store lookup, JPEG decode, label assignment over ~2,000 proposals + ground truth,
                 sampling, warp of --regions crops of --crop px), one thread; and the label assignment +
                 sampling alone; both with the current store and with the reference store
  train_region   tools/train_region.py experiment=ilsvrc14 data=ilsvrc2014 on val1, width 0.25,
                 --train-steps steps: the tool's fixed costs (dataset, store, fingerprint, loaders)
  detect         tools/detect_dataset.py on the full val list with a stand-in detector (one width-0.25
                 member, crop 32, min_size 24: it scores the stand-in proposer's 5 large boxes of each
                 image; score_threshold 0: 100 detections per image), then the same command again
                 (resume: every image done, the shards merged again)
  eval           tools/eval_map.py on those detections (the evaluator on main as it is)
Store at scale (``--store-images``): a synthetic writer streams ``--store-images`` x ``--store-boxes``
boxes into the current format (write time, size), then the lookup process opens it.
Real-size region sampling (``--real-images``): RegionDataset on 500x375 JPEGs with 2,000 proposals each
(regions/s per loader worker at ILSVRC image size).

    .venv/bin/python benchmarks/bench_scale.py --work /tmp/scale --sizes 1000 5000 20000 \
        --store-images 456567 --out benchmarks/scale_results.json
    .venv/bin/python benchmarks/bench_scale.py --report benchmarks/scale_results.json   # the tables of scale.md
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
REFERENCE_COMMIT = "48dad8c"  # proposals/store.py before the memory-mapped format (the npz read whole)


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


TIME = "/usr/bin/time"


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path = REPO, log_path: Path | None = None) -> dict:
    """Run ``cmd``; return wall seconds, peak RSS (MB) of it and the children it waited for, and the JSON
    it printed on a ``RESULT `` line (if any). A failing command raises with its output's tail.

    The peak comes from GNU time (``/usr/bin/time -f %M``), whose own small process forks the command, so
    the figure is the command's alone; without it, from ``os.wait4``, which also counts the memory this
    process had when it forked (small for the driver, which imports no torch). ``cpu_s``: user + system
    seconds of the command and its children, a steadier figure than wall time on a shared machine."""
    import tempfile

    start = time.perf_counter()
    out = open(log_path, "w") if log_path else subprocess.PIPE
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as peak_file:
        full = [TIME, "-f", "%M %U %S", "-o", peak_file.name, *map(str, cmd)] if os.access(TIME, os.X_OK) else list(map(str, cmd))
        proc = subprocess.Popen(full, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        text = ""
        if log_path is None:
            text = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        fields = [ln.split() for ln in peak_file.read().splitlines()]
        fields = [f for f in fields if len(f) == 3 and f[0].isdigit()]
        if full[0] == TIME and fields:
            peak_kb, cpu = int(fields[-1][0]), float(fields[-1][1]) + float(fields[-1][2])
        else:
            peak_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    if log_path is not None:
        out.close()
        text = log_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{text[-3000:]}")
    result = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak_kb / 1024, 1), **result}


def _emit(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def _reference_store_module(work: Path):
    """proposals/store.py as of REFERENCE_COMMIT, loaded from a copy (the reference of this benchmark)."""
    path = work / "reference" / "store_v1.py"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        source = subprocess.run(["git", "show", f"{REFERENCE_COMMIT}:proposals/store.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        path.write_text(source)
    spec = importlib.util.spec_from_file_location("store_v1", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["store_v1"] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def _val(root: Path, image_list: str | None = None):
    from detect.data.ilsvrc import read_ilsvrc_det

    lists = root / "devkit" / "data" / "det_lists"
    return read_ilsvrc_det(root, "val", image_list=None if image_list is None else lists / image_list, layout="2014",
                           devkit=root / "devkit",
                           blacklist=root / "devkit" / "data" / "ILSVRC2014_det_validation_blacklist.txt")


# ----------------------------------------------------------------------------- measured in a subprocess


def m_world(args) -> None:
    from benchmarks.ilsvrc_world import make_ilsvrc2014_world

    start = time.perf_counter()
    record = make_ilsvrc2014_world(args.root, args.n, progress=True)
    _emit(seconds=time.perf_counter() - start, **{k: record[k] for k in ("boxes", "val1", "val2", "blacklisted")})


def m_read(args) -> None:
    start = time.perf_counter()
    ds = _val(Path(args.root))
    _emit(seconds=time.perf_counter() - start, images=len(ds), rss_mb=_rss_mb())


def m_propose(args) -> None:
    """--part chunks: all chunks but the last; --part merge: the last chunk and the merge."""
    from benchmarks.ilsvrc_world import StandInProposer

    module = _reference_store_module(Path(args.work)) if args.reference else None
    if module is None:
        from proposals import store as module
    ds = _val(Path(args.root))
    paths, ids = [str(r.path) for r in ds.records], [r.image_id for r in ds.records]
    total_chunks = -(-len(ids) // args.chunk_size)
    stop = total_chunks - 1 if args.part == "chunks" else None
    start, cpu = time.perf_counter(), time.process_time()
    summary = module.propose_dataset(paths, ids, StandInProposer(args.boxes), args.out, chunk_size=args.chunk_size,
                                     stop_after_chunks=stop, progress=False)
    seconds = time.perf_counter() - start
    _emit(seconds=seconds, cpu_seconds=time.process_time() - cpu, chunks=summary.chunks_computed, merged=summary.merged, images=len(ids),
          size_mb=Path(args.out).stat().st_size / 2**20 if summary.merged else None)


def m_lookup(args) -> None:
    """Open a store and look up images, importing only the store-file module (and numpy)."""
    import numpy as np

    module = _reference_store_module(Path(args.work)) if args.reference else None
    if module is None:
        from proposals import store_format as module
    before = _rss_mb()
    start = time.perf_counter()
    store = module.ProposalStore.load(args.out)
    opened = time.perf_counter() - start
    after_open = _rss_mb()
    n = len(store)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, n, args.lookups)
    # ids picked from the store itself; the current store's id array is read entry by entry (store.image_ids
    # would build the list of every id), and the memory that picking takes is left out below
    ids = [store.image_ids[int(i)] for i in picks] if args.reference else [str(store._ids[int(i)]) for i in picks]
    after_ids = _rss_mb()
    start = time.perf_counter()
    first = store.get(ids[0])
    first_s = time.perf_counter() - start
    after_first = _rss_mb()
    start = time.perf_counter()
    boxes = 0
    for image_id in ids:
        boxes += len(store.get(image_id))
    per = (time.perf_counter() - start) / len(ids)
    _emit(open_s=opened, first_lookup_ms=1000 * first_s, lookup_ms=1000 * per, images=n, boxes_per_lookup=boxes / len(ids),
          rss_start_mb=before, rss_open_mb=after_open, rss_after_first_mb=after_first - (after_ids - after_open),
          rss_after_lookups_mb=_rss_mb(),
          rss_growth_mb=_rss_mb() - before - (after_ids - after_open), torch_imported="torch" in sys.modules,
          first_boxes=len(first))


def m_train_data(args) -> None:
    import numpy as np
    import torch

    from detect.models.googlenet import IMAGENET_MEAN, IMAGENET_STD
    from detect.region import RegionDataset, add_ground_truth, sample_regions

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    module = _reference_store_module(Path(args.work)) if args.reference else None
    if module is None:
        from proposals import store_format as module
    start = time.perf_counter()
    ds = _val(Path(args.root), None if args.real else "val1.txt") if not args.real else None
    records = ds.records if ds is not None else _real_records(Path(args.root))
    store = module.ProposalStore.load(args.out)
    setup = time.perf_counter() - start
    data = RegionDataset(records, store.get, IMAGENET_MEAN, IMAGENET_STD, regions_per_image=args.regions,
                         crop_size=args.crop, context=16 * args.crop // 224, seed=0)
    picks = np.linspace(0, len(records) - 1, min(args.items, len(records))).astype(int).tolist()
    data[picks[0]]  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    regions = 0
    for i in picks:
        crops, labels = data[i]
        regions += len(labels)
    item = (time.perf_counter() - start) / len(picks)
    item_cpu = (time.process_time() - cpu) / len(picks)
    rng = np.random.default_rng(0)
    start, cpu = time.perf_counter(), time.process_time()
    for i in picks:
        r = records[i]
        boxes, labels = add_ground_truth(torch.from_numpy(store.get(r.image_id)), torch.from_numpy(r.boxes),
                                         torch.from_numpy(r.labels), torch.from_numpy(r.ignore), 0.5)
        sample_regions(labels, args.regions, 0.25, rng)
    labels_only = (time.perf_counter() - start) / len(picks)
    labels_cpu = (time.process_time() - cpu) / len(picks)
    start = time.perf_counter()
    for i in picks:
        store.get(records[i].image_id)
    lookup = (time.perf_counter() - start) / len(picks)
    _emit(setup_s=setup, images=len(records), item_ms=1000 * item, item_cpu_ms=1000 * item_cpu,
          regions_per_s=regions / (item * len(picks)), regions_per_cpu_s=regions / (item_cpu * len(picks)),
          labels_ms=1000 * labels_only, labels_cpu_ms=1000 * labels_cpu, lookup_ms=1000 * lookup, rss_mb=_rss_mb(),
          items=len(picks))


def _real_records(root: Path):
    """Records of the real-size images written by ``--real-images`` (500x375, 2-4 objects)."""
    import numpy as np

    from detect.data.records import DetectionRecord

    meta = json.loads((root / "records.json").read_text())
    return [DetectionRecord(m["id"], root / f"{m['id']}.jpg", 500, 375, np.asarray(m["boxes"], np.float32).reshape(-1, 4),
                            np.asarray(m["labels"], np.int64), np.zeros(len(m["labels"]), bool), k + 1)
            for k, m in enumerate(meta)]


def m_real_world(args) -> None:
    """Write --n images of 500x375 with 2,000 stand-in proposals each (a store in the current format)."""
    import cv2
    import numpy as np

    from benchmarks.ilsvrc_world import StandInProposer
    from detect.data.synthetic import render_detection_image, scene_classes
    from proposals.store_format import ProposalStore

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    scenes, proposer, meta, boxes, scores = scene_classes(200), StandInProposer(args.boxes, large=200, large_side=40), [], [], []
    for i in range(args.n):
        rng = np.random.default_rng([7, i])
        labels = rng.integers(0, 200, int(rng.integers(2, 5))).tolist()
        image, b, l = render_detection_image(rng, 500, 375, scenes, labels, 30, 0.8, 0.5, 20)
        cv2.imwrite(str(root / f"real{i:04d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        meta.append({"id": f"real{i:04d}", "boxes": b.tolist(), "labels": l.tolist()})
        p = proposer(image)
        boxes.append(p.boxes)
        scores.append(p.scores)
    (root / "records.json").write_text(json.dumps(meta))
    ProposalStore.from_lists([m["id"] for m in meta], boxes, scores).save(args.out)
    _emit(images=args.n)


def m_store_writer(args) -> None:
    """Stream --n images x --boxes boxes (uint16, 500x375 pixels) into the current format."""
    import numpy as np

    from proposals.store_format import StoreWriter

    rng = np.random.default_rng(0)
    ids = [f"ILSVRC2014_train_{i:08d}" for i in range(args.n)]
    start = time.perf_counter()
    limits = np.array([500, 375, 500, 375])
    with StoreWriter(args.out, ids, np.full(args.n, args.boxes), np.uint16, True, {"method": "synthetic"}) as writer:
        for i in range(args.n):
            xy = rng.integers(0, 400, (args.boxes, 2), dtype=np.uint16)
            wh = rng.integers(1, 100, (args.boxes, 2), dtype=np.uint16)
            boxes = np.minimum(np.concatenate([xy, xy + wh], axis=1), limits).astype(np.uint16)
            writer.add(boxes, np.linspace(1, 0, args.boxes, dtype=np.float32))
            if (i + 1) % 50000 == 0:
                print(f"  store: {i + 1}/{args.n} images, {time.perf_counter() - start:.0f} s", flush=True)
    _emit(seconds=time.perf_counter() - start, size_gb=Path(args.out).stat().st_size / 1e9, rss_mb=_rss_mb())


def m_standin_detector(args) -> None:
    """A one-member detector file: GoogLeNet width 0.25 (random weights), crop 32, min_size 24."""
    from detect.classes import ilsvrc_det_classes
    from detect.models.googlenet import GoogLeNet
    from detect.pipeline import DetectorSettings, bundle_detector

    import torch

    torch.manual_seed(0)
    classes = ilsvrc_det_classes()
    net = GoogLeNet(num_classes=len(classes) + 1, aux_logits=False, width=0.25)
    settings = DetectorSettings(crop_size=32, context=2, score_threshold=0.0, min_size=24, max_per_image=100)
    bundle_detector([{"model_kwargs": net.model_kwargs, "model_state": net.state_dict()}], classes, settings, args.out)
    _emit(done=True)


MEASURES = {"world": m_world, "read": m_read, "propose": m_propose, "lookup": m_lookup, "train_data": m_train_data,
            "real_world": m_real_world, "store_writer": m_store_writer, "standin_detector": m_standin_detector}


# ----------------------------------------------------------------------------------------- the driver


def _measure(stage: str, log_dir: Path, name: str, **kw) -> dict:
    cmd = [PYTHON, str(Path(__file__).resolve()), "_measure", stage]
    for k, v in kw.items():
        if v is True:
            cmd.append(f"--{k}")
        elif v not in (None, False):
            cmd += [f"--{k}", str(v)]
    result = run_measured(cmd, log_path=log_dir / f"{name}.log")
    print(f"  {name}: {json.dumps(result)}", flush=True)
    return result


def _tool(tool: str, overrides: list[str], log_dir: Path, name: str, env: dict | None = None) -> dict:
    import re

    result = run_measured([PYTHON, str(REPO / "tools" / f"{tool}.py"), *overrides], env=env,
                          log_path=log_dir / f"{name}.log")
    loop = re.search(r"rank 0: (\d+) images in ([\d.]+) s", (log_dir / f"{name}.log").read_text())
    if loop:  # detect_dataset's own figure for its per-image loop (reading, proposals, scoring, writing)
        result.update(loop_images=int(loop.group(1)), loop_s=float(loop.group(2)))
    print(f"  {name}: {json.dumps(result)}", flush=True)
    return result


def run_size(n: int, work: Path, args) -> dict:
    root, out = work / f"world_{n}", {}
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"== {n} images", flush=True)
    out["world"] = _measure("world", logs, f"world_{n}", root=root, n=n, work=work)
    out["read"] = _measure("read", logs, f"read_{n}", root=root, work=work)
    stores = {}
    for variant in ("current", "reference"):
        store = work / f"proposals_{n}" / variant / "ilsvrc2014_val_standin.npz"
        stores[variant] = store
        common = dict(root=root, work=work, out=store, boxes=args.boxes, reference=variant == "reference")
        out[f"propose_chunks_{variant}"] = _measure("propose", logs, f"propose_chunks_{variant}_{n}", part="chunks", **common)
        out[f"propose_merge_{variant}"] = _measure("propose", logs, f"propose_merge_{variant}_{n}", part="merge", **common)
        out[f"lookup_{variant}"] = _measure("lookup", logs, f"lookup_{variant}_{n}", lookups=args.lookups, **common)
        out[f"train_data_{variant}"] = _measure("train_data", logs, f"train_data_{variant}_{n}", items=args.items,
                                                regions=args.regions, crop=args.crop, **common)
    data = ["experiment=ilsvrc14", "data=ilsvrc2014", f"data.root={root}", f"data.devkit={root}/devkit",
            f"data.blacklist={root}/devkit/data/ILSVRC2014_det_validation_blacklist.txt", f"data_cls.root={work}/unused",
            f"work_dir={work}/run_{n}"]
    if not args.skip_tools:
        out["train_region"] = _tool("train_region", [
            *data, "init=null", "model.width=0.25", "crop_size=64", "context=4", "regions_per_image=16",
            "images_per_batch=2", "epochs=1", f"max_steps_per_epoch={args.train_steps}", "evaluation.images=0",
            "num_workers=1", f"proposals_store={stores['current']}", "checkpoint_every=null", "hydra.run.dir=" + str(work / f"hydra_tr_{n}"),
        ], logs, f"train_region_{n}")
        detections = work / f"run_{n}" / "detections" / "val.txt"
        det = [*data, f"detector={work / 'standin_detector.pt'}", "data.val.image_list=null",
               f"proposals_store={stores['current']}", f"output={detections}", "progress=false", "prefetch=2",
               "hydra.run.dir=" + str(work / f"hydra_det_{n}")]
        out["detect"] = _tool("detect_dataset", det, logs, f"detect_{n}", env={"OMP_NUM_THREADS": "1"})
        out["detect_resume"] = _tool("detect_dataset", det, logs, f"detect_resume_{n}", env={"OMP_NUM_THREADS": "1"})
        out["eval"] = _tool("eval_map", [*data, "data.val.image_list=null", f"detections={detections}",
                                         f"out_dir={work / f'eval_{n}'}", "hydra.run.dir=" + str(work / f"hydra_eval_{n}")],
                            logs, f"eval_{n}")
        out["detections"] = sum(1 for _ in open(detections))
    return out


def lscpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def report_markdown(report: dict) -> str:
    """The tables of benchmarks/scale.md from a results JSON."""
    sizes = sorted(report["sizes"], key=int)
    S = {n: report["sizes"][n] for n in sizes}
    head = "| stage | figure | " + " | ".join(f"{int(n):,} images" for n in sizes) + " | last / first |"
    rule = "| --- | --- | " + " | ".join("---:" for _ in sizes) + " | ---: |"

    def marginal(key, r, n):
        """CPU milliseconds per image between the first size and this one (fixed start-up costs cancel)."""
        first = int(sizes[0])
        if n == first:
            return None
        return 1000 * (r[key]["cpu_s"] - S[sizes[0]][key]["cpu_s"]) / (n - first)

    def row(stage, figure, fn, fmt="{:.2f}", ratio=True):
        vals = []
        for n in sizes:
            try:
                vals.append(fn(S[n], int(n)))
            except (KeyError, TypeError, ZeroDivisionError):
                vals.append(None)
        cells = ["" if v is None else fmt.format(v) for v in vals]
        r = f"{vals[-1] / vals[0]:.2f}x" if ratio and vals[0] and vals[-1] is not None else ""
        return f"| {stage} | {figure} | " + " | ".join(cells) + f" | {r} |"

    rows = [head, rule,
            row("read (ILSVRC reader, full val list)", "ms/image, wall in-process", lambda r, n: 1000 * r["read"]["seconds"] / n),
            row("", "resident MB after reading", lambda r, n: r["read"]["rss_mb"], "{:.0f}"),
            row("propose: chunks (stand-in, 2,000 boxes)", "ms CPU/image in-process", lambda r, n: 1000 * r["propose_chunks_current"]["cpu_seconds"] / n),
            row("", "ms/image wall in-process", lambda r, n: 1000 * r["propose_chunks_current"]["seconds"] / n),
            row("propose: last chunk + merge", "ms CPU/image in-process", lambda r, n: 1000 * r["propose_merge_current"]["cpu_seconds"] / n),
            row("", "peak MB (process)", lambda r, n: r["propose_merge_current"]["peak_rss_mb"], "{:.0f}"),
            row("", "reference (npz read whole): ms CPU/image", lambda r, n: 1000 * r["propose_merge_reference"]["cpu_seconds"] / n),
            row("", "reference: peak MB", lambda r, n: r["propose_merge_reference"]["peak_rss_mb"], "{:.0f}"),
            row("store file", "MB", lambda r, n: r["propose_merge_current"]["size_mb"], "{:.1f}"),
            row("", "reference (deflated npz): MB", lambda r, n: r["propose_merge_reference"]["size_mb"], "{:.1f}"),
            row("store: open", "ms", lambda r, n: 1000 * r["lookup_current"]["open_s"], "{:.1f}"),
            row("", "reference: ms", lambda r, n: 1000 * r["lookup_reference"]["open_s"], "{:.0f}"),
            row("store: one lookup (2,000 boxes)", "ms, mean of 1,000 random", lambda r, n: r["lookup_current"]["lookup_ms"], "{:.3f}"),
            row("", "resident MB after open + one lookup (numpy-only process)",
                lambda r, n: r["lookup_current"]["rss_after_first_mb"], "{:.1f}"),
            row("", "reference: resident MB after open (process had torch)",
                lambda r, n: r["lookup_reference"]["rss_open_mb"] - r["lookup_reference"]["rss_start_mb"], "{:.0f}"),
            row("train_region data path (224 px, 64 regions)", "ms CPU/image, one thread", lambda r, n: r["train_data_current"]["item_cpu_ms"]),
            row("", "of which labels + sampling: ms CPU", lambda r, n: r["train_data_current"]["labels_cpu_ms"]),
            row("", "regions per CPU-second", lambda r, n: r["train_data_current"]["regions_per_cpu_s"], "{:.0f}"),
            row("", "resident MB (process)", lambda r, n: r["train_data_current"]["rss_mb"], "{:.0f}"),
            row("", "reference store: resident MB", lambda r, n: r["train_data_reference"]["rss_mb"], "{:.0f}"),
            row("train_region.py (val1, 3 steps, width 0.25)", "s CPU, whole tool", lambda r, n: r["train_region"]["cpu_s"], "{:.1f}"),
            row("", "peak MB", lambda r, n: r["train_region"]["peak_rss_mb"], "{:.0f}"),
            row("detect_dataset.py (full val, stand-in detector)", "ms/image, its loop (wall)", lambda r, n: 1000 * r["detect"]["loop_s"] / r["detect"]["loop_images"]),
            row("", "ms CPU/image, whole tool", lambda r, n: 1000 * r["detect"]["cpu_s"] / n),
            row("", "ms CPU per image added since the first size", lambda r, n: marginal("detect", r, n), ratio=False),
            row("", "peak MB", lambda r, n: r["detect"]["peak_rss_mb"], "{:.0f}"),
            row("detect_dataset.py again (resume: all done)", "ms CPU/image, whole tool", lambda r, n: 1000 * r["detect_resume"]["cpu_s"] / n),
            row("", "ms CPU per image added since the first size", lambda r, n: marginal("detect_resume", r, n), ratio=False),
            row("", "peak MB", lambda r, n: r["detect_resume"]["peak_rss_mb"], "{:.0f}"),
            row("eval_map.py (100 detections/image)", "ms CPU/image, whole tool", lambda r, n: 1000 * r["eval"]["cpu_s"] / n),
            row("", "ms CPU per image added since the first size", lambda r, n: marginal("eval", r, n), ratio=False),
            row("", "peak MB", lambda r, n: r["eval"]["peak_rss_mb"], "{:.0f}"),
            ]
    out = ["\n".join(rows)]
    real = report.get("real_size_train_data")
    if real:
        out.append(f"Real-size region sampling (500x375 JPEGs, 2,000 proposals, 224 px crops, 64 regions, one thread): "
                   f"{real['item_cpu_ms']:.1f} ms CPU per image ({real['item_ms']:.1f} ms wall), "
                   f"{real['regions_per_cpu_s']:.0f} regions per CPU-second ({real['regions_per_s']:.0f} per wall second).")
    big = report.get("store_at_scale")
    if big:
        w, l1, l2 = big["writer"], big["lookup"], big["lookup_again"]
        out.append(f"Store at {big['images']:,} images x {big['boxes']:,} boxes: file {w['size_gb']:.2f} GB, written in "
                   f"{w['seconds']:.0f} s ({w['cpu_s']:.0f} s CPU, peak {w['peak_rss_mb']:.0f} MB); open {1000 * l1['open_s']:.1f} ms; "
                   f"first lookup {l1['first_lookup_ms']:.1f} ms, then {l1['lookup_ms']:.3f} ms each (1,000 random); "
                   f"resident {l1['rss_start_mb']:.1f} MB after imports, {l1['rss_open_mb']:.1f} MB open, "
                   f"{l1['rss_after_first_mb']:.1f} MB after one lookup, {l1['rss_after_lookups_mb']:.1f} MB after 1,000; "
                   f"peak {l1['peak_rss_mb']:.0f} MB; torch imported: {l1['torch_imported']}. Again (page cache warm): "
                   f"open {1000 * l2['open_s']:.1f} ms, {l2['lookup_ms']:.3f} ms per lookup.")
    return "\n\n".join(out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--report":
        print(report_markdown(json.loads(Path(sys.argv[2]).read_text())))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        ap = argparse.ArgumentParser()
        ap.add_argument("stage", choices=sorted(MEASURES))
        for name in ("root", "work", "out", "part"):
            ap.add_argument(f"--{name}")
        for name, default in (("n", 0), ("boxes", 2000), ("chunk-size", 64), ("lookups", 1000), ("items", 100),
                              ("regions", 64), ("crop", 224)):
            ap.add_argument(f"--{name}", type=int, default=default)
        ap.add_argument("--reference", action="store_true")
        ap.add_argument("--real", action="store_true")
        args = ap.parse_args(sys.argv[2:])
        MEASURES[args.stage](args)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a new or earlier --work folder (worlds are reused)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 20000])
    ap.add_argument("--boxes", type=int, default=2000, help="proposals per image")
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--items", type=int, default=100, help="images timed in the train_data measurement")
    ap.add_argument("--regions", type=int, default=64, help="regions sampled per image (R-CNN: 2 x 64 per batch)")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--real-images", type=int, default=64, help="500x375 images for regions/s (0 = skip)")
    ap.add_argument("--store-images", type=int, default=0, help="images of the synthetic store at scale (0 = skip)")
    ap.add_argument("--store-boxes", type=int, default=2000)
    ap.add_argument("--skip-tools", action="store_true", help="only the library measurements")
    ap.add_argument("--out", type=Path, help="JSON with every figure")
    args = ap.parse_args()
    work = args.work.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version  # the driver stays small (no torch): children's peak memory starts from it

    report = {"cpu": lscpu_model(), "cores": os.cpu_count(), "torch": version("torch"), "load_before": os.getloadavg(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "args": {k: str(v) for k, v in vars(args).items()},
              "sizes": {}}
    if not args.skip_tools and not (work / "standin_detector.pt").is_file():
        _measure("standin_detector", logs, "standin_detector", out=work / "standin_detector.pt")
    if args.real_images:
        real = work / "real_world"
        store = real / "real_standin.npz"
        if not store.is_file():
            _measure("real_world", logs, "real_world", root=real, n=args.real_images, out=store, boxes=args.boxes)
        report["real_size_train_data"] = _measure("train_data", logs, "train_data_real", root=real, out=store, real=True,
                                                  items=args.real_images, regions=args.regions, crop=args.crop, work=work)
    for n in args.sizes:
        report["sizes"][n] = run_size(n, work, args)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.store_images:
        store = work / f"store_{args.store_images}" / "train_synthetic.npz"
        store.parent.mkdir(parents=True, exist_ok=True)
        big = {"writer": _measure("store_writer", logs, "store_writer", out=store, n=args.store_images, boxes=args.store_boxes)}
        big["lookup"] = _measure("lookup", logs, "store_lookup", out=store, lookups=args.lookups, work=work)
        big["lookup_again"] = _measure("lookup", logs, "store_lookup_again", out=store, lookups=args.lookups, work=work)
        report["store_at_scale"] = {"images": args.store_images, "boxes": args.store_boxes, **big}
    report["load_after"] = os.getloadavg()
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
