"""BVLC GoogLeNet import: time to load a full-size weights file, and equality with Caffe's rules.

Writes BVLC-sized files with BVLC's layer names and random weights (the .caffemodel in both encodings,
53.5 MB like the released file, and an ONNX-zoo-style .onnx), then
- import time: median seconds of ``load_pretrained`` into ``GoogLeNet()`` for each file, against the
  same 128 tensors saved as our own checkpoint (``torch.save``) and loaded the same way, timed
  round-robin in one run;
- forward equality: our float32 network on the imported weights against the float64 reference
  forward of BVLC's train_val.prototxt with Caffe's layer rules (tests/caffe_reference.py), max
  |difference| / max |reference| at the logits and both aux heads, on ``--images`` 224x224 images.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bvlc.py [--images 4] [--repeats 5]

Needs ../shared/data/bvlc_googlenet (BVLC's prototxts and caffe.proto). Figures: benchmarks/bvlc.md.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detect.io import atomic_torch_save
from detect.models.googlenet import GoogLeNet
from detect.models.weights import load_pretrained
from tests.caffe_reference import (bvlc_input, caffe_schema, input_mean, phase_test_layers, read_prototxt,
                                   reference_forward, write_caffemodel, write_onnx)

OUTPUTS = ("loss3/classifier", "loss1/classifier", "loss2/classifier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "bvlc_googlenet"))
    parser.add_argument("--images", type=int, default=4, help="224x224 test images (random pixels)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loads of each file (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("detect.models.weights").setLevel(logging.ERROR)  # the random files' sha1 warnings

    d = Path(args.data)
    schema = caffe_schema(d / "caffe.proto")
    train_val, deploy = read_prototxt(d / "train_val.prototxt", schema), read_prototxt(d / "deploy.prototxt", schema)
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
    weights: dict = {}
    start = time.perf_counter()
    blobs = reference_forward(phase_test_layers(train_val), weights, bvlc_input(images, input_mean(train_val)), rng)
    print(f"reference forward (float64, {args.images} images): {time.perf_counter() - start:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"caffemodel, layer encoding": tmp / "new.caffemodel", "caffemodel, V1 layers encoding": tmp / "v1.caffemodel",
                 "onnx (zoo naming, no aux heads)": tmp / "zoo.onnx", "our checkpoint (torch.save), reference": tmp / "ours.pt"}
        write_caffemodel(files["caffemodel, layer encoding"], train_val, weights, schema, "layer")
        write_caffemodel(files["caffemodel, V1 layers encoding"], train_val, weights, schema, "layers")
        write_onnx(files["onnx (zoo naming, no aux heads)"], phase_test_layers(deploy), weights)
        model = GoogLeNet(init_weights=False)
        load_pretrained(model, files["caffemodel, layer encoding"])
        atomic_torch_save({"model_kwargs": model.model_kwargs, "model_state": model.state_dict()},
                          files["our checkpoint (torch.save), reference"])

        times = {name: [] for name in files}
        for _ in range(args.repeats):
            for name, path in files.items():
                target = GoogLeNet(init_weights=False)
                start = time.perf_counter()
                load_pretrained(target, path)
                times[name].append(time.perf_counter() - start)
        ref_time = statistics.median(times["our checkpoint (torch.save), reference"])
        print(f"\n{'file':<42} {'MB':>6} {'load s (median)':>16} {'x our checkpoint':>17}")
        for name, path in files.items():
            t = statistics.median(times[name])
            print(f"{name:<42} {path.stat().st_size / 1e6:>6.1f} {t:>16.3f} {t / ref_time:>17.2f}")

        print(f"\nforward equality, float32 ours vs float64 Caffe-rules reference, {args.images} images at 224x224"
              " (max |diff| / max |ref|):")
        for name in ("caffemodel, layer encoding", "caffemodel, V1 layers encoding", "onnx (zoo naming, no aux heads)"):
            model = GoogLeNet(init_weights=False)
            load_pretrained(model, files[name])
            model.train()
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
            with torch.no_grad():
                out = model(model.input_convention.normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
            figures = []
            for key, o in zip(OUTPUTS, out):
                if name.startswith("onnx") and key != "loss3/classifier":
                    continue  # the ONNX file has no aux heads
                rel = float((o.double() - blobs[key]).abs().max() / blobs[key].abs().max())
                figures.append(f"{key} {rel:.2e}")
            print(f"  {name}: " + ", ".join(figures))


if __name__ == "__main__":
    main()
