"""Algorithm 1 and the phase tables, checked value by value."""

import pytest

from lib.progressive import COURSEWORK_TABLES, algorithm1, phase_table, schedule_from_spec


def test_algorithm1_interpolates_size_and_every_regularizer():
    s = algorithm1(
        12,
        4,
        (128, 300),
        randaug_magnitude=(5, 15),
        mixup_alpha=(0, 0.3),
        dropout=(0.1, 0.4),
        drop_path=(0, 0.3),
        weight_decay=(0, 3e-5),
    )
    assert [st.image_size for st in s] == [128, 185, 243, 300]
    assert [st.randaug_magnitude for st in s] == pytest.approx([5, 5 + 10 / 3, 5 + 20 / 3, 15])
    assert [st.dropout for st in s] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [st.mixup_alpha for st in s] == pytest.approx([0, 0.1, 0.2, 0.3])
    assert [st.weight_decay for st in s] == pytest.approx([0, 1e-5, 2e-5, 3e-5])
    assert [(st.start_epoch, st.end_epoch) for st in s] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert s.stage_at(8).index == 2 and s.epochs == 12


def test_uneven_epochs_and_single_stage():
    s = algorithm1(10, 4, (16, 28))
    assert [st.epochs for st in s] == [3, 3, 2, 2]
    one = algorithm1(5, 1, (20, 28), dropout=(0.1, 0.3))
    assert one[0].image_size == 28 and one[0].dropout == pytest.approx(0.3)  # the final values


def test_coursework_fashion_mnist_table():
    s = phase_table(COURSEWORK_TABLES["fashion_mnist"], 100)
    assert [s.stage_at(e).image_size for e in (0, 19, 20, 49, 50, 99)] == [28, 28, 50, 50, 80, 80]
    last = s.stage_at(99)
    assert (last.randaug_magnitude, last.dropout, last.drop_path, last.weight_decay) == (20, 0.4, 0.2, 3e-3)
    assert schedule_from_spec({"coursework": "cifar10"}, 60).stage_at(40).image_size == 200


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: algorithm1(0, 1, (28, 28)), "epochs must be positive"),
        (lambda: algorithm1(3, 4, (28, 28)), "num_stages"),
        (lambda: phase_table(COURSEWORK_TABLES["fashion_mnist"], 60), "covers 100 epochs"),
        (lambda: phase_table([dict(epochs=(1, 5), image_size=28), dict(epochs=(7, 9), image_size=32)]), "contiguous"),
        (lambda: phase_table([dict(epochs=(1, 5), image_size=28, cutout=3)]), "unknown setting"),
        (lambda: algorithm1(4, 2, (28, 28), dropout=(0, 1.5)), "dropout"),
        (lambda: schedule_from_spec({"coursework": "imagenet"}, 10), "unknown coursework"),
        (lambda: schedule_from_spec({"num_stages": 2}, 10), "needs 'size'"),
    ],
)
def test_bad_schedules_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_final_share_keeps_the_last_stage_for_that_share_of_the_epochs():
    s = schedule_from_spec({"num_stages": 2, "size": [20, 28], "final_share": 0.3}, 10)
    assert [(st.image_size, st.epochs) for st in s] == [(20, 7), (28, 3)]
    s = schedule_from_spec({"num_stages": 3, "size": [16, 28], "final_share": 0.25, "dropout": [0, 0.2]}, 12)
    assert [st.epochs for st in s] == [5, 4, 3] and s.epochs == 12
    assert [st.dropout for st in s] == pytest.approx([0, 0.1, 0.2])  # still interpolated by stage


def test_size_multiple_rounds_the_sizes_between_first_and_last():
    s = schedule_from_spec({"num_stages": 4, "size": [17, 29], "size_multiple": 8}, 8)
    assert [st.image_size for st in s] == [17, 24, 24, 29]  # 21 and 25 round to 24; the ends stay
    assert [st.image_size for st in algorithm1(4, 4, (17, 29))] == [17, 21, 25, 29]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"num_stages": 2, "size": [20, 28], "final_share": 1.2}, "final_share"),
        ({"num_stages": 2, "size": [20, 28], "final_share": "most"}, "final_share"),
        ({"num_stages": 2, "size": [20, 28], "size_multiple": 0}, "size_multiple"),
        ({"num_stages": 2, "size": [20, 28], "size_multiple": 2.5}, "size_multiple"),
    ],
)
def test_bad_schedule_shapes_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        schedule_from_spec(spec, 10)
    assert "\n" not in str(err.value)
