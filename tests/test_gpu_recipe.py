"""The GPU recipe's code paths: compile, mixed precision, accumulation, resume, preflight.

CI has no GPU, so what PyTorch can run on a CPU runs there: torch.compile with a tracing backend
(graph capture, graph breaks and recompilation are the same whatever the backend generates), CPU
autocast in bf16 and fp16 with a CPU GradScaler, gradient accumulation, a bit-exact resume, and the
preflight's stage-by-stage steps with a checkpoint and a resume at each boundary. The tests that
take ``device`` run on CUDA where torch sees it (``benchmarks/gpu_check.py`` runs them there),
compiling with inductor.
"""

import json
import logging
import sys
import warnings

import pytest
import torch

import lib.data as data
import lib.device as lib_device
from formats import make_fashion_mnist
from lib.profiles import config_for
from lib.models import build_model
import lib.train as train_module
from lib.preflight import main as preflight_main
from lib.train import main, train

TWO_STAGES = {
    "num_stages": 2,
    "size": [20, 28],
    "randaug_magnitude": [5, 10],
    "dropout": [0.1, 0.2],
    "drop_path": [0, 0.1],
}


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


def test_compile_captures_one_static_graph_per_stage_without_breaks(root, tmp_path, device):
    """Three stage sizes, three compilations: with dynamic=False no stage falls back to a
    dynamic-shape graph (automatic dynamic shapes would reuse one graph from the second size on).
    On CUDA with inductor, the backend the paper profile uses there; on a CPU with aot_eager."""
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    three = {**TWO_STAGES, "num_stages": 3, "size": [20, 28]}
    metrics = train(
        config(root, epochs=3, limit=64, compile=backend, schedule=three), tmp_path / "c", progress=False, log=quiet
    )
    assert [s["image_size"] for s in metrics["stages"]] == [20, 24, 28]
    assert metrics["compilations"] == 3 and metrics["graph_breaks"] == 0, metrics
    assert metrics["compile"] == f"compile {backend}, static shapes" and metrics["device"].startswith(device.type)


def test_compiled_and_eager_runs_take_the_same_first_steps(root, tmp_path):
    """Tolerance: relative 1e-4 on the epoch's mean loss and 1e-4 absolute on every weight after 3 steps."""
    eager = train(
        config(root, epochs=1, max_steps=3, schedule={"size": [28, 28]}), tmp_path / "e", progress=False, log=quiet
    )
    compiled = train(
        config(root, epochs=1, max_steps=3, schedule={"size": [28, 28]}, compile="aot_eager"),
        tmp_path / "c",
        progress=False,
        log=quiet,
    )
    losses = [json.loads((tmp_path / run / "history.json").read_text())[0]["train_loss"] for run in ("e", "c")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4), losses
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("e", "c"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4, msg=key)
    assert eager["compilations"] == 0 and compiled["compilations"] == 1


def test_auto_compile_is_inductor_on_cuda_and_off_on_a_cpu():
    assert lib_device.Compiler("auto", torch.device("cuda")).backend == "inductor"
    cpu = lib_device.Compiler("auto", torch.device("cpu"))
    assert cpu.backend is None and "inductor only on CUDA" in cpu.describe()
    assert config_for("paper", "fashion_mnist").compile == "auto"


