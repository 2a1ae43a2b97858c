"""The one train loop (:func:`fit`), shared by every trainer (classification losses and accuracy: :mod:`detect.classify`).

``fit`` wraps the model in DDP when the context is distributed, uses AMP and channels-last on CUDA only,
keeps a Polyak (exponential moving) average of the weights and buffers with
``torch.optim.swa_utils.AveragedModel``, steps the LR scheduler once per epoch, and writes a
checkpoint atomically after every epoch and every ``checkpoint_every`` steps. A step whose loss is not
finite stops the run at once, and weights that are not finite are never written: a diverged run leaves
its last good checkpoint in place (and says which it is). A run killed at any
point resumes from its last checkpoint: the epoch's data order is rebuilt from the RNG state saved at
the start of the epoch, the steps already done are skipped without loading their data, and the RNG
state of the moment of the checkpoint is restored before the next step. With ``num_workers=0`` this
reproduces the uninterrupted run; with worker processes, the data augmentation of the rest of the
epoch is drawn afresh (the order of the samples is still the same).
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.data.records import SkipLog
from detect.distributed import DistributedContext, all_reduce_sum, barrier
from detect.io import (OutputConflict, atomic_torch_save, checkpoint_position as _where, digest, exclusive_lock,
                       file_sha256, load_checkpoint, remove_stale_temps)

log = logging.getLogger(__name__)

__all__ = ["fit", "TrainSettings", "train_one_epoch", "Checkpoint", "ResumePoint", "run_fingerprint", "init_identity",
           "CheckpointMismatch", "NonFiniteLoss", "seed_everything"]

LossFn = Callable[[nn.Module, Any, torch.device], "tuple[torch.Tensor, dict[str, float]]"]


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed + rank``."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG a step may draw from, as tensors and plain values (loadable with ``weights_only``)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **({"loader": generator.get_state()} if generator is not None else {}),
    }


def _set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


class _SkipBatches:
    """The batches of ``inner`` after its first ``n`` (dropped unloaded); ``on_resume`` runs once before the next."""

    def __init__(self, inner: Iterable[list[int]], n: int, on_resume: Callable[[], None] | None):
        self.inner, self.n, self.on_resume = inner, n, on_resume

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.inner)
        for _ in range(self.n):
            next(it, None)
        if self.on_resume is not None:
            self.on_resume()
        yield from it

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.n)


def _iterate_from(loader: Iterable, skip: int, on_resume: Callable[[], None] | None) -> Iterator:
    """Iterate ``loader`` from batch ``skip`` on, calling ``on_resume`` before the first batch kept; for a
    map-style DataLoader the skipped batches are never loaded."""
    if not skip:
        return iter(loader)
    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        return iter(DataLoader(
            loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip, on_resume),
            num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
            prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None))
    log.info("loader is not a map-style DataLoader: loading and dropping %d batches to resume", skip)
    return iter(_SkipBatches(loader, skip, on_resume))


class ResumePoint(NamedTuple):
    """Where a run continues: epochs done, steps done in the current epoch, and the RNG states of the
    epoch's start (rebuilds its data order) and of the checkpoint's moment (None for a fresh run)."""

    epoch: int = 0
    step: int = 0
    epoch_rng: dict | None = None
    step_rng: dict | None = None


class Checkpoint:
    """The whole training state in one file: :meth:`save` writes it atomically (rank 0), :meth:`restore`
    puts it back for an exact resume.

    The file holds ``meta`` (model_kwargs, classes, ``fingerprint``, ``epochs`` planned ...), ``model_state``
    (the averaged weights: the model to use), ``epoch``, ``step`` and the training state (``raw_state``, ``optimizer``,
    ``scheduler``, ``averaged_state``, ``scaler``, ``rng``, ``epoch_rng``)."""

    def __init__(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None,
                 scaler: torch.amp.GradScaler, averaged: AveragedModel | None, generator: torch.Generator | None,
                 meta: dict, ctx: DistributedContext):
        self.path, self.model, self.optimizer, self.scheduler = Path(path), model, optimizer, scheduler
        self.scaler, self.averaged, self.generator, self.meta, self.ctx = scaler, averaged, generator, meta, ctx
        self.last_saved: tuple[int, int] | None = None  # (epoch, step) of this run's latest write

    def restore(self, resume: bool, restart_on_change: bool = False) -> ResumePoint:
        """Load the file when ``resume`` and it exists. A file there that no trainer wrote is refused
        (never overwritten); one written with another ``meta["fingerprint"]`` is not resumed: the run
        stops, or, with ``restart_on_change``, starts from the beginning (its first save replaces it)."""
        if not self.path.exists():
            return ResumePoint()
        state = load_checkpoint(self.path, map_location=self.ctx.device)
        if not isinstance(state, dict) or "raw_state" not in state or "optimizer" not in state:
            raise OutputConflict(f"{self.path}: exists and is not a training checkpoint written by this "
                                 "project's trainers (weights to start from go in init=); not overwritten")
        if not resume:
            return ResumePoint()
        try:
            check_fingerprint(state, self.meta.get("fingerprint"), self.path)
        except CheckpointMismatch as e:
            if not restart_on_change:
                raise
            log.warning("%s; training from the start (restart_on_change=true)", str(e).split("; not resumed")[0])
            return ResumePoint()
        self.model.load_state_dict(state["raw_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        for part, key in ((self.scheduler, "scheduler"), (self.scaler, "scaler"), (self.averaged, "averaged_state")):
            if part is not None and state.get(key):  # (saved as None when the run had none)
                part.load_state_dict(state[key])
        log.info("resuming %s at epoch %d step %d", self.path, state["epoch"], state["step"])
        if state["step"] > 0:  # mid-epoch: the epoch's data order from its start, then the step's RNG
            _set_rng_state(state["epoch_rng"], self.generator)
            return ResumePoint(state["epoch"], state["step"], state["epoch_rng"], state["rng"])
        _set_rng_state(state["rng"], self.generator)
        return ResumePoint(state["epoch"], 0)

    def save(self, epoch: int, step: int, epoch_rng: dict) -> None:
        """Write the state after ``step`` steps of epoch ``epoch`` (0-based; step 0: the epoch is done), unless
        a weight is not finite (``FloatingPointError``; a diverged step of another process arrives through DDP)."""
        if self.ctx.is_main:
            result = self.averaged.module if self.averaged is not None else self.model
            _check_finite_weights({"weights": self.model, "averaged weights": result}, self.path, epoch, step,
                                  self.describe_last())
            atomic_torch_save({
                **self.meta,
                "model_state": result.state_dict(),
                "epoch": epoch, "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "raw_state": self.model.state_dict(),
                "averaged_state": self.averaged.state_dict() if self.averaged is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": _rng_state(self.generator), "epoch_rng": epoch_rng,
            }, self.path)
        self.last_saved = (epoch, step)
        barrier()

    def describe_last(self) -> str:
        """Which state the file at ``path`` holds, for error messages."""
        if self.last_saved is None:
            kept = " (an earlier one is kept)" if self.path.exists() else ""
            return f"{self.path}: no checkpoint written by this run{kept}"
        return f"{self.path} keeps the last good state ({_where(*self.last_saved)})"


def _check_finite_weights(models: dict[str, nn.Module], path: Path, epoch: int, step: int, kept: str) -> None:
    """Raise ``FloatingPointError`` naming the first tensors of ``models`` ({what: module}) with a NaN or
    infinite value, before anything is written (one device sync for all tensors)."""
    named = [(what, name, t) for what, m in models.items() for name, t in m.state_dict().items()
             if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, _, t in named]).tolist() if named else []
    bad = [f"{what}: {name}" for (what, name, _), ok in zip(named, finite) if not ok]
    if bad:
        raise FloatingPointError(f"{path}: not written at {_where(epoch, step)}: non-finite values in "
                                 f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} (training diverged); {kept}")


@dataclass(frozen=True)
class TrainSettings:
    """The training loop's settings, one block for every trainer, checked when built: conf/training.yaml says
    what each means (None is its null, for ``max_skipped_fraction`` no limit; ``restart_on_change``: the rule of
    :meth:`Checkpoint.restore`)."""

    epochs: int
    max_steps_per_epoch: int | None = None
    checkpoint_every: int | None = None
    ema_decay: float | None = 0.999
    amp: bool = True
    channels_last: bool = True
    grad_clip: float | None = None
    resume: bool = True
    restart_on_change: bool = False
    max_skipped_fraction: float | None = 0.1

    def __post_init__(self):
        checks = [(self.epochs >= 0, "epochs >= 0"),
                  (self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch >= 1"),
                  (self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every >= 1"),
                  (self.ema_decay is None or 0 < self.ema_decay < 1, "0 < ema_decay < 1"),
                  (self.grad_clip is None or self.grad_clip > 0, "grad_clip > 0"),
                  (self.max_skipped_fraction is None or 0 <= self.max_skipped_fraction <= 1,
                   "0 <= max_skipped_fraction <= 1")]
        for ok, rule in checks:
            if not ok:
                raise ValueError(f"training settings: need {rule} ({self})")

    @classmethod
    def from_config(cls, cfg: Any) -> "TrainSettings":
        """The settings of a trainer's config (its keys of conf/training.yaml)."""
        return cls(**{f.name: cfg[f.name] for f in fields(cls)})


