"""Is selective search's box order the same from call to call in one process? (benchmarks/proposals.md)

``ranking="opencv"`` lets OpenCV rank the regions with C's ``rand()`` after ``srand(seed)``; anything
else in the process that draws from ``rand()`` meanwhile (the threads that ``onnxruntime`` starts)
changes the order, never the set of boxes. ``ranking="seeded"`` (the default) ranks with a numpy
generator of its own. This runs ``SelectiveSearch`` (the paper's 2x setting) over a folder's images once
for reference and then ``--repeats`` more times, optionally with onnxruntime imported and a session
running on another thread meanwhile (``--onnxruntime``) or a thread calling ``rand()`` in a loop
(``--rand-thread``, the same disturbance made certain), and prints the images whose order changed:

    .venv/bin/python benchmarks/ss_order_check.py work/demo/data/synthetic_det/Data/DET/train --onnxruntime
    .venv/bin/python benchmarks/ss_order_check.py work/demo/data/synthetic_det/Data/DET/train --onnxruntime \
        --ranking opencv

``--compare`` (run it without the disturbing threads) also runs OpenCV's ``process()`` once per image,
ranks our hierarchies with C's ``rand()`` draw for draw as OpenCV does and prints on how many images the
order is exactly ``process()``'s (so the box set is too), and the seconds per image of both (one OpenCV
thread); with ``--coco ANNOTATIONS`` the images are that file's first ``--images`` (the folder holds
them) and it prints the proposal recall of both generators' orders over ``--seeds`` seeds (order counts
through the first k boxes):

    .venv/bin/python benchmarks/ss_order_check.py ../shared/data/coco128/images/train2017 --images 32 \
        --resize-width 500 --repeats 0 --compare --seeds 5 \
        --coco ../shared/data/coco128/annotations/instances_train2017.json
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from detect.data.images import read_image  # noqa: E402
from proposals.selective_search import RANKINGS, SelectiveSearch, _rank  # noqa: E402


def onnxruntime_session_thread(stop: threading.Event) -> threading.Thread:
    """Import onnxruntime, open a session on a tiny MatMul model and run it on a daemon thread until ``stop``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((64, 64), np.float32)

    def loop() -> None:
        while not stop.is_set():
            session.run(None, {"x": x})
            stop.wait(0.01)  # keep its pool alive without taking the CPUs from the calls measured
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def rand_thread(stop: threading.Event) -> threading.Thread:
    """A daemon thread that calls C's ``rand()`` until ``stop`` (ctypes releases the GIL around each call)."""
    libc = ctypes.CDLL(None)

    def loop() -> None:
        while not stop.is_set():
            libc.rand()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def c_rand_rank(rects: np.ndarray, levels: np.ndarray, seed: int) -> np.ndarray:
    """OpenCV's ranking of our hierarchies, draw for draw: ``srand(seed)``, ``level * rand() / RAND_MAX`` per
    region in OpenCV's order, sorted, repeats at their best rank. Equals ``process()``'s order when nothing
    else draws from ``rand()`` meanwhile (glibc's RAND_MAX)."""
    libc = ctypes.CDLL(None)
    libc.srand(seed)
    u = np.array([libc.rand() for _ in range(len(levels))], np.float64) / 2147483647
    rects = rects[np.argsort(u * levels, kind="stable")]
    _, first = np.unique(rects, axis=0, return_index=True)
    return rects[np.sort(first)].astype(np.float32)


