"""What every numbered notebook does first and last: check its parameters, seed, find its folders.

Papermill injects parameters as literals; this is where a bad value becomes a one-line error
that names it, before any work starts, instead of a traceback deep inside training.
"""
from __future__ import annotations

import json
import os
import platform
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data import KNOWN_DATASETS

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "quick", "paper")


@dataclass
class NotebookRun:
    notebook: str
    dataset: str
    profile: str
    seed: int
    data_root: Path
    out: Path          # figures/<dataset>/ (or the folder a test asked for)
    runs: Path         # <runs_dir>/<dataset>/<profile>/: training runs (checkpoints, metrics)

    def save_figure(self, fig, name: str) -> Path:
        """Save as PNG under ``out`` (what the README and slides link to) and return the path."""
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def write_json(self, name: str, payload: dict) -> Path:
        """Write ``payload`` next to the figures, with the parameters that produced it."""
        path = self.out / name
        record = {"parameters": {k: str(v) for k, v in asdict(self).items()},
                  "environment": environment(), **payload}
        tmp = path.with_suffix(path.suffix + ".partial")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path


def start(notebook: str, dataset: str, profile: str, seed: int = 0,
          figures_dir: str = "figures", data_root: str = "data", runs_dir: str = "runs") -> NotebookRun:
    """Validate a notebook's parameters, fix the seeds and make its output folder."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    key = str(dataset).lower().replace("-", "_")
    if key not in KNOWN_DATASETS and not _resolve(data_root).joinpath(dataset).is_dir() \
            and not Path(dataset).is_dir():
        raise ValueError(f"unknown dataset {dataset!r}: known ones are {', '.join(KNOWN_DATASETS)}, "
                         f"or the path of an image folder")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed_everything(seed)
    out = _resolve(figures_dir) / Path(key).name
    out.mkdir(parents=True, exist_ok=True)
    runs = _resolve(runs_dir) / Path(key).name / profile
    return NotebookRun(notebook, key, profile, seed, _resolve(data_root), out, runs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def environment() -> dict:
    """Hardware and software versions, recorded with every result."""
    import torchvision
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "device": device,
            "cpu_count": os.cpu_count(), "platform": platform.platform()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _resolve(path: str | os.PathLike) -> Path:
    """Relative paths are relative to the repository, wherever the kernel was started."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p
