"""Preflight: the profile's real recipe, a few steps at every stage, before a long run starts.

    python -m lib.preflight --dataset fashion_mnist --profile paper --out runs/paper

It takes ``python -m lib.train``'s arguments (but ``--resume``/``--overwrite``) and gives the same
one-line refusals.

A student who rents a GPU for a night should learn in minutes, not at the first stage change,
that the recipe runs. The preflight builds the real model and data pipeline (batch size,
precision, compile, EMA, channels_last, accumulation), then at every stage's image size applies
the stage as training does and times a few optimizer steps; between stages it saves a checkpoint
and resumes from it into freshly built objects, as an interrupted run would. It prints one table
(seconds per step, images/s, peak memory, projected epoch and run time) and writes it to
``OUT/preflight.json``. On a CPU it may shrink the batch, and says so; timings read the clock
only after the device has finished its queued work.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from . import device, distributed
from .data import known_train_images
from .profiles import TrainConfig
from .progressive import schedule_from_spec
from .runs import RunFolder, TrainingError, write_json
from .train import (
    apply_stage,
    build,
    check_model_settings,
    checkpoint_state,
    epoch_generator,
    load_data,
    optimizer_step,
    restore,
)
from .train import main as train_main

CPU_BATCH = 8  # images per optimizer step on a CPU: enough to exercise every code path, quick at 200 px


def preflight(config: TrainConfig, out: str | Path, *, steps: int = 3, log=print) -> list[dict]:
    """Time ``steps`` optimizer steps at every stage of ``config``'s schedule; return the table rows."""
    config.validate()
    schedule = schedule_from_spec(config.schedule, config.epochs)
    ctx = distributed.setup(config.device)
    if ctx.distributed:
        raise TrainingError("run the preflight in one process (python -m lib.preflight ...), not under torchrun")
    check_model_settings(config, schedule)
    device.precision(config.amp, ctx.device)
    run_batch = config.batch_size
    if ctx.device.type == "cpu" and config.batch_size > CPU_BATCH * config.accumulate:
        config = dataclasses.replace(config, batch_size=CPU_BATCH * config.accumulate)
    folder = RunFolder(out)
    folder.check_path()
    scratch = RunFolder(folder.path / ".preflight")
    shutil.rmtree(scratch.path, ignore_errors=True)
    data = load_data(config, ctx)
    t = build(config, schedule, data, ctx)
    note = (
        f"{config.batch_size} (the profile's {run_batch}, smaller on a CPU)" if config.batch_size != run_batch else ""
    )
    log(
        f"preflight of {config.model} ({config.profile or 'custom'} profile) on {data.name}, {ctx.device} "
        f"({device.device_name(ctx.device)}), {t.precision.describe()}, {t.compiler.describe()}"
        + (f", batch {note}" if note else "")
    )
    images_per_epoch = projected_train_images(config, data.name, len(data.train), log) // run_batch * run_batch
    rows = []
    try:
        for stage in schedule:
            rows.append(time_stage(t, stage, steps, run_batch, images_per_epoch, note))
            log(format_row(rows[-1]))
            if stage is not schedule[-1]:  # cross the boundary as a resumed run would
                t.epoch = stage.end_epoch
                scratch.save_checkpoint(checkpoint_state(t), keep=1)
                t = build(config, schedule, data, ctx)
                restore(t, scratch, log=lambda *a: None)
    finally:
        shutil.rmtree(scratch.path, ignore_errors=True)
    total = sum(r["projected_run_seconds"] for r in rows)
    log(f"projected run on this device: {total / 3600:.1f} h ({config.epochs} epochs; evaluation not included)")
    folder.path.mkdir(parents=True, exist_ok=True)
    write_json(folder.path / "preflight.json", rows)
    return rows


def projected_train_images(config: TrainConfig, dataset: str, found: int, log=print) -> int:
    """Training images the real run will see: the full split of a known dataset when fewer are on
    disk here (a stand-in, or a partial download), else the images found (``limit`` included)."""
    full = known_train_images(dataset, config.val_fraction)
    if config.limit is None and full is not None and full > found:
        log(f"projecting for the full {dataset} training split ({full:,} images); {found:,} found here")
        return full
    return found


