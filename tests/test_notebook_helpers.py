"""The helpers the notebooks call for what is not their lesson: plots (lib/plots.py) and the
tables and sentences of a study or of every run (lib/studies.py)."""

import matplotlib
import pandas as pd
import pytest
import torch

import lib.data as data
from formats import make_fashion_mnist
from lib.models import build_model
from lib.plots import block_layers, confusion_counts, draw_block, draw_confusion, image_grid, seed_range_bars
from lib.studies import (
    arm_configs,
    per_run_table,
    plan_table,
    predict_test_split,
    recipes_table,
    run_arms,
    summarize,
    verdict_sentence,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def test_confusion_rows_sum_to_the_class_counts_and_the_diagonal_to_the_correct_ones():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    counts = confusion_counts(labels, predicted, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert counts.sum(1).tolist() == torch.bincount(labels).tolist()
    assert counts.trace().item() == (labels == predicted).sum().item()
    fig, ax = plt.subplots()
    draw_confusion(ax, counts, ["a", "b", "c"], "title")
    assert ax.get_title() == "title" and ax.get_xlabel() == "predicted class"
    plt.close(fig)


def test_block_layers_read_the_built_modules_and_draw_block_draws_a_box_each():
    with torch.device("meta"):
        model = build_model("efficientnetv2_s", 10)
    fused, mb = model.stages[1][1], model.stages[3][1]  # stride 1, same channels: a skip
    fused_layers, mb_layers = block_layers(fused), block_layers(mb)
    assert [r["layer"] for r in fused_layers] == ["3x3 conv", "1x1 project"]
    assert [r["layer"] for r in mb_layers] == ["1x1 expand", "3x3 depthwise conv", "squeeze-excite", "1x1 project"]
    depthwise = mb_layers[1]
    assert depthwise["groups"] == depthwise["in"] == depthwise["out"] == mb.in_ch * mb.expand
    for block, rows in ((fused, fused_layers), (mb, mb_layers)):
        assert rows[0]["in"] == block.in_ch and rows[-1]["out"] == block.out_ch
        assert all(a["out"] == b["in"] for a, b in zip(rows, rows[1:]))
    first = block_layers(model.stages[3][0])  # a stage's first block: stride 2
    assert [r["stride"] for r in first if "depthwise" in r["layer"]] == [2]
    fig, ax = plt.subplots()
    draw_block(ax, mb, "MBConv")
    assert len(ax.patches) == len(mb_layers) and any(t.get_text() == "skip" for t in ax.texts)
    plt.close(fig)


def _table():
    runs = pd.DataFrame(
        {
            "arm": ["base", "base", "other", "other"],
            "seed": [0, 1, 0, 1],
            "test_accuracy": [0.90, 0.91, 0.87, 0.88],
            "train_accuracy": [0.9] * 4,
            "train_seconds": [1.0] * 4,
        }
    )
    return runs, summarize(runs)


def test_seed_range_bars_leave_no_arm_or_reference_outside_the_axis():
    runs, table = _table()
    fig, ax = plt.subplots()
    seed_range_bars(
        ax,
        table.set_index("arm"),
        runs=runs,
        linear=0.84,
        floor=0.88,
        references=[("published", 0.95)],
        notes=["a", "b"],
    )
    low, high = ax.get_xlim()
    assert low < 84 and high >= 95 and high <= 100
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.get_yticklabels()] == ["base", "other"]
    plt.close(fig)


def test_verdict_sentence_states_both_arms_the_gap_and_what_the_seeds_allow():
    _, table = _table()
    sentence = verdict_sentence(table, "other", "base")
    assert sentence.startswith("other: 87.50% (seeds 87.00%-88.00%) against base: 90.50%")
    assert "-3.00 points" in sentence and "lower, by more than the seed-to-seed spread" in sentence


def test_plan_table_shows_each_arm_as_it_trains():
    arms = {"baseline": {}, "dropout 0.6": {"schedule": {"dropout": 0.6}}}
    configs = arm_configs("smoke", "fashion_mnist", "ablations", arms, seed=0)
    table = plan_table(configs, [0, 1])
    assert list(table.index) == list(arms) and (table.seeds == "0, 1").all()
    assert table.loc["dropout 0.6", "dropout"] == "0.6"
    assert table.loc["baseline", "epochs"] == configs["baseline"].epochs


def test_image_grid_titles_every_image():
    images = [torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)]
    fig = image_grid(images, titles=[["a", "b", "c"], ["d", "e"]])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == list("abcde")
    plt.close(fig)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Random pixels in the real idx format: mechanics only, no accuracy is claimed."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    make_fashion_mnist(tmp_path / "data", n_train=300, n_test=50)
    return tmp_path / "data"


def test_runs_are_read_into_one_table_and_predicted_again_from_their_weights(root, tmp_path):
    """Notebook 07: every finished run as a row, seeds grouped; the final model's test predictions
    from model.pt give exactly the test accuracy the run recorded."""
    settings = dict(data_root=str(root), limit=None, epochs=1, batch_size=32, schedule={"size": [28, 28]})
    runs = run_arms(
        "smoke",
        "fashion_mnist",
        None,
        {"a": {}},
        [0, 1],
        tmp_path / "runs" / "fashion_mnist" / "smoke" / "study",
        processes=1,
        log=lambda *a: None,
        **settings,
    )
    per_run = per_run_table(tmp_path / "runs")
    assert len(per_run) == 2 and set(per_run.recipe) == {"study/a"} and per_run.seed.tolist() == [0, 1]
    recipes = recipes_table(per_run)
    assert len(recipes) == 1 and recipes.seeds[0] == 2
    assert recipes.test_accuracy_min[0] <= recipes.test_accuracy_mean[0] <= recipes.test_accuracy_max[0]
    dataset, predicted = predict_test_split(runs.run_dir[0], root)
    accuracy = (predicted == dataset.test.labels).double().mean().item()
    assert accuracy == pytest.approx(runs.test_accuracy[0], abs=1e-12)
