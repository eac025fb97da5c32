"""Adaptive integrator steps (msde_ppl.predict.stability): closed forms on linear drifts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.predict.forecast import rollout
from msde_ppl.predict.stability import (
    GROWTH_TOLERANCE,
    StiffnessProbe,
    spurious_growth,
    stable_substeps,
)


@pytest.mark.parametrize("method", ["heun", "euler"])
@pytest.mark.parametrize("omega", [0.5, 20.0, 48.0, 300.0])
def test_stable_substeps_is_the_fewest_within_the_growth_tolerance(method, omega):
    """An oscillatory pair +-i omega: Heun's spurious log-growth per step is
    log(1 + (omega h)^4 / 4) / 2, Euler's log(1 + (omega h)^2) / 2 (closed forms); the chosen
    count keeps the total over the horizon within the tolerance and one fewer would not."""
    dt, horizon = 0.02, 3.2
    lam = jnp.array([1j * omega, -1j * omega])
    per_step = ((lambda x: np.log1p(x**4 / 4) / 2) if method == "heun"
                else (lambda x: np.log1p(x**2) / 2))
    n = int(stable_substeps(lam, dt, horizon, method, 1, 100_000))
    h = dt / n
    assert per_step(omega * h) * horizon / h <= GROWTH_TOLERANCE * (1 + 1e-3)
    if n > 1:
        h = dt / (n - 1)
        assert per_step(omega * h) * horizon / h > GROWTH_TOLERANCE * (1 - 1e-3)
    if omega * h > 0.05:  # below, the per-step growth is under float32's resolution
        np.testing.assert_allclose(float(spurious_growth(lam[0], jnp.float32(h), method)),
                                   per_step(omega * h), rtol=1e-3)


def test_stable_substeps_damped_and_growing_modes():
    """A damped real mode needs h |lambda| <= 0.25 (for stability alone, 2); a mode the SDE
    itself grows (Re lambda > 0) is not penalised for that growth; NaNs are ignored; the
    count is clipped to [at_least, at_most]."""
    dt, horizon = 0.02, 3.2
    n = int(stable_substeps(jnp.array([-1000.0 + 0j]), dt, horizon, "heun", 1, 1000))
    assert n == 80  # h lambda = -0.25 (at -2, |R| = 1: stable, but the noise is cancelled)
    assert int(stable_substeps(jnp.array([5.0 + 0j]), dt, horizon, "heun")) == 1
    assert int(stable_substeps(jnp.array([jnp.nan + 0j]), dt, horizon, "heun", 2, 64)) == 2
    assert int(stable_substeps(jnp.array([1e6j]), dt, horizon, "heun", 1, 64)) == 64


def test_probe_finds_the_outermost_eigenvalues(rng_key):
    """Linear drift f(z) = A z with a known spectrum (a similarity transform of a block
    diagonal with +-30 i, -50 and small values): the Ritz values after a few warm-started
    calls contain the outermost eigenvalues; the four members farthest from the ensemble
    mean are probed, farthest first, each with its own arguments."""
    n = 12
    blocks = np.zeros((n, n))
    blocks[0, 1], blocks[1, 0] = -30.0, 30.0
    blocks[2, 2] = -50.0
    blocks[3:, 3:] = np.diag(np.linspace(-1, 1, n - 3))
    basis = np.asarray(jax.random.normal(rng_key, (n, n))) / np.sqrt(n) + np.eye(n)
    a = basis @ blocks @ np.linalg.inv(basis)
    scales = jnp.array([1.0, 2.0, 0.5, 1.0, 3.0])
    a_j = jnp.asarray(a, jnp.float32)
    probe = StiffnessProbe(lambda t, z, c: c * (a_j @ z), scales, 0, n_members=5)
    # mean 0.8: distances 0.2, 2.2, 1.8, 3.2, 3.8 (times sqrt(n)); member 0 is not probed
    z = jnp.array([1.0, 3.0, -1.0, 4.0, -3.0])[:, None] * jnp.ones((5, n))
    v = probe.start(jax.random.fold_in(rng_key, 1), z)
    for i in range(4):
        values, v = probe.eigenvalues(jax.random.fold_in(rng_key, 2 + i), jnp.float32(0.0),
                                      z, v)
    values = np.asarray(values)
    for slot, c in enumerate([3.0, 1.0, 2.0, 0.5]):  # members 4, 3, 1, 2
        for target in (30j * c, -30j * c, -50.0 * c):
            assert np.min(np.abs(values[slot] - target)) < 0.02 * abs(target), (slot, target)


def test_probe_picks_the_finite_members_farthest_from_the_mean():
    """Outliers by Euclidean distance from the mean of the finite members; a non-finite
    member is never picked while finite ones remain."""
    probe = StiffnessProbe(lambda t, z, args: -z, None, None, n_members=7)
    z = jnp.array([0.0, 5.0, jnp.nan, -1.0, 0.5, -4.0, 0.2])[:, None] * jnp.ones((7, 2))
    np.testing.assert_array_equal(np.asarray(probe.outliers(z)), [1, 5, 3, 4])
    with_inf = z.at[1, 0].set(jnp.inf)  # mean of the finite ones -0.86: 5, 4, 6, 0
    np.testing.assert_array_equal(np.asarray(probe.outliers(with_inf)), [5, 4, 6, 0])


def test_adaptive_rollout_keeps_a_fast_rotation_bounded(rng_key):
    """Noise-free rotation at omega = 40 with one Heun step per interval of 0.02 (omega h =
    0.8): the radius grows by (1 + (omega h)^4 / 4)^(1/2) per step, 2.4e3 over 160 steps.
    Adaptive steps: the radius follows the closed form at the chosen step and grows by at
    most exp(GROWTH_TOLERANCE)."""
    omega, dt, n_out = 40.0, 0.02, 161
    drift = lambda t, z, args: omega * jnp.stack([-z[1], z[0]])  # noqa: E731
    z0 = jnp.array([[1.0, 0.0]])
    with jax.enable_x64(True):
        zeros, start = jnp.zeros((1, 2), jnp.float64), z0.astype(jnp.float64)
        fixed = rollout(rng_key, drift, zeros, start, 0.0, dt, n_out)
        adaptive, counts = rollout(rng_key, drift, zeros, start, 0.0, dt, n_out, adaptive=True,
                                   return_substeps=True)
        n_sub = int(stable_substeps(jnp.array([1j * omega, -1j * omega]), dt,
                                    dt * (n_out - 1), "heun"))
        radius_fixed = float(jnp.linalg.norm(fixed[0, -1]))
        radius = float(jnp.linalg.norm(adaptive[0, -1]))
    np.testing.assert_allclose(radius_fixed, (1 + (omega * dt) ** 4 / 4) ** ((n_out - 1) / 2),
                               rtol=1e-9)
    assert radius_fixed > 100 and n_sub > 1
    np.testing.assert_array_equal(np.asarray(counts), n_sub)
    h = dt / n_sub
    np.testing.assert_allclose(radius, (1 + (omega * h) ** 4 / 4) ** (n_sub * (n_out - 1) / 2),
                               rtol=1e-9)
    assert 1 <= radius <= np.exp(GROWTH_TOLERANCE)


def test_adaptive_rollout_keeps_ou_moments(rng_key):
    """A stiff OU (theta = 200, theta dt = 4 at one step per interval): fixed Heun steps
    explode (|R(-4)| = 5); adaptive ones take theta h = 0.25 and give Heun's stationary
    variance at that step, s^2 h (1 - theta h / 2)^2 / (1 - R^2) with R = 1 - theta h +
    (theta h)^2 / 2 (0.982 of the SDE's s^2 / (2 theta)), within its sampling error (5
    standard errors: 3.5%)."""
    theta, s, n = 200.0, 1.0, 40_000
    drift = lambda t, z, args: -theta * z  # noqa: E731
    z0 = jnp.zeros((n, 1))
    fixed = rollout(rng_key, drift, jnp.full((n, 1), s), z0, 0.0, 0.02, 11)
    assert not np.all(np.abs(np.asarray(fixed[:, -1])) < 1e3)
    paths = rollout(rng_key, drift, jnp.full((n, 1), s), z0, 0.0, 0.02, 11, adaptive=True)
    h = 0.02 / int(stable_substeps(jnp.array([-theta + 0j]), 0.02, 0.2, "heun"))
    np.testing.assert_allclose(theta * h, 0.25)
    r = 1 - theta * h + (theta * h) ** 2 / 2
    var = s**2 * h * (1 - theta * h / 2) ** 2 / (1 - r**2)
    np.testing.assert_allclose(var / (s**2 / (2 * theta)), 0.9825, atol=1e-3)
    got = np.asarray(paths[:, -1, 0])
    assert abs(got.mean()) < 5 * np.sqrt(var / n)
    assert abs(got.var() / var - 1) < 5 * np.sqrt(2 / n)


def test_probe_slices_per_member_arguments_by_prefix_axes(rng_key):
    """``args_axes`` is a prefix of ``args``, as vmap's in_axes: an axis for a whole subtree
    (here axis 1 of both leaves of a dict) and None for shared leaves."""
    scales = {"a": jnp.arange(1.0, 7.0)[None], "b": jnp.ones((1, 6))}  # members on axis 1
    shared = jnp.float32(2.0)
    probe = StiffnessProbe(lambda t, z, args: -args[0]["a"][0] * args[0]["b"][0] * args[1] * z,
                           (scales, shared), ({"a": 1, "b": 1}, None), n_members=6)
    z = jnp.arange(6.0)[:, None] * jnp.ones((6, 3))  # outliers 0 and 5, then 1 and 4
    start = probe.start(jax.random.fold_in(rng_key, 1), z)
    values, _ = probe.eigenvalues(jax.random.fold_in(rng_key, 2), jnp.float32(0.0), z, start)
    np.testing.assert_allclose(np.abs(np.asarray(values)).max(axis=1), [2.0, 12.0, 4.0, 10.0],
                               rtol=1e-5)


def test_fixed_steps_are_reverse_differentiable_and_report_their_count(rng_key):
    """Without adaptive steps the rollout is nested scans (reverse differentiable): the
    gradient of the noise-free OU end point z0 R^n with respect to z0 is R^n (Heun's
    R = 1 - theta h + (theta h)^2 / 2 per step)."""
    theta, dt, n_out, substeps = 2.0, 0.1, 6, 3
    drift = lambda t, z, args: -theta * z  # noqa: E731

    def end(z0):
        path, counts = rollout(rng_key, drift, jnp.zeros((1, 1)), z0, 0.0, dt, n_out, substeps,
                               return_substeps=True)
        return path[0, -1, 0], counts

    grad, counts = jax.grad(end, has_aux=True)(jnp.ones((1, 1)))
    h = dt / substeps
    r = 1 - theta * h + (theta * h) ** 2 / 2
    np.testing.assert_allclose(float(grad[0, 0]), r ** (substeps * (n_out - 1)), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(counts), substeps)


def test_adaptive_rollout_survives_members_that_blow_up(rng_key):
    """A drift z^3 from z = 2 blows up within the horizon: the probe sees non-finite
    Jacobians, ignores them and falls back to the least number of steps (no hang, no error);
    the non-finite paths are left for the divergence count."""
    drift = lambda t, z, args: z**3  # noqa: E731
    paths, counts = rollout(rng_key, drift, jnp.full((8, 3), 0.1), jnp.full((8, 3), 2.0), 0.0,
                            0.1, 20, adaptive=True, return_substeps=True)
    counts = np.asarray(counts)
    assert not np.isfinite(np.asarray(paths[:, -1])).any()
    assert counts.min() >= 1 and counts.max() <= 64 and counts[-1] == 1
