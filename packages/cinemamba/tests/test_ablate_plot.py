"""The ablation plot's score panels (issue 18): the y-axis fits the mixers' values, and mixers
with equal scores stay distinguishable (one line hid another on a fixed 0-1 axis)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from cinemamba.apps.ablate.report import draw_scores  # noqa: E402

FRAMES = [33, 129, 257]


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_axis_fits_low_scores_and_names_an_off_axis_ceiling(ax):
    series = {"bimamba": [0.18, 0.12, 0.10], "attention": [0.15, 0.09, 0.05]}
    draw_scores(ax, "shape_accuracy", FRAMES, series, [1.0, 0.99, 0.98])
    lo, hi = ax.get_ylim()
    assert lo < 0.05 and 0.18 < hi < 0.25  # all data inside, the span mostly data
    assert [line.get_label() for line in ax.get_lines()] == ["bimamba", "attention"]
    assert "real videos 0.98–1.00, off this axis" in ax.get_title()


def test_ceiling_inside_the_range_is_drawn(ax):
    draw_scores(ax, "colour", FRAMES, {"a": [1.0, 0.9, 0.5]}, [0.95, 0.97, 1.0])
    lo, hi = ax.get_ylim()
    assert lo < 0.5 and hi > 1.0
    real = [line for line in ax.get_lines() if line.get_label() == "real"]
    assert len(real) == 1 and list(real[0].get_ydata()) == [0.95, 0.97, 1.0]
    assert ax.get_title() == "colour"


def test_equal_lines_stay_distinguishable(ax):
    same = [0.4, 0.4, 0.4]
    draw_scores(ax, "motion", FRAMES, {"bimamba": same, "mamba": same, "attention": same}, [])
    lines = ax.get_lines()
    assert len({line.get_marker() for line in lines}) == 3
    assert len({line.get_linestyle() for line in lines}) == 3
    # Hollow markers, each later one smaller and on top: the first stays visible around it.
    assert all(line.get_markerfacecolor() == "none" for line in lines)
    sizes = [line.get_markersize() for line in lines]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3
    orders = [line.get_zorder() for line in lines]
    assert orders == sorted(orders) and len(set(orders)) == 3
    lo, hi = ax.get_ylim()
    assert lo < 0.4 < hi and hi - lo < 0.1  # a flat line sits in a narrow, centred band
