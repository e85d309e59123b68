"""The training loop, one for everything: from scratch, fine-tuning, progressive learning.

    python -m lib.train --dataset fashion_mnist --profile quick --out runs/fmnist-quick
    torchrun --nproc_per_node 2 -m lib.train --dataset fashion_mnist --profile quick --out runs/ddp

Read ``train`` top to bottom: check the folder, load the data, build the model and everything
that updates it, restore or start, then per epoch apply the stage (paper Algorithm 1), train,
evaluate and record; finish with one hold-out test evaluation. Fine-tuning is configuration
(``pretrained``, ``trainable``, ``preprocessing``), not a second loop. Every epoch writes
``metrics.csv``/``history.json`` and an atomic checkpoint; SIGTERM or SIGINT stops at the next step
with a checkpoint of the position inside the epoch (``stop_inside_epoch``); ``--resume`` continues
from either, bit-for-bit on deterministic settings (``epoch_generator``). A NaN/inf loss stops the run and
keeps the last good checkpoint. ``metrics.json`` (``test_accuracy`` in 0-1, ``wall_seconds``) is
written last, next to ``config.json``; the folder's rules are ``lib/runs.py``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from tqdm.auto import tqdm

from . import device, distributed
from .augment import BatchAugmenter
from .data import Dataset, DatasetError, DeviceLoader, load_dataset
from .models import build_model, check_input_size, count_flops, count_parameters
from .optim import ema_of, lr_schedulers, make_optimizer, set_weight_decay, step_lr
from .profiles import TrainConfig, config_for, safe_settings
from .progressive import Schedule, TrainingStage, schedule_from_spec
from .runs import RunFolder, RunFolderError, TrainingError, command, display_path, environment, resolve, settings_key
from .stopping import Stop, Stopped, signal_name
from .transfer import WeightsUnavailable, freeze_backbone, is_weights_name, load_pretrained, pretrained_transforms


class Diverged(TrainingError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


# ---------------------------------------------------------------- pieces the loop uses


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against soft targets (mixup) with label smoothing, averaged over the batch."""
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def apply_stage(stage: TrainingStage, model: nn.Module, optimizer, augmenter: BatchAugmenter) -> None:
    """Set every scheduled value of Algorithm 1 for this stage, without rebuilding anything."""
    model.set_dropout(stage.dropout)
    model.set_drop_path_rate(stage.drop_path)
    set_weight_decay(optimizer, stage.weight_decay)
    augmenter.image_size = stage.image_size
    augmenter.magnitude = stage.randaug_magnitude
    augmenter.mixup_alpha = stage.mixup_alpha