def test_cpu_inductor_drops_only_the_cuda_runtime_warning():
    """A CUDA build of torch warns 'No CUDA runtime is found' when inductor compiles on a CPU: noise there."""
    from torch._inductor import config as inductor

    with inductor.patch({"cpp.cxx": (None, sys.executable)}):  # any program answering --version stands in for g++
        lib_device.Compiler("inductor", torch.device("cpu"))
    log = logging.getLogger("torch.utils.cpp_extension")

    def kept(message):
        return log.filter(logging.LogRecord(log.name, logging.WARNING, __file__, 0, message, ("/usr/local",), None))

    assert not kept("No CUDA runtime is found, using CUDA_HOME='%s'") and kept("Error checking compiler version for %s")


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_the_mixed_precision_path(root, tmp_path, amp, dtype, device):
    """The autocast and GradScaler lines of the GPU recipe (on a CPU, CPU autocast and a CPU
    GradScaler): the loss stays within 2% of fp32's."""
    reference = train(
        config(root, epochs=1, max_steps=2, schedule={"size": [28, 28]}, amp="off"),
        tmp_path / "fp32",
        progress=False,
        log=quiet,
    )
    mixed = train(
        config(root, epochs=1, max_steps=2, schedule={"size": [28, 28]}, amp=amp),
        tmp_path / amp,
        progress=False,
        log=quiet,
    )
    assert mixed["device"].startswith(device.type)
    assert mixed["precision"] == lib_device.precision(amp, device).describe()
    assert lib_device.precision(amp, device).dtype is dtype
    losses = [json.loads((tmp_path / run / "history.json").read_text())[0]["train_loss"] for run in ("fp32", amp)]
    assert losses[1] == pytest.approx(losses[0], rel=0.02), losses
    state = torch.load(tmp_path / amp / "checkpoints" / "epoch_0001.pt", weights_only=False)
    assert bool(state["scaler"]) == (amp == "fp16")  # fp16 scales its gradients
    assert reference["precision"] == "fp32"


def test_a_gpu_without_bf16_is_one_line_that_names_what_it_can_do(monkeypatch):
    monkeypatch.setattr(lib_device, "bf16_supported", lambda d: False)
    monkeypatch.setattr(lib_device, "device_name", lambda d: "Tesla T4")
    with pytest.raises(ValueError, match=r"^amp bf16: Tesla T4 cannot compute in bf16; it supports fp16 "):
        lib_device.precision("bf16", torch.device("cuda"))
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device_type, enabled: ("GradScaler", device_type, enabled))
    chosen = lib_device.precision("auto", torch.device("cuda"))  # a T4 or V100: fp16 with a scaler
    assert chosen.dtype is torch.float16 and chosen.scaler == ("GradScaler", "cuda", True)
    assert chosen.describe() == "fp16 autocast with gradient scaling"


