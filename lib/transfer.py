"""Pretrained weights: torchvision's ImageNet files in our models, their preprocessing, freezing.

    model = build_model("efficientnetv2_s", 100)
    load_pretrained(model, "DEFAULT")              # torch hub cache first, then download; fresh head
    freeze_backbone(model, "head")                 # linear probe; frozen BatchNorm stays in eval mode
    x = pretrained_transforms("efficientnetv2_s")(uint8_images, 224)

Training with them is a setting of the one trainer (``TrainConfig.pretrained``, ``trainable``,
``preprocessing``); why each of the three matters is notebook 06's story.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .augment import normalize, resize
from .models import build_model, count_parameters, load_torchvision_weights
from .models.blocks import DropPath
from .profiles import TRAINABLE_HELP

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
        raise ValueError(
            f"unknown weights {weights!r} for {model_name}: see torchvision.models.{WEIGHTS[model_name]}"
        ) from None


def weights_path(model_name: str, cache_dir: str | os.PathLike | None = None, weights: str = "DEFAULT") -> Path:
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


def pretrained_state_dict(
    model_name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    weights: str = "DEFAULT",
    download: bool = True,
    progress: bool = True,
    timeout: float | None = 30.0,
) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state_dict for ``model_name`` (our name, e.g. ``efficientnetv2_s``).

    Looks in torch's hub cache first (``weights_path``: a copied-in file works offline), then
    downloads it there once with torchvision's weights API (hash-checked). Every failure becomes
    a one-line ``WeightsUnavailable`` that names the file, the folder and the URL.
    """
    entry = weights_enum(model_name, weights)
    path = weights_path(model_name, cache_dir, weights)
    size = entry.meta.get("_file_size")
    name = f"{path.name}{f' ({size:.0f} MB)' if size else ''}"
    how = (
        f"copy {entry.url} into {path.parent} (torch.hub.get_dir()/checkpoints; TORCH_HOME moves it), "
        f"or run with internet once"
    )
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated copy, wrong file, ...
            raise WeightsUnavailable(f"{path} cannot be loaded ({_one_line(e)}): delete it, then {how}") from None
    if not download:
        raise WeightsUnavailable(
            f"no pretrained weights for {model_name}: {name} is not in {path.parent} and downloads are off; {how}"
        )
    try:
        with _socket_timeout(timeout):
            return entry.get_state_dict(
                model_dir=str(path.parent), progress=progress, check_hash=True, map_location="cpu", weights_only=True
            )
    except Exception as e:  # no network comes as URLError, socket.timeout, HTTPError, OSError, ...
        raise WeightsUnavailable(
            f"no pretrained weights for {model_name}: {name} is not in {path.parent} "
            f"and the download failed ({_one_line(e)}); {how}"
        ) from None


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
    interpolation: str  # "bilinear" or "bicubic"
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
            x = F.interpolate(
                x,
                size=(size, size),
                mode=self.interpolation,
                align_corners=False,
                antialias=shrinking and self.antialias,
            ).clamp_(0, 255)
        if x.device not in self._cache:  # mean/std tensors built once per device (no per-batch copy)
            self._cache[x.device] = (torch.tensor(self.mean, device=x.device), torch.tensor(self.std, device=x.device))
        return normalize(x, *self._cache[x.device])

    def values(self) -> dict:
        return {
            "weights": self.weights,
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "antialias": self.antialias,
        }


