"""The training loop: progressive learning with checkpoints you can trust.

    python -m lib.train --dataset fashion_mnist --profile quick --out runs/fmnist-quick
    torchrun --nproc_per_node 2 -m lib.train --dataset fashion_mnist --profile quick --out runs/ddp

Every epoch writes ``metrics.csv``/``history.json`` and an atomic checkpoint (the last K are
kept); ``--resume`` continues mid-schedule in the right stage, bit-for-bit on deterministic
settings because every epoch's randomness is seeded from (seed, epoch). A NaN/inf loss stops the
run and keeps the last good checkpoint. The run ends with one hold-out test evaluation written to
``metrics.json`` (``test_accuracy`` in 0-1, ``wall_seconds``) next to ``config.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .augment import BatchAugmenter
from .data import DatasetError, DeviceLoader, load_dataset
from .models import build_model, count_parameters
from .notebook import REPO_ROOT, environment
from .profiles import TrainConfig, config_for
from .progressive import Schedule, schedule_from_spec

CHECKPOINT_DIR = "checkpoints"


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class Diverged(TrainingError):
    pass


# ---------------------------------------------------------------- pieces

def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against soft targets (mixup) with label smoothing, averaged over the batch."""
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Two groups: weight decay (scheduled per stage) on conv/linear weights, none on BN and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.0, "scheduled_decay": True},
              {"params": no_decay, "weight_decay": 0.0, "scheduled_decay": False}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum, alpha=0.9, eps=1e-3)


def make_scheduler(optimizer, config: TrainConfig):
    if config.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return None


def apply_stage(stage, model: nn.Module, optimizer, augmenter: BatchAugmenter) -> None:
    """Set every scheduled value of Algorithm 1 for this stage, without rebuilding anything."""
    model.set_dropout(stage.dropout)
    model.set_drop_path_rate(stage.drop_path)
    for group in optimizer.param_groups:
        if group.get("scheduled_decay"):
            group["weight_decay"] = stage.weight_decay
    augmenter.image_size = stage.image_size
    augmenter.magnitude = stage.randaug_magnitude
    augmenter.mixup_alpha = stage.mixup_alpha


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, transform, *, tta_flip: bool = False,
             autocast=contextlib.nullcontext) -> tuple[float, float]:
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


def model_signature(config: TrainConfig, num_classes: int, in_channels: int, num_params: int) -> dict:
    return {"model": config.model, "overrides": config.model_overrides, "num_classes": num_classes,
            "in_channels": in_channels, "num_params": num_params}


# ---------------------------------------------------------------- checkpoints and outputs

def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, payload) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(payload, indent=2, default=str) + "\n"))


def write_csv(path: Path, rows: list[dict]) -> None:
    def write(p):
        with open(p, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if rows:
        _atomic_write(path, write)


def checkpoints(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINT_DIR).glob("epoch_*.pt"))


def save_checkpoint(out: Path, state: dict, keep: int) -> Path:
    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{state['epoch']:04d}.pt"
    _atomic_write(path, lambda p: torch.save(state, p))
    for old in checkpoints(out)[:-keep]:
        old.unlink()
    return path


