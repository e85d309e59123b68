"""Transfer learning: torchvision's ImageNet weights in our models, frozen or fine-tuned.

    sd = pretrained_state_dict("efficientnetv2_s")            # torch hub cache first, then download
    model = build_pretrained("efficientnetv2_s", 100, sd)      # ImageNet backbone, fresh 100-class head
    freeze_backbone(model, "head")                             # linear probe; frozen BN stays in eval mode
    result = fine_tune(model, dataset, epochs=3, batch_size=64, lr=3e-3, image_size=224,
                       device="auto", trainable="head")

Three things decide whether a pretrained network transfers, and each has a function here:
1. the weights (``pretrained_state_dict``: torchvision's files, found offline in torch's hub cache);
2. the preprocessing they were trained with (``pretrained_transforms``: size, interpolation and
   mean/std of the weights, applied identically in training and evaluation);
3. what is frozen (``freeze_backbone``): a frozen part must behave exactly as at evaluation time,
   so its BatchNorm layers normalize with their stored ImageNet statistics and never update them.
   A "frozen" backbone whose BatchNorm still uses the statistics of each training batch computes
   different features in training than in validation; that, plus a preprocessing mismatch, is how
   a frozen model can reach 35% training but 9% validation accuracy (notebook 06).
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import RandAugment, normalize, random_crop_flip, resize
from .data import KNOWN_DATASETS, Dataset, DatasetError, DeviceLoader, load_dataset
from .models import build_model, count_parameters, load_torchvision_weights
from .models.blocks import DropPath
from .train import Diverged, evaluate, soft_cross_entropy, write_json

# Our model names -> torchvision's weights enums (``torchvision.models.get_weight("<enum>.DEFAULT")``).
WEIGHTS = {
    "efficientnetv2_s": "EfficientNet_V2_S_Weights",
    "efficientnetv2_m": "EfficientNet_V2_M_Weights",
    "efficientnetv2_l": "EfficientNet_V2_L_Weights",
    **{f"efficientnet_b{i}": f"EfficientNet_B{i}_Weights" for i in range(8)},
    "resnet50": "ResNet50_Weights",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights",
}
IMAGENET_CLASSES = 1000


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither in torch's hub cache nor downloadable; the message says how to fix it."""


# ---------------------------------------------------------------- weights

def weights_enum(model_name: str, weights: str = "DEFAULT"):
    """torchvision's weights entry for one of our model names (``weights``: DEFAULT, IMAGENET1K_V1, ...)."""
    from torchvision.models import get_weight
    if model_name not in WEIGHTS:
        raise ValueError(f"no pretrained weights known for {model_name!r}; choose one of {', '.join(WEIGHTS)}")
    try:
        return get_weight(f"{WEIGHTS[model_name]}.{weights}")
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"unknown weights {weights!r} for {model_name}: see torchvision.models."
                         f"{WEIGHTS[model_name]}") from None


def weights_path(model_name: str, cache_dir: str | os.PathLike | None = None,
                 weights: str = "DEFAULT") -> Path:
    """Where torchvision keeps (and looks for) the file: ``<torch.hub.get_dir()>/checkpoints/<name>.pth``."""
    folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / os.path.basename(urlparse(weights_enum(model_name, weights).url).path)


