"""Checks for lib/augment.py: each RandAugment op against torchvision's functional op, per-sample
randomness, determinism, and the crop/flip, resize, normalize, mixup and cutmix helpers."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode, RandAugment as TorchvisionRandAugment
from torchvision.transforms.v2 import functional as TF2

from lib.augment import (
    GEOMETRIC_OPS,
    OP_NAMES,
    SIGNED_OPS,
    BatchAugmenter,
    RandAugment,
    apply_op,
    cutmix,
    draw_mixup_params,
    mixup,
    normalize,
    op_strength,
    random_crop_flip,
    random_erasing,
    random_resized_crop,
    random_window,
    resize,
    sample_beta,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: one thread is fastest, and avoids spinning threads on a busy shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def textured_images(n, channels, height=28, width=32, seed=0):
    """Smooth random shapes plus noise, each image with its own value range, so that contrast,
    autocontrast, equalize and sharpness all have something to do."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 80, (n, 1, 1, 1), generator=g).float()
    high = torch.randint(150, 256, (n, 1, 1, 1), generator=g).float()
    coarse = torch.rand(n, channels, height // 4, width // 4, generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.randn(n, channels, height, width, generator=g) * 8
    return (low + (high - low) * smooth + noise).clamp(0, 255).to(torch.uint8)


def torchvision_op(image, name, value, fill):
    """One image through torchvision's functional op, with the arguments torchvision's
    RandAugment passes (transforms/autoaugment.py::_apply_op); value is the signed strength."""
    nearest = InterpolationMode.NEAREST
    if name == "Identity":
        return image
    if name == "ShearX":
        return TF.affine(image, 0.0, [0, 0], 1.0, [math.degrees(math.atan(value)), 0.0], nearest, fill, center=[0, 0])
    if name == "ShearY":
        return TF.affine(image, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(value))], nearest, fill, center=[0, 0])
    if name == "TranslateX":
        return TF.affine(image, 0.0, [int(value), 0], 1.0, [0.0, 0.0], nearest, fill)
    if name == "TranslateY":
        return TF.affine(image, 0.0, [0, int(value)], 1.0, [0.0, 0.0], nearest, fill)
    if name == "Rotate":
        return TF.rotate(image, value, nearest, fill=fill)
    if name == "Brightness":
        return TF.adjust_brightness(image, 1.0 + value)
    if name == "Color":
        return TF.adjust_saturation(image, 1.0 + value)
    if name == "Contrast":
        return TF.adjust_contrast(image, 1.0 + value)
    if name == "Sharpness":
        return TF.adjust_sharpness(image, 1.0 + value)
    if name == "Posterize":
        return TF.posterize(image, int(value))
    if name == "Solarize":
        return TF.solarize(image, value)
    if name == "AutoContrast":
        return TF.autocontrast(image)
    if name == "Equalize":
        return TF.equalize(image)
    raise KeyError(name)


def test_strength_table_matches_torchvision():
    height, width = 28, 32
    table = TorchvisionRandAugment()._augmentation_space(31, (height, width))
    for name, (magnitudes, signed) in table.items():
        assert signed == (name in SIGNED_OPS)
        for magnitude in range(31):
            expected = float(magnitudes[magnitude]) if magnitudes.ndim > 0 else 0.0
            ours = op_strength(name, magnitude, 31, (height, width))
            assert ours == pytest.approx(expected, rel=1e-6, abs=1e-6), (name, magnitude)
            if name.startswith("Translate"):
                assert int(ours) == int(expected)
    assert list(table) == list(OP_NAMES)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("magnitude", [9, 20, 30])
@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_matches_torchvision(name, magnitude, channels):
    """Found exact (0 differing pixels) for all 14 ops, both signs, with fill 0 and 37. Bounds
    below leave room for float rounding on other hardware: colour ops off by at most one level;
    geometric ops (nearest sampling, ties at half pixels) under 1 % of pixels."""
    images = textured_images(8, channels)
    signs = torch.tensor([1.0, -1.0] * 4)
    for fill in (0, 37):
        ours = apply_op(images, name, magnitude, signs, fill=fill)
        strength = op_strength(name, magnitude, 31, images.shape[-2:])
        expected = torch.stack(
            [
                torchvision_op(
                    image, name, strength * float(sign) if name in SIGNED_OPS else strength, [float(fill)] * channels
                )
                for image, sign in zip(images, signs)
            ]
        )
        difference = (ours.int() - expected.int()).abs()
        assert ours.dtype == torch.uint8 and ours.shape == images.shape
        if name in GEOMETRIC_OPS:
            assert (difference > 0).float().mean() < 0.01
            assert difference.float().mean() < 1.0
        else:
            assert difference.max() <= 1
            assert (difference > 0).float().mean() < 0.01
        if name != "Identity" and magnitude == 30 and not (name == "Color" and channels == 1):
            assert not torch.equal(ours, images)  # the op really did something (Color: grey no-op)