def prepare_output(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber a run; return the checkpoint to resume from, if any."""
    finished = (out / "metrics.json").exists()
    found = checkpoints(out)
    if overwrite:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        for name in ("metrics.json", "metrics.csv", "history.json", "model.pt"):
            (out / name).unlink(missing_ok=True)
        return None
    if finished and not resume:
        raise TrainingError(f"{out} holds a finished run (metrics.json); pass --overwrite to replace it "
                            f"or choose another --out")
    if finished and resume:
        raise TrainingError(f"{out} is already finished; nothing to resume (--overwrite starts again)")
    if found and not resume:
        raise TrainingError(f"{out} holds an unfinished run ({found[-1].name}); pass --resume to continue "
                            f"it or --overwrite to start again")
    if resume and not found:
        raise TrainingError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}")
    return found[-1] if resume else None


# ---------------------------------------------------------------- the run

def train(config: TrainConfig, out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log=print) -> dict:
    """Train ``config`` into folder ``out`` and return the final metrics (also in metrics.json)."""
    config.validate()
    schedule: Schedule = schedule_from_spec(config.schedule, config.epochs)
    out = Path(out)
    ctx = distributed.setup(config.device)
    try:
        return _train(config, schedule, out, ctx, resume, overwrite, progress and ctx.is_main,
                      log if ctx.is_main else (lambda *a, **k: None))
    finally:
        distributed.teardown(ctx)


def _train(config, schedule, out, ctx, resume, overwrite, progress, log) -> dict:
    started = time.perf_counter()
    device = ctx.device
    resume_from = prepare_output(out, resume, overwrite)
    if config.batch_size % ctx.world_size:
        raise TrainingError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes")

    root = Path(config.data_root)
    ds = load_dataset(config.dataset, root if root.is_absolute() else REPO_ROOT / root,
                      val_fraction=config.val_fraction, seed=config.seed, device=device, limit=config.limit)
    torch.manual_seed(config.seed)
    model = build_model(config.model, ds.num_classes, ds.in_channels, **config.model_overrides)
    schedule.check_image_sizes(model.min_input_size, config.model)
    if config.bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    num_params = count_parameters(model)
    signature = model_signature(config, ds.num_classes, ds.in_channels, num_params)

    cuda = device.type == "cuda"
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.distributed and config.sync_bn:
        model = distributed.convert_sync_batchnorm(model, device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        if config.ema_decay else None)

    history, start_epoch, steps = [], 0, 0
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=False)
        if state["signature"] != signature:
            raise TrainingError(f"{resume_from} holds a checkpoint of {state['signature']}, but this run "
                                f"builds {signature}; use another --out or the checkpoint's settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, start_epoch, steps = state["history"], state["epoch"], state["steps"]
        log(f"resumed from {resume_from} at epoch {start_epoch + 1} "
            f"(stage {schedule.stage_at(min(start_epoch, config.epochs - 1)).index})")

    train_model = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and config.amp
                else contextlib.nullcontext)
    augmenter = BatchAugmenter(ds.num_classes, schedule[0].image_size, ds.mean, ds.std,
                               num_ops=config.randaug_ops, padding=config.crop_padding, flip=config.flip)
    train_loader = DeviceLoader(ds.train, config.batch_size // ctx.world_size, shuffle=True, drop_last=True,
                                seed=config.seed, rank=ctx.rank, world_size=ctx.world_size)
    if len(train_loader) == 0:
        raise TrainingError(f"batch_size {config.batch_size} is larger than the {len(ds.train)} training images")
    val_loader = DeviceLoader(ds.val, config.eval_batch_size, shuffle=False)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"config": asdict(config), "schedule": schedule.rows(),
                                          "signature": signature, "dataset_source": ds.source,
                                          "command": sys.argv, "environment": environment()})
    log(f"{config.model} ({num_params:,} parameters) on {ds.name}: {len(ds.train)} train / {len(ds.val)} val / "
        f"{len(ds.test)} test images, {device}, {ctx.world_size} process(es)\n{schedule.describe()}")

    current_stage = None
    for epoch in range(start_epoch, config.epochs):
        stage = schedule.stage_at(epoch)
        apply_stage(stage, model, optimizer, augmenter)
        if stage is not current_stage:
            log(f"-- {stage.describe()}")
            current_stage = stage
        # Every epoch's randomness depends on (seed, epoch, rank) only: resuming replays it exactly.
        torch.manual_seed(config.seed * 1_000_003 + epoch * 101 + ctx.rank)
        gen = torch.Generator(device=device).manual_seed(config.seed * 7_919 + epoch * 31 + ctx.rank)
        train_loader.set_epoch(epoch)
        train_model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs} @{stage.image_size}px",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for i, (images, labels) in enumerate(bar):
            x, targets = augmenter(images, labels, gen)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = train_model(x)
            loss = soft_cross_entropy(logits, targets, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            steps += 1
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.detach().argmax(1) == targets.argmax(1)).sum()
            seen += len(labels)
            if i % 50 == 49 or i == len(train_loader) - 1:      # one host sync every 50 steps
                running = loss_sum.item() / seen
                if not math.isfinite(running):
                    last = checkpoints(out)
                    raise Diverged(f"loss became {running} in epoch {epoch + 1} (step {steps}); the last good "
                                   f"checkpoint is {last[-1] if last else 'none (first epoch)'}; lower the "
                                   f"learning rate or check the data")
                bar.set_postfix(loss=f"{running:.3f}")
            if config.max_steps is not None and steps >= config.max_steps:
                break
        train_seconds = time.perf_counter() - t0
        stats = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                                        torch.tensor(seen, device=device, dtype=torch.float64)]), ctx)
        train_loss, train_acc = (stats[0] / stats[2]).item(), (stats[1] / stats[2]).item()
        eval_model = ema.module if ema is not None else model
        val_loss, val_acc = (evaluate(eval_model, val_loader, augmenter.eval_transform, autocast=autocast)
                             if len(ds.val) else (float("nan"), float("nan")))
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_acc)
        elif scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch + 1, "stage": stage.index, "image_size": stage.image_size,
               "randaug_magnitude": stage.randaug_magnitude, "mixup_alpha": stage.mixup_alpha,
               "dropout": stage.dropout, "drop_path": stage.drop_path, "weight_decay": stage.weight_decay,
               "lr": lr, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
               "val_accuracy": val_acc, "epoch_seconds": time.perf_counter() - t0,
               "train_images_per_second": int(stats[2].item()) / train_seconds,
               "elapsed_seconds": time.perf_counter() - started}
        history.append(row)
        log(f"epoch {epoch + 1:3d}/{config.epochs} @{stage.image_size}px  train {train_loss:.4f} / {train_acc:.2%}  "
            f"val {val_loss:.4f} / {val_acc:.2%}  lr {lr:.2e}  {row['train_images_per_second']:,.0f} img/s  "
            f"{row['epoch_seconds']:.1f}s")
        if ctx.is_main:
            save_checkpoint(out, {"epoch": epoch + 1, "steps": steps, "signature": signature,
                                  "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                  "ema": ema.state_dict() if ema is not None else None,
                                  "history": history, "config": asdict(config)}, config.keep_checkpoints)
            write_csv(out / "metrics.csv", history)
            write_json(out / "history.json", history)
        if config.max_steps is not None and steps >= config.max_steps:
            break

    final_model = ema.module if ema is not None else model
    test_loader = DeviceLoader(ds.test, config.eval_batch_size, shuffle=False)
    test_loss, test_acc = evaluate(final_model, test_loader, augmenter.eval_transform,
                                   tta_flip=config.tta_flip, autocast=autocast)
    wall = time.perf_counter() - started
    metrics = {"dataset": ds.name, "model": config.model, "num_params": num_params,
               "test_accuracy": test_acc, "test_loss": test_loss, "tta_flip": config.tta_flip,
               "ema": bool(ema), "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
               "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
               "epochs": len(history), "steps": steps, "wall_seconds": wall,
               "train_seconds": sum(h["epoch_seconds"] for h in history),
               "world_size": ctx.world_size, "device": str(device), "environment": environment(),
               "command": " ".join(sys.argv), "stages": schedule.rows()}
    if ctx.is_main:
        _atomic_write(out / "model.pt", lambda p: torch.save(unwrap(final_model).state_dict(), p))
        write_json(out / "metrics.json", metrics)
    log(f"test accuracy {test_acc:.2%} (loss {test_loss:.4f}{', flip TTA' if config.tta_flip else ''}) "
        f"in {wall:.0f}s; outputs in {out}")
    return metrics


def run_or_reuse(config: TrainConfig, out: str | os.PathLike, *, retrain: bool = False, **kwargs) -> dict:
    """Train, unless ``out`` already holds a finished run of exactly this config: then load it.

    Notebooks call this so that re-executing them (papermill, slides) does not retrain by accident,
    and retraining is one explicit flag.
    """
    out = Path(out)
    if not retrain and (out / "metrics.json").exists() and (out / "config.json").exists():
        saved = json.loads((out / "config.json").read_text())["config"]
        defaults = json.loads(json.dumps(asdict(TrainConfig()), default=str))
        saved = {**defaults, **saved}     # a field added since that run counts as its default
        if saved == json.loads(json.dumps(asdict(config), default=str)):
            kwargs.get("log", print)(f"reusing the finished run in {out} (retrain=True trains again)")
            return json.loads((out / "metrics.json").read_text())
    return train(config, out, overwrite=True, **kwargs)


# ---------------------------------------------------------------- command line

def parse_value(text: str):
    """``--set key=value`` values as YAML literals: numbers, booleans, lists, dicts."""
    import yaml
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.train", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="fashion_mnist, cifar10, cifar100 or an image folder")
    p.add_argument("--profile", default="quick", help="smoke, quick or paper")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, config)")
    p.add_argument("--model", help="override the profile's model, e.g. efficientnetv2_m")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer")
    p.add_argument("--scheduler")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field, value as YAML (repeatable), e.g. --set ema_decay=0.999")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
                                   "lr": args.lr, "optimizer": args.optimizer, "scheduler": args.scheduler,
                                   "device": args.device, "compile": args.compile}.items() if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    try:
        config = config_for(args.profile, args.dataset, **overrides)
        train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=sys.stderr.isatty())
    except (ValueError, TrainingError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: resume with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
