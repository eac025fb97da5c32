"""Calibration checks on toy forecasts whose calibration is known exactly.

Tolerances: ``n`` independent observations give an empirical coverage with binomial standard
error ``sqrt(p (1 - p) / n)``; we allow 4 standard errors (two-sided false-alarm rate 6e-5 per
level). Ensemble intervals between order statistics ``X_(i), X_(j)`` of ``S`` exchangeable
members cover ``(j - i) / (S + 1)``. The forecasts read the ``q`` quantile at position
``q (S + 1)``; with ``S + 1`` divisible by the quantile grid these are exactly order statistics
and the target is ``p`` itself (NumPy's default reading would give ``p (S - 1) / (S + 1)``).
"""

import numpy as np
import pytest
import xarray as xr

from msde_ppl.diagnostics import checks

N_OBS, N_MEMBERS = 4000, 199
LEVELS = (0.1, 0.5, 0.8, 0.9, 0.95)


def _toy(np_rng, spread=1.0):
    """Observations y ~ N(m, s^2) and an ensemble drawn from N(m, (spread s)^2)."""
    m = np_rng.normal(size=N_OBS)
    s = np.exp(np_rng.normal(scale=0.3, size=N_OBS))
    y = m + s * np_rng.normal(size=N_OBS)
    members = m + spread * s * np_rng.normal(size=(N_MEMBERS, N_OBS))
    return m, s, xr.DataArray(y, dims="point"), xr.DataArray(members, dims=("sample", "point"))


def test_gaussian_interval_coverage_is_nominal_within_binomial_error(np_rng):
    m, s, y, _ = _toy(np_rng)
    from scipy import stats

    for p in LEVELS:
        z = stats.norm.ppf((1 + p) / 2)
        got = checks.interval_coverage(y, m - z * s, m + z * s)
        assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / N_OBS), (p, got)


def test_ensemble_coverage_curve_matches_order_statistics(np_rng):
    _, _, y, members = _toy(np_rng)
    curve = checks.coverage_curve(members, y, LEVELS)
    target = np.asarray(LEVELS)  # the positions q (S + 1) are whole numbers: exact
    err = np.abs(curve["empirical"].values - target)
    assert np.all(err < 4 * curve["se"].values), (curve["empirical"].values, target)
    assert curve.attrs["n"] == N_OBS


def test_under_dispersed_ensemble_is_detected(np_rng):
    _, _, y, members = _toy(np_rng, spread=0.6)
    curve = checks.coverage_curve(members, y, LEVELS)
    target = np.asarray(LEVELS)
    # coverage of N(0, 0.36) intervals under N(0, 1): far below nominal at every level > 0.1
    assert np.all((target - curve["empirical"].values)[1:] > 4 * curve["se"].values[1:])
    pit = checks.pit_histogram(checks.pit_values(members, y))
    assert pit["p_value"] < 1e-6
    # U-shaped: the outer bins hold far more than their share
    assert pit["counts"][0] > 1.5 * pit["expected"] and pit["counts"][-1] > 1.5 * pit["expected"]


def test_pit_of_exchangeable_ensemble_is_uniform(np_rng):
    _, _, y, members = _toy(np_rng)
    pit = checks.pit_values(members, y)
    assert pit.shape == (N_OBS,) and np.all((pit > 0) & (pit < 1))
    hist = checks.pit_histogram(pit)
    assert hist["counts"].sum() == N_OBS
    assert hist["p_value"] > 1e-3  # seeded; a calibrated ensemble fails this with prob. 1e-3


def test_pit_breaks_ties_at_random():
    # a point-mass ensemble equal to the observation: the rank is uniform over S + 1 slots
    pit = checks.pit_values(np.zeros((9, 20000)), np.zeros(20000))
    hist = checks.pit_histogram(pit)
    assert hist["p_value"] > 1e-3


def test_spread_skill_ratio_is_one_when_calibrated(np_rng):
    m, s, y, _ = _toy(np_rng)
    times = np.arange(4)
    fc = xr.Dataset({
        "mean": (("time", "x"), np.tile(m, (4, 1))),
        "std": (("time", "x"), np.tile(s, (4, 1))),
        "obs": (("time", "x"), np.stack([m + s * np_rng.normal(size=N_OBS) for _ in times])),
    }, coords={"time": times})
    ss = checks.spread_skill(fc)
    assert ss["ratio"].dims == ("time",)
    # MSE of N_OBS terms: relative SE of the MSE is about sqrt(2 / n) x (heteroscedasticity
    # factor E s^4 / (E s^2)^2 = exp(4 * 0.09) ~ 1.43), so the ratio has SE ~ 0.6 sqrt(2 / n)
    tol = 4 * 0.5 * np.sqrt(2 * 1.44 / N_OBS)
    np.testing.assert_allclose(ss["ratio"].values, 1.0, atol=tol)
    over = checks.spread_skill(fc.assign(std=0.5 * fc["std"]))
    np.testing.assert_allclose(over["ratio"].values, 0.5, atol=tol)
    # a mean that reproduces the observations at lead time 0 (a calibrated forecast holds its
    # initial snapshot, to float32 rounding) has no ratio there (not spread / 1e-9)
    held = fc.copy(deep=True)
    held["mean"][0] = fc["obs"][0].astype(np.float32).astype(np.float64)
    ratio = checks.spread_skill(held)["ratio"].values
    assert np.isnan(ratio[0]) and np.isfinite(ratio[1:]).all()
    # a blown-up value at lead time 2 leaves no finite ratio there, nor a finite summary
    blown = fc.copy(deep=True)
    blown["mean"][2, 5] = np.nan
    ratio = checks.spread_skill(blown)["ratio"].values
    assert np.isnan(ratio[2]) and np.isfinite(np.delete(ratio, 2)).all()
    summary = checks.calibration_summary(blown.assign(
        q05=blown["mean"] - 1.64 * blown["std"], q95=blown["mean"] + 1.64 * blown["std"],
        crps=("time", np.ones(4))))
    assert np.isnan(summary["spread_skill_ratio"]) and np.isnan(summary["coverage_90"])


