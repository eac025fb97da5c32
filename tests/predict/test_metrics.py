"""The relative-L2 metric of docs/method.md §7, against hand computation."""

import numpy as np
import pytest
import xarray as xr

from msde_ppl.predict import noise_floor, pooled_relative_l2, relative_l2


def arr(values, dims=("traj", "time", "x")):
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims=dims)


def test_relative_l2_by_hand():
    truth = arr([[[3.0, 4.0], [1.0, 0.0]]])
    pred = arr([[[0.0, 0.0], [1.0, 1.0]]])
    np.testing.assert_allclose(relative_l2(truth, pred).values, [[1.0, 1.0]])
    pred = arr([[[3.0, 4.0], [1.0, 0.5]]])
    np.testing.assert_allclose(relative_l2(truth, pred).values, [[0.0, 0.5]])


def test_pooled_over_traj_and_time_with_eval_window(np_rng):
    truth = arr(np_rng.normal(size=(3, 5, 2, 4)), ("traj", "time", "x", "y"))
    pred = truth * 0.9 + 0.1 * arr(np_rng.normal(size=(3, 5, 2, 4)), truth.dims)
    per_pair = np.array([[np.linalg.norm(truth[r, i] - pred[r, i]) / np.linalg.norm(truth[r, i])
                          for i in range(5)] for r in range(3)])
    got = pooled_relative_l2(truth, pred, eval_steps=4)
    assert got["n"] == 12
    assert got["mean"] == pytest.approx(per_pair[:, :4].mean(), rel=1e-12)
    assert got["std"] == pytest.approx(per_pair[:, :4].std(), rel=1e-12)


def test_shape_mismatch_refused():
    with pytest.raises(ValueError, match="differ"):
        relative_l2(arr(np.zeros((1, 2, 3))), arr(np.zeros((1, 2, 4))))


def test_noise_floor():
    clean = np.ones((2, 3, 100))
    ds = xr.Dataset({"u": (("traj", "time", "x"), clean * 1.1),
                     "u_clean": (("traj", "time", "x"), clean)})
    assert noise_floor(ds)["mean"] == pytest.approx(0.1 / 1.1)
    assert noise_floor(ds.drop_vars("u_clean")) is None


def test_a_forecast_holding_nan_never_scores():
    """Sums do not skip NaN: one non-finite value makes every metric non-finite."""
    from msde_ppl.predict import forecast_metrics

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 5, 8))
    mean = obs + 0.01
    mean[1, 3, 2] = np.nan
    dims = ("traj", "time", "x")
    fc = xr.Dataset({"obs": (dims, obs), "mean": (dims, mean), "std": (dims, np.ones_like(obs)),
                     "q05": (dims, mean - 1), "q95": (dims, mean + 1),
                     "crps": (("traj", "time"), np.abs(mean - obs).mean(-1))})
    metrics = forecast_metrics(fc)
    for key in ("rel_l2_mean", "coverage_90", "crps"):
        assert np.isnan(metrics[key]), key
    assert metrics["finite"] is False


def test_nan_drift_weights_give_non_finite_scores(tiny_fit, tiny_ds):
    """End to end: a model whose drift weights are NaN forecasts NaN, and no metric of that
    forecast is finite (a NaN must never score as a good forecast)."""
    import jax

    from msde_ppl import forecast
    from msde_ppl.predict import forecast_metrics

    params = dict(tiny_fit.params)
    params["drift$params"] = jax.tree.map(lambda a: np.full_like(a, np.nan),
                                          params["drift$params"])
    broken = tiny_fit.replace(params=params)
    fc = forecast(jax.random.key(0), broken, tiny_ds, n_samples=2, n_steps=6)
    assert not np.isfinite(fc["mean"].values).all()
    metrics = forecast_metrics(fc)
    assert metrics["finite"] is False
    for key in ("rel_l2_mean", "rel_l2_clean_mean", "coverage_90", "crps"):
        assert not np.isfinite(metrics[key]), key


def test_persistence_and_climatology_baselines_by_hand(np_rng):
    from msde_ppl.predict import baseline_metrics

    dims = ("traj", "time", "x")
    obs = np_rng.normal(size=(2, 6, 8)) + 3.0
    fc = xr.Dataset({"obs": (dims, obs)}, coords={"time": np.arange(6) * 0.1})
    train = xr.Dataset({"u": (dims, np_rng.normal(size=(3, 4, 8)))})
    got = baseline_metrics(fc, train, eval_steps=5)

    def pooled(pred):
        err = np.linalg.norm(obs[:, :5] - pred[:, :5], axis=-1) / np.linalg.norm(obs[:, :5],
                                                                                axis=-1)
        return err.mean(), err.std()

    held = np.broadcast_to(obs[:, :1], obs.shape)
    clim = np.broadcast_to(train["u"].values.mean((0, 1)), obs.shape)
    for name, pred in (("persistence", held), ("climatology", clim)):
        mean, std = pooled(pred)
        assert got[name]["rel_l2_mean"] == pytest.approx(mean, rel=1e-12)
        assert got[name]["rel_l2_std"] == pytest.approx(std, rel=1e-12)
    assert set(baseline_metrics(fc)) == {"persistence"}  # no training split: no climatology


