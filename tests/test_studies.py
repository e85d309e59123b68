"""Studies: arms x seeds trained (in worker processes on a CPU), reused, summarized, judged."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import lib.data as data
from formats import make_fashion_mnist
from lib.models import build_model
from lib.profiles import PROFILES, config_for, study
from lib.runs import REPO_ROOT
from lib.studies import finished_elsewhere, run_arms, slug, summarize, verdict


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Random pixels in the real idx format: mechanics only, no accuracy is claimed."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    make_fashion_mnist(tmp_path / "data", n_train=300, n_test=50)
    return tmp_path / "data"


def test_arms_times_seeds_run_in_two_processes_and_are_reused(root, tmp_path):
    arms = {"baseline": {}, "dropout 0.6": {"schedule": {"dropout": 0.6}}}
    settings = dict(data_root=str(root), limit=None, epochs=1, batch_size=32, schedule={"size": [28, 28]})
    runs = run_arms(
        "smoke", "fashion_mnist", None, arms, [0, 1], tmp_path / "study", processes=2, log=lambda *a: None, **settings
    )
    assert list(zip(runs.arm, runs.seed)) == [("baseline", 0), ("baseline", 1), ("dropout 0.6", 0), ("dropout 0.6", 1)]
    assert runs.run_dir.nunique() == 4 and all("/dropout_06/seed" in d for d in runs.run_dir[2:])
    assert runs.test_accuracy.between(0, 1).all() and (runs.train_flops > 0).all()
    again = run_arms(
        "smoke", "fashion_mnist", None, arms, [0, 1], tmp_path / "study", processes=1, log=lambda *a: None, **settings
    )
    pd.testing.assert_series_equal(again.train_seconds, runs.train_seconds)  # reused, not retrained
    table = summarize(runs)
    assert list(table.arm) == ["baseline", "dropout 0.6"] and (table.seeds == 2).all()
    assert table.test_accuracy_mean[0] == pytest.approx(runs.test_accuracy[:2].mean())


def test_an_arm_another_study_already_trained_with_the_same_settings_is_reused(root, tmp_path):
    """Notebook 05's CPU baseline is notebook 04's fixed-size arm: trained once, found by its settings."""
    settings = dict(data_root=str(root), limit=None, epochs=1, batch_size=32, schedule={"size": [28, 28]})
    first = run_arms(
        "smoke",
        "fashion_mnist",
        None,
        {"fixed final size": {}},
        [0],
        tmp_path / "runs" / "progressive",
        processes=1,
        log=lambda *a: None,
        **settings,
    )
    said = []
    second = run_arms(
        "smoke",
        "fashion_mnist",
        None,
        {"baseline": {}, "dropout 0.6": {"schedule": {"dropout": 0.6}}},
        [0],
        tmp_path / "runs" / "ablations",
        processes=1,
        reuse_from=tmp_path / "runs",
        log=said.append,
        **settings,
    )
    assert second.run_dir[0] == first.run_dir[0] and second.train_seconds[0] == first.train_seconds[0]
    assert not (tmp_path / "runs" / "ablations" / "baseline").exists()  # nothing trained for it
    assert "/dropout_06/seed0-" in second.run_dir[1]  # other settings: trained
    assert any("the same settings as the finished" in line for line in said)


def test_a_kept_record_is_shown_and_nothing_missing_is_trained_when_asked_not_to(root, tmp_path):
    """Notebook 02 on a CPU: the ResNet runs the repository keeps (metrics, config, curves; no weights, and
    moved from where they were trained) are found by their settings; a missing one is not trained."""
    import shutil

    settings = dict(data_root=str(root), limit=None, epochs=1, batch_size=32, schedule={"size": [28, 28]})
    trained = run_arms(
        "smoke",
        "fashion_mnist",
        None,
        {"baseline": {}},
        [0],
        tmp_path / "runs" / "baselines",
        processes=1,
        log=lambda *a: None,
        **settings,
    )
    kept = tmp_path / "figures" / "records" / "fashion_mnist"
    shutil.copytree(tmp_path / "runs", kept, ignore=shutil.ignore_patterns("*.pt", "checkpoints"))
    shutil.rmtree(tmp_path / "runs")
    said = []
    shown = run_arms(
        "smoke",
        "fashion_mnist",
        None,
        {"baseline": {}, "dropout 0.6": {"schedule": {"dropout": 0.6}}},
        [0, 1],
        tmp_path / "runs" / "baselines",
        processes=1,
        reuse_from=[tmp_path / "runs", kept],
        train_missing=False,
        log=said.append,
        **settings,
    )
    assert list(zip(shown.arm, shown.seed)) == [("baseline", 0)]  # found; the rest not trained
    assert Path(shown.run_dir[0]).is_relative_to(kept)  # where it was found
    assert shown.test_accuracy[0] == trained.test_accuracy[0] and not (tmp_path / "runs").exists()
    assert sum("not trained here" in line for line in said) == 3


@pytest.mark.parametrize("profile", [p for p in PROFILES if PROFILES[p]["studies"].get("baselines", {}).get("kept")])
def test_the_kept_resnet_runs_match_their_profile(profile):
    """Notebook 02 on a CPU shows the runs the repository keeps instead of training them (an hour):
    a profile edit that changes their settings fails here, not silently in a notebook that then finds
    nothing (retrain them: `papermill notebooks/02_resnet_baselines.ipynb OUT -p profile quick -p retrain True`)."""
    from lib.profiles import BASELINE_REGIMES
    from lib.runs import REPO_ROOT
    from lib.studies import finished_elsewhere

    plan = study(profile, "baselines")
    for model in plan["models"]:
        for regime in plan["regimes"]:
            for seed in range(plan["seeds"]):
                config = config_for(
                    profile, "fashion_mnist", "baselines", seed=seed, model=model, **BASELINE_REGIMES[regime]
                )
                metrics = finished_elsewhere(config, REPO_ROOT / "figures" / "records" / "fashion_mnist")
                assert metrics is not None, f"no kept run of {model}, {regime}, seed {seed} for {profile}'s settings"
                assert metrics["epochs"] == config.epochs
                assert plan["floor"] is None or metrics["test_accuracy"] >= plan["floor"]


def test_verdict_needs_seed_ranges_that_do_not_overlap():
    runs = pd.DataFrame(
        {
            "arm": ["a", "a", "b", "b", "c", "c"],
            "seed": [0, 1] * 3,
            "test_accuracy": [0.90, 0.91, 0.92, 0.93, 0.905, 0.925],
            "train_accuracy": [0.9] * 6,
            "train_seconds": [1.0] * 6,
        }
    )
    table = summarize(runs)
    assert verdict(table, "b", "a") == "higher" and verdict(table, "a", "b") == "lower"
    assert verdict(table, "c", "a") == "within noise" and verdict(table, "c", "b") == "within noise"
    assert table.set_index("arm").test_accuracy_std["a"] == pytest.approx(0.00707, abs=1e-5)


def test_slugs_are_folder_names():
    assert slug("depth multiplier 0.1") == "depth_multiplier_01" and slug("fused 1-3") == "fused_1_3"
    assert slug("resnet50, no augmentation") == "resnet50_no_augmentation"


def test_the_cpu_profiles_share_their_studies_whatever_their_own_recipes():
    """quick and laptop share one table of studies (one set of runs, one set of kept records); their own
    recipes (optimizer, warm-up, model, epochs) must not leak into any arm: the laptop's warm-up once did."""
    from itertools import product
    from lib.profiles import BASELINE_REGIMES

    assert PROFILES["quick"]["studies"] is PROFILES["laptop"]["studies"]
    for name, plan in PROFILES["quick"]["studies"].items():
        models = [{"model": m} for m in plan.get("models", [])] or [{}]
        regimes = [BASELINE_REGIMES[r] for r in plan.get("regimes", [])] or [{}]
        modes = list(plan.get("modes", {}).values()) or [{}]
        arms = list(plan.get("arms", {}).values()) if isinstance(plan.get("arms"), dict) else [{}]
        for model, regime, mode, edit in product(models, regimes, modes, arms):
            arm = {**model, **regime, **mode, **edit}
            quick, laptop = (config_for(p, "fashion_mnist", name, **arm).identity() for p in ("quick", "laptop"))
            differs = {k for k in quick if k != "profile" and quick[k] != laptop[k]}
            assert not differs, (name, arm, {k: (quick[k], laptop[k]) for k in differs})