def epoch_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The one seeding rule: epoch ``epoch`` of process ``rank`` draws from (seed, epoch, rank) only.

    It seeds torch's global generator (dropout, stochastic depth) and returns the augmentation
    generator on the device, so a resumed run replays every later epoch exactly.
    """
    torch.manual_seed(seed * 1_000_003 + epoch * 101 + rank)
    return torch.Generator(device=device).manual_seed(seed * 7_919 + epoch * 31 + rank)


def recalibration_images(images: torch.Tensor, count: int, seed: int, epoch: int) -> torch.Tensor:
    """``count`` training images drawn by (seed, epoch) alone, the same on every process, so a
    resumed run re-estimates BatchNorm from the same images."""
    generator = torch.Generator().manual_seed(seed * 7_919 + epoch * 31 + 104_729)
    chosen = torch.randperm(len(images), generator=generator)[:count]
    return images[chosen.to(images.device)]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    images: torch.Tensor,
    transform,
    *,
    batch_size: int = 500,
    channels_last: bool = False,
    autocast=contextlib.nullcontext,
) -> None:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``images`` (uint8) as
    ``transform`` prepares them for evaluation.

    After a change of image size the running statistics still describe the old size, and an EMA
    of the weights averages them over thousands of steps; once-for-all re-estimates after every
    architecture change the same way. ``torch.optim.swa_utils.update_bn`` does the averaging (over
    all batches, not a momentum); dropout and stochastic depth are off meanwhile, so the statistics
    are those of the network that is evaluated.
    """
    plain = unwrap(model)
    rates = plain.dropout, plain.drop_path_rate
    plain.set_dropout(0.0)
    plain.set_drop_path_rate(0.0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = (
        transform(images[i : i + batch_size]).contiguous(memory_format=memory_format)
        for i in range(0, len(images), batch_size)
    )
    try:
        with autocast():
            torch.optim.swa_utils.update_bn(batches, plain)
    finally:
        plain.set_dropout(rates[0])
        plain.set_drop_path_rate(rates[1])


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DeviceLoader, transform, *, tta_flip: bool = False, autocast=contextlib.nullcontext
) -> tuple[float, float]:
    """Mean loss (no smoothing) and accuracy; ``tta_flip`` averages the logits of both flips."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.split.images.device, dtype=torch.float64)
    correct = torch.zeros((), device=loss_sum.device, dtype=torch.long)
    for images, labels in loader:
        x = transform(images)
        with autocast():
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
    n = len(loader.split)
    return loss_sum.item() / n, correct.item() / n


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DistributedDataParallel and torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def uses_weights_preprocessing(config: TrainConfig) -> bool:
    """'auto' means: the pretrained weights' own preprocessing when they are torchvision's."""
    if config.preprocessing == "auto":
        return bool(config.pretrained) and is_weights_name(config.pretrained)
    return config.preprocessing == "weights"


@dataclass
class Training:
    """Everything one run builds before its first step, and where it is."""

    config: TrainConfig
    schedule: Schedule
    ctx: distributed.Context
    data: Dataset
    model: nn.Module  # the plain model: checkpoints, evaluation
    step_model: nn.Module  # what a step calls: DDP- and/or compile-wrapped
    optimizer: torch.optim.Optimizer
    lr: LRScheduler  # the rate of every step (lib.optim.lr_schedulers)
    plateau: ReduceLROnPlateau | None  # scheduler plateau: the rule stepped after each validation
    ema: torch.optim.swa_utils.AveragedModel | None
    augmenter: BatchAugmenter
    train_loader: DeviceLoader
    val_loader: DeviceLoader
    precision: device.Precision
    compiler: device.Compiler
    signature: dict
    notes: dict = field(default_factory=dict)  # what was loaded and frozen, for config.json
    history: list = field(default_factory=list)
    epoch: int = 0  # the next epoch to train
    steps: int = 0  # optimizer steps taken
    aside: bool = False  # an old run waits in .replaced/ for our first checkpoint
    resumed_at: int | None = None  # the epoch (1-based) this process resumed at, if it did
    position: dict | None = None  # where a stopped run stood inside its epoch, until that epoch resumes
    switch: dict = field(default_factory=dict)  # this epoch's readings at its size change (change_size)
    started: float = field(default_factory=time.perf_counter)
    flops_per_image: dict = field(default_factory=dict)  # image size -> forward FLOPs of one image

    def train_flops(self, image_size: int, images: int) -> float:
        """Training compute of ``images`` at ``image_size``: 3 x forward FLOPs (forward + backward),
        the usual convention, so a result reads as accuracy at a compute budget on any machine."""
        if image_size not in self.flops_per_image:
            self.flops_per_image[image_size] = count_flops(
                unwrap(self.model), image_size, unwrap(self.model).in_channels
            )
        return 3.0 * self.flops_per_image[image_size] * images

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


# ---------------------------------------------------------------- the run, step by step


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Train ``config`` into folder ``out`` and return the final metrics (also in metrics.json)."""
    started = time.perf_counter()
    config.validate()
    schedule = schedule_from_spec(config.schedule, config.epochs)
    folder = RunFolder(out)
    ctx = distributed.setup(config.device)
    log = log if ctx.is_main else (lambda *a, **k: None)
    stop = Stop(launched=ctx.world_size > 1)  # SIGTERM, SIGINT: at once here, at the next step boundary in the loop
    t = None
    try:
        stop.install()
        if ctx.is_main:
            folder.check(resume=resume, overwrite=overwrite)  # refusals come before any work
        check_model_settings(config, schedule)
        device.precision(config.amp, ctx.device)  # a precision the device lacks: one line
        device.Compiler(config.compile, ctx.device)  # inductor without a C++ compiler: one line
        distributed.barrier(ctx)
        with folder.lock() if ctx.is_main else contextlib.nullcontext():
            data = load_data(config, ctx)
            t = build(config, schedule, data, ctx)
            t.started = started
            if resume:
                restore(t, folder, log)
            elif ctx.is_main:
                start_fresh(t, folder, overwrite, log)
            current = None
            stop.deferring = True
            for epoch in range(t.epoch, config.epochs):
                stage = schedule.stage_at(epoch)
                apply_stage(stage, t.model, t.optimizer, t.augmenter)
                if stage is not current:
                    log(
                        f"-- {stage.describe()}"
                        + (f" (compilations so far: {t.compiler.compilations})" if t.compiler.backend else "")
                    )
                    current = stage
                # a run resumed inside an epoch made its size change before it stopped: its readings
                # come back from the checkpoint, as do the remedies' effects on the weights
                t.switch = change_size(t, epoch, log) if t.position is None else t.position.get("switch", {})
                row = train_one_epoch(t, stage, epoch, folder, progress, stop)
                end_epoch(t, folder, stage, epoch, {**row, **t.switch}, log)
                if signum := stop.requested(ctx):
                    raise Stopped(signum, f"stopped by {signal_name(signum)} at the end of epoch {epoch + 1}")
                if config.max_steps is not None and t.steps >= config.max_steps:
                    break
            stop.deferring = False  # the test evaluation is short: a signal stops it at once, the last checkpoint kept
            return finish(t, folder, log)
    except BaseException as e:
        recovered = t is not None and t.aside and folder.recover()
        if recovered:
            log(f"the new run stopped before its first checkpoint: the previous run in {folder.path} is back")
        if isinstance(e, Stopped) and e.checkpoint is None and not recovered:
            e.checkpoint = (folder.checkpoints() or [None])[-1]  # what --resume continues from
        raise
    finally:
        stop.uninstall()
        distributed.teardown(ctx)


