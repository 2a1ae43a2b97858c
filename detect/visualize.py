"""Drawing detections on an image (OpenCV) and writing the picture as PNG, atomically."""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from detect.io import atomic_open

__all__ = ["class_colour", "draw_detections", "write_png"]


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright RGB colour per class label, spread around the hue circle (golden-ratio steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str], thickness: int | None = None) -> np.ndarray:
    """A copy of ``image: ndarray[H, W, 3] uint8`` RGB with each box and ``"<class> <score>"`` drawn.

    boxes: ndarray[K, 4] xyxy pixels; scores: ndarray[K]; labels: ndarray[K] int (0-based into class_names).
    Boxes are drawn lowest score first, so the best ones end up on top.
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    thickness = thickness or max(1, round(min(height, width) / 300))
    scale = max(0.35, min(height, width) / 900)
    for k in np.argsort(np.asarray(scores), kind="stable"):
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[k])
        colour = class_colour(int(labels[k]))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = f"{class_names[int(labels[k])]} {float(scores[k]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, height - base - 1)
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), colour, cv2.FILLED)
        cv2.putText(out, text, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write ``image: ndarray[H, W, 3] uint8`` RGB as a PNG file, atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    with atomic_open(path, "wb") as f:
        f.write(data.tobytes())
