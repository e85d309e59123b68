"""Batched, per-sample data augmentation that runs wherever the images already are (CPU or GPU).

Why this module exists: torchvision's v2 RandAugment and kornia's draw ONE op for a whole batched
tensor (pytorch/vision#8484), and torchvision's per-image PIL RandAugment needs many CPU workers.
Here every image draws its own ops and signs, and the whole batch is transformed with a handful of
tensor kernels, so the dataset can live on the GPU as uint8 and be augmented there. Mixup and
CutMix are ours too: torchvision's v2 ``MixUp``/``CutMix`` draw from torch's global CPU generator,
not the run's per-epoch one, read the draws back to the host (a sync per batch on a GPU), and pair
each image with its neighbour (``roll``) instead of a drawn partner, so seeded runs would change.

Pipeline order used by `BatchAugmenter` (cheap first, at native resolution on uint8 values):
random crop + flip -> RandAugment -> resize to the stage's image size -> normalize -> mixup.

Conventions
- Images are N x C x H x W with C = 1 or 3. RandAugment and crop/flip take and return uint8.
- Randomness comes from an optional `torch.Generator`. Numbers are drawn on the generator's device
  and moved to the images' device; pass a generator on the images' device to avoid a host copy.
- No `.item()` or data-dependent Python branching in the hot path: per-sample choices are made with
  `torch.where` masks, so there are no host-device synchronisations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# The 14 RandAugment ops, in torchvision's order (RandAugment._augmentation_space).
OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
SIGNED_OPS = frozenset(
    {
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "Brightness",
        "Color",
        "Contrast",
        "Sharpness",
    }
)
GEOMETRIC_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
OP_INDEX = {name: index for index, name in enumerate(OP_NAMES)}


# ----------------------------------------------------------------------------------------------
# Random numbers: drawn on the generator's device, used on the images' device.
# ----------------------------------------------------------------------------------------------


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _randint(high: int, shape: tuple[int, ...], generator, device) -> Tensor:
    drawn = torch.randint(high, shape, generator=generator, device=_draw_device(generator, device))
    return drawn.to(device)


def _rand(shape: tuple[int, ...], generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=_draw_device(generator, device)).to(device)


def _randn(shape: tuple[int, ...], generator, device) -> Tensor:
    return torch.randn(shape, generator=generator, device=_draw_device(generator, device)).to(device)


def _randperm(n: int, generator, device) -> Tensor:
    return torch.randperm(n, generator=generator, device=_draw_device(generator, device)).to(device)


# ----------------------------------------------------------------------------------------------
# Op strengths: torchvision's magnitude table, as a formula so fractional magnitudes also work.
# ----------------------------------------------------------------------------------------------


def op_strength(
    name: str, magnitude: float, num_magnitude_bins: int = 31, image_size: tuple[int, int] = (32, 32)
) -> float:
    """Unsigned strength of op `name` at `magnitude` (0 .. num_magnitude_bins - 1).

    Integer magnitudes give torchvision's `_augmentation_space` entries; fractional ones (from a
    progressive schedule, e.g. 5 -> 15 over 4 stages) interpolate linearly between them.
    Returns shear as tan(angle), translate in pixels, rotate in degrees, colour ops as the factor
    offset (factor = 1 + signed strength), posterize as bits kept, solarize as the threshold.
    """
    last_bin = num_magnitude_bins - 1
    fraction = magnitude / last_bin
    height, width = image_size
    if name in ("Identity", "AutoContrast", "Equalize"):
        return 0.0
    if name in ("ShearX", "ShearY"):
        return 0.3 * fraction
    if name == "TranslateX":
        return 150.0 / 331.0 * width * fraction
    if name == "TranslateY":
        return 150.0 / 331.0 * height * fraction
    if name == "Rotate":
        return 30.0 * fraction
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 0.9 * fraction
    if name == "Posterize":
        return float(8 - round(magnitude / (last_bin / 4)))
    if name == "Solarize":
        return 255.0 - 255.0 * magnitude / last_bin
    raise KeyError(f"unknown op {name!r}; expected one of {OP_NAMES}")


# ----------------------------------------------------------------------------------------------
# Geometric ops: one per-sample affine matrix, one grid_sample for the batch.
# ----------------------------------------------------------------------------------------------


def _geometry_thetas(op_ids: Tensor, signs: Tensor, magnitude: float, num_bins: int, height: int, width: int) -> Tensor:
    """Per-sample N x 2 x 3 matrices mapping output to input pixels (centred coordinates).

    Semantics follow torchvision's tensor `affine`/`rotate` as RandAugment calls them: shears about
    the top-left corner (center=[0, 0]), translations by int(magnitude) pixels, rotation about the
    image centre, counter-clockwise for positive angles. Samples whose op is not geometric get
    the identity.
    """

    def strength(name: str) -> Tensor:
        return signs * op_strength(name, magnitude, num_bins, (height, width))

    def chosen(name: str) -> Tensor:
        return op_ids == OP_INDEX[name]

    zeros = torch.zeros_like(signs)
    shear_x, shear_y = strength("ShearX"), strength("ShearY")
    shift_x, shift_y = strength("TranslateX").trunc(), strength("TranslateY").trunc()
    angle = torch.deg2rad(strength("Rotate"))
    cos, sin = torch.cos(angle), torch.sin(angle)

    # x_in = a * x_out + b * y_out + c ;  y_in = d * x_out + e * y_out + f  (centred pixels)
    a = torch.where(chosen("Rotate"), cos, 1.0)
    b = torch.where(chosen("Rotate"), -sin, torch.where(chosen("ShearX"), shear_x, zeros))
    c = torch.where(chosen("ShearX"), shear_x * (height / 2), torch.where(chosen("TranslateX"), -shift_x, zeros))
    d = torch.where(chosen("Rotate"), sin, torch.where(chosen("ShearY"), shear_y, zeros))
    e = torch.where(chosen("Rotate"), cos, 1.0)
    f = torch.where(chosen("ShearY"), shear_y * (width / 2), torch.where(chosen("TranslateY"), -shift_y, zeros))

    return torch.stack([torch.stack([a, b, c], dim=-1), torch.stack([d, e, f], dim=-1)], dim=1)


def _sampling_grid(matrices: Tensor, height: int, width: int) -> Tensor:
    """grid_sample grid (N x H x W x 2, align_corners=False) for output -> input matrices in
    centred pixel coordinates. Same arithmetic order as torchvision's tensor affine (coefficients
    divided by the half size first, then x * a + y * b + c), so exact half-pixel ties (e.g. shear
    0.2 hits them) round to the same neighbour, where F.affine_grid's order rounds some differently.
    """
    device, dtype = matrices.device, matrices.dtype
    xs = torch.arange(width, device=device, dtype=dtype) - (width - 1) / 2
    ys = torch.arange(height, device=device, dtype=dtype) - (height - 1) / 2
    xs, ys = xs.view(1, 1, width), ys.view(1, height, 1)

    def coordinate(row: Tensor, half_size: float) -> Tensor:  # row: N x 3 -> N x H x W
        a, b, c = (row / half_size).view(-1, 3, 1, 1).unbind(1)
        return xs * a + ys * b + c

    return torch.stack([coordinate(matrices[:, 0], width / 2), coordinate(matrices[:, 1], height / 2)], dim=-1)


def _fill_tensor(fill: float | Sequence[float], channels: int, like: Tensor) -> Tensor:
    values = [float(fill)] * channels if isinstance(fill, (int, float)) else [float(v) for v in fill]
    column = torch.empty(channels, device=like.device, dtype=like.dtype)
    for channel, value in enumerate(values):  # scalar fills: no host -> device copy
        column[channel] = value
    return column.view(1, channels, 1, 1)


def _is_zero_fill(fill: float | Sequence[float]) -> bool:
    return all(v == 0 for v in fill) if isinstance(fill, Sequence) else fill == 0


def _warp(images: Tensor, thetas: Tensor, fill: float | Sequence[float]) -> Tensor:
    """Nearest-neighbour affine warp of a float batch; pixels mapped from outside get `fill`."""
    n, c, h, w = images.shape
    grid = _sampling_grid(thetas.to(images.dtype), h, w)
    if _is_zero_fill(fill):
        return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    with_coverage = torch.cat([images, torch.ones_like(images[:, :1])], dim=1)
    warped = F.grid_sample(with_coverage, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = warped[:, -1:] > 0.5
    return torch.where(inside, warped[:, :-1], _fill_tensor(fill, c, images))


# ----------------------------------------------------------------------------------------------
# Colour ops on float batches holding integer values 0..255. Each returns integer values again,
# truncating like torchvision's uint8 kernels, so consecutive ops see what torchvision would.
# ----------------------------------------------------------------------------------------------


def _blend(images: Tensor, degenerate: Tensor | float, weights: tuple[Tensor, Tensor]) -> Tensor:
    """factor * images + (1 - factor) * degenerate, truncated to integers like a uint8 cast.
    weights = (factor, 1 - factor), both rounded once from double precision as in torchvision."""
    factor, complement = weights
    return (images * factor + degenerate * complement).clamp(0, 255).floor()


def _grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, floored as torchvision does for uint8 images (1-channel: unchanged)."""
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(dim=1)
    return (red * 0.2989 + green * 0.587 + blue * 0.114).floor().unsqueeze(1)