@contextlib.contextmanager
def _socket_timeout(seconds: float | None):
    """No download may hang for minutes on a machine without internet: bound every socket wait."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pretrained_state_dict(model_name: str, cache_dir: str | os.PathLike | None = None, *,
                          weights: str = "DEFAULT", download: bool = True, progress: bool = True,
                          timeout: float | None = 30.0) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state_dict for ``model_name`` (our name, e.g. ``efficientnetv2_s``).

    Looks in torch's hub cache first (``weights_path``: a copied-in file works offline), then
    downloads it there once with torchvision's weights API (hash-checked). Every failure becomes
    a one-line ``WeightsUnavailable`` that names the file, the folder and the URL.
    """
    entry = weights_enum(model_name, weights)
    path = weights_path(model_name, cache_dir, weights)
    size = entry.meta.get("_file_size")
    name = f"{path.name}{f' ({size:.0f} MB)' if size else ''}"
    how = (f"copy {entry.url} into {path.parent} (torch.hub.get_dir()/checkpoints; TORCH_HOME moves it), "
           f"or run with internet once")
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated copy, wrong file, ...
            raise WeightsUnavailable(f"{path} cannot be loaded ({_one_line(e)}): delete it, then {how}") from None
    if not download:
        raise WeightsUnavailable(f"no pretrained weights for {model_name}: {name} is not in {path.parent} "
                                 f"and downloads are off; {how}")
    try:
        with _socket_timeout(timeout):
            return entry.get_state_dict(model_dir=str(path.parent), progress=progress, check_hash=True,
                                        map_location="cpu", weights_only=True)
    except Exception as e:  # no network comes as URLError, socket.timeout, HTTPError, OSError, ...
        raise WeightsUnavailable(f"no pretrained weights for {model_name}: {name} is not in {path.parent} "
                                 f"and the download failed ({_one_line(e)}); {how}") from None


# ---------------------------------------------------------------- preprocessing

@dataclass
class PretrainedTransforms:
    """What ``weights.transforms()`` does, as plain values, plus a batched version of it.

    torchvision's ImageNet evaluation resizes the short side to ``resize_size`` and center-crops
    ``crop_size``. Small images (CIFAR's 32 px, Fashion-MNIST's 28 px) have nothing to crop, so
    ``__call__`` resizes the whole image straight to ``crop_size`` (or ``size``) with the
    weights' interpolation (antialiased when shrinking), repeats grey images to 3 channels and
    normalizes with the weights' mean/std. Use the same call for training and evaluation.
    """
    weights: str
    resize_size: int
    crop_size: int
    interpolation: str          # "bilinear" or "bicubic"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    antialias: bool = True
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """uint8 (or 0..255 float) N x C x H x W, C in (1, 3) -> normalized float N x 3 x size x size."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected N x C x H x W images with C in (1, 3), got {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = int(size or self.crop_size)
        if self.interpolation == "bilinear" or tuple(x.shape[-2:]) == (size, size):
            x = resize(x, size)
        else:
            shrinking = size < x.shape[-2] or size < x.shape[-1]
            x = F.interpolate(x, size=(size, size), mode=self.interpolation, align_corners=False,
                              antialias=shrinking and self.antialias).clamp_(0, 255)
        if x.device not in self._cache:       # mean/std tensors built once per device (no per-batch copy)
            self._cache[x.device] = (torch.tensor(self.mean, device=x.device), torch.tensor(self.std, device=x.device))
        return normalize(x, *self._cache[x.device])

    def values(self) -> dict:
        return {"weights": self.weights, "resize_size": self.resize_size, "crop_size": self.crop_size,
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
                "antialias": self.antialias}


def pretrained_transforms(model_name: str, weights: str = "DEFAULT") -> PretrainedTransforms:
    """The preprocessing of torchvision's weights for ``model_name`` (no download needed)."""
    entry = weights_enum(model_name, weights)
    t = entry.transforms()
    return PretrainedTransforms(weights=f"{type(entry).__name__}.{entry.name}",
                                resize_size=int(t.resize_size[0]), crop_size=int(t.crop_size[0]),
                                interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std),
                                antialias=bool(t.antialias))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- building and freezing

def build_pretrained(model_name: str, num_classes: int, state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
                     **overrides) -> nn.Module:
    """Our ``model_name`` with torchvision's weights; a fresh ``num_classes`` head unless it is 1000.

    ``state_dict``: a torchvision state_dict (``pretrained_state_dict``) or the path of a saved
    one. Every backbone tensor is checked for shape and kind while loading (``load_torchvision_weights``).
    ``overrides`` go to ``build_model`` (e.g. ``dropout``; ``small_input=True`` keeps every weight).
    """
    if not isinstance(state_dict, Mapping):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    model = build_model(model_name, num_classes, 3, **overrides)
    load_torchvision_weights(model, state_dict, skip_classifier=int(num_classes) != IMAGENET_CLASSES)
    return model


