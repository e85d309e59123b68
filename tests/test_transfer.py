"""Transfer learning without internet: torchvision's weight files are stood in for by torchvision
models with random weights, saved and loaded through the same path the real files take."""

import json
import time
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from formats import make_cifar10
from lib.models import build_model
from lib.notebook import transfer_targets
from lib.profiles import config_for, study
from lib.train import train
from lib.transfer import (
    WeightsUnavailable,
    batchnorm_drift,
    batchnorm_state,
    build_pretrained,
    freeze_backbone,
    load_pretrained,
    parse_trainable,
    pretrained_state_dict,
    pretrained_transforms,
    weights_enum,
    weights_path,
)

TORCHVISION = {
    "efficientnetv2_s": torchvision.models.efficientnet_v2_s,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
}
TINY = {"width_mult": 0.25, "depth_mult": 0.1, "small_input": True}


def random_torchvision(name):
    """torchvision's network with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = TORCHVISION[name](weights=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=["efficientnet_b0", "efficientnetv2_s"])
def saved_weights(request, tmp_path_factory):
    name = request.param
    reference = random_torchvision(name)
    path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    return name, reference, path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub folder, and a network that fails at once."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints", calls


# ---------------------------------------------------------------- loading


def test_loaded_weights_reproduce_torchvision_outputs(saved_weights):
    name, reference, path = saved_weights
    ours = build_pretrained(name, 1000, path).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def test_new_head_has_num_classes_and_backbone_is_unchanged(saved_weights):
    name, reference, path = saved_weights
    model = build_pretrained(name, 10, torch.load(path, weights_only=True))
    assert model.classifier[-1].out_features == 10
    ours, theirs = list(model.state_dict().values()), list(reference.state_dict().values())
    assert len(ours) == len(theirs)
    for a, b in zip(ours[:-2], theirs[:-2]):
        assert torch.equal(a, b)
    assert ours[-2].shape == (10, 1280)


# ---------------------------------------------------------------- freezing


def tiny(num_classes=10):
    torch.manual_seed(0)
    return build_model("efficientnetv2_s", num_classes, **TINY)


def test_freeze_head_trains_only_the_classifier_and_keeps_batchnorm_frozen():
    model = tiny()
    counts = freeze_backbone(model, "head")
    linear = model.classifier[-1]
    assert counts["trainable"] == linear.weight.numel() + linear.bias.numel()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["frozen_bn"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = batchnorm_state(model)
    tracked = model.stem.bn.num_batches_tracked.clone()
    x = torch.rand(8, 3, 32, 32) * 4 + 2  # far from the stored statistics
    model(x).sum().backward()
    assert batchnorm_drift(before, model) == 0.0
    assert torch.equal(model.stem.bn.num_batches_tracked, tracked)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier"))
    assert linear.weight.grad is not None
    with torch.no_grad():  # features: train mode == eval mode
        train_features = model.forward_features(x)
        model.eval()
        torch.testing.assert_close(model.forward_features(x), train_features, rtol=0, atol=0)
    assert model.state_dict().keys() == tiny().state_dict().keys()


def test_naive_freeze_drifts_and_all_undoes_the_freeze():
    model = tiny()
    freeze_backbone(model, "head", bn_eval=False)  # gradients off only: BN keeps learning stats
    model.train()
    before = batchnorm_state(model)
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32) * 4 + 2)
    assert batchnorm_drift(before, model) > 0
    counts = freeze_backbone(model, "head")
    assert counts["frozen_bn"] > 0
    counts = freeze_backbone(model, "all")
    assert counts["trainable"] == counts["total"] and counts["frozen_bn"] == 0
    model.train()
    assert all(type(m) is nn.BatchNorm2d and m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_last_stages_counts():
    model = tiny()
    counts = freeze_backbone(model, "last_stages:2")
    expected = sum(p.numel() for part in (*model.stages[-2:], model.head, model.classifier) for p in part.parameters())
    assert counts["trainable"] == expected < counts["total"]
    assert not model.stages[0][0].drop_path.training and model.stages[-1][0].drop_path.training


@pytest.mark.parametrize("bad", ["backbone", "last_stages:x", "last_stages:-1"])
def test_bad_trainable_is_one_line(bad):
    with pytest.raises(ValueError, match="unknown trainable") as e:
        parse_trainable(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="only 6 stages"):
        freeze_backbone(tiny(), "last_stages:7")


# ---------------------------------------------------------------- weights files, offline


def test_offline_failure_is_one_quick_line(offline_hub):
    folder, calls = offline_hub
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as e:
        pretrained_state_dict("efficientnetv2_s", progress=False)
    assert time.perf_counter() - started < 5
    message = str(e.value)
    assert "\n" not in message and len(message) < 600
    assert "efficientnet_v2_s-dd5fe13b.pth" in message and str(folder) in message
    assert "URLError" in message and "https://download.pytorch.org/models/" in message
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert calls == ["https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth"]
    with pytest.raises(WeightsUnavailable, match="downloads are off"):
        pretrained_state_dict("efficientnetv2_s", download=False)
    assert len(calls) == 1


def test_file_in_hub_cache_is_used_without_download(offline_hub):
    folder, calls = offline_hub
    path = weights_path("efficientnet_b0")
    assert path == folder / "efficientnet_b0_rwightman-7f5810bc.pth"
    assert path.name == weights_enum("efficientnet_b0").url.rsplit("/", 1)[-1]
    reference = random_torchvision("efficientnet_b0")
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    state = pretrained_state_dict("efficientnet_b0")
    assert calls == []
    model = build_pretrained("efficientnet_b0", 1000, state).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="cannot be loaded.*delete it"):
        pretrained_state_dict("efficientnet_b0")


def test_unknown_model_is_one_line():
    with pytest.raises(ValueError, match="no pretrained weights known"):
        pretrained_state_dict("efficientnetv2_xl")


# ---------------------------------------------------------------- preprocessing


def test_pretrained_transforms_of_v2_s():
    t = pretrained_transforms("efficientnetv2_s")
    assert (t.resize_size, t.crop_size, t.interpolation) == (384, 384, "bilinear")
    assert t.mean == pytest.approx((0.485, 0.456, 0.406)) and t.std == pytest.approx((0.229, 0.224, 0.225))
    assert pretrained_transforms("efficientnet_b0").values()["interpolation"] == "bicubic"
    # same as torchvision's own transform (which rounds to uint8 after resizing: half a grey level)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    reference = torch.stack([weights_enum("efficientnetv2_s").transforms()(im) for im in images])
    torch.testing.assert_close(t(images), reference, rtol=0, atol=0.01)


def test_grey_images_are_repeated_to_three_channels():
    t = pretrained_transforms("efficientnetv2_s")
    out = t(torch.full((2, 1, 28, 28), 200, dtype=torch.uint8), size=64)
    assert out.shape == (2, 3, 64, 64)
    expected = (200 / 255 - torch.tensor(t.mean)) / torch.tensor(t.std)
    torch.testing.assert_close(out[0, :, 10, 10], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- fine-tuning: a setting of the one trainer


@pytest.fixture
def cached_b0(offline_hub):
    """torchvision's B0 file stood in for by random weights, where torchvision looks for it."""
    folder, calls = offline_hub
    folder.mkdir(parents=True)
    reference = random_torchvision("efficientnet_b0")
    torch.save(reference.state_dict(), weights_path("efficientnet_b0"))
    return reference, calls