def _brightness(images: Tensor, factor: tuple[Tensor, Tensor]) -> Tensor:
    return _blend(images, 0.0, factor)


def _color(images: Tensor, factor: tuple[Tensor, Tensor]) -> Tensor:
    if images.shape[1] == 1:  # saturation of a grey image is a no-op (as in torchvision and PIL)
        return images
    return _blend(images, _grayscale(images), factor)


def _contrast(images: Tensor, factor: tuple[Tensor, Tensor]) -> Tensor:
    mean = _grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def _sharpness(images: Tensor, factor: tuple[Tensor, Tensor]) -> Tensor:
    """Blend with a smoothed copy (3x3 kernel, centre weight 5); border pixels stay as they are.

    The 3x3 sum is taken over whole pixel values, exact in float32, and divided once: the same
    result on any device (a convolution with weights 1/13 rounds them, in TF32 on CUDA by default).
    """
    n, c, h, w = images.shape
    if h <= 2 or w <= 2:
        return images
    window = sum(images[..., i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3))
    smoothed = ((window + 4 * images[..., 1:-1, 1:-1]) / 13.0).round()
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = smoothed
    return _blend(images, degenerate, factor)


def _posterize(images: Tensor, bits: float) -> Tensor:
    step = 2.0 ** (8 - int(bits))
    return (images / step).floor() * step


