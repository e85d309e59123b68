"""Bad inputs and faults through the command line: one line on stderr, exit 2, nothing lost.

Every case of the table runs ``python -m lib.train``'s ``main`` with a bad value, a bad folder or
bad data, and checks: exit code 2, exactly one line on stderr (starting ``error:``), no traceback,
and no file under ``--out`` or under the data root removed or changed. The faults that need a
second process or a full disk have their own tests below.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lib.data as data
import lib.runs as runs
import lib.train as train_module
from formats import make_fashion_mnist, write_idx, write_png
from lib.preflight import main as preflight_main
from lib.profiles import config_for
from lib.stopping import Stop
from lib.train import Diverged, main, train

SCHEDULE = "{num_stages: 2, size: [20, 28]}"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Data in the real on-disk formats, good and bad (random pixels: mechanics only)."""
    base = tmp_path_factory.mktemp("data")
    make_fashion_mnist(base / "good", n_train=300, n_test=50)
    raw = make_fashion_mnist(base / "labels", n_train=300, n_test=50)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(300) % 12)  # labels 10 and 11: no such class
    raw = make_fashion_mnist(base / "truncated", n_train=300, n_test=50, gz=False)
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:-100])
    for split in ("train", "test"):
        for cls in ("cat", "dog", "owl"):
            if split == "test" and cls == "owl":
                continue  # test/ lacks a class
            for i in range(3):
                write_png(base / "lacking" / split / cls / f"{i}.png", 40 * i)
    for cls in ("cat", "dog"):
        write_png(base / "single" / cls / "0.png", 80)  # one image per class
    (base / "empty" / "cat").mkdir(parents=True)
    return base


