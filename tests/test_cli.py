"""The ``msde`` command line: the documented commands work, bad arguments are refused clearly."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from msde_ppl.cli import main
from msde_ppl.data import from_arrays, load, save


def run_cli(*args):
    """The command line in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "msde_ppl.cli", *args],
                          capture_output=True, text=True, timeout=300)


class Outcome:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def call(capsys):
    """The command line in this process (for refusals: no import or compile per call)."""

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:  # argparse's own refusals
            code = stop.code
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return run


def test_help_documents_every_command(call):
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("data", "run"):
        assert command in out.stdout
        sub = call(command, "--help")
        assert sub.returncode == 0 and "--out" in sub.stdout and "--seed" in sub.stdout


def test_data_writes_a_valid_file_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "w.nc"
    assert main(["data", "wave_1d", "--out", str(out), "--n-traj", "3", "--seed", "2"]) == 0
    ds = load(out)
    assert ds.sizes["traj"] == 3 and ds.attrs["case"] == "wave_1d" and ds.attrs["seed"] == 2
    before = out.read_bytes()
    assert main(["data", "wave_1d", "--out", str(out), "--n-traj", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["data", "navier_stokes", "--out", "x.nc"], "unknown case 'navier_stokes'"),
    (["data", "kdv_1d", "--out", "x.nc", "--n-traj", "0"], "positive integer"),
    (["data", "kdv_1d", "--out", "x.nc", "--seed", "-1"], "integer >= 0"),
    (["data", "kdv_1d"], "--out"),
    (["run", "navier_stokes"], "unknown case 'navier_stokes'"),
    (["fit", "--budget", "ten minutes"], "expected a duration such as 90s, 10m or 1.5h"),
    (["fit", "--budget", "0m"], "expected a duration"),
    (["forecast", "r", "--data", "d.nc", "--out", "o", "--horizon", "1"], "integer >= 2"),
])
def test_bad_arguments_are_refused(tmp_path, call, args, message):
    out = call(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_run_writes_report_and_refuses_existing_run_dir(tmp_path, call):
    run_dir = tmp_path / "run"
    out = run_cli("run", "burgers_1d", "--n-traj", "3", "--steps", "30", "--micro-steps", "30",
                  "--samples", "8", "--out", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert str(run_dir / "metrics.json") in out.stdout
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for method in ("multiscale", "implicit_scale", "coarse_dns"):
        for key in ("rel_l2_mean", "rel_l2_std", "rel_l2_clean_mean", "rel_l2_clean_std"):
            assert 0 < metrics[method][key] < 5
    for method in ("multiscale", "implicit_scale"):
        assert 0 <= metrics[method]["coverage_90"] <= 1 and metrics[method]["crps"] > 0
        cal = metrics[method]["calibrated"]  # the spread calibrated on the val split
        assert cal["fitted_on"] == "val" and 0 <= cal["coverage_90"] <= 1, cal
        assert cal["spread_skill"] > 0 and cal["spread_factor"]["min"] > 0
        base = metrics[method]["baselines"]
        assert base["persistence"]["rel_l2_mean"] > 0 and base["climatology"]["rel_l2_mean"] > 0
    assert "calibrated on val" in out.stdout
    assert metrics["meta"]["dataset"] == "burgers_1d" and metrics["meta"]["grid"] == [1000]
    assert load(run_dir / "data.nc").sizes["traj"] == 3
    for name in ("multiscale_space_time.png", "multiscale_decomposition.png",
                 "implicit_scale_space_time.png", "multiscale/posterior.nc",
                 "multiscale/forecast.nc", "multiscale/params.eqx", "multiscale/fitted.json"):
        assert (run_dir / name).is_file(), name
    again = call("run", "burgers_1d", "--out", str(run_dir))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A small user dataset in the schema (no built-in PDE behind it)."""
    x = np.arange(64) / 64
    t = np.arange(30) * 0.01
    u = np.sin(2 * np.pi * (x[None, None] - t[None, :, None] - np.arange(3)[:, None, None] / 3))
    path = tmp_path_factory.mktemp("user") / "user.nc"
    save(from_arrays(u.astype(np.float32), time=t, x=x, split=["train", "val", "test"]), path)
    return path


@pytest.mark.slow  # ~60 s: the CNN codec compiles slowly; the library tests cover it
def test_fit_with_the_reference_cnn_codec_and_a_mixture_forecast(tmp_path, user_data):
    run_dir = tmp_path / "fit"
    fit = run_cli("fit", "--data", str(user_data), "--coarse", "8", "--micro", "2", "--steps",
                  "8", "--window", "16", "--encoder", "cnn", "--decoder", "cnn", "--out",
                  str(run_dir))
    assert fit.returncode == 0, fit.stderr
    model = json.loads((run_dir / "fitted.json").read_text())["recipe"]["config"]
    assert model["encoder"] == "cnn" and model["decoder"] == "cnn"
    # several run directories: one mixture forecast (here the same fit twice)
    mixed = run_cli("forecast", str(run_dir), str(run_dir), "--data", str(user_data),
                    "--samples", "4", "--out", str(tmp_path / "mix"))
    assert mixed.returncode == 0, mixed.stderr
    mix_metrics = json.loads((tmp_path / "mix" / "metrics.json").read_text())["model"]
    assert mix_metrics["fit_steps"] == 2 * 8
    with xr.open_dataset(tmp_path / "mix" / "forecast.nc", engine="h5netcdf") as fc_mix:
        assert fc_mix.sizes["fit"] == 2


@pytest.mark.parametrize("args, message", [
    (["--coarse", "7", "--micro", "2"], "does not divide the fine grid size 64"),
    (["--coarse", "8", "8", "--micro", "2"], "has 2 entries"),
    (["--coarse", "8", "--micro", "2", "--window", "64"], "longer than the 30 snapshots"),
])
def test_fit_refuses_bad_arguments(tmp_path, call, user_data, args, message):
    out = call("fit", "--data", str(user_data), *args, "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", ["--encoder", "--decoder"])
def test_fit_refuses_cnn_codec_on_grid_not_divisible_by_8(tmp_path, call, flag):
    x = np.arange(60) / 60
    u = np.sin(2 * np.pi * (x[None, None] - 0.01 * np.arange(20)[None, :, None]))
    path = tmp_path / "odd.nc"
    save(from_arrays(u.astype(np.float32), time=0.01 * np.arange(20), x=x), path)
    out = call("fit", "--data", str(path), "--coarse", "6", "--micro", "2", flag, "cnn",
                  "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and f"{flag} cnn needs a 1D or 2D grid with every axis " \
        "divisible by 8, got (60,)" in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()


def _grid_scale_data(path):
    """A sine (k = 1) plus a 0.3 share at k = 12: held by 32 nodes (|k| <= 16), not by 16."""
    x = np.arange(64) / 64
    u = np.sin(2 * np.pi * x) + 0.3 * np.sin(2 * np.pi * 12 * x)
    u = u[None, None] * np.ones((3, 30, 1))
    save(from_arrays(u.astype(np.float32), time=np.arange(30) * 0.01, x=x,
                     split=["train", "val", "test"]), path)
    return load(path)


def test_fit_says_what_the_coarse_grid_cannot_hold(tmp_path, capsys):
    from msde_ppl.cli import _resolution_floors

    ds = _grid_scale_data(tmp_path / "d.nc")
    floors = _resolution_floors(ds, (16,), n_micro=0)
    share = 0.3 / np.hypot(1.0, 0.3)
    assert floors["rel_l2"] == pytest.approx(share, rel=1e-5)
    assert floors["grids"]["32"] < 1e-6 and floors["grids"]["8"] == pytest.approx(share, 1e-5)
    out = capsys.readouterr()
    assert "coarse grid 16: the macro state alone reconstructs the training field to rel-L2 " \
        "0.287 at best (other grids: 32: " in out.out
    assert "warning: with --micro 0 nothing carries" in out.err
    assert "a finer grid (--coarse 32: " in out.err
    _resolution_floors(ds, (16,), n_micro=3)  # a micro state may carry it: no warning
    out = capsys.readouterr()
    assert "the micro state is to carry the rest" in out.out and out.err == ""
    _resolution_floors(ds, (32,), n_micro=0)  # the grid holds it all
    out = capsys.readouterr()
    assert "micro state" not in out.out and out.err == ""


def test_fit_without_coarse_lists_each_grids_floor(tmp_path, call):
    _grid_scale_data(tmp_path / "d.nc")
    out = call("fit", "--data", str(tmp_path / "d.nc"), "--micro", "0", "--out",
               str(tmp_path / "r"))
    assert out.returncode == 2 and "--coarse required" in out.stderr
    assert "reconstructs the data at best (what is left is for the micro state): 32: " \
        in out.stderr and ", 16: 0.287, 8: 0.287" in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()


def test_fit_positional_gives_the_drift_each_nodes_position(tmp_path, user_data, capsys):
    from msde_ppl import cli

    parser = cli.build_parser()
    base = ["fit", "--data", str(user_data), "--coarse", "8", "--micro", "2", "--window", "16",
            "--out", str(tmp_path / "r")]
    # by default the data decide; one training trajectory of 29 snapshot pairs is too few for
    # 6 coefficients per node (5 pairs each), so there is no test and no position
    assert cli._fit_plan(parser.parse_args(base))[1].positional is False
    said = capsys.readouterr().out
    assert "macro drift: translation-equivariant (the data could not be tested: " in said
    # 8 training trajectories of travelling sines: tested, translation invariant
    x, t = np.arange(64) / 64, np.arange(30) * 0.01
    phase = np.arange(12)[:, None, None] / 12
    save(from_arrays(np.sin(2 * np.pi * (x[None, None] - t[None, :, None] - phase)), time=t,
                     x=x, split=["train"] * 8 + ["val"] * 2 + ["test"] * 2), tmp_path / "w.nc")
    waves = ["fit", "--data", str(tmp_path / "w.nc"), *base[3:]]
    assert cli._fit_plan(parser.parse_args(waves))[1].positional is False
    said = capsys.readouterr().out
    assert "macro drift: translation-equivariant (a stencil regression per node leaves " in said
    assert "--positional to change" in said
    assert cli._fit_plan(parser.parse_args([*base, "--no-positional"]))[1].positional is False
    assert cli._fit_plan(parser.parse_args([*base, "--positional"]))[1].positional is True
    assert "macro drift" not in capsys.readouterr().out  # chosen, not inferred


def test_fit_shifts_default_on_for_periodic_user_data_and_are_recorded(tmp_path, user_data):
    """Periodic data, a drift that does not read the position: the windows are shifted
    unless --no-shifts; --shifts with a positional drift is refused before anything is
    written; a run.json from before the option resumes without shifts."""
    from msde_ppl import cli

    parser = cli.build_parser()
    base = ["fit", "--data", str(user_data), "--coarse", "8", "--micro", "0", "--window", "16",
            "--no-positional", "--out", str(tmp_path / "r")]
    args = parser.parse_args(base)
    assert cli._fit_plan(args)[2][0][1].shifts is True and args.shifts is True  # run.json's
    args = parser.parse_args([*base, "--no-shifts"])
    assert cli._fit_plan(args)[2][0][1].shifts is False
    refused = [*base[1:-3], "--positional", "--shifts", "--out", str(tmp_path / "r")]
    with pytest.raises(ValueError, match="reads it"):
        cli._fit_plan(parser.parse_args(["fit", *refused]))
    assert cli.main(["fit", *refused]) == 2
    assert not (tmp_path / "r").exists()


def test_fit_window_defaults_to_the_training_trajectories_when_they_are_short(
        tmp_path, user_data, capsys):
    """30 snapshots per trajectory: the default window is all 30 (said), an explicit one is
    kept; split in time, the train block's length counts."""
    from msde_ppl import cli

    parser = cli.build_parser()
    base = ["fit", "--data", str(user_data), "--coarse", "8", "--micro", "0", "--no-positional",
            "--out", str(tmp_path / "r")]
    args = parser.parse_args(base)
    assert cli._fit_plan(args)[2][0][1].window == 30 and args.window == 30  # run.json's value
    assert "window: 30 snapshots, a whole training trajectory (the default 64" \
        in capsys.readouterr().out
    assert cli._fit_plan(parser.parse_args([*base, "--window", "16"]))[2][0][1].window == 16
    assert "window:" not in capsys.readouterr().out
    x, t = np.arange(64) / 64, np.arange(100) * 0.01
    u = np.sin(2 * np.pi * (x[None, None] - t[None, :, None]))
    save(from_arrays(u, time=t, x=x, split=["train"] * 80 + ["val"] * 10 + ["test"] * 10,
                     split_over="time"), tmp_path / "long.nc")
    args = parser.parse_args(["fit", "--data", str(tmp_path / "long.nc"), *base[3:]])
    assert cli._fit_plan(args)[2][0][1].window == 64  # 80 training snapshots
    save(from_arrays(u[:, :60], time=t[:60], x=x, split=["train"] * 40 + ["val"] * 10
                     + ["test"] * 10, split_over="time"), tmp_path / "short.nc")
    args = parser.parse_args(["fit", "--data", str(tmp_path / "short.nc"), *base[3:]])
    assert cli._fit_plan(args)[2][0][1].window == 40


def test_fit_holds_out_one_unlabelled_trajectory_in_time(tmp_path, capsys):
    from msde_ppl import cli

    x, t = np.arange(64) / 64, np.arange(100) * 0.01
    save(from_arrays(np.sin(2 * np.pi * (x[None, None] - t[None, :, None])), time=t, x=x),
         tmp_path / "one.nc")
    args = cli.build_parser().parse_args(["fit", "--data", str(tmp_path / "one.nc"), "--coarse",
                                          "8", "--micro", "0", "--out", str(tmp_path / "r")])
    ds = cli._fit_plan(args)[0]
    assert ds["split"].dims == ("time",) and args.window == 64  # 80 train snapshots
    said = capsys.readouterr()
    assert "held out in time, as there are fewer than 3 trajectories" in said.err
    assert "(train 80, val 10, test 10 snapshots)" in said.err


def test_fit_and_forecast_refuse_missing_inputs(tmp_path, call, user_data):
    out = call("fit", "--data", str(tmp_path / "none.nc"), "--coarse", "8", "--micro", "1",
                  "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "no dataset file" in out.stderr
    existing = tmp_path / "exists"
    existing.mkdir()
    out = call("fit", "--data", str(user_data), "--coarse", "8", "--micro", "1",
                  "--out", str(existing))
    assert out.returncode == 2 and "already exists" in out.stderr
    out = call("forecast", str(tmp_path / "norun"), "--data", str(user_data),
                  "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "not a saved fitted model" in out.stderr


def test_forecast_warns_when_a_trivial_forecast_does_as_well(capsys):
    from msde_ppl.cli import _print_baselines

    base = {"persistence": {"rel_l2_mean": 0.6}, "climatology": {"rel_l2_mean": 0.5}}
    _print_baselines({"rel_l2_mean": 0.4, "baselines": base})
    said = capsys.readouterr()
    assert "climatology 0.5000; the model: 0.4000" in said.out and not said.err
    # the delivered (calibrated) forecast is the one judged
    _print_baselines({"rel_l2_mean": 0.4, "calibrated": {"rel_l2_mean": 0.55},
                      "baselines": base})
    said = capsys.readouterr()
    assert "the model: 0.4000 (0.5500 calibrated)" in said.out
    assert "(rel-L2 0.5500) is no better than climatology (0.5000):" in said.err
    _print_baselines({"rel_l2_mean": 0.7, "baselines": base})
    assert "no better than persistence (0.6000) or climatology" in capsys.readouterr().err
    # a non-finite score or baseline: no verdict (a diverged forecast is warned of apart)
    _print_baselines({"rel_l2_mean": float("nan"), "baselines": base})
    _print_baselines({"rel_l2_mean": 0.4, "baselines": {"persistence": {"rel_l2_mean": np.nan}}})
    assert not capsys.readouterr().err