def compare(images, names, ss: SelectiveSearch, records=None, seeds: int = 1) -> None:
    """Our hierarchies against OpenCV's ``process()`` (``ranking="opencv"``), image by image: the same
    order when ranked with C's ``rand()`` as OpenCV ranks (so the same box set), and the seconds per image
    of both. With ``records``: proposal recall of both generators' orders over seeds 0..``seeds``-1."""
    other = SelectiveSearch(**dict(ss.spec_params(), ranking="opencv"))
    seconds = {"seeded": 0.0, "opencv": 0.0}
    found: dict = {}
    differ = []
    for name, im in zip(names, images):
        small, back = ss._resize(im)
        start = time.perf_counter()
        rects, levels = ss._hierarchies(small)
        ss._finish(_rank(rects, levels, ss.seed), back, im.shape[1], im.shape[0])
        seconds["seeded"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = other._opencv_rects(small)
        other._finish(theirs, back, im.shape[1], im.shape[0])
        seconds["opencv"] += time.perf_counter() - start
        if not np.array_equal(c_rand_rank(rects, levels, ss.seed), theirs):
            differ.append(name)
        for seed in range(seeds):
            for gen, ranked in (("numpy", _rank(rects, levels, seed)),
                                ("C rand", c_rand_rank(rects, levels, seed))):
                found.setdefault((gen, seed), []).append(ss._finish(ranked, back, im.shape[1], im.shape[0]).boxes)
    print(f"our hierarchies ranked with C's rand() give process()'s exact order on {len(images) - len(differ)} of "
          f"{len(images)} images; " + "; ".join(f"{k} {v / len(images):.3f} s/image" for k, v in seconds.items()))
    for name in differ:
        print(f"  {name}: another order")
    if records is not None:
        print_recall(records, found)


def print_recall(records, found: dict) -> None:
    """Proposal recall (COCO boxes, crowd ignored, IoU >= 0.5) per generator: mean and spread over seeds."""
    from proposals.recall import proposal_recall

    ks = [100, 300, 500, 1000]
    rows: dict = {}
    for (gen, seed), boxes in found.items():
        r = proposal_recall([q.boxes for q in records], boxes, [~q.ignore for q in records], ks=ks, plus_one=False)
        rows.setdefault(gen, []).append([r.boxes_per_image, r.coverage_050, r.mabo] + r.recall_at_k)
    print(f"{'ranking':8s} {'seeds':>5s} {'boxes/img':>9s} {'cov@0.5':>7s} {'MABO':>6s} "
          + " ".join(f"{'R@' + str(k):>13s}" for k in ks))
    for gen, values in rows.items():
        v = np.array(values)
        mean, sd = v.mean(0), v.std(0)
        print(f"{gen:8s} {len(v):5d} {mean[0]:9.1f} {mean[1]:7.4f} {mean[2]:6.4f} "
              + " ".join(f"{m:.4f}+-{d:.4f}" for m, d in zip(mean[3:], sd[3:])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder of images (searched recursively for .JPEG/.jpg/.png)")
    p.add_argument("--images", type=int, default=60, help="how many images (sorted by name)")
    p.add_argument("--repeats", type=int, default=3, help="calls per image after the reference call")
    p.add_argument("--ranking", choices=RANKINGS, default="seeded", help="SelectiveSearch(ranking=...)")
    p.add_argument("--resize-width", type=int, default=None, help="segmentation width (default: the image's own)")
    p.add_argument("--onnxruntime", "--import-onnxruntime", action="store_true",
                   help="import onnxruntime and keep a session running on another thread during the calls")
    p.add_argument("--rand-thread", action="store_true", help="keep a thread calling C's rand() during the calls")
    p.add_argument("--compare", action="store_true", help="also compare box sets and time with ranking=opencv")
    p.add_argument("--coco", type=Path, help="with --compare: a COCO instances file of the folder's images (recall)")
    p.add_argument("--seeds", type=int, default=1, help="with --coco: recall over seeds 0..N-1 of both generators")
    args = p.parse_args()
    stop = threading.Event()
    if args.onnxruntime:
        onnxruntime_session_thread(stop)
    if args.rand_thread:
        rand_thread(stop)
    cv2.setNumThreads(1)
    records = None
    if args.coco is not None:
        from detect.data.coco import read_coco
        records = read_coco(args.coco, args.folder).records[:args.images]
        paths = [Path(r.path) for r in records]
    else:
        paths = sorted(q for q in args.folder.rglob("*") if q.suffix.lower() in (".jpeg", ".jpg", ".png"))
        paths = paths[:args.images]
    if not paths:
        sys.exit(f"{args.folder}: no images")
    ss = SelectiveSearch(mode="rcnn_fast", superpixel_scale=2.0, resize_width=args.resize_width, min_box_size=20,
                         seed=0, ranking=args.ranking)
    images = [read_image(q) for q in paths]
    reference = [ss(im).boxes for im in images]
    changed = []
    for _ in range(args.repeats):
        for i, im in enumerate(images):
            boxes = ss(im).boxes
            if not np.array_equal(boxes, reference[i]):
                same_set = {tuple(b) for b in boxes} == {tuple(b) for b in reference[i]}
                changed.append((paths[i].name, "same boxes, other order" if same_set else "other boxes"))
    print(f"ranking={args.ranking}; onnxruntime session running: {args.onnxruntime}; rand() thread: "
          f"{args.rand_thread}; {len(images)} images x {args.repeats} repeats; "
          f"{len(changed)} calls gave another order than the first")
    for name, what in changed:
        print(f"  {name}: {what}")
    if args.compare:
        compare(images, [q.name for q in paths], ss, records, args.seeds)
    stop.set()


if __name__ == "__main__":
    main()
