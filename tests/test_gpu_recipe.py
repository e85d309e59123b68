"""The GPU recipe's code paths, run on a CPU: compile, mixed precision, accumulation, preflight.

No GPU is lent to this project, so what PyTorch can run on a CPU runs here: torch.compile with a
tracing backend (graph capture, graph breaks and recompilation are the same whatever the backend
generates), CPU autocast in bf16 and fp16 with a CPU GradScaler, gradient accumulation, and the
preflight's stage-by-stage steps with a checkpoint and a resume at each boundary.
"""
import json
import logging
import sys

import pytest
import torch

import lib.data as data
import lib.device as device
from formats import make_fashion_mnist
from lib.profiles import config_for
from lib.models import build_model
from lib.preflight import main as preflight_main
from lib.train import main, train

TWO_STAGES = {"num_stages": 2, "size": [20, 28], "randaug_magnitude": [5, 10], "dropout": [0.1, 0.2],
              "drop_path": [0, 0.1]}


@pytest.fixture
def root(tmp_path, monkeypatch):
    """300 random 28x28 images in the real idx format (mechanics only: no accuracy is claimed)."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    make_fashion_mnist(tmp_path / "data", n_train=300, n_test=50)
    return tmp_path / "data"


def config(root, **overrides):
    settings = dict(data_root=str(root), limit=None, epochs=2, batch_size=32, schedule=TWO_STAGES)
    settings.update(overrides)
    return config_for("smoke", "fashion_mnist", **settings)


def quiet(*args, **kwargs):
    pass


def test_compile_captures_one_static_graph_per_stage_without_breaks(root, tmp_path):
    """Three stage sizes, three compilations: with dynamic=False no stage falls back to a
    dynamic-shape graph (automatic dynamic shapes would reuse one graph from the second size on)."""
    three = {**TWO_STAGES, "num_stages": 3, "size": [20, 28]}
    metrics = train(config(root, epochs=3, limit=64, compile="aot_eager", schedule=three), tmp_path / "c",
                    progress=False, log=quiet)
    assert [s["image_size"] for s in metrics["stages"]] == [20, 24, 28]
    assert metrics["compilations"] == 3 and metrics["graph_breaks"] == 0, metrics
    assert metrics["compile"] == "compile aot_eager, static shapes"


def test_compiled_and_eager_runs_take_the_same_first_steps(root, tmp_path):
    """Tolerance: relative 1e-4 on the epoch's mean loss and 1e-4 absolute on every weight after 3 steps."""
    eager = train(config(root, epochs=1, max_steps=3, schedule={"size": [28, 28]}), tmp_path / "e",
                  progress=False, log=quiet)
    compiled = train(config(root, epochs=1, max_steps=3, schedule={"size": [28, 28]}, compile="aot_eager"),
                     tmp_path / "c", progress=False, log=quiet)
    losses = [json.loads((tmp_path / run / "history.json").read_text())[0]["train_loss"] for run in ("e", "c")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4), losses
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("e", "c"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4, msg=key)
    assert eager["compilations"] == 0 and compiled["compilations"] == 1


def test_auto_compile_is_inductor_on_cuda_and_off_on_a_cpu():
    assert device.Compiler("auto", torch.device("cuda")).backend == "inductor"
    cpu = device.Compiler("auto", torch.device("cpu"))
    assert cpu.backend is None and "inductor only on CUDA" in cpu.describe()
    assert config_for("paper", "fashion_mnist").compile == "auto"


def test_cpu_inductor_drops_only_the_cuda_runtime_warning():
    """A CUDA build of torch warns 'No CUDA runtime is found' when inductor compiles on a CPU: noise there."""
    from torch._inductor import config as inductor
    with inductor.patch({"cpp.cxx": (None, sys.executable)}):    # any program answering --version stands in for g++
        device.Compiler("inductor", torch.device("cpu"))
    log = logging.getLogger("torch.utils.cpp_extension")

    def kept(message):
        return log.filter(logging.LogRecord(log.name, logging.WARNING, __file__, 0, message, ("/usr/local",), None))
    assert not kept("No CUDA runtime is found, using CUDA_HOME='%s'") and kept("Error checking compiler version for %s")


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cpu_autocast_runs_the_mixed_precision_path(root, tmp_path, amp, dtype):
    """The autocast and GradScaler lines the GPU runs, on a CPU: the loss stays within 2% of fp32's."""
    reference = train(config(root, epochs=1, max_steps=2, schedule={"size": [28, 28]}), tmp_path / "fp32",
                      progress=False, log=quiet)
    mixed = train(config(root, epochs=1, max_steps=2, schedule={"size": [28, 28]}, amp=amp), tmp_path / amp,
                  progress=False, log=quiet)
    assert mixed["precision"] == device.precision(amp, torch.device("cpu")).describe()
    assert device.precision(amp, torch.device("cpu")).dtype is dtype
    losses = [json.loads((tmp_path / run / "history.json").read_text())[0]["train_loss"] for run in ("fp32", amp)]
    assert losses[1] == pytest.approx(losses[0], rel=0.02), losses
    state = torch.load(tmp_path / amp / "checkpoints" / "epoch_0001.pt", weights_only=False)
    assert bool(state["scaler"]) == (amp == "fp16")                   # fp16 scales its gradients
    assert reference["precision"] == "fp32"