@pytest.mark.parametrize("profile", ["smoke", "quick", "laptop", "paper"])
def test_every_study_of_every_profile_builds_its_models(profile):
    """A profile's model settings (say quick's BatchNorm momentum) must not leak into a study that
    trains another architecture: ResNets and pretrained weights take their builder's defaults."""
    for name in PROFILES[profile]["studies"]:
        plan = study(profile, name)
        models = plan.get("models") or [plan["train"].get("model") or config_for(profile, "fashion_mnist").model]
        for model in models:
            config = config_for(profile, "fashion_mnist", name, model=model)
            with torch.device("meta"):
                build_model(config.model, 10, 1, **config.model_overrides)
            if name in ("baselines", "transfer"):
                assert config.model_overrides == {}, (name, model, config.model_overrides)


def test_results_read_kept_records_and_a_fresh_run_replaces_its_record(tmp_path):
    """Notebook 07's collection: figures/records/ (kept in git, no weights) first, then runs/."""
    from lib.runs import finished_runs

    def write_json(path, payload):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))

    records, runs = tmp_path / "figures" / "records", tmp_path / "runs"
    write_json(records / "fashion_mnist/laptop/laptop/metrics.json", {"test_accuracy": 0.9382})
    write_json(records / "fashion_mnist/quick/terminal/seed0/metrics.json", {"test_accuracy": 0.9234})
    write_json(runs / "fashion_mnist/quick/terminal/seed0/metrics.json", {"test_accuracy": 0.95})
    write_json(runs / "fashion_mnist/quick/ablations/baseline/seed0-abc/metrics.json", {"test_accuracy": 0.89})
    (runs / "stray.json").write_text("{}")
    found = finished_runs(records, runs, tmp_path / "missing")
    assert [str(k) for k in found] == [
        "fashion_mnist/laptop/laptop",
        "fashion_mnist/quick/ablations/baseline/seed0-abc",
        "fashion_mnist/quick/terminal/seed0",
    ]
    assert found[next(k for k in found if k.name == "seed0")].is_relative_to(runs)  # the fresh run wins


KEPT_ARMS = [
    (profile, name)
    for profile in ("quick", "laptop")
    for name, plan in PROFILES[profile]["studies"].items()
    if plan.get("kept") and isinstance(plan.get("arms"), dict)
]


@pytest.mark.parametrize("profile, name", KEPT_ARMS)
def test_every_arm_of_a_kept_study_has_its_records(profile, name):
    """Notebook 04 shows these studies from figures/records/ and trains nothing: a profile edit that
    changes an arm's settings makes its records stale, and this fails instead of the notebook."""
    plan = study(profile, name)
    for arm, edits in plan["arms"].items():
        for seed in range(plan["seeds"]):
            config = config_for(profile, "fashion_mnist", name, seed=seed, **edits)
            found = finished_elsewhere(config, REPO_ROOT / "figures" / "records" / "fashion_mnist")
            assert found is not None, f"no kept run of {name} / {arm}, seed {seed} for {profile}'s settings"
