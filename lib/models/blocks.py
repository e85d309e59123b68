"""The building blocks of EfficientNet V1/V2: conv-BN-act, squeeze-and-excitation, drop path,
MBConv and Fused-MBConv.

Module registration order inside each block is deliberate: it is the same order in which
torchvision registers its parameters, so a torchvision state_dict can be mapped onto ours by
position (see ``torchvision_compat.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# PyTorch convention: new_running = (1 - momentum) * running + momentum * batch.
# TensorFlow's "momentum 0.99" is PyTorch's 0.01. Passing 0.99 to PyTorch would make the running
# statistics almost equal to the last batch.
BN_MOMENTUM = 0.01


def min_input_size(total_stride: int) -> int:
    """The smallest square input a network of this total stride accepts: total stride + 1.

    Its last feature map is then at least 2x2, so BatchNorm in training sees more than one value
    per channel even at batch size 1 (torchvision declares the same 33 px for EfficientNetV2).
    """
    return int(total_stride) + 1


def check_input_size(model: nn.Module, size: int, where: str = "") -> None:
    """One-line ValueError when ``size`` px is below ``model.min_input_size``: the only place this
    rule is checked (model forward, schedules, FLOP counting, transfer settings all call it)."""
    minimum = getattr(model, "min_input_size", 1)
    if int(size) < minimum:
        name = getattr(model, "name", "this model")
        raise ValueError(
            f"image size {size} px{where} is below {name}'s minimum {minimum} px "
            f"(upsample the images, or build with small_input=True)"
        )


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going down by more than 10%.

    This is the channel rounding rule of MobileNet/EfficientNet (the "10% rule").
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class _SmallMapDepthwise(torch.autograd.Function):
    """Depthwise convolution whose weight gradient is summed tap by tap.

    oneDNN's CPU kernel for that gradient falls to a slow path when the feature map is smaller
    than the kernel (EfficientNet's last stages are 1x1-2x2 at 28-32 px input); as k*k products and
    sums it is many times faster (``benchmarks/cpu_training.py`` times both).
    Forward and input gradient are PyTorch's own kernels; the result is the same up to rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, stride: int, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        s, p, channels, k = ctx.stride, ctx.padding, weight.shape[0], weight.shape[-1]
        xx, ww = x.to(grad.dtype), weight.to(grad.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, xx, ww, None, [s, s], [p, p], [1, 1], False, [0, 0], channels, [True, False, False]
            )[0]
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            padded, (h, w) = F.pad(xx, (p, p, p, p)), grad.shape[-2:]
            taps = grad.new_empty(channels, k * k)
            for i in range(k):
                for j in range(k):
                    window = padded[:, :, i : i + s * (h - 1) + 1 : s, j : j + s * (w - 1) + 1 : s]
                    taps[:, i * k + j] = (grad * window).sum((0, 2, 3))
            grad_w = taps.view_as(weight).to(weight.dtype)
        return grad_x, grad_w, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with groups == channels (same parameters, same state_dict); on a CPU, in
    training, a map smaller than the kernel takes ``_SmallMapDepthwise``'s weight gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        if (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and self.bias is None
            and (x.shape[-2] < k or x.shape[-1] < k)
        ):
            return _SmallMapDepthwise.apply(x, self.weight, self.stride[0], self.padding[0])
        return super().forward(x)


