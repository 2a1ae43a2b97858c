"""CPU threads of a tool process: the ``threads`` setting of conf/common.yaml, applied once at start-up.

``threads: auto`` gives each process of a machine an equal share of the cores it may use, less one
core for its helpers (data-loading workers, the detector's prefetch thread):
``usable cores // LOCAL_WORLD_SIZE - 1`` (torchrun's count of processes on this machine; 1 without
torchrun), at least 1. On a 2-core machine that is 1 thread, which measured no slower than 2 for
training and faster for detection (figures: benchmarks/threads.md). An integer sets the count directly.
It is applied to torch's intra-op pool and to OpenCV's (ONNX Runtime sessions follow torch's count, see
``detect.export.session_options``). Helper processes take 1 thread each: DataLoader workers
(:func:`worker_threads`, torch does the same for its own pool) and proposal workers (``proposals.store``),
since they already run one per core. Idle OpenMP threads wait passively (``import detect`` sets
``OMP_WAIT_POLICY=PASSIVE``, and says why), so a thread count too high for a busy machine costs little.

The setting is applied by :class:`ThreadsCallback`, a Hydra callback that conf/common.yaml registers
for every tool, before the tool's own code runs; a bad value stops the tool with the reason.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

__all__ = ["usable_cores", "resolve_threads", "apply_threads", "worker_threads", "ThreadsCallback"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; the machine's count where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_threads(setting: Any, cores: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """The thread count for ``setting``: ``"auto"`` -> ``max(1, cores // LOCAL_WORLD_SIZE - 1)``, a positive
    integer -> itself. ``cores``/``env`` default to :func:`usable_cores` and ``os.environ``.
    Raises ``ValueError`` naming the setting for anything else."""
    if setting == "auto" or setting is None:
        env = os.environ if env is None else env
        try:
            processes = max(1, int(env.get("LOCAL_WORLD_SIZE", 1)))
        except ValueError:
            processes = 1
        return max(1, (usable_cores() if cores is None else int(cores)) // processes - 1)
    try:
        n = int(setting) if isinstance(setting, (int, str)) and not isinstance(setting, bool) else 0
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"threads={setting!r}: expected auto or a positive integer")
    return n


def apply_threads(setting: Any) -> int:
    """Set torch's and OpenCV's thread counts for ``setting`` (see :func:`resolve_threads`); returns it.

    A library not imported yet is not imported here (the evaluation tools never load torch): its
    environment variable is set instead, which it reads when it loads (``OMP_NUM_THREADS`` for torch's
    OpenMP runtime and MKL, ``OPENCV_FOR_THREADS_NUM`` for OpenCV)."""
    n = resolve_threads(setting)
    os.environ.update(OMP_NUM_THREADS=str(n), OPENCV_FOR_THREADS_NUM=str(n))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)
    return n


def worker_threads(worker_id: int = 0) -> None:
    """``worker_init_fn`` of DataLoaders: one torch and one OpenCV thread per worker process."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


class ThreadsCallback(Callback):
    """Hydra callback: applies the tool config's ``threads`` setting before the tool runs."""

    def on_job_start(self, config=None, **kwargs) -> None:
        setting = config.get("threads", "auto") if config is not None else "auto"
        try:
            n = apply_threads(setting)
        except ValueError as e:  # Hydra turns a callback's exceptions into warnings: stop the tool here
            raise SystemExit(f"error: {e}") from None
        log.info("threads: %d (threads=%s; %d usable cores, %s process(es) on this machine)", n, setting,
                 usable_cores(), os.environ.get("LOCAL_WORLD_SIZE", 1))
