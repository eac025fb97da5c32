"""The reference-OU (Markov) guide family against dense Gaussian algebra and the exact evidence.

Oracle: the reference chain dz = -lam z dt + s dW on any set of times, with a flat density on
the first state and Gaussian pseudo-observations at the grid times, is a Gaussian with a
tridiagonal precision; its dense posterior mean and covariance (NumPy) give every smoothed
marginal, lag-one covariance and bridge marginal the module computes in closed form.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from msde_ppl.generative import SDEPath
from msde_ppl.inference import SolverFreeELBO
from msde_ppl.inference.markov import (
    MarkovBridgePath,
    OUSmoother,
    bridge_moments,
    condition_window,
    window_posterior,
)


def _dense_posterior(times, mu, v, lam, s, extra=()):
    """Posterior mean/cov at sorted(times + extra) of the flat-start reference chain."""
    all_t = np.sort(np.concatenate([times, np.asarray(extra, float)]))
    n = len(all_t)
    prec, lin = np.zeros((n, n)), np.zeros(n)
    for k in range(n - 1):
        h = all_t[k + 1] - all_t[k]
        phi, q = np.exp(-lam * h), s**2 * -np.expm1(-2 * lam * h) / (2 * lam)
        # -(z_{k+1} - phi z_k)^2 / (2q)
        prec[k + 1, k + 1] += 1 / q
        prec[k, k] += phi**2 / q
        prec[k, k + 1] -= phi / q
        prec[k + 1, k] -= phi / q
    for t, m, var in zip(times, mu, v, strict=True):
        k = int(np.searchsorted(all_t, t))
        prec[k, k] += 1 / var
        lin[k] += m / var
    cov = np.linalg.inv(prec)
    return all_t, cov @ lin, cov


def _window(np_rng, m=9):
    times = np.cumsum(np_rng.uniform(0.05, 0.2, m))
    mu = np_rng.standard_normal(m)
    v = np_rng.uniform(0.02, 0.3, m)
    return times, mu, v


@pytest.mark.parametrize("lam", [0.7, 1e-6])
def test_smoothed_marginals_and_lag_covariances_equal_dense_gaussian(np_rng, lam):
    """lam -> 0 (Brownian reference) exercises the series branch of q(h)."""
    with jax.enable_x64(True):
        times, mu, v = _window(np_rng)
        s = 0.8
        duration = times[-1] - times[0]
        smoother = OUSmoother((), rate=lam * duration)
        win = condition_window(smoother, jnp.asarray(times), jnp.asarray(mu)[:, None],
                               jnp.asarray(v)[:, None], jnp.asarray([s]))
        _, mean, cov = _dense_posterior(times, mu, v, max(lam, 1e-12), s)
        np.testing.assert_allclose(np.asarray(win.mean)[:, 0], mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.asarray(win.var)[:, 0], np.diag(cov), rtol=1e-8)
        np.testing.assert_allclose(np.asarray(win.cross)[:, 0], np.diag(cov, 1), rtol=1e-8)


def test_bridge_moments_equal_dense_gaussian_and_their_derivatives_fd(np_rng):
    with jax.enable_x64(True):
        times, mu, v = _window(np_rng)
        lam, s = 1.3, 0.6
        smoother = OUSmoother((), rate=lam * (times[-1] - times[0]))
        win = condition_window(smoother, jnp.asarray(times), jnp.asarray(mu)[:, None],
                               jnp.asarray(v)[:, None], jnp.asarray([s]))
        interval = np.arange(len(times) - 1)
        frac = np_rng.uniform(0.05, 0.95, len(interval))
        tau = times[:-1] + frac * np.diff(times)
        out = bridge_moments(win, jnp.asarray(tau), jnp.asarray(interval))
        all_t, mean, cov = _dense_posterior(times, mu, v, lam, s, extra=tau)
        at = np.searchsorted(all_t, tau)
        np.testing.assert_allclose(np.asarray(out.mean)[:, 0], mean[at], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.asarray(out.var)[:, 0], np.diag(cov)[at], rtol=1e-8)
        h = 1e-6
        up = bridge_moments(win, jnp.asarray(tau + h), jnp.asarray(interval))
        dn = bridge_moments(win, jnp.asarray(tau - h), jnp.asarray(interval))
        np.testing.assert_allclose(out.mean_dot, (up.mean - dn.mean) / (2 * h), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(out.dlogvar_dt,
                                   (np.log(up.var) - np.log(dn.var)) / (2 * h), rtol=1e-5,
                                   atol=1e-6)


def test_joint_log_prob_and_samples_are_the_smoothed_chain(np_rng):
    def chain(smoother, times, mu, v, s):  # one compiled program, not op by op
        win = condition_window(smoother, times, mu[:, None], v[:, None], jnp.asarray([s]))
        grid, cross, nodes = window_posterior(smoother, times, mu[:, None],
                                              jnp.log(v)[:, None], jnp.asarray([s]),
                                              jnp.full((len(times) - 1, 1), 0.5))
        batch = partial(jax.tree.map, lambda x: x[None])
        path = MarkovBridgePath(times[None], batch(grid), batch(cross), batch(nodes),
                                jnp.asarray([s])[None], 1)
        value = path.sample(jax.random.key(0), (3,))
        return (grid.mean, win.mean, value, path.log_prob(value),
                path.sample(jax.random.key(1), (20000,)))

    with jax.enable_x64(True):
        times, mu, v = _window(np_rng, m=7)
        lam, s = 0.9, 0.7
        smoother = OUSmoother((), rate=lam * (times[-1] - times[0]))
        grid_mean, win_mean, value, lp, draws = (np.asarray(x) for x in jax.jit(chain)(
            smoother, jnp.asarray(times), jnp.asarray(mu), jnp.asarray(v), s))
        np.testing.assert_allclose(grid_mean, win_mean, rtol=1e-12)
        _, mean, cov = _dense_posterior(times, mu, v, lam, s)
        ref = stats.multivariate_normal(mean, cov).logpdf(value[:, 0, :, 0])
        np.testing.assert_allclose(lp[:, 0], ref, rtol=1e-9)
        draws = draws[:, 0, :, 0]
    err = np.cov(draws.T) - cov
    assert np.all(np.abs(err) < 5 * np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov)))
                                            / 20000))


# ----------------------------------------------------------------- ELBO at the exact posterior
THETA, S, R, DT, M, W = 1.3, 0.8, 0.3, 0.05, 17, 3


def _ou_problem():
    rng = np.random.default_rng(5)
    n = (M - 1) * W + 1
    phi, q = np.exp(-THETA * DT), S**2 * -np.expm1(-2 * THETA * DT) / (2 * THETA)
    z = np.zeros(n)
    z[0] = rng.normal() * S / np.sqrt(2 * THETA)
    for k in range(1, n):
        z[k] = phi * z[k - 1] + np.sqrt(q) * rng.normal()
    y = z + R * rng.normal(size=n)
    idx = np.arange(W)[:, None] * (M - 1) + np.arange(M)[None]
    return (np.arange(n) * DT)[idx], y[idx]


def _flat_log_evidence(times, obs):
    """sum over windows of log p(y_2..y_M | y_1) with a flat density on z(t_1)."""
    total = 0.0
    phi, q = np.exp(-THETA * DT), S**2 * -np.expm1(-2 * THETA * DT) / (2 * THETA)
    for y in obs:
        m, p = y[0], R**2
        for k in range(1, len(y)):
            m, p = phi * m, phi * phi * p + q
            total += stats.norm(m, np.sqrt(p + R**2)).logpdf(y[k])
            g = p / (p + R**2)
            m, p = m + g * (y[k] - m), (1 - g) * p
    return total


def _model(times, obs):
    path = SDEPath(lambda t, z, a: -a * z, jnp.asarray([S]), times, None, drift_args=THETA,
                   state_shape=(1,))
    with numpyro.plate("windows", times.shape[0]):
        z = numpyro.sample("z", path)
        numpyro.sample("obs", dist.Normal(z[..., 0], R).to_event(1), obs=obs)


def _guide_with(rate, var):
    def guide(times, obs):
        smoother = OUSmoother((1,), rate=rate * (M - 1) * DT)
        frac = jax.random.uniform(numpyro.prng_key(), (times.shape[0], times.shape[1] - 1, 1))
        grid, cross, nodes = jax.vmap(lambda t, y, f: window_posterior(
            smoother, t, y[:, None], jnp.full((t.shape[0], 1), np.log(var)), jnp.asarray([S]),
            f))(times, obs, frac)
        s = jnp.broadcast_to(jnp.asarray([S]), (times.shape[0], 1))
        with numpyro.plate("windows", times.shape[0]):
            numpyro.sample("z", MarkovBridgePath(times, grid, cross, nodes, s, 1))

    return guide


def _mc_elbo(guide, times, obs, n=4000, seed=0):
    elbo = SolverFreeELBO(num_particles=n)
    terms = jax.jit(lambda k: elbo.loss_terms(k, {}, _model, guide, times, obs))(
        jax.random.key(seed))
    p = np.asarray(terms["elbo_particles"])
    return p.mean(), p.std(ddof=1) / np.sqrt(len(p))


def test_solver_free_elbo_at_the_exact_posterior_is_the_log_evidence():
    """No quadrature error: the random interior nodes are unbiased although the posterior
    drift jumps at every observation (the grid trapezoid has a first-order error there)."""
    with jax.enable_x64(True):
        times, obs = (jnp.asarray(x) for x in _ou_problem())
        log_z = _flat_log_evidence(np.asarray(times), np.asarray(obs))
        mc, se = _mc_elbo(_guide_with(THETA, R**2), times, obs)
        assert se < 0.1  # enough power for the perturbed guides below
        assert abs(mc - log_z) < 4 * se
        for rate, var in ((3 * THETA, R**2), (THETA, 2 * R**2), (THETA, 0.5 * R**2)):
            worse, se_w = _mc_elbo(_guide_with(rate, var), times, obs, seed=1)
            assert worse + 4 * se_w < log_z