def check_model_settings(config: TrainConfig, schedule: Schedule) -> None:
    """The model's name and overrides, and every stage's image size against its minimum, checked
    on the meta device (shapes only, instant) before any data loads: one-line errors."""
    try:
        with torch.device("meta"):
            model = build_model(config.model, 10, 3, **config.model_overrides)
    except TypeError as e:
        raise ValueError(f"model_overrides {config.model_overrides} do not fit {config.model}: {e}") from None
    for stage in schedule:
        check_input_size(model, stage.image_size, f" in stage {stage.index}")
    if config.bn_recalibration and config.trainable != "all":
        raise ValueError(
            f"bn_recalibration re-estimates every BatchNorm, but trainable is {config.trainable!r}: "
            f"frozen layers keep their pretrained statistics; set bn_recalibration=0"
        )


def load_data(config: TrainConfig, ctx: distributed.Context) -> Dataset:
    """The dataset's splits as uint8 tensors on the training device (labels checked at load)."""
    return load_dataset(
        config.dataset,
        resolve(config.data_root),
        val_fraction=config.val_fraction,
        seed=config.seed,
        device=ctx.device,
        limit=config.limit,
        download=config.download,
    )


def build_network(config: TrainConfig, data: Dataset, ctx: distributed.Context) -> tuple[nn.Module, dict]:
    """The model, pretrained and frozen as configured, on the device. Returns the model and what
    was loaded and frozen (for config.json)."""
    notes = {}
    torch.manual_seed(config.seed)
    in_channels = 3 if uses_weights_preprocessing(config) else data.in_channels
    model = build_model(config.model, data.num_classes, in_channels, **config.model_overrides)
    if config.pretrained:
        notes["pretrained"] = load_pretrained(model, config.pretrained, download=config.download, progress=ctx.is_main)
    notes["frozen"] = freeze_backbone(model, config.trainable, bn_eval=config.frozen_bn_eval)
    model.to(ctx.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.distributed and config.sync_bn and config.trainable == "all":
        model = distributed.convert_sync_batchnorm(model, ctx.device)
    return model, notes


def build(config: TrainConfig, schedule: Schedule, data: Dataset, ctx: distributed.Context) -> Training:
    """The network and everything that updates it: optimizer, learning rate, EMA, the wrappers a
    step calls (DDP, compile), augmentation with the right preprocessing, and the loaders."""
    model, notes = build_network(config, data, ctx)
    if config.batch_size % (ctx.world_size * config.accumulate):
        raise TrainingError(
            f"batch_size {config.batch_size} is not divisible by {ctx.world_size} process(es) x "
            f"{config.accumulate} accumulation step(s)"
        )
    train_loader = DeviceLoader(
        data.train,
        config.batch_size // ctx.world_size,
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    if len(train_loader) == 0:
        raise TrainingError(f"batch_size {config.batch_size} is larger than the {len(data.train)} training images")
    optimizer = make_optimizer(model, config)
    lr, plateau = lr_schedulers(optimizer, config, len(train_loader))
    ema = ema_of(model, config.ema_decay) if config.ema_decay else None
    step_model = model
    if ctx.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    compiler = device.Compiler(config.compile, ctx.device)
    step_model = compiler(step_model)
    preprocess = None
    if uses_weights_preprocessing(config):
        weights = config.pretrained if config.pretrained and is_weights_name(config.pretrained) else "DEFAULT"
        preprocess = pretrained_transforms(config.model, weights)
        notes["preprocessing"] = preprocess.values()
    augmenter = make_augmenter(config, data, schedule[0], preprocess)
    signature = {
        "model": config.model,
        "overrides": config.model_overrides,
        "num_classes": data.num_classes,
        "in_channels": unwrap(model).in_channels,
        "num_params": count_parameters(model),
    }
    return Training(
        config,
        schedule,
        ctx,
        data,
        model,
        step_model,
        optimizer,
        lr,
        plateau,
        ema,
        augmenter,
        train_loader,
        DeviceLoader(data.val, config.eval_batch_size, shuffle=False),
        device.precision(config.amp, ctx.device),
        compiler,
        signature,
        notes,
    )


def make_augmenter(config: TrainConfig, data: Dataset, stage: TrainingStage, preprocess=None) -> BatchAugmenter:
    """The training augmentation of ``config`` at ``stage``'s values (what a step receives)."""
    augmenter = BatchAugmenter(
        data.num_classes,
        stage.image_size,
        data.mean,
        data.std,
        num_ops=config.randaug_ops,
        padding=config.crop_padding,
        flip=config.flip,
        padding_mode=config.crop_mode,
        erasing=config.random_erasing,
        min_area=config.rrc_min_area,
        resize_mode=config.resize_mode,
        preprocess=preprocess,
    )
    augmenter.magnitude, augmenter.mixup_alpha = stage.randaug_magnitude, stage.mixup_alpha
    return augmenter


def start_fresh(t: Training, folder: RunFolder, overwrite: bool, log) -> None:
    """A new run has proved it can start: set an old run aside (``--overwrite``), write config.json."""
    if overwrite and folder.set_aside():
        t.aside = True
        log(f"--overwrite: the previous run in {folder.path} is set aside until the first new checkpoint")
    c, d = t.config, t.data
    folder.write_json(
        "config.json",
        {
            "config": asdict(c),
            "identity": c.identity(),
            "schedule": t.schedule.rows(),
            "signature": t.signature,
            "dataset_source": d.source,
            "notes": t.notes,
            "command": command(),
            "environment": environment(),
        },
    )
    frozen = t.notes["frozen"]
    log(
        f"{c.model} ({frozen['total']:,} parameters, {frozen['trainable']:,} trainable"
        f"{', from ' + t.notes['pretrained'] if 'pretrained' in t.notes else ''}) on {d.name}: {len(d.train)} "
        f"train / {len(d.val)} val / {len(d.test)} test images, {device.describe(c.device, t.ctx.device)}, "
        f"{t.ctx.world_size} process(es), "
        f"{t.precision.describe()}, {t.compiler.describe()}\n{t.schedule.describe()}"
    )


def restore(t: Training, folder: RunFolder, log) -> None:
    """Continue from the newest readable checkpoint, if it was made with these settings."""
    path, state = folder.load_checkpoint(t.ctx.device, log)
    if state["signature"] != t.signature:
        raise TrainingError(
            f"{path} holds a checkpoint of {state['signature']}, but this run builds "
            f"{t.signature}; use another --out or the checkpoint's settings"
        )
    defaults = TrainConfig().identity()
    saved = {**defaults, **state.get("identity", {})}
    now = t.config.identity()
    changed = [k for k in now if _as_json(saved.get(k)) != _as_json(now[k])]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise TrainingError(
            f"--resume: {folder.path} was trained with other settings ({diffs}); resume with "
            f"the same settings (only {', '.join(sorted(safe_settings()))} may change) or start "
            f"again with --overwrite"
        )
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if set(state["lr"]) != {"per_step", "plateau"}:
        raise TrainingError(
            f"{path} holds the learning rate as the trainer kept it before torch.optim.lr_scheduler: "
            f"resume it with the version that wrote it, or start again with --overwrite"
        )
    t.lr.load_state_dict(state["lr"]["per_step"])
    if t.plateau is not None:
        t.plateau.load_state_dict(state["lr"]["plateau"])
    if t.ema is not None:
        t.ema.load_state_dict(state["ema"])
    t.precision.scaler.load_state_dict(state.get("scaler") or {})
    t.history, t.epoch, t.steps = state["history"], state["epoch"], state["steps"]
    position = state.get("position")  # a run stopped inside an epoch (stop_inside_epoch)
    if position is not None:
        if position["world_size"] != t.ctx.world_size or len(position["order"]) != len(t.data.train):
            raise TrainingError(
                f"{path} was stopped inside epoch {t.epoch + 1} with {position['world_size']} "
                f"process(es) and {len(position['order'])} training images; resume it with the same, "
                f"or delete it to resume from the checkpoint before it"
            )
        t.position = position
        t.started -= position["elapsed_seconds"]
    elif t.history:  # the clock goes on from the checkpoint's: wall_seconds counts every epoch kept, not the pause
        t.started -= t.history[-1].get("elapsed_seconds", 0.0)
    t.resumed_at = t.epoch + 1
    inside = f", batch {position['batches'] + 1} of {len(t.train_loader)}" if position is not None else ""
    log(
        f"resumed from {path} at epoch {t.epoch + 1}{inside} "
        f"(stage {t.schedule.stage_at(min(t.epoch, t.config.epochs - 1)).index})"
    )


def _as_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def progress_disabled() -> bool:
    """TQDM_DISABLE=1 (make test) switches the bars off. Read here, not by tqdm: tqdm.notebook, what
    tqdm.auto picks in a kernel, ignores the variable, and tqdm.std takes any value, "0" too, as true."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes", "on"}


def recalibrate(t: Training, model: nn.Module, epoch: int) -> None:
    """``bn_recalibration`` training images re-estimate ``model``'s BatchNorm at the current size."""
    images = recalibration_images(t.data.train.images, t.config.bn_recalibration, t.config.seed, epoch)
    recalibrate_batchnorm(
        model,
        images,
        t.augmenter.eval_transform,
        batch_size=t.config.eval_batch_size,
        channels_last=t.config.channels_last,
        autocast=t.precision.autocast,
    )


def change_size(t: Training, epoch: int, log) -> dict:
    """At the first epoch of a stage with a new image size: what a size change costs, measured.

    The evaluated model reads the validation split at the new size before any step there, as it
    is (``switch_val_accuracy``); with ``bn_recalibration`` the model and its EMA then re-estimate
    BatchNorm at the new size and read it again (``switch_val_accuracy_recalibrated``), and the
    seconds that took count as training time. ``ema_restart`` makes the EMA forget the weights of
    the old size (its average lags a change by about 1 / (1 - decay) steps). Nothing here draws
    from the training generators.
    """
    if epoch == 0 or t.schedule.stage_at(epoch - 1).image_size == t.schedule.stage_at(epoch).image_size:
        return {}
    reading = {}
    if len(t.data.val):
        reading["switch_val_accuracy"] = evaluate(
            t.eval_model, t.val_loader, t.augmenter.eval_transform, autocast=t.precision.autocast
        )[1]
    if t.config.ema_restart and t.ema is not None:  # its next update copies the weights, then warms up again
        t.ema.n_averaged.zero_()
    if t.config.bn_recalibration:
        started = time.perf_counter()
        for model in (t.model, *([t.ema.module] if t.ema is not None else [])):
            recalibrate(t, model, epoch)
        device.synchronize(t.ctx.device)
        reading["recalibration_seconds"] = time.perf_counter() - started
        if len(t.data.val):
            reading["switch_val_accuracy_recalibrated"] = evaluate(
                t.eval_model, t.val_loader, t.augmenter.eval_transform, autocast=t.precision.autocast
            )[1]
    log(
        "   size change: validation at the new size before any step "
        + ", ".join(
            f"{k.replace('switch_val_accuracy', '').strip('_') or 'as is'} {v:.2%}"
            for k, v in reading.items()
            if k.startswith("switch")
        )
    )
    return reading


def train_one_epoch(
    t: Training, stage: TrainingStage, epoch: int, folder: RunFolder, progress: bool, stop: Stop | None = None
) -> dict:
    """One pass over the training split at this stage's settings: loss, accuracy and speed.

    A run resumed inside this epoch (``t.position``) continues after the batches it had trained
    on; a ``stop`` request is honoured after the step in flight (``stop_inside_epoch``).
    """
    c = t.config
    gen = epoch_generator(c.seed, epoch, t.ctx.rank, t.ctx.device)
    t.train_loader.set_epoch(epoch)
    t.step_model.train()
    loss_sum = torch.zeros((), device=t.ctx.device, dtype=torch.float64)
    correct = torch.zeros((), device=t.ctx.device, dtype=torch.long)
    seen, started = 0, time.perf_counter()
    done, position, t.position = 0, t.position, None
    if position is not None:  # the stopped run's state at its last step boundary, this process's share
        mine, done = position["ranks"][t.ctx.rank], position["batches"]
        t.train_loader.set_epoch(epoch, order=position["order"], start=done)
        gen.set_state(mine["generator"].cpu())
        torch.set_rng_state(mine["torch_rng"].cpu())  # dropout, stochastic depth
        if mine["cuda_rng"] is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"].cpu(), t.ctx.device)
        # The epoch's row is the whole epoch's, both parts: its loss and accuracy average every batch,
        # and its images and seconds (the pause left out) give the images/s of an uninterrupted epoch,
        # so that sums over rows (train_seconds, train_flops) count each image once.
        loss_sum += mine["loss_sum"].to(loss_sum.device)
        correct += mine["correct"].to(correct.device)
        seen, started = mine["seen"], started - position["seconds"]
    bar = tqdm(
        t.train_loader,
        desc=f"epoch {epoch + 1}/{c.epochs} @{stage.image_size}px",
        initial=done,
        disable=not (progress and t.ctx.is_main) or progress_disabled(),
        leave=False,
        dynamic_ncols=True,
    )
    for i, (images, labels) in enumerate(bar, start=done):
        x, targets = t.augmenter(images, labels, gen)
        loss, logits = optimizer_step(t, x, targets)
        loss_sum += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(1) == targets.argmax(1)).sum()
        seen += len(labels)
        if i % 50 == 49 or i == len(t.train_loader) - 1:  # one host sync every 50 steps
            running = loss_sum.item() / seen
            if not math.isfinite(running):
                last = folder.checkpoints()
                raise Diverged(
                    f"loss became {running} in epoch {epoch + 1} (step {t.steps}); the last good "
                    f"checkpoint is {last[-1] if last else 'none (first epoch)'}; start again with "
                    f"a lower learning rate (--overwrite --lr ...) or check the data"
                )
            bar.set_postfix(loss=f"{running:.3f}")
        if c.max_steps is not None and t.steps >= c.max_steps:
            break
        if stop is not None and (signum := stop.requested(t.ctx)):
            raise stop_inside_epoch(t, folder, epoch, i + 1, gen, (loss_sum, correct, seen), started, signum)
    device.synchronize(t.ctx.device)
    seconds = time.perf_counter() - started
    stats = distributed.all_reduce_sum(
        torch.stack([loss_sum, correct.double(), torch.tensor(seen, device=t.ctx.device, dtype=torch.float64)]), t.ctx
    )
    return {
        "train_loss": (stats[0] / stats[2]).item(),
        "train_accuracy": (stats[1] / stats[2]).item(),
        "started": started,
        "images": int(stats[2].item()),
        "train_images_per_second": stats[2].item() / seconds,
    }


def stop_inside_epoch(
    t: Training,
    folder: RunFolder,
    epoch: int,
    batches: int,
    gen: torch.Generator,
    sums: tuple,
    started: float,
    signum: int,
) -> Stopped:
    """Checkpoint the position inside the epoch, so that ``--resume`` goes on with the next batch as
    an uninterrupted run would: the data order, every process's generators and running sums
    (gathered to rank 0, which writes), the step counter and the clocks. Returns the ``Stopped``."""
    device.synchronize(t.ctx.device)
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = sums
    ranks = distributed.gather_objects(
        {
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(t.ctx.device) if t.ctx.device.type == "cuda" else None,
            "loss_sum": loss_sum.cpu(),
            "correct": correct.cpu(),
            "seen": seen,
        },
        t.ctx,
    )
    path = None
    if t.ctx.is_main:
        state = checkpoint_state(t)
        state["position"] = {
            "epoch": epoch,
            "batches": batches,
            "world_size": t.ctx.world_size,
            "order": t.train_loader.permutation(),
            "ranks": ranks,
            "seconds": seconds,
            "elapsed_seconds": time.perf_counter() - t.started,
            "switch": dict(t.switch),
        }
        path = folder.save_checkpoint(state, t.config.keep_checkpoints)
        if t.aside:
            folder.drop_aside()
            t.aside = False
    distributed.barrier(t.ctx)  # no process exits (torchrun then ends the others) before the file is whole
    return Stopped(
        signum,
        f"stopped by {signal_name(signum)} after step {t.steps} (epoch {epoch + 1}, batch "
        f"{batches} of {len(t.train_loader)})",
        path,
    )


def optimizer_step(t: Training, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and update for one batch: the library's only backward pass.

    With ``accumulate`` = A the batch runs as A micro-batches whose gradients add up to the whole
    batch's (each loss weighted by its share); under torchrun only the last one synchronizes.
    """
    if t.steps:  # building the schedulers set the first step's rate
        step_lr(t.lr)
    if t.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t.optimizer.zero_grad(set_to_none=True)
    parts = list(zip(x.chunk(t.config.accumulate), targets.chunk(t.config.accumulate)))
    losses, logits = [], []
    for i, (xs, ts) in enumerate(parts):
        last = i == len(parts) - 1
        quiet = t.step_model.no_sync() if t.ctx.distributed and not last else contextlib.nullcontext()
        with quiet:
            with t.precision.autocast():
                out = t.step_model(xs)
            loss = soft_cross_entropy(out, ts, t.config.label_smoothing) * (len(xs) / len(x))
            t.precision.scaler.scale(loss).backward()
        losses.append(loss.detach())
        logits.append(out.detach())
    t.precision.scaler.step(t.optimizer)
    t.precision.scaler.update()
    if t.ema is not None:
        t.ema.update_parameters(t.model)
    t.steps += 1
    return torch.stack(losses).sum(), torch.cat(logits)


def end_epoch(t: Training, folder: RunFolder, stage: TrainingStage, epoch: int, train_stats: dict, log) -> None:
    """Validate, step the plateau rule, log one line, and write the epoch's row and checkpoint."""
    c, data = t.config, t.data
    if c.bn_recalibration and t.ema is not None:  # the averaged weights get statistics of their own
        recalibrate(t, t.ema.module, epoch)
    val_loss, val_acc = (
        evaluate(t.eval_model, t.val_loader, t.augmenter.eval_transform, autocast=t.precision.autocast)
        if len(data.val)
        else (float("nan"), float("nan"))
    )
    row = {
        "epoch": epoch + 1,
        "stage": stage.index,
        "image_size": stage.image_size,
        "randaug_magnitude": stage.randaug_magnitude,
        "mixup_alpha": stage.mixup_alpha,
        "dropout": stage.dropout,
        "drop_path": stage.drop_path,
        "weight_decay": stage.weight_decay,
        "lr": t.optimizer.param_groups[0]["lr"],
        "train_loss": train_stats["train_loss"],
        "train_accuracy": train_stats["train_accuracy"],
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "epoch_seconds": time.perf_counter() - train_stats["started"] + train_stats.get("recalibration_seconds", 0.0),
        "train_images_per_second": train_stats["train_images_per_second"],
        "train_flops": t.train_flops(stage.image_size, train_stats["images"]),
        "elapsed_seconds": time.perf_counter() - t.started,
        **{k: v for k, v in train_stats.items() if k.startswith(("switch_", "recalibration_"))},
    }
    if t.plateau is not None and math.isfinite(val_acc):  # the row keeps the rate this epoch ended with
        t.plateau.step(val_acc)
    t.history.append(row)
    t.epoch = epoch + 1
    log(
        f"epoch {epoch + 1:3d}/{c.epochs} @{stage.image_size}px  train {row['train_loss']:.4f} / "
        f"{row['train_accuracy']:.2%}  val {val_loss:.4f} / {val_acc:.2%}  lr {row['lr']:.2e}  "
        f"{row['train_images_per_second']:,.0f} img/s  {row['epoch_seconds']:.1f}s"
    )
    if t.ctx.is_main:
        folder.save_checkpoint(checkpoint_state(t), c.keep_checkpoints)
        if t.aside:
            folder.drop_aside()
            t.aside = False
        folder.write_csv("metrics.csv", t.history)
        folder.write_json("history.json", t.history)


def checkpoint_state(t: Training) -> dict:
    """Everything ``restore`` needs to continue exactly where this run is."""
    return {
        "epoch": t.epoch,
        "steps": t.steps,
        "signature": t.signature,
        "identity": t.config.identity(),
        "config": asdict(t.config),
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "lr": {"per_step": t.lr.state_dict(), "plateau": t.plateau.state_dict() if t.plateau else None},
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "scaler": t.precision.scaler.state_dict(),
        "history": t.history,
    }


def finish(t: Training, folder: RunFolder, log) -> dict:
    """One hold-out test evaluation of the final (EMA) weights; model.pt, then metrics.json."""
    c, data = t.config, t.data
    test_loss, test_acc = evaluate(
        t.eval_model,
        DeviceLoader(data.test, c.eval_batch_size, shuffle=False),
        t.augmenter.eval_transform,
        tta_flip=c.tta_flip,
        autocast=t.precision.autocast,
    )
    wall = time.perf_counter() - t.started
    metrics = {
        "dataset": data.name,
        "model": c.model,
        "profile": c.profile,
        "num_params": t.signature["num_params"],
        "trainable_params": t.notes["frozen"]["trainable"],
        "pretrained": t.notes.get("pretrained"),
        "trainable": c.trainable,
        "seed": c.seed,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "tta_flip": c.tta_flip,
        "ema": t.ema is not None,
        "final_val_accuracy": t.history[-1]["val_accuracy"] if t.history else None,
        "best_val_accuracy": max((h["val_accuracy"] for h in t.history), default=None),
        "epochs": len(t.history),
        "steps": t.steps,
        "wall_seconds": wall,
        "resumed_at_epoch": t.resumed_at,
        "train_seconds": sum(h["epoch_seconds"] for h in t.history),
        "train_flops": sum(h.get("train_flops", 0.0) for h in t.history),
        "precision": t.precision.describe(),
        "compile": t.compiler.describe(),
        "compilations": t.compiler.compilations,
        "graph_breaks": t.compiler.graph_breaks,
        "world_size": t.ctx.world_size,
        "device": str(t.ctx.device),
        "environment": environment(),
        "command": command(),
        "run_dir": display_path(folder.path),
        "stages": t.schedule.rows(),
    }
    if t.ctx.is_main:
        folder.save_torch("model.pt", unwrap(t.eval_model).state_dict())
        folder.write_json("metrics.json", metrics)
    log(
        f"test accuracy {test_acc:.2%} (loss {test_loss:.4f}{', flip TTA' if c.tta_flip else ''}) "
        f"in {wall:.0f}s; outputs in {folder.path}"
    )
    return metrics


def run_or_reuse(config: TrainConfig, parent: str | os.PathLike, *, retrain: bool = False, log=print, **kwargs) -> dict:
    """Train into ``parent/<seed>-<settings key>``, unless a finished run of these settings is there.

    Notebooks call this, so re-executing them (papermill, slides) neither retrains by accident nor
    replaces a run of other settings (another seed gets another folder); an interrupted run is
    resumed; ``retrain=True`` trains again.
    """
    config.validate()
    folder = RunFolder(Path(parent) / settings_key(config.identity()))
    if not retrain:
        metrics = folder.finished_with(config.identity(), TrainConfig().identity())
        if metrics is not None:
            log(f"reusing the finished run in {folder.path} (retrain=True trains again)")
            return metrics
        if folder.checkpoints() and not folder.finished:
            return train(config, folder.path, resume=True, log=log, **kwargs)
    return train(config, folder.path, overwrite=True, log=log, **kwargs)


# ---------------------------------------------------------------- command line

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str):
    """``--set key=value`` values as YAML literals (numbers, booleans, lists, dicts), where
    ``1e-3`` is a number as everyone writes it (YAML 1.1 would read it as text)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot read {text!r} as a value: {' '.join(str(e).split())}") from None
    return _numbers(value)


def _numbers(value):
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _parser(prog: str, description: str | None, run) -> argparse.ArgumentParser:
    """The command line's arguments; ``--resume``/``--overwrite`` only when it trains."""
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="fashion_mnist, cifar10, cifar100 or an image folder")
    p.add_argument("--profile", default="quick", help="smoke, quick, laptop or paper")
    p.add_argument("--study", help="a notebook study's settings on top of the profile's (baselines, ablations, ...)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, config)")
    p.add_argument("--model", help="override the profile's model, e.g. efficientnetv2_m")
    for flag in ("--epochs", "--batch-size", "--lr", "--optimizer", "--scheduler", "--device"):
        p.add_argument(flag)
    p.add_argument(
        "--seed", help="initial weights, validation split, data order and augmentation draws (the test set is fixed)"
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="auto",
        metavar="MODE",
        help="torch.compile: auto (inductor on CUDA, off on a CPU), inductor, aot_eager, eager or off",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field, value as YAML (repeatable): --set ema_decay=0.999 sets one "
        "whole, --set schedule.dropout=0.3 edits one entry, --set image_size=32 edits the sizes",
    )
    if run is None:
        p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
        p.add_argument(
            "--overwrite", action="store_true", help="replace the run in --out (kept until the new one checkpoints)"
        )
    return p


