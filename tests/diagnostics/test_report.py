"""``msde report`` / ``build_report`` on a tiny run directory with the layout of ``msde run``."""

import json

import jax
import pytest

from msde_ppl.data import save
from msde_ppl.diagnostics.arviz_io import load_datatree
from msde_ppl.diagnostics.report import build_report
from msde_ppl.predict import forecast, forecast_metrics

FIGURES = ("space_time", "decomposition", "time_slices", "spectrum", "coverage", "pit",
           "spread_skill", "elbo", "latent_paths", "forest")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_ds, tiny_fit):
    run = tmp_path_factory.mktemp("run")
    save(tiny_ds, run / "data.nc")
    (run / "multiscale").mkdir()
    tiny_fit.save(run / "multiscale")
    fc = forecast(jax.random.key(0), tiny_fit, tiny_ds, n_samples=8)
    fc.to_netcdf(run / "multiscale" / "forecast.nc", engine="h5netcdf")
    scores = forecast_metrics(fc)
    scores["baselines"] = {"persistence": {"rel_l2_mean": 0.123, "rel_l2_std": 0.01}}
    metrics = {"multiscale": scores, "meta": {"dataset": "tiny", "n_traj": 3}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_writes_figures_tree_and_markdown(run_dir):
    path = build_report(run_dir, n_samples=8, n_draws=20)
    out = run_dir / "report"
    assert path == out / "report.md"
    text = path.read_text()
    for name in FIGURES:
        assert (out / f"multiscale_{name}.png").stat().st_size > 1000, name
        assert f"(multiscale_{name}.png)" in text, name
    for section in ("## Metrics", "## multiscale model", "ELBO convergence", "### Calibration",
                    "diffusion[0]", "obs_var_micro", "| persistence (trivial baseline) | 0.123 |",
                    "(lead_time.png)"):
        assert section in text, section
    assert (out / "lead_time.png").stat().st_size > 1000
    assert "implicit" not in text  # only the models present in the run directory
    tree = load_datatree(out / "multiscale_posterior.nc")
    assert tree["posterior"].sizes["draw"] == 20
    with pytest.raises(FileExistsError, match="already exists"):
        build_report(run_dir)


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.nc"):
        build_report(tmp_path)


def test_cli_report_refuses_existing_output_with_exit_2(run_dir, tmp_path, capsys):
    from msde_ppl.cli import main

    assert main(["report", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "data.nc is missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fit_dirs(tmp_path_factory, tiny_ds, tiny_fit):
    """The layout of ``msde fit`` (model at the top, run.json naming the data) and of an
    ``msde forecast`` directory of it."""
    from msde_ppl.pipeline.rundir import file_sha256

    root = tmp_path_factory.mktemp("own")
    save(tiny_ds, root / "mine.nc")
    fit_dir = root / "fit"
    fit_dir.mkdir()
    tiny_fit.save(fit_dir)
    (fit_dir / "run.json").write_text(json.dumps({
        "command": "fit", "args": {"data": str(root / "mine.nc")},
        "data_sha256": file_sha256(root / "mine.nc")}))
    fc_dir = root / "fc"
    fc_dir.mkdir()
    fc = forecast(jax.random.key(1), tiny_fit, tiny_ds, n_samples=8)
    fc.to_netcdf(fc_dir / "forecast.nc", engine="h5netcdf")
    (fc_dir / "metrics.json").write_text(json.dumps({"model": forecast_metrics(fc)}))
    return root, fit_dir, fc_dir


def test_report_of_an_msde_fit_directory_uses_its_recorded_data_and_forecast(fit_dirs):
    root, fit_dir, fc_dir = fit_dirs
    path = build_report(fit_dir, root / "rep", forecast_dir=fc_dir, n_samples=8, n_draws=10)
    text = path.read_text()
    assert "## fitted model" in text and "| fitted | " in text  # the forecast's metrics row
    assert (root / "rep" / "lead_time.png").stat().st_size > 1000
    assert (root / "rep" / "fitted_space_time.png").stat().st_size > 1000


def test_report_of_an_msde_fit_directory_names_missing_or_other_data(fit_dirs, tiny_ds, tmp_path):
    root, fit_dir, _ = fit_dirs
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(fit_dir, tmp_path / "a", data=tmp_path / "nowhere.nc")
    other = tiny_ds.copy(deep=True)
    other["u"] = other["u"] * 1.01
    save(other, tmp_path / "other.nc")
    with pytest.warns(UserWarning, match="not the file the model"):
        build_report(fit_dir, tmp_path / "b", data=tmp_path / "other.nc", n_samples=8,
                      n_draws=10)
    with pytest.raises(FileNotFoundError, match="forecast.nc is missing"):
        build_report(fit_dir, tmp_path / "c", forecast_dir=tmp_path)
