import os
import subprocess
import sys

import pytest
import torch

from headless import CHROMIUM_HINT, chromium
from lib.data import FASHION_MNIST_HINT, fashion_mnist_available
from lib.runs import REPO_ROOT

NOTEBOOK_01 = REPO_ROOT / "notebooks" / "01_data_exploration.ipynb"
ON_DEVICE = "on_device"  # the marker of tests that take ``device``: what benchmarks/gpu_check.py runs on CUDA


def pytest_configure(config):
    config.addinivalue_line("markers", f"{ON_DEVICE}: takes the device fixture (CUDA where torch sees it)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(ON_DEVICE)


@pytest.fixture(scope="session")
def device():
    """CUDA when torch sees it, else the CPU: one test file checks both, and the GPU check
    (``benchmarks/gpu_check.py``) selects these tests with ``-m on_device`` to run them on CUDA."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def fashion_mnist_root():
    """The real data's root, or a skip that says how to get it."""
    if not fashion_mnist_available(REPO_ROOT / "data"):
        pytest.skip(FASHION_MNIST_HINT)
    return REPO_ROOT / "data"


@pytest.fixture(scope="session")
def chromium_path():
    """Headless Chromium's path, or a skip that says how to get it (ask for it before slow fixtures)."""
    path = chromium()
    if path is None:
        pytest.skip(CHROMIUM_HINT)
    return path


@pytest.fixture(scope="session")
def executed_01(tmp_path_factory, fashion_mnist_root):
    """Notebook 01 executed once by papermill (smoke profile), shared by the slide and JupyterLab tests."""
    tmp = tmp_path_factory.mktemp("executed_01")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("MPLBACKEND", None)  # MPLBACKEND=Agg would stop the kernel from embedding figures
    out = tmp / "notebooks" / NOTEBOOK_01.name
    out.parent.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "-k",
            "python3",
            "--execution-timeout",
            "300",
            "-p",
            "profile",
            "smoke",
            "-p",
            "figures_dir",
            str(tmp / "figures"),
            str(NOTEBOOK_01),
            str(out),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"papermill failed on {NOTEBOOK_01.name}:\n{run.stderr[-3000:]}"
    return out
