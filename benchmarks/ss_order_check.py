"""Is selective search's box order the same from call to call in one process? (benchmarks/proposals.md)

``ranking="opencv"`` lets OpenCV rank the regions with C's ``rand()`` after ``srand(seed)``; anything
else in the process that draws from ``rand()`` meanwhile (the threads that ``onnxruntime`` starts)
changes the order, never the set of boxes. ``ranking="seeded"`` (the default) ranks with a numpy
generator of its own. This runs ``SelectiveSearch`` (the paper's 2x setting) over a folder's images once
for reference and then ``--repeats`` more times, optionally with onnxruntime imported and a session
running on another thread meanwhile (``--onnxruntime``) or a thread calling ``rand()`` in a loop
(``--rand-thread``, the same disturbance made certain), and prints the images whose order changed:

    .venv/bin/python benchmarks/ss_order_check.py work/demo/data/synthetic_det/Data/DET/train --onnxruntime
    .venv/bin/python benchmarks/ss_order_check.py work/demo/data/synthetic_det/Data/DET/train --onnxruntime --ranking opencv

``--compare`` also runs ``ranking="opencv"`` once per image, prints whether each image's box set is the
same and the seconds per image of both rankings (one OpenCV thread); with ``--coco ANNOTATIONS`` the
images are that COCO file's first ``--images`` (the folder holds them) and it prints both rankings'
proposal recall, where order counts through the first k boxes:

    .venv/bin/python benchmarks/ss_order_check.py ../shared/data/coco128/images/train2017 --images 32 \
        --resize-width 500 --repeats 1 --onnxruntime --compare \
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
from proposals.selective_search import RANKINGS, SelectiveSearch  # noqa: E402


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


def compare(images, names, ss: SelectiveSearch, records=None) -> None:
    """Box sets and seconds per image of ``ss`` against the same settings with ``ranking="opencv"``.

    The sets compared are the ranked distinct rectangles on the resized image, before mapping back:
    after mapping back, boxes that round to the same pixels are one box, and which of them stays
    (the first) depends on the order.
    """
    other = SelectiveSearch(**dict(ss.spec_params(), ranking="opencv"))
    seconds = {ss.ranking: 0.0, "opencv": 0.0}
    boxes: dict = {ss.ranking: [], "opencv": []}
    differ = []
    for name, im in zip(names, images):
        got = {}
        for s in (ss, other):
            start = time.perf_counter()
            small, _ = s._resize(im)
            got[s.ranking] = s._seeded_rects(small) if s.ranking == "seeded" else s._opencv_rects(small)
            seconds[s.ranking] += time.perf_counter() - start
            boxes[s.ranking].append(s(im).boxes)
        a, b = ({tuple(x) for x in got[k].tolist()} for k in (ss.ranking, "opencv"))
        if a != b or len(a) != len(got[ss.ranking]):
            differ.append(f"{name}: {len(a - b)} boxes only {ss.ranking}, {len(b - a)} only opencv")
    print(f"box sets: {len(images) - len(differ)} of {len(images)} images the same as ranking=opencv; "
          + "; ".join(f"{k} {v / len(images):.3f} s/image" for k, v in seconds.items()))
    for line in differ:
        print(f"  {line}")
    if records is not None:
        print_recall(records, boxes)


def print_recall(records, boxes: dict) -> None:
    """Proposal recall (COCO boxes, crowd ignored, IoU >= 0.5 and ILSVRC's rule) of each ranking's boxes."""
    from proposals.recall import proposal_recall

    ks = [100, 300, 500, 1000]
    print(f"{'ranking':8s} {'boxes/img':>9s} {'cov@0.5':>8s} {'covILSVRC':>9s} {'MABO':>6s} "
          + " ".join(f"{'R@' + str(k):>6s}" for k in ks))
    for name, found in boxes.items():
        r = proposal_recall([q.boxes for q in records], found, [~q.ignore for q in records], ks=ks, plus_one=False)
        print(f"{name:8s} {r.boxes_per_image:9.1f} {r.coverage_050:8.4f} {r.coverage_ilsvrc:9.4f} {r.mabo:6.4f} "
              + " ".join(f"{v:6.4f}" for v in r.recall_at_k))


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
        compare(images, [q.name for q in paths], ss, records)
    stop.set()


if __name__ == "__main__":
    main()
