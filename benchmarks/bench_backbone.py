"""Backbone throughput: our paper GoogLeNet, our torchvision-compatible variant, torchvision's googlenet.

Inference: crops/s of a batch at 224x224 in eval mode under torch.inference_mode, channels-last,
after warm-up, median of the timed runs; the models are timed round-robin (one batch each per
round) so that load changes on a shared machine do not favour one of them. Training: images/s of forward + backward + SGD step
(aux losses weighted 0.3 as in the paper), by default of the paper network only. Results are recorded in benchmarks/backbone.md.

    .venv/bin/python benchmarks/bench_backbone.py                      # CPU defaults (~2-3 minutes)
    .venv/bin/python benchmarks/bench_backbone.py --threads 1 --clock process --batch 16 --iters 9 --train-batch 0
    .venv/bin/python benchmarks/bench_backbone.py --device cuda --iters 20 --warmup 5 --train-iters 20 --train-all --amp
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from detect.models.googlenet import GoogLeNet, googlenet_torchvision


def models(num_classes: int) -> dict[str, torch.nn.Module]:
    return {
        "ours, paper (LRN, 5x5)": GoogLeNet(num_classes=num_classes),
        "ours, torchvision-compatible": googlenet_torchvision(num_classes=num_classes),
        "torchvision.models.googlenet": torchvision.models.googlenet(
            weights=None, num_classes=num_classes, aux_logits=True, init_weights=True),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict, device: torch.device, warmup: int, iters: int, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each ``steps[name]()``, timed round-robin (one call of each model
    per round) after ``warmup`` untimed rounds, so that load drift on a shared machine hits all alike.
    ``clock``: wall time, or ``time.process_time`` (CPU seconds of this process) on a shared CPU."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    sync(device)
    times = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            start = clock()
            step()
            sync(device)
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def inference_step(model, batch: int, size: int, device, amp: bool):
    model = model.to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            model(x)

    return step


def training_step(model, batch: int, size: int, device, amp: bool):
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, model.fc.out_features, (batch,), device=device)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = model(x)
            loss = F.cross_entropy(out[0], y) + 0.3 * (F.cross_entropy(out[1], y) + F.cross_entropy(out[2], y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="inference batch size")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch size (0: skip training)")
    parser.add_argument("--size", type=int, default=224, help="crop size")
    parser.add_argument("--iters", type=int, default=3, help="timed runs (the median is reported)")
    parser.add_argument("--train-iters", type=int, default=2, help="timed training steps per model")
    parser.add_argument("--train-all", action="store_true", help="time training of all three models (default: the paper one)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU seconds of this process (with --threads 1, robust to other jobs on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
          + f", amp {args.amp}, batch {args.batch}, train batch {args.train_batch}, {args.size}x{args.size}, "
          f"warmup {args.warmup}, median of {args.iters} (training {args.train_iters}), {args.clock} clock")

    nets = models(1000)
    seconds = time_interleaved({name: inference_step(m, args.batch, args.size, device, args.amp)
                                for name, m in nets.items()}, device, args.warmup, args.iters, clock)
    rate = {name: args.batch / s for name, s in seconds.items()}
    ref = rate["torchvision.models.googlenet"]
    print("\n| inference (eval, channels-last) | crops/s | ratio to torchvision |\n|---|---:|---:|")
    for name, r in rate.items():
        print(f"| {name} | {r:.1f} | {r / ref:.3f} |")

    if args.train_batch:
        names = list(nets) if args.train_all else ["ours, paper (LRN, 5x5)"]
        seconds = time_interleaved({n: training_step(nets[n], args.train_batch, args.size, device, args.amp)
                                    for n in names}, device, args.warmup, args.train_iters, clock)
        print("\n| training (fwd + bwd + SGD, aux heads) | images/s |\n|---|---:|")
        for name, s in seconds.items():
            print(f"| {name} | {args.train_batch / s:.1f} |")


if __name__ == "__main__":
    main()
