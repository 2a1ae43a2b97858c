"""The train loop: Polyak averaging, checkpoints, resume after a kill, skipped batches; the eval loop."""
from __future__ import annotations

import copy
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detect.distributed import DistributedContext
from detect.engine import TrainSettings, fit, seed_everything
from detect.classify import evaluate_classification, predict_proba
from detect.io import load_checkpoint

CPU = DistributedContext()


def _data(n=48, dim=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


class Net(nn.Module):
    """A small net with dropout (draws RNG every step) and batch norm (buffers to average)."""

    def __init__(self, dim=6, classes=3):
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, classes)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def ce_loss(model, batch, device):
    x, y = batch
    logits = model(x.to(device))
    loss = nn.functional.cross_entropy(logits, y.to(device))
    return loss, {"acc": float((logits.argmax(1) == y.to(device)).float().mean())}


def _run(path, epochs=3, ema=0.9, loss_fn=ce_loss, every=None, resume=True, seed=0, max_steps=None):
    seed_everything(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loader = DataLoader(_data(), batch_size=8, shuffle=True)
    settings = TrainSettings(epochs, ema_decay=ema, resume=resume, checkpoint_every=every, max_steps_per_epoch=max_steps)
    out = fit(model, loss_fn, loader, opt, sched, settings, CPU, path, {"model_kwargs": {"dim": 6}})
    return out, model


def _same(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k


def test_polyak_average_is_ema_of_raw_weights(tmp_path):
    decay = 0.8
    history = []

    def recording_loss(model, batch, device):
        return ce_loss(model, batch, device)

    seed_everything(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=8, shuffle=False)

    # record the raw weights after every optimizer step
    orig_step = opt.step

    def step(*a, **k):
        r = orig_step(*a, **k)
        history.append(copy.deepcopy(model.state_dict()))
        return r

    opt.step = step
    averaged = fit(model, recording_loss, loader, opt, None, TrainSettings(2, ema_decay=decay), CPU, tmp_path / "c.pt")
    assert len(history) == 12
    ema = {k: v.clone().float() for k, v in history[0].items()}
    for h in history[1:]:
        for k in ema:
            ema[k] = decay * ema[k] + (1 - decay) * h[k]
    saved = load_checkpoint(tmp_path / "c.pt")["model_state"]
    floats = [k for k in ema if history[0][k].is_floating_point()]
    assert "bn.running_mean" in floats and "fc1.weight" in floats  # parameters and buffers
    for k in floats:
        assert torch.allclose(saved[k].float(), ema[k], atol=1e-5), k
    _same(saved, averaged.state_dict())
    # the raw weights differ from the average (the test would pass trivially otherwise)
    assert not torch.allclose(history[-1]["fc1.weight"], saved["fc1.weight"])


def test_checkpoint_contents_and_finished_run_returns_at_once(tmp_path):
    path = tmp_path / "c.pt"
    out, _ = _run(path, epochs=2)
    ck = load_checkpoint(path)
    assert ck["epoch"] == 2 and ck["step"] == 0 and ck["model_kwargs"] == {"dim": 6}
    for key in ("optimizer", "scheduler", "raw_state", "averaged_state", "rng"):
        assert ck[key] is not None
    assert ck["scheduler"]["last_epoch"] == 2  # stepped once per epoch
    calls = []

    def never(model, batch, device):
        calls.append(1)
        raise AssertionError("a finished run must not train")

    again, _ = _run(path, epochs=2, loss_fn=never)
    assert not calls
    _same(again.state_dict(), out.state_dict())


class Killed(Exception):
    pass


def test_resume_mid_epoch_reproduces_uninterrupted_run(tmp_path):
    reference, ref_raw = _run(tmp_path / "ref.pt", epochs=3)
    steps = []

    def dying_loss(model, batch, device):
        steps.append(1)
        if len(steps) == 10:  # killed during step 10 (epoch 2, step 4); last checkpoint after step 9
            raise Killed
        return ce_loss(model, batch, device)

    path = tmp_path / "run.pt"
    with pytest.raises(Killed):
        _run(path, epochs=3, loss_fn=dying_loss, every=3)
    ck = load_checkpoint(path)
    assert (ck["epoch"], ck["step"]) == (1, 3)
    resumed_steps = []

    def counting_loss(model, batch, device):
        resumed_steps.append(1)
        return ce_loss(model, batch, device)

    resumed, raw = _run(path, epochs=3, loss_fn=counting_loss, every=3)
    assert len(resumed_steps) == 18 - 9  # 6 steps per epoch, 9 done before the kill
    _same(resumed.state_dict(), reference.state_dict(), atol=1e-6)
    _same(raw.state_dict(), ref_raw.state_dict(), atol=1e-6)


def test_a_checkpoint_of_an_unfinished_run_is_not_a_trained_model(tmp_path):
    """What a killed run leaves (mid-epoch, or after an epoch of several) is refused where a trained model
    is expected; the same file once its run has been finished passes."""
    from detect.io import UnfinishedTraining, check_finished

    steps = []

    def dying_loss(model, batch, device):
        steps.append(1)
        if len(steps) == 8:  # killed in epoch 2 step 2; the end-of-epoch-1 checkpoint is on disk
            raise Killed
        return ce_loss(model, batch, device)

    path = tmp_path / "run.pt"
    with pytest.raises(Killed):
        _run(path, epochs=3, loss_fn=dying_loss)
    ck = load_checkpoint(path)
    assert (ck["epoch"], ck["step"], ck["epochs"]) == (1, 0, 3)
    with pytest.raises(UnfinishedTraining, match=r"run\.pt: a training checkpoint saved at the end of epoch 1 of 3"):
        check_finished(ck, path)
    with pytest.raises(UnfinishedTraining, match="epoch 2 step 4"):
        check_finished({**ck, "epoch": 1, "step": 4}, path)
    _run(path, epochs=3)  # resumed to the end
    check_finished(load_checkpoint(path), path)
    check_finished({"model_state": {}}, path)  # weights from elsewhere: not a trainer's checkpoint


def test_max_steps_and_resume_false(tmp_path):
    n = []

    def counting_loss(model, batch, device):
        n.append(1)
        return ce_loss(model, batch, device)

    _run(tmp_path / "c.pt", epochs=2, loss_fn=counting_loss, max_steps=2)
    assert len(n) == 4
    _run(tmp_path / "c.pt", epochs=2, loss_fn=counting_loss, max_steps=2, resume=False)
    assert len(n) == 8


def test_empty_batches_are_skipped(tmp_path):
    batches = [None, (torch.randn(4, 6), torch.tensor([0, 1, 2, 0])), (torch.empty(0, 6), torch.empty(0, dtype=torch.long))]
    seen = []

    def loss(model, batch, device):
        seen.append(len(batch[1]))
        return ce_loss(model, batch, device)

    model = Net()
    fit(model, loss, batches, torch.optim.SGD(model.parameters(), lr=0.1), None, TrainSettings(1, ema_decay=None), CPU,
        tmp_path / "c.pt")
    assert seen == [4]


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from detect.distributed import DistributedContext
    from detect.engine import TrainSettings, fit
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.Linear(512, 3))
    data = TensorDataset(torch.randn(4000, 64), torch.randint(0, 3, (4000,)))
    def loss(m, b, d):
        return nn.functional.cross_entropy(m(b[0]), b[1]), {}
    fit(model, loss, DataLoader(data, batch_size=4), torch.optim.SGD(model.parameters(), lr=0.01), None,
        TrainSettings(100, checkpoint_every=1), DistributedContext(), sys.argv[1])
""")


def test_checkpoint_is_never_partial_after_a_kill(tmp_path):
    path = tmp_path / "c.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert path.exists(), "no checkpoint written"
        time.sleep(0.3)  # checkpoints are being written continuously now: kill in the middle of it
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ck = load_checkpoint(path)  # readable: either the previous or the next checkpoint, never half of one
    assert ck["step"] >= 1 and ck["epoch"] == 0


def test_evaluate_classification_known_answer():
    class Fixed(nn.Module):
        def forward(self, x):  # logits are the input itself
            return x.flatten(1)[:, :6]

    logits = torch.tensor([[9, 8, 7, 6, 5, 0.0]] * 4)
    labels = torch.tensor([0, 1, 4, 5])  # top1 hit, top5 hit, top5 hit, miss
    loader = [(logits[:2], labels[:2]), None, (logits[2:], labels[2:])]
    r = evaluate_classification(Fixed(), loader, "cpu")
    assert r == {"top1": 0.25, "top5": 0.75, "n": 4}


def test_predict_proba_averages_softmax_over_crops():
    class Fixed(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]

    crops = torch.tensor([[[0.0, 0, 10], [0, 10, 0]], [[1, 2, 3], [1, 2, 3]]]).view(2, 2, 3, 1, 1)
    p = predict_proba(Fixed(), crops)
    expect = crops.view(2, 2, 3).softmax(-1).mean(1)
    assert torch.allclose(p, expect)
    assert not torch.allclose(p, crops.view(2, 2, 3).mean(1).softmax(-1))  # not the softmax of mean logits
