"""Experiments that can carry a verdict: arms x seeds, their mean and spread, and the words for it.

A study trains every arm (one edit of a base configuration) with every seed through
``run_or_reuse`` (finished runs are reused), then summarizes each arm as seeds, mean and standard
deviation of test accuracy. ``verdict`` compares two arms the way the notebooks say it in words: a
difference counts only when the arms' seed ranges do not overlap; otherwise it is within noise.
"""
from __future__ import annotations

import copy
import json
import multiprocessing
import os
import re
from pathlib import Path

import pandas as pd
import torch

from .augment import BatchAugmenter
from .data import load_dataset
from .models import build_model
from .profiles import TrainConfig, config_for, merge
from .progressive import schedule_from_spec
from .runs import RunFolder, display_path, finished_runs, resolve
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
    kept ResNet runs, an hour of training, only).

    On a CPU the runs go to ``processes`` worker processes (default: one per core, at most 4),
    each with its share of the threads: on 2 cores, two single-thread runs side by side do ~1.5x
    the work of one two-thread run (``benchmarks/cpu_training.py --only threads``). Every run
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


# ---------------------------------------------------------------- what the notebooks show of a study

def arm_configs(profile: str, dataset: str, study: str, arms: dict[str, dict], seed: int = 0,
                **shared) -> dict[str, TrainConfig]:
    """Each arm's settings as ``run_arms`` trains them, at ``seed``: what ``plan_table`` shows."""
    return {arm: config_for(profile, dataset, study, seed=seed, **merge(copy.deepcopy(shared), edits))
            for arm, edits in arms.items()}


def plan_table(configs: dict[str, TrainConfig], seeds: list[int]) -> pd.DataFrame:
    """A study's design before it trains: per arm the network, seeds, epochs, image sizes, batch,
    optimizer, training images and regularization, so every number further down says what it
    is of."""
    def first_to_last(values) -> str:
        values = list(dict.fromkeys(values))
        return " -> ".join(f"{v:g}" for v in values)

    rows = []
    for arm, c in configs.items():
        stages = schedule_from_spec(c.schedule, c.epochs).rows()
        scale = {k: v for k, v in c.model_overrides.items() if k in ("width_mult", "depth_mult")}
        rows.append({"arm": arm, "model": c.model + "".join(f", {k} {v:g}" for k, v in scale.items()),
                     "seeds": ", ".join(map(str, seeds)), "epochs": c.epochs,
                     "image size (px)": first_to_last(s["image_size"] for s in stages),
                     "batch": c.batch_size, "optimizer": f"{c.optimizer}, lr {c.lr:g}",
                     "images per split": "all" if c.limit is None else c.limit,
                     "dropout": first_to_last(s["dropout"] for s in stages),
                     "stochastic depth": first_to_last(s["drop_path"] for s in stages)})
    return pd.DataFrame(rows).set_index("arm")


VERDICT_WORDS = {"higher": "higher, by more than the seed-to-seed spread",
                 "lower": "lower, by more than the seed-to-seed spread",
                 "within noise": "within the seed-to-seed spread: no difference shown"}


def verdict_sentence(summary: pd.DataFrame, arm: str, against: str, by: str = "arm") -> str:
    """``verdict`` as the sentence a notebook prints: both arms' means and seed ranges, the gap
    in points and what the seeds allow to say about it."""
    rows = summary.set_index(by)

    def described(name: str) -> str:
        r = rows.loc[name]
        return (f"{r.test_accuracy_mean:.2%} (seeds {r.test_accuracy_min:.2%}"
                f"-{r.test_accuracy_max:.2%})")

    gap = (rows.loc[arm].test_accuracy_mean - rows.loc[against].test_accuracy_mean) * 100
    words = VERDICT_WORDS[verdict(summary, arm, against, by)]
    return f"{arm}: {described(arm)} against {against}: {described(against)}, {gap:+.2f} points, {words}."


def per_run_table(*roots: str | Path) -> pd.DataFrame:
    """One row per finished run under ``roots`` (``runs.finished_runs``: a later root's copy of a
    run wins): what it trained, what it measured, on which machine and by which command."""
    rows = []
    for relative, path in finished_runs(*roots).items():
        m = json.loads(path.read_text())
        if "test_accuracy" not in m:
            continue
        rows.append(_run_row(relative.parts, m, path.with_name("config.json")))
    return pd.DataFrame(rows, columns=PER_RUN_COLUMNS)


