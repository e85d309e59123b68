"""The trainer's promises: exact resume after a kill, DDP = one process, no clobbering, clear errors."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import lib.data as data
import lib.train as train_module
from formats import make_fashion_mnist
from lib.profiles import config_for
from lib.train import Diverged, TrainingError, main, run_or_reuse, train

TINY = {"width_mult": 0.25, "depth_mult": 0.1, "small_input": True}
SCHEDULE = "{num_stages: 2, size: [20, 28], randaug_magnitude: [5, 9], mixup_alpha: [0, 0.2], dropout: [0.1, 0.2], drop_path: [0, 0.1], weight_decay: [0, 1.0e-4]}"


@pytest.fixture
def tiny_root(tmp_path, monkeypatch):
    """300 random 28x28 images in the real idx format (mechanics only: no accuracy is claimed)."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    make_fashion_mnist(tmp_path / "data", n_train=300, n_test=50)
    return tmp_path / "data"


def cli_args(root, out, epochs=3, *extra):
    return [
        "--dataset",
        "fashion_mnist",
        "--profile",
        "smoke",
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--set",
        f"data_root={root}",
        "--set",
        "limit=null",
        "--set",
        f"schedule={SCHEDULE}",
        *extra,
    ]


def run_cli(args, **kwargs):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lib.train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def weights(path):
    return torch.load(path, map_location="cpu")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(data root, run folder) of one uninterrupted 4-epoch run: what every stopped and resumed run must equal."""
    base = tmp_path_factory.mktemp("uninterrupted")
    make_fashion_mnist(base / "data", n_train=300, n_test=50)
    reference = run_cli(cli_args(base / "data", base / "ref", 4))
    assert reference.wait(120) == 0, reference.stdout.read()
    return base / "data", base / "ref"


def test_kill_at_a_random_step_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    tiny_root, ref_dir = uninterrupted
    victim = run_cli(cli_args(tiny_root, tmp_path / "killed", 4))
    first = tmp_path / "killed" / "checkpoints" / "epoch_0001.pt"
    while not first.exists() and victim.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 0.6))  # somewhere in epochs 2-4
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run finished before it was killed"

    resumed = run_cli(cli_args(tiny_root, tmp_path / "killed", 4, "--resume"))
    log = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, log
    assert "resumed from" in log
    ref, got = weights(ref_dir / "model.pt"), weights(tmp_path / "killed" / "model.pt")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ from the uninterrupted run"
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and [h["image_size"] for h in history] == [20, 20, 28, 28]
    elapsed = [h["elapsed_seconds"] for h in history]
    assert elapsed == sorted(elapsed), f"the clock restarted on resume: {elapsed}"  # it goes on from the checkpoint's
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed_at_epoch"] in (2, 3, 4) and metrics["wall_seconds"] > elapsed[-1]
    assert json.loads((ref_dir / "metrics.json").read_text())["resumed_at_epoch"] is None


# The command line in a child whose optimizer step `at` waits, once done, until the stop request has
# arrived: the signal is real and lands at a known step, whatever the machine's speed.
PAUSE_AT_STEP = """
import signal, sys, time
from pathlib import Path
import lib.train as train
marker, at = Path(sys.argv[1]), int(sys.argv[2])
step = train.optimizer_step

def paused(t, x, targets):
    out = step(t, x, targets)
    if t.steps == at:
        marker.write_text(str(t.steps))
        stop = signal.getsignal(signal.SIGTERM).__self__        # the run's lib.stopping.Stop
        while stop.signum is None:
            time.sleep(0.01)
    return out
