"""Figures that more than one notebook draws, drawn one way, so a notebook's cell shows its lesson.

Each function draws on the axis (or figure) it is given and labels what it draws; none saves or
shows a figure: the notebook does (``run.save_figure``, ``plt.show``). The accuracy plots take
percentages of a fraction (0.93 -> 93%) and leave no empty range beside the data.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator
from torch import nn

from .models.blocks import ConvBNAct, SqueezeExcite
from .reference import draw_linear


def integer_epochs(ax) -> None:
    """Epochs are whole numbers: no tick at epoch 2.5."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axis, where it cannot hide a bar or a line."""
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, **kwargs)


# ---------------------------------------------------------------- accuracy of arms over seeds


def seed_range_bars(
    ax,
    table: pd.DataFrame,
    *,
    runs: pd.DataFrame | None = None,
    colors=None,
    notes: list[str] | None = None,
    linear: float | None = None,
    floor: float | None = None,
    references=(),
    labels: list[str] | None = None,
) -> None:
    """Per arm: a bar at its mean test accuracy, a black line from its lowest to its highest seed
    and a dot per seed. Two arms differ only where their lines do not overlap
    (``studies.verdict``); one run per arm could not show that.

    ``table``: one row per arm (the index), with test_accuracy_mean, _min and _max
    (``studies.summarize``). ``runs``: one row per run (arm, test_accuracy), for the dots.
    ``notes``: a text per arm written after its line. ``linear``: notebook 01's linear model,
    dotted. ``floor``: the accuracy a strong baseline must reach, dashed. ``references``:
    (label, accuracy) pairs from elsewhere (published numbers), dash-dotted, each its colour.
    """
    y = np.arange(len(table))
    ax.barh(y, table.test_accuracy_mean * 100, color=colors if colors is not None else "C0", alpha=0.8)
    ax.hlines(y, table.test_accuracy_min * 100, table.test_accuracy_max * 100, color="k", lw=2)
    if runs is not None:
        for i, arm in enumerate(table.index):
            seeds = runs.loc[runs.arm == arm, "test_accuracy"] * 100
            ax.plot(seeds, [i] * len(seeds), "k.", ms=6)
    for i, note in enumerate(notes or []):
        ax.text(table.test_accuracy_max.iloc[i] * 100, i, f"  {note}", va="center", fontsize=8)
    ax.set_yticks(y, labels if labels is not None else list(table.index))
    ax.invert_yaxis()
    lowest = table.test_accuracy_min.min()
    if linear is not None:
        draw_linear(ax, linear, vertical=True)
        lowest = min(lowest, linear)
    if floor is not None:
        ax.axvline(floor * 100, color="k", ls="--", lw=1, label=f"strong-baseline floor {floor:.0%}")
        lowest = min(lowest, floor)
    for i, (label, accuracy) in enumerate(references):
        ax.axvline(accuracy * 100, color=f"C{i + 3}", ls="-.", lw=1.2, label=f"{label}: {accuracy:.2%}")
        lowest = min(lowest, accuracy)
    room = 7 if notes else 1  # the notes are written right of the highest seed
    highest = max([table.test_accuracy_max.max(), *(a for _, a in references)])
    ax.set_xlim(lowest * 100 - 1.5, min(100, highest * 100 + room))
    ax.set_xlabel("test accuracy (%)")
    if linear is not None or floor is not None or len(references):
        legend_outside(ax)


# ---------------------------------------------------------------- what a classifier confuses


def confusion_counts(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``counts[i, j]``: images of true class i predicted as class j; row i sums to class i's count."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    labels, predicted = labels.cpu(), predicted.cpu()
    counts.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return counts


def draw_confusion(ax, counts: torch.Tensor, classes, title: str) -> None:
    """Each row as % of its true class, so every class reads alike whatever its size; the
    diagonal is each class's recall. Numbers are written where a square can hold them."""
    rate = counts.double() / counts.sum(1, keepdim=True).clamp(min=1) * 100
    frame = pd.DataFrame(rate.numpy(), index=list(classes), columns=list(classes))
    sns.heatmap(
        frame,
        annot=len(classes) <= 20,
        fmt=".0f",
        cmap="Blues",
        vmin=0,
        vmax=100,
        cbar_kws={"label": "% of the true class"},
        ax=ax,
        square=True,
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)


def image_grid(images, *, row_labels=None, titles=None, cell: float = 0.95):
    """A figure of images, ``images[row][column]`` uint8 C x H x W (a tensor or lists of them),
    grey images in grey; ``row_labels`` on the left, ``titles`` (same shape) above each image."""
    rows, columns = len(images), max(len(row) for row in images)
    high = cell * (1.45 if titles is not None else 1.0)
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * cell + 1.2, rows * high), squeeze=False, layout="constrained"
    )
    for r, row in enumerate(images):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            picture = torch.as_tensor(row[c]).permute(1, 2, 0).squeeze(-1).cpu().numpy()
            ax.imshow(picture, cmap="gray_r" if picture.ndim == 2 else None, vmin=0, vmax=255)
            if titles is not None:
                ax.set_title(titles[r][c], fontsize=7)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=9)
    return fig


