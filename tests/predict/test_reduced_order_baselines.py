"""DMD and POD-SINDy baselines: exact recovery of linear dynamics, agreement with PyDMD's and
pysindy's own predictions, divergence handling, the missing-extra error, and `msde baseline`."""

import json
import sys

import numpy as np
import pytest

from msde_ppl.cli import main
from msde_ppl.data import from_arrays, save
from msde_ppl.pipeline.baselines import macro_rank, run_baseline
from msde_ppl.predict import pod_sindy
from msde_ppl.predict.dmd import dmd_forecast, fit_dmd

pytest.importorskip("pydmd")
pytest.importorskip("pysindy")

N_X, RANK = 64, 4
SPLIT = ["train", "train", "val", "test", "test"]


def _modes(rng, n=N_X, r=RANK):
    q, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return q


def _linear_ode():
    """``dz/dt = B z`` with a rotation and decay, its exact flow over ``dt``."""
    b = np.array([[-0.3, 2.0, 0.0, 0.0], [-2.0, -0.3, 0.0, 0.0],
                  [0.0, 0.0, -0.5, 1.0], [0.0, 0.0, -1.0, -0.5]])
    return b


def _dataset(rng, dt=0.005, n_time=201):
    """Trajectories ``x(t) = Q z(t)`` of the linear ODE from random initial conditions (exact
    flow: ``z_{k+1} = expm(B dt) z_k``)."""
    from scipy.linalg import expm

    q, step = _modes(rng), expm(_linear_ode() * dt)
    z = np.empty((len(SPLIT), n_time, RANK))
    z[:, 0] = rng.normal(size=(len(SPLIT), RANK)) + 1.0
    for k in range(1, n_time):
        z[:, k] = z[:, k - 1] @ step.T
    u = z @ q.T
    return from_arrays(u, time=np.arange(n_time) * dt, x=np.arange(N_X) / N_X,
                       split=SPLIT), q


def test_dmd_recovers_linear_dynamics_exactly(np_rng):
    """Without regularisation, rank-4 data of a linear map is forecast to rounding."""
    ds, _ = _dataset(np_rng)
    pred, info = dmd_forecast(ds, RANK, tikhonov=0.0)
    truth = ds["u"].sel(traj=ds.split == "test")
    err = np.linalg.norm(pred.values - truth.values) / np.linalg.norm(truth.values)
    assert err < 1e-4, err  # float32 storage of the data
    assert info["rank"] == RANK and info["fit_wall_time_s"] >= 0


def test_dmd_step_is_pydmds_predict(np_rng):
    """Our factored one-step operator equals PyDMD's own ``predict`` (the reference's loop)."""
    import pydmd

    snaps = np_rng.normal(size=(40, 30))
    model = fit_dmd(snaps, 6, 0.01)
    ref = pydmd.DMD(svd_rank=6, tikhonov_regularization=0.01)
    ref.fit(snaps.T)
    x = np_rng.normal(size=30)
    np.testing.assert_allclose(model.step(x[:, None])[:, 0], ref.predict(x).real, atol=1e-10)


def test_dmd_rank_is_checked(np_rng):
    with pytest.raises(ValueError, match="DMD rank"):
        fit_dmd(np_rng.normal(size=(5, 30)), 6)


def test_pod_sindy_recovers_linear_dynamics(np_rng):
    """POD finds the 4-dimensional span; SINDy's linear model from forward differences is
    biased by O(||B|| dt / 2) ~ 1%, so the forecast error over 1 time unit stays ~1%."""
    ds, q = _dataset(np_rng)
    pred, info = pod_sindy.pod_sindy_forecast(ds, RANK, seed=0)
    truth = ds["u"].sel(traj=ds.split == "test")
    err = np.linalg.norm(pred.values - truth.values) / np.linalg.norm(truth.values)
    assert err < 0.03, err
    assert info["threshold"] in pod_sindy.THRESHOLDS and info["threshold_chosen_on"] == "val"
    assert set(info["val_rel_l2"]) == {f"{t:g}" for t in pod_sindy.THRESHOLDS}
    assert info["finite_fraction"] == 1.0
    modes = pod_sindy.pod_modes(ds["u"].values[:2].reshape(-1, N_X), RANK, seed=0)
    # the POD span is the generating span: the projector onto it reproduces Q
    np.testing.assert_allclose(modes @ (modes.T @ q), q, atol=1e-5)


