"""Seconds to a validation accuracy: our trainer against the plain PyTorch way, in one run.

    python benchmarks/time_to_accuracy.py                     # Fashion-MNIST, 90% validation, ~15 min on 2 cores
    python benchmarks/time_to_accuracy.py --target 0.88 --epochs 4
    python benchmarks/time_to_accuracy.py --ours quick --compile   # the quick recipe, compiled: ~11 min

Both sides train the same network (the ``quick`` profile's V2-S, width 0.35 / depth 0.2 with the
small-image stem; the peer builds it with torchvision's ``EfficientNet`` class, and the parameter
counts and the outputs with the same weights are checked equal) at 28 px with the same recipe: Adam, per-step cosine learning rate,
label smoothing 0.1, 2 px crops, flips and RandAugment (1 op, magnitude 5), batch 128, and
validate on the same 6,000 held-out training images after every epoch. The peer is what a PyTorch
user writes: ``torchvision.datasets.FashionMNIST``, ``transforms.v2`` on PIL images, a
``DataLoader`` with worker processes and the usual loop. Ours is ``lib.train.train``: device-resident
uint8 data, batched augmentation, channels_last. Each side's clock starts before it loads data and
stops at the end of the first epoch whose validation accuracy reaches the target. No EMA, no TTA:
what differs is the pipeline, not the recipe. Record the machine (``lscpu``) with the numbers.

``--ours quick`` gives our side the ``quick`` profile's own recipe instead (SGD with Nesterov momentum
and weight decay after a half-epoch warm-up, EMA of weights 0.999, no RandAugment; same network,
batch, epochs and cosine length) while the peer keeps the plain recipe above: the ratio then
measures what the trainer and its defaults buy together.

``--compile`` compiles our side's training step with inductor (a C++ compiler must be installed). The
first compile on a machine takes about a minute; inductor keeps what it built in a cache on disk, so
every later run loads it in seconds. The benchmark measures both: it first compiles into a fresh
cache (one training step, timed apart and printed as the one-off cost), then starts our clock, so the
measured run pays what a second run pays, and the last line gives the ratio with the one-off cost
counted too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig
from torchvision.ops.misc import Conv2dNormActivation
from torchvision.transforms import v2

from lib import device
from lib.data import Split, load_dataset, stratified_split
from lib.models import build_model, count_parameters
from lib.models.efficientnet import VARIANTS, make_divisible, scale_table
from lib.profiles import config_for
from lib.runs import cpu_flags, cpu_name
from lib.train import train


def recipe(args):
    """The shared recipe, as our TrainConfig (the peer reads its numbers from it)."""
    return config_for(
        "quick",
        "fashion_mnist",
        epochs=args.epochs,
        ema_decay=0.0,
        tta_flip=False,
        randaug_ops=1,
        data_root=args.data_root,
        seed=args.seed,
        warmup_epochs=0.0,
        optimizer="adam",
        lr=3e-3,
        schedule={
            "num_stages": 1,
            "size": [28, 28],
            "randaug_magnitude": 5,
            "mixup_alpha": 0,
            "dropout": 0,
            "drop_path": 0,
            "weight_decay": 0,
        },
    )


def ours_recipe(args):
    """Our side's settings: the shared recipe, or (``--ours quick``) the quick profile's own."""
    if args.ours == "same":
        return recipe(args)
    return config_for(
        "quick", "fashion_mnist", epochs=args.epochs, data_root=args.data_root, seed=args.seed, tta_flip=False
    )


def torchvision_twin(config) -> nn.Module:
    """The same network from torchvision's EfficientNet class: our scaled stage table as its
    block configs, BatchNorm eps/momentum as ours, and a stride-1 one-channel stem."""
    o = config.model_overrides
    v = VARIANTS[config.model]
    table = scale_table(v.table, o["width_mult"], o["depth_mult"])
    norm = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=o.get("bn_momentum", 0.1))
    stem = make_divisible(v.stem * o["width_mult"])
    blocks, channels = [], stem
    for row in table:
        kind = FusedMBConvConfig if row.block == "fused" else MBConvConfig
        blocks.append(kind(row.expand, row.kernel, row.stride, channels, row.out, row.layers))
        channels = row.out
    model = EfficientNet(
        blocks,
        dropout=0.0,
        stochastic_depth_prob=0.0,
        num_classes=10,
        norm_layer=norm,
        last_channel=make_divisible(v.head * o["width_mult"]),
    )
    model.features[0] = Conv2dNormActivation(
        1, stem, kernel_size=3, stride=1, norm_layer=norm, activation_layer=nn.SiLU
    )
    return model


def compile_once(config) -> float:
    """Seconds to compile our training step into a fresh inductor cache (one step, then stop)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cache_")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train(dataclasses.replace(config, max_steps=1), out, progress=False, log=lambda *a, **k: None)
    return time.perf_counter() - started


