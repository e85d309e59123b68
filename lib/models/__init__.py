"""Model library: one entry point, ``build_model(name, num_classes, in_channels=3, **overrides)``.

Every model it returns has ``name``, ``set_dropout(p)``, ``set_drop_path_rate(rate)``
(``regularization.py``) and ``min_input_size`` (``blocks.check_input_size``), so a trainer
treats all families alike.

Overrides:
- EfficientNet (V2 and B0-B7): dropout, drop_path_rate, width_mult, depth_mult, fused_stages,
  small_input, bn_eps, bn_momentum.
- ResNets: dropout, drop_path_rate (recorded only), small_input, bn_momentum.
"""

from __future__ import annotations

from torch import nn

from .blocks import check_input_size, make_divisible
from .counting import count_flops, count_parameters, feature_map_sizes
from .efficientnet import (
    B_COEFFICIENTS,
    EFFICIENTNET_B0,
    EFFICIENTNETV2_L,
    EFFICIENTNETV2_M,
    EFFICIENTNETV2_S,
    PAPER_FUSED_SETTINGS,
    VARIANTS,
    EfficientNet,
    StageRow,
    build_efficientnet,
    describe_stages,
    scale_table,
    with_fused_stages,
)
from .resnet import RESNETS, build_resnet
from .torchvision_compat import load_torchvision_weights

MODEL_NAMES = tuple(VARIANTS) + tuple(RESNETS)

_OVERRIDES = {
    "efficientnet": {
        "dropout",
        "drop_path_rate",
        "width_mult",
        "depth_mult",
        "fused_stages",
        "small_input",
        "bn_eps",
        "bn_momentum",
    },
    "resnet": {"dropout", "drop_path_rate", "small_input", "bn_momentum"},
}


def build_model(name: str, num_classes: int, in_channels: int = 3, **overrides) -> nn.Module:
    """Build any model of this repository by name (see ``MODEL_NAMES``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    family = "resnet" if name in RESNETS else "efficientnet"
    unknown = sorted(set(overrides) - _OVERRIDES[family])
    if unknown:
        raise ValueError(f"unknown overrides {unknown} for {name}; allowed: {sorted(_OVERRIDES[family])}")
    momentum = overrides.get("bn_momentum")
    if momentum is not None and not 0 < momentum <= 1:
        raise ValueError(f"bn_momentum must be in (0, 1] (PyTorch's convention: 0.01 is TF's 0.99), got {momentum}")
    builder = build_resnet if family == "resnet" else build_efficientnet
    model = builder(name, int(num_classes), int(in_channels), **overrides)
    model.name = name
    return model


__all__ = [
    "MODEL_NAMES",
    "build_model",
    "count_parameters",
    "count_flops",
    "feature_map_sizes",
    "load_torchvision_weights",
    "check_input_size",
    "describe_stages",
    "scale_table",
    "with_fused_stages",
    "make_divisible",
    "EfficientNet",
    "StageRow",
    "VARIANTS",
    "B_COEFFICIENTS",
    "PAPER_FUSED_SETTINGS",
    "EFFICIENTNETV2_S",
    "EFFICIENTNETV2_M",
    "EFFICIENTNETV2_L",
    "EFFICIENTNET_B0",
    "build_efficientnet",
    "build_resnet",
    "RESNETS",
]
