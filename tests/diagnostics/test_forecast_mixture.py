"""Forecasts from several fitted models (a deep ensemble): the pooled moments are exact, and
the mixture is the equal-weight pool of the models' own ensembles. Uses the diagnostics'
tiny untrained model (conftest)."""

import jax
import numpy as np
import pytest

from msde_ppl.predict.forecast import _mixture, forecast, trajectory_ensemble


def test_mixture_moments_equal_the_pooled_draws(np_rng):
    runs = []
    for shift in (0.0, 1.5, -0.7):
        draws = shift + np_rng.normal(size=(5, 40, 1, 6)) * (1 + shift**2)
        summary = dict(mean=draws.mean(1), std=draws.std(1), macro=draws.mean(1),
                       micro=0 * draws.mean(1), macro_std=draws.std(1),
                       micro_std=0 * draws.std(1))
        runs.append((draws, summary))
    draws, summary = _mixture(runs)
    assert draws.shape == (5, 120, 1, 6)
    np.testing.assert_allclose(summary["mean"], draws.mean(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(summary["std"], draws.std(1), rtol=1e-10)
    np.testing.assert_allclose(summary["macro_std"], draws.std(1), rtol=1e-10)  # same pooling


def test_forecast_of_several_fits_pools_their_ensembles(tiny_fit, tiny_ds):
    key = jax.random.key(3)
    fc = forecast(key, [tiny_fit, tiny_fit], tiny_ds, n_samples=8, return_samples=True)
    assert fc.sizes["sample"] == 16 and fc["latent_mean"].dims[0] == "fit"
    assert fc.sizes["fit"] == 2
    # the mixture mean is the average of each model's ensemble mean under its own key
    y = np.asarray(tiny_ds["u"].sel(traj=tiny_ds["split"] == "test").values, np.float32)
    ensemble = trajectory_ensemble(tiny_fit, tiny_ds["time"].values, 8)
    keys = jax.random.split(jax.random.split(key, 1)[0], 2)
    means = [np.asarray(ensemble(k, y[0, :, None])[1]["mean"])[:, 0] for k in keys]
    np.testing.assert_allclose(fc["mean"].values[0], np.mean(means, 0), rtol=1e-5, atol=1e-6)
    single = forecast(key, tiny_fit, tiny_ds, n_samples=8)
    assert single["latent_mean"].dims == ("traj", "time", "latent")
    with pytest.raises(ValueError, match="at least one fitted model"):
        forecast(key, [], tiny_ds)