# ---------------------------------------------------------------- a block, from its modules


def block_layers(block: nn.Module) -> list[dict]:
    """The layers of one MBConv or Fused-MBConv block, input to output, read from the built
    modules (not from the table they were built from): what ``draw_block`` draws as boxes."""
    layers, body = [], list(block.body)
    for i, module in enumerate(body):
        if isinstance(module, SqueezeExcite):
            layers.append(
                {
                    "layer": "squeeze-excite",
                    "in": module.fc1.in_channels,
                    "out": module.fc2.out_channels,
                    "kernel": 1,
                    "stride": 1,
                    "groups": 1,
                    "after": f"each scaled by a gate computed through {module.fc1.out_channels}",
                }
            )
        elif isinstance(module, ConvBNAct):
            conv, k = module.conv, module.conv.kernel_size[0]
            depthwise = conv.groups > 1 and conv.groups == conv.in_channels
            role = (
                "depthwise conv"
                if depthwise
                else "project"
                if i == len(body) - 1 and i > 0
                else "expand"
                if k == 1
                else "conv"
            )
            act = "SiLU" if isinstance(module.act, nn.SiLU) else ""
            layers.append(
                {
                    "layer": f"{k}x{k} {role}",
                    "in": conv.in_channels,
                    "out": conv.out_channels,
                    "kernel": k,
                    "stride": conv.stride[0],
                    "groups": conv.groups,
                    "after": " + ".join(["BN", act] if act else ["BN"]),
                }
            )
    return layers


# a box's colour by the words in its layer's name; a dense convolution is orange
COLOURS = {"depthwise": "#1b9e77", "squeeze": "#7570b3", "project": "#bbbbbb"}


def _colour(layer: str) -> str:
    return next((c for word, c in COLOURS.items() if word in layer), "#d95f02")


def draw_block(ax, block: nn.Module, title: str) -> None:
    """One block as a column of boxes, one per layer (kernel, stride, channels in -> out, what
    follows it), with the skip connection when the block has one (stride 1, same channels)."""
    layers = block_layers(block)
    top, step = len(layers) + 1, 1.0
    ax.text(0.5, top, f"input: {block.in_ch} channels", ha="center", va="center", fontsize=9)
    for i, layer in enumerate(layers):
        y = top - (i + 1) * step
        ax.add_patch(
            FancyBboxPatch(
                (0.05, y - 0.32),
                0.9,
                0.64,
                boxstyle="round,pad=0.02",
                facecolor=_colour(layer["layer"]),
                alpha=0.35,
                edgecolor="k",
            )
        )
        stride = f", stride {layer['stride']}" if layer["stride"] != 1 else ""
        ax.text(0.5, y + 0.1, f"{layer['layer']}{stride}", ha="center", va="center", fontsize=9, weight="bold")
        then = "" if "squeeze" in layer["layer"] else "then "
        ax.text(
            0.5,
            y - 0.15,
            f"{layer['in']} -> {layer['out']} channels, {then}{layer['after']}",
            ha="center",
            va="center",
            fontsize=8,
        )
        ax.annotate("", (0.5, y + 0.34), (0.5, y + step - 0.34 if i else top - 0.15), arrowprops={"arrowstyle": "->"})
    bottom = top - (len(layers) + 1) * step
    last = top - len(layers) * step
    ax.annotate("", (0.5, bottom + 0.15), (0.5, last - 0.34), arrowprops={"arrowstyle": "->"})
    ending = "add the input, then output" if block.has_residual else "output (no skip: shape changes)"
    ax.text(0.5, bottom, f"{ending}: {block.out_ch} channels", ha="center", va="center", fontsize=9)
    if block.has_residual:
        ax.annotate(
            "",
            (0.96, bottom + 0.05),
            (0.96, top - 0.05),
            arrowprops={"arrowstyle": "->", "connectionstyle": "bar,fraction=-0.08", "color": "0.3"},
        )
        ax.text(1.08, (top + bottom) / 2, "skip", rotation=90, va="center", fontsize=8, color="0.3")
    ax.set_xlim(0, 1.15)
    ax.set_ylim(bottom - 0.5, top + 0.5)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
