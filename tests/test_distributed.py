"""Distributed set-up and DDP training on CPU (gloo) with torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from detect.distributed import all_reduce_sum, resolve_device, setup
from detect.io import load_checkpoint

# One SGD step of the paper network (no batch norm, dropout 0) on a fixed global batch of 4 images:
# 1 process with batch 4, or 2 processes with batch 2 each (DistributedSampler, no shuffle).
STEP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from detect import distributed
    from detect.engine import TrainSettings, fit, seed_everything
    from detect.classify import ClassificationLoss
    from detect.models.googlenet import GoogLeNet
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    seed_everything(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = GoogLeNet(num_classes=5, width=0.125, dropout=0.0, aux_dropout=0.0)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(4, 3, 64, 64, generator=g), torch.tensor([0, 1, 2, 3]))
    sampler = DistributedSampler(data, ctx.world_size, ctx.rank, shuffle=False) if ctx.distributed else None
    loader = DataLoader(data, batch_size=4 // ctx.world_size, sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(model, ClassificationLoss(0.3), loader, opt, None, TrainSettings(1, ema_decay=None), ctx, sys.argv[1])
    distributed.cleanup()
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_single_process_context(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device.type, ctx.distributed) == (0, 1, True, "cpu", False)
    assert all_reduce_sum({"a": 2, "b": 3.5}) == {"a": 2.0, "b": 3.5}
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.slow
def test_ddp_step_equals_single_process_step(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(one)], check=True, env=_env(), timeout=120)
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(two)], check=True, env=_env(), timeout=180)
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a["epoch"] == b["epoch"] == 1
    torch.manual_seed(0)
    from detect.models.googlenet import GoogLeNet
    init = GoogLeNet(num_classes=5, width=0.125, dropout=0.0, aux_dropout=0.0).state_dict()
    moved = 0
    for k, v in a["raw_state"].items():
        assert torch.allclose(v, b["raw_state"][k], atol=1e-5, rtol=1e-4), k
        moved += not torch.allclose(v, init[k])
    assert moved > 10  # the step changed the weights (the comparison is not trivial)
