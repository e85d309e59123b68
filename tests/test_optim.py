"""The learning rate through torch.optim.lr_scheduler: the same rate at every step as the closed
formula the trainer used before (lr x warm-up x decay, the plateau rule per epoch), bit for bit,
also across a checkpoint and resume."""

import math

import pytest
import torch

from lib.optim import lr_schedulers, make_optimizer, step_lr
from lib.profiles import TrainConfig

STEPS_PER_EPOCH, EPOCHS = 7, 12
# Validation accuracies per epoch: a rise, plateaus that halve the rate, a NaN (no validation split).
ACCURACIES = [0.5, 0.6, 0.6, 0.6, 0.6, 0.59, 0.7, 0.70001, 0.7, 0.7, math.nan, 0.7]


def formula(config: TrainConfig) -> list[float]:
    """The rate of every step as the trainer computed it before torch's schedulers (the former
    ``lib.optim.LearningRate``): base x warm-up x decay, in that order, with ReduceLROnPlateau's rule
    (mode max, relative threshold 1e-4, patience 2, factor 0.5)."""
    warmup_steps = round(config.warmup_epochs * STEPS_PER_EPOCH)
    scale, best, bad, rates = 1.0, -math.inf, 0, []
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        if config.scheduler == "exponential":
            decay = config.gamma ** (step // STEPS_PER_EPOCH)
        elif config.scheduler == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(1.0, step / (STEPS_PER_EPOCH * EPOCHS))))
        else:
            decay = scale
        rates.append(config.lr * warmup * decay)
        if step % STEPS_PER_EPOCH == STEPS_PER_EPOCH - 1 and config.scheduler == "plateau":
            accuracy = ACCURACIES[step // STEPS_PER_EPOCH]
            if math.isfinite(accuracy):
                if accuracy > best * (1 + 1e-4):
                    best, bad = accuracy, 0
                else:
                    bad += 1
                    if bad > 2:
                        scale, bad = scale * 0.5, 0
    return rates


def build(config: TrainConfig):
    optimizer = make_optimizer(torch.nn.Linear(3, 2), config)
    return optimizer, *lr_schedulers(optimizer, config, STEPS_PER_EPOCH)


def scheduled(config: TrainConfig, resume_at: int | None = None) -> list[float]:
    """The rates the trainer's protocol reads: ``step_lr`` before every step but the first, the
    plateau rule after each epoch; at ``resume_at`` a checkpoint is loaded into new objects."""
    optimizer, per_step, plateau = build(config)
    rates = []
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        if step == resume_at:
            saved = {
                "optimizer": optimizer.state_dict(),
                "per_step": per_step.state_dict(),
                "plateau": plateau.state_dict() if plateau else None,
            }
            optimizer, per_step, plateau = build(config)
            optimizer.load_state_dict(saved["optimizer"])
            per_step.load_state_dict(saved["per_step"])
            if plateau:
                plateau.load_state_dict(saved["plateau"])
        if step:
            step_lr(per_step)
        rates.append(optimizer.param_groups[0]["lr"])
        assert all(group["lr"] == rates[-1] for group in optimizer.param_groups)
        optimizer.step()
        accuracy = ACCURACIES[step // STEPS_PER_EPOCH]
        if step % STEPS_PER_EPOCH == STEPS_PER_EPOCH - 1 and plateau and math.isfinite(accuracy):
            plateau.step(accuracy)
    return rates


KINDS = [(kind, warmup) for kind in ("exponential", "cosine", "plateau", "none") for warmup in (0.0, 0.5, 2.3)]


@pytest.mark.parametrize("kind, warmup", KINDS, ids=[f"{k}-warmup{w}" for k, w in KINDS])
def test_every_step_has_the_rate_of_the_closed_formula(kind, warmup):
    config = TrainConfig(scheduler=kind, warmup_epochs=warmup, epochs=EPOCHS, lr=0.1, gamma=0.9)
    rates = formula(config)
    assert scheduled(config) == rates  # bit for bit, not approximately
    if kind == "plateau":
        assert rates[-1] == config.lr / 4  # the rule halved the rate twice
    if warmup:  # the warm-up starts at lr / warm-up steps
        assert rates[0] == config.lr * (1 / round(warmup * STEPS_PER_EPOCH))


@pytest.mark.parametrize("kind", ["exponential", "cosine", "plateau"])
@pytest.mark.parametrize("resume_at", [3, 2 * STEPS_PER_EPOCH, 5 * STEPS_PER_EPOCH + 4])
def test_a_resumed_schedule_goes_on_bit_for_bit(kind, resume_at):
    config = TrainConfig(scheduler=kind, warmup_epochs=2.3, epochs=EPOCHS, lr=3e-3, gamma=0.97)
    assert scheduled(config, resume_at) == formula(config)


def test_a_plateau_warm_up_longer_than_its_patience_is_refused():
    config = TrainConfig(scheduler="plateau", warmup_epochs=4.5, epochs=EPOCHS)
    with pytest.raises(ValueError, match="warm up for at most 4"):
        build(config)
