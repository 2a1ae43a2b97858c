"""Training throughput (images/s) of GoogLeNet through detect.engine.fit on random tensors.

    .venv/bin/python benchmarks/bench_train.py --variant small --variant full --crop 224 --batch 8 --steps 6

Measures the full step (forward with aux heads, loss, backward, SGD, Polyak update) over ``--steps``
steps after ``--warmup`` steps; data loading is excluded (the batches are in memory).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from detect.distributed import setup
from detect.engine import TrainSettings, fit
from detect.classify import ClassificationLoss
from detect.models.googlenet import GoogLeNet

VARIANTS = {
    "full": dict(),                                  # Table 1 of the paper (conf/model/googlenet.yaml)
    "small": dict(batch_norm=True, width=0.25),      # conf/model/googlenet_small.yaml
    "tiny": dict(batch_norm=True, width=0.125),      # the tests' size
}


def measure(variant: str, crop: int, batch: int, steps: int, warmup: int, device: str, tmp: str) -> float:
    ctx = setup(device)
    model = GoogLeNet(num_classes=1000, **VARIANTS[variant])
    n = batch * (warmup + steps + 1)  # one epoch: no checkpoint write inside the timed span
    data = TensorDataset(torch.randn(n, 3, crop, crop), torch.randint(0, 1000, (n,)))
    loader = DataLoader(data, batch_size=batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = ClassificationLoss(0.3)
    times = []

    def timed(m, b, d):
        times.append(time.perf_counter())
        return loss(m, b, d)

    fit(model, timed, loader, opt, None, TrainSettings(1, ema_decay=0.999, resume=False), ctx, f"{tmp}/{variant}.pt")
    span = times[-1] - times[warmup]  # start of step `warmup` to start of the last step
    return batch * steps / span


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tmp", default="/tmp/bench_train")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for v in args.variant or ["small", "full"]:
        ips = measure(v, args.crop, args.batch, args.steps, args.warmup, args.device, args.tmp)
        print(f"{v:6s} crop {args.crop} batch {args.batch} device {args.device}: {ips:.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
