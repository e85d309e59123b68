"""What every numbered notebook does first and last: check its parameters, seed, find its folders.

Papermill injects parameters as literals; this is where a bad value becomes a one-line error
that names it, before any work starts, instead of a traceback deep inside training. ``start``
also records which notebook is running with which parameters, so every training run it makes
names the command that produced it (``lib.runs.command``).
"""

from __future__ import annotations

import os
import random
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import runs
from .data import KNOWN_DATASETS
from .profiles import PROFILES


@dataclass
class NotebookRun:
    notebook: str
    dataset: str
    profile: str
    seed: int
    data_root: Path
    out: Path  # figures/<dataset>/ (or the folder a test asked for)
    runs: Path  # <runs_dir>/<dataset>/<profile>/: training runs (checkpoints, metrics)

    def save_figure(self, fig, name: str) -> Path:
        """Save as PNG under ``out`` (what the README and slides link to) and return the path."""
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def write_json(self, name: str, payload: dict) -> Path:
        """Write ``payload`` next to the figures, with the parameters and machine that produced it."""
        path = self.out / name
        parameters = {k: runs.display_path(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        runs.write_json(
            path,
            _portable(
                {"parameters": parameters, "command": runs.command(), "environment": runs.environment(), **payload}
            ),
        )
        return path


def _portable(value):
    """Paths inside the repository as repository-relative text, in every string of a payload: the JSON
    next to the figures is committed, and one clone's absolute folder means nothing in another."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if isinstance(value, (str, Path)):
        return str(value).replace(f"{runs.REPO_ROOT}{os.sep}", "").replace(str(runs.REPO_ROOT), ".")
    return value


def start(
    notebook: str,
    dataset: str,
    profile: str,
    seed: int = 0,
    figures_dir: str = "figures",
    data_root: str = "data",
    runs_dir: str = "runs",
) -> NotebookRun:
    """Validate a notebook's parameters, fix the seeds, make its output folder, record its command."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    key = str(dataset).lower().replace("-", "_")
    if (
        key not in KNOWN_DATASETS
        and not runs.resolve(data_root).joinpath(dataset).is_dir()
        and not Path(dataset).is_dir()
    ):
        raise ValueError(
            f"unknown dataset {dataset!r}: known ones are {', '.join(KNOWN_DATASETS)}, or the path of an image folder"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed_everything(seed)
    out = runs.resolve(figures_dir) / Path(key).name
    out.mkdir(parents=True, exist_ok=True)
    os.environ[runs.NOTEBOOK_ENV] = shlex.join(
        [f"notebooks/{notebook}.ipynb", "-p", "dataset", key, "-p", "profile", profile, "-p", "seed", str(seed)]
    )
    return NotebookRun(
        notebook, key, profile, seed, runs.resolve(data_root), out, runs.resolve(runs_dir) / Path(key).name / profile
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def transfer_targets(dataset: str, transfer_datasets) -> list[str]:
    """The datasets to transfer to: ``transfer_datasets``, with ``dataset`` first when it is one of
    them (so ``-p dataset cifar10`` leads with CIFAR-10; Fashion-MNIST changes nothing)."""
    if isinstance(transfer_datasets, str):
        transfer_datasets = [transfer_datasets]
    if not transfer_datasets:
        raise ValueError(f"transfer_datasets is empty: name at least one of {', '.join(KNOWN_DATASETS)}")
    spelled = {name.replace("_", ""): name for name in KNOWN_DATASETS}  # CIFAR-100, cifar_100, ...
    targets = [spelled.get(str(t).lower().replace("-", "").replace("_", ""), str(t)) for t in transfer_datasets]
    unknown = [t for t in targets if t not in KNOWN_DATASETS]
    if unknown:
        raise ValueError(f"unknown transfer dataset(s) {unknown}: choose from {', '.join(KNOWN_DATASETS)}")
    targets = list(dict.fromkeys(targets))
    return sorted(targets, key=lambda t: t != dataset)


WARNING = re.compile(r"\w*Warning\b")


def noisy_outputs(outputs) -> list[str]:
    """What a clean run of a notebook cell never shows, one line each: an error, anything on stderr
    (warnings, tracebacks, progress bars, logging) and printed or displayed text naming a Warning.

    ``make test`` fails the nbval cell that shows one (conftest.py); tests/test_notebook_outputs.py
    reads the notebooks ``make reproduce`` executed."""
    found, stderr = [], []
    for out in outputs:
        kind = out.get("output_type")
        text = out.get("text", "") if kind == "stream" else out.get("data", {}).get("text/plain", "")
        text = "".join(text) if isinstance(text, list) else text
        if kind == "error":
            found.append(f"error: {out.get('ename')}: {out.get('evalue')}")
        elif kind == "stream" and out.get("name") == "stderr":
            if not stderr:
                found.append(None)  # all of the cell's stderr in one line, where it started
            stderr.append(text)
        elif WARNING.search(text):
            line = next(line for line in text.splitlines() if WARNING.search(line))
            found.append(f"{kind} names a warning: {line.strip()[:300]!r}")
    return [f"stderr: {''.join(stderr).strip()[:300]!r}" if line is None else line for line in found]