train.optimizer_step = paused
sys.exit(train.main(sys.argv[3:]))
"""

TIMES = {"epoch_seconds", "train_images_per_second", "elapsed_seconds"}


def test_sigterm_inside_an_epoch_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    tiny_root, ref_dir = uninterrupted
    out, marker = tmp_path / "stopped", tmp_path / "step"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    victim = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AT_STEP, str(marker), "19", *cli_args(tiny_root, out, 4)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not marker.exists() and victim.poll() is None:
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)  # after step 19: epoch 3 (8 steps per epoch), batch 3
    log, err = victim.communicate(timeout=60)
    assert victim.returncode == 143, log + err
    checkpoint = out / "checkpoints" / "epoch_0002_step_000003.pt"
    assert (
        err.startswith(
            f"stopped by SIGTERM after step 19 (epoch 3, batch 3 of 8); checkpoint {checkpoint}; "
            f"resume with: python -m lib.train "
        )
        and err.endswith(" --resume\n")
        and err.count("\n") == 1
    ), err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [
        "epoch_0002.pt",
        checkpoint.name,
    ]  # the epoch's stays
    state = torch.load(checkpoint, weights_only=False)
    assert (state["steps"], state["epoch"], state["position"]["batches"]) == (19, 2, 3)

    resumed = run_cli(cli_args(tiny_root, out, 4, "--resume"))
    log = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, log
    assert f"resumed from {checkpoint} at epoch 3, batch 4 of 8 (stage 1)" in log, log
    for name in ("model.pt", "checkpoints/epoch_0004.pt"):  # the EMA weights, then the raw ones
        ref, got = weights(ref_dir / name), weights(out / name)
        ref, got = (ref["model"], got["model"]) if "model" in ref else (ref, got)
        assert ref.keys() == got.keys()
        diff = max((ref[k].double() - got[k].double()).abs().max().item() for k in ref)
        print(
            f"SIGTERM after step {state['steps']}, resumed: {name} max abs difference {diff} from the uninterrupted run"
        )
        assert diff == 0 and all(torch.equal(ref[k], got[k]) for k in ref), f"{name} differs by up to {diff}"
    rows = [json.loads((d / "history.json").read_text()) for d in (ref_dir, out)]
    assert [{k: v for k, v in row.items() if k not in TIMES} for row in rows[1]] == [
        {k: v for k, v in row.items() if k not in TIMES} for row in rows[0]
    ]  # epoch 3's row: the whole epoch
    elapsed = [h["elapsed_seconds"] for h in rows[1]]
    assert elapsed == sorted(elapsed) and all(h["train_images_per_second"] > 0 for h in rows[1])
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["epoch_0004.pt"]  # keep_checkpoints=1 in smoke


def test_torchrun_two_processes_with_syncbn_equals_one_process(tiny_root, tmp_path):
    common = [
        "--optimizer",
        "sgd",
        "--set",
        "max_steps=1",
        "--set",
        "randaug_ops=0",
        "--set",
        "crop_padding=0",
        "--set",
        "flip=false",
        "--set",
        "label_smoothing=0.1",
        "--set",
        "sync_bn=true",
        "--set",
        "schedule={num_stages: 1, size: [28, 28]}",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lib.train",
            *cli_args(tiny_root, tmp_path / "ddp", 1, *common),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert ddp.stdout.count("test accuracy") == 1, ddp.stdout  # rank 0 alone reports and writes
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["world_size"] == 2
    single = run_cli(cli_args(tiny_root, tmp_path / "one", 1, *common))
    assert single.wait(120) == 0, single.stdout.read()
    a, b = weights(tmp_path / "ddp" / "model.pt"), weights(tmp_path / "one" / "model.pt")
    start = train_module.build_model("efficientnetv2_s", 10, 1, **TINY).state_dict()
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], start[k])]
    assert len(moved) > 10  # the step changed the weights
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=2e-6, rtol=1e-4), k


def test_torchrun_a_signal_to_one_process_stops_both_after_the_same_step(tiny_root, tmp_path):
    """Only rank 1 is sent SIGTERM (after step 11); rank 0 learns of it at the step boundary, and the
    checkpoint it writes holds both processes' positions at that one step."""
    child = (
        "import os, signal, sys\nimport lib.train as train\nstep = train.optimizer_step\n"
        "def signalled(t, x, targets):\n    out = step(t, x, targets)\n"
        "    if t.steps == 11 and os.environ['RANK'] == '1':\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return out\ntrain.optimizer_step = signalled\nsys.exit(train.main(sys.argv[1:]))\n"
    )
    (tmp_path / "child.py").write_text(child)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "child.py"),
            *cli_args(tiny_root, tmp_path / "ddp", 2),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.stderr.count("exitcode  : 143") == 2, ddp.stdout + ddp.stderr  # both processes stopped
    assert "stopped by SIGTERM after step 11 (epoch 2, batch 3 of 8)" in ddp.stderr, ddp.stderr
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == [
        "epoch_0001.pt",
        "epoch_0001_step_000003.pt",
    ]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "epoch_0001_step_000003.pt", weights_only=False)
    ranks = state["position"]["ranks"]
    assert state["steps"] == 11 and state["position"]["world_size"] == 2 and [r["seen"] for r in ranks] == [48, 48]
    assert not torch.equal(ranks[0]["generator"], ranks[1]["generator"])  # each process's own draws


