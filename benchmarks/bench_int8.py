"""int8 (and bf16) region scoring and MultiBox against fp32 on a trained detector (issue 17).

On a detector file with calibration crops (tools/train_region.py step=bundle, e.g. the demo's), for
the fp32 ONNX Runtime export and each int8 variant (``--variants``: the file's recipe with some settings
changed, ``lrn_tolerance=0``; ``file`` = the file's recipe unchanged):

  accuracy  mAP@0.5 (ILSVRC rules) on the detector's val split with its stored proposals, and, on the same
            crops, the agreement with fp32 (top-1 class, |probability| differences); then the same
            agreement per member on real photos' crops (coco128, selective search proposals);
  speed     crops/s of the bare scorers on val crops (fp32 ORT, the int8 variants, eager torch fp32 and
            torch bf16 autocast, with ``--fp32-folded`` fp32 ORT with the foldable LRNs folded), all
            timed in alternating rounds so that load drift hits them alike (median, min-max, and the
            ratio to fp32 per round); seconds per image of the detector (warp + score + NMS, stored
            proposals) with 1 and 6 members, cascade off and on, fp32 against ``--speed-variant`` (and
            bf16 with ``--bf16``), alternating;
  profile   ONNX Runtime's kernel time per operator type, fp32 and ``--speed-variant``;
  multibox  the detector's embedded MultiBox network in fp32 and int8: images/s (alternating), recall
            of the val ground truth at IoU 0.5 by each, and the share of fp32's boxes int8 reproduces;
  paper     speed only: the paper's GoogLeNet (width 1, 201 outputs, 224 crops, random weights) in fp32,
            the int8 variants (calibrated on real val crops at 224) and torch fp32 / bf16, alternating.

The runs of benchmarks/int8.md (its variants ``lrn=int8`` are ``lrn_tolerance=0`` now; ``lrn=float`` and
``format=qoperator`` were removed from the recipe after them):

    .venv/bin/python benchmarks/bench_int8.py --detector work/demo/detector.pt \\
        --variants file lrn_tolerance=0 --bf16 --sections accuracy multibox --cache work/int8/cache
    .venv/bin/python benchmarks/bench_int8.py --detector work/demo/detector.pt --variants file \\
        --fp32-folded --sections speed --rounds 9 --speed-crops 2048 --cache work/int8/cache
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import ops

from bench_scoring import ort_kernel_times  # benchmarks/ is the script's folder
from detect.backends import TorchScorer, make_scorers
from detect.data.ilsvrc import read_ilsvrc_det
from detect.data.images import read_image
from detect.detections import Detections
from detect.evaluation import evaluate
from detect.io import load_checkpoint
from detect.pipeline import Detector, _member_network, _read_detector, per_class_nms
from detect.quantize import Int8Recipe, QuantizationError, cpu_has_int8_dot, crops_to_inputs, fold_lrns, lrn_effects
from detect.scoring import RegionWarp, WarpScorer, usable_boxes
from proposals.store import ProposalStore


BF16 = "torch bf16 autocast (channels-last)"
FOLDED = "fp32 ORT, LRNs folded (not exact)"


def parse_variant(text: str, base: Int8Recipe) -> tuple[str, Int8Recipe]:
    """``file`` or ``key=value,...`` over ``base`` (every setting a number) -> (label, recipe)."""
    if text == "file":
        return f"int8 {base.label()} (file)", base
    recipe = dataclasses.replace(base, **{k: float(v) for k, v in (item.split("=") for item in text.split(","))})
    return f"int8 {recipe.label()}", recipe


def image_crops(image: np.ndarray, boxes: np.ndarray, settings, convention=None) -> torch.Tensor:
    """The crops of the boxes the detector scores, warped in ``convention`` (a member's input convention)."""
    warp = RegionWarp(settings.crop_size, settings.context, settings.batch_size, settings.max_pixels)
    return warp.crops(image, usable_boxes(boxes, image.shape, settings.min_size), convention)


def scores_in_batches(scorer, crops: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([scorer(crops[i:i + batch]) for i in range(0, len(crops), batch)]) if len(crops) else \
        torch.zeros((0, 0))


def agreement(ref: torch.Tensor, out: torch.Tensor) -> str:
    """Top-1 agreement and |probability| differences of ``out`` against ``ref`` (both [N, C] probabilities)."""
    diff = (out - ref).abs()
    top = ref.argmax(1)
    best = (out.gather(1, top[:, None]) - ref.gather(1, top[:, None])).abs()
    return (f"top-1 agree {(out.argmax(1) == top).float().mean():.4f}  |dp| mean {diff.mean():.2e} "
            f"p99 {diff.flatten().quantile(0.99):.2e} max {diff.max():.3f}  |dp(fp32 top)| mean {best.mean():.2e}")


def alternate(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each callable per round, timed in turns for ``rounds`` rounds after one warm-up round
    (alternating, so that the load of a shared machine hits every callable alike; each round starts one
    callable later, so that none always follows the same one, e.g. eager torch's spinning OpenMP threads)."""
    times = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def ratio_to(times: dict[str, list[float]], ref: str, name: str) -> str:
    """Speed of ``name`` relative to ``ref``: median (min-max) over the rounds of ``ref``'s time / ``name``'s
    time in the same round."""
    r = [a / b for a, b in zip(times[ref], times[name])]
    return f"{statistics.median(r):5.2f}x ({min(r):.2f}-{max(r):.2f})"


def rate(count: float, seconds: list[float]) -> str:
    """``count`` per second: median (min-max) over the rounds."""
    per = [count / t for t in seconds]
    return f"{statistics.median(per):8.1f} ({min(per):.1f}-{max(per):.1f})"


def profile(path: Path, crops: torch.Tensor, runs: int = 3) -> None:
    per_op, per_node = ort_kernel_times(path, crops, runs=runs)
    total = sum(per_op.values())
    lrn = sum(us for name, us in per_node.items() if "/lrn" in name)
    print(f"\n{path.name}: ONNX Runtime kernel time by operator ({runs + 1} forwards of {len(crops)} crops), "
          f"{total / (runs + 1) / 1e3:.0f} ms per forward; nodes of the LRNs {100 * lrn / total:.1f} %")
    for op, us in per_op.most_common(10):
        print(f"  {op:24s} {100 * us / total:5.1f} %")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="work/demo/detector.pt")
    ap.add_argument("--data-root", default="work/demo/data/synthetic_det", help="ILSVRC-layout root of the val split")
    ap.add_argument("--val-store", default="work/demo/proposals/synthetic_val_ss2x+multibox200.npz")
    ap.add_argument("--coco", default="../shared/data/coco128/images/train2017", help="real photos (agreement)")
    ap.add_argument("--variants", nargs="*", default=["file"], help="int8 variants: file | key=value,...")
    ap.add_argument("--sections", nargs="*", default=["accuracy", "speed", "profile", "multibox"])
    ap.add_argument("--val-images", type=int, default=100, help="val images for mAP (0 = all)")
    ap.add_argument("--coco-images", type=int, default=32)
    ap.add_argument("--coco-crops", type=int, default=64, help="proposals drawn per photo")
    ap.add_argument("--speed-variant", default="file", help="the int8 variant of the seconds/image and profile figures")
    ap.add_argument("--speed-crops", type=int, default=512, help="crops per timed round (crops/s)")
    ap.add_argument("--batch", type=int, default=128, help="crops per forward (the detector's batch_size)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median), after one warm-up round")
    ap.add_argument("--image-runs", type=int, default=4, help="val images timed per seconds/image setting and round")
    ap.add_argument("--cascade-threshold", type=float, default=0.3)
    ap.add_argument("--cache", default=None, help="folder of the exports (default: a temporary folder)")
    ap.add_argument("--fp32-folded", action="store_true", help="also fp32 ONNX Runtime with the foldable LRNs "
                    "folded (the file's lrn_tolerance), as a reference for the fold's own share of the gain")
    ap.add_argument("--bf16", action="store_true", help="torch bf16 autocast in the accuracy and s/image sections too "
                    "(the bare crops/s section always times it)")
    return ap.parse_args()


@dataclass
class Bench:
    """What every section reads: the detector file's contents, its members (``nets``, one input
    ``convention``), calibration ``inputs``, the int8 ``variants`` ({label: recipe}) and the scorers of
    each label (``members``: fp32, the variants, bf16 and folded fp32 when asked), the val ``records``."""

    args: argparse.Namespace
    contents: dict
    nets: list
    convention: object
    inputs: np.ndarray
    cache: Path
    variants: dict
    speed_label: str
    members: dict = field(default_factory=dict)
    dataset: object = None
    store: object = None
    records: list = field(default_factory=list)

    @property
    def settings(self):
        return self.contents["settings"]

    def scorers(self, label: str) -> list:
        """The members' scorers of ``label``: fp32 ORT, torch bf16, fp32 ORT with LRNs folded or an int8 variant."""
        nets, size = self.nets, self.settings.crop_size
        if label == "fp32":
            return make_scorers(nets, "onnxruntime", "cpu", size, self.cache / "fp32", precision="fp32")
        if label == BF16:
            return [TorchScorer(n, "cpu", amp="bf16") for n in nets]
        if label == FOLDED:  # the LRNs the file's recipe would fold folded in fp32: how much of int8's gain is the fold
            tol = self.contents["calibration"]["recipe"].lrn_tolerance
            folded = [fold_lrns(n, [k for k, e in lrn_effects(n, self.inputs).items() if e <= tol]) for n in nets]
            return make_scorers(folded, "onnxruntime", "cpu", size, self.cache / "fp32_folded", precision="fp32")
        folder = self.cache / label.split()[1].replace(".", "_")
        return make_scorers(nets, "onnxruntime", "cpu", size, folder, precision="int8", calibration=self.inputs,
                            int8_recipe=self.variants[label])


def load_bench(args: argparse.Namespace) -> Bench:
    """The detector file, its members and calibration inputs, the variants asked for and the val split."""
    contents = _read_detector(load_checkpoint(args.detector), args.detector)
    calib = contents["calibration"]
    if calib is None:
        raise SystemExit(f"{args.detector}: no calibration crops; bundle it again (tools/train_region.py step=bundle)")
    nets = [_member_network(e, k, args.detector) for k, e in enumerate(contents["members"])]
    if len({n.input_convention for n in nets}) > 1:
        raise SystemExit(f"{args.detector}: members of several input conventions; this benchmark scores one")
    convention = nets[0].input_convention
    variants = dict(parse_variant(v, calib["recipe"]) for v in args.variants)
    speed_label, speed_recipe = parse_variant(args.speed_variant, calib["recipe"])
    variants.setdefault(speed_label, speed_recipe)
    bench = Bench(args, contents, nets, convention, crops_to_inputs(calib["crops"], convention),
                  Path(args.cache or tempfile.mkdtemp(prefix="bench_int8_")), variants, speed_label)
    bench.dataset = read_ilsvrc_det(args.data_root, "val", classes=Path(args.data_root) / "classes.tsv")
    bench.store = ProposalStore.load(args.val_store)
    bench.records = bench.dataset.records[:args.val_images or None]
    return bench


def make_members(bench: Bench) -> None:
    """``bench.members``: the scorers of fp32, every variant that quantizes (the others dropped), bf16 and folded."""
    args, variants = bench.args, bench.variants
    print(f"{args.detector}: {len(bench.nets)} members, crop {bench.settings.crop_size}, "
          f"{len(bench.inputs)} calibration crops; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"int8 dot products: {cpu_has_int8_dot()}")
    start = time.perf_counter()
    bench.members["fp32"] = bench.scorers("fp32")
    for label in list(variants):
        try:
            bench.members[label] = bench.scorers(label)
        except QuantizationError as e:
            print(f"  {label}: quantization failed ({e})")
            del variants[label]
    for wanted, label in ((args.bf16, BF16), (args.fp32_folded, FOLDED)):
        if wanted:
            bench.members[label] = bench.scorers(label)
    print(f"exports and int8 models ready in {time.perf_counter() - start:.0f} s ({bench.cache})")
    for label in variants:
        meta = json.loads((bench.members[label][0].path.with_suffix(".json")).read_text())
        print(f"  {label}: LRN effects {({k: round(v, 5) for k, v in meta['lrn_effects'].items()})}, "
              f"folded {meta['lrn_folded']}")
    if bench.speed_label not in variants:
        raise SystemExit(f"the speed variant {bench.speed_label} could not be made")


def accuracy_section(bench: Bench) -> None:
    """mAP@0.5 of every label on the val split with stored proposals, and its agreement with fp32."""
    settings, members, records = bench.settings, bench.members, bench.records
    dets, probs = {k: [] for k in members}, {k: [] for k in members}
    warp = RegionWarp(settings.crop_size, settings.context, bench.args.batch, settings.max_pixels)
    region_scorers = {label: WarpScorer(m, warp, settings.cascade_threshold) for label, m in members.items()}
    start = time.perf_counter()
    for r in records:
        image = read_image(r.path)
        boxes = usable_boxes(bench.store.get(r.image_id), image.shape, settings.min_size)
        for label, scorer in region_scorers.items():
            probs[label].append(p := scorer.score(image, boxes))
            b, s, l = per_class_nms(boxes, p, settings.nms_iou, settings.score_threshold, settings.max_per_image)
            dets[label].append(Detections.for_image(r.index, l.numpy(), s.numpy(), b.numpy()))
    print(f"\nsynthetic val, {len(records)} images, stored proposals ({sum(len(p) for p in probs['fp32'])} crops, "
          f"{time.perf_counter() - start:.0f} s), ensemble of {len(bench.nets)} "
          f"(cascade {settings.cascade_threshold}):")
    subset = dataclasses.replace(bench.dataset, records=records)
    ref = torch.cat(probs["fp32"])
    fp32_map = evaluate(subset, Detections.concat(dets["fp32"]), rules="ilsvrc").mean_ap
    for label in members:
        m = evaluate(subset, Detections.concat(dets[label]), rules="ilsvrc").mean_ap
        print(f"  {label:52s} mAP@0.5 {m:.4f} ({100 * (m - fp32_map):+.2f} points)  "
              + ("" if label == "fp32" else agreement(ref, torch.cat(probs[label]))))


def real_photos_section(bench: Bench) -> None:
    """Per member, the agreement of every label with fp32 on crops of selective search proposals of real photos."""
    from proposals.selective_search import SelectiveSearch

    args = bench.args
    photos = sorted(Path(args.coco).glob("*.jpg"))[:args.coco_images]
    if not photos:
        raise SystemExit(f"{args.coco}: no .jpg photos for the real-crop agreement")
    propose = SelectiveSearch(mode="opencv_fast", superpixel_scale=1.0)
    rng = np.random.default_rng(0)
    real = []
    for path in photos:
        image = read_image(path)
        boxes = propose(image).boxes
        boxes = boxes[rng.choice(len(boxes), size=min(args.coco_crops, len(boxes)), replace=False)]
        real.append(image_crops(image, boxes, bench.settings, bench.convention))
    real = torch.cat(real)
    print(f"\nreal photos: {len(real)} crops of selective search proposals on {len(photos)} coco128 images, "
          "per member, against fp32 ORT:")
    for k in range(len(bench.nets)):
        ref = scores_in_batches(bench.members["fp32"][k], real, args.batch).softmax(1)
        for label in bench.members:
            if label != "fp32":
                out = scores_in_batches(bench.members[label][k], real, args.batch).softmax(1)
                print(f"  member {k} {label:52s} {agreement(ref, out)}")


def val_batches(bench: Bench) -> list[torch.Tensor]:
    """About ``--speed-crops`` val crops in batches of ``--batch``."""
    crops = []
    for r in bench.records:
        crops.append(image_crops(read_image(r.path), bench.store.get(r.image_id), bench.settings, bench.convention))
        if sum(len(c) for c in crops) >= bench.args.speed_crops:
            break
    crops = torch.cat(crops)[:bench.args.speed_crops]
    return [crops[i:i + bench.args.batch] for i in range(0, len(crops), bench.args.batch)]


def crops_speed_section(bench: Bench, batches: list[torch.Tensor]) -> None:
    """Crops/s of member 0's bare scorers, every label and eager torch fp32 / bf16, alternating."""
    args, net = bench.args, bench.nets[0]
    runs = {label: (lambda s=scorer_list[0]: [s(b) for b in batches]) for label, scorer_list in bench.members.items()}
    runs["torch fp32 eager (channels-last)"] = lambda s=TorchScorer(net, "cpu", amp="none"): [s(b) for b in batches]
    if not args.bf16:
        runs[BF16] = lambda s=TorchScorer(net, "cpu", amp="bf16"): [s(b) for b in batches]
    times = alternate(runs, args.rounds)
    count = sum(len(b) for b in batches)
    print(f"\nbare scoring, member 0, {count} val crops per round in batches of {args.batch}; "
          f"median (min-max) of {args.rounds} alternating rounds:")
    print(f"  {'':52s} {'crops/s':>22s}  vs fp32 ORT, per round")
    for label, t in times.items():
        print(f"  {label:52s} {rate(count, t)}  {ratio_to(times, 'fp32', label)}")


def image_speed_section(bench: Bench) -> None:
    """Seconds per image of the detector, 1 and 6 members, cascade off and on, fp32 against int8 (and bf16)."""
    args, members, nets, speed_label = bench.args, bench.members, bench.nets, bench.speed_label
    items = [(read_image(r.path), bench.store.get(r.image_id)) for r in bench.records[:args.image_runs]]
    setups, short = {}, {"fp32": "fp32", speed_label: "int8", BF16: "bf16"}
    for label in [x for x in ("fp32", speed_label, BF16) if x in members]:
        for count in (1, 6):
            for cascade in ((None, args.cascade_threshold) if count > 1 else (None,)):
                chosen = [members[label][k % len(nets)] for k in range(count)]
                det = Detector(None, chosen, bench.contents["classes"], bench.settings, cascade_threshold=cascade)
                name = f"{short[label]} members={count}" + (f" cascade {cascade}" if cascade else "")
                setups[name] = lambda d=det: [d.detect(image, boxes) for image, boxes in items]
    image_rounds = max(2, args.rounds // 2)
    times = alternate(setups, image_rounds)
    n = sum(len(b) for _, b in items) / len(items)
    print(f"\nseconds per image (warp + score + NMS), {len(items)} val images of {n:.0f} stored proposals each "
          f"(members beyond the file's {len(nets)} repeat them); median (min-max) of {image_rounds} alternating "
          f"rounds; int8 = {speed_label}, bf16 = {BF16}:")
    for name, t in times.items():
        per = [x / len(items) for x in t]
        ref = "fp32 " + name.split(" ", 1)[1]
        print(f"  {name:32s} {statistics.median(per):7.3f} ({min(per):.3f}-{max(per):.3f}) s/image  "
              f"{ratio_to(times, ref, name)} fp32")


def main() -> None:
    args = parse_args()
    bench = load_bench(args)
    make_members(bench)
    if "accuracy" in args.sections:
        accuracy_section(bench)
        real_photos_section(bench)
    if {"speed", "profile"} & set(args.sections):
        batches = val_batches(bench)
    if "speed" in args.sections:
        crops_speed_section(bench, batches)
        image_speed_section(bench)
    if "profile" in args.sections:
        profile(bench.members["fp32"][0].path, batches[0])
        profile(bench.members[bench.speed_label][0].path, batches[0])
    if "multibox" in args.sections:
        multibox_section(bench.contents, bench.records, bench.variants[bench.speed_label], bench.cache, args)
    if "paper" in args.sections:
        paper_section(bench.records, bench.store, bench.settings, bench.variants, bench.cache, args)


def paper_section(records, store, settings, variants: dict, cache: Path, args) -> None:
    from detect.models.googlenet import GoogLeNet

    torch.manual_seed(0)
    net = GoogLeNet(num_classes=201, aux_logits=False, width=1.0).eval()
    paper = dataclasses.replace(settings, crop_size=224, context=16)
    crops = []
    for r in records:
        crops.append(image_crops(read_image(r.path), store.get(r.image_id), paper))
        if sum(len(c) for c in crops) >= 64 + args.batch:
            break
    crops = torch.cat(crops)
    calibration, batch = crops[:64].numpy(), crops[64:64 + args.batch]
    runs = {}
    for label, recipe in [("fp32", None), *variants.items()]:
        folder = cache / "paper" / ("fp32" if recipe is None else recipe.label().replace(".", "_"))
        try:
            scorer = make_scorers([net], "onnxruntime", "cpu", 224, folder, calibration=calibration, int8_recipe=recipe,
                                  precision="fp32" if recipe is None else "int8")[0]
        except QuantizationError as e:
            print(f"  paper network, {label}: quantization failed ({e})")
            continue
        if recipe is not None:
            meta = json.loads(scorer.path.with_suffix(".json").read_text())
            print(f"  paper network, {label}: LRN effects {({k: round(v, 4) for k, v in meta['lrn_effects'].items()})}")
        runs[label] = lambda s=scorer: s(batch)
    runs["torch fp32 eager (channels-last)"] = lambda s=TorchScorer(net, "cpu", amp="none"): s(batch)
    runs[BF16] = lambda s=TorchScorer(net, "cpu", amp="bf16"): s(batch)
    times = alternate(runs, args.rounds)
    print(f"\npaper GoogLeNet (random weights), {len(batch)} val crops at 224 per round; median (min-max) of "
          f"{args.rounds} alternating rounds:")
    for label, t in times.items():
        print(f"  {label:52s} {rate(len(batch), t)} crops/s  {ratio_to(times, 'fp32', label)} fp32 ORT")


def multibox_section(contents, records, recipe: Int8Recipe, cache: Path, args) -> None:
    from proposals.multibox import MultiBoxProposer

    specs, todo = [], [contents["proposer"]]
    while todo:
        spec = todo.pop()
        if spec is None:
            continue
        todo += spec.get("sources", [])
        if spec["kind"] == "multibox":
            specs.append(spec)
    if not specs or "calibration" not in specs[0]["network"]:
        print("\nmultibox: the detector has no MultiBox network with calibration images")
        return
    network = {**specs[0]["network"], "int8_recipe": dataclasses.asdict(recipe)}
    top_k = int(specs[0]["params"].get("top_k", 200))
    fp32 = MultiBoxProposer(network, top_k=top_k, device="cpu", backend="onnxruntime", onnx_cache=cache / "mb_fp32")
    int8 = MultiBoxProposer(network, top_k=top_k, device="cpu", backend="onnxruntime", onnx_cache=cache / "mb_int8",
                            precision="int8")
    images = [read_image(r.path) for r in records[:50]]
    recall, same = {"fp32": [], "int8": []}, []
    for r, image in zip(records, images):
        a, b = fp32(image), int8(image)
        for label, p in (("fp32", a), ("int8", b)):
            if len(r.boxes):
                iou = ops.box_iou(torch.from_numpy(r.boxes), torch.from_numpy(p.boxes))
                recall[label].append((iou.max(dim=1).values >= 0.5).float().numpy())
        same.append(float((ops.box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).max(dim=1).values >= 0.9)
                          .float().mean()))
    batch = images[:32]
    times = alternate({"fp32": lambda: fp32.propose_batch(batch), "int8": lambda: int8.propose_batch(batch)},
                      max(2, args.rounds // 2))
    print(f"\nMultiBox (top {top_k}, input {fp32.model.input_size}), {len(images)} val images; int8 = {recipe.label()}:")
    for label in ("fp32", "int8"):
        print(f"  {label}: recall of the ground truth at IoU 0.5 {np.concatenate(recall[label]).mean():.4f}, "
              f"{rate(len(batch), times[label])} images/s, {ratio_to(times, 'fp32', label)} fp32")
    print(f"  share of fp32's boxes that int8 reproduces at IoU >= 0.9: {np.mean(same):.4f}")


if __name__ == "__main__":
    main()
