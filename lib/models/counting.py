"""Parameter and FLOP counts, measured on the built model.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions and
matrix multiplies only, as 2 FLOPs per multiply-add. The papers' "FLOPs" are multiply-adds, so
paper numbers compare with ``count_flops(...) / 2``. BatchNorm, activations, pooling and the
SE gating multiply are not counted (a small share of the total: none multiplies a weight matrix).

The forward runs on the ``meta`` device (shapes only, no arithmetic), so counting
even EfficientNetV2-L at 384 px is counted at once, without memory for its activations.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .blocks import check_input_size


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _meta_forward(model: nn.Module, image_size: int, in_channels: int):
    """Eval-mode forward of a batch of one image on the meta device; restores the mode."""
    tensors = {
        name: torch.empty_like(t, device="meta") for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    x = torch.empty(1, in_channels, image_size, image_size, device="meta")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return functional_call(model, tensors, (x,))
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """FLOPs (2 x multiply-adds of conv/linear layers) of one forward pass of one image."""
    check_input_size(model, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        _meta_forward(model, int(image_size), in_channels)
    return int(counter.get_total_flops())


def feature_map_sizes(
    model: nn.Module, image_size: int, modules: list[nn.Module], in_channels: int | None = None
) -> list[int]:
    """Spatial size (height) of each module's output for a square ``image_size`` input."""
    sizes: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, i=i: sizes.__setitem__(i, out.shape[-2]))
        for i, m in enumerate(modules)
    ]
    try:
        _meta_forward(model, int(image_size), in_channels or getattr(model, "in_channels", 3))
    finally:
        for h in hooks:
            h.remove()
    return [sizes[i] for i in range(len(modules))]