def time_stage(t, stage, steps: int, run_batch: int, images_per_epoch: int, note: str) -> dict:
    """One stage: a first step (where compile happens), then ``steps`` timed steps."""
    dev = t.ctx.device
    apply_stage(stage, t.model, t.optimizer, t.augmenter)
    t.train_loader.set_epoch(stage.start_epoch)
    gen = epoch_generator(t.config.seed, stage.start_epoch, 0, dev)
    batches = iter(t.train_loader)
    t.step_model.train()
    device.reset_peak_memory(dev)
    seconds = []
    try:
        for _ in range(steps + 1):
            images, labels = next(batches)
            x, targets = t.augmenter(images, labels, gen)
            device.synchronize(dev)
            started = time.perf_counter()
            loss, _ = optimizer_step(t, x, targets)
            float(loss)  # the step's result, on the host
            device.synchronize(dev)
            seconds.append(time.perf_counter() - started)
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"out of memory in stage {stage.index} at {stage.image_size}px with batch "
            f"{t.config.batch_size}: use a smaller --batch-size, or keep it and split each step "
            f"with --set accumulate=N"
        ) from None
    per_step = statistics.median(seconds[1:])
    per_image = per_step / t.config.batch_size
    epoch_seconds = per_image * images_per_epoch
    return {
        "stage": stage.index,
        "image_size": stage.image_size,
        "batch_size": t.config.batch_size,
        "run_batch_size": run_batch,
        "batch_note": note,
        "first_step_seconds": seconds[0],
        "seconds_per_step": per_step,
        "images_per_second": 1 / per_image,
        "peak_memory_bytes": device.peak_memory_bytes(dev),
        "epochs": stage.epochs,
        "projected_epoch_seconds": epoch_seconds,
        "projected_run_seconds": epoch_seconds * stage.epochs,
    }


def format_row(r: dict) -> str:
    return (
        f"stage {r['stage']}: {r['image_size']:4d}px  batch {r['batch_size']:4d}  first step {r['first_step_seconds']:7.2f}s  "
        f"{r['seconds_per_step']:7.3f} s/step  {r['images_per_second']:8.1f} img/s  peak {r['peak_memory_bytes'] / 2**30:5.2f} GiB  "
        f"epoch {r['projected_epoch_seconds'] / 60:7.1f} min  x{r['epochs']} = {r['projected_run_seconds'] / 3600:6.2f} h"
    )


# Dense peak FLOP/s of GPUs students rent or get free (vendor figures: bf16/fp16 tensor cores, dense).
GPU_PEAKS = {"T4 (fp16)": 65e12, "V100 (fp16)": 125e12, "A100 (bf16)": 312e12, "H100 SXM (bf16)": 989e12}


def training_flops(config: TrainConfig, train_images: int, in_channels: int, num_classes: int = 10) -> list[dict]:
    """Per stage: forward FLOPs per image (counted), images per epoch, epochs, and 3 x their product."""
    from .models import build_model, count_flops

    model = build_model(config.model, num_classes, in_channels, **config.model_overrides)
    images = train_images // config.batch_size * config.batch_size
    rows = []
    for stage in schedule_from_spec(config.schedule, config.epochs):
        forward = count_flops(model, stage.image_size, in_channels)
        rows.append(
            {
                "stage": stage.index,
                "image_size": stage.image_size,
                "epochs": stage.epochs,
                "forward_flops_per_image": forward,
                "images_per_epoch": images,
                "train_flops": 3 * forward * images * stage.epochs,
            }
        )
    return rows


def gpu_hours(train_flops: float, peak: float, fraction: float) -> float:
    """An estimate, not a measurement: training FLOPs over the share ``fraction`` of a GPU's peak."""
    return train_flops / (fraction * peak) / 3600


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.preflight``: the trainer's command line, with ``preflight`` in place of training."""
    return train_main(
        argv,
        prog="python -m lib.preflight",
        description=__doc__.splitlines()[0],
        run=lambda config, out: preflight(config, out),
    )


if __name__ == "__main__":
    sys.exit(main())