_WHOLE_FLAGS = ("model", "epochs", "batch_size", "lr", "optimizer", "scheduler", "device", "compile", "seed")


def _settings(args: argparse.Namespace) -> TrainConfig:
    """The run's settings: the profile's, then the flags (each sets a setting whole), then ``--set``
    (``key=value`` sets one whole, ``key.sub=value`` edits one entry)."""
    whole = {
        k: parse_value(v) if isinstance(v, str) else v for k in _WHOLE_FLAGS if (v := getattr(args, k)) is not None
    }
    edits = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path):
            raise ValueError(f"--set expects KEY=VALUE or KEY.SUB=VALUE, got {item!r}")
        if len(path) == 1 and path[0] != "image_size":
            whole[path[0]] = parse_value(value)
            continue
        target = edits
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = parse_value(value)
    return config_for(args.profile, args.dataset, args.study, whole=whole, **edits)


def _leave_stopped(stopped: Stopped, argv: list[str]) -> int:
    """Say how to resume (rank 0), and the exit code of a stop."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{stopped}; {resume_hint(stopped, argv)}", file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # under torchrun, leave now: once one process has exited the launcher sends SIGTERM to
        # the others, and during Python's shutdown (default handlers again) that would kill one
        # (-15) instead of letting it exit with the stop's code like the rest
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stopped.exit_code)
    return stopped.exit_code


def main(
    argv: list[str] | None = None, *, prog: str = "python -m lib.train", description: str | None = None, run=None
) -> int:
    """The command line: settings from arguments, then ``train``, with every refusal in one line.

    ``run(config, out)`` replaces training, without ``--resume``/``--overwrite``: ``python -m
    lib.preflight`` passes its own, so the preflight builds on the trainer and not both ways.
    """
    args = _parser(prog, description, run).parse_args(argv)
    try:
        RunFolder(args.out).check_path()  # an empty --out, someone else's folder: before anything loads
        config = _settings(args)
        if run is not None:
            run(config, args.out)
        else:
            train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=sys.stderr.isatty())
    except (ValueError, TrainingError, DatasetError, RunFolderError, WeightsUnavailable) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Stopped as e:
        return _leave_stopped(e, sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("interrupted: resume with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


def resume_hint(stopped: Stopped, argv: list[str]) -> str:
    """The command that continues a stopped run: these arguments with --resume, without --overwrite."""
    if stopped.checkpoint is None:
        return "nothing to resume: run the same command again"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "resume with the same torchrun command plus --resume"
    args = [a for a in argv if a not in ("--overwrite", "--resume")]
    return f"resume with: {shlex.join(['python', '-m', 'lib.train', *args, '--resume'])}"


if __name__ == "__main__":
    sys.exit(main())
