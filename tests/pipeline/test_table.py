"""`msde table`: the quick table on one 1D case (every column produced), rows taken from an
earlier run directory, and refusals."""

import dataclasses
import json

import numpy as np
import pytest

from msde_ppl.cli import main
from msde_ppl.data import save
from msde_ppl.data.cases import KdV1D
from msde_ppl.pipeline.table import METHODS, REFERENCE

pytest.importorskip("pydmd")
pytest.importorskip("pysindy")


def test_quick_table_on_wave_has_every_method(tmp_path, capsys):
    """The CI smoke run on a 1D case (wave: its data are an exact solution, cheap to make): all
    five methods scored, the reference beside each, three files."""
    out = tmp_path / "table"
    assert main(["table", "--cases", "wave_1d", "--quick", "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    rows = table["cases"]["wave_1d"]
    assert list(rows) == list(METHODS)
    for name, row in rows.items():
        assert row["reference"]["rel_l2_mean"] == REFERENCE["wave_1d"][name][0]
        assert row["fit_wall_time_s"] is not None and row["predict_wall_time_s"] is not None
        if row["finite"]:
            assert 0 < row["rel_l2_mean"] < 10
    for name in ("dmd", "coarse_dns", "implicit_scale", "multiscale"):
        assert rows[name]["finite"], name
    for name in ("implicit_scale", "multiscale"):  # probabilistic columns
        assert 0 <= rows[name]["coverage_90"] <= 1 and rows[name]["crps"] > 0
    assert table["settings"]["quick"] is True
    md = (out / "table.md").read_text()
    assert "| wave_1d |" in md and "POD-SINDy" in md and "quick" in md
    assert (out / "table.png").stat().st_size > 0
    assert "report:" in capsys.readouterr().out


def test_table_takes_fitted_models_from_a_run_directory(tmp_path):
    """With --runs, the models' rows are the run's metrics.json entries (nothing refitted) and
    the baselines are computed on the run's own data.nc."""
    case = dataclasses.replace(KdV1D(), n_time=51, t_final=0.05, eval_steps=50)
    ds = case.generate(5)
    run = tmp_path / "run"
    run.mkdir()
    save(ds, run / "data.nc")
    fake = {"rel_l2_mean": 0.05, "rel_l2_std": 0.01, "finite": True, "crps": 0.002,
            "coverage_90": 0.9, "spread_skill": 1.0, "fit_wall_time_s": 12.0,
            "forecast_wall_time_s": 3.0, "calibrated": {"crps": 0.0021, "coverage_90": 0.91,
                                                        "spread_skill": 1.02}}
    (run / "metrics.json").write_text(json.dumps(
        {"multiscale": fake, "meta": {"dataset": "kdv_1d"}}))
    out = tmp_path / "table"
    assert main(["table", "--cases", "kdv_1d", "--methods", "dmd", "multiscale",
                 "--runs", str(run), "--out", str(out)]) == 0
    rows = json.loads((out / "table.json").read_text())["cases"]["kdv_1d"]
    assert rows["multiscale"]["rel_l2_mean"] == 0.05
    assert rows["multiscale"]["coverage_90_calibrated"] == 0.91
    assert rows["multiscale"]["predict_wall_time_s"] == 3.0
    assert rows["multiscale"]["source"].startswith("msde run")
    n_test = int((ds.split == "test").sum())
    assert rows["dmd"]["n_pairs"] == n_test * 50 and np.isfinite(rows["dmd"]["rel_l2_mean"])


def _fake_run(tmp_path, case_name="kdv_1d"):
    case = dataclasses.replace(KdV1D(), n_time=51, t_final=0.05, eval_steps=50)
    run = tmp_path / "run"
    run.mkdir()
    save(case.generate(5), run / "data.nc")
    fake = {"rel_l2_mean": 0.05, "rel_l2_std": 0.01, "finite": True,
            "fit_wall_time_s": 12.0, "forecast_wall_time_s": 3.0}
    (run / "metrics.json").write_text(json.dumps(
        {"multiscale": fake, "meta": {"dataset": case_name}}))
    return run


def test_extend_carries_the_other_cases_rows_over(tmp_path):
    """--extend: the earlier table's rows of cases not scored now are kept (in the paper's case
    order, their sources kept and dated); a quick/full mix or a missing column is refused."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    old_row = {"rel_l2_mean": 0.6, "rel_l2_std": 0.1, "finite": True, "source": "this table",
               "reference": None}
    # a diverged model: its non-finite scores come back from JSON as null
    fitted_row = dict(old_row, rel_l2_mean=None, rel_l2_std=None, rel_l2_clean_mean=None,
                      finite=False, source="msde run /runs/wave")
    (earlier / "table.json").write_text(json.dumps({
        "settings": {"quick": False, "seed": 0, "methods": list(METHODS),
                     "created": "2026-01-01T00:00:00", "load_avg_start": 1.0,
                     "load_avg_end": 1.1},
        "cases": {"wave_1d": {"dmd": old_row, "multiscale": fitted_row},
                  "kdv_1d": {"dmd": dict(old_row, rel_l2_mean=9.9)}}}))
    run = _fake_run(tmp_path)
    out = tmp_path / "table"
    assert main(["table", "--cases", "kdv_1d", "--methods", "dmd", "multiscale",
                 "--runs", str(run), "--extend", str(earlier), "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    assert list(table["cases"]) == ["wave_1d", "kdv_1d"]
    wave = table["cases"]["wave_1d"]
    assert wave["dmd"]["rel_l2_mean"] == 0.6
    assert wave["dmd"]["source"] == "msde table of 2026-01-01T00:00:00"
    assert wave["multiscale"]["source"] == "msde run /runs/wave"
    kdv = table["cases"]["kdv_1d"]  # scored now, not carried over
    assert kdv["multiscale"]["rel_l2_mean"] == 0.05 and kdv["dmd"]["rel_l2_mean"] != 9.9
    assert table["settings"]["carried_over"]["cases"] == ["wave_1d"]
    markdown = (out / "table.md").read_text()
    assert "carried over from the table of 2026-01-01" in markdown
    # both columns say so; no wall times recorded: blank, not "diverged"
    assert "| wave_1d | multiscale K=5 | diverged | diverged |" in markdown
    assert "| wave_1d | DMD | 0.6000 |  |  |  |  |  |  | msde table of 2026-01-01" in markdown

    assert main(["table", "--cases", "kdv_1d", "--quick", "--extend", str(earlier),
                 "--out", str(tmp_path / "t2")]) == 2
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "table.json").write_text(json.dumps({
        "settings": {"quick": False, "methods": ["dmd"], "created": "x"}, "cases": {}}))
    assert main(["table", "--cases", "kdv_1d", "--methods", "dmd", "multiscale", "--runs",
                 str(run), "--extend", str(partial), "--out", str(tmp_path / "t3")]) == 2
    assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()


def test_table_refuses_bad_input_before_any_work(tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(["table", "--cases", "kdv_1d", "--out", str(existing)]) == 2
    assert main(["table", "--cases", "no_such_case", "--out", str(tmp_path / "t")]) == 2
    assert "unknown case" in capsys.readouterr().err
    assert main(["table", "--runs", str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_a_diverged_cell_says_how_much_stayed_finite():
    from msde_ppl.pipeline.table import _cell

    row = {"finite": False, "rel_l2_mean": None, "rel_l2_std": None,
           "settings": {"finite_fraction": 0.5058}, "reference": {"rel_l2_mean": 0.057}}
    assert _cell(row) == "diverged (51% of snapshots finite) / 0.057"
    assert _cell({"finite": True, "rel_l2_mean": 0.1234, "rel_l2_std": 0.01,
                  "reference": None}) == "0.123 ± 0.010"


def test_the_figure_marks_a_diverged_method():
    import matplotlib.pyplot as plt

    from msde_ppl.pipeline.table import plot_table

    ok = {"finite": True, "rel_l2_mean": 0.1, "reference": {"rel_l2_mean": 0.2}}
    table = {"settings": {"methods": ["dmd", "pod_sindy"], "quick": False},
             "cases": {"kdv_1d": {"dmd": ok, "pod_sindy": {"finite": False,
                                                          "rel_l2_mean": None}}}}
    fig = plot_table(table)
    assert [t.get_text() for t in fig.axes[0].texts] == ["diverged"]
    plt.close(fig)


def test_the_calibration_table_reads_the_calibrated_scores_against_the_targets():
    """One line per ensemble method: its calibrated scores when it has them (else the raw
    ones, said so), 'met' only when both coverage and spread–skill are inside the targets."""
    from msde_ppl.pipeline.table import _calibration_lines

    def row(cov, ss, cal=None):
        r = {"crps": 0.01, "coverage_90": cov, "spread_skill": ss}
        if cal:
            r.update(crps_calibrated=0.009, coverage_90_calibrated=cal[0],
                     spread_skill_calibrated=cal[1])
        return r

    table = {"cases": {"kdv_1d": {"dmd": {"rel_l2_mean": 0.1},
                                  "implicit_scale": row(0.99, 2.0, cal=(0.90, 1.0)),
                                  "multiscale": row(0.90, 1.0, cal=(0.96, 1.0))},
                       "wave_1d": {"multiscale": row(0.90, 1.3)}}}
    lines = [ln for ln in _calibration_lines(table) if ln.startswith("| kdv") or
             ln.startswith("| wave")]
    assert lines == ["| kdv_1d | implicit-scale | 0.0090 | 0.900 | 1.00 | met |",
                     "| kdv_1d | multiscale K=5 | 0.0090 | 0.960 | 1.00 | missed |",
                     "| wave_1d | multiscale K=5 | 0.0100 | 0.900 | 1.30 | missed (uncalibrated) |"]