def test_sindy_rhs_is_pysindys_predict(np_rng):
    """The drift from coefficients and exponents equals pysindy's ``predict``, degree 2."""
    import pysindy as ps

    z = [np_rng.normal(size=(200, 3)) for _ in range(2)]
    dt = 0.01
    model = pod_sindy.fit_sindy(z, dt, 2, 0.05)
    ref = ps.SINDy(optimizer=ps.STLSQ(threshold=0.05, max_iter=10),
                   feature_library=ps.PolynomialLibrary(degree=2, include_bias=False))
    ref.fit([a[:-1] for a in z], t=dt, x_dot=[np.diff(a, axis=0) / dt for a in z])
    x = np_rng.normal(size=3)
    np.testing.assert_allclose(model.rhs(x), ref.predict(x[None])[0], rtol=1e-10, atol=1e-12)


def test_a_blowing_up_latent_path_is_cut_and_not_finite():
    """``dz/dt = 5 z`` from 1 leaves the bound 10 at t = ln(10)/5 = 0.46: the path follows
    e^{5t} until then and is NaN after."""
    model = pod_sindy.SINDyModel(coefficients=np.array([[5.0]]), powers=np.array([[1]]),
                                 threshold=0.0, equations=["5 x0"], converged=True)
    times = np.linspace(0, 1, 101)
    path, nfe = pod_sindy.integrate(model, np.array([1.0]), times, bound=10.0)
    finite = np.isfinite(path[:, 0])
    assert finite[:46].all() and not finite[47:].any()
    np.testing.assert_allclose(path[finite, 0], np.exp(5 * times[finite]), rtol=2e-2)
    assert nfe > 0


def test_without_a_val_split_pod_sindy_needs_a_threshold(np_rng):
    ds, _ = _dataset(np_rng)
    ds = ds.assign_coords(split=("traj", ["train", "train", "train", "test", "test"]))
    with pytest.raises(ValueError, match="val split"):
        pod_sindy.pod_sindy_forecast(ds, RANK)
    _, info = pod_sindy.pod_sindy_forecast(ds, RANK, threshold=0.01)
    assert info["threshold"] == 0.01 and info["threshold_chosen_on"] == "given"


def test_missing_extra_names_the_install_command(np_rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydmd", None)  # import pydmd now raises ImportError
    ds, _ = _dataset(np_rng)
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[baselines\]\""):
        run_baseline("dmd", ds, rank=RANK)


def test_rank_needs_a_coarse_grid_for_own_data(np_rng):
    ds, _ = _dataset(np_rng)
    with pytest.raises(ValueError, match="--coarse or --rank"):
        run_baseline("dmd", ds)
    assert macro_rank(ds, [8]) == 13


def test_msde_baseline_writes_the_forecast_schema(np_rng, tmp_path, capsys):
    ds, _ = _dataset(np_rng)
    save(ds, tmp_path / "d.nc")
    out = tmp_path / "dmd"
    assert main(["baseline", "dmd", "--data", str(tmp_path / "d.nc"), "--coarse", "8",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["dmd"]
    assert entry["rank"] == 13 and entry["finite"] is True
    for key in ("rel_l2_mean", "rel_l2_std", "n_pairs", "fit_wall_time_s",
                "predict_wall_time_s"):
        assert key in entry
    assert metrics["meta"]["split"] == "test"
    assert (out / "prediction.nc").is_file()
    assert "rel-L2" in capsys.readouterr().out
    # an existing output directory is refused, and nothing in it is touched
    before = (out / "metrics.json").read_bytes()
    assert main(["baseline", "dmd", "--data", str(tmp_path / "d.nc"), "--coarse", "8",
                 "--out", str(out)]) == 2
    assert (out / "metrics.json").read_bytes() == before
    # coarse DNS needs the PDE: own data is refused with the reason
    assert main(["baseline", "coarse_dns", "--data", str(tmp_path / "d.nc"),
                 "--out", str(tmp_path / "c")]) == 2
    assert "'case' attribute" in capsys.readouterr().err
