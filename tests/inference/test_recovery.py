"""SVI recovery on simulated two-scale OU data: calibrated 90% intervals across seeds (slow)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from msde_ppl.inference import (
    AutoAmortizedSDE,
    SolverFreeELBO,
    fit,
    window_batches,
)

TRUTH = {"a": 1.0, "c": 0.8, "s": (0.5, 1.0)}


def _fit_one(ou, seed, n_time=2001, window=32, steps=1500):
    key_sim, key_enc, key_kern, key_fit = jax.random.split(jax.random.key(seed), 4)
    times = jnp.arange(n_time) * 0.01
    _, obs = ou.simulate(key_sim, times, a=TRUTH["a"], c=TRUTH["c"], s=TRUTH["s"], eps=0.1,
                         obs_std=0.1)
    windows = {"times": ou.make_windows(times, window), "obs": ou.make_windows(obs, window)}
    n_windows = windows["times"].shape[0]

    def model(times, obs):
        ou.model(times, obs, n_windows=n_windows)

    guide = AutoAmortizedSDE(model, ou.SnapshotEncoder(key=key_enc), kernel_key=key_kern)
    result = fit(key_fit, model, guide, SolverFreeELBO(num_particles=4, normalize=True),
                 optax.adam(optax.exponential_decay(1e-2, 1000, 0.5)),
                 window_batches(windows, 8), num_steps=steps, chunk_size=250, progress=False)
    q = guide.quantiles(result.params, [0.05, 0.95], windows["times"][:1], windows["obs"][:1])
    lo = np.concatenate([np.atleast_1d(np.asarray(q[k][0])) for k in ("a", "c", "s")])
    hi = np.concatenate([np.atleast_1d(np.asarray(q[k][1])) for k in ("a", "c", "s")])
    return lo, hi


@pytest.fixture(scope="module")
def coverage(ou):
    """Coverage indicators, shape (seeds, 4) for (a, c, s_x, s_y), from 8 independent fits."""
    truth = np.array([TRUTH["a"], TRUTH["c"], *TRUTH["s"]])
    covered = []
    for seed in range(8):
        lo, hi = _fit_one(ou, seed)
        covered.append((lo <= truth) & (truth <= hi))
    return np.array(covered)


@pytest.mark.slow
def test_drift_coefficient_intervals_have_nominal_coverage(coverage):
    n_cov, n = int(coverage[:, :2].sum()), coverage[:, :2].size
    # two-sided exact binomial test of H0: coverage = 0.9
    assert stats.binomtest(n_cov, n, 0.9).pvalue > 1e-3


@pytest.mark.slow
def test_diffusion_intervals_have_nominal_coverage(coverage):
    n_cov, n = int(coverage[:, 2:].sum()), coverage[:, 2:].size
    assert stats.binomtest(n_cov, n, 0.9).pvalue > 1e-3
