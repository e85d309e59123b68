"""The model library against torchvision and against the paper's numbers."""

import math

import pytest
import torch
import torchvision
from torch import nn

from lib.models import (
    EFFICIENTNETV2_S,
    MODEL_NAMES,
    build_model,
    check_input_size,
    count_flops,
    count_parameters,
    describe_stages,
    load_torchvision_weights,
    make_divisible,
    scale_table,
    with_fused_stages,
)
from lib.models.blocks import DropPath, FusedMBConv, MBConv, SqueezeExcite

TV = torchvision.models
TORCHVISION_NAMES = {
    "efficientnetv2_s": "efficientnet_v2_s",
    "efficientnetv2_m": "efficientnet_v2_m",
    "efficientnetv2_l": "efficientnet_v2_l",
    "resnet50": "resnet50",
    "wide_resnet101_2": "wide_resnet101_2",
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)},
}


def meta_model(name, num_classes=1000, **kw):
    """Built on the meta device: shapes only, no init cost (for counting)."""
    with torch.device("meta"):
        return build_model(name, num_classes, **kw)


def torchvision_model(name, meta=False, **kw):
    with torch.device("meta" if meta else "cpu"):
        return getattr(TV, TORCHVISION_NAMES[name])(weights=None, **kw)


def randomize_batchnorm(model):
    """Non-trivial running statistics and affine parameters, so eval outputs test them too."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "name, expected",
    [
        ("efficientnetv2_s", 21_458_488),
        ("efficientnetv2_m", 54_139_356),
        ("efficientnetv2_l", 118_515_272),
        ("efficientnet_b0", 5_288_548),
    ],
)
def test_parameter_counts_match_paper_and_torchvision(name, expected):
    assert count_parameters(meta_model(name)) == expected


def test_v2_s_at_10_classes():
    assert count_parameters(meta_model("efficientnetv2_s", 10)) == 20_190_298


@pytest.mark.parametrize("name", [f"efficientnet_b{i}" for i in range(1, 8)] + ["resnet50", "wide_resnet101_2"])
def test_parameter_counts_equal_torchvision(name):
    assert count_parameters(meta_model(name)) == count_parameters(torchvision_model(name, meta=True))


def test_flops_s_at_384_match_torchvision_metadata():
    # torchvision lists 8.37 GFLOPS (multiply-adds) for efficientnet_v2_s at 384 px;
    # the counter reports 2 FLOPs per multiply-add and skips BN/activations.
    macs = count_flops(meta_model("efficientnetv2_s"), 384) / 2
    assert macs == pytest.approx(8.37e9, rel=0.02)


def test_flops_grow_with_image_size():
    model = meta_model("efficientnetv2_s", 10)
    flops = [count_flops(model, s) for s in (64, 128, 224)]
    assert flops[0] < flops[1] < flops[2]
    # convolutions dominate: FLOPs scale ~ with pixel count
    assert flops[2] / flops[1] == pytest.approx((224 / 128) ** 2, rel=0.1)


# --------------------------------------------------------------------------- identity with torchvision


@pytest.mark.parametrize(
    "name", ["efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l", "efficientnet_b0", "resnet50"]
)
def test_torchvision_weights_reproduce_outputs(name):
    torch.manual_seed(0)
    reference = randomize_batchnorm(torchvision_model(name)).eval()
    ours = build_model(name, 1000).eval()
    mapping = load_torchvision_weights(ours, reference.state_dict())
    assert len(mapping) == len(reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_head_mismatch_needs_skip_classifier():
    state = torchvision_model("efficientnet_b0").state_dict()
    ours = build_model("efficientnet_b0", 10)
    before = ours.stem.conv.weight.clone()
    with pytest.raises(ValueError, match="skip_classifier=True"):
        load_torchvision_weights(ours, state)
    assert torch.equal(ours.stem.conv.weight, before)  # nothing loaded on error
    head_before = ours.classifier[1].weight.clone()
    load_torchvision_weights(ours, state, skip_classifier=True)
    assert torch.equal(ours.stem.conv.weight, state["features.0.0.weight"])
    assert torch.equal(ours.classifier[1].weight, head_before)


def test_wrong_architecture_is_rejected():
    state = torchvision_model("efficientnet_b0").state_dict()
    with pytest.raises(ValueError, match="not the same architecture"):
        load_torchvision_weights(build_model("efficientnetv2_s", 1000, depth_mult=0.1), state)
    with pytest.raises(ValueError, match="features.0.0.weight"):
        load_torchvision_weights(build_model("efficientnet_b0", 1000, in_channels=1), state)


# --------------------------------------------------------------------------- architecture facts


def test_describe_stages_reads_table_4_back():
    rows = describe_stages(meta_model("efficientnetv2_s"), image_size=384)
    ops = [(r["operator"], r["stride"], r["channels"], r["layers"]) for r in rows]
    assert ops == [
        ("Conv3x3", 2, 24, 1),
        ("Fused-MBConv1, k3x3", 1, 24, 2),
        ("Fused-MBConv4, k3x3", 2, 48, 4),
        ("Fused-MBConv4, k3x3", 2, 64, 4),
        ("MBConv4, k3x3", 2, 128, 6),
        ("MBConv6, k3x3", 1, 160, 9),
        ("MBConv6, k3x3", 2, 256, 15),
        ("Conv1x1 & Pooling & FC", 1, 1280, 1),
    ]
    assert [r["resolution"] for r in rows] == [192, 192, 96, 48, 24, 24, 12, 12]
    assert [r["se"] for r in rows[1:7]] == [0, 0, 0, 0.25, 0.25, 0.25]


def test_blocks_se_width_residual_and_batchnorm():
    model = meta_model("efficientnetv2_s")
    first_fused = model.stages[0][0]
    assert isinstance(first_fused, FusedMBConv) and len(first_fused.body) == 1  # e1: one conv
    assert first_fused.body[0].conv.kernel_size == (3, 3) and first_fused.has_residual
    block = model.stages[3][0]  # MBConv4, 64 -> 128, stride 2
    assert isinstance(block, MBConv) and not block.has_residual
    se = [m for m in block.modules() if isinstance(m, SqueezeExcite)][0]
    assert (se.fc1.in_channels, se.fc1.out_channels) == (256, 16)  # 64 input channels x 0.25
    assert model.stages[3][1].has_residual
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    assert not any(isinstance(m, SqueezeExcite) for m in model.stages[:3].modules())


def test_stochastic_depth_linear_in_block_index_and_settable():
    model = meta_model("efficientnetv2_s")
    paths = [m for m in model.modules() if isinstance(m, DropPath)]
    assert len(paths) == 40
    assert [p.p for p in paths] == pytest.approx([0.2 * i / 40 for i in range(40)])
    model.set_drop_path_rate(0.5)
    assert paths[-1].p == pytest.approx(0.5 * 39 / 40) and paths[0].p == 0
    model.set_dropout(0.35)
    assert model.classifier[0].p == 0.35 and model.dropout == 0.35
    with pytest.raises(ValueError):
        model.set_dropout(1.5)


def test_variant_defaults():
    assert [meta_model(n).classifier[0].p for n in ("efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l")] == [
        0.2,
        0.3,
        0.4,
    ]
    model = meta_model("efficientnetv2_s", dropout=0.1, drop_path_rate=0.0)
    assert model.classifier[0].p == 0.1
    assert all(m.p == 0 for m in model.modules() if isinstance(m, DropPath))


def test_training_step_with_drop_path_backpropagates():
    torch.manual_seed(0)
    model = build_model("efficientnetv2_s", 10, depth_mult=0.1, drop_path_rate=0.5, small_input=True)
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 10)
    assert model.stem.conv.weight.grad is not None and model.stem.conv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- scaling and fusing


def test_make_divisible_10_percent_rule():
    assert [make_divisible(v) for v in (16, 26.4, 35.2, 10, 44.8)] == [16, 24, 32, 16, 48]


def test_depth_multiplier_is_one_argument():
    counts = lambda m: [len(s) for s in m.stages]  # noqa: E731
    assert counts(meta_model("efficientnetv2_s", depth_mult=0.1)) == [1, 1, 1, 1, 1, 2]  # ceil(1.5)
    assert counts(meta_model("efficientnetv2_s", depth_mult=0.5)) == [1, 2, 2, 3, 5, 8]
    assert [r.layers for r in scale_table(EFFICIENTNETV2_S, 1.0, 0.5)] == [1, 2, 2, 3, 5, 8]


def test_compound_scaling_b4_table():
    model = meta_model("efficientnet_b4")
    assert [len(s) for s in model.stages] == [math.ceil(n * 1.8) for n in (1, 2, 2, 3, 3, 4, 1)]
    assert model.stem.conv.out_channels == 48 and model.head.conv.out_channels == 1792
    assert [s[0].out_ch for s in model.stages] == [24, 32, 56, 112, 160, 272, 448]


def test_fused_stage_edits():
    kinds = lambda t: "".join("F" if r.block == "fused" else "M" for r in t)  # noqa: E731
    assert kinds(with_fused_stages(EFFICIENTNETV2_S, "none")) == "MMMMMM"
    assert kinds(with_fused_stages(EFFICIENTNETV2_S, "1-5")) == "FFFFFM"
    assert kinds(with_fused_stages(EFFICIENTNETV2_S, "1-7")) == "FFFFFF"  # 6-stage table: all
    assert with_fused_stages(EFFICIENTNETV2_S, "1-3") == EFFICIENTNETV2_S
    assert with_fused_stages(EFFICIENTNETV2_S, "none")[0].se == 0.25
    model = meta_model("efficientnet_b0", fused_stages=[1, 2])
    assert [s[0].kind for s in model.stages] == ["fused"] * 2 + ["mb"] * 5


def test_table_3_fused_b4_params():
    # Paper Table 3 (EfficientNet-B4): 19.3M none, 43.4M fused 1-5, 132.0M fused 1-7.
    params = {f: count_parameters(meta_model("efficientnet_b4", fused_stages=f)) / 1e6 for f in ("none", "1-5", "1-7")}
    assert params == pytest.approx({"none": 19.3, "1-5": 43.4, "1-7": 132.0}, abs=0.2)


# --------------------------------------------------------------------------- small inputs and channels


def test_small_input_stem_runs_on_28px_grayscale():
    model = build_model("efficientnetv2_s", 10, in_channels=1, small_input=True, depth_mult=0.1)
    assert model.stem.conv.stride == (1, 1) and model.min_input_size == 17
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert meta_model("efficientnetv2_s").min_input_size == 33  # torchvision's declared minimum


def test_resnets_small_stem_and_uniform_interface():
    model = build_model("resnet50", 10, in_channels=1, small_input=True, dropout=0.1)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    model.set_dropout(0.3)
    model.set_drop_path_rate(0.2)  # accepted; ResNets have no stochastic depth
    assert model.fc[0].p == 0.3 and model.drop_path_rate == 0.2 and model.min_input_size == 9


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="efficientnetv2_xl"), "known: efficientnetv2_s"),
        (dict(name="efficientnetv2_s", width_mult=0), "width_mult must be > 0"),
        (dict(name="efficientnetv2_s", depth_mult=-1), "depth_mult must be > 0"),
        (dict(name="efficientnetv2_s", fused_stages=[0, 1]), r"out of range 1\.\.6"),
        (dict(name="efficientnetv2_s", fused_stages=[7]), r"out of range 1\.\.6"),
        (dict(name="efficientnetv2_s", fused_stages="2-4"), "unknown fused-stage setting"),
        (dict(name="efficientnetv2_s", dropout_rate=0.1), "unknown overrides"),
        (dict(name="resnet50", width_mult=2.0), "unknown overrides"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_model(num_classes=10, **kwargs)
    assert "\n" not in str(info.value)


def test_too_small_input_is_rejected_before_compute():
    model = meta_model("efficientnetv2_s", 10)
    with pytest.raises(ValueError, match="minimum 33"):
        model(torch.empty(2, 3, 28, 28, device="meta"))
    with pytest.raises(ValueError, match="minimum 33"):
        check_input_size(model, 28)
    check_input_size(model, 33)
    with pytest.raises(ValueError, match="minimum 17"):
        count_flops(meta_model("efficientnetv2_s", 10, small_input=True), 16)


def test_all_names_build():
    for name in MODEL_NAMES:
        model = meta_model(name, 10)
        assert hasattr(model, "set_dropout") and hasattr(model, "set_drop_path_rate")
        assert isinstance(model.min_input_size, int)


@pytest.mark.parametrize(
    "shape, stride",
    [
        ((4, 12, 2, 2), 1),
        ((4, 12, 1, 1), 1),
        ((4, 12, 2, 3), 1),
        ((4, 12, 3, 3), 2),
        ((4, 12, 2, 2), 2),
        ((4, 12, 5, 5), 1),
    ],
)
def test_depthwise_weight_gradient_on_small_maps_equals_pytorchs(shape, stride):
    """DepthwiseConv2d sums the weight gradient tap by tap where oneDNN is slow (map smaller than
    the kernel); output and both gradients must equal nn.Conv2d's, channels_last and bf16 included."""
    from lib.models.blocks import DepthwiseConv2d

    torch.manual_seed(0)
    ours = DepthwiseConv2d(12, 12, 3, stride, 1, groups=12, bias=False)
    reference = torch.nn.Conv2d(12, 12, 3, stride, 1, groups=12, bias=False)
    reference.load_state_dict(ours.state_dict())
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
        y, y_ref = ours(x), reference(x)
        grad = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, ours.weight), grad)
        gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, reference.weight), grad)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(torch.randn(shape).requires_grad_())
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and ours.weight.grad.dtype == torch.float32


def test_depthwise_convs_are_the_small_map_kind_and_weights_still_load():
    from lib.models.blocks import DepthwiseConv2d

    model = build_model("efficientnetv2_s", 10, width_mult=0.25, depth_mult=0.1)
    depthwise = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert all(type(m) is torch.nn.Conv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1)
