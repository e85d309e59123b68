"""A change of image size in progressive learning: its readings, BatchNorm re-estimation, the EMA restart.

Random pixels in the real on-disk format: mechanics only, no accuracy is claimed.
"""

import json

import pytest
import torch
from torch import nn

import lib.data as data
import lib.train as train_module
from formats import make_fashion_mnist
from lib.models import build_model
from lib.profiles import config_for
from lib.train import recalibrate_batchnorm, recalibration_images, train

TWO_SIZES = {"num_stages": 2, "size": [20, 28], "dropout": [0.1, 0.2], "drop_path": [0, 0.1]}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    make_fashion_mnist(tmp_path / "data", n_train=300, n_test=50)
    return tmp_path / "data"


def config(root, **overrides):
    settings = dict(data_root=str(root), limit=None, epochs=4, batch_size=32, schedule=TWO_SIZES, ema_decay=0.9)
    settings.update(overrides)
    return config_for("smoke", "fashion_mnist", **settings)


def quiet(*args, **kwargs):
    pass


def test_recalibrated_statistics_are_those_of_the_images_at_the_new_size():
    torch.manual_seed(0)
    model = build_model("efficientnetv2_s", 10, 1, width_mult=0.25, depth_mult=0.1, small_input=True)
    model.set_drop_path_rate(0.3)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    transform = lambda x: nn.functional.interpolate(x.float() / 255, size=20)  # noqa: E731
    recalibrate_batchnorm(model, images, transform, batch_size=16)
    with torch.no_grad():
        features = model.stem.conv(transform(images))
    assert torch.allclose(model.stem.bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.stem.bn.running_var, features.var((0, 2, 3)), rtol=0.1)  # mean of batch variances
    assert model.drop_path_rate == 0.3 and model.training  # put back as they were


def test_recalibration_images_depend_on_seed_and_epoch_only():
    images = torch.arange(100).view(100, 1, 1, 1)
    a, b = recalibration_images(images, 10, 0, 3), recalibration_images(images, 10, 0, 3)
    assert torch.equal(a, b) and len(a.unique()) == 10
    assert not torch.equal(a, recalibration_images(images, 10, 0, 4))
    assert not torch.equal(a, recalibration_images(images, 10, 1, 3))


def test_a_size_change_is_read_before_and_after_recalibration(root, tmp_path):
    train(config(root, bn_recalibration=64), tmp_path / "run", progress=False, log=quiet)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["image_size"] for h in history] == [20, 20, 28, 28]
    switched = history[2]
    assert {"switch_val_accuracy", "switch_val_accuracy_recalibrated", "recalibration_seconds"} <= set(switched)
    assert 0 <= switched["switch_val_accuracy"] <= 1 and switched["recalibration_seconds"] > 0
    assert not any(k.startswith("switch_") for h in (history[0], history[1], history[3]) for k in h)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "switch_val_accuracy_recalibrated" in header  # a column that only one row has


def test_recalibration_leaves_training_unchanged_and_only_the_statistics_move(root, tmp_path):
    """BatchNorm normalizes with batch statistics while training, so re-estimating the running
    statistics changes what evaluation reads and nothing that training computes."""
    train(config(root, ema_decay=0.0), tmp_path / "plain", progress=False, log=quiet)
    train(config(root, ema_decay=0.0, bn_recalibration=64), tmp_path / "recal", progress=False, log=quiet)
    plain, recal = (torch.load(tmp_path / name / "model.pt") for name in ("plain", "recal"))
    weights = [k for k in plain if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(plain[k], recal[k]) for k in weights)
    assert any(not torch.equal(plain[k], recal[k]) for k in plain if k.endswith("running_mean"))


def test_resume_at_the_size_change_is_bit_exact_with_recalibration_and_ema_restart(root, tmp_path, monkeypatch):
    settings = dict(bn_recalibration=64, ema_restart=True)
    train(config(root, **settings), tmp_path / "ref", progress=False, log=quiet)
    end_epoch = train_module.end_epoch

    def stop_after_epoch_two(t, folder, stage, epoch, row, log):
        end_epoch(t, folder, stage, epoch, row, log)
        if epoch == 1:
            raise KeyboardInterrupt  # the checkpoint of epoch 2 is written

    monkeypatch.setattr(train_module, "end_epoch", stop_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config(root, **settings), tmp_path / "stopped", progress=False, log=quiet)
    monkeypatch.setattr(train_module, "end_epoch", end_epoch)
    train(config(root, **settings), tmp_path / "stopped", resume=True, progress=False, log=quiet)
    ref, got = (torch.load(tmp_path / name / "model.pt") for name in ("ref", "stopped"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    history = json.loads((tmp_path / "stopped" / "history.json").read_text())
    assert "switch_val_accuracy_recalibrated" in history[2]  # the resumed process re-read the change


def test_ema_restart_makes_the_average_forget_the_old_size(root, tmp_path):
    """With decay 0.99 the average after the change still holds most of the 20 px weights; restarted, it
    follows the 28 px weights from their first step."""
    for name, restart in (("kept", False), ("restarted", True)):
        train(
            config(root, ema_decay=0.99, ema_restart=restart, epochs=3, schedule={"num_stages": 2, "size": [20, 28]}),
            tmp_path / name,
            progress=False,
            log=quiet,
        )
    kept, restarted = (torch.load(tmp_path / n / "model.pt") for n in ("kept", "restarted"))
    assert any(not torch.equal(kept[k], restarted[k]) for k in kept)


def test_bn_recalibration_refuses_frozen_layers(root, tmp_path):
    with pytest.raises(ValueError, match="frozen layers keep their pretrained statistics"):
        train(config(root, bn_recalibration=64, trainable="head"), tmp_path / "run", progress=False, log=quiet)
