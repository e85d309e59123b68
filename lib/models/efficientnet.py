"""EfficientNet V1 and V2 as stage tables (paper Table 4) decoded by one builder.

A network is: stem (3x3 conv, stride 2, BN, SiLU) -> stages of MBConv / Fused-MBConv blocks ->
head (1x1 conv to 1280, BN, SiLU) -> global average pool -> dropout -> linear.

Everything that differs between V2-S/M/L, EfficientNet-B0..B7 and the paper's Table-3
ablations is data: a stage table plus a few scalars. Compound scaling (``scale_table``) and
fusing stages (``with_fused_stages``) are functions from table to table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch
from torch import nn

from .blocks import BLOCKS, BN_MOMENTUM, ConvBNAct, check_input_size, make_divisible, min_input_size
from .regularization import ScheduledRegularization


@dataclass(frozen=True)
class StageRow:
    """One row of paper Table 4: ``layers`` blocks; the first has ``stride``, the rest stride 1."""

    block: str  # "fused" (Fused-MBConv) or "mb" (MBConv)
    expand: int  # expansion ratio e
    kernel: int  # k x k
    stride: int
    out: int  # output channels
    layers: int  # number of blocks
    se: float  # squeeze-and-excitation ratio of the block *input* channels; 0 = no SE


#                     block  e  k  s    c    n    se
EFFICIENTNETV2_S = (
    StageRow("fused", 1, 3, 1, 24, 2, 0.00),
    StageRow("fused", 4, 3, 2, 48, 4, 0.00),
    StageRow("fused", 4, 3, 2, 64, 4, 0.00),
    StageRow("mb", 4, 3, 2, 128, 6, 0.25),
    StageRow("mb", 6, 3, 1, 160, 9, 0.25),
    StageRow("mb", 6, 3, 2, 256, 15, 0.25),
)

EFFICIENTNETV2_M = (
    StageRow("fused", 1, 3, 1, 24, 3, 0.00),
    StageRow("fused", 4, 3, 2, 48, 5, 0.00),
    StageRow("fused", 4, 3, 2, 80, 5, 0.00),
    StageRow("mb", 4, 3, 2, 160, 7, 0.25),
    StageRow("mb", 6, 3, 1, 176, 14, 0.25),
    StageRow("mb", 6, 3, 2, 304, 18, 0.25),
    StageRow("mb", 6, 3, 1, 512, 5, 0.25),
)

EFFICIENTNETV2_L = (
    StageRow("fused", 1, 3, 1, 32, 4, 0.00),
    StageRow("fused", 4, 3, 2, 64, 7, 0.00),
    StageRow("fused", 4, 3, 2, 96, 7, 0.00),
    StageRow("mb", 4, 3, 2, 192, 10, 0.25),
    StageRow("mb", 6, 3, 1, 224, 19, 0.25),
    StageRow("mb", 6, 3, 2, 384, 25, 0.25),
    StageRow("mb", 6, 3, 1, 640, 7, 0.25),
)

# EfficientNet-B0 (V1 paper Table 1): MBConv everywhere, kernel 5 in stages 3, 5, 6.
EFFICIENTNET_B0 = (
    StageRow("mb", 1, 3, 1, 16, 1, 0.25),
    StageRow("mb", 6, 3, 2, 24, 2, 0.25),
    StageRow("mb", 6, 5, 2, 40, 2, 0.25),
    StageRow("mb", 6, 3, 2, 80, 3, 0.25),
    StageRow("mb", 6, 5, 1, 112, 3, 0.25),
    StageRow("mb", 6, 5, 2, 192, 4, 0.25),
    StageRow("mb", 6, 3, 1, 320, 1, 0.25),
)


@dataclass(frozen=True)
class Variant:
    """A named network: base table, stem/head widths, scaling coefficients and defaults.

    ``resolution`` is the paper's evaluation image size. ``bn_eps`` is 1e-3 (the TF value) except
    for B0-B4, where torchvision trained its weights with PyTorch's default 1e-5; we keep that so
    those weights reproduce torchvision's outputs exactly.
    """

    table: tuple[StageRow, ...]
    stem: int
    head: int
    dropout: float
    resolution: int
    width_mult: float = 1.0
    depth_mult: float = 1.0
    drop_path_rate: float = 0.2
    bn_eps: float = 1e-3


VARIANTS: dict[str, Variant] = {
    "efficientnetv2_s": Variant(EFFICIENTNETV2_S, stem=24, head=1280, dropout=0.2, resolution=384),
    "efficientnetv2_m": Variant(EFFICIENTNETV2_M, stem=24, head=1280, dropout=0.3, resolution=480),
    "efficientnetv2_l": Variant(EFFICIENTNETV2_L, stem=32, head=1280, dropout=0.4, resolution=480),
}

# Compound scaling coefficients of the V1 family: (width, depth, resolution, dropout).
B_COEFFICIENTS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}
for _name, (_w, _d, _r, _p) in B_COEFFICIENTS.items():
    VARIANTS[_name] = Variant(
        EFFICIENTNET_B0,
        stem=32,
        head=1280,
        dropout=_p,
        resolution=_r,
        width_mult=_w,
        depth_mult=_d,
        bn_eps=1e-5 if int(_name[-1]) <= 4 else 1e-3,
    )


# --------------------------------------------------------------------------- table edits


def scale_table(table: Sequence[StageRow], width_mult: float = 1.0, depth_mult: float = 1.0) -> tuple[StageRow, ...]:
    """Compound scaling (EfficientNet V1): channels -> make_divisible(c * width, 8) with the 10%
    rule; layers -> ceil(n * depth). ``depth_mult=0.5`` halves every stage (rounding up),
    ``depth_mult=0.1`` leaves one block per stage."""
    check_multipliers(width_mult, depth_mult)
    return tuple(
        replace(row, out=make_divisible(row.out * width_mult), layers=math.ceil(row.layers * depth_mult))
        for row in table
    )


def check_multipliers(width_mult: float, depth_mult: float) -> None:
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if not depth_mult > 0:
        raise ValueError(f"depth_mult must be > 0, got {depth_mult}")


# The four settings of paper Table 3. The paper's tables have 7 stages, so "1-7" means "every
# stage"; on a 6-stage table (V2-S) it therefore fuses all 6.
PAPER_FUSED_SETTINGS = ("none", "1-3", "1-5", "1-7")


def parse_fused_stages(fused: str | Iterable[int], num_stages: int) -> frozenset[int]:
    """Turn "none" | "1-3" | "1-5" | "1-7" | "all" or an iterable of 1-based stage indices into a set.

    Explicit indices must lie in 1..num_stages (ValueError otherwise)."""
    if isinstance(fused, str):
        key = fused.strip().lower()
        if key == "none":
            return frozenset()
        if key in ("all", "1-7"):
            return frozenset(range(1, num_stages + 1))
        if key in PAPER_FUSED_SETTINGS:
            last = int(key.split("-")[1])
            fused = range(1, last + 1)
        else:
            raise ValueError(
                f"unknown fused-stage setting {fused!r}; use one of "
                f"{PAPER_FUSED_SETTINGS + ('all',)} or a list of stage indices"
            )
    stages = frozenset(int(i) for i in fused)
    bad = sorted(i for i in stages if not 1 <= i <= num_stages)
    if bad:
        raise ValueError(f"fused stages {bad} out of range 1..{num_stages} for this table")
    return stages


def with_fused_stages(
    table: Sequence[StageRow],
    fused: str | Iterable[int],
    fused_se: float = 0.0,
    mb_se: float = 0.25,
    fused_kernel: int | None = None,
) -> tuple[StageRow, ...]:
    """Paper Table 3 as a table edit: stages in ``fused`` (1-based) become Fused-MBConv, all
    others MBConv. Converted rows keep e, s, c, n; a row that changes kind gets that kind's
    SE ratio (``fused_se``: 0 as in EfficientNetV2; ``mb_se``: 0.25). Unchanged rows are kept.

    Converted fused rows keep their kernel unless ``fused_kernel`` is given. On EfficientNet-B4
    (the network of Table 3), keeping the kernel reproduces the paper's "1-5" and "1-7" rows,
    while its "1-3" row (20.0M params) matches ``fused_kernel=3``; see notebook 03."""
    stages = parse_fused_stages(fused, len(table))
    rows = []
    for index, row in enumerate(table, start=1):
        kind = "fused" if index in stages else "mb"
        if kind != row.block:
            row = replace(row, block=kind, se=fused_se if kind == "fused" else mb_se)
            if kind == "fused" and fused_kernel is not None:
                row = replace(row, kernel=fused_kernel)
        rows.append(row)
    return tuple(rows)


# --------------------------------------------------------------------------- the network


class EfficientNet(ScheduledRegularization, nn.Module):
    """Stem -> stages (from a table) -> head -> pool -> dropout -> linear.

    Stochastic depth grows linearly with the global block index i: rate * i / total_blocks.
    ``stem_stride=1`` is the small-input stem (see ``build_efficientnet``); ``min_input_size``
    follows from the total stride (``blocks.min_input_size``).
    """

    def __init__(
        self,
        table: Sequence[StageRow],
        num_classes: int,
        stem: int,
        head: int = 1280,
        in_channels: int = 3,
        dropout: float = 0.2,
        drop_path_rate: float = 0.2,
        bn_eps: float = 1e-3,
        bn_momentum: float = BN_MOMENTUM,
        stem_stride: int = 2,
    ):
        super().__init__()
        self.table = tuple(table)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.stem = ConvBNAct(in_channels, stem, 3, stem_stride, **bn)
        total = sum(row.layers for row in table)
        channels, index, stages = stem, 0, []
        for row in table:
            blocks = []
            for j in range(row.layers):
                blocks.append(
                    BLOCKS[row.block](
                        channels,
                        row.out,
                        row.expand,
                        row.kernel,
                        row.stride if j == 0 else 1,
                        row.se,
                        depth_fraction=index / total,
                        drop_path_rate=drop_path_rate,
                        **bn,
                    )
                )
                channels, index = row.out, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNAct(channels, head, 1, **bn)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(head, num_classes))
        self.in_channels, self.num_classes = in_channels, num_classes
        self.dropout, self.drop_path_rate = float(dropout), float(drop_path_rate)
        self.total_stride = stem_stride * math.prod(row.stride for row in table)
        self.min_input_size = min_input_size(self.total_stride)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self, min(x.shape[-2:]))
        return self.classifier(self.forward_features(x).mean((2, 3)))


def init_weights(model: nn.Module) -> None:
    """torchvision's EfficientNet init: conv kaiming-normal (fan_out), BN 1/0,
    linear uniform(+-1/sqrt(out_features)), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def build_efficientnet(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    dropout: float | None = None,
    drop_path_rate: float | None = None,
    width_mult: float | None = None,
    depth_mult: float | None = None,
    fused_stages: str | Iterable[int] | None = None,
    small_input: bool = False,
    bn_eps: float | None = None,
    bn_momentum: float | None = None,
) -> EfficientNet:
    """Build a named variant; every keyword overrides the variant's default.

    ``width_mult`` / ``depth_mult`` replace the variant's compound-scaling coefficients (1.0 for
    V2; e.g. 1.4 / 1.8 for B4) and scale stem, stages and head.
    ``fused_stages`` re-fuses stages (see ``with_fused_stages``). ``bn_momentum`` is PyTorch's
    (0.01 = TF's 0.99); short runs need a larger one (the CPU profiles' 0.1) for the running
    statistics to catch up with the weights.

    ``small_input=True`` sets the stem stride to 1, halving the total stride (32 -> 16), so that
    28-32 px images (Fashion-MNIST, CIFAR) keep a 2x2 last feature map and every layer's
    weights unchanged. The coursework seed instead upsampled 28 -> 50 -> 80 px with the standard
    stem: same parameters, but 3-8x more pixels per image to compute on. With stride 1 at 28 px
    the stages see the same feature-map sizes as the standard stem would at 56 px.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {name!r}; known: {sorted(VARIANTS)}")
    v = VARIANTS[name]
    width = v.width_mult if width_mult is None else width_mult
    depth = v.depth_mult if depth_mult is None else depth_mult
    check_multipliers(width, depth)
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    table = v.table if fused_stages is None else with_fused_stages(v.table, fused_stages)
    table = scale_table(table, width, depth)
    return EfficientNet(
        table,
        num_classes,
        stem=make_divisible(v.stem * width),
        head=make_divisible(v.head * width),
        in_channels=in_channels,
        dropout=v.dropout if dropout is None else dropout,
        drop_path_rate=v.drop_path_rate if drop_path_rate is None else drop_path_rate,
        bn_eps=v.bn_eps if bn_eps is None else bn_eps,
        bn_momentum=BN_MOMENTUM if bn_momentum is None else bn_momentum,
        stem_stride=1 if small_input else 2,
    )


# --------------------------------------------------------------------------- inspection


def describe_stages(model: EfficientNet, image_size: int | None = None) -> list[dict]:
    """Paper Table 4 read back from a built model (not from its table literal).

    One dict per stage: operator, expansion, kernel, stride, SE ratio, channels, layers, and,
    when ``image_size`` is given, the output resolution (measured by a meta-device forward).
    """
    rows = [
        dict(
            stage=0,
            operator="Conv3x3",
            expand=None,
            kernel=3,
            stride=model.stem.conv.stride[0],
            se=0.0,
            channels=model.stem.conv.out_channels,
            layers=1,
        )
    ]
    for i, stage in enumerate(model.stages, start=1):
        first = stage[0]
        name = "Fused-MBConv" if first.kind == "fused" else "MBConv"
        rows.append(
            dict(
                stage=i,
                operator=f"{name}{first.expand}, k{first.kernel}x{first.kernel}",
                expand=first.expand,
                kernel=first.kernel,
                stride=first.stride,
                se=first.se_ratio,
                channels=first.out_ch,
                layers=len(stage),
            )
        )
    rows.append(
        dict(
            stage=len(rows),
            operator="Conv1x1 & Pooling & FC",
            expand=None,
            kernel=1,
            stride=1,
            se=0.0,
            channels=model.head.conv.out_channels,
            layers=1,
        )
    )
    if image_size is not None:
        from .counting import feature_map_sizes

        sizes = feature_map_sizes(model, image_size, [model.stem, *model.stages, model.head])
        for row, size in zip(rows, sizes):
            row["resolution"] = size
    return rows