def fit(model: nn.Module, loss_fn: LossFn, train_loader: Iterable, optimizer: torch.optim.Optimizer,
        scheduler: Any | None, settings: TrainSettings, ctx: DistributedContext, checkpoint_path: str | Path,
        checkpoint_meta: dict | None = None, evaluate: Callable[[nn.Module], dict] | None = None,
        fingerprint: dict | None = None, skipped: SkipLog | None = None) -> nn.Module:
    """Train ``model`` as ``settings`` say; returns the Polyak-averaged model (the raw model when
    ``settings.ema_decay`` is None), in eval mode on ``ctx.device``.

    loss_fn: ``(model, batch, device) -> (loss: Tensor[] float, metrics: {name: float})``; it moves the
        batch to ``device``. A batch that is ``None`` or empty (every sample unreadable) is skipped by
        every process; a batch's ``dropped`` attribute (samples its collate removed) is summed per epoch.
    checkpoint_path: the :class:`Checkpoint` (when written, and what stops the run: the module docstring);
        checkpoint_meta: entries stored with it (``model_kwargs``, ``classes`` ...).
    fingerprint: :func:`run_fingerprint` of what the run trains on and how; a checkpoint written with another
        (or none) is not resumed (:func:`check_fingerprint`, never a silent mix of two runs).
    skipped: receives the samples the data pipeline skipped (from a batch's ``skipped`` entries, worker
        processes included). An epoch that takes no step, or skips more than ``max_skipped_fraction``
        of its samples, stops the run with a ``RuntimeError`` naming the first reasons."""
    device = ctx.device
    generator = train_loader.generator if isinstance(train_loader, DataLoader) else None
    amp_dtype, scaler, averaged = _prepare(model, settings, device)
    meta = dict(checkpoint_meta or {}, **({"fingerprint": fingerprint} if fingerprint is not None else {}))
    meta["epochs"] = settings.epochs  # planned: a consumer of the file tells a finished run (detect.io.check_finished)
    checkpoint = Checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, averaged, generator, meta, ctx)
    result_model = averaged.module if averaged is not None else model
    # rank 0 holds the checkpoint's lock (a second trainer stops: OutputLocked), so a killed save's temporaries can go
    with exclusive_lock(checkpoint.path) if ctx.is_main else nullcontext():
        if ctx.is_main:
            remove_stale_temps(checkpoint.path)
        start = checkpoint.restore(settings.resume, settings.restart_on_change)
        if start.epoch >= settings.epochs:
            log.info("%s: training already finished (%d epochs)", checkpoint_path, start.epoch)
            return result_model.eval()
        cuda = [device] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=cuda) if ctx.distributed else model
        step_ctx = _StepContext(train_model, model, loss_fn, optimizer, scaler, amp_dtype, settings.grad_clip, averaged,
                                ctx, skipped)
        for epoch in range(start.epoch, settings.epochs):
            resumed = start if epoch == start.epoch else ResumePoint()  # steps done, RNG states to restore
            epoch_rng = resumed.epoch_rng or _rng_state(generator)
            if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            n_steps, skip = _steps_in_epoch(train_loader, settings.max_steps_per_epoch), resumed.step
            restore = (lambda s=resumed.step_rng: _set_rng_state(s, generator)) if resumed.step_rng else None

            def save_every(step: int, epoch=epoch, epoch_rng=epoch_rng) -> None:
                if settings.checkpoint_every and step % settings.checkpoint_every == 0 and (n_steps is None or step < n_steps):
                    checkpoint.save(epoch, step, epoch_rng)

            t0 = time.perf_counter()
            try:
                sums = train_one_epoch(step_ctx, _iterate_from(train_loader, skip, restore), skip, n_steps,
                                       f"epoch {epoch + 1}/{settings.epochs}", save_every)
            except NonFiniteLoss as e:  # a diverged step: stopped before anything was saved after it
                raise FloatingPointError(f"{e}; {checkpoint.describe_last()}") from None
            elapsed = time.perf_counter() - t0
            if scheduler is not None:
                scheduler.step()
            totals = all_reduce_sum(sums, device) if ctx.distributed else sums
            _end_epoch(epoch, settings, totals, elapsed, optimizer, evaluate, result_model, ctx)
            _check_epoch(epoch, totals, skipped, settings.max_skipped_fraction,
                         nothing_left=n_steps is not None and skip >= n_steps)
            checkpoint.save(epoch + 1, 0, {})
    return result_model.eval()


