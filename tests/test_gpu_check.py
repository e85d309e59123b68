"""benchmarks/gpu_check.py end to end, as the smoke dry run on a CPU: CI proves the script a GPU will run.

The GPU is lent to some tasks only, for minutes, so the script must work the first time it meets one;
here it runs every part (training, both preflights, the tests that take a device) at smoke sizes and
the record it writes is checked value by value.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from formats import make_fashion_mnist
from lib.data import known_train_images
from lib.preflight import GPU_PEAKS, gpu_hours, training_flops
from lib.profiles import config_for
from lib.runs import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """One smoke dry run (CUDA hidden, so a GPU machine runs the dry run too), on stand-in files."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    make_fashion_mnist(tmp / "data", n_train=600, n_test=100)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(tmp / "out"),
            "--smoke",
            "--data-root",
            str(tmp / "data"),
            "--commit",
            "abc1234",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return tmp / "out", json.loads((tmp / "out" / "gpu_check.json").read_text()), run.stdout


def test_the_dry_run_says_so_and_records_what_it_ran_on(record):
    out, data, stdout = record
    import torch

    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log"]  # the device brings back 8 files at most
    assert stdout.startswith("gpu-check DRY RUN: torch") and "DRY RUN on the CPU" in data["summary"][0]
    assert data["dry_run"] is True and data["smoke"] is True and data["passed"] is True
    assert data["commit"] == "abc1234" and data["commit_source"] == "given"
    assert data["torch"] == torch.__version__ == data["environment"]["torch"]
    assert data["environment"]["cuda_available"] is False and data["compatibility"] == []
    assert list(data["parts"]) == ["training", "preflight_fashion_mnist", "tests", "preflight_cifar10"]
    assert all(part["status"] == "passed" for part in data["parts"].values()), data["summary"]
    assert 0 < data["wall_seconds"] < data["budget_seconds"]
    text = (out / "gpu_check.json").read_text()  # committed as a record:
    scratch = os.path.join(tempfile.gettempdir(), "gpu_check.")
    assert str(REPO_ROOT) not in text and scratch not in text and "$SCRATCH/" in text  # no machine's folders
    assert (out / "gpu_check.log").read_text().splitlines()[
        -1
    ] == f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.log'}"


def test_the_training_measures_every_size_and_projects_the_full_run(record):
    training = record[1]["parts"]["training"]
    assert [s["image_size"] for s in training["stages"]] == [28, 50, 80]
    assert [s["epochs"] for s in training["stages"]] == [20, 30, 50]  # the paper profile's phases
    assert [s["train_steps"] for s in training["stages"]] == [4, 2, 2]
    for s in training["stages"]:
        assert s["train_images_per_second"] > 0 and s["step_images_per_second"] > 0 and s["train_peak_memory_bytes"] > 0
        assert s["train_images"] == s["train_steps"] * 16
    assert 0 <= training["stages"][0]["val_accuracy"] <= 1
    assert training["compilations"] == 3 and training["graph_breaks"] == 0  # one graph per size, no breaks
    assert training["compile"] == "compile eager, static shapes" and training["device"] == "cpu"
    per_epoch = known_train_images("fashion_mnist", 0.1) // 16 * 16  # the full split, not the stand-in
    assert training["projected_images_per_epoch"] == per_epoch
    expected = sum(per_epoch / s["train_images_per_second"] * s["epochs"] for s in training["stages"]) / 3600
    assert training["projected_run_hours"] == pytest.approx(expected)
    config = config_for(
        "paper",
        "fashion_mnist",
        model_overrides={"width_mult": 0.25, "depth_mult": 0.1, "small_input": True},
        batch_size=16,
    )
    flops = sum(r["train_flops"] for r in training_flops(config, known_train_images("fashion_mnist", 0.1), 1))
    assert training["train_flops"] == pytest.approx(flops)
    assert training["estimate_hours_at_10_percent"] == pytest.approx(
        {name: gpu_hours(flops, peak, 0.10) for name, peak in GPU_PEAKS.items()}
    )
    assert "share_of_peak" not in training  # a CPU has no entry in GPU_PEAKS


def test_the_preflights_and_the_tests_ran(record):
    parts = record[1]["parts"]
    for name, sizes in (("preflight_fashion_mnist", [28, 50, 80]), ("preflight_cifar10", [128, 150, 200])):
        rows = parts[name]["rows"]
        assert [r["image_size"] for r in rows] == sizes and all(r["images_per_second"] > 0 for r in rows), name
        assert parts[name]["projected_run_hours"] == pytest.approx(sum(r["projected_run_seconds"] for r in rows) / 3600)
        assert "-m lib.preflight" in parts[name]["command"] and "--profile paper" in parts[name]["command"]
    assert "real format" in parts["preflight_cifar10"]["note"]
    tests = parts["tests"]
    assert (tests["passed"], tests["failed"], tests["error"]) == (1, 0, 0)
    assert tests["cases"][0]["test"].endswith("test_device_loader_epochs_and_shards")
    assert "-m on_device" in tests["command"]
