"""Pure functions of the backbone crossover benchmark (issue 20, item 4)."""

from __future__ import annotations

import math
import re

import pytest

from cinemamba.apps.bench.backbones import (
    BackbonesScale,
    Series,
    block_ratio,
    crossover,
    crossover_lines,
    full3d_block_ratios,
    match_width,
    registered,
    series_table,
    stop_before,
)
from cinemamba.apps.bench.measure import slope
from cinemamba_backbone.full3d import Full3DBlock
from cinemamba_backbone.mixers import MixerOptions, build_mixer
from cinemamba_backbone.model import VideoDiTBlock


def test_slope_recovers_power_law_exponent():
    xs = [8, 16, 32, 64, 128]
    for k in (1.0, 1.5, 2.0):
        assert slope(xs, [3.0 * x**k for x in xs]) == pytest.approx(k, rel=1e-12)


def test_crossover_of_power_laws_is_the_closed_form_crossing():
    # a = 0.5·x (linear), b = 0.001·x² (quadratic): equal at x = 500, exact in log-log
    # between the bracketing points because both curves are straight lines there.
    xs = [8, 16, 32, 64, 128, 256, 512, 1024]
    a = [0.5 * x for x in xs]
    b = [0.001 * x**2 for x in xs]
    assert crossover(xs, a, b) == pytest.approx(500.0, rel=1e-9)
    assert crossover(xs, b, a) == pytest.approx(500.0, rel=1e-9)


def test_crossover_none_without_a_crossing_and_exact_at_a_tie():
    xs = [1, 2, 4]
    assert crossover(xs, [1, 2, 3], [2, 4, 6]) is None
    assert crossover(xs, [1, 2, 3], [1, 5, 6]) == 1.0


def test_unregistered_mixer_is_skipped_with_a_note():
    known, notes = registered(["bimamba", "no_such_mixer", "attention"])
    assert known == ["bimamba", "attention"]
    assert len(notes) == 1 and "no_such_mixer" in notes[0] and "skipped" in notes[0]


def test_match_width_picks_the_closest_valid_width():
    # params = w² with odd widths invalid: target 5000 -> √5000 ≈ 70.7, closest valid 72
    # among multiples of 4 (68² = 4624, 72² = 5184).
    w, p = match_width(lambda w: w * w if w % 2 == 0 else None, 5000, 64, step=4)
    assert (w, p) == (72, 5184)
    with pytest.raises(ValueError, match="no valid width"):
        match_width(lambda w: None, 5000, 64)


def test_tables_name_stops_and_crossings():
    fr = [8, 16, 32]
    lin = Series("bimamba", 64, 100, fr, [0.5 * x for x in fr], [1.0 * x for x in fr])
    quad = Series("attention", 64, 100, fr, [0.02 * x**2 for x in fr], [0.1 * x**2 for x in fr],
                  stopped="stopped after T=32: 21 s > cap")  # fmt: skip
    rows = series_table([lin, quad])
    assert "stopped after T=32" in rows[-1] and "| 2.00 |" in rows[-1]
    (line,) = crossover_lines([lin, quad], [("bimamba", "attention")])
    assert f"T ≈ {25:.0f}" in line and "bimamba is faster beyond" in line
    assert math.isclose(crossover(fr, lin.seconds, quad.seconds), 25.0)


def test_stop_before_extrapolates_time_and_memory_in_log_log():
    scale = BackbonesScale(cap_s=10.0, cap_mb=1000.0)
    # time ∝ T² (1 s, 4 s at T = 8, 16): T = 32 -> 16 s < 30 s; T = 64 -> 64 s > 30 s.
    s = Series("a", 64, 1, [8, 16], [1.0, 4.0], [100.0, 200.0])
    assert stop_before(s, 32, scale) == ""
    assert "extrapolated 64 s" in stop_before(s, 64, scale)
    # memory ∝ T (100, 200 MB): T = 128 -> 1600 MB > 1000 MB cap, time ∝ T (1 s, 2 s).
    s = Series("a", 64, 1, [8, 16], [1.0, 2.0], [100.0, 200.0])
    assert "peak 1600 MB" in stop_before(s, 128, scale)
    assert stop_before(Series("a", 64, 1, [8], [99.0], [1e9]), 16, scale) == ""


def test_full3d_block_ratios_compare_equal_parameter_blocks():
    # Block against block: one figure per length, the full-3D block at the width whose
    # parameter count (counted here on blocks built directly) is closest to bimamba's.
    figures = full3d_block_ratios(BackbonesScale(full3d_frames=(2, 3), ratio_repeats=1), 4)
    assert [f.name.split(" T=")[1] for f in figures] == ["2 tokens=4", "3 tokens=4"]
    assert all(f.target == 1.0 and min(f.measured + f.reference) > 0 for f in figures)
    width = int(re.search(r"width (\d+)", figures[0].reference_name).group(1))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    bim = count(VideoDiTBlock(64, 2, 4.0, build_mixer("bimamba", 64, MixerOptions())))
    gaps = {w: abs(count(Full3DBlock(w, 2, 4.0)) - bim) for w in range(32, 129, 4)}
    assert width == min(gaps, key=gaps.get) and width > 64


def test_block_ratio_times_each_bimamba_form_on_its_own_path(monkeypatch: pytest.MonkeyPatch):
    # The four forms must really run different code: the channels-last core only in the
    # last (warm-up + one repeat = 2 forward calls), and the target only on that figure.
    from cinemamba_backbone.ops import channels_last

    calls = []
    core = channels_last.bimamba_core
    monkeypatch.setattr(channels_last, "bimamba_core", lambda *a: calls.append(1) or core(*a))
    figures = block_ratio(BackbonesScale(ratio_frames=3, ratio_repeats=1), 4)
    assert len(figures) == 4 and len(calls) == 2
    assert [f.target for f in figures] == [None, None, None, 1.2]
    assert "channels-last" in figures[-1].name