class _PinnedEval:
    """Mixin: ``train()`` leaves the module in eval mode. Frozen BatchNorm keeps normalizing with
    (and never updates) its running statistics; frozen stochastic depth/dropout stay off."""

    def train(self, mode: bool = True):
        return super().train(False)


class FrozenBatchNorm1d(_PinnedEval, nn.BatchNorm1d):
    pass


class FrozenBatchNorm2d(_PinnedEval, nn.BatchNorm2d):
    pass


class FrozenBatchNorm3d(_PinnedEval, nn.BatchNorm3d):
    pass


class FrozenSyncBatchNorm(_PinnedEval, nn.SyncBatchNorm):
    pass


class FrozenDropPath(_PinnedEval, DropPath):
    pass


class FrozenDropout(_PinnedEval, nn.Dropout):
    pass


# Swapping a module's class keeps its parameters, buffers and state_dict keys: only train() changes.
_PINNED = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d, nn.BatchNorm3d: FrozenBatchNorm3d,
           nn.SyncBatchNorm: FrozenSyncBatchNorm, DropPath: FrozenDropPath, nn.Dropout: FrozenDropout}
_UNPINNED = {pinned: plain for plain, pinned in _PINNED.items()}
TRAINABLE_HELP = "'head' (classifier only), 'last_stages:N' (last N stages + head) or 'all'"


def parse_trainable(trainable: str) -> int | None:
    """'head' -> 0, 'last_stages:N' -> N, 'all' -> None; anything else is a one-line ValueError."""
    key = str(trainable).strip().lower()
    if key == "all":
        return None
    if key == "head":
        return 0
    if key.startswith("last_stages:"):
        try:
            n = int(key.split(":", 1)[1])
        except ValueError:
            n = -1
        if n >= 0:
            return n
    raise ValueError(f"unknown trainable setting {trainable!r}: choose {TRAINABLE_HELP}")


def network_parts(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module], nn.Module]:
    """(modules before the stages, the stages in order, modules after them, the classifier).

    EfficientNet: [stem], stages 1..K of paper Table 4, [1x1 head conv]; classifier.
    ResNet: [conv1, bn1], layer1..layer4, []; fc.
    """
    if hasattr(model, "stages") and hasattr(model, "classifier"):
        return [model.stem], list(model.stages), [model.head], model.classifier
    if hasattr(model, "layer4") and hasattr(model, "fc"):
        return ([model.conv1, model.bn1], [model.layer1, model.layer2, model.layer3, model.layer4], [], model.fc)
    raise TypeError(f"freeze_backbone does not know the parts of {type(model).__name__}")


def _set_frozen(module: nn.Module, frozen: bool) -> None:
    for m in module.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(not frozen)
        cls = type(m)
        if frozen and cls in _PINNED:
            m.__class__ = _PINNED[cls]
            m.train(False)
        elif not frozen and cls in _UNPINNED:
            m.__class__ = _UNPINNED[cls]