@pytest.mark.parametrize("name", GEOMETRIC_OPS)
def test_geometric_ops_at_magnitude_zero_leave_images_unchanged(name):
    for channels in (1, 3):
        images = textured_images(4, channels)
        assert torch.equal(apply_op(images, name, 0, torch.tensor([1.0, -1.0, 1.0, -1.0])), images)


def test_per_sample_op_ids_apply_each_sample_its_own_op():
    images = textured_images(len(OP_NAMES), 3)
    op_ids = torch.arange(len(OP_NAMES))
    signs = torch.tensor([1.0, -1.0] * 7)
    mixed = apply_op(images, op_ids, 15, signs)
    for index, name in enumerate(OP_NAMES):
        alone = apply_op(images[index : index + 1], name, 15, signs[index : index + 1])
        assert torch.equal(mixed[index : index + 1], alone), name


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_differs_per_sample(channels):
    augment = RandAugment(num_ops=2, magnitude=15)
    same_image = textured_images(1, channels).expand(64, -1, -1, -1).contiguous()
    out = augment(same_image, torch.Generator().manual_seed(3))
    assert out.shape == same_image.shape and out.dtype == torch.uint8
    distinct = {tuple(image.flatten().tolist()) for image in out}
    assert len(distinct) > 20
    op_ids, signs = augment.draw_ops(64, torch.Generator().manual_seed(3))
    assert op_ids.shape == (2, 64) and len(op_ids[0].unique()) > 5
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def test_randaugment_is_the_drawn_ops_applied_in_order():
    augment = RandAugment(num_ops=3, magnitude=12, fill=7)
    images = textured_images(16, 3)
    out = augment(images, torch.Generator().manual_seed(5))
    op_ids, signs = augment.draw_ops(16, torch.Generator().manual_seed(5))
    expected = images
    for step in range(3):
        expected = apply_op(expected, op_ids[step], 12, signs[step], fill=7)
    assert torch.equal(out, expected)


def test_randaugment_is_deterministic_under_a_seed_and_magnitude_is_settable():
    augment = RandAugment(num_ops=2, magnitude=9)
    images = textured_images(32, 1)
    first = augment(images, torch.Generator().manual_seed(11))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(11)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(12)))
    augment.magnitude = 25
    assert augment.magnitude == 25
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(11)))
    with pytest.raises(ValueError):
        augment.magnitude = 31
    assert torch.equal(RandAugment(num_ops=0)(images), images)


def test_randaugment_on_the_device_matches_the_cpu(device):
    """The training device's result against the CPU's, op by op and for whole RandAugment draws
    (ops drawn from one CPU generator, so both apply the same ones). Bounds as against
    torchvision: colour ops off by at most one level on under 1% of pixels, geometric ops (nearest
    sampling, ties at half pixels) and whole draws under 1% of pixels; exact on the CPU itself."""
    for channels in (1, 3):
        images = textured_images(16, channels)
        signs = torch.tensor([1.0, -1.0] * 8)
        for name in OP_NAMES:
            for fill in (0, 37):
                cpu = apply_op(images, name, 20, signs, fill=fill)
                ours = apply_op(images.to(device), name, 20, signs.to(device), fill=fill)
                assert ours.device.type == device.type and ours.dtype == torch.uint8
                difference = (ours.cpu().int() - cpu.int()).abs()
                assert (difference > 0).float().mean() < 0.01, (name, channels, fill)
                if name not in GEOMETRIC_OPS:
                    assert difference.max() <= 1, (name, channels, fill)
                if device.type == "cpu":
                    assert difference.max() == 0, name
        augment = RandAugment(num_ops=2, magnitude=15)
        cpu = augment(images, torch.Generator().manual_seed(7))
        ours = augment(images.to(device), torch.Generator().manual_seed(7))
        assert ours.device.type == device.type
        assert (ours.cpu() != cpu).float().mean() < 0.01
    augmenter = BatchAugmenter(10, 50, (0.286,), (0.353,), magnitude=10, mixup_alpha=0.2, padding=2)
    labels = torch.arange(16, device=device) % 10
    x, targets = augmenter(images[:, :1].to(device), labels, torch.Generator(device=device).manual_seed(0))
    assert x.device.type == targets.device.type == device.type and x.shape == (16, 1, 50, 50)
    assert torch.allclose(targets.sum(1), torch.ones(16, device=device))


