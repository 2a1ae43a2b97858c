"""Region-scoring throughput: the detector's warp + ensemble path against the bare GoogLeNet forward.

    .venv/bin/python benchmarks/bench_region.py --batches 3 --batch-size 32 --threads 2

Paper network (width 1.0, 201 outputs, LRN, 5x5), 224 crops with 16 px context, one synthetic
500x375 image with ~1,400 random proposals. Both paths run the same number of batches of the same
size, interleaved so that load changes on a shared machine hit both alike; seconds per image for
1 and 6 members are extrapolated from the measured per-batch times (stated in the output).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from detect.classes import ClassList
from detect.models.googlenet import GoogLeNet
from detect.pipeline import Detector
from detect.backends import TorchScorer


def _proposals(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    xy = rng.uniform(0, [width - 20, height - 20], (n, 2))
    wh = rng.uniform(20, [width, height], (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=3, help="timed batches per path (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per forward pass")
    p.add_argument("--proposals", type=int, default=1400, help="proposals per image for the s/image estimate")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    classes = ClassList.from_names([f"c{i}" for i in range(200)])
    member = GoogLeNet(num_classes=201, aux_logits=False).eval()
    scorer = TorchScorer(member, args.device, amp="none", channels_last=args.channels_last)
    detector = Detector(None, [scorer], classes, crop_size=224, context=16, batch_size=args.batch_size)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    boxes = _proposals(rng, args.batch_size * (args.batches + 1), 500, 375)
    crops = torch.randn(args.batch_size, 3, 224, 224, device=detector.device)
    if args.channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    model = scorer.model
    sync = torch.cuda.synchronize if detector.device.type == "cuda" else (lambda: None)

    def bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            model(crops).softmax(1)
        sync()
        return time.perf_counter() - t

    def pipeline(k: int) -> float:
        t = time.perf_counter()
        detector.score(image, boxes[k * args.batch_size:(k + 1) * args.batch_size])
        sync()
        return time.perf_counter() - t

    bare(), pipeline(0)  # warm-up
    t_bare, t_pipe = [], []
    for k in range(args.batches):
        t_bare.append(bare())
        t_pipe.append(pipeline(k + 1))
    b, q = args.batch_size / np.median(t_bare), args.batch_size / np.median(t_pipe)
    n_batches = math.ceil(args.proposals / args.batch_size)
    warp_t = []
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().to(detector.device)
    from detect.region import warp_regions
    for k in range(args.batches):
        t = time.perf_counter()
        warp_regions(tensor, torch.from_numpy(boxes[:args.batch_size]).to(detector.device), 224, 16)
        sync()
        warp_t.append(time.perf_counter() - t)
    print(f"device {detector.device}, threads {args.threads}, batch {args.batch_size}, {args.batches} timed batches "
          f"per path, channels_last={args.channels_last}")
    print(f"bare GoogLeNet forward+softmax: {b:8.1f} crops/s (median batch {np.median(t_bare):.3f} s)")
    print(f"pipeline (warp + ensemble):     {q:8.1f} crops/s (median batch {np.median(t_pipe):.3f} s)")
    print(f"warp alone:                     {args.batch_size / np.median(warp_t):8.1f} crops/s")
    print(f"ratio pipeline / bare: {q / b:.3f}")
    per_member = n_batches * float(np.median(t_pipe))
    print(f"extrapolated s/image at {args.proposals} proposals ({n_batches} batches): "
          f"1 member {per_member:.1f} s, 6 members {6 * per_member:.1f} s "
          f"(6 x the measured single-member batch time)")


if __name__ == "__main__":
    main()