PER_RUN_COLUMNS = ["dataset", "model", "profile", "recipe", "settings", "seed", "test accuracy",
                   "epochs", "wall seconds", "train_flops", "hardware", "torch", "command"]


def _run_row(parts: tuple[str, ...], m: dict, config: Path) -> dict:
    """A run folder is ``<dataset>/<profile>/<experiment...>/<seed and settings key>``."""
    experiment = parts[2:-1] if parts[-1].startswith("seed") else parts[2:]
    identity = json.loads(config.read_text()).get("identity", {}) if config.is_file() else {}
    settings = {k: v for k, v in identity.items() if k != "seed"}
    return {"dataset": m.get("dataset", parts[0]), "model": m.get("model", "?"),
            "profile": m.get("profile") or parts[1], "recipe": "/".join(experiment) or parts[-1],
            "settings": json.dumps(settings, sort_keys=True, default=str), "seed": m.get("seed"),
            "test accuracy": m["test_accuracy"], "epochs": m.get("epochs"),
            "wall seconds": m["wall_seconds"], "train_flops": m.get("train_flops"),
            "hardware": machine(m), "torch": m.get("environment", {}).get("torch"),
            "command": m.get("command", "?")}


def machine(metrics: dict) -> str:
    """The machine a run measured its seconds on, from its metrics: CPU or GPU name, cores and the
    vector extensions that set a CPU's speed."""
    env = metrics.get("environment", {})
    name = f"{env.get('device', metrics.get('device', '?'))}, {env.get('cpu_count', '?')} CPU cores"
    return name + (f" ({env['cpu_flags']})" if env.get("cpu_flags") else "")


def run_machine(run_dir: str | Path) -> str:
    """``machine`` of the finished run in ``run_dir``."""
    return machine(json.loads((resolve(run_dir) / "metrics.json").read_text()))


def recipes_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe: the runs whose settings differ in nothing but the seed, as their
    number of seeds, mean, spread and range of test accuracy, mean time and compute."""
    keys = ["dataset", "model", "profile", "recipe", "settings"]
    grouped = per_run.groupby(keys, sort=False)
    table = grouped.agg(seeds=("seed", "count"), test_accuracy_mean=("test accuracy", "mean"),
                        test_accuracy_std=("test accuracy", "std"),
                        test_accuracy_min=("test accuracy", "min"),
                        test_accuracy_max=("test accuracy", "max"), epochs=("epochs", "first"),
                        wall_seconds=("wall seconds", "mean"), train_flops=("train_flops", "mean"),
                        hardware=("hardware", "first"), torch=("torch", "first"),
                        command=("command", "first")).reset_index()
    table["test_accuracy_std"] = table.test_accuracy_std.fillna(0.0)
    return table.drop(columns="settings")


def predict_test_split(run_dir: str | Path, data_root: str | Path = "data"):
    """A finished run's predictions on its hold-out test split, from its ``model.pt`` and
    ``config.json``: the same weights, split, preprocessing and flip TTA as its own test number.
    Returns (the Dataset, the predicted classes)."""
    folder = resolve(run_dir)
    saved = json.loads((folder / "config.json").read_text())
    c, signature = saved["config"], saved["signature"]
    if c.get("pretrained") or c.get("preprocessing") == "weights":
        raise ValueError(f"{display_path(folder)} uses pretrained preprocessing: not read here")
    data = load_dataset(c["dataset"], resolve(data_root), val_fraction=c["val_fraction"],
                        seed=c["seed"], limit=c["limit"], download=False)
    model = build_model(signature["model"], signature["num_classes"], signature["in_channels"],
                        **signature["overrides"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    size = saved["schedule"][-1]["image_size"]
    transform = BatchAugmenter(data.num_classes, size, data.mean, data.std,
                               resize_mode=c.get("resize_mode", "resize")).eval_transform
    predicted = []
    with torch.no_grad():
        model.eval()
        for start in range(0, len(data.test), 500):
            x = transform(data.test.images[start:start + 500])
            logits = model(x)
            if c.get("tta_flip"):
                logits = (logits + model(x.flip(3))) / 2
            predicted.append(logits.argmax(1))
    return data, torch.cat(predicted)
