"""Regularization a schedule changes at run time: dropout and stochastic-depth rates.

Progressive learning (paper Algorithm 1) raises dropout and stochastic depth from stage to stage
without rebuilding the network; every model ``build_model`` returns has these two setters, so a
trainer turns them without knowing which family it is training.
"""

from __future__ import annotations

from torch import nn

from .blocks import DropPath


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


class ScheduledRegularization:
    """Mixin for nn.Module subclasses: ``set_dropout`` and ``set_drop_path_rate``.

    ``set_dropout`` sets every ``nn.Dropout`` in the model (EfficientNet and our ResNets have
    exactly one, before the classifier). ``set_drop_path_rate`` sets the *maximum* stochastic
    depth rate; each ``DropPath`` rescales it by its own depth fraction (block index / total).
    Models without drop path (ResNets) accept the call and keep the value in
    ``self.drop_path_rate`` only, so a trainer can call both setters uniformly.
    """

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
