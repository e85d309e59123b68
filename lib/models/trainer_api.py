"""The one interface a trainer needs from every model returned by ``build_model``.

Progressive learning (paper Algorithm 1) changes dropout and stochastic depth between stages;
a trainer calls ``model.set_dropout(p)`` and ``model.set_drop_path_rate(rate)`` without knowing
which family it is training, and checks image sizes against ``model.min_input_size``.
"""

from __future__ import annotations

from torch import nn

from .blocks import DropPath


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


class TrainerAPI:
    """Mixin for nn.Module subclasses: run-time regularization setters and the input-size check.

    ``set_dropout`` sets every ``nn.Dropout`` in the model (EfficientNet and our ResNets have
    exactly one, before the classifier). ``set_drop_path_rate`` sets the *maximum* stochastic
    depth rate; each ``DropPath`` rescales it by its own depth fraction (block index / total).
    Models without drop path (ResNets) accept the call and keep the value in
    ``self.drop_path_rate`` only, so a trainer can call both setters uniformly.
    """

    min_input_size: int = 1
    dropout: float = 0.0
    drop_path_rate: float = 0.0

    def set_dropout(self, p: float) -> None:
        p = _check_rate("dropout", p)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
        self.dropout = p

    def set_drop_path_rate(self, rate: float) -> None:
        rate = _check_rate("drop_path_rate", rate)
        for module in self.modules():
            if isinstance(module, DropPath):
                module.set_max_rate(rate)
        self.drop_path_rate = rate

    def _check_input(self, x) -> None:
        h, w = x.shape[-2], x.shape[-1]
        if h < self.min_input_size or w < self.min_input_size:
            raise ValueError(
                f"input {h}x{w} is smaller than this model's minimum {self.min_input_size}x"
                f"{self.min_input_size} (upsample the images, or build with small_input=True)")


def check_input_size(model: nn.Module, size: int) -> None:
    """Raise a one-line ValueError if ``size`` px is below ``model.min_input_size``.

    Trainers call this once per progressive-learning stage, before any compute.
    """
    minimum = getattr(model, "min_input_size", 1)
    if int(size) < minimum:
        raise ValueError(f"image size {size} is smaller than this model's minimum {minimum} px "
                         f"(upsample the images, or build with small_input=True)")
