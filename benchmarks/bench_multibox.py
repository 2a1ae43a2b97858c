"""Does MultiBox raise proposal coverage? Selective search (2x superpixels) alone against its union with
the top-k MultiBox boxes, on the held-out split of a detection set (e.g. the synthetic world).

Also reported as controls: MultiBox alone, and the k-means priors alone (the boxes an untrained
network would give, scaled to each image), alone and in union with selective search. Several
checkpoints can be compared in one run (selective search is computed once; the priors of the first
checkpoint are the control).

    python benchmarks/bench_multibox.py --root work/data/synthetic_det --checkpoint work/multibox/checkpoint.pt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from detect.data.ilsvrc import read_ilsvrc_det
from detect.data.images import read_image
from detect.io import load_checkpoint
from proposals.merge import union_boxes
from proposals.multibox import MultiBoxProposer
from proposals.recall import proposal_recall
from proposals.selective_search import SelectiveSearch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="detection set in the ILSVRC 2015+ layout")
    ap.add_argument("--split", default="val")
    ap.add_argument("--checkpoint", required=True, nargs="+", help="tools/train_multibox.py checkpoint(s)")
    ap.add_argument("--top-k", type=int, default=200, help="MultiBox boxes added per image")
    ap.add_argument("--superpixel-scale", type=float, default=2.0, help="selective search k multiplier")
    ap.add_argument("--resize-width", type=int, default=500, help="selective search works at this width (0: original size)")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    data = read_ilsvrc_det(args.root, args.split)
    records = data.records[: args.max_images]
    ss = SelectiveSearch(superpixel_scale=args.superpixel_scale, resize_width=args.resize_width or None, num_threads=1)
    nets = {(f"multibox{k}" if len(args.checkpoint) > 1 else "multibox"): MultiBoxProposer(c, top_k=args.top_k, device=args.device)
            for k, c in enumerate(args.checkpoint)}
    for name, path in zip(nets, args.checkpoint):
        print(f"{name}: {path}")
    priors = np.asarray(load_checkpoint(args.checkpoint[0])["priors"], dtype=np.float32)

    names = ["ss", *nets, "priors", *(f"ss+{n}" for n in nets), "ss+priors"]
    methods = {k: [] for k in names}
    gts, keeps, seconds = [], [], {"ss": 0.0, **{n: 0.0 for n in nets}}
    for r in tqdm(records, desc="proposals"):
        image = read_image(r.path)
        h, w = image.shape[:2]
        t = time.perf_counter()
        s = ss(image).boxes
        seconds["ss"] += time.perf_counter() - t
        p = (priors * np.array([w, h, w, h], np.float32))[: args.top_k]
        extras = {"priors": p}
        for name, net in nets.items():
            t = time.perf_counter()
            extras[name] = net(image).boxes
            seconds[name] += time.perf_counter() - t
        methods["ss"].append(s)
        for name, extra in extras.items():
            methods[name].append(extra)
            both = np.concatenate([s, extra])
            methods[f"ss+{name}"].append(both[union_boxes([s, extra])])
        gts.append(r.boxes)
        keeps.append(~r.ignore)

    n = len(records)
    print(f"{args.root} {args.split}: {n} images, {sum(int(k.sum()) for k in keeps)} ground-truth boxes")
    print("| method | boxes/image | coverage@0.5 | coverage@0.7 | coverage@ILSVRC thr | MABO |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, props in methods.items():
        r = proposal_recall(gts, props, keeps, ks=(args.top_k,))
        strict = proposal_recall(gts, props, keeps, ks=(args.top_k,), iou_threshold=0.7).coverage_050
        print(f"| {name} | {r.boxes_per_image:.1f} | {r.coverage_050:.4f} | {strict:.4f} | {r.coverage_ilsvrc:.4f} | {r.mabo:.4f} |")
    print("s/image: " + ", ".join(f"{k} {v / n:.3f}" for k, v in seconds.items()) + f" ({args.device})")


if __name__ == "__main__":
    main()