def small_config(root, **overrides):
    settings = dict(data_root=str(root), limit=None, epochs=2, batch_size=32)
    settings.update(overrides)
    return config_for("smoke", "fashion_mnist", **settings)


def test_outputs_and_no_clobbering(tiny_root, tmp_path):
    out = tmp_path / "run"
    metrics = train(small_config(tiny_root), out, progress=False, log=lambda *a: None)
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["wall_seconds"] > 0
    for name in ("config.json", "metrics.json", "metrics.csv", "history.json", "model.pt"):
        assert (out / name).exists(), name
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "train_loss",
        "val_accuracy",
        "lr",
        "image_size",
        "randaug_magnitude",
        "mixup_alpha",
        "dropout",
        "drop_path",
        "weight_decay",
        "epoch_seconds",
        "train_images_per_second",
    ):
        assert column in header, column
    assert len(list((out / "checkpoints").glob("*.pt"))) == 1  # keep_checkpoints=1 in smoke
    assert not (out / ".lock").exists()  # a finished run takes its lock file away
    with pytest.raises(TrainingError, match="finished run"):
        train(small_config(tiny_root), out, progress=False, log=lambda *a: None)
    train(small_config(tiny_root), out, overwrite=True, progress=False, log=lambda *a: None)


@pytest.mark.parametrize("value, bars", [("1", False), ("0", True)])  # make test, make reproduce
def test_tqdm_disable_switches_the_progress_bars(tiny_root, tmp_path, capsys, monkeypatch, value, bars):
    monkeypatch.setenv("TQDM_DISABLE", value)
    train(small_config(tiny_root), tmp_path / "run", progress=True, log=lambda *a: None)
    assert ("epoch 1/2" in capsys.readouterr().err) is bars


def test_resume_into_another_model_is_refused(tiny_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Diverged):
        _diverge_in_epoch_2(tiny_root, out)
    with pytest.raises(TrainingError, match="unfinished run"):
        train(small_config(tiny_root), out, progress=False, log=lambda *a: None)
    other = small_config(tiny_root, model_overrides={**TINY, "width_mult": 0.5})
    with pytest.raises(TrainingError, match="holds a checkpoint of"):
        train(other, out, resume=True, progress=False, log=lambda *a: None)


