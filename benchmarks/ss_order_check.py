"""Is selective search's box order the same from call to call in one process? (benchmarks/refactor.md)

OpenCV ranks the regions by C's ``rand()`` after ``SelectiveSearch`` calls ``srand(seed)``; anything
else in the process that draws from ``rand()`` meanwhile changes the order (never the set of boxes).
This runs ``SelectiveSearch`` (the paper's 2x setting at the image's own size) over a folder's images
once for reference and then ``--repeats`` more times, with or without ``onnxruntime`` imported first,
and prints the images whose order changed:

    .venv/bin/python benchmarks/ss_order_check.py work/demo/data/synthetic_det/Data/DET/train
    .venv/bin/python benchmarks/ss_order_check.py work/demo/data/synthetic_det/Data/DET/train --import-onnxruntime
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from detect.data.images import read_image  # noqa: E402
from proposals.selective_search import SelectiveSearch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder of images (searched recursively for .JPEG/.jpg/.png)")
    p.add_argument("--images", type=int, default=60, help="how many images (sorted by name)")
    p.add_argument("--repeats", type=int, default=3, help="calls per image after the reference call")
    p.add_argument("--import-onnxruntime", action="store_true", help="import onnxruntime before the calls")
    args = p.parse_args()
    if args.import_onnxruntime:
        import onnxruntime  # noqa: F401  (its import starts the threads in question)
    cv2.setNumThreads(1)
    paths = sorted(q for q in args.folder.rglob("*") if q.suffix.lower() in (".jpeg", ".jpg", ".png"))[:args.images]
    if not paths:
        sys.exit(f"{args.folder}: no images")
    ss = SelectiveSearch(mode="rcnn_fast", superpixel_scale=2.0, resize_width=None, min_box_size=20, seed=0)
    images = [read_image(q) for q in paths]
    reference = [ss(im).boxes for im in images]
    changed = []
    for _ in range(args.repeats):
        for i, im in enumerate(images):
            boxes = ss(im).boxes
            if not np.array_equal(boxes, reference[i]):
                same_set = {tuple(b) for b in boxes} == {tuple(b) for b in reference[i]}
                changed.append((paths[i].name, "same boxes, other order" if same_set else "other boxes"))
    print(f"onnxruntime imported: {args.import_onnxruntime}; {len(images)} images x {args.repeats} repeats; "
          f"{len(changed)} calls gave another order than the first")
    for name, what in changed:
        print(f"  {name}: {what}")


if __name__ == "__main__":
    main()