class ConvBNAct(nn.Sequential):
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> optional SiLU."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = BN_MOMENTUM,
    ):
        super().__init__()
        conv = DepthwiseConv2d if groups > 1 and groups == in_ch == out_ch else nn.Conv2d
        self.conv = conv(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        # In-place SiLU is safe: BatchNorm's backward does not need its own output.
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()


class SqueezeExcite(nn.Module):
    """Channel attention: global mean -> 1x1 conv (squeeze) -> SiLU -> 1x1 conv -> sigmoid -> scale.

    ``channels`` is the width the gate acts on (the expanded width inside MBConv); ``squeeze`` is
    the hidden width, which EfficientNet derives from the block's *input* channels x 0.25.
    """

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.fc2(self.act(self.fc1(gate))).sigmoid()
        return x * gate


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples with probability ``p``.

    ``depth_fraction`` (block index / total blocks) is fixed at build time; ``p`` is
    ``max_rate * depth_fraction`` and can be changed at run time by the model's
    ``set_drop_path_rate``. With ``p == 0`` or in eval mode it returns its input untouched.
    """

    def __init__(self, depth_fraction: float, max_rate: float = 0.0):
        super().__init__()
        self.depth_fraction = float(depth_fraction)
        self.p = max_rate * self.depth_fraction

    def set_max_rate(self, rate: float) -> None:
        self.p = float(rate) * self.depth_fraction

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample multiplier: 0 for dropped samples, 1/(1-p) for kept ones."""
        keep = 1.0 - self.p
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.keep_mask(x)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}, depth_fraction={self.depth_fraction:.4f}"


class _ResidualBlock(nn.Module):
    """Shared forward for MBConv and Fused-MBConv: body, then (drop path + identity) if shapes allow."""

    kind = "?"

    def _init_common(self, in_ch, out_ch, expand, kernel, stride, se_ratio, depth_fraction, drop_path_rate):
        self.in_ch, self.out_ch, self.expand = in_ch, out_ch, expand
        self.kernel, self.stride, self.se_ratio = kernel, stride, se_ratio
        self.has_residual = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(depth_fraction, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.has_residual:
            return out
        dp = self.drop_path
        if dp.training and dp.p > 0.0:
            # One fused pass instead of (mask multiply, then add).
            return torch.addcmul(x, out, dp.keep_mask(out))
        # `out` is a fresh BatchNorm output whose backward does not need it: safe to add in place.
        return out.add_(x)


class MBConv(_ResidualBlock):
    """Inverted residual: 1x1 expand (skipped when expand == 1) -> kxk depthwise -> SE -> 1x1 project."""

    kind = "mb"

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expand: int,
        kernel: int,
        stride: int,
        se_ratio: float,
        depth_fraction: float = 0.0,
        drop_path_rate: float = 0.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = BN_MOMENTUM,
    ):
        super().__init__()
        self._init_common(in_ch, out_ch, expand, kernel, stride, se_ratio, depth_fraction, drop_path_rate)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        hidden = make_divisible(in_ch * expand)
        layers = []
        if expand != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, **bn))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, **bn))
        if se_ratio > 0:
            layers.append(SqueezeExcite(hidden, max(1, int(in_ch * se_ratio))))
        layers.append(ConvBNAct(hidden, out_ch, 1, act=False, **bn))
        self.body = nn.Sequential(*layers)


class FusedMBConv(_ResidualBlock):
    """Fused-MBConv: the 1x1 expand + depthwise pair becomes one regular kxk conv.

    With expand == 1 the block is a single kxk conv + BN + SiLU (no projection conv).
    SE is optional (EfficientNetV2 uses none in fused stages); when present it sits on the
    conv's output, as in MBConv.
    """

    kind = "fused"

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expand: int,
        kernel: int,
        stride: int,
        se_ratio: float = 0.0,
        depth_fraction: float = 0.0,
        drop_path_rate: float = 0.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = BN_MOMENTUM,
    ):
        super().__init__()
        self._init_common(in_ch, out_ch, expand, kernel, stride, se_ratio, depth_fraction, drop_path_rate)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        squeeze = max(1, int(in_ch * se_ratio))
        if expand == 1:
            layers = [ConvBNAct(in_ch, out_ch, kernel, stride, **bn)]
            if se_ratio > 0:
                layers.append(SqueezeExcite(out_ch, squeeze))
        else:
            hidden = make_divisible(in_ch * expand)
            layers = [ConvBNAct(in_ch, hidden, kernel, stride, **bn)]
            if se_ratio > 0:
                layers.append(SqueezeExcite(hidden, squeeze))
            layers.append(ConvBNAct(hidden, out_ch, 1, act=False, **bn))
        self.body = nn.Sequential(*layers)


BLOCKS = {"mb": MBConv, "fused": FusedMBConv}
