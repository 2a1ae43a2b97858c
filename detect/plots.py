"""Precision-recall curve figures for an evaluation result (matplotlib, Agg canvas, imported lazily)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from detect.io import atomic_open

log = logging.getLogger(__name__)

__all__ = ["save_pr_curves"]


def save_pr_curves(result, path: str | Path, best: int = 4, worst: int = 4, dpi: int = 100) -> Path:
    """Write a PNG with two panels: the PR curves of the ``best`` and the ``worst`` classes by AP.

    ``result``: a ``detect.evaluation.EvalResult`` (classes without ground truth are left out).
    Returns the path written (atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = [c for c in result.ranked_classes() if not np.isnan(result.ap[c])]
    groups = [("best", ranked[:best]), ("worst", ranked[::-1][:worst])]
    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    for k, (title, classes) in enumerate(groups):
        ax = fig.add_subplot(1, 2, k + 1)
        for c in classes:
            rec, prec = result.recall[c], result.precision[c]
            label = f"{result.class_names[c]} ({100 * result.ap[c]:.1f})"
            ax.plot(np.concatenate([[0.0], rec]), np.concatenate([[prec[0] if len(prec) else 0.0], prec]), label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{title} {len(classes)} classes ({result.rules} rules, AP %)")
        ax.grid(alpha=0.3)
        if classes:
            ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    log.info("wrote %s", path)
    return path
