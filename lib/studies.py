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
from .profiles import TrainConfig, config_for, merge, study
from .progressive import REGULARIZERS, schedule_from_spec
from .runs import RunFolder, display_path, finished_runs, resolve
from .train import run_or_reuse

SUMMARY_COLUMNS = ["seeds", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_min", "test_accuracy_max"]


def run_arms(
    profile: str,
    dataset: str,
    study: str,
    arms: dict[str, dict],
    seeds: list[int],
    parent: Path,
    *,
    retrain: bool = False,
    processes: int | None = None,
    reuse_from: Path | list[Path] | None = None,
    train_missing: bool = True,
    log=print,
    **shared,
) -> pd.DataFrame:
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
    jobs = [
        (arm, seed, config_for(profile, dataset, study, seed=seed, **merge(copy.deepcopy(shared), edits)))
        for arm, edits in arms.items()
        for seed in seeds
    ]
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
        with multiprocessing.get_context("spawn").Pool(
            processes, initializer=_share_threads, initargs=(processes,)
        ) as pool:
            for i, metrics in zip(todo, pool.imap(_run, tasks)):
                log(
                    f"{jobs[i][0]}, seed {jobs[i][1]}: test accuracy {metrics['test_accuracy']:.2%} "
                    f"({metrics['train_seconds']:.0f} s) -> {metrics['run_dir']}"
                )
                found[i] = metrics
    else:
        for i, (config, folder, retrain) in zip(todo, tasks):
            found[i] = run_or_reuse(config, folder, retrain=retrain, log=log)
    rows = []
    for (arm, seed, _), metrics in zip(jobs, found):
        history = pd.read_csv(resolve(metrics["run_dir"]) / "metrics.csv")
        rows.append(
            {
                "arm": arm,
                "seed": seed,
                "test_accuracy": metrics["test_accuracy"],
                "train_accuracy": history.train_accuracy.iloc[-1],
                "val_accuracy": history.val_accuracy.iloc[-1],
                "train_seconds": metrics["train_seconds"],
                "train_flops": metrics.get("train_flops"),
                "images_per_second": history.train_images_per_second.median(),
                "epochs": metrics["epochs"],
                "model": metrics["model"],
                "run_dir": metrics["run_dir"],
            }
        )
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
    table = pd.DataFrame(
        {
            "seeds": grouped.seed.count(),
            "test_accuracy_mean": grouped.test_accuracy.mean(),
            "test_accuracy_std": grouped.test_accuracy.std(ddof=1).fillna(0.0),
            "test_accuracy_min": grouped.test_accuracy.min(),
            "test_accuracy_max": grouped.test_accuracy.max(),
            "train_accuracy_mean": grouped.train_accuracy.mean(),
            "train_seconds_mean": grouped.train_seconds.mean(),
        }
    )
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


# ---------------------------------------------------------------- progressive learning's readings


def histories(runs: pd.DataFrame) -> dict[tuple[str, int], pd.DataFrame]:
    """Each run's per-epoch metrics (``metrics.csv``), keyed by (arm, seed)."""
    return {(r.arm, r.seed): pd.read_csv(resolve(r.run_dir) / "metrics.csv") for r in runs.itertuples()}


def seconds_to(history: pd.DataFrame, accuracy: float) -> float:
    """Training seconds (validation and any re-estimation included) until the first epoch whose
    validation accuracy reaches ``accuracy``; NaN when no epoch does."""
    reached = history.index[history.val_accuracy >= accuracy]
    return float(history.epoch_seconds.cumsum()[reached[0]]) if len(reached) else float("nan")


def switch_readings(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run, validation accuracy around its first change of image size: at the old size before
    it, at the new size before any step there (as it is, and with BatchNorm re-estimated where the
    run did that), one epoch later, and at the end. Runs without a size change read NaN around it."""
    rows = []
    for (arm, seed), h in histories(runs).items():
        changed = h.index[h.image_size.diff().fillna(0) != 0]
        row = {"arm": arm, "seed": seed, "final": h.val_accuracy.iloc[-1]}
        if len(changed):
            at = changed[0]
            row.update(
                sizes=f"{h.image_size[at - 1]} -> {h.image_size[at]} px",
                before=h.val_accuracy[at - 1],
                switched=h.get("switch_val_accuracy", pd.Series(dtype=float)).get(at, float("nan")),
                recalibrated=h.get("switch_val_accuracy_recalibrated", pd.Series(dtype=float)).get(at),
                after_one_epoch=h.val_accuracy[at],
                recalibration_seconds=h.get("recalibration_seconds", pd.Series(dtype=float)).get(at),
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.merge(runs[["arm", "seed", "test_accuracy"]], on=["arm", "seed"])


def time_to_target(runs: pd.DataFrame, target: float, baseline: str) -> pd.DataFrame:
    """Per arm: test accuracy (seeds, mean, spread), training seconds and seconds to ``target``
    validation accuracy (a mean only when every seed reached it), each arm's time ratio against
    ``baseline`` and the verdict on accuracy (``verdict``)."""
    curves = histories(runs)
    runs = runs.assign(
        seconds_to_target=[seconds_to(curves[r.arm, r.seed], target) for r in runs.itertuples()],
        train_seconds_total=[curves[r.arm, r.seed].epoch_seconds.sum() for r in runs.itertuples()],
    )
    table = summarize(runs).set_index("arm")
    by_arm = runs.groupby("arm", sort=False)
    table["train_seconds_total_mean"] = by_arm.train_seconds_total.mean()
    table["train_flops_mean"] = by_arm.train_flops.mean()
    table["seeds_reaching_target"] = by_arm.seconds_to_target.count()
    table["seconds_to_target_mean"] = by_arm.seconds_to_target.agg(lambda s: s.mean(skipna=False))
    base = table.loc[baseline]
    table["time_ratio"] = base.train_seconds_total_mean / table.train_seconds_total_mean
    table["time_to_target_ratio"] = base.seconds_to_target_mean / table.seconds_to_target_mean
    table["vs_baseline"] = [
        "-" if arm == baseline else verdict(table.reset_index(), arm, baseline) for arm in table.index
    ]
    return table


def regularization_verdict(table: pd.DataFrame, small: str, large: str, weak: str, strong: str) -> dict:
    """The paper's question on a size x regularization grid: does the larger size gain more (or lose
    less) from the stronger regularization? ``table`` has one row per (size, strength) with seed
    ``test_accuracy_min``/``max``/``mean``. The gain's range at each size runs from the worst to the best
    seed pairing; 'agrees' when the large size's whole range is above the small size's, 'disagrees'
    when below, else 'within noise'."""

    def gain(size: str) -> tuple[float, float, float]:
        s, w = table.loc[(size, strong)], table.loc[(size, weak)]
        return (
            s.test_accuracy_mean - w.test_accuracy_mean,
            s.test_accuracy_min - w.test_accuracy_max,
            s.test_accuracy_max - w.test_accuracy_min,
        )

    (small_gain, small_low, small_high), (large_gain, large_low, large_high) = gain(small), gain(large)
    word = "agrees" if large_low > small_high else "disagrees" if large_high < small_low else "within noise"
    return {
        "verdict": word,
        "gain_small": small_gain,
        "gain_small_range": (small_low, small_high),
        "gain_large": large_gain,
        "gain_large_range": (large_low, large_high),
    }


def study_runs(
    profile: str, dataset: str, name: str, runs_root: Path, records: Path, *, retrain: bool = False, log=print, **shared
) -> tuple[dict, pd.DataFrame, bool]:
    """A notebook study's plan, its runs, and whether they are the kept records.

    A ``kept`` study (longer than ``make reproduce`` has) shows the finished runs found under
    ``records`` (``figures/records/<dataset>``) and ``runs_root`` and trains nothing, unless ``retrain``;
    any other study trains what is missing (seconds on the smoke profile). A kept study reads its own
    records first (``records/<profile>/<name>``), so that its table shows the runs that were timed
    together, not a run of the same settings made elsewhere (this notebook's main run, another study)."""
    plan = study(profile, name)
    kept = plan.get("kept", False) and not retrain
    seeds = list(range(plan["seeds"]))
    own = sorted(Path(records).glob(f"*/{name}")) if kept else []
    roots = [*own, Path(records), Path(runs_root)] if kept else [Path(runs_root), Path(records)]
    runs = run_arms(
        profile,
        dataset,
        name,
        plan["arms"],
        seeds,
        Path(runs_root) / name,
        retrain=retrain,
        reuse_from=roots,
        train_missing=not kept,
        log=log,
        **shared,
    )
    return plan, runs, kept


def study_table(profile: str, dataset: str, name: str, runs: pd.DataFrame) -> pd.DataFrame:
    """What a study ran, one row per arm: its edit of the study's settings, the stages' sizes and epochs,
    and the seeds found, so a student sees the budget behind every verdict."""
    plan, rows = study(profile, name), []
    for arm, edits in plan["arms"].items():
        config = config_for(profile, dataset, name, **copy.deepcopy(edits))
        found = runs[runs.arm == arm].seed if len(runs) else []
        stages = schedule_from_spec(config.schedule, config.epochs)
        other = {k: v for k, v in edits.items() if k not in ("schedule", "image_size")}
        rows.append(
            {
                "arm": arm,
                "sizes (px)": " -> ".join(str(st.image_size) for st in stages),
                "epochs per stage": " + ".join(str(st.epochs) for st in stages),
                "regularization": ", ".join(
                    f"{k.replace('_', ' ')} {getattr(stages[0], k):g}"
                    + (f" -> {getattr(stages[-1], k):g}" if getattr(stages[-1], k) != getattr(stages[0], k) else "")
                    for k in REGULARIZERS
                    if any(getattr(st, k) for st in stages)
                )
                or "-",
                "other settings": ", ".join(f"{k}={v}" for k, v in other.items()) or "-",
                "training images": config.limit or "all",
                "seeds": ", ".join(map(str, found)) or "none found",
            }
        )
    return pd.DataFrame(rows).set_index("arm")


def machine_of(runs: pd.DataFrame) -> str:
    """The machine the runs trained on, in words (``machine``), from the first run."""
    return run_machine(runs.run_dir.iloc[0]) if len(runs) else "no runs"


def comparison_record(runs: pd.DataFrame, table: pd.DataFrame, target: float, baseline: str) -> dict:
    """A comparison as JSON: per arm the seeds, test accuracies, training seconds, seconds to the target
    (null where a seed never reached it) and FLOPs, its verdict, and the time ratios against the baseline
    (null where an arm's mean to the target cannot be formed)."""
    curves, arms = histories(runs), {}
    for arm, group in runs.groupby("arm", sort=False):
        reached = [seconds_to(curves[arm, s], target) for s in group.seed]
        arms[arm] = {
            "seeds": group.seed.tolist(),
            "test_accuracies": group.test_accuracy.tolist(),
            "training_seconds": [float(curves[arm, s].epoch_seconds.sum()) for s in group.seed],
            "seconds_to_target": [None if pd.isna(r) else r for r in reached],
            "train_flops": group.train_flops.tolist(),
            "verdict_vs_baseline": table.loc[arm, "vs_baseline"],
        }
    ratios = {
        arm: {
            "training_time": _number(table.loc[arm, "time_ratio"]),
            "time_to_target": _number(table.loc[arm, "time_to_target_ratio"]),
            "train_flops": _number(table.loc[baseline, "train_flops_mean"] / table.loc[arm, "train_flops_mean"]),
        }
        for arm in table.index
        if arm != baseline
    }
    return {"target_accuracy": target, "baseline": baseline, "speedup_vs_baseline": ratios, "arms": arms}


def _number(value) -> float | None:
    return None if pd.isna(value) else float(value)


# ---------------------------------------------------------------- what the notebooks show of a study


def arm_configs(
    profile: str, dataset: str, study: str, arms: dict[str, dict], seed: int = 0, **shared
) -> dict[str, TrainConfig]:
    """Each arm's settings as ``run_arms`` trains them, at ``seed``: what ``plan_table`` shows."""
    return {
        arm: config_for(profile, dataset, study, seed=seed, **merge(copy.deepcopy(shared), edits))
        for arm, edits in arms.items()
    }


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
        rows.append(
            {
                "arm": arm,
                "model": c.model + "".join(f", {k} {v:g}" for k, v in scale.items()),
                "seeds": ", ".join(map(str, seeds)),
                "epochs": c.epochs,
                "image size (px)": first_to_last(s["image_size"] for s in stages),
                "batch": c.batch_size,
                "optimizer": f"{c.optimizer}, lr {c.lr:g}",
                "images per split": "all" if c.limit is None else c.limit,
                "dropout": first_to_last(s["dropout"] for s in stages),
                "stochastic depth": first_to_last(s["drop_path"] for s in stages),
            }
        )
    return pd.DataFrame(rows).set_index("arm")


VERDICT_WORDS = {
    "higher": "higher, by more than the seed-to-seed spread",
    "lower": "lower, by more than the seed-to-seed spread",
    "within noise": "within the seed-to-seed spread: no difference shown",
}


def verdict_sentence(summary: pd.DataFrame, arm: str, against: str, by: str = "arm") -> str:
    """``verdict`` as the sentence a notebook prints: both arms' means and seed ranges, the gap
    in points and what the seeds allow to say about it."""
    rows = summary.set_index(by)

    def described(name: str) -> str:
        r = rows.loc[name]
        return f"{r.test_accuracy_mean:.2%} (seeds {r.test_accuracy_min:.2%}-{r.test_accuracy_max:.2%})"

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


PER_RUN_COLUMNS = [
    "dataset",
    "model",
    "profile",
    "recipe",
    "settings",
    "seed",
    "test accuracy",
    "epochs",
    "wall seconds",
    "train_flops",
    "hardware",
    "torch",
    "command",
]


def _run_row(parts: tuple[str, ...], m: dict, config: Path) -> dict:
    """A run folder is ``<dataset>/<profile>/<experiment...>/<seed and settings key>``."""
    experiment = parts[2:-1] if parts[-1].startswith("seed") else parts[2:]
    identity = json.loads(config.read_text()).get("identity", {}) if config.is_file() else {}
    settings = {k: v for k, v in identity.items() if k != "seed"}
    return {
        "dataset": m.get("dataset", parts[0]),
        "model": m.get("model", "?"),
        "profile": m.get("profile") or parts[1],
        "recipe": "/".join(experiment) or parts[-1],
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "seed": m.get("seed"),
        "test accuracy": m["test_accuracy"],
        "epochs": m.get("epochs"),
        "wall seconds": m["wall_seconds"],
        "train_flops": m.get("train_flops"),
        "hardware": machine(m),
        "torch": m.get("environment", {}).get("torch"),
        "command": m.get("command", "?"),
    }


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
    table = grouped.agg(
        seeds=("seed", "count"),
        test_accuracy_mean=("test accuracy", "mean"),
        test_accuracy_std=("test accuracy", "std"),
        test_accuracy_min=("test accuracy", "min"),
        test_accuracy_max=("test accuracy", "max"),
        epochs=("epochs", "first"),
        wall_seconds=("wall seconds", "mean"),
        train_flops=("train_flops", "mean"),
        hardware=("hardware", "first"),
        torch=("torch", "first"),
        command=("command", "first"),
    ).reset_index()
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
    data = load_dataset(
        c["dataset"],
        resolve(data_root),
        val_fraction=c["val_fraction"],
        seed=c["seed"],
        limit=c["limit"],
        download=False,
    )
    model = build_model(
        signature["model"], signature["num_classes"], signature["in_channels"], **signature["overrides"]
    )
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    size = saved["schedule"][-1]["image_size"]
    transform = BatchAugmenter(
        data.num_classes, size, data.mean, data.std, resize_mode=c.get("resize_mode", "resize")
    ).eval_transform
    predicted = []
    with torch.no_grad():
        model.eval()
        for start in range(0, len(data.test), 500):
            x = transform(data.test.images[start : start + 500])
            logits = model(x)
            if c.get("tta_flip"):
                logits = (logits + model(x.flip(3))) / 2
            predicted.append(logits.argmax(1))
    return data, torch.cat(predicted)
