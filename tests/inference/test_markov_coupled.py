"""The coupled (full-covariance) reference-OU guide family against dense Gaussian algebra and the
exact evidence of a coupled linear model.

Oracle: the reference chain dw = F w dt + diag(s) dW with a full drift matrix F, a flat density
on the first state and Gaussian pseudo-observations at the grid times, is a Gaussian whose
precision is block tridiagonal over any set of times; its dense mean and covariance (NumPy, exact
transitions by SciPy's expm of Van Loan's block matrix) give every smoothed marginal, lag-one
covariance and bridge marginal. The posterior drift is checked by finite differences of the
moments; the ELBO at the exact posterior of the two-scale OU model (c != 0, which the diagonal
family cannot hold) against its Kalman log evidence.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from scipy import stats
from scipy.linalg import expm

from msde_ppl.inference import SolverFreeELBO
from msde_ppl.inference.markov import MarkovBridgePath, OUSmoother, window_posterior
from msde_ppl.inference.markov_coupled import (
    CoupledMarkovPath,
    CoupledOUSmoother,
    _expm,
    condition_window_coupled,
    coupled_bridge,
    window_posterior_coupled,
)

S3 = np.array([0.8, 0.5, 1.1])


def _smoother(drift: np.ndarray, duration: float) -> CoupledOUSmoother:
    """A coupled smoother whose reference drift matrix is ``drift`` on a window of ``duration``."""
    rate = -np.asarray(drift) * duration
    raw = np.log(np.expm1(np.diag(rate)))
    smoother = CoupledOUSmoother(len(raw))
    return eqx.tree_at(lambda m: (m.raw_rate, m.coupling), smoother,
                       (jnp.asarray(raw), jnp.asarray(rate - np.diag(np.diag(rate)))))


def _transition(drift, s, h):
    d = len(s)
    block = np.zeros((2 * d, 2 * d))
    block[:d, :d], block[:d, d:], block[d:, d:] = drift, np.diag(s**2), -drift.T
    e = expm(block * h)
    return e[:d, :d], e[:d, d:] @ e[:d, :d].T


def _dense_posterior(times, mu, v, drift, s, extra=()):
    """Posterior mean (n, d) and covariance (n d, n d) at sorted(times + extra)."""
    all_t = np.sort(np.concatenate([times, np.asarray(extra, float)]))
    n, d = len(all_t), len(s)
    prec, lin = np.zeros((n * d, n * d)), np.zeros(n * d)
    for k in range(n - 1):
        phi, q = _transition(drift, s, all_t[k + 1] - all_t[k])
        qi = np.linalg.inv(q)
        a, b = slice(k * d, (k + 1) * d), slice((k + 1) * d, (k + 2) * d)
        prec[b, b] += qi
        prec[a, a] += phi.T @ qi @ phi
        prec[a, b] -= phi.T @ qi
        prec[b, a] -= qi @ phi
    for t, m, var in zip(times, mu, v, strict=True):
        k = int(np.searchsorted(all_t, t))
        sl = slice(k * d, (k + 1) * d)
        prec[sl, sl] += np.diag(1 / var)
        lin[sl] += m / var
    cov = np.linalg.inv(prec)
    return all_t, (cov @ lin).reshape(n, d), cov


def _problem(np_rng, m=8):
    times = np.cumsum(np_rng.uniform(0.05, 0.2, m))
    mu = np_rng.standard_normal((m, 3))
    v = np_rng.uniform(0.02, 0.3, (m, 3))
    drift = np.array([[-1.2, 0.9, 0.0], [-0.4, -0.7, 0.5], [0.3, 0.0, -2.0]])
    return times, mu, v, drift


def _block(cov, i, j, d=3):
    return cov[i * d:(i + 1) * d, j * d:(j + 1) * d]


@pytest.mark.parametrize("norm", [1e-4, 0.3, 3.0, 60.0])
def test_matrix_exponential_matches_scipy(np_rng, norm):
    with jax.enable_x64(True):
        x = np_rng.standard_normal((6, 6))
        x *= norm / np.abs(x).sum(0).max()
        np.testing.assert_allclose(_expm(jnp.asarray(x)), expm(x), rtol=1e-11, atol=1e-13)


def test_zero_coupling_is_the_diagonal_family(np_rng):
    """Same moments, drift, KL draws, joint density and entropy as the diagonal family."""
    diag = lambda x: jnp.diagonal(x, axis1=-2, axis2=-1)  # noqa: E731
    batch = lambda x: jax.tree.map(lambda a: a[None], x)  # noqa: E731

    def both(times, mu, logv, s, frac):  # one compiled program (op by op it took ~20 s)
        g1, c1, n1 = window_posterior(OUSmoother((3,), rate=1.7), times, mu, logv, s, frac)
        g2, c2, n2 = window_posterior_coupled(CoupledOUSmoother(3, rate=1.7), times, mu, logv,
                                              s, frac)
        p1 = MarkovBridgePath(times[None], batch(g1), batch(c1), batch(n1), s[None], 1)
        p2 = CoupledMarkovPath(times[None], batch(g2), batch(c2), batch(n2), s[None])
        value = p1.sample(jax.random.key(1), (4,))
        pairs = {
            "mean": (g2.mean, g1.mean), "var": (diag(g2.cov), g1.var), "cross": (diag(c2), c1),
            "mean_dot": (n2.moments.mean_dot, n1.moments.mean_dot),
            "drift": (diag(n2.moments.drift),
                      -0.5 * (s[None] ** 2 / n1.moments.var - n1.moments.dlogvar_dt)),
            "log_prob": (p2.log_prob(value), p1.log_prob(value)),
            "dlogvar_dt": (p2.dlogvar_dt, p1.dlogvar_dt),
            "kl_draws": (p2.kl_draws(jax.random.key(2)), p1.kl_draws(jax.random.key(2))),
            "entropy": (p2.initial_marginal().entropy(), p1.initial_marginal().entropy()),
        }
        return pairs

    with jax.enable_x64(True):
        times, mu, v, _ = _problem(np_rng, m=9)
        frac = jnp.asarray(np_rng.uniform(size=(8, 2)))
        pairs = jax.jit(both)(jnp.asarray(times), jnp.asarray(mu), jnp.log(jnp.asarray(v)),
                              jnp.asarray(S3), frac)
        tolerances = {"mean": dict(atol=1e-12), "var": dict(rtol=1e-12),
                      "cross": dict(rtol=1e-10), "mean_dot": dict(atol=1e-12),
                      "drift": dict(atol=1e-11), "log_prob": dict(rtol=1e-12),
                      "dlogvar_dt": dict(atol=1e-11), "kl_draws": dict(atol=1e-11),
                      "entropy": dict(rtol=1e-12)}
        for name, (coupled, diagonal) in pairs.items():
            for x2, x1 in zip(jax.tree.leaves(coupled), jax.tree.leaves(diagonal), strict=True):
                np.testing.assert_allclose(x2, x1, **tolerances[name], err_msg=name)


def _window_and_bridge_times(np_rng):
    """A conditioned coupled window of :func:`_problem` and one random time inside each
    interval: ``(problem, window, tau, interval)``."""
    times, mu, v, drift = problem = _problem(np_rng)
    win = condition_window_coupled(_smoother(drift, times[-1] - times[0]), jnp.asarray(times),
                                   jnp.asarray(mu), jnp.asarray(v), jnp.asarray(S3))
    interval = np.arange(len(times) - 1)
    tau = times[:-1] + np_rng.uniform(0.05, 0.95, len(interval)) * np.diff(times)
    return problem, win, tau, interval


def test_coupled_marginals_cross_covariances_and_bridges_equal_dense_gaussian(np_rng):
    with jax.enable_x64(True):
        (times, mu, v, drift), win, tau, interval = _window_and_bridge_times(np_rng)
        _, mean, cov = _dense_posterior(times, mu, v, drift, S3)
        np.testing.assert_allclose(win.mean, mean, rtol=1e-8, atol=1e-10)
        for i in range(len(times)):
            np.testing.assert_allclose(win.cov[i], _block(cov, i, i), rtol=1e-7, atol=1e-12)
        for i in range(len(times) - 1):
            np.testing.assert_allclose(win.cross[i], _block(cov, i, i + 1), rtol=1e-7,
                                       atol=1e-12)
        out = coupled_bridge(win, jnp.asarray(tau), jnp.asarray(interval))
        all_t, mean, cov = _dense_posterior(times, mu, v, drift, S3, extra=tau)
        for j, k in enumerate(np.searchsorted(all_t, tau)):
            np.testing.assert_allclose(out.mean[j], mean[k], rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(out.cov[j], _block(cov, k, k), rtol=1e-7, atol=1e-12)


def test_posterior_drift_generates_the_moments(np_rng):
    """Finite differences in tau: m' = E f_q and S' = B S + S B^T + diag(s^2)."""
    with jax.enable_x64(True):
        (times, mu, v, drift), win, tau, interval = _window_and_bridge_times(np_rng)
        out = coupled_bridge(win, jnp.asarray(tau), jnp.asarray(interval))
        h = 1e-6
        up = coupled_bridge(win, jnp.asarray(tau + h), interval)
        dn = coupled_bridge(win, jnp.asarray(tau - h), interval)
        np.testing.assert_allclose(out.mean_dot, (up.mean - dn.mean) / (2 * h), rtol=1e-5,
                                   atol=1e-6)
        b_s = np.asarray(out.drift @ out.cov)
        cov_dot = b_s + np.swapaxes(b_s, -1, -2) + np.diag(S3**2)
        np.testing.assert_allclose(cov_dot, (up.cov - dn.cov) / (2 * h), rtol=1e-5, atol=1e-6)


def test_joint_log_prob_and_samples_are_the_smoothed_chain(np_rng):
    n = 20000

    def draws_and_density(smoother, times, mu, logv, frac):  # one program, not op by op
        grid, cross, nodes = window_posterior_coupled(smoother, times, mu, logv,
                                                      jnp.asarray(S3), frac)
        batch = lambda x: jax.tree.map(lambda a: a[None], x)  # noqa: E731
        path = CoupledMarkovPath(times[None], batch(grid), batch(cross), batch(nodes),
                                 jnp.asarray(S3)[None])
        value = path.sample(jax.random.key(0), (3,))
        return value, path.log_prob(value), path.sample(jax.random.key(1), (n,))

    with jax.enable_x64(True):
        times, mu, v, drift = _problem(np_rng, m=6)
        frac = jnp.full((len(times) - 1, 1), 0.5)
        value, lp, draws = jax.jit(draws_and_density)(
            _smoother(drift, times[-1] - times[0]), jnp.asarray(times), jnp.asarray(mu),
            jnp.log(jnp.asarray(v)), frac)
        value, lp = np.asarray(value), np.asarray(lp)
        _, mean, cov = _dense_posterior(times, mu, v, drift, S3)
        ref = stats.multivariate_normal(mean.ravel(), cov).logpdf(value[:, 0].reshape(3, -1))
        np.testing.assert_allclose(lp[:, 0], ref, rtol=1e-9)
        draws = np.asarray(draws)[:, 0].reshape(n, -1)
    err = np.cov(draws.T) - cov
    assert np.all(np.abs(err) < 5 * np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n))
    mean_err = draws.mean(0) - mean.ravel()
    assert np.all(np.abs(mean_err) < 5 * np.sqrt(np.diag(cov) / n))


# ------------------------------------------------- ELBO at the exact posterior of a coupled model
A, C, EPS, S2, R, DT, M, W = 1.0, 3.0, 1.0, np.array([0.5, 1.0]), 0.2, 0.05, 13, 3


def _two_scale_problem(ou):
    times = np.arange((M - 1) * W + 1) * DT
    _, y = ou.simulate(jax.random.key(4), times, a=A, c=C, s=tuple(S2), eps=EPS, obs_std=R)
    idx = np.arange(W)[:, None] * (M - 1) + np.arange(M)[None]
    return times[idx], np.asarray(y, np.float64)[idx]


def _flat_log_evidence(ou, times, obs):
    """sum over windows of log p(y_2..y_M | y_1) with a flat density on z(t_1)."""
    phi, q = ou.exact_transition(ou.drift_matrix(A, C, EPS), S2, DT)
    total = 0.0
    for y in obs:
        m, p = y[0], R**2 * np.eye(2)
        for k in range(1, len(y)):
            m, p = phi @ m, phi @ p @ phi.T + q
            innov = p + R**2 * np.eye(2)
            total += stats.multivariate_normal(m, innov).logpdf(y[k])
            gain = p @ np.linalg.inv(innov)
            m, p = m + gain @ (y[k] - m), p - gain @ p
    return total


def _coupled_guide(drift, var):
    def guide(times, obs, **kwargs):
        smoother = _smoother(drift, (M - 1) * DT)
        frac = jax.random.uniform(numpyro.prng_key(), (times.shape[0], times.shape[1] - 1, 2))
        grid, cross, nodes = jax.vmap(lambda t, y, f: window_posterior_coupled(
            smoother, t, y, jnp.full(y.shape, np.log(var)), jnp.asarray(S2), f))(times, obs, frac)
        s = jnp.broadcast_to(jnp.asarray(S2), (times.shape[0], 2))
        with numpyro.plate("windows", times.shape[0]):
            numpyro.sample("z", CoupledMarkovPath(times, grid, cross, nodes, s))

    return guide


def _mc_elbo(ou, guide, times, obs, n=4000, seed=0):
    elbo = SolverFreeELBO(num_particles=n)
    kw = dict(eps=EPS, obs_std=R, params={"a": A, "c": C, "s": S2})
    terms = jax.jit(lambda k: elbo.loss_terms(k, {}, ou.model, guide, times, obs, **kw))(
        jax.random.key(seed))
    p = np.asarray(terms["elbo_particles"])
    return p.mean(), p.std(ddof=1) / np.sqrt(len(p))


@pytest.mark.parametrize("seed", [0])
def test_solver_free_elbo_at_the_exact_coupled_posterior_is_the_log_evidence(ou, seed):
    """The exact posterior of dx = (-a x + c y) dt + ..., dy = -y/eps dt + ... is in the coupled
    family (reference drift = the model's, pseudo-observations = the data with their noise):
    the ELBO equals the log evidence; the best *uncoupled* reference (c dropped) is below it."""
    with jax.enable_x64(True):
        times, obs = (jnp.asarray(x) for x in _two_scale_problem(ou))
        log_z = _flat_log_evidence(ou, np.asarray(times), np.asarray(obs))
        exact = ou.drift_matrix(A, C, EPS)
        mc, se = _mc_elbo(ou, _coupled_guide(exact, R**2), times, obs, seed=seed)
        assert se < 0.1
        assert abs(mc - log_z) < 4 * se, (mc, log_z, se)
        uncoupled = np.diag(np.diag(exact))
        worse, se_w = _mc_elbo(ou, _coupled_guide(uncoupled, R**2), times, obs, seed=seed + 1)
        assert worse + 4 * se_w < log_z, (worse, log_z)


def test_autoguide_coupled_kernel_builds_the_coupled_path_and_fits(ou):
    """``kernel="coupled"`` on the two-scale model: full-covariance paths, a finite loss that
    decreases, correlated coordinates after fitting; a state it cannot hold is refused."""
    import optax

    from msde_ppl.inference import AutoAmortizedSDE, fit, window_batches

    times = jnp.arange(257) * 0.01
    _, obs = ou.simulate(jax.random.key(0), times, a=1.0, c=3.0, s=(0.5, 1.0), eps=0.1,
                         obs_std=0.1)
    windows = {"times": ou.make_windows(times, 33), "obs": ou.make_windows(obs, 33)}

    def model(times, obs):
        ou.model(times, obs, n_windows=windows["times"].shape[0])

    guide = AutoAmortizedSDE(model, ou.SnapshotEncoder(key=jax.random.key(1)), kernel="coupled",
                             kernel_key=jax.random.key(2))
    result = fit(jax.random.key(3), model, guide, SolverFreeELBO(num_particles=2, normalize=True),
                 optax.adam(1e-2), window_batches(windows, 4), num_steps=120, chunk_size=60,
                 progress=False)
    losses = np.asarray(result.losses)
    assert np.isfinite(losses).all() and losses[-30:].mean() < losses[:30].mean()
    path = guide.posterior_paths(result.params, windows["times"][:2], windows["obs"][:2],
                                 rng_key=jax.random.key(4))["z"]
    assert isinstance(path, CoupledMarkovPath)
    assert float(jnp.max(jnp.abs(path.cov[..., 0, 1]))) > 0.0  # the coordinates are coupled

    def scalar_model(times, obs):
        path = ou.SDEPath(lambda t, z, a: -z, jnp.ones(()), times, None, state_shape=())
        with numpyro.plate("windows", times.shape[0]):
            z = numpyro.sample("z", path)
            numpyro.sample("obs", numpyro.distributions.Normal(z, 1.0).to_event(1), obs=obs)

    with pytest.raises(ValueError, match="one axis"):
        guide = AutoAmortizedSDE(scalar_model, ou.SnapshotEncoder(key=jax.random.key(1)),
                                 kernel="coupled", kernel_key=jax.random.key(2))
        guide.setup(windows["times"][:2], windows["obs"][:2, :, 0])