def _prepare(model: nn.Module, settings: TrainSettings,
             device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler, AveragedModel | None]:
    """Move ``model`` to ``device``; returns the autocast dtype (None: no autocast), the GradScaler (enabled
    for fp16 only) and the Polyak average (None without ``ema_decay``), as :class:`TrainSettings` says."""
    on_cuda = device.type == "cuda"
    model.to(device)
    if settings.channels_last and on_cuda:
        model.to(memory_format=torch.channels_last)
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if settings.amp and on_cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    averaged = None if settings.ema_decay is None else \
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True).eval()
    return amp_dtype, scaler, averaged


def _steps_in_epoch(loader: Iterable, cap: int | None) -> int | None:
    """Steps an epoch takes: the loader's length (None when it has none), at most ``cap``."""
    try:
        n_steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n_steps = None
    return n_steps if cap is None else cap if n_steps is None else min(n_steps, cap)


def _end_epoch(epoch: int, settings: TrainSettings, totals: dict, elapsed: float, optimizer: torch.optim.Optimizer,
               evaluate: Callable[[nn.Module], dict] | None, result_model: nn.Module, ctx: DistributedContext) -> None:
    """Log the epoch's summary (main process: mean loss and metrics per sample, throughput, learning rate,
    skipped samples, and ``evaluate(result_model)``) and stop on a mean loss that is not finite."""
    n = max(totals["samples"], 1.0)
    summary = {"loss": totals["loss"] / n, **{k[2:]: v / n for k, v in totals.items() if k.startswith("m_")},
               "images_per_s": totals["samples"] / max(elapsed, 1e-9), "lr": optimizer.param_groups[0]["lr"]}
    if totals["dropped"]:
        summary["skipped_samples"] = int(totals["dropped"])
    if evaluate is not None:
        result_model.eval()
        summary.update({f"val_{k}": v for k, v in evaluate(result_model).items()})
    if ctx.is_main:
        log.info("epoch %d/%d  %s", epoch + 1, settings.epochs,
                 "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    if not math.isfinite(summary["loss"]):
        raise FloatingPointError(f"epoch {epoch + 1}: loss is {summary['loss']}")


class _StepContext(NamedTuple):
    """What every training step needs besides the batch."""

    train_model: nn.Module  # the model as trained (DDP-wrapped when distributed)
    model: nn.Module  # the plain model, whose weights the average follows
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    grad_clip: float | None
    averaged: AveragedModel | None
    ctx: DistributedContext
    skipped: SkipLog | None


def train_one_epoch(sc: _StepContext, batches: Iterable, start_step: int, n_steps: int | None, desc: str,
                    after_step: Callable[[int], None]) -> dict[str, float]:
    """One pass over ``batches`` (steps ``start_step + 1 ..``, at most ``n_steps`` in all); returns this
    process's sums: loss and metrics weighted by batch size, ``samples``, ``steps``, ``dropped``.
    A step whose loss is NaN or infinite raises ``FloatingPointError`` naming it, before ``after_step``
    (the checkpoint) runs; the loss is read back every step anyway (the sums), so this adds no sync."""
    sc.train_model.train()
    sums = {"loss": 0.0, "samples": 0.0, "steps": 0.0, "dropped": 0.0}
    step = start_step
    with tqdm(total=n_steps, initial=start_step, desc=desc, disable=not sc.ctx.is_main, leave=False,
              dynamic_ncols=True) as bar:
        for batch in batches:
            if n_steps is not None and step >= n_steps:
                break
            # samples: B of the first entry Tensor[B, ...] (every collate here; a bare tensor: its own)
            size = 0 if batch is None else len(batch[0] if isinstance(batch, (list, tuple)) else batch)
            sums["dropped"] += float(getattr(batch, "dropped", 0) or 0)
            if sc.skipped is not None:
                sc.skipped.entries.extend(tuple(entry) for entry in getattr(batch, "skipped", ()))
            empty = float(size == 0)
            if sc.ctx.distributed:  # every process skips together, or DDP would wait forever
                empty = all_reduce_sum({"empty": empty}, sc.ctx.device)["empty"]
            step += 1
            if empty:
                log.warning("%s step %d: empty batch (unreadable samples) skipped", desc, step)
            else:
                loss, metrics = _train_step(sc, batch)
                if not math.isfinite(loss):  # before the average and any checkpoint take these weights
                    raise NonFiniteLoss(f"{desc} step {step}: the loss is {loss} (training diverged); stopped "
                                        "before any checkpoint was written after it")
                if sc.averaged is not None:
                    sc.averaged.update_parameters(sc.model)
                sums["loss"] += loss * size
                sums["samples"] += size
                sums["steps"] += 1
                for k, v in metrics.items():
                    sums[f"m_{k}"] = sums.get(f"m_{k}", 0.0) + float(v) * size
                bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
            after_step(step)
    return sums


def run_fingerprint(**parts: Any) -> dict[str, str]:
    """``{name: short digest}`` of each part (plain values, lists, dicts; paths as strings): what a
    training run depends on, compared part by part when a checkpoint is resumed (:func:`fit`)."""
    return {name: digest(value, 16) for name, value in parts.items()}


def init_identity(path: str | Path | None) -> str | None:
    """What an ``init=`` weights file is, for fingerprints: its sha256 (None when there is none)."""
    return None if not path else file_sha256(path)


class NonFiniteLoss(FloatingPointError):
    """A training step's loss was NaN or infinite (the run stops; nothing is saved after it)."""


class CheckpointMismatch(ValueError):
    """A checkpoint to resume was written by a run with other inputs or settings."""


def check_fingerprint(state: dict, fingerprint: dict | None, path: str | Path) -> None:
    """Refuse to resume ``state`` (a loaded checkpoint) when it records another ``fingerprint`` or none:
    ``CheckpointMismatch`` naming the differing entries."""
    stored = state.get("fingerprint")
    if fingerprint is None or stored == fingerprint:
        return
    if stored is None:
        raise CheckpointMismatch(
            f"{path}: written before checkpoints recorded what produced them (no fingerprint), so this run cannot "
            "tell whether it trained on the same inputs and settings; not resumed. Start over (resume=false) "
            "or write to another checkpoint")
    keys = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    raise CheckpointMismatch(
        f"{path}: written by a run with other inputs or settings (differs in: {', '.join(keys)}); not resumed. "
        "Restore those settings to continue it, or write to another checkpoint (or resume=false to start over)")


def _check_epoch(epoch: int, totals: dict, skipped: SkipLog | None, max_fraction: float | None,
                 nothing_left: bool = False) -> None:
    """No silent success (:func:`fit`'s ``skipped``); ``nothing_left``: a resume found the epoch already done."""
    dropped, samples = int(totals["dropped"]), int(totals["samples"])
    reasons = ""
    if skipped is not None and len(skipped):
        reasons = "; first: " + "; ".join(f"{f}: {r}" for f, r in skipped.entries[:3])
    if totals["steps"] == 0 and not nothing_left:
        raise RuntimeError(f"epoch {epoch + 1}: no training step was taken ({dropped} samples skipped, none "
                           f"usable){reasons}")
    if max_fraction is not None and dropped > max_fraction * (dropped + samples):
        raise RuntimeError(f"epoch {epoch + 1}: {dropped} of {dropped + samples} samples skipped, more than the "
                           f"allowed share {max_fraction:g} (max_skipped_fraction){reasons}")


def _train_step(sc: _StepContext, batch: Any) -> tuple[float, dict]:
    with torch.autocast("cuda", dtype=sc.amp_dtype) if sc.amp_dtype is not None else nullcontext():
        loss, metrics = sc.loss_fn(sc.train_model, batch, sc.ctx.device)
    sc.optimizer.zero_grad(set_to_none=True)
    sc.scaler.scale(loss).backward()
    if sc.grad_clip is not None:
        sc.scaler.unscale_(sc.optimizer)
        torch.nn.utils.clip_grad_norm_(sc.train_model.parameters(), sc.grad_clip)
    sc.scaler.step(sc.optimizer)
    sc.scaler.update()
    return float(loss.detach()), metrics