def test_random_crop_flip_matches_a_shifted_padded_window():
    images = textured_images(24, 3, 12, 12)
    padding = 2
    for mode, pad_mode in (("zeros", "constant"), ("reflect", "reflect")):
        out = random_crop_flip(images, padding, torch.Generator().manual_seed(0), padding_mode=mode)
        padded = F.pad(images.float(), [padding] * 4, mode=pad_mode).to(torch.uint8)
        flips_seen = 0
        for image, result in zip(padded, out):
            windows = [
                image[:, top : top + 12, left : left + 12]
                for top in range(2 * padding + 1)
                for left in range(2 * padding + 1)
            ]
            plain = any(torch.equal(result, window) for window in windows)
            mirrored = any(torch.equal(result, window.flip(-1)) for window in windows)
            assert plain or mirrored
            flips_seen += mirrored and not plain
        assert 0 < flips_seen < len(images)


def test_random_crop_flip_options():
    images = textured_images(16, 1, 10, 10)
    assert torch.equal(random_crop_flip(images, 0, flip=False), images)
    flipped_only = random_crop_flip(images, 0, torch.Generator().manual_seed(1))
    for image, result in zip(images, flipped_only):
        assert torch.equal(result, image) or torch.equal(result, image.flip(-1))
    no_flip = random_crop_flip(images, 3, torch.Generator().manual_seed(1), flip=False)
    padded = F.pad(images, [3] * 4)
    for image, result in zip(padded, no_flip):
        assert any(torch.equal(result, image[:, t : t + 10, left : left + 10]) for t in range(7) for left in range(7))


def test_random_erasing_sets_one_rectangle_of_the_drawn_size_to_zero():
    images = torch.randint(1, 256, (2000, 1, 28, 28), dtype=torch.uint8)  # no zeros before erasing
    assert random_erasing(images, 0.0) is images
    erased = random_erasing(images, 0.5, torch.Generator().manual_seed(3))
    assert erased.dtype == torch.uint8 and erased.shape == images.shape
    zero = erased[:, 0] == 0
    hit = zero.flatten(1).any(1)
    assert 0.45 < hit.float().mean() < 0.55  # the probability
    assert torch.equal(erased[~hit], images[~hit])  # untouched images
    for image, original, mask in zip(erased[hit], images[hit], zero[hit]):
        rows, columns = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        # one rectangle: the bounding box is all zeros, and nothing else changed
        assert mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1].all()
        assert torch.equal(image[0][~mask], original[0][~mask])
    areas = zero[hit].flatten(1).sum(1).float() / (28 * 28)
    assert areas.min() >= 0.01 and areas.max() <= 0.36 and 0.12 < areas.mean() < 0.2  # scale (0.02, 0.33)
    again = random_erasing(images, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(erased, again)


def test_resize_and_normalize():
    images = textured_images(4, 3, 28, 28)
    assert resize(images, 28) is images
    up = resize(images.float(), 50)
    assert up.shape == (4, 3, 50, 50) and up.dtype == torch.float32
    assert torch.allclose(up, F.interpolate(images.float(), size=(50, 50), mode="bilinear"))
    down = resize(images, (14, 20))
    assert down.dtype == torch.uint8 and down.shape == (4, 3, 14, 20)
    reference = TF2.resize(images, [14, 20], antialias=True)  # torchvision's antialiased bilinear
    assert (down.int() - reference.int()).abs().max() <= 1

    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    out = normalize(images, mean, std)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(normalize(images, torch.tensor(mean), torch.tensor(std)), expected, atol=1e-5)


def test_beta_sampler_statistics():
    generator = torch.Generator().manual_seed(0)
    for alpha in (0.2, 1.0, 4.0):
        samples = sample_beta(alpha, 20000, generator)
        assert samples.min() >= 0 and samples.max() <= 1 and not samples.isnan().any()
        assert samples.mean() == pytest.approx(0.5, abs=0.01)
        assert samples.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_mixup():
    images = torch.rand(16, 3, 8, 8)
    labels = torch.randint(0, 10, (16,))
    same_images, one_hot = mixup(images, labels, 0.0, 10)
    assert same_images is images and torch.equal(one_hot, F.one_hot(labels, 10).float())

    mixed, soft = mixup(images, labels, 0.4, 10, torch.Generator().manual_seed(2))
    lam, perm = draw_mixup_params(16, 0.4, torch.Generator().manual_seed(2))
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(16))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
    assert torch.allclose(soft, lam * one_hot + (1 - lam) * one_hot[perm])
    assert torch.allclose(soft.sum(1), torch.ones(16))
    assert torch.allclose(mixup(images, one_hot, 0.4, 10, torch.Generator().manual_seed(2))[1], soft)