@pytest.fixture
def cifar_root(tmp_path):
    """CIFAR-10 in the real pickle format, 20 random images per batch (mechanics only)."""
    make_cifar10(tmp_path / "data", per_batch=20)
    return tmp_path / "data"


def fine_tune_config(root, trainable, **overrides):
    return config_for(
        "smoke",
        "cifar10",
        "transfer",
        data_root=str(root),
        trainable=trainable,
        epochs=2,
        batch_size=16,
        limit=None,
        val_fraction=0.2,
        **overrides,
    )


def test_fine_tuning_the_head_keeps_the_backbone_and_writes_metrics(cached_b0, cifar_root, tmp_path):
    reference, calls = cached_b0
    metrics = train(fine_tune_config(cifar_root, "head"), tmp_path / "head", progress=False, log=lambda *a: None)
    assert calls == [] and metrics["model"] == "efficientnet_b0" and metrics["epochs"] == 2
    assert metrics["pretrained"] == "EfficientNet_B0_Weights.IMAGENET1K_V1"
    assert metrics["trainable_params"] == 10 * 1280 + 10 and metrics["steps"] == 2 * (80 // 16)
    tuned = torch.load(tmp_path / "head" / "model.pt", weights_only=True)
    theirs = list(reference.state_dict().values())
    for (key, value), original in zip(list(tuned.items())[:-2], theirs[:-2]):  # BN statistics included
        assert torch.equal(value, original), key
    assert not torch.equal(tuned["classifier.1.weight"], build_model("efficientnet_b0", 10).classifier[1].weight)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["notes"]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # the weights' own
    assert config["notes"]["frozen"]["frozen_bn"] > 0


def test_fine_tuning_everything_updates_the_backbone(cached_b0, cifar_root, tmp_path):
    reference, _ = cached_b0
    metrics = train(
        fine_tune_config(cifar_root, "all", max_steps=2), tmp_path / "all", progress=False, log=lambda *a: None
    )
    assert metrics["trainable_params"] == metrics["num_params"] and metrics["steps"] == 2
    tuned = torch.load(tmp_path / "all" / "model.pt", weights_only=True)
    assert not torch.equal(tuned["stem.conv.weight"], reference.features[0][0].weight)


def test_pretrained_from_a_run_of_ours(tiny_model_run, tmp_path):
    folder, model = tiny_model_run
    fresh = build_model("efficientnetv2_s", 4, **TINY)
    assert load_pretrained(fresh, str(folder)) == str(folder / "model.pt")
    ours = model.state_dict()
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], ours[k]) for k in ours if not k.startswith("classifier"))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_pretrained(build_model("efficientnetv2_s", 4, width_mult=0.5, depth_mult=0.1), str(folder))
    with pytest.raises(ValueError, match="neither a torchvision weights name"):
        load_pretrained(fresh, str(tmp_path / "nowhere"))


