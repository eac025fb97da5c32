"""Runs that survive faults (docs/reliability.md): a real multiscale ``msde fit`` killed with
SIGKILL, or interrupted with SIGINT while it compiles, resumes to bit-identical parameters and
loss trace; a non-finite loss keeps the last good state; incomplete runs are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import xarray as xr

from msde_ppl import Fitted, forecast, forecast_metrics
from msde_ppl.cli import main
from msde_ppl.data import from_arrays, load, save
from msde_ppl.inference import checkpoint_record
from msde_ppl.pipeline import run

# 2 stages (implicit-scale 200 steps, then multiscale 600) in chunks of 100 steps
FIT = ["--coarse", "8", "--micro", "2", "--steps", "800", "--window", "16", "--decoder",
       "stencil", "--scale-kernel", "frozen", "--checkpoint-every", "0"]


def _dataset(path, shift=0.0):
    x = np.arange(64) / 64
    t = np.arange(30) * 0.01
    u = np.sin(2 * np.pi * (x[None, None] - t[None, :, None] - np.arange(3)[:, None, None] / 3
                            + shift))
    save(from_arrays(u.astype(np.float32), time=t, x=x, split=["train", "val", "test"]), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("data") / "user.nc")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted fit (in this process)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    assert main(["fit", "--data", str(data), *FIT, "--out", str(run_dir)]) == 0
    return run_dir


def _start_fit(args, compile_cache=True):
    env = dict(os.environ)
    if not compile_cache:  # compile for real, not load the reference's programs
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return subprocess.Popen([sys.executable, "-m", "msde_ppl.cli", "fit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process, timeout=240.0):
    start = time.monotonic()
    while not condition():
        assert process.poll() is None, f"the fit ended first: {process.communicate()}"
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.005)


def _status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.slow  # ~3 min of subprocess fits; the library's resume tests run by default
def test_interrupted_then_killed_fit_resumes_bit_identically(data, reference, tmp_path, capsys):
    """One run, faulted twice: Ctrl-C while the first stage compiles (a checkpoint of stage 0
    is kept and the run is marked), then, resumed in a new process, SIGKILL in the middle of the
    second stage (nothing can mark the run); resumed again, it ends bit-identical to the
    uninterrupted fit."""
    run_dir = tmp_path / "run"
    proc = _start_fit(["--data", str(data), *FIT, "--out", str(run_dir)], compile_cache=False)
    _wait_for(lambda: (run_dir / "status.json").is_file(), proc)  # set up, not yet compiled
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGINT, err  # never a crash (-11)
    status = _status(run_dir)
    assert status["state"] == "interrupted" and "--resume" in status["reason"]
    assert "interrupted" in err and "Traceback" not in err
    assert checkpoint_record(run_dir / "stages" / "stage0.ckpt.npz")["step"] == status["step"]
    assert main(["forecast", str(run_dir), "--data", str(data), "--out",
                 str(tmp_path / "fc")]) == 2
    assert "--allow-incomplete" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="not complete"):
        last = Fitted.load(run_dir)  # the last saved state is there
    assert last.losses.size == status["step"]
    assert main(["fit", "--resume", str(run_dir), "--steps", "900"]) == 2  # settings are kept
    assert "takes no other option (got --steps)" in capsys.readouterr().err

    proc = _start_fit(["--resume", str(run_dir)])
    ckpt = run_dir / "stages" / "stage1.ckpt.npz"

    def in_second_stage():
        try:
            return ckpt.is_file() and checkpoint_record(ckpt)["step"] >= 100
        except ValueError:
            return False

    _wait_for(in_second_stage, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _status(run_dir)["state"] == "running"  # killed: nothing could mark it
    assert main(["forecast", str(run_dir), "--data", str(data), "--out",
                 str(tmp_path / "fc")]) == 2
    assert "killed" in capsys.readouterr().err

    assert main(["fit", "--resume", str(run_dir)]) == 0
    assert "process" in capsys.readouterr().out  # it said what it resumed from
    for name in ("params.eqx", "losses.npy"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    assert _status(run_dir)["state"] == "complete"
    assert main(["fit", "--resume", str(run_dir)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_fit_and_forecast_any_dataset(data, reference, tmp_path, capsys):
    model = json.loads((reference / "fitted.json").read_text())["recipe"]["config"]
    assert model["encoder"] == "mlp" and model["decoder"] == "stencil"
    assert model["learn_kernel"] is False and model["n_micro"] == 2
    fitted = Fitted.load(reference)
    losses = fitted.losses
    assert losses.shape == (800,) and np.isfinite(losses).all()  # both stages' log
    assert losses[-30:].mean() < losses[:10].mean() - 1.0  # it learned
    implicit = Fitted.load(reference / "stages" / "stage0")  # the K = 0 model
    assert implicit.config.n_micro == 0
    np.testing.assert_array_equal(implicit.losses, losses[:200])
    # a forecast of the loaded model, scored; a second one reuses the compiled program
    ds = load(data)
    fc = forecast(jax.random.key(0), fitted, ds, split="test", n_samples=16)
    assert fc["mean"].dims == ("traj", "time", "x") and fc.sizes["traj"] == 1
    scores = forecast_metrics(fc)
    assert all(np.isfinite(scores[k]) for k in ("rel_l2_mean", "crps", "coverage_90"))
    ((roll, decode, *_),) = fitted._compiled.values()
    # the micro part's weight b and the gain a move every member by a r_0 + (b - 1) micro,
    # r_0 the first residual with respect to the macro part (the same key: the same members)
    gain, weight = np.linspace(1.0, 0.3, 30), np.linspace(0.0, 0.8, 30)
    moved = forecast(jax.random.key(0), fitted, ds, split="test", n_samples=16,
                     residual_gain=gain, micro_weight=weight)
    assert roll._cache_size() == 1 and decode._cache_size() == 1
    r0 = (fc["obs"] - fc["mean"] + fc["micro"]).isel(time=0, drop=True)
    shift = (xr.DataArray(gain, dims="time") * r0
             + (xr.DataArray(weight, dims="time") - 1) * fc["micro"])
    for name in ("mean", "q05", "q95"):
        np.testing.assert_allclose(moved[name], fc[name] + shift, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(moved["std"], fc["std"], rtol=1e-6)
    np.testing.assert_allclose(moved["mean"].isel(time=0), fc["obs"].isel(time=0), atol=1e-5)
    # the per-trajectory spread multiplier still reads the reconstruction residual y_0 - mean_0
    from msde_ppl.predict import ResidualSpread

    rms = np.sqrt(((fc["obs"] - fc["mean"]).isel(time=0) ** 2).mean("x")).values
    micro_rms = np.sqrt((fc["micro"].isel(time=0) ** 2).mean("x")).values
    assert np.all(micro_rms > 0.2 * rms)  # r_0 w.r.t. the macro part is another residual
    spread = ResidualSpread(0.7, float(rms[0]))  # multiplier 1 at e_0, not at r_0
    widened = forecast(jax.random.key(0), fitted, ds, split="test", n_samples=16,
                       residual_gain=gain, micro_weight=weight, residual_spread=spread)
    np.testing.assert_allclose(widened["spread_multiplier"], spread.multiplier(rms), rtol=1e-5)
    with pytest.raises(ValueError, match="needs residual_gain"):
        forecast(jax.random.key(0), fitted, ds, split="test", n_samples=16, micro_weight=weight)
    with pytest.raises(ValueError, match="micro_weight must be 30"):
        forecast(jax.random.key(0), fitted, ds, split="test", n_samples=16,
                 residual_gain=gain, micro_weight=weight[:-1])
    forecast(jax.random.key(1), fitted, ds, split="test", n_samples=16)
    assert roll._cache_size() == 1 and decode._cache_size() == 1
    out_dir = tmp_path / "fc"
    assert main(["forecast", str(reference), "--data", str(data), "--samples", "4",
                 "--integrator", "euler", "--substeps", "2", "--horizon", "12",
                 "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "trivial baselines (rel-L2): persistence" in printed
    assert "calibrated on val" in printed  # the default when the data have a val split
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert set(metrics) == {"model", "meta"}  # no PDE behind user data: no coarse DNS
    model = metrics["model"]
    assert np.isfinite(model["rel_l2_mean"]) and model["finite"] and model["n_pairs"] == 12
    assert len(model["lead_time"]["rel_l2"]) == 12 and model["calibrated"]["fitted_on"] == "val"
    # one val trajectory: no trajectory to hold out, so the micro part is not weighted
    assert "micro_weight" not in model["calibrated"] and "residual_gain" in model["calibrated"]
    delivered = xr.open_dataset(out_dir / "forecast.nc")
    assert "micro_weight" not in delivered and "residual_gain" in delivered
    delivered.close()
    assert model["diverged_members"] == 0 and model["n_members"] == 4
    # the fit was validated on the val split: its record is saved with the model
    record = fitted.validation
    assert record["best_step"] > 0 and record["stopped_by"] is None
    assert [s for s, _ in record["history"]] == [0, 300, 500, 600]  # stage 2
    assert main(["forecast", str(reference), "--data", str(data), "--no-calibrate",
                 "--calibrate-on", "val", "--out", str(tmp_path / "x")]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main(["forecast", str(reference), "--data", str(data), "--out", str(out_dir)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_non_finite_loss_keeps_the_last_good_state(data, tmp_path, capsys):
    run_dir = tmp_path / "diverged"
    code = main(["fit", "--data", str(data), "--coarse", "8", "--micro", "2", "--steps", "8",
                 "--window", "16", "--lr", "1e4", "--out", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 1
    assert "non-finite loss or gradient at step" in err and "Traceback" not in err
    status = _status(run_dir)
    assert status["state"] == "failed" and "non-finite" in status["reason"]
    with pytest.warns(UserWarning, match="failed"):
        last = Fitted.load(run_dir)
    assert last.losses.size == status["step"] and np.isfinite(last.losses).all()
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(last.params))
    assert main(["forecast", str(run_dir), "--data", str(data), "--out",
                 str(tmp_path / "fc")]) == 2
    assert "failed" in capsys.readouterr().err
    assert main(["fit", "--resume", str(run_dir)]) == 2  # it would fail the same way again
    assert "resuming would repeat it" in capsys.readouterr().err


def test_resume_refuses_other_data_and_non_runs(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    own = _dataset(tmp_path / "own.nc")
    run_dir.mkdir()
    record = {"command": "fit", "args": {"data": str(own)}, "data_sha256": "0"}
    (run_dir / "run.json").write_text(json.dumps(record))
    assert main(["fit", "--resume", str(run_dir)]) == 2
    assert "damaged" in capsys.readouterr().err
    older = {"data": str(own), "coarse": [8], "micro": 2, "steps": 800}  # no budget, drift, ...
    (run_dir / "run.json").write_text(json.dumps({**record, "args": older}))
    assert main(["fit", "--resume", str(run_dir)]) == 2
    assert "started by another version of msde_ppl" in capsys.readouterr().err
    assert main(["fit", "--resume", str(tmp_path)]) == 2
    assert "not a run directory of `msde fit`" in capsys.readouterr().err


def test_run_json_records_the_floors_and_the_position_choice(reference):
    """A single sine (k = 1) is held by every coarse grid: every floor is float32 round-off."""
    record = json.loads((reference / "run.json").read_text())
    # the drift's position input as decided, so that a resume re-plans the same model
    assert record["args"]["positional"] is False
    assert record["args"]["stencil_width"] == 128  # as decided too (8 coarse nodes)
    floors = record["resolution_floor"]
    assert floors["coarse"] == [8] and floors["rel_l2"] == floors["grids"]["8"]
    assert list(floors["grids"]) == ["8", "32", "16", "4"]
    assert all(0 <= v < 1e-6 for v in floors["grids"].values())


def test_resume_reads_every_setting_of_msde_fit(data, tmp_path, monkeypatch):
    """Every option of msde fit but --out and --resume is recorded in run.json and read back by
    --resume (an option missing there crashed a resume: --ema); a record written before --ema
    was recorded resumes with none (a checkpoint with an EMA refuses that itself)."""
    from msde_ppl import cli

    parser = cli.build_parser()
    fit = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "fit")
    options = {a.dest for a in fit[1]._actions} - {"help", "out", "resume"}
    assert options == set(cli._FIT_SETTINGS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = parser.parse_args(["fit", "--data", str(data), "--coarse", "8", "--micro", "2",
                              "--ema", "0.99", "--window", "16", "--out", str(run_dir)])
    settings = {k: getattr(args, k) for k in cli._FIT_SETTINGS}
    settings["data"] = str(data)
    record = {"command": "fit", "args": settings, "data_sha256": cli._file_digest(data)}
    (run_dir / "run.json").write_text(json.dumps(record))
    resume = parser.parse_args(["fit", "--resume", str(run_dir)])
    assert cli._resumed_fit_args(resume).ema == 0.99
    del settings["ema"]
    del settings["positional"]
    del settings["shifts"]
    del settings["stencil_width"]
    (run_dir / "run.json").write_text(json.dumps(record))
    monkeypatch.setattr(run, "FULL_WIDTH_MAX_NODES", 4)  # a new fit of this grid: width 64
    again = cli._resumed_fit_args(resume)
    assert again.ema is None and again.coarse == [8] and again.out == run_dir
    # a record from before --positional re-plans as that version did: off on data that are not
    # a built-in case (the case's choice on a built-in one); one from before --shifts, without;
    # one from before --stencil-width, at the width every fit had then
    assert again.positional == "legacy" and again.shifts is False and again.stencil_width == 128
    _, config, stages = cli._fit_plan(again)
    assert config.positional is False and all(not train.shifts for _, train in stages)
    assert config.macro_hidden == (128, 128, 128)


def test_nothing_is_written_for_a_split_without_training_trajectories(tmp_path, capsys):
    x = np.arange(16) / 16
    path = tmp_path / "no_train.nc"
    save(from_arrays(np.zeros((2, 10, 16), np.float32), time=np.arange(10) * 0.1, x=x,
                     split=["val", "test"]), path)
    code = main(["fit", "--data", str(path), "--coarse", "4", "--micro", "1", "--window", "4",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "no trajectory in split 'train'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "expected a finite number > 0, got '-1'"),
    (["--lr", "0"], "expected a finite number > 0"),
    (["--lr", "nan"], "expected a finite number > 0, got 'nan'"),
    (["--lr", "inf"], "expected a finite number > 0"),
    (["--checkpoint-every", "-5"], "expected a finite number >= 0"),
    ([], "--data, --coarse, --micro, --out required (or --resume RUN_DIR)"),
])
def test_numbers_out_of_range_are_refused(tmp_path, capsys, args, message):
    try:
        code = main(["fit", *args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_status_file_and_outputs_follow_the_umask(reference):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("status.json", "run.json", "params.eqx", "fitted.json"):
        assert (reference / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