@pytest.fixture(scope="module")
def finished_run(roots, tmp_path_factory):
    """A finished smoke run, copied into each test that needs one."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(base_args(roots / "good", out)) == 0
    return out


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")


def base_args(root, out, *extra):
    return [
        "--dataset",
        "fashion_mnist",
        "--profile",
        "smoke",
        "--out",
        str(out),
        "--epochs",
        "2",
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


def snapshot(*folders) -> dict:
    """path -> (size, mtime) of every file (the lock file aside)."""
    files = {}
    for folder in folders:
        for p in Path(folder).rglob("*") if Path(folder).exists() else []:
            if p.is_file() and p.name != runs.LOCK:
                stat = p.stat()
                files[str(p)] = (stat.st_size, stat.st_mtime_ns)
    return files


def unfinished(out):
    """A run folder whose last checkpoint was written but not metrics.json (as after a kill)."""
    for name in ("metrics.json", "model.pt"):
        (out / name).unlink()


# (id, extra arguments, expected words, how --out starts: None = absent, "finished", "unfinished", "file")
CASES = [
    ("unknown profile", ["--profile", "huge"], "unknown profile 'huge'", None),
    ("unknown optimizer", ["--optimizer", "lamb"], "unknown optimizer 'lamb'", None),
    ("unknown scheduler", ["--scheduler", "step"], "unknown scheduler 'step'", None),
    ("zero epochs", ["--epochs", "0"], "epochs must be a positive integer", None),
    ("epochs as words", ["--epochs", "ten"], "epochs must be an integer", None),
    ("fractional epochs", ["--epochs", "2.5"], "epochs must be an integer", None),
    ("negative batch", ["--batch-size", "-4"], "batch_size must be a positive integer", None),
    ("zero lr", ["--lr", "0"], "lr must be a positive number", None),
    ("lr as words", ["--lr", "fast"], "lr must be a number", None),
    ("negative gamma", ["--set", "gamma=-1"], "gamma must be a positive number", None),
    ("negative limit", ["--set", "limit=-1"], "limit must be a positive integer", None),
    ("negative seed", ["--set", "seed=-3"], "seed must be >= 0", None),
    ("seed as words", ["--set", "seed=abc"], "seed must be an integer", None),
    ("momentum above one", ["--set", "momentum=1.5"], "momentum must be in [0, 1)", None),
    ("momentum as words", ["--set", "momentum=fast"], "momentum must be a number", None),
    ("label smoothing one", ["--set", "label_smoothing=1"], "label_smoothing must be in [0, 1)", None),
    ("ema decay two", ["--set", "ema_decay=2"], "ema_decay must be in [0, 1)", None),
    ("validation everything", ["--set", "val_fraction=1.0"], "val_fraction must be in [0, 1)", None),
    ("flip maybe", ["--set", "flip=maybe"], "flip must be true or false", None),
    ("keep no checkpoints", ["--set", "keep_checkpoints=0"], "keep_checkpoints must be a positive integer", None),
    ("unknown trainable", ["--set", "trainable=backbone"], "unknown trainable setting 'backbone'", None),
    ("unknown preprocessing", ["--set", "preprocessing=imagenet"], "unknown preprocessing 'imagenet'", None),
    ("unknown crop mode", ["--set", "crop_mode=mirror"], "unknown crop_mode 'mirror'", None),
    ("erase every image", ["--set", "random_erasing=1.5"], "random_erasing must be in [0, 1)", None),
    ("unknown device", ["--device", "tpu"], "unknown device 'tpu'", None),
    ("unknown cuda index", ["--device", "cuda:x"], "unknown device 'cuda:x': choose auto, cpu, cuda or cuda:N", None),
    ("cuda without a GPU", ["--device", "cuda"], "sees 0 CUDA devices", "no cuda"),
    ("cuda:0 without a GPU", ["--device", "cuda:0"], "or run with --device cpu", "no cuda"),
    (
        "a GPU index not there",
        ["--device", "cuda:1"],
        "sees 1 CUDA device (cuda:0); choose cuda:0 or run with --device cpu",
        "one gpu",
    ),
    ("unknown setting", ["--set", "colour=red"], "unknown setting(s) ['colour']", None),
    ("set without value", ["--set", "colour"], "--set expects KEY=VALUE", None),
    ("unreadable value", ["--set", "schedule={size: [20"], "cannot read", None),
    ("overrides not a mapping", ["--set", "model_overrides=[1, 2]"], "model_overrides must be a mapping", None),
    ("width as words", ["--set", "model_overrides.width_mult=abc"], "do not fit efficientnetv2_s", None),
    ("unknown model override", ["--set", "model_overrides.colour=red"], "unknown overrides ['colour']", None),
    ("bn momentum above one", ["--set", "model_overrides.bn_momentum=1.5"], "bn_momentum must be in (0, 1]", None),
    ("unknown model", ["--model", "efficientnetv2_xl"], "unknown model 'efficientnetv2_xl'", None),
    (
        "below the stem's minimum",
        ["--set", "model_overrides={width_mult: 0.25, depth_mult: 0.1}"],
        "below efficientnetv2_s's minimum 33 px",
        None,
    ),
    ("schedule not a mapping", ["--set", "schedule=5"], "schedule must be a mapping", None),
    ("one-element size", ["--set", "schedule={size: [28]}"], "schedule size must be a number or [first, last]", None),
    ("shrinking size", ["--set", "schedule={size: [28, 20]}"], "shrinks", None),
    ("size as words", ["--set", "image_size=big"], "schedule size must be a number", None),
    ("dropout above one", ["--set", "schedule={size: [20, 28], dropout: [0, 1.5]}"], "dropout must be in [0, 1)", None),
    ("unknown schedule setting", ["--set", "schedule={size: [20, 28], colour: 1}"], "unknown schedule setting", None),
    (
        "too many stages",
        ["--set", "schedule={size: [20, 28], num_stages: 5}"],
        "num_stages must be between 1 and",
        None,
    ),
    ("unknown coursework table", ["--set", "schedule={coursework: imagenet}"], "unknown coursework table", None),
    (
        "phase table of other length",
        ["--set", "schedule={coursework: fashion_mnist}"],
        "covers 100 epochs but the run has 2",
        None,
    ),
    (
        "phases with a gap",
        ["--set", "schedule={phases: [{epochs: [1, 1], image_size: 28}, {epochs: [3, 3], image_size: 28}]}"],
        "phases must be contiguous",
        None,
    ),
    (
        "mixed schedule kinds",
        ["--set", "schedule={size: [20, 28], coursework: fashion_mnist}"],
        "mixes coursework and size",
        None,
    ),
    ("batch above the data", ["--batch-size", "5000"], "larger than the 270 training images", None),
    ("unknown dataset", ["--dataset", "imagenet"], "unknown dataset 'imagenet'", None),
    ("dataset not here, no download", ["--dataset", "cifar10", "--set", "download=false"], "cifar10 not found", None),
    ("out is a file", [], "is a file, not a folder", "file"),
    ("out empty", [], "--out is empty ('')", ""),
    ("out only spaces", [], "--out is empty (only spaces)", "  "),
    ("out empty, overwrite", ["--overwrite"], "--out is empty", ""),
    (
        "out someone else's folder",
        [],
        "is not empty and holds no training run (a.txt, notes.md, photo.jpg and 1 more)",
        "foreign",
    ),
    ("out someone else's folder, overwrite", ["--overwrite"], "holds no training run", "foreign"),
    ("out someone else's folder, resume", ["--resume"], "holds no training run", "foreign"),
    ("preflight into someone else's folder", ["--preflight"], "holds no training run", "foreign"),
    (
        "out the repository root",
        ["--overwrite"],
        f"--out {runs.REPO_ROOT} is not empty and holds no training run",
        "repository",
    ),
    ("out under a file", [], "is a file, not a folder", "under a file"),
    ("resume with nothing to resume", ["--resume"], "no checkpoint in", None),
    ("finished run kept", [], "holds a finished run", "finished"),
    ("resume and overwrite", ["--resume", "--overwrite"], "exclude each other", "finished"),
    ("resume a finished run", ["--resume"], "already finished", "finished"),
    ("unfinished run kept", [], "holds an unfinished run", "unfinished"),
    (
        "overwrite with a too-small stem",
        ["--overwrite", "--set", "model_overrides={width_mult: 0.25, depth_mult: 0.1}"],
        "below efficientnetv2_s's minimum",
        "finished",
    ),
    (
        "overwrite with a missing dataset",
        ["--overwrite", "--dataset", "cifar100", "--set", "download=false"],
        "cifar100 not found",
        "finished",
    ),
    ("overwrite with a bad schedule", ["--overwrite", "--set", "schedule={size: [28, 20]}"], "shrinks", "finished"),
    (
        "resume a checkpoint of the hand-written learning rate",
        ["--resume"],
        "before torch.optim.lr_scheduler",
        "old lr state",
    ),
    (
        "resume with another lr",
        ["--resume", "--lr", "5e-4"],
        "was trained with other settings (lr: 0.001 -> 0.0005",
        "unfinished",
    ),
    (
        "resume into another model",
        ["--resume", "--set", "model_overrides={width_mult: 0.5, depth_mult: 0.1, small_input: true}"],
        "holds a checkpoint of",
        "unfinished",
    ),
    ("labels outside the classes", [], "labels run from 0 to 11, but there are 10 classes", "labels"),
    ("truncated idx file", [], "truncated or padded", "truncated"),
    ("test folder lacks a class", [], "test/ lacks ['owl']", "lacking"),
    ("one image per class", [], "has 1 image: at least 2 per class", "single"),
    ("image folder without images", [], "no images found", "empty"),
]


@pytest.mark.parametrize("name, extra, expected, start", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(
    name, extra, expected, start, roots, finished_run, tmp_path, no_system_copy, capsys, monkeypatch
):
    root, out = roots / "good", tmp_path / "out"
    if start in ("no cuda", "one gpu"):  # what torch sees, on any machine
        monkeypatch.setattr(torch.cuda, "is_available", lambda: start == "one gpu")
        monkeypatch.setattr(torch.cuda, "device_count", lambda: int(start == "one gpu"))
    if start in ("", "  ", "repository"):  # the repository root, where an empty --out resolves
        out = runs.REPO_ROOT if start == "repository" else start
        repository = sorted(p.name for p in runs.REPO_ROOT.iterdir())
    elif start == "foreign":  # a folder of files that are not a run
        for name in ("notes.md", "a.txt", "photo.jpg", ".hidden"):
            (out / name).parent.mkdir(exist_ok=True)
            (out / name).write_text(name)
    if start in ("finished", "unfinished", "old lr state"):
        shutil.copytree(finished_run, out)
        if start != "finished":
            unfinished(out)
        if start == "old lr state":  # what lib.optim.LearningRate kept before torch's schedulers
            last = sorted((out / "checkpoints").glob("epoch_*.pt"))[-1]
            state = torch.load(last, weights_only=False)
            torch.save({**state, "lr": {"scale": 1.0, "best": 0.1, "bad_epochs": 0}}, last)
    elif start == "file":
        out.write_text("not a folder")
    elif start == "under a file":
        out.write_text("not a folder")
        out = out / "run"
    elif start in ("labels", "truncated"):
        root = roots / start
    elif start in ("lacking", "single", "empty"):
        extra = [*extra, "--dataset", str(roots / start)]
    watched = out if start not in ("", "  ", "repository") and out.exists() else tmp_path / "none"
    before = snapshot(watched, roots)
    entry = preflight_main if "--preflight" in extra else main  # python -m lib.preflight takes the same arguments
    code = entry(base_args(root, out, *[a for a in extra if a != "--preflight"]))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert snapshot(watched, roots) == before  # nothing removed or changed
    if start in ("", "  ", "repository"):
        assert sorted(p.name for p in runs.REPO_ROOT.iterdir()) == repository  # no run file among the project's
    if start is None:
        assert not (out / "config.json").exists() and not (out / "checkpoints").exists()


def test_inductor_without_a_cpp_compiler_is_one_line(roots, tmp_path, no_system_copy, capsys):
    """Inductor's CPU backend builds C++ kernels: a machine without the compiler gets a line before any work."""
    from torch._inductor import config as inductor

    out = tmp_path / "out"
    with inductor.patch({"cpp.cxx": (None, "no-such-c++-compiler")}):  # what CXX=no-such-c++-compiler sets
        assert main(base_args(roots / "good", out, "--compile", "inductor")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: compile inductor on a CPU builds C++ kernels") and err.count("\n") == 1, err
    assert "'no-such-c++-compiler' was not found" in err and not out.exists()


def test_numbers_written_the_usual_way_are_numbers(roots, tmp_path, no_system_copy):
    out = tmp_path / "run"
    assert (
        main(
            base_args(
                roots / "good",
                out,
                "--set",
                "lr=1e-3",
                "--set",
                "ema_decay=1e-4",
                "--set",
                "gamma=1.0e-0",
                "--set",
                "max_steps=1",
            )
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["lr"] == 0.001 and config["ema_decay"] == 0.0001 and config["gamma"] == 1.0


def test_unwritable_out_is_one_line(roots, capsys, no_system_copy):
    target = Path("/sys/effnetv2-hardening-test")  # not writable even for root, on Linux
    try:
        target.mkdir()
        target.rmdir()
        pytest.skip("no unwritable folder to try on this machine (/sys accepted a new folder)")
    except OSError:
        pass
    assert main(base_args(roots / "good", target)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write in {target}") and err.count("\n") == 1, err


def test_the_lock_file_goes_with_its_holder_and_a_dead_holders_file_is_taken_over(tmp_path):
    folder = runs.RunFolder(tmp_path / "run")
    with folder.lock():
        assert (folder.path / runs.LOCK).read_text() == str(os.getpid())
        with pytest.raises(runs.RunFolderError, match=f"in use by another training process \\(pid {os.getpid()}\\)"):
            with runs.RunFolder(folder.path).lock():
                pass
        assert (folder.path / runs.LOCK).read_text() == str(os.getpid())  # a refused writer leaves the holder's file
    assert not (folder.path / runs.LOCK).exists()
    (folder.path / runs.LOCK).write_text("4194304")  # a holder killed by SIGKILL leaves its file, unlocked
    with folder.lock():
        assert (folder.path / runs.LOCK).read_text() == str(os.getpid())
    assert not (folder.path / runs.LOCK).exists()


# ---------------------------------------------------------------- faults


def cli(args):
    """The command line in a child process. Ctrl-C restored to its default there: a suite started in the
    background of a script (``cmd &``) inherits SIGINT ignored, and the interrupt test would not interrupt."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lib.train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_a_second_writer_is_refused_and_the_first_run_stays_whole(roots, tmp_path):
    out = tmp_path / "run"
    first = cli(base_args(roots / "good", out, "--epochs", "30"))
    while not (out / "config.json").exists() and first.poll() is None:
        time.sleep(0.02)
    second = cli(base_args(roots / "good", out, "--epochs", "30", "--overwrite", "--set", "seed=1"))
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and err.count("\n") == 1, err
    assert f"in use by another training process (pid {first.pid})" in err
    assert first.wait(300) == 0, first.stderr.read()
    config, metrics = (json.loads((out / n).read_text()) for n in ("config.json", "metrics.json"))
    assert config["config"]["seed"] == metrics["seed"] == 0 and metrics["epochs"] == 30
    assert not list(out.rglob("*.partial"))


def test_corrupt_latest_checkpoint_resumes_from_the_one_before(roots, tmp_path, monkeypatch, no_system_copy):
    out = tmp_path / "run"
    config = config_for(
        "smoke", "fashion_mnist", data_root=str(roots / "good"), limit=None, epochs=4, batch_size=32, keep_checkpoints=3
    )
    calls = {"n": 0}
    original = train_module.soft_cross_entropy

    def poisoned(logits, targets, smoothing):  # NaN in epoch 3 (8 steps per epoch)
        calls["n"] += 1
        loss = original(logits, targets, smoothing)
        return loss * float("nan") if calls["n"] > 17 else loss

    monkeypatch.setattr(train_module, "soft_cross_entropy", poisoned)
    with pytest.raises(Diverged):
        train(config, out, progress=False, log=lambda *a: None)
    monkeypatch.setattr(train_module, "soft_cross_entropy", original)
    newest = out / "checkpoints" / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    messages = []
    metrics = train(config, out, resume=True, progress=False, log=messages.append)
    assert any("skipping epoch_0002.pt: cannot be loaded" in m for m in messages), messages
    assert any("resumed from" in m and "epoch_0001.pt" in m for m in messages), messages
    assert metrics["epochs"] == 4 and (out / "checkpoints" / "epoch_0002.pt.unreadable").exists()
    (out / "metrics.json").unlink()  # back to unfinished,
    (out / "checkpoints" / "epoch_0004.pt").unlink()  # every checkpoint bad:
    (out / "checkpoints" / "epoch_0003.pt").write_bytes(b"garbage" * 10)
    (out / "checkpoints" / "epoch_0002.pt").write_bytes(b"")  # empty
    with pytest.raises(runs.RunFolderError, match="no readable checkpoint"):
        train(config, out, resume=True, progress=False, log=lambda *a: None)


def test_overwrite_keeps_the_old_run_until_the_new_one_checkpoints(
    roots, finished_run, tmp_path, monkeypatch, no_system_copy
):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    config = config_for(
        "smoke", "fashion_mnist", data_root=str(roots / "good"), limit=None, epochs=2, batch_size=32, seed=3
    )

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, out, overwrite=True, progress=False, log=lambda *a: None)
    assert snapshot(out) == before and not (out / runs.ASIDE).exists()  # the old run is back, whole
    monkeypatch.undo()
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    train(config, out, overwrite=True, progress=False, log=lambda *a: None)
    assert json.loads((out / "metrics.json").read_text())["seed"] == 3 and not (out / runs.ASIDE).exists()


def test_disk_full_on_save_is_one_line_and_leaves_no_partial_file(roots, tmp_path, monkeypatch, no_system_copy, capsys):
    out = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):  # what a full disk does to a write
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(base_args(roots / "good", out)) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: cannot write epoch_0001.pt in {out / 'checkpoints'}: no space left on the device; "
        f"free some space and run again (--resume continues from the last checkpoint)\n"
    )
    assert not list(out.rglob("*.partial")) and not list((out / "checkpoints").iterdir())
    monkeypatch.setattr(torch, "save", real_save)


def test_disk_full_on_a_real_small_filesystem(roots, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({made.stderr.decode().strip() or 'not permitted'}); "
            f"the simulated ENOSPC test covers the same path"
        )
    try:
        proc = cli(base_args(roots / "good", mount / "run"))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.count("\n") == 1, err
        assert "cannot write epoch_0001.pt" in err and "no space left on the device" in err, err
        assert not list(mount.rglob("*.partial"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_interrupt_says_how_to_resume(roots, tmp_path):
    out = tmp_path / "run"
    proc = cli(base_args(roots / "good", out, "--epochs", "6"))
    while not (out / "checkpoints" / "epoch_0001.pt").exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and last.startswith("stopped by SIGINT") and "; checkpoint " in last, err
    assert f"resume with: python -m lib.train --dataset fashion_mnist --profile smoke --out {out}" in last, err
    assert last.endswith(" --resume") and not list(out.rglob("*.partial"))


def child(script, args):
    """The command line in a child process that runs ``script`` (a few lines that patch lib.train) first."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


SECOND_SIGNAL = """
import os, signal, sys
import torch
import lib.train as train
step, save = train.optimizer_step, torch.save

def signalled(t, x, targets):               # the first SIGTERM, after step 11 (epoch 2, batch 3)
    out = step(t, x, targets)
    if t.steps == 11:
        os.kill(os.getpid(), signal.SIGTERM)
    return out

def cut(obj, path, *args, **kwargs):        # the second, half-way through the stop's checkpoint
    if "_step_" in str(path):
        open(path, "wb").write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)
    return save(obj, path, *args, **kwargs)
train.optimizer_step, torch.save = signalled, cut
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_second_signal_during_the_checkpoint_ends_at_once_without_a_partial_file(roots, tmp_path):
    out = tmp_path / "run"
    proc = child(SECOND_SIGNAL, base_args(roots / "good", out, "--epochs", "3"))
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143, err
    assert last.startswith(
        f"stopped by a second SIGTERM, at once; checkpoint {out / 'checkpoints' / 'epoch_0001.pt'}; "
        f"resume with: python -m lib.train "
    ) and last.endswith(" --resume"), err
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["checkpoints/epoch_0001.pt", "config.json", "history.json", "metrics.csv"], files
    resumed = cli(base_args(roots / "good", out, "--epochs", "3", "--resume"))
    log, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and "epoch_0001.pt at epoch 2 (stage " in log, log + err


def test_sigterm_before_training_stops_at_once_and_leaves_an_empty_folder(roots, tmp_path):
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\nimport lib.train as train\nload = train.load_data\n"
        "def signalled(*args):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return load(*args)\n"
        "train.load_data = signalled\nsys.exit(train.main(sys.argv[1:]))\n"
    )
    proc = child(script, base_args(roots / "good", out))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err == "stopped by SIGTERM; nothing to resume: run the same command again\n", err
    assert list(out.iterdir()) == []  # the lock file went with its holder


def test_a_signal_inherited_as_ignored_stays_ignored():
    """``nohup`` and a background job (``cmd &``) start with SIGINT ignored: a run keeps it so."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        stop = Stop().install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == stop._handle
        stop.uninstall()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == before[1]
    finally:
        signal.signal(signal.SIGINT, before[0])