def _solarize(images: Tensor, threshold: float) -> Tensor:
    return torch.where(images >= threshold, 255.0 - images, images)


def _autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel to 0..255; constant channels are left unchanged."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    constant = high == low
    scale = 255.0 / torch.where(constant, 1.0, high - low)
    stretched = ((images - low) * scale).clamp(0, 255).floor()
    return torch.where(constant, images, stretched)


def _equalize(images: Tensor) -> Tensor:
    """PIL's histogram equalisation per image and channel, with batched histograms (no loop).

    PIL: step = (pixels not at the channel's highest value) // 255; if step is 0 the channel is
    unchanged; otherwise lut[v] = (count of pixels below v + step // 2) // step, clamped to 255.
    """
    n, c, h, w = images.shape
    values = images.reshape(n * c, h * w).long()
    counts = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    counts.scatter_add_(1, values, torch.ones_like(values))
    top_count = counts.gather(1, values.amax(dim=1, keepdim=True))
    step = torch.div(h * w - top_count, 255, rounding_mode="floor")
    below = counts.cumsum(dim=1) - counts
    lut = torch.div(below + step // 2, step.clamp(min=1), rounding_mode="floor").clamp(max=255)
    equalized = lut.gather(1, values).to(images.dtype)
    return torch.where(step == 0, values.to(images.dtype), equalized).view(n, c, h, w)


def _apply_ops_float(
    images: Tensor, op_ids: Tensor, signs: Tensor, magnitude: float, num_bins: int, fill: float | Sequence[float]
) -> Tensor:
    """One RandAugment step: sample i gets op `op_ids[i]` with sign `signs[i]`.

    Geometric samples go through one shared warp (the others get the identity matrix, which
    nearest sampling reproduces exactly); every colour op is computed for the whole batch and
    selected per sample with a mask. Computing unused candidates is cheaper than gathering index
    groups, which would need a host sync to know the group sizes.
    """
    n, c, h, w = images.shape

    def strength(name: str) -> float:
        return op_strength(name, magnitude, num_bins, (h, w))

    def factor(name: str) -> tuple[Tensor, Tensor]:
        # factor = 1 +/- strength and 1 - factor formed in double precision, as torchvision does
        # (rounding them in float32 first moves some pixels by one level).
        positive = signs.view(n, 1, 1, 1) > 0
        value = strength(name)
        return (
            torch.where(positive, 1.0 + value, 1.0 - value),
            torch.where(positive, 1.0 - (1.0 + value), 1.0 - (1.0 - value)),
        )

    out = _warp(images, _geometry_thetas(op_ids, signs, magnitude, num_bins, h, w), fill)
    colour_results = {
        "Brightness": lambda: _brightness(images, factor("Brightness")),
        "Color": lambda: _color(images, factor("Color")),
        "Contrast": lambda: _contrast(images, factor("Contrast")),
        "Sharpness": lambda: _sharpness(images, factor("Sharpness")),
        "Posterize": lambda: _posterize(images, strength("Posterize")),
        "Solarize": lambda: _solarize(images, strength("Solarize")),
        "AutoContrast": lambda: _autocontrast(images),
        "Equalize": lambda: _equalize(images),
    }
    for name, compute in colour_results.items():
        chosen = (op_ids == OP_INDEX[name]).view(n, 1, 1, 1)
        out = torch.where(chosen, compute(), out)
    return out


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 N x C x H x W with C in (1, 3), got {images.dtype} {tuple(images.shape)}")


def apply_op(
    images: Tensor,
    op: int | str | Tensor,
    magnitude: float,
    signs: float | Tensor | None = None,
    num_magnitude_bins: int = 31,
    fill: float | Sequence[float] = 0,
) -> Tensor:
    """Apply one RandAugment op to a uint8 batch: the building block RandAugment uses, exposed
    so that each op can be checked against torchvision.

    op: an index into OP_NAMES, a name, or an N-vector of per-sample op indices.
    signs: +1 / -1 (scalar or N-vector) for the signed ops; default +1.
    """
    _check_images(images)
    n, device = images.shape[0], images.device
    if isinstance(op, str):
        op = OP_INDEX[op]
    op_ids = op.to(device) if isinstance(op, Tensor) else torch.full((n,), int(op), device=device)
    if signs is None:
        signs = 1.0
    signs = (
        signs.to(device=device, dtype=torch.float32)
        if isinstance(signs, Tensor)
        else torch.full((n,), float(signs), device=device)
    )
    out = _apply_ops_float(images.float(), op_ids.expand(n), signs.expand(n), magnitude, num_magnitude_bins, fill)
    return out.to(torch.uint8)


class RandAugment:
    """RandAugment with per-sample ops and signs on a uint8 batch (any device).

    Each of `num_ops` steps draws, for every image, one of the 14 ops and a random sign, with
    torchvision's magnitude semantics. `magnitude` is a plain attribute: the progressive trainer
    assigns it at each stage (fractional values interpolate torchvision's table).

    Each op reproduces torchvision's tensor op pixel for pixel (``tests/test_augment.py`` compares
    every op, both signs, several magnitudes, 1 and 3 channels and two fills). What differs from
    torchvision's RandAugment is only the random stream (its per-image draws vs our batch draws).
    Grey (1-channel) images: Color is a no-op, as in torchvision.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: float = 9, num_magnitude_bins: int = 31, fill: float | Sequence[float] = 0
    ):
        self.num_ops = num_ops
        self.num_magnitude_bins = num_magnitude_bins
        self.magnitude = magnitude
        self.fill = fill

    @property
    def magnitude(self) -> float:
        return self._magnitude

    @magnitude.setter
    def magnitude(self, value: float) -> None:
        if not 0 <= value <= self.num_magnitude_bins - 1:
            raise ValueError(f"magnitude {value} outside 0 .. {self.num_magnitude_bins - 1}")
        self._magnitude = float(value)

    def draw_ops(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Per-step, per-sample op indices and signs, each num_ops x batch_size."""
        shape = (self.num_ops, batch_size)
        op_ids = _randint(len(OP_NAMES), shape, generator, torch.device(device))
        signs = _randint(2, shape, generator, torch.device(device)).float() * 2 - 1
        return op_ids, signs

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images)
        op_ids, signs = self.draw_ops(images.shape[0], generator, images.device)
        out = images.float()
        for step in range(self.num_ops):
            out = _apply_ops_float(out, op_ids[step], signs[step], self.magnitude, self.num_magnitude_bins, self.fill)
        return out.to(torch.uint8)

    def __repr__(self) -> str:
        return (
            f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"num_magnitude_bins={self.num_magnitude_bins}, fill={self.fill})"
        )


