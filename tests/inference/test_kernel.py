"""Temporal kernel interpolation and the Gauss–Markov variational path."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from msde_ppl.inference import (
    GaussMarkovPath,
    TemporalKernel,
    WindowMoments,
    interpolate_window,
    safe_cholesky,
)


def _window(np_rng, m=16, n_state=3):
    times = 0.3 + np.cumsum(np_rng.uniform(0.05, 0.15, m))
    mean = np_rng.standard_normal((m, n_state))
    logvar = np_rng.normal(-2.0, 0.3, (m, n_state))
    return times, mean, logvar


def test_interpolation_equals_numpy_gp_formula(np_rng):
    """Identity warp: m(t) = c + k(t,T)^T (K + s_n^2 I)^-1 (mu - c) with the documented
    hyperparameters, c = 0 (the reference's) or, centred, the window's average mu_bar; so
    centred, a u + b interpolates to a m + b and a constant to itself."""
    with jax.enable_x64(True):
        times, mean, logvar = _window(np_rng)
        kern = TemporalKernel(hidden_size=0, key=jax.random.key(0))
        query = np.linspace(times[0], times[-1], 37)
        args = (kern, jnp.asarray(times), jnp.asarray(mean), jnp.asarray(logvar),
                jnp.asarray(query))
        out, plain = interpolate_window(*args, centred=True), interpolate_window(*args)
        m = len(times)
        ell, a, nug = 0.1 + 2.0 / m, 1.0, 0.01  # documented initial values
        c = 0.5 * (times[-1] - times[0])
        u = (times - times[0] - c) / c
        uq = (query - times[0] - c) / c
        K = a * np.exp(-((u[:, None] - u[None]) ** 2) / (2 * ell**2)) + nug * np.eye(m)
        kq = a * np.exp(-((uq[:, None] - u[None]) ** 2) / (2 * ell**2))
        np.testing.assert_allclose(plain.mean, kq @ np.linalg.solve(K, mean), rtol=1e-9,
                                   atol=1e-9)
        np.testing.assert_allclose(plain.var, np.exp(kq @ np.linalg.solve(K, logvar)),
                                   rtol=1e-9)
        mu_bar, lv_bar = mean.mean(0), logvar.mean(0)
        np.testing.assert_allclose(out.mean, mu_bar + kq @ np.linalg.solve(K, mean - mu_bar),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            out.var, np.exp(lv_bar + kq @ np.linalg.solve(K, logvar - lv_bar)), rtol=1e-9)
        # exact derivative of the SE kernel vector: d/dt k = -k (u_q - u) / (ell^2 c)
        dkq = -kq * (uq[:, None] - u[None]) / (ell**2 * c)
        np.testing.assert_allclose(out.mean_dot, dkq @ np.linalg.solve(K, mean - mu_bar),
                                   rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(out.dlogvar_dt, dkq @ np.linalg.solve(K, logvar - lv_bar),
                                   rtol=1e-8, atol=1e-8)
        a_, b_ = -7.5, 300.0  # other units: a u + b, variances a^2 v
        other = interpolate_window(kern, jnp.asarray(times), jnp.asarray(a_ * mean + b_),
                                   jnp.asarray(logvar + 2 * np.log(abs(a_))), jnp.asarray(query),
                                   centred=True)
        np.testing.assert_allclose(other.mean, a_ * out.mean + b_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(other.var, a_**2 * out.var, rtol=1e-9)
        np.testing.assert_allclose(other.mean_dot, a_ * out.mean_dot, rtol=1e-8, atol=1e-8)
        flat = interpolate_window(kern, jnp.asarray(times), jnp.full_like(mean, b_),
                                  jnp.asarray(logvar), jnp.asarray(query), centred=True)
        np.testing.assert_allclose(flat.mean, b_, rtol=1e-12)  # a constant stays itself
        np.testing.assert_allclose(flat.mean_dot, 0.0, atol=1e-9)


def test_forward_mode_derivatives_match_finite_differences_with_warp(np_rng):
    with jax.enable_x64(True):
        times, mean, logvar = _window(np_rng)
        kern = TemporalKernel(hidden_size=16, key=jax.random.key(1))
        # make the warp non-trivial (its last layer starts at zero)
        params, static = eqx.partition(kern, eqx.is_array)
        kern = eqx.combine(jax.tree.map(lambda x: x + 0.3, params), static)
        args = (jnp.asarray(times), jnp.asarray(mean), jnp.asarray(logvar))
        query = jnp.asarray(np.linspace(times[1], times[-2], 11))
        out = interpolate_window(kern, *args, query)
        h = 1e-6
        up = interpolate_window(kern, *args, query + h)
        dn = interpolate_window(kern, *args, query - h)
        np.testing.assert_allclose(out.mean_dot, (up.mean - dn.mean) / (2 * h), rtol=1e-6,
                                   atol=1e-6)
        np.testing.assert_allclose(out.dlogvar_dt, (jnp.log(up.var) - jnp.log(dn.var)) / (2 * h),
                                   rtol=1e-6, atol=1e-6)


def test_small_nugget_interpolates_encodings(np_rng):
    times, mean, logvar = _window(np_rng, m=8)
    base = TemporalKernel(hidden_size=0, key=jax.random.key(0))
    kern = eqx.tree_at(lambda k: k.raw_nugget, base, jnp.asarray(-14.0))
    out = interpolate_window(kern, jnp.asarray(times, jnp.float32),
                             jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32))
    np.testing.assert_allclose(out.mean, mean, atol=2e-3)
    np.testing.assert_allclose(np.log(out.var), logvar, atol=2e-3)


def test_safe_cholesky_singular_matrix_is_finite_with_finite_gradient():
    x = jnp.ones((6, 6))  # rank one: a plain Cholesky returns NaN
    assert not np.all(np.isfinite(np.asarray(jnp.linalg.cholesky(x))))
    L = safe_cholesky(x)
    assert np.all(np.isfinite(np.asarray(L)))
    g = jax.grad(lambda a: jnp.sum(safe_cholesky(a * jnp.ones((6, 6)))))(1.0)
    assert np.isfinite(float(g))
    spd = jnp.asarray([[2.0, 0.3], [0.3, 1.0]])
    np.testing.assert_array_equal(safe_cholesky(spd), jnp.linalg.cholesky(spd))  # no jitter


def _gm_path(np_rng, n_time=6, n_state=2, batch=()):
    times = np.cumsum(np_rng.uniform(0.05, 0.2, n_time))
    shape = batch + (n_time, n_state)
    moments = WindowMoments(
        jnp.asarray(np_rng.standard_normal(shape)),
        jnp.asarray(np_rng.uniform(0.2, 1.0, shape)),
        jnp.asarray(np_rng.standard_normal(shape)),
        jnp.asarray(np_rng.standard_normal(shape)),
    )
    s = jnp.asarray(np_rng.uniform(0.5, 1.5, (n_state,)))
    return GaussMarkovPath(jnp.asarray(times), moments, s, 1), times, s


def test_gauss_markov_log_prob_equals_dense_gaussian(np_rng):
    with jax.enable_x64(True):
        q, times, s = _gm_path(np_rng)
        rho = np.asarray(q._rho())  # (T-1, n)
        value = np.asarray(q.sample(jax.random.key(0), (3,)))
        lp = np.asarray(q.log_prob(jnp.asarray(value)))
        n_time, n_state = q.event_shape
        # stationary AR(1) in u: corr(u_i, u_j) = prod rho between i and j; trapezoid rho checked
        s = np.asarray(s)
        inv = s**2 / np.asarray(q.var)
        ref_rho = np.exp(-0.25 * np.diff(times)[:, None] * (inv[1:] + inv[:-1]))
        np.testing.assert_allclose(rho, ref_rho, rtol=1e-12)
        for k in range(3):
            total = 0.0
            for j in range(n_state):
                cum = np.concatenate([[0.0], np.cumsum(np.log(rho[:, j]))])
                corr = np.exp(-np.abs(cum[:, None] - cum[None, :]))
                sd = np.sqrt(np.asarray(q.var)[:, j])
                total += stats.multivariate_normal(np.asarray(q.loc)[:, j],
                                                   corr * np.outer(sd, sd)).logpdf(value[k, :, j])
            np.testing.assert_allclose(lp[k], total, rtol=1e-10)


def test_gauss_markov_samples_have_the_stated_marginals(np_rng):
    q, _, _ = _gm_path(np_rng, batch=(2,))
    n = 20000
    x = np.asarray(q.sample(jax.random.key(1), (n,)))
    assert x.shape == (n, 2, 6, 2)
    m, v = np.asarray(q.loc), np.asarray(q.var)
    assert np.all(np.abs(x.mean(0) - m) < 5 * np.sqrt(v / n))
    assert np.all(np.abs(x.var(0) - v) < 5 * v * np.sqrt(2.0 / n))
    # lag-one correlation = rho
    u = (x - m) / np.sqrt(v)
    corr = (u[:, :, 1:] * u[:, :, :-1]).mean(0)
    rho = np.asarray(q._rho())
    assert np.all(np.abs(corr - rho) < 5 * np.sqrt((1 + rho**2) / n))


def test_posterior_drift_solves_lyapunov_equation(np_rng):
    """A = (s^2/S - dlogS/dt)/2  <=>  dS/dt = -2 A S + s^2."""
    q, _, s = _gm_path(np_rng)
    sdot = np.asarray(q.dlogvar_dt) * np.asarray(q.var)
    np.testing.assert_allclose(sdot, -2 * np.asarray(q.decay_rate) * np.asarray(q.var)
                               + np.asarray(s) ** 2, rtol=1e-5, atol=1e-5)
    z = jnp.asarray(np_rng.standard_normal((4,) + q.event_shape), jnp.float32)
    f = np.asarray(q.drift_values(z))
    ref = np.asarray(q.mean_dot) - np.asarray(q.decay_rate) * (np.asarray(z) - np.asarray(q.loc))
    np.testing.assert_allclose(f, ref, rtol=1e-5, atol=1e-5)


def test_interpolation_rejects_single_point():
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_window(TemporalKernel(hidden_size=0, key=jax.random.key(0)),
                           jnp.zeros(1), jnp.zeros((1, 2)), jnp.zeros((1, 2)))


def test_step_gain_keeps_the_values_and_lengthens_the_steps():
    """The same hyperparameters at any gain; one Adam step (|update| = lr for a fresh state)
    moves the softplus argument of each by g * lr instead of lr."""
    import optax

    plain = TemporalKernel(hidden_size=0, key=jax.random.key(0))
    fast = TemporalKernel(hidden_size=0, step_gain=10.0, key=jax.random.key(0))
    np.testing.assert_allclose(fast.hyperparameters(16), plain.hyperparameters(16), rtol=1e-6)

    def loss(kern):
        ell, amp, nug = kern.hyperparameters(16)
        return ell + amp + nug

    def argument_moves(kern, g):
        opt = optax.adam(1e-3)
        params = eqx.filter(kern, eqx.is_array)
        updates, _ = opt.update(eqx.filter_grad(loss)(kern), opt.init(params))
        moved = eqx.apply_updates(kern, updates)
        return g * (moved.raw_amplitude - kern.raw_amplitude)

    np.testing.assert_allclose(argument_moves(plain, 1.0), -1e-3, rtol=1e-3)
    np.testing.assert_allclose(argument_moves(fast, 10.0), -1e-2, rtol=1e-3)
    with pytest.raises(ValueError, match="step gain"):
        TemporalKernel(hidden_size=0, step_gain=0.0, key=jax.random.key(0))