@pytest.fixture
def tiny_model_run(tmp_path):
    folder = tmp_path / "ours"
    folder.mkdir()
    model = tiny(10)
    torch.save(model.state_dict(), folder / "model.pt")
    return folder, model


def test_transfer_budgets_live_in_the_profile_table():
    plan = study("paper", "transfer")
    assert plan["train"]["model"] == "efficientnetv2_s" and set(plan["modes"]) == {"head", "all"}
    config = config_for("quick", "cifar100", "transfer", **plan["modes"]["head"])
    assert config.pretrained == "DEFAULT" and config.model == "efficientnet_b0" and config.optimizer == "adamw"
    assert config.schedule["size"] == [128, 128] and config.model_overrides == {}
    with pytest.raises(ValueError, match="unknown study"):
        study("quick", "distillation")
    with pytest.raises(ValueError, match="unknown profile"):
        study("fast", "transfer")


def test_transfer_targets():
    assert transfer_targets("fashion_mnist", ["cifar100", "cifar10"]) == ["cifar100", "cifar10"]
    assert transfer_targets("cifar10", ["CIFAR-100", "cifar10"]) == ["cifar10", "cifar100"]
    assert transfer_targets("cifar100", "cifar10") == ["cifar10"]
    with pytest.raises(ValueError, match=r"unknown transfer dataset\(s\) \['imagenet'\]"):
        transfer_targets("cifar100", ["cifar10", "imagenet"])
    with pytest.raises(ValueError, match="empty"):
        transfer_targets("cifar100", [])