def test_lead_time_scores_by_hand_and_pooled_back(np_rng):
    """Each lead time's rel-L2 / coverage / spread-skill / baselines by hand; their means over
    lead times give the pooled rel-L2 of forecast_metrics and baseline_metrics."""
    from msde_ppl.predict import baseline_metrics, forecast_metrics, lead_time_metrics

    dims = ("traj", "time", "x")
    obs = np_rng.normal(size=(3, 7, 5)) + 2.0
    mean = obs + 0.3 * np_rng.normal(size=obs.shape)
    std = np.full(obs.shape, 0.2)
    fc = xr.Dataset({"obs": (dims, obs), "mean": (dims, mean), "std": (dims, std),
                     "q05": (dims, mean - 0.33), "q95": (dims, mean + 0.33),
                     "crps": (("traj", "time"), np_rng.uniform(size=(3, 7)))},
                    coords={"time": 1.0 + 0.5 * np.arange(7)})
    train = xr.Dataset({"u": (dims, np_rng.normal(size=(2, 4, 5)))})
    got = lead_time_metrics(fc, train, eval_steps=6)
    assert got.sizes["time"] == 6
    np.testing.assert_allclose(got["lead_time"], 0.5 * np.arange(6))
    err = np.linalg.norm(obs - mean, axis=-1) / np.linalg.norm(obs, axis=-1)
    np.testing.assert_allclose(got["rel_l2"], err[:, :6].mean(0), rtol=1e-12)
    inside = (obs >= mean - 0.33) & (obs <= mean + 0.33)
    np.testing.assert_allclose(got["coverage_90"], inside[:, :6].mean((0, 2)), rtol=1e-12)
    rmse = np.sqrt(((obs - mean) ** 2)[:, :6].mean((0, 2)))
    np.testing.assert_allclose(got["spread_skill"], 0.2 / rmse, rtol=1e-12)
    np.testing.assert_allclose(got["crps"], fc["crps"].values[:, :6].mean(0), rtol=1e-12)
    pooled = forecast_metrics(fc, 6)
    assert float(got["rel_l2"].mean()) == pytest.approx(pooled["rel_l2_mean"], rel=1e-12)
    base = baseline_metrics(fc, train, 6)
    for name in ("persistence", "climatology"):
        assert float(got[name].mean()) == pytest.approx(base[name]["rel_l2_mean"], rel=1e-12)
    assert float(got["persistence"][0]) == 0.0  # the held snapshot is exact at lead time 0
    # a mean that reproduces the observations at lead time 0 (a calibrated forecast holds its
    # initial snapshot, to float32 rounding) has no spread-skill ratio there; elsewhere it has
    held = fc.copy(deep=True)
    held["mean"][:, 0] = (obs[:, 0].astype(np.float32)).astype(np.float64)
    ratios = lead_time_metrics(held, train, eval_steps=6)["spread_skill"].values
    assert np.isnan(ratios[0])
    np.testing.assert_allclose(ratios[1:], 0.2 / rmse[1:], rtol=1e-12)
    # a forecast that blew up at lead time 3 does not score there (inf or NaN), elsewhere it does
    broken = fc.copy(deep=True)
    for name in ("mean", "q95"):
        broken[name][0, 3, 2] = np.inf
    bad = lead_time_metrics(broken, train, eval_steps=6)
    for name in ("rel_l2", "coverage_90", "spread_skill"):
        assert not np.isfinite(bad[name][3]), name
        assert np.isfinite(np.delete(bad[name].values, 3)).all(), name


def test_diverged_members_beyond_the_data_range_or_not_finite():
    from msde_ppl.predict import diverged_members, divergence_limits

    lower, upper = divergence_limits([[0.0, 1.0], [-2.0, 2.0]])  # two fields
    np.testing.assert_allclose(lower, [-1.0, -6.0])
    np.testing.assert_allclose(upper, [2.0, 6.0])
    draws = np.zeros((4, 5, 2, 3))  # (T, S, C, x)
    draws[3, 1, 0, 2] = 2.5  # member 1 leaves field 0's bounds at the last time
    draws[1, 2, 1, 0] = 5.9  # member 2 stays inside field 1's (wider) bounds
    draws[2, 3, 1, 1] = np.nan  # member 3 is not finite
    draws[0, 4, 0, 0] = -1.5  # member 4 leaves below
    np.testing.assert_array_equal(diverged_members(draws, lower, upper),
                                  [False, True, False, True, True])


def test_64_member_interval_of_exchangeable_members_covers_the_nominal_90(np_rng):
    """The 5-95% band a forecast reports from 64 members, read at positions q (S + 1), covers
    an observation exchangeable with the members 0.90 (here 58.5 / 65 exactly: positions 3.25
    and 61.75); NumPy's default reading would cover (60.85 - 4.15) / 65 = 0.872. 20000
    independent points: binomial SE 0.0021, 4 SE = 0.0085, below the 0.028 between them."""
    from msde_ppl.predict.forecast import _interval_bounds, _sample_statistics
    from msde_ppl.predict.metrics import ensemble_positions

    draws = np_rng.normal(size=(50, 64, 400))  # (T, S, x)
    obs = np_rng.normal(size=(50, 400))
    stats = _sample_statistics(draws, obs)
    covered = float(np.mean((obs >= stats["q05"]) & (obs <= stats["q95"])))
    assert abs(covered - 0.90) < 4 * np.sqrt(0.09 / obs.size), covered
    bounds = _interval_bounds(draws, [0.9])  # the forecast's `levels` read the same way
    np.testing.assert_allclose(bounds["lower"][0], stats["q05"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bounds["upper"][0], stats["q95"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ensemble_positions(np.array([0.05, 0.95]), 64), [2.25, 60.75])
    np.testing.assert_allclose(ensemble_positions(np.array([0.001, 0.999]), 64), [0, 63])
    with pytest.raises(ValueError, match="member"):
        ensemble_positions(np.array([0.5]), 0)