def test_gradient_accumulation_equals_the_large_batch_on_the_first_step(root, tmp_path, device, monkeypatch):
    """Four micro-batches of 8 give the step one batch of 32 gives. BatchNorm normalizes each
    micro-batch with its own statistics (as in every accumulation scheme), so the comparison trains
    what has no BatchNorm in training mode: the head, on a frozen backbone (BatchNorm in eval).
    In fp32 (on CUDA without TF32): what is compared is the accumulation, not rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        for steps in (1, 4):
            metrics = train(
                config(
                    root,
                    epochs=1,
                    max_steps=1,
                    schedule={"size": [28, 28]},
                    accumulate=steps,
                    trainable="head",
                    optimizer="sgd",
                    lr=0.5,
                    amp="off",
                ),
                tmp_path / f"a{steps}",
                progress=False,
                log=quiet,
            )
            assert metrics["steps"] == 1 and metrics["device"].startswith(device.type)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    one, four = (torch.load(tmp_path / f"a{s}" / "model.pt", weights_only=True) for s in (1, 4))
    torch.manual_seed(0)  # the trainer's initialisation of seed 0
    start = build_model("efficientnetv2_s", 10, 1, width_mult=0.25, depth_mult=0.1, small_input=True).state_dict()
    assert not torch.allclose(one["classifier.1.weight"], start["classifier.1.weight"])  # the step moved the head
    for key in one:
        torch.testing.assert_close(four[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
        if not key.startswith("classifier"):
            assert torch.equal(one[key], start[key]), key  # frozen stays put


@pytest.fixture
def deterministic_kernels(device, monkeypatch):
    """On CUDA, deterministic kernels: by default cuDNN may pick convolution-gradient kernels that
    add with atomics, in any order, and two identical runs then differ in their last bits. A CPU
    is deterministic as it is. Warnings, not errors, for ops without a deterministic kernel: the
    test names them if the weights differ."""
    if device.type != "cuda":
        yield
        return
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_checkpoint_and_resume_are_bit_exact_on_the_device(root, tmp_path, device, deterministic_kernels, monkeypatch):
    """A run stopped after its first epoch and resumed from the checkpoint (into a new stage, with
    EMA and the device's autocast: bf16 on CUDA) ends with the uninterrupted run's weights, bit for
    bit. In one process, so CUDA can be set deterministic; tests/test_train.py kills a process on a CPU."""
    settings = dict(epochs=3, limit=96, schedule=TWO_STAGES, ema_decay=0.99)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole = train(config(root, **settings), tmp_path / "whole", progress=False, log=quiet)
        original = train_module.end_epoch

        def stop_after_the_first_epoch(t, folder, stage, epoch, row, log):
            original(t, folder, stage, epoch, row, log)
            if epoch == 0:
                raise KeyboardInterrupt

        monkeypatch.setattr(train_module, "end_epoch", stop_after_the_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            train(config(root, **settings), tmp_path / "stopped", progress=False, log=quiet)
        monkeypatch.setattr(train_module, "end_epoch", original)
        resumed = train(config(root, **settings), tmp_path / "stopped", resume=True, progress=False, log=quiet)
    assert resumed["resumed_at_epoch"] == 2 and whole["resumed_at_epoch"] is None
    assert resumed["device"].startswith(device.type) and resumed["precision"] == whole["precision"]
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("whole", "stopped"))
    nondeterministic = sorted(
        {str(w.message).split(" does not have")[0] for w in caught if "deterministic" in str(w.message)}
    )
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, (
        f"{len(differ)} tensors differ, e.g. {differ[:3]}; ops without a deterministic kernel: {nondeterministic}"
    )
    histories = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("whole", "stopped")]
    assert [h["train_loss"] for h in histories[0]] == [h["train_loss"] for h in histories[1]]


def test_batch_must_split_into_processes_and_micro_batches(root, tmp_path, capsys):
    code = main(
        [
            "--dataset",
            "fashion_mnist",
            "--profile",
            "smoke",
            "--out",
            str(tmp_path / "x"),
            "--set",
            f"data_root={root}",
            "--batch-size",
            "30",
            "--set",
            "accumulate=4",
        ]
    )
    assert code == 2 and "not divisible by 1 process(es) x 4 accumulation step(s)" in capsys.readouterr().err


def test_preflight_runs_every_stage_and_crosses_each_boundary(root, tmp_path, capsys, device):
    code = preflight_main(
        [
            "--dataset",
            "fashion_mnist",
            "--profile",
            "smoke",
            "--out",
            str(tmp_path / "p"),
            "--set",
            f"data_root={root}",
            "--set",
            "limit=null",
            "--epochs",
            "3",
            "--set",
            "schedule={num_stages: 3, size: [20, 28]}",
            "--compile",
            "aot_eager",
            "--set",
            "ema_decay=0.99",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads((tmp_path / "p" / "preflight.json").read_text())
    assert [r["image_size"] for r in rows] == [20, 24, 28]
    for r in rows:
        assert {
            "image_size",
            "batch_size",
            "seconds_per_step",
            "images_per_second",
            "peak_memory_bytes",
            "projected_epoch_seconds",
            "projected_run_seconds",
        } <= set(r)
        if device.type == "cpu":
            assert r["batch_size"] == 8 and r["run_batch_size"] == 64 and "smaller on a CPU" in r["batch_note"]
        else:
            assert r["batch_size"] == r["run_batch_size"] == 64 and r["batch_note"] == ""
        assert r["seconds_per_step"] > 0 and r["peak_memory_bytes"] > 0
        # a stand-in of the dataset on disk: the projection is for the full training split the run will see
        assert r["projected_epoch_seconds"] == pytest.approx(54000 // 64 * 64 / r["images_per_second"])
    assert "projecting for the full fashion_mnist training split (54,000 images)" in out
    assert "projected run on this device" in out and not (tmp_path / "p" / ".preflight").exists()
    assert not (tmp_path / "p" / "checkpoints").exists()  # a preflight leaves no run behind


def test_preflight_refuses_what_training_refuses(root, tmp_path, capsys):
    base = ["--dataset", "fashion_mnist", "--out", str(tmp_path / "p"), "--set", f"data_root={root}"]
    assert preflight_main(base + ["--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert (
        preflight_main(base + ["--profile", "smoke", "--set", "model_overrides={width_mult: 0.25, depth_mult: 0.1}"])
        == 2
    )
    assert "below efficientnetv2_s's minimum 33 px" in capsys.readouterr().err
