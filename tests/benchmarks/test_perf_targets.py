"""The summary of issue 22's targets that opens benchmarks/results/perf.md (benchmarks/perf.py):
each target read from the right section, ``met`` or how far off, and what was not measured
said so."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import perf  # noqa: E402


def _row(lines, start):
    (row,) = [line for line in lines if line.startswith(f"| {start} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_verdicts_say_met_or_how_far_off():
    assert perf._verdict(0.03, 0.035) == "met"
    assert perf._verdict(0.07, 0.035) == "**missed** (2.0x off)"
    assert perf._verdict(300.0, 250.0, larger_is_better=True) == "met"
    assert perf._verdict(125.0, 250.0, larger_is_better=True) == "**missed** (2.0x off)"
    assert perf._verdict(None, 1.0) == "**not measured**"
    assert perf._verdict(185.0, 180.0) == "**missed** (2.8% off)"  # not "1.0x"


def test_targets_summary_reads_each_section():
    step = dict(step_median_s=0.04, gflops_per_s=120.0, window=64, n_micro=5, codec="spline")
    res = {
        "step2d": {"burgers_2d": {"steps": [step, {**step, "window": 128,
                                                   "step_median_s": 0.045}],
                                  "breakdown": {"ops": [{"share": 0.1, "origin": "mul"}]}}},
        "reference": {"reference_config": {"step_median_s": 0.03, "gflops_per_s": 90.0,
                                           "loop": "python"}},
        "memory": {"fit_mib": 1500.0, "forecast_mib": 900.0},
        "forecast": {"cylinder_2d": {"speedup_vs_64_fine_solves": 12.0, "ensemble_s": 2.0,
                                     "fine_solver_64_s": 24.0, "fine_step_limit": "CFL"}},
        "accuracy": {"burgers_1d": {"sustained_time_to_0.04": 100.0, "time_to_0.04": 80.0,
                                    "reference_time_to_0.04_s": 400.0, "curve": []},
                     "burgers_2d": {"sustained_time_to_0.028": None,
                                    "curve": [{"rel_l2": 0.13, "train_wall_s": 700.0}]}},
    }
    lines = perf.targets_summary(res)
    assert _row(lines, "1. 2D step, burgers_2d, multiscale K = 5")[3] == "**missed** (2.1x off)"
    assert _row(lines, "1. 2D step, burgers_2d, M = 128")[3] == "met"
    assert _row(lines, "1. 2D step, burgers_2d, M = 64")[3] == "**missed** (1.6x off)"
    assert _row(lines, "1. 2D step, cylinder_2d")[3] == "**not measured**"
    assert _row(lines, "2. 1D step, reference configuration")[3] == "met"
    assert _row(lines, "3. peak memory, 1D fit")[3] == "**missed** (1.5x off)"
    assert _row(lines, "3. peak memory, 2D fit")[3] == "**not measured**"
    assert _row(lines, "3. peak memory, forecast")[3] == "met"
    assert _row(lines, "4. 64-member ensemble vs 64 fine solves, cylinder_2d")[3] == "met"
    assert _row(lines, "4. 64-member ensemble vs 64 fine solves, shallow_water_2d")[3] == \
        "**not measured**"
    assert _row(lines, "5. time to accuracy, burgers_1d")[3] == "met"
    burgers_2d = _row(lines, "5. time to accuracy, burgers_2d")
    assert burgers_2d[3] == "**missed** (not reached)" and "0.130 after 700 s" in burgers_2d[2]
    assert _row(lines, "5. time to accuracy, cylinder_2d")[3] == "**not measured**"
    against = _row(lines, "5. time to accuracy, burgers_1d, against the reference's 400 s")
    assert against[1] == "<= 80 s (1/5)" and against[3] == "**missed** (1.2x off)"
    assert "first below after 80 s, then above again" in against[4]
    burgers_2d = _row(lines, "5. time to accuracy, burgers_2d")
    assert "4.6x the reference's number" in burgers_2d[4]
    assert "stays within" not in burgers_2d[4]  # one evaluation: too few to say it settled


def test_against_the_reference_row_reads_each_outcome():
    never = perf._against_reference("c", "0.04", 900.0, None, None)
    assert never[2:] == ("not reached", "**missed** (not reached)", "the training time")
    dipped = perf._against_reference("c", "0.04", 900.0, None, 150.0)
    assert dipped[2] == "not reached (first below: 150 s)" and "then above again" in dipped[4]
    slow = perf._against_reference("c", "0.04", 900.0, 190.0, 190.0)
    assert slow[3] == "**missed** (5.6% off)" and slow[4] == "the training time"
    fast = perf._against_reference("c", "0.04", 900.0, 120.0, 100.0)
    assert fast[3] == "met" and fast[4] == ""


def test_settled_time_is_where_the_curve_stops_leaving_its_last_value():
    curve = [{"rel_l2": r, "train_wall_s": 100.0 * i}
             for i, r in enumerate([0.07, 0.043, 0.07, 0.023, 0.0231, 0.022])]
    assert perf.settled_time(curve) == 300.0  # 0.07 at 200 s is the last above 1.1 x 0.022
    assert perf.settled_time(curve, tolerance=2.5) == 0.0  # every one within 3.5 x 0.022
    assert perf.settled_time(curve, min_points=4) is None  # only three from 300 s on
    assert perf.settled_time([]) is None
    nan_last = curve + [{"rel_l2": float("nan"), "train_wall_s": 600.0}]
    assert perf.settled_time(nan_last) is None
    blown = perf.targets_summary({"accuracy": {"burgers_2d": {
        "sustained_time_to_0.028": None, "curve": nan_last}}})
    assert "non-finite" in _row(blown, "5. time to accuracy, burgers_2d")[4]