# ----------------------------------------------------------------------------------------------
# Crop + flip, resize, normalize.
# ----------------------------------------------------------------------------------------------


def random_crop_flip(
    images: Tensor,
    padding: int,
    generator: torch.Generator | None = None,
    flip: bool = True,
    padding_mode: str = "zeros",
) -> Tensor:
    """Per-sample random crop of a `padding`-padded image back to H x W, then a random
    horizontal flip (probability 1/2; `flip=False` disables it).

    One gather for the whole batch: each output pixel's source index is computed, so the padded
    image is never materialised. padding_mode "zeros" (default; torchvision RandomCrop's
    constant fill 0, which matches Fashion-MNIST's black background) or "reflect" (CIFAR-style,
    needs padding < H, W). Works on any dtype.
    """
    n, c, h, w = images.shape
    if padding == 0 and not flip:
        return images
    device = images.device
    shift_y = _randint(2 * padding + 1, (n, 1), generator, device) - padding
    shift_x = _randint(2 * padding + 1, (n, 1), generator, device) - padding
    rows = torch.arange(h, device=device) + shift_y  # n x h source rows
    columns = torch.arange(w, device=device).expand(n, w)
    if flip:
        flipped = _randint(2, (n, 1), generator, device).bool()
        columns = torch.where(flipped, columns.flip(1), columns)
    columns = columns + shift_x  # n x w source columns

    if padding_mode == "reflect":
        rows = torch.where(rows < 0, -rows, torch.where(rows >= h, 2 * (h - 1) - rows, rows))
        columns = torch.where(columns < 0, -columns, torch.where(columns >= w, 2 * (w - 1) - columns, columns))
        inside = None
    elif padding_mode == "zeros":
        inside = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((columns >= 0) & (columns < w)).unsqueeze(1)
        rows, columns = rows.clamp(0, h - 1), columns.clamp(0, w - 1)
    else:
        raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")

    source = (rows.unsqueeze(2) * w + columns.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
    out = images.reshape(n, c, h * w).gather(2, source).view(n, c, h, w)
    if inside is not None:
        out = torch.where(inside.unsqueeze(1), out, torch.zeros((), dtype=out.dtype, device=device))
    return out


def random_resized_crop(
    images: Tensor,
    min_area: float,
    generator: torch.Generator | None = None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Scale augmentation for a whole batch: each image keeps a random box of ``min_area`` to all of
    its area (log-uniform aspect ``ratio``, clipped to the image), stretched back to H x W.

    ImageNet recipes train this way, so objects appear at many scales and a change of image size
    (progressive learning) is one more scale the network has seen. torchvision's
    ``RandomResizedCrop`` draws one box for a whole batched tensor; here every image draws its own,
    and one bilinear ``grid_sample`` does the batch. uint8 in, uint8 out.
    """
    n, _, h, w = images.shape
    if min_area >= 1:
        return images
    device = images.device
    area = min_area + (1 - min_area) * _rand((n,), generator, device)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand((n,), generator, device))
    box_w = torch.sqrt(area * aspect).clamp(max=1.0)  # box sides as shares of the image's
    box_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1 - box_w) * (2 * _rand((n,), generator, device) - 1)  # centres in [-1, 1] units
    centre_y = (1 - box_h) * (2 * _rand((n,), generator, device) - 1)
    zeros = torch.zeros_like(box_w)
    theta = torch.stack([torch.stack([box_w, zeros, centre_x], 1), torch.stack([zeros, box_h, centre_y], 1)], 1)
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(images.dtype)


def random_window(images: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """A random ``size`` x ``size`` window of every image, at its native scale (no resampling).

    Composer's "crop" mode of progressive resizing: a stage smaller than the images sees parts of
    them with objects at the size they have at the final stage, instead of shrunken whole images.
    """
    n, c, h, w = images.shape
    if size >= h and size >= w:
        return images
    size_h, size_w = min(size, h), min(size, w)
    device = images.device
    top = _randint(h - size_h + 1, (n, 1), generator, device)
    left = _randint(w - size_w + 1, (n, 1), generator, device)
    rows = torch.arange(size_h, device=device) + top  # n x size_h source rows
    columns = torch.arange(size_w, device=device) + left  # n x size_w source columns
    source = (rows.unsqueeze(2) * w + columns.unsqueeze(1)).view(n, 1, -1).expand(n, c, size_h * size_w)
    return images.reshape(n, c, h * w).gather(2, source).view(n, c, size_h, size_w)


def random_erasing(
    images: Tensor,
    probability: float,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> Tensor:
    """Random erasing (Zhong et al., 2017) for a whole batch: with ``probability`` each image gets one
    rectangle set to 0, of ``scale`` x its area and log-uniform aspect ``ratio`` (torchvision's
    ``RandomErasing`` defaults with value 0, Fashion-MNIST's background), clipped to the image.

    One mask from row and column comparisons, no per-image loop. Works on any dtype.
    """
    n, _, h, w = images.shape
    if probability <= 0:
        return images
    device = images.device
    area = (scale[0] + (scale[1] - scale[0]) * _rand((n,), generator, device)) * h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand((n,), generator, device))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (_rand((n,), generator, device) * (h - eh + 1)).floor()
    left = (_rand((n,), generator, device) * (w - ew + 1)).floor()
    chosen = _rand((n,), generator, device) < probability
    rows = torch.arange(h, device=device).expand(n, h)
    columns = torch.arange(w, device=device).expand(n, w)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_columns = (columns >= left[:, None]) & (columns < (left + ew)[:, None])
    erased = (in_rows.unsqueeze(2) & in_columns.unsqueeze(1)) & chosen[:, None, None]
    return images.masked_fill(erased.unsqueeze(1), 0)


def resize(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of a batch; antialiased when shrinking. Same size: returned as is.

    Keeps the dtype: float in -> float out (what the pipeline uses, no rounding), uint8 in ->
    rounded uint8 out (for storing or viewing).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    if images.dtype == torch.uint8:
        return resized.round().clamp(0, 255).to(torch.uint8)
    return resized.to(images.dtype)


def _channel_vector(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    if isinstance(values, Tensor):
        return values.to(device=like.device, dtype=torch.float32).view(1, -1, 1, 1)
    return _fill_tensor(values, len(values), like.float())


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Pixel values 0..255 (uint8, or float from `resize`) -> float (x / 255 - mean) / std.

    mean and std are per channel in 0..1 units, as usually published.
    """
    mean, std = _channel_vector(mean, images), _channel_vector(std, images)
    return (images.float() - mean * 255.0) / (std * 255.0)


# ----------------------------------------------------------------------------------------------
# Mixup and CutMix (soft targets; label smoothing belongs to the loss).
# ----------------------------------------------------------------------------------------------


def _log_gamma_samples(shape_parameter: float, count: int, generator, device, tries: int = 32) -> Tensor:
    """log of Gamma(shape_parameter, 1) samples, drawn with `generator` and without a host sync.

    Marsaglia-Tsang rejection, vectorised: `tries` candidates per sample, keep the first accepted
    one (acceptance >= 95 % per candidate, so all failing has probability < 1e-40). Shapes below 1
    use Gamma(a) = Gamma(a + 1) * U ** (1 / a). Logs keep tiny-alpha samples from underflowing.
    """
    boosted = shape_parameter < 1
    a = shape_parameter + 1 if boosted else shape_parameter
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    normal = _randn((count, tries), generator, device)
    uniform = _rand((count, tries), generator, device).clamp_min(1e-12)
    v = (1 + c * normal) ** 3
    log_v = torch.log(v.clamp_min(1e-12))
    accepted = (v > 0) & (torch.log(uniform) < 0.5 * normal**2 + d - d * v + d * log_v)
    first = accepted.int().argmax(dim=1, keepdim=True)
    log_gamma = (math.log(d) + log_v).gather(1, first).squeeze(1)
    if boosted:
        log_gamma = log_gamma + torch.log(_rand((count,), generator, device).clamp_min(1e-12)) / shape_parameter
    return log_gamma


def sample_beta(
    alpha: float, count: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Beta(alpha, alpha) samples drawn with a torch.Generator (torch.distributions cannot)."""
    log_x = _log_gamma_samples(alpha, count, generator, torch.device(device))
    log_y = _log_gamma_samples(alpha, count, generator, torch.device(device))
    return torch.sigmoid(log_x - log_y)


def draw_mixup_params(
    batch_size: int, alpha: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """One mixing weight lam ~ Beta(alpha, alpha) for the batch (0-dim tensor) and a partner
    permutation. mixup and cutmix draw these first, so a test can reproduce them from a seed."""
    lam = sample_beta(alpha, 1, generator, device)[0]
    return lam, _randperm(batch_size, generator, torch.device(device))


def _soft_targets(targets: Tensor, num_classes: int) -> Tensor:
    if targets.ndim == 1:
        return F.one_hot(targets.long(), num_classes).float()
    return targets.float()


def mixup(
    images: Tensor, targets: Tensor, alpha: float, num_classes: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """images -> lam * images + (1 - lam) * images[perm], targets likewise (N x num_classes).

    targets: class indices (N) or one-hot / soft rows (N x num_classes). alpha <= 0: images are
    returned unchanged, with one-hot targets.
    """
    soft = _soft_targets(targets, num_classes)
    if alpha <= 0:
        return images, soft
    lam, perm = draw_mixup_params(images.shape[0], alpha, generator, images.device)
    mixed = images * lam + images[perm] * (1 - lam)
    return mixed, soft * lam + soft[perm] * (1 - lam)


def cutmix(
    images: Tensor, targets: Tensor, alpha: float, num_classes: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Paste one random box (area about 1 - lam, clipped at the borders) from each image's
    partner; targets are weighted by the pasted area actually used. alpha <= 0: no-op."""
    soft = _soft_targets(targets, num_classes)
    if alpha <= 0:
        return images, soft
    n, _, h, w = images.shape
    device = images.device
    lam, perm = draw_mixup_params(n, alpha, generator, device)
    side = torch.sqrt(1 - lam)
    half_h, half_w = (side * h).floor() // 2, (side * w).floor() // 2
    centre_y, centre_x = (
        (_rand((2,), generator, device) * h).floor()[0],
        (_rand((1,), generator, device) * w).floor()[0],
    )
    rows, columns = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (rows >= (centre_y - half_h).clamp(0, h)) & (rows < (centre_y + half_h).clamp(0, h))
    in_columns = (columns >= (centre_x - half_w).clamp(0, w)) & (columns < (centre_x + half_w).clamp(0, w))
    box = in_rows.view(1, 1, h, 1) & in_columns.view(1, 1, 1, w)
    mixed = torch.where(box, images[perm], images)
    kept = 1 - box.sum() / (h * w)
    return mixed, soft * kept + soft[perm] * (1 - kept)


# ----------------------------------------------------------------------------------------------
# The pipeline the trainer uses.
# ----------------------------------------------------------------------------------------------


class BatchAugmenter:
    """uint8 batch + labels -> (normalized float batch at `image_size`, soft targets).

    Order: random-resized crop, crop/flip, RandAugment and random erasing at native resolution on
    uint8 values (cheap), then `preprocess(images, image_size)` (default: bilinear resize and the
    dataset's mean/std; a pretrained model passes its weights' own transform), then mixup.
    `magnitude`, `mixup_alpha` and `image_size` are plain attributes that the progressive trainer
    sets at each stage. num_ops=0, padding=0 / flip=False, erasing=0 or min_area=1 switch parts off.
    resize_mode "crop" gives a stage smaller than the images random windows at native scale instead
    of resized images, and evaluates on whole images at native size.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        magnitude: float = 9,
        num_ops: int = 2,
        mixup_alpha: float = 0.0,
        padding: int = 4,
        flip: bool = True,
        padding_mode: str = "zeros",
        num_magnitude_bins: int = 31,
        fill: float | Sequence[float] = 0,
        erasing: float = 0.0,
        min_area: float = 1.0,
        resize_mode: str = "resize",
        preprocess: Callable[[Tensor, int], Tensor] | None = None,
    ):
        if resize_mode not in ("resize", "crop"):
            raise ValueError(f"resize_mode must be 'resize' or 'crop', got {resize_mode!r}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.mean, self.std = list(mean), list(std)
        self.randaugment = RandAugment(num_ops, magnitude, num_magnitude_bins, fill)
        self.mixup_alpha = mixup_alpha
        self.padding, self.flip, self.padding_mode = padding, flip, padding_mode
        self.erasing, self.min_area, self.resize_mode = erasing, min_area, resize_mode
        self.preprocess = preprocess or self._resize_and_normalize
        self._mean_std_on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def magnitude(self) -> float:
        return self.randaugment.magnitude

    @magnitude.setter
    def magnitude(self, value: float) -> None:
        self.randaugment.magnitude = value

    def _resize_and_normalize(self, images: Tensor, size: int) -> Tensor:
        # mean/std cached per device: building them from Python lists on a GPU every batch would sync
        if images.device not in self._mean_std_on:
            self._mean_std_on[images.device] = (
                torch.tensor(self.mean, device=images.device),
                torch.tensor(self.std, device=images.device),
            )
        return normalize(resize(images.float(), size), *self._mean_std_on[images.device])

    def __call__(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        augmented = random_resized_crop(images, self.min_area, generator)
        augmented = random_crop_flip(augmented, self.padding, generator, self.flip, self.padding_mode)
        if self.randaugment.num_ops > 0:
            augmented = self.randaugment(augmented, generator)
        augmented = random_erasing(augmented, self.erasing, generator)
        if self.resize_mode == "crop":
            augmented = random_window(augmented, self.image_size, generator)
        normalized = self.preprocess(augmented, self.image_size)
        return mixup(normalized, labels, self.mixup_alpha, self.num_classes, generator)

    def eval_size(self, native: int) -> int:
        """The size evaluation runs at: the stage's, or the native one for a smaller stage in crop mode."""
        return max(self.image_size, native) if self.resize_mode == "crop" else self.image_size

    def eval_transform(self, images: Tensor) -> Tensor:
        """Evaluation path: the same preprocessing, no augmentation."""
        return self.preprocess(images, self.eval_size(images.shape[-1]))

    def __repr__(self) -> str:
        return (
            f"BatchAugmenter(image_size={self.image_size}, {self.randaugment}, "
            f"mixup_alpha={self.mixup_alpha}, padding={self.padding}, flip={self.flip}, erasing={self.erasing}, "
            f"min_area={self.min_area}, resize_mode={self.resize_mode!r})"
        )


def stage_views(augmenter: BatchAugmenter, images: Tensor, labels: Tensor, stages, seed: int = 0) -> list[Tensor]:
    """``images`` as ``augmenter`` gives them to the network at each of ``stages`` (its image size,
    RandAugment magnitude and mixup), back in 0-1 pixel units for display. Every stage draws from the
    same seed, so what differs between them is the stage's values, not the luck of the draw."""
    views = []
    for stage in stages:
        augmenter.image_size, augmenter.magnitude = stage.image_size, stage.randaug_magnitude
        augmenter.mixup_alpha = stage.mixup_alpha
        x, _ = augmenter(images, labels, torch.Generator(device=images.device).manual_seed(seed))
        mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (augmenter.mean, augmenter.std))
        views.append((x * std + mean).clamp(0, 1).cpu())
    return views
