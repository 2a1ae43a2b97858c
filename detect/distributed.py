"""Process-group set-up for one process or many (``torchrun``, one node or several), and small helpers.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup` joins that group (``nccl`` on CUDA with the local GPU, ``gloo`` on CPU).
Without them it returns a single-process context. Every helper works in both cases.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = ["DistributedContext", "setup", "cleanup", "resolve_device", "is_distributed", "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``;
    ``ValueError`` when CUDA is asked for but absent."""
    device = str(device).lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if device == "cuda":
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
    return torch.device(device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(device: str | torch.device = "auto") -> DistributedContext:
    """The context of this process, as the module docstring says. device: ``auto`` | ``cpu`` | ``cuda`` |
    ``cuda:N`` (``cuda``: the GPU of ``LOCAL_RANK``)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not is_distributed():
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        log.info("rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, dev, backend)
        return DistributedContext(rank, world_size, local_rank, dev, rank == 0)
    return DistributedContext(0, 1, 0, resolve_device(device, 0), True)


def cleanup() -> None:
    """Leave the process group (no-op for a single process)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum each value over all processes (e.g. correct counts and sample counts); returns plain floats."""
    if not is_distributed() or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}