def _diverge_in_epoch_2(root, out, monkeypatch=None):
    calls = {"n": 0}
    original = train_module.soft_cross_entropy

    def poisoned(logits, targets, smoothing):
        calls["n"] += 1
        loss = original(logits, targets, smoothing)
        return loss * float("nan") if calls["n"] > 9 else loss  # 9 steps per epoch here

    train_module.soft_cross_entropy = poisoned
    try:
        train(small_config(root), out, progress=False, log=lambda *a: None)
    finally:
        train_module.soft_cross_entropy = original


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Diverged, match="epoch_0001.pt"):
        _diverge_in_epoch_2(tiny_root, out)
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["epoch_0001.pt"]
    assert not (out / "metrics.json").exists()
    state = torch.load(out / "checkpoints" / "epoch_0001.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "huge"], "unknown profile 'huge'"),
        (["--optimizer", "lamb"], "unknown optimizer 'lamb'"),
        (["--scheduler", "step"], "unknown scheduler 'step'"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--epochs", "7", "--set", "schedule={coursework: fashion_mnist}"], "covers 100 epochs but the run has 7"),
        (["--set", "model_overrides={width_mult: 0.25, depth_mult: 0.1}"], "below efficientnetv2_s's minimum"),
        (["--model", "efficientnetv2_xl"], "unknown model 'efficientnetv2_xl'"),
        (["--set", "colour=red"], "unknown setting"),
        (["--seed", "-1"], "seed must be >= 0"),
        (["--seed", "one"], "seed must be an integer"),
    ],
)
def test_cli_bad_input_is_one_line(tiny_root, tmp_path, capsys, args, message):
    base = [
        "--dataset",
        "fashion_mnist",
        "--profile",
        "smoke",
        "--out",
        str(tmp_path / "x"),
        "--set",
        f"data_root={tiny_root}",
    ]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_auto_device_says_when_it_falls_back_to_the_cpu(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    messages = []
    train(small_config(tiny_root, max_steps=1), tmp_path / "run", progress=False, log=messages.append)
    assert "test images, cpu (--device auto: torch sees no CUDA device), 1 process(es)" in messages[0], messages[0]


def test_bn_momentum_is_a_model_setting_next_to_bn_eps(tiny_root, tmp_path):
    config = small_config(tiny_root, model_overrides={**TINY, "bn_momentum": 0.1}, max_steps=1)
    train(config, tmp_path / "run", progress=False, log=lambda *a: None)
    state = torch.load(tmp_path / "run" / "checkpoints" / "epoch_0001.pt", weights_only=False)
    assert state["config"]["model_overrides"]["bn_momentum"] == 0.1
    model = train_module.build_model("efficientnetv2_s", 10, 1, **state["config"]["model_overrides"])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    with pytest.raises(ValueError, match="bn_momentum"):
        train_module.build_model("efficientnetv2_s", 10, 1, bn_momentum=1.5)


def test_run_or_reuse_keys_folders_by_settings_and_reuses_finished_runs(tiny_root, tmp_path):
    parent = tmp_path / "runs"
    first = run_or_reuse(small_config(tiny_root), parent, progress=False, log=lambda *a: None)
    folder = tmp_path / "runs" / first["run_dir"].rsplit("/", 1)[-1]
    assert folder.name.startswith("seed0-") and (folder / "metrics.json").exists()
    saved = json.loads((folder / "config.json").read_text())
    del saved["identity"]["warmup_epochs"]  # as written before the setting existed
    (folder / "config.json").write_text(json.dumps(saved))
    messages = []
    again = run_or_reuse(small_config(tiny_root), parent, progress=False, log=messages.append)
    assert again["wall_seconds"] == first["wall_seconds"] and "reusing" in messages[0]
    other_seed = run_or_reuse(small_config(tiny_root, seed=1), parent, progress=False, log=lambda *a: None)
    changed = run_or_reuse(small_config(tiny_root, lr=5e-4), parent, progress=False, log=lambda *a: None)
    folders = {first["run_dir"], other_seed["run_dir"], changed["run_dir"]}
    assert len(folders) == 3 and all(f.rsplit("/", 1)[-1].startswith(("seed0-", "seed1-")) for f in folders)
    assert json.loads((folder / "metrics.json").read_text())["wall_seconds"] == first["wall_seconds"]  # untouched


def test_a_setting_added_later_keeps_the_earlier_runs_folder_names():
    from lib.runs import ADDED_SETTINGS, settings_key
    from lib.profiles import config_for

    identity = config_for("quick", "fashion_mnist").identity()
    before = {k: v for k, v in identity.items() if k not in ADDED_SETTINGS}  # as written before they existed
    assert settings_key(identity) == settings_key(before)
    assert settings_key({**identity, "random_erasing": 0.5}) != settings_key(before)


def test_train_flops_are_three_forward_passes_per_image_seen(tiny_root, tmp_path):
    metrics = train(small_config(tiny_root), tmp_path / "run", progress=False, log=lambda *a: None)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    model = train_module.build_model("efficientnetv2_s", 10, 1, **TINY)
    images = (270 // 32) * 32  # drop_last batches of the 270 training images
    expected = [3 * train_module.count_flops(model, h["image_size"], 1) * images for h in history]
    assert [h["train_flops"] for h in history] == expected and metrics["train_flops"] == sum(expected)


def test_ema_warm_up_lets_the_initial_batchnorm_statistics_fade():
    """Plain EMA at 0.998 would still hold 90% of the initial running variance (1.0) after 50
    updates; a late BatchNorm's true variance of 0.003 then reads as 0.9 and the average predicts
    at chance. With the warm-up, the average follows the model within those updates."""
    from lib.optim import ema_of

    model = train_module.build_model("efficientnetv2_s", 10, 1, **TINY)
    ema = ema_of(model, 0.998)
    norm = model.stages[-1][-1].body[1].bn
    for _ in range(50):
        with torch.no_grad():
            norm.running_var.fill_(0.003)
            model.classifier[1].weight.add_(0.01)
        ema.update_parameters(model)
    averaged = ema.module.stages[-1][-1].body[1].bn
    torch.testing.assert_close(averaged.running_var, norm.running_var, rtol=0.01, atol=0)
    assert averaged.num_batches_tracked == norm.num_batches_tracked
    lag = (model.classifier[1].weight - ema.module.classifier[1].weight).mean().item()
    assert 0 < lag < 0.1  # late updates still average (decay ~0.85 at update 50)
