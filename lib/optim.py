"""The optimizer, its learning rate (torch.optim.lr_scheduler, per step) and the EMA of its weights.

Weight decay is a progressive-learning regularizer (it changes per stage), so it lives in the
optimizer's ``scheduled_decay`` group and the trainer sets it at each stage; BatchNorm and biases
never decay. The learning rate is ``lr x warm-up x decay`` at every optimizer step:

- warm-up: linear from ``lr / warmup_steps`` to ``lr`` over ``warmup_epochs`` (fine-tuning a
  pretrained network with a fresh head, or a large batch, needs it);
- decay: ``exponential`` (``gamma ** epoch``, the coursework's per-epoch ExponentialLR),
  ``cosine`` (to zero over the run, per step), ``plateau`` (ReduceLROnPlateau: halve after 2
  epochs without a better validation accuracy) or ``none``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    LambdaLR,
    LRScheduler,
    MultiplicativeLR,
    ReduceLROnPlateau,
    SequentialLR,
)

from .profiles import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Two groups: weight decay (scheduled per stage) on conv/linear weights, none on BN and biases.
    Frozen parameters (``requires_grad=False``) are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": 0.0, "scheduled_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "scheduled_decay": False},
    ]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum, alpha=0.9, eps=1e-3)


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        if group.get("scheduled_decay"):
            group["weight_decay"] = value


# ReduceLROnPlateau as the coursework used it: halve the rate after 2 epochs without a relatively
# better validation accuracy; eps=0: every halving is applied, however small the rate.
PLATEAU = {"mode": "max", "factor": 0.5, "patience": 2, "threshold": 1e-4, "threshold_mode": "rel", "eps": 0.0}


def lr_schedulers(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> tuple[LRScheduler, ReduceLROnPlateau | None]:
    """The learning rate as torch.optim.lr_scheduler objects: one moved on before every optimizer step
    after the first (``step_lr``), and for ``plateau`` a ReduceLROnPlateau stepped after validation.

    Per step, LambdaLR sets ``lr x warm-up`` and MultiplicativeLR, chained after it, multiplies that
    by the decay: in this order the product is bit for bit the one the trainer always computed, so
    seeded runs keep their weights. ``plateau`` has no per-step decay: after the warm-up, SequentialLR
    hands over to a MultiplicativeLR of 1, which leaves the rate to ReduceLROnPlateau.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    warm_up = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    if config.scheduler == "plateau":
        earliest = PLATEAU["patience"] + 2  # epochs before ReduceLROnPlateau can first halve the rate
        if warmup_steps > earliest * steps_per_epoch:
            raise ValueError(
                f"scheduler plateau may halve the rate after {earliest} epochs, inside a warm-up of "
                f"{config.warmup_epochs:g} epochs, which would undo it: warm up for at most {earliest}"
            )
        steady = MultiplicativeLR(optimizer, lambda step: 1.0)
        return (
            SequentialLR(optimizer, [warm_up, steady], milestones=[warmup_steps]),
            ReduceLROnPlateau(optimizer, **PLATEAU),
        )

    def exponential(step: int) -> float:  # the coursework's ExponentialLR, per epoch
        return config.gamma ** (step // steps_per_epoch)

    def cosine(step: int) -> float:  # to zero at the end of the run
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))

    decay = {"exponential": exponential, "cosine": cosine, "none": lambda step: 1.0}[config.scheduler]
    return ChainedScheduler([warm_up, MultiplicativeLR(optimizer, decay)]), None


def step_lr(per_step: LRScheduler) -> None:
    """Move the rate on to the next optimizer step. A first step that fp16's GradScaler skipped still
    counts (the rate follows the step count), so torch's warning about the order does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        per_step.step()


def ema_of(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics, warmed up.

    At update t the decay is min(decay, (1 + t) / (10 + t)): early updates follow the model
    closely, so the random initial weights and BatchNorm's initial running variance of 1 fade at
    once. Without it they keep the weight decay**t, which fades slowly at a decay near 1, and a
    late BatchNorm whose true variance is small still normalizes with a share of that initial 1:
    the average can predict at chance. Computed on the device, without a host synchronisation per
    step.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        weight = 1 - torch.clamp((1 + updates) / (10 + updates), max=decay).to(averaged[0].dtype)
        torch._foreach_lerp_(averaged, current, weight)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)