def test_ensemble_crps_matches_gaussian_closed_form(np_rng):
    m, s, y, members = _toy(np_rng)
    ens = checks.crps_ensemble(members.values, y.values)
    exact = checks.crps_gaussian(m, s, y.values)
    # the fair CRPS is unbiased; its per-point MC error ~ 0.4 s / sqrt(S), averaged over points
    assert abs(ens.mean() - exact.mean()) < 4 * 0.5 * s.mean() / np.sqrt(N_MEMBERS * N_OBS)
    assert np.corrcoef(ens, exact)[0, 1] > 0.95


def test_coverage_from_forecast_bounds(np_rng):
    _, _, y, members = _toy(np_rng)
    levels = np.array([0.5, 0.9])
    def bound(probs):
        return (members.quantile(probs, dim="sample", method="weibull")
                .rename(quantile="level").drop_vars("level"))

    fc = xr.Dataset({"obs": y, "lower": bound((1 - levels) / 2),
                     "upper": bound((1 + levels) / 2)}).assign_coords(level=levels)
    got = checks.coverage_from_bounds(fc)
    ref = checks.coverage_curve(members, y, levels)
    np.testing.assert_allclose(got["empirical"], ref["empirical"])


def test_elbo_convergence(np_rng):
    steps = np.arange(2000)
    noise = 0.01 * np_rng.normal(size=steps.size)
    flat = -2.0 + 3.0 * np.exp(-steps / 100) + noise
    check = checks.elbo_convergence(flat)
    assert check.converged and check.rel_change < 0.01
    still_falling = -2.0 - 1e-3 * steps + noise  # loses 0.4 over the last 20% of 2 units
    check = checks.elbo_convergence(still_falling)
    assert not check.converged and check.rel_change > 0.1
    assert check.smoothed_end < check.smoothed_prev
    with pytest.raises(ValueError, match="finite losses"):
        checks.elbo_convergence(flat[:15])
    with pytest.raises(ValueError, match="finite losses"):
        checks.elbo_convergence(np.append(flat, np.nan))


def _correlated_forecast(rng, n_traj=12, n_time=10, n_x=20, n_members=41):
    """A calibrated ensemble (observation and members exchangeable) of fields whose errors
    are half shared by whole trajectories: one common offset per trajectory and member, so
    values of a trajectory are correlated (0.5)."""
    dims = ("traj", "time", "x")
    y = rng.normal(size=(n_traj, 1, 1)) + rng.normal(size=(n_traj, n_time, n_x))
    members = (rng.normal(size=(n_members, n_traj, 1, 1))
               + rng.normal(size=(n_members, n_traj, n_time, n_x)))
    return (xr.DataArray(members, dims=("sample", *dims)), xr.DataArray(y, dims=dims))


def test_coverage_standard_error_accounts_for_correlated_values():
    """Over independent replicates, the spread of (coverage - its expectation) must match the
    reported se: for the batch-means se over trajectories it does (the sd of 40 errors has a
    relative standard error of 1/sqrt(80) = 11%: allowed ratio 0.65-1.5), while the binomial se
    treats the 2,400 correlated values as independent and understates the error several-fold."""
    rng = np.random.default_rng(7)
    target = 0.9 * 40 / 42  # order statistics of 41 members (module docstring)
    errors, ses = [], []
    for _ in range(40):
        members, y = _correlated_forecast(rng)
        curve = checks.coverage_curve(members, y, (0.9,))
        errors.append(float(curve["empirical"][0]) - target)
        ses.append(float(curve["se"][0]))
        assert curve.attrs["n_blocks"] == 12
    ratio = np.std(errors) / np.sqrt(np.mean(np.square(ses)))
    assert 0.65 < ratio < 1.5, ratio
    assert np.std(errors) / np.sqrt(0.9 * 0.1 / y.size) > 3


def test_pit_test_with_design_effect_keeps_its_size_on_correlated_fields():
    """A calibrated but correlated forecast: the independent-values chi-square rejects almost
    always; the design-effect-corrected one at about its nominal rate (<= 20% at the 5% level
    over 40 replicates, a loose bound for the second-order Rao-Scott correction)."""
    rng = np.random.default_rng(11)
    rejected_naive = rejected_blocked = 0
    for _ in range(40):
        members, y = _correlated_forecast(rng)
        pit = checks.pit_values(members.transpose("sample", ...).values, y.values, rng=rng)
        rejected_naive += checks.pit_histogram(pit)["p_value"] < 0.05
        hist = checks.pit_histogram(pit, n_blocks=12)
        rejected_blocked += hist["p_value"] < 0.05
        assert hist["design_effect"] > 5
    assert rejected_naive >= 30
    assert rejected_blocked <= 8