def pretrained_transforms(model_name: str, weights: str = "DEFAULT") -> PretrainedTransforms:
    """The preprocessing of torchvision's weights for ``model_name`` (no download needed)."""
    entry = weights_enum(model_name, weights)
    t = entry.transforms()
    return PretrainedTransforms(
        weights=f"{type(entry).__name__}.{entry.name}",
        resize_size=int(t.resize_size[0]),
        crop_size=int(t.crop_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
        antialias=bool(t.antialias),
    )


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- building and freezing


def build_pretrained(
    model_name: str, num_classes: int, state_dict: Mapping[str, torch.Tensor] | str | os.PathLike, **overrides
) -> nn.Module:
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
_PINNED = {
    nn.BatchNorm1d: FrozenBatchNorm1d,
    nn.BatchNorm2d: FrozenBatchNorm2d,
    nn.BatchNorm3d: FrozenBatchNorm3d,
    nn.SyncBatchNorm: FrozenSyncBatchNorm,
    DropPath: FrozenDropPath,
    nn.Dropout: FrozenDropout,
}
_UNPINNED = {pinned: plain for plain, pinned in _PINNED.items()}


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
    model.train(model.training)  # refresh the modes of swapped modules
    frozen_bn = sum(
        isinstance(m, _PinnedEval) and isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    return {
        "trainable": count_parameters(model, trainable_only=True),
        "total": count_parameters(model),
        "frozen_bn": frozen_bn,
    }


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm running mean/var (to measure how far they drift)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def batchnorm_drift(before: Mapping[str, torch.Tensor], model: nn.Module) -> float:
    """Largest absolute change of any running statistic since ``before`` (0.0: untouched)."""
    now = model.state_dict()
    return max((float((now[k].float() - v.float()).abs().max()) for k, v in before.items()), default=0.0)


def torchvision_model(model_name: str, **kwargs) -> nn.Module:
    """torchvision's network for one of our names (``weights=None``: random init, no download)."""
    import torchvision

    if model_name not in WEIGHTS:
        raise ValueError(f"no torchvision counterpart known for {model_name!r}; choose one of {', '.join(WEIGHTS)}")
    return getattr(torchvision.models, model_name.replace("efficientnetv2_", "efficientnet_v2_"))(**kwargs)


# ---------------------------------------------------------------- one entry point for the trainer


def is_weights_name(source: str) -> bool:
    """True for a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ...), False for a path."""
    text = str(source)
    return text.replace("_", "").isalnum() and text == text.upper() and not Path(text).exists()


def load_pretrained(model: nn.Module, source: str, *, download: bool = True, progress: bool = True) -> str:
    """Fill ``model`` (already built for the new task) with pretrained weights; return what was loaded.

    ``source``: a torchvision weights name for ``model.name`` (``DEFAULT``, ``IMAGENET1K_V1``), or a
    run folder / ``model.pt`` / checkpoint of ours. The classifier keeps its fresh init when the
    class count differs; every other tensor must match in name (ours) or position (torchvision's)
    and shape.
    """
    if is_weights_name(source):
        state = pretrained_state_dict(model.name, weights=source, download=download, progress=progress)
        skip = model.num_classes != IMAGENET_CLASSES
        if getattr(model, "in_channels", 3) != 3:
            raise ValueError(
                f"ImageNet weights need 3-channel input, but the model was built for "
                f"{model.in_channels}; use preprocessing 'weights' (repeats grey images)"
            )
        load_torchvision_weights(model, state, skip_classifier=skip)
        return f"{weights_enum(model.name, source).__class__.__name__}.{weights_enum(model.name, source).name}"
    path = own_weights_file(source)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, empty, not a torch file
        raise ValueError(f"pretrained {path} cannot be loaded ({_one_line(e)})") from None
    if isinstance(saved, dict) and "model" in saved and "optimizer" in saved:  # a checkpoint of ours
        saved = saved["model"]
    load_matching(model, saved, str(path))
    return str(path)


def own_weights_file(source: str | os.PathLike) -> Path:
    """A run folder's ``model.pt`` (or its newest checkpoint), or the file itself."""
    path = Path(source)
    if path.is_dir():
        candidates = [path / "model.pt", *sorted((path / "checkpoints").glob("epoch_*.pt"), reverse=True)]
        path = next((c for c in candidates if c.is_file()), path / "model.pt")
    if not path.is_file():
        raise ValueError(
            f"pretrained {source!r} is neither a torchvision weights name (DEFAULT, "
            f"IMAGENET1K_V1, ...) nor a file or run folder of ours"
        )
    return path


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` by name; the classifier may differ in class count (kept fresh)."""
    ours = model.state_dict()
    head = {k for k in ours if k.startswith(("classifier.", "fc."))}
    missing = sorted(set(ours) - set(state))
    wrong = [k for k in ours if k in state and state[k].shape != ours[k].shape and k not in head]
    if missing or wrong:
        first = (missing or wrong)[0]
        raise ValueError(
            f"pretrained {source} does not fit this model: {len(missing)} tensors missing, "
            f"{len(wrong)} of another shape (first: {first}); build the same architecture"
        )
    model.load_state_dict({k: (state[k] if state[k].shape == v.shape else v) for k, v in ours.items()})


__all__ = [
    "WEIGHTS",
    "WeightsUnavailable",
    "weights_enum",
    "weights_path",
    "pretrained_state_dict",
    "PretrainedTransforms",
    "pretrained_transforms",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_pretrained",
    "freeze_backbone",
    "parse_trainable",
    "network_parts",
    "batchnorm_state",
    "batchnorm_drift",
    "torchvision_model",
    "load_pretrained",
    "is_weights_name",
    "own_weights_file",
]