def test_a_gpu_without_bf16_is_one_line_that_names_what_it_can_do(monkeypatch):
    monkeypatch.setattr(device, "bf16_supported", lambda d: False)
    monkeypatch.setattr(device, "device_name", lambda d: "Tesla T4")
    with pytest.raises(ValueError, match=r"^amp bf16: Tesla T4 cannot compute in bf16; it supports fp16 "):
        device.precision("bf16", torch.device("cuda"))
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device_type, enabled: ("GradScaler", device_type, enabled))
    chosen = device.precision("auto", torch.device("cuda"))            # a T4 or V100: fp16 with a scaler
    assert chosen.dtype is torch.float16 and chosen.scaler == ("GradScaler", "cuda", True)
    assert chosen.describe() == "fp16 autocast with gradient scaling"


def test_gradient_accumulation_equals_the_large_batch_on_the_first_step(root, tmp_path):
    """Four micro-batches of 8 give the step one batch of 32 gives. BatchNorm normalizes each
    micro-batch with its own statistics (as in every accumulation scheme), so the comparison trains
    what has no BatchNorm in training mode: the head, on a frozen backbone (BatchNorm in eval)."""
    for steps in (1, 4):
        metrics = train(config(root, epochs=1, max_steps=1, schedule={"size": [28, 28]}, accumulate=steps,
                               trainable="head", optimizer="sgd", lr=0.5), tmp_path / f"a{steps}",
                        progress=False, log=quiet)
        assert metrics["steps"] == 1
    one, four = (torch.load(tmp_path / f"a{s}" / "model.pt", weights_only=True) for s in (1, 4))
    torch.manual_seed(0)                                   # the trainer's initialisation of seed 0
    start = build_model("efficientnetv2_s", 10, 1, width_mult=0.25, depth_mult=0.1, small_input=True).state_dict()
    assert not torch.allclose(one["classifier.1.weight"], start["classifier.1.weight"])     # the step moved the head
    for key in one:
        torch.testing.assert_close(four[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
        if not key.startswith("classifier"):
            assert torch.equal(one[key], start[key]), key                                    # frozen stays put


def test_batch_must_split_into_processes_and_micro_batches(root, tmp_path, capsys):
    code = main(["--dataset", "fashion_mnist", "--profile", "smoke", "--out", str(tmp_path / "x"),
                 "--set", f"data_root={root}", "--batch-size", "30", "--set", "accumulate=4"])
    assert code == 2 and "not divisible by 1 process(es) x 4 accumulation step(s)" in capsys.readouterr().err


def test_preflight_runs_every_stage_and_crosses_each_boundary(root, tmp_path, capsys):
    code = preflight_main(["--dataset", "fashion_mnist", "--profile", "smoke", "--out", str(tmp_path / "p"),
                           "--set", f"data_root={root}", "--set", "limit=null", "--epochs", "3",
                           "--set", "schedule={num_stages: 3, size: [20, 28]}", "--compile", "aot_eager",
                           "--set", "ema_decay=0.99"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads((tmp_path / "p" / "preflight.json").read_text())
    assert [r["image_size"] for r in rows] == [20, 24, 28]
    for r in rows:
        assert {"image_size", "batch_size", "seconds_per_step", "images_per_second", "peak_memory_bytes",
                "projected_epoch_seconds", "projected_run_seconds"} <= set(r)
        assert r["batch_size"] == 8 and r["run_batch_size"] == 64 and "smaller on a CPU" in r["batch_note"]
        assert r["seconds_per_step"] > 0 and r["peak_memory_bytes"] > 0
        # a stand-in of the dataset on disk: the projection is for the full training split the run will see
        assert r["projected_epoch_seconds"] == pytest.approx(54000 // 64 * 64 / r["images_per_second"])
    assert "projecting for the full fashion_mnist training split (54,000 images)" in out
    assert "projected run on this device" in out and not (tmp_path / "p" / ".preflight").exists()
    assert not (tmp_path / "p" / "checkpoints").exists()                  # a preflight leaves no run behind


def test_preflight_refuses_what_training_refuses(root, tmp_path, capsys):
    base = ["--dataset", "fashion_mnist", "--out", str(tmp_path / "p"), "--set", f"data_root={root}"]
    assert preflight_main(base + ["--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert preflight_main(base + ["--profile", "smoke", "--set", "model_overrides={width_mult: 0.25, depth_mult: 0.1}"]) == 2
    assert "below efficientnetv2_s's minimum 33 px" in capsys.readouterr().err