def freeze_backbone(model: nn.Module, trainable: str = "head", *, bn_eval: bool = True) -> dict:
    """Make only ``trainable`` learn; return {"trainable": params, "total": params, "frozen_bn": layers}.

    trainable: 'head' = the classifier (a linear probe), 'last_stages:N' = the last N stages plus
    everything after them (1x1 head conv, classifier), 'all' = everything (full fine-tuning).
    Frozen parts get ``requires_grad=False`` and, with ``bn_eval=True`` (the point of this
    function), their BatchNorm, stochastic depth and dropout stay in eval mode through
    ``model.train()``: frozen means "computes exactly what it computes at evaluation time".
    ``bn_eval=False`` reproduces the naive freeze (gradients off, BatchNorm still on batch
    statistics and updating its running averages) for comparison only. Calling it again re-decides
    everything, so ``freeze_backbone(model, "all")`` undoes a freeze.
    """
    n_trainable_stages = parse_trainable(trainable)
    before, stages, after, classifier = network_parts(model)
    if n_trainable_stages is not None and n_trainable_stages > len(stages):
        raise ValueError(f"last_stages:{n_trainable_stages}: the model has only {len(stages)} stages")
    _set_frozen(model, False)
    if n_trainable_stages is not None:
        frozen = before + stages[: len(stages) - n_trainable_stages] + (after if n_trainable_stages == 0 else [])
        for module in frozen:
            if bn_eval:
                _set_frozen(module, True)
            else:
                for p in module.parameters():
                    p.requires_grad_(False)
    for p in classifier.parameters():
        p.requires_grad_(True)
    model.train(model.training)     # refresh the modes of swapped modules
    frozen_bn = sum(isinstance(m, _PinnedEval) and isinstance(m, nn.modules.batchnorm._BatchNorm)
                    for m in model.modules())
    return {"trainable": count_parameters(model, trainable_only=True), "total": count_parameters(model),
            "frozen_bn": frozen_bn}


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm running mean/var (to measure how far they drift)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var"))}


def batchnorm_drift(before: Mapping[str, torch.Tensor], model: nn.Module) -> float:
    """Largest absolute change of any running statistic since ``before`` (0.0: untouched)."""
    now = model.state_dict()
    return max((float((now[k].float() - v.float()).abs().max()) for k, v in before.items()), default=0.0)


# ---------------------------------------------------------------- fine-tuning

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}: choose adamw or sgd")


