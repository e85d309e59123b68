"""Experiments that can carry a verdict: arms x seeds, their mean and spread, and the words for it.

A study trains every arm (one edit of a base configuration) with every seed through
``run_or_reuse`` (finished runs are reused), then summarizes each arm as seeds, mean and standard
deviation of test accuracy. ``verdict`` compares two arms the way the notebooks say it in words: a
difference counts only when the arms' seed ranges do not overlap; otherwise it is within noise.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import re
from pathlib import Path

import pandas as pd
import torch

from .profiles import TrainConfig, config_for, merge
from .runs import RunFolder, display_path, resolve
from .train import run_or_reuse

SUMMARY_COLUMNS = ["seeds", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_min", "test_accuracy_max"]


def run_arms(profile: str, dataset: str, study: str, arms: dict[str, dict], seeds: list[int], parent: Path, *,
             retrain: bool = False, processes: int | None = None, reuse_from: Path | list[Path] | None = None,
             train_missing: bool = True, log=print, **shared) -> pd.DataFrame:
    """One row per (arm, seed): the arm's settings merged into the study's (``config_for``), trained
    into ``parent/<arm>/<seed and settings key>/`` or reused. ``shared`` goes to every arm.

    ``reuse_from``: folders of other studies' runs (a notebook's ``run.runs``, the records the repository
    keeps); an arm whose settings equal a finished run there is not trained again (notebook 05's baseline
    is notebook 04's fixed-size arm on the CPU profiles: same network, recipe, budget and seeds).
    ``train_missing=False`` trains nothing: the rows are the runs found (notebook 02 on a CPU shows the
    kept ResNet runs only, longer than ``make reproduce`` has).

    On a CPU the runs go to ``processes`` worker processes (default: one per core, at most 4),
    each with its share of the threads: single-thread runs side by side do more work than the same
    runs one after another on all threads (``benchmarks/cpu_training.py --only threads``). Every run
    then shares the machine alike, so their seconds compare with each other.
    """
    jobs = [(arm, seed, config_for(profile, dataset, study, seed=seed, **merge(copy.deepcopy(shared), edits)))
            for arm, edits in arms.items() for seed in seeds]
    roots = [] if retrain or reuse_from is None else reuse_from if isinstance(reuse_from, list) else [reuse_from]
    found = [next((m for root in roots if (m := finished_elsewhere(config, root))), None) for _, _, config in jobs]
    for (arm, seed, _), metrics in zip(jobs, found):
        if metrics:
            log(f"{arm}, seed {seed}: the same settings as the finished {metrics['run_dir']}, reused")
        elif not train_missing:
            log(f"{arm}, seed {seed}: no finished run with these settings, not trained here")
    if not train_missing:
        jobs, found = [j for j, m in zip(jobs, found) if m], [m for m in found if m]
    todo = [i for i, metrics in enumerate(found) if metrics is None]
    processes = processes or default_processes(jobs[0][2].device if jobs else "cpu", len(todo))
    tasks = [(jobs[i][2], Path(parent) / slug(jobs[i][0]), retrain) for i in todo]
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes, initializer=_share_threads,
                                                       initargs=(processes,)) as pool:
            for i, metrics in zip(todo, pool.imap(_run, tasks)):
                log(f"{jobs[i][0]}, seed {jobs[i][1]}: test accuracy {metrics['test_accuracy']:.2%} "
                    f"({metrics['train_seconds']:.0f} s) -> {metrics['run_dir']}")
                found[i] = metrics
    else:
        for i, (config, folder, retrain) in zip(todo, tasks):
            found[i] = run_or_reuse(config, folder, retrain=retrain, log=log)
    rows = []
    for (arm, seed, _), metrics in zip(jobs, found):
        history = pd.read_csv(resolve(metrics["run_dir"]) / "metrics.csv")
        rows.append({"arm": arm, "seed": seed, "test_accuracy": metrics["test_accuracy"],
                         "train_accuracy": history.train_accuracy.iloc[-1], "val_accuracy": history.val_accuracy.iloc[-1],
                         "train_seconds": metrics["train_seconds"], "train_flops": metrics.get("train_flops"),
                         "images_per_second": history.train_images_per_second.median(), "epochs": metrics["epochs"],
                         "model": metrics["model"], "run_dir": metrics["run_dir"]})
    return pd.DataFrame(rows)


def finished_elsewhere(config: TrainConfig, root: Path) -> dict | None:
    """The metrics of a finished run under ``root`` (any depth) made with exactly these settings;
    their ``run_dir`` is where it was found (a kept record's metrics name the folder it was trained in)."""
    identity, defaults = config.identity(), TrainConfig().identity()
    for path in sorted(resolve(root).glob(f"**/seed{config.seed}-*/metrics.json")):
        metrics = RunFolder(path.parent).finished_with(identity, defaults)
        if metrics is not None:
            return {**metrics, "run_dir": display_path(path.parent)}
    return None


def default_processes(device: str, jobs: int) -> int:
    """One run per core on a CPU (at most 4, each needs its own memory); one at a time on a GPU."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(jobs, os.cpu_count() or 1, 4))


def _share_threads(processes: int) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def _run(task) -> dict:
    config, folder, retrain = task
    return run_or_reuse(config, folder, retrain=retrain, progress=False, log=lambda *a, **k: None)


def summarize(runs: pd.DataFrame, by: str = "arm") -> pd.DataFrame:
    """Per arm, in the order the arms ran: seeds, mean / std / min / max test accuracy, mean seconds."""
    grouped = runs.groupby(by, sort=False)
    table = pd.DataFrame({
        "seeds": grouped.seed.count(),
        "test_accuracy_mean": grouped.test_accuracy.mean(),
        "test_accuracy_std": grouped.test_accuracy.std(ddof=1).fillna(0.0),
        "test_accuracy_min": grouped.test_accuracy.min(),
        "test_accuracy_max": grouped.test_accuracy.max(),
        "train_accuracy_mean": grouped.train_accuracy.mean(),
        "train_seconds_mean": grouped.train_seconds.mean(),
    })
    return table.reset_index()


def verdict(summary: pd.DataFrame, arm: str, against: str, by: str = "arm") -> str:
    """'higher' / 'lower' when the seed ranges of ``arm`` and ``against`` do not overlap, else
    'within noise'. With 2-3 seeds a range is all a spread can honestly say."""
    a, b = (summary.set_index(by).loc[name] for name in (arm, against))
    if a.test_accuracy_min > b.test_accuracy_max:
        return "higher"
    if a.test_accuracy_max < b.test_accuracy_min:
        return "lower"
    return "within noise"


def slug(name: str) -> str:
    """A folder name for an arm: 'depth multiplier 0.1' -> 'depth_multiplier_01'."""
    return re.sub(r"_+", "_", "".join(ch if ch.isalnum() else "_" for ch in name.replace(".", ""))).strip("_").lower()
