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
