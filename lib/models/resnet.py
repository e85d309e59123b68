"""Baselines: torchvision's ResNet-50 and Wide-ResNet-101-2 with the trainer interface.

Changes to torchvision's networks, all optional except the first:
- ``fc`` is ``Sequential(Dropout(p), Linear)`` so that ``set_dropout`` works like on
  EfficientNet (p = 0 by default, i.e. torchvision's network). A torchvision state_dict still
  loads with ``load_torchvision_weights`` (parameters are matched by order and shape).
- ``small_input=True``: CIFAR-style stem, a 3x3 stride-1 conv and no max-pool (total stride
  32 -> 8), for 28-32 px images.
- ``in_channels``: 1 for grayscale.
ResNets have no stochastic depth; ``set_drop_path_rate`` only records the value.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet as _TorchvisionResNet

from .blocks import check_input_size, min_input_size
from .regularization import ScheduledRegularization

# name -> (layers per stage, width_per_group)
RESNETS = {
    "resnet50": ([3, 4, 6, 3], 64),
    "wide_resnet101_2": ([3, 4, 23, 3], 64 * 2),
}


class ResNet(ScheduledRegularization, _TorchvisionResNet):
    def __init__(
        self,
        layers,
        width_per_group: int,
        num_classes: int,
        in_channels: int = 3,
        small_input: bool = False,
        dropout: float = 0.0,
        bn_momentum: float | None = None,
    ):
        super().__init__(Bottleneck, layers, num_classes=num_classes, width_per_group=width_per_group)
        if small_input or in_channels != 3:
            kernel, stride = (3, 1) if small_input else (7, 2)
            self.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, padding=kernel // 2, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_input:
            self.maxpool = nn.Identity()
        self.fc = nn.Sequential(nn.Dropout(dropout), self.fc)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.dropout, self.drop_path_rate = float(dropout), 0.0
        self.total_stride = 8 if small_input else 32
        self.min_input_size = min_input_size(self.total_stride)
        if bn_momentum is not None:  # torchvision's default is PyTorch's 0.1
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = bn_momentum

    def forward(self, x):
        check_input_size(self, min(x.shape[-2:]))
        return super().forward(x)


def build_resnet(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    dropout: float = 0.0,
    drop_path_rate: float = 0.0,
    small_input: bool = False,
    bn_momentum: float | None = None,
) -> ResNet:
    if name not in RESNETS:
        raise ValueError(f"unknown ResNet {name!r}; known: {sorted(RESNETS)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    layers, width = RESNETS[name]
    model = ResNet(layers, width, num_classes, in_channels, small_input, dropout, bn_momentum)
    model.set_drop_path_rate(drop_path_rate)
    return model