def ours(config, target: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train(config, out, progress=False, log=lambda *a, **k: None)
        wall = time.perf_counter() - started
        history = json.loads((Path(out) / "history.json").read_text())
    curve = [(h["elapsed_seconds"], h["val_accuracy"]) for h in history]
    return {"curve": curve, "seconds_to_target": next((s for s, a in curve if a >= target), None), "wall": wall}


def peer(config, target: float, workers: int) -> dict:
    """The plain way: torchvision dataset + transforms.v2 + DataLoader workers + the usual loop."""
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    raw = torchvision.datasets.FashionMNIST(config.data_root, train=True, download=False)
    _, val = stratified_split(Split(torch.arange(len(raw)), raw.targets), config.val_fraction, config.seed)
    val_mask = torch.zeros(len(raw), dtype=torch.bool)
    val_mask[val.images] = True
    mean, std = (raw.data[~val_mask].float() / 255).mean().item(), (raw.data[~val_mask].float() / 255).std().item()
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])]
    augment = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomCrop(28, padding=config.crop_padding),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=1, magnitude=5),
            *finish,
        ]
    )
    plain = v2.Compose([v2.PILToTensor(), *finish])
    train_set = torch.utils.data.Subset(
        torchvision.datasets.FashionMNIST(config.data_root, transform=augment),
        torch.nonzero(~val_mask).flatten().tolist(),
    )
    val_set = torch.utils.data.Subset(
        torchvision.datasets.FashionMNIST(config.data_root, transform=plain), val.images.tolist()
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=config.eval_batch_size, num_workers=workers)
    model = torchvision_twin(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(loader))
    curve = []
    for _ in range(config.epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        curve.append((time.perf_counter() - started, correct / len(val_set)))
        if curve[-1][1] >= target:
            break
    return {
        "curve": curve,
        "seconds_to_target": next((s for s, a in curve if a >= target), None),
        "wall": time.perf_counter() - started,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=0.90, help="validation accuracy to reach")
    p.add_argument(
        "--epochs", type=int, default=5, help="the recipe's length (cosine schedule); the peer stops at the target"
    )
    p.add_argument("--workers", type=int, default=2, help="the peer's DataLoader worker processes")
    p.add_argument("--data-root", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ours",
        choices=["same", "quick"],
        default="same",
        help="our side's recipe: the shared one (the pipeline alone) or the quick profile's own",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile our training step with inductor (the one-off compile is timed apart)",
    )
    args = p.parse_args()
    config, our_config = recipe(args), ours_recipe(args)
    if args.compile:
        our_config = dataclasses.replace(our_config, compile="inductor")
        try:
            device.require_cpp_compiler()  # a missing C++ compiler: one line, now
        except ValueError as e:
            p.error(str(e))
    assert (our_config.model, our_config.model_overrides) == (config.model, config.model_overrides)
    load_dataset("fashion_mnist", args.data_root)  # the torchvision layout in data/ (decompressed on first use)
    ours_model, twin = build_model(config.model, 10, 1, **config.model_overrides), torchvision_twin(config)
    ours_params, twin_params = count_parameters(ours_model), count_parameters(twin)
    assert ours_params == twin_params, (ours_params, twin_params)
    twin.load_state_dict(dict(zip(twin.state_dict(), ours_model.state_dict().values())))  # same order, same shapes
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(ours_model.eval()(x), twin.eval()(x)), "the torchvision twin is not the same network"
    print(
        f"{cpu_name()} ({cpu_flags()}), {torch.get_num_threads()} threads; {config.model} "
        f"{config.model_overrides}: {ours_params:,} parameters on both sides; target {args.target:.0%} validation"
    )
    if args.ours == "quick":
        print(
            f"ours: the quick recipe ({our_config.optimizer} lr {our_config.lr}, weight decay "
            f"{our_config.schedule['weight_decay']}, EMA {our_config.ema_decay}, RandAugment ops {our_config.randaug_ops}); "
            f"peer: the shared recipe ({config.optimizer} lr {config.lr}, no EMA, RandAugment 1 op at 5); "
            f"{args.epochs}-epoch cosine on both"
        )
    first_compile = None
    if args.compile:
        first_compile = compile_once(our_config)
        print(
            f"ours: compiled with inductor into a fresh cache in {first_compile:.0f} s (one step; once per machine, "
            f"outside the clock); the run below loads it from that cache"
        )
    results = {
        f"ours (lib.train, {args.ours} recipe{', compiled' if args.compile else ''})": ours(our_config, args.target),
        f"plain PyTorch (DataLoader, {args.workers} workers)": peer(config, args.target, args.workers),
    }
    for name, r in results.items():
        curve = ", ".join(f"{a:.2%}@{s:.0f}s" for s, a in r["curve"])
        reached = f"{r['seconds_to_target']:.0f} s" if r["seconds_to_target"] else "not reached"
        print(f"  {name:40s} to target: {reached:>12s}   per epoch: {curve}")
    a, b = (r["seconds_to_target"] for r in results.values())
    if a and b:
        print(f"ours reaches {args.target:.0%} {b / a:.2f}x faster")
        if first_compile:
            print(f"counting the one-off compile too ({a:.0f} + {first_compile:.0f} s): {b / (a + first_compile):.2f}x")


if __name__ == "__main__":
    main()