def test_cutmix_targets_follow_the_pasted_area():
    n, size = 12, 16
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size)
    labels = torch.arange(n)  # image i is filled with the value i and has class i
    assert cutmix(images, labels, 0.0, n)[0] is images
    mixed, soft = cutmix(images, labels, 1.0, n, torch.Generator().manual_seed(4))
    _, perm = draw_mixup_params(n, 1.0, torch.Generator().manual_seed(4))  # cutmix draws these first
    assert torch.allclose(soft.sum(1), torch.ones(n))
    pasted = mixed != images
    moved = perm != torch.arange(n)
    box = pasted[moved][0]
    assert box.any() and not box.all()
    assert all(torch.equal(pasted[i], box) for i in range(n) if moved[i])  # one box per batch
    for i in range(n):
        assert torch.all((mixed[i] == i) | (mixed[i] == perm[i]))
        if perm[i] != i:
            pasted_fraction = float(pasted[i].float().mean())
            assert soft[i, perm[i]] == pytest.approx(pasted_fraction)
            assert soft[i, i] == pytest.approx(1 - pasted_fraction)


def test_batch_augmenter_pipeline_and_stage_attributes():
    images = textured_images(32, 1, 28, 28)
    labels = torch.randint(0, 10, (32,))
    augmenter = BatchAugmenter(
        num_classes=10, image_size=28, mean=(0.286,), std=(0.353,), magnitude=5, mixup_alpha=0.0, padding=2
    )
    x, targets = augmenter(images, labels, torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(targets, F.one_hot(labels, 10).float())
    again, _ = augmenter(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)

    augmenter.image_size, augmenter.magnitude, augmenter.mixup_alpha = 50, 10, 0.2
    assert augmenter.randaugment.magnitude == 10
    x, targets = augmenter(images, labels, torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 50, 50)
    assert torch.allclose(targets.sum(1), torch.ones(32))
    assert (targets.max(1).values < 1).float().mean() > 0.5  # soft unless the partner shares the label

    evaluated = augmenter.eval_transform(images)
    expected = normalize(F.interpolate(images.float(), size=(50, 50), mode="bilinear"), (0.286,), (0.353,))
    assert torch.allclose(evaluated, expected, atol=1e-5)

    bright = torch.full((64, 1, 28, 28), 200, dtype=torch.uint8)  # erasing: zeros appear only with it on
    plain = BatchAugmenter(10, 28, (0.0,), (1.0,), num_ops=0, padding=0, flip=False)
    assert plain(bright, labels.repeat(2), torch.Generator().manual_seed(0))[0].min() > 0
    plain.erasing = 0.5
    erased = plain(bright, labels.repeat(2), torch.Generator().manual_seed(0))[0]
    assert 0.3 < (erased.flatten(1).min(1).values == 0).float().mean() < 0.7


def test_random_resized_crop_draws_a_box_per_image_and_keeps_the_whole_image_at_area_one():
    images = textured_images(64, 1, 28, 28)
    assert torch.equal(random_resized_crop(images, 1.0), images)
    out = random_resized_crop(images, 0.35, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = random_resized_crop(images, 0.35, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded
    changed = (out != images).flatten(1).any(1)
    assert changed.float().mean() > 0.9  # nearly every image is cropped
    same = random_resized_crop(images[:1].expand(64, -1, -1, -1).contiguous(), 0.35, torch.Generator().manual_seed(1))
    assert len({bytes(x.numpy()) for x in same}) > 60  # per image, not one box for the batch


def test_random_resized_crop_of_a_quarter_box_magnifies_it_twice():
    """A box of a quarter of the area with aspect 1 is half the side: a 2 x 2 block pattern becomes 4 x 4."""
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[..., ::2, :] = 200  # stripes one pixel high
    out = random_resized_crop(image, 0.25 - 1e-9, torch.Generator().manual_seed(0), ratio=(1.0, 1.0))
    rows = out[0, 0, :, 0].float()
    assert ((rows[1:] - rows[:-1]).abs() > 50).sum() < 7  # fewer edges: the stripes got wider


def test_random_window_crops_at_native_scale():
    images = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    out = random_window(images, 20, torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 20, 20)
    for original, window in zip(images, out):  # a contiguous block of the original
        top, left = divmod(int(window[0, 0, 0].item()) % (28 * 28), 28)
        assert torch.equal(window, original[:, top : top + 20, left : left + 20])
    assert random_window(images, 28) is images


def test_crop_mode_trains_on_windows_and_evaluates_whole_images():
    images, labels = textured_images(8, 1, 28, 28), torch.arange(8) % 10
    crop = BatchAugmenter(10, 20, [0.5], [0.25], num_ops=0, padding=0, flip=False, resize_mode="crop")
    x, _ = crop(images, labels, torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 20, 20) and crop.eval_transform(images).shape == (8, 1, 28, 28)
    resized = BatchAugmenter(10, 20, [0.5], [0.25], num_ops=0, padding=0, flip=False)
    assert resized.eval_transform(images).shape == (8, 1, 20, 20)
    crop.image_size = 32  # above the native size: resized in both modes
    assert crop.eval_transform(images).shape == (8, 1, 32, 32)
