"""What every accuracy is read against: the linear model on pixels, measured, and published numbers.

A linear classifier on raw pixels is the simplest model that learns anything; a network below it
has learned less than a ridge regression. Every accuracy plot draws it. The published numbers (the
coursework deck's, the Fashion-MNIST authors' README's and the literature's) are written once here,
so that notebooks 04 and 07 quote the same values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import Dataset, Split

# (dataset, what was trained and where it was published, test accuracy)
PUBLISHED = [
    ("fashion_mnist", "coursework deck: EfficientNetV2-S, progressive, 100 epochs (GPU)", 0.9393),
    ("fashion_mnist", "coursework deck: ResNet-50 / WRN-101-2 baselines (validation)", 0.80),
    ("fashion_mnist", "zalandoresearch README: WRN-28-10 + random erasing", 0.963),
    ("cifar10", "coursework deck: EfficientNetV2-M, progressive, 60 epochs (GPU)", 0.9255),
    ("cifar10", "EfficientNet-B0 from scratch, 300 epochs", 0.932),
    ("cifar10", "EfficientNetV2-S, ImageNet-21k pretrained, fine-tuned (paper)", 0.987),
]
COURSEWORK = {name: acc for name, what, acc in PUBLISHED if what.startswith("coursework deck: EfficientNetV2")}


def ridge_classifier(train: Split, evaluate: Split, num_classes: int, l2: float = 10.0) -> torch.Tensor:
    """Predicted classes of ``evaluate`` from ridge regression of one-hot labels on pixels (closed form)."""

    def features(split: Split) -> torch.Tensor:
        x = split.images.flatten(1).double().cpu() / 255
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    x = features(train)
    y = torch.nn.functional.one_hot(train.labels.cpu(), num_classes).double()
    weights = torch.linalg.solve(x.T @ x + l2 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    return (features(evaluate) @ weights).argmax(1)


def linear_accuracy(data: Dataset) -> float:
    """The linear model's validation accuracy on ``data`` (what notebook 01 reports)."""
    predicted = ridge_classifier(data.train, data.val, data.num_classes)
    return (predicted == data.val.labels.cpu()).double().mean().item()


def linear_reference(figures: Path, load=None) -> float | None:
    """Notebook 01's measured linear accuracy (``data_summary.json``), or measured now with ``load()``
    (a function returning the Dataset) when notebook 01 has not run for this dataset; None when it
    has not and there is no ``load``."""
    summary = Path(figures) / "data_summary.json"
    if summary.is_file():
        return float(json.loads(summary.read_text())["linear_val_accuracy"])
    return linear_accuracy(load()) if load is not None else None


def draw_linear(ax, accuracy: float, *, percent: bool = True, vertical: bool = False) -> None:
    """The linear model's accuracy as a labelled reference line on an accuracy axis."""
    value = accuracy * (100 if percent else 1)
    line = ax.axvline if vertical else ax.axhline
    line(value, color="0.45", ls=":", lw=1.4, label=f"linear model on pixels: {accuracy:.1%}")


# Paper Table 3 as printed there: EfficientNet-B4 on ImageNet with Fused-MBConv in the first
# stages (``lib.models.PAPER_FUSED_SETTINGS``); notebooks 03 and 05 show it beside our numbers.
PAPER_TABLE3 = {
    "setting": ("none", "1-3", "1-5", "1-7"),
    "paper params (M)": (19.3, 20.0, 43.4, 132.0),
    "paper GMACs": (4.5, 7.5, 21.3, 34.4),
    "paper top-1 (%)": (82.8, 83.1, 83.1, 81.7),
    "paper TPU img/s": (262, 362, 327, 254),
    "paper V100 img/s": (155, 216, 223, 206),
}