def _warmup_cosine(optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fine_tune(model: nn.Module, dataset: Dataset, *, epochs: int, batch_size: int, lr: float,
              image_size: int | None = None, device: str | torch.device = "auto", trainable: str = "all",
              transforms: PretrainedTransforms | None = None, optimizer: str = "adamw",
              weight_decay: float = 0.05, label_smoothing: float = 0.1, warmup_fraction: float = 0.05,
              padding: int | None = None, flip: bool = True, randaug_magnitude: float = 0.0,
              bn_eval: bool = True, eval_batch_size: int | None = None, seed: int = 0,
              max_steps: int | None = None, out_dir: str | os.PathLike | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train ``model`` on ``dataset`` (uint8 splits) with only ``trainable`` parts learning.

    Per step: random crop (``padding``, reflect; default 4 px for images up to 64 px, else none)
    and flip at native resolution, optional RandAugment, then ``transforms`` at ``image_size``
    (default: the weights' crop size). Validation and test use ``transforms`` alone: the same
    resize and normalization as training. AdamW (or SGD) with linear warmup and per-step cosine
    decay, label smoothing, bf16 autocast and channels_last on CUDA.

    Returns {"history": [per-epoch dicts], "test_accuracy", "test_loss", "wall_seconds", ...};
    with ``out_dir`` also writes ``metrics.json`` (same content) and ``history.json`` there.
    """
    started = time.perf_counter()
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    device = resolve_device(device)
    transforms = transforms or PretrainedTransforms("imagenet", 224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    image_size = int(image_size or transforms.crop_size)
    if image_size < getattr(model, "min_input_size", 1):
        raise ValueError(f"image_size {image_size} is below the model's minimum {model.min_input_size} px")
    padding = (4 if dataset.image_size <= 64 else 0) if padding is None else padding
    counts = freeze_backbone(model, trainable, bn_eval=bn_eval)
    ds = dataset.to(device)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    train_loader = DeviceLoader(ds.train, batch_size, shuffle=True, drop_last=len(ds.train) >= batch_size, seed=seed)
    eval_bs = eval_batch_size or 2 * batch_size
    val_loader = DeviceLoader(ds.val, eval_bs, shuffle=False)
    total_steps = epochs * len(train_loader) if max_steps is None else min(max_steps, epochs * len(train_loader))
    opt = _optimizer(model, optimizer, lr, weight_decay)
    scheduler = _warmup_cosine(opt, total_steps, max(1, round(warmup_fraction * total_steps)))
    randaug = RandAugment(2, randaug_magnitude) if randaug_magnitude > 0 else None
    evaluate_transform = lambda images: transforms(images, image_size)  # noqa: E731
    log(f"fine-tuning {type(model).__name__} ({trainable}: {counts['trainable']:,} of {counts['total']:,} "
        f"parameters trainable, {counts['frozen_bn']} frozen BatchNorm layers) on {ds.name}: "
        f"{len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test images at {image_size} px, "
        f"{optimizer} lr {lr:g}, {epochs} epoch(s), {device}")

    history, steps = [], 0
    for epoch in range(epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)
        gen = torch.Generator(device=device).manual_seed(seed * 7_919 + epoch)
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for images, labels in bar:
            images = random_crop_flip(images, padding, gen, flip, "reflect" if padding else "zeros")
            if randaug is not None:
                images = randaug(images, gen)
            x = transforms(images, image_size)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(x)
            loss = soft_cross_entropy(logits, F.one_hot(labels, logits.shape[1]).float(), label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            steps += 1
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if max_steps is not None and steps >= max_steps:
                break
        train_seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise Diverged(f"loss became {train_loss} in epoch {epoch + 1}: lower the learning rate (now {lr:g})")
        val_loss, val_acc = (evaluate(model, val_loader, evaluate_transform, autocast=autocast)
                             if len(ds.val) else (float("nan"), float("nan")))
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": correct.item() / max(seen, 1),
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": opt.param_groups[0]["lr"],
               "train_seconds": train_seconds, "seconds": time.perf_counter() - t0,
               "train_images_per_second": seen / train_seconds if train_seconds > 0 else float("nan")}
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}  train {row['train_loss']:.3f} / {row['train_accuracy']:.2%}  "
            f"val {val_loss:.3f} / {val_acc:.2%}  {row['seconds']:.1f}s")
        if max_steps is not None and steps >= max_steps:
            break

    test_loss, test_acc = evaluate(model, DeviceLoader(ds.test, eval_bs, shuffle=False), evaluate_transform,
                                   autocast=autocast)
    wall = time.perf_counter() - started
    result = {"dataset": ds.name, "model": type(model).__name__, "trainable": trainable,
              "trainable_params": counts["trainable"], "total_params": counts["total"],
              "frozen_bn": counts["frozen_bn"], "bn_eval": bn_eval, "image_size": image_size,
              "epochs": len(history), "steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
              "label_smoothing": label_smoothing, "transforms": transforms.values(), "device": str(device),
              "test_accuracy": test_acc, "test_loss": test_loss, "wall_seconds": wall,
              "final_val_accuracy": history[-1]["val_accuracy"] if history else None, "history": history}
    log(f"test accuracy {test_acc:.2%} in {wall:.0f}s")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "history.json", history)
        write_json(out / "metrics.json", result)
    return result


# ---------------------------------------------------------------- notebook helpers

# Per profile: model, training resolution, epochs / lr per mode ("head": frozen backbone, "all": full
# fine-tuning), images per split (None: all), and whether to download what is missing.
TRANSFER_PROFILES = {
    "smoke": {"model": "efficientnet_b0", "image_size": 64, "batch_size": 32, "limit": 128,
              "epochs": {"head": 1, "all": 1}, "lr": {"head": 3e-3, "all": 3e-4}, "download": False},
    "quick": {"model": "efficientnet_b0", "image_size": 128, "batch_size": 64, "limit": 2000,
              "epochs": {"head": 3, "all": 2}, "lr": {"head": 3e-3, "all": 3e-4}, "download": True},
    "paper": {"model": "efficientnetv2_s", "image_size": 384, "batch_size": 128, "limit": None,
              "epochs": {"head": 5, "all": 10}, "lr": {"head": 3e-3, "all": 1e-4}, "download": True},
}
TRANSFER_DATASETS = ("cifar100", "cifar10")


def transfer_settings(profile: str, model: str = "auto", image_size: int | None = None) -> dict:
    """The profile's settings with the notebook's overrides; one-line errors for bad values."""
    if profile not in TRANSFER_PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(TRANSFER_PROFILES)}")
    settings = {**TRANSFER_PROFILES[profile]}
    if model != "auto":
        if model not in WEIGHTS:
            raise ValueError(f"unknown model {model!r}: choose 'auto' or one with pretrained weights: "
                             f"{', '.join(WEIGHTS)}")
        settings["model"] = model
    if image_size is not None:
        if not isinstance(image_size, int) or image_size < 33:
            raise ValueError(f"image_size must be an integer >= 33 (the models' minimum), got {image_size!r}")
        settings["image_size"] = image_size
    return settings


def transfer_targets(dataset: str, transfer_datasets) -> list[str]:
    """The datasets to transfer to: ``transfer_datasets``, with ``dataset`` first when it is one of
    them (so ``-p dataset cifar10`` leads with CIFAR-10; Fashion-MNIST changes nothing)."""
    if isinstance(transfer_datasets, str):
        transfer_datasets = [transfer_datasets]
    if not transfer_datasets:
        raise ValueError(f"transfer_datasets is empty: name at least one of {', '.join(KNOWN_DATASETS)}")
    spelled = {name.replace("_", ""): name for name in KNOWN_DATASETS}      # CIFAR-100, cifar_100, ...
    targets = [spelled.get(str(t).lower().replace("-", "").replace("_", ""), str(t)) for t in transfer_datasets]
    unknown = [t for t in targets if t not in KNOWN_DATASETS]
    if unknown:
        raise ValueError(f"unknown transfer dataset(s) {unknown}: choose from {', '.join(KNOWN_DATASETS)}")
    targets = list(dict.fromkeys(targets))
    return sorted(targets, key=lambda t: t != dataset)


def torchvision_model(model_name: str, **kwargs) -> nn.Module:
    """torchvision's network for one of our names (``weights=None``: random init, no download)."""
    import torchvision
    if model_name not in WEIGHTS:
        raise ValueError(f"no torchvision counterpart known for {model_name!r}; choose one of {', '.join(WEIGHTS)}")
    return getattr(torchvision.models, model_name.replace("efficientnetv2_", "efficientnet_v2_"))(**kwargs)


def load_or_explain(name: str, root: str | os.PathLike, *, download: bool, limit: int | None = None,
                    seed: int = 0, val_fraction: float = 0.1) -> tuple[Dataset | None, str | None]:
    """(dataset, None) or (None, one line naming what is missing and how to get it)."""
    try:
        return load_dataset(name, root, val_fraction=val_fraction, seed=seed, download=download, limit=limit), None
    except DatasetError as e:
        return None, str(e)


def weights_or_explain(model_name: str, *, download: bool) -> tuple[dict | None, str | None]:
    """(state_dict, None) or (None, the one-line WeightsUnavailable message)."""
    try:
        return pretrained_state_dict(model_name, download=download), None
    except WeightsUnavailable as e:
        return None, str(e)


__all__ = [
    "WEIGHTS", "WeightsUnavailable", "weights_enum", "weights_path", "pretrained_state_dict",
    "PretrainedTransforms", "pretrained_transforms", "IMAGENET_MEAN", "IMAGENET_STD",
    "build_pretrained", "freeze_backbone", "parse_trainable", "network_parts", "batchnorm_state",
    "batchnorm_drift", "fine_tune", "resolve_device", "TRANSFER_PROFILES", "TRANSFER_DATASETS",
    "transfer_settings", "transfer_targets", "torchvision_model", "load_or_explain", "weights_or_explain",
]
