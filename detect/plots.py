"""Every figure the tools write: precision-recall curves of an evaluation (Pillow), recall curves of
proposals (matplotlib), and detections drawn on an image (OpenCV); all written atomically.

The PR curves, which ``tools/eval_map.py`` draws on every run, are drawn with Pillow: a matplotlib figure
costs more CPU than scoring a submission (``benchmarks/evaluation.md``), and the figure is simple. OpenCV
and matplotlib are imported by the functions that use them, so the evaluation path loads neither.
"""
from __future__ import annotations

import colorsys
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from detect.io import atomic_open

log = logging.getLogger(__name__)

__all__ = ["save_pr_curves", "plot_recall_curves", "draw_detections", "write_png"]

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))  # the "tab10" palette
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _panel(draw, image, box, title: str, curves: list, fonts) -> None:
    """One axes in ``box = (x0, y0, x1, y1)`` pixels: grid, ticks, labels, curves, legend."""
    from PIL import Image, ImageDraw

    small, normal = fonts
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 52, x1 - 12, y0 + 28, y1 - 42
    to_x = lambda r: left + r * (right - left)  # noqa: E731
    to_y = lambda p: bottom - p / 1.02 * (bottom - top)  # noqa: E731
    for t in TICKS:
        draw.line([(to_x(t), top), (to_x(t), bottom)], fill=(225, 225, 225))
        draw.line([(left, to_y(t)), (right, to_y(t))], fill=(225, 225, 225))
        draw.text((to_x(t), bottom + 4), f"{t:.1f}", fill="black", font=small, anchor="mt")
        draw.text((left - 5, to_y(t)), f"{t:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, y0 + 6), title, fill="black", font=normal, anchor="mt")
    draw.text(((left + right) / 2, bottom + 22), "recall", fill="black", font=normal, anchor="mt")
    label = Image.new("RGB", (80, 18), "white")
    ImageDraw.Draw(label).text((label.width / 2, label.height / 2), "precision", fill="black", font=normal, anchor="mm")
    label = label.rotate(90, expand=True)
    image.paste(label, (x0 + 2, (top + bottom - label.height) // 2))
    for k, (name, rec, prec) in enumerate(curves):
        points = [(to_x(r), to_y(p)) for r, p in zip(rec.tolist(), prec.tolist())]
        if len(points) > 1:
            draw.line(points, fill=COLORS[k % len(COLORS)], width=2, joint="curve")
    line_h = 15
    for k, (name, _, _) in enumerate(curves):  # legend, lower left
        y = bottom - (len(curves) - k) * line_h - 4
        draw.line([(left + 8, y + line_h / 2), (left + 28, y + line_h / 2)], fill=COLORS[k % len(COLORS)], width=3)
        draw.text((left + 33, y + line_h / 2), name, fill="black", font=small, anchor="lm")


def save_pr_curves(result, path: str | Path, best: int = 4, worst: int = 4) -> Path:
    """Write a 1000 x 450 PNG with two panels: the PR curves of the ``best`` and the ``worst`` classes by AP.

    ``result``: a ``detect.evaluation.EvalResult`` (classes without ground truth are left out); each
    curve starts at recall 0 with its first precision. Returns the path written (atomically)."""
    from PIL import Image, ImageDraw

    width, height = 1000, 450
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    fonts = (_font(11), _font(13))
    ranked = [c for c in result.ranked_classes() if not np.isnan(result.ap[c])]
    for k, (title, classes) in enumerate((("best", ranked[:best]), ("worst", ranked[::-1][:worst]))):
        curves = []
        for c in classes:
            rec, prec = result.recall[c], result.precision[c]
            curves.append((f"{result.class_names[c]} ({100 * result.ap[c]:.1f})", np.r_[0.0, rec],
                           np.r_[prec[0] if len(prec) else 0.0, prec]))
        box = (k * width // 2, 0, (k + 1) * width // 2, height)
        _panel(draw, image, box, f"{title} {len(classes)} classes ({result.rules} rules, AP %)", curves, fonts)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    log.info("wrote %s", path)
    return path


def plot_recall_curves(results: dict, path, title: str = "") -> None:
    """Recall at IoU 0.5 (solid) and at the ILSVRC threshold (dashed) against the number of proposals, PNG.

    results: ``{method name: proposals.recall.ProposalRecall}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        line, = ax.plot(r.ks, r.recall_at_k, marker="o", label=f"{name} (IoU 0.5)")
        ax.plot(r.ks, r.recall_ilsvrc_at_k, linestyle="--", color=line.get_color(), label=f"{name} (ILSVRC thr.)")
    ax.set_xscale("log")
    ax.set_xlabel("number of proposals (first k)")
    ax.set_ylabel("recall of ground-truth boxes")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str]) -> np.ndarray:
    """A copy of ``image: ndarray[H, W, 3] uint8`` RGB with each box and ``"<class> <score>"`` drawn.

    boxes: ndarray[K, 4] xyxy pixels; scores: ndarray[K]; labels: ndarray[K] int (0-based into class_names).
    Drawn lowest score first (the best on top), each in its class's colour (golden-ratio hue steps).
    """
    import cv2

    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    scale = max(0.35, min(height, width) / 900)
    for k in np.argsort(np.asarray(scores), kind="stable"):
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[k])
        hue = (int(labels[k]) * 0.618033988749895) % 1.0
        colour = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = f"{class_names[int(labels[k])]} {float(scores[k]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, height - base - 1)
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), colour, cv2.FILLED)
        cv2.putText(out, text, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write ``image: ndarray[H, W, 3] uint8`` RGB as a PNG file, atomically."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    with atomic_open(path, "wb") as f:
        f.write(data.tobytes())
