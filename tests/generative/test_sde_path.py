"""SDEPath: exact density against a hand-computed Gaussian sum, gradients, jit, shapes, sampling."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from scipy import stats

from msde_ppl.generative import SDEPath


class LinearDrift(eqx.Module):
    """f(t, z) = W z + b + sin(t) * c  (weights are traced pytree leaves)."""

    weight: jax.Array
    bias: jax.Array
    forcing: jax.Array

    def __call__(self, t, z, args):
        scale = 1.0 if args is None else args
        flat = jnp.reshape(z, (-1,))
        out = scale * (self.weight @ flat) + self.bias + jnp.sin(t) * self.forcing
        return jnp.reshape(out, jnp.shape(z))


def _drift(n, rng, dtype=np.float32):
    return LinearDrift(
        jnp.asarray(-np.eye(n) + 0.3 * rng.standard_normal((n, n)), dtype),
        jnp.asarray(0.1 * rng.standard_normal(n), dtype),
        jnp.asarray(0.2 * rng.standard_normal(n), dtype),
    )


def _numpy_log_prob(drift, s, times, path, args, init_loc=None, init_scale=None):
    """Reference: explicit double loop over transitions with scipy.stats.norm."""
    W, b, c = (np.asarray(x, np.float64) for x in (drift.weight, drift.bias, drift.forcing))
    total = 0.0
    for i in range(len(times) - 1):
        dt = times[i + 1] - times[i]
        z = path[i].reshape(-1)
        mean = z + (args * W @ z + b + np.sin(times[i]) * c) * dt
        std = np.reshape(s, -1) * np.sqrt(dt)
        total += stats.norm.logpdf(path[i + 1].reshape(-1), mean, std).sum()
    if init_loc is not None:
        total += stats.norm.logpdf(path[0].reshape(-1), init_loc.reshape(-1), init_scale).sum()
    return total


@pytest.mark.parametrize("state_shape", [(3,), (2, 3)])
@pytest.mark.parametrize("with_init", [True, False])
def test_log_prob_equals_hand_computed_gaussian_sum(np_rng, state_shape, with_init):
    n = int(np.prod(state_shape))
    drift = _drift(n, np_rng)
    n_batch, n_time = 2, 9
    # per-batch, non-uniform time grids
    times = np.cumsum(np_rng.uniform(0.01, 0.1, (n_batch, n_time)), axis=-1)
    s = np_rng.uniform(0.2, 1.0, state_shape)
    init_loc = np_rng.standard_normal(state_shape)
    init = (
        dist.Normal(jnp.asarray(init_loc, jnp.float32), 0.7).to_event(len(state_shape))
        if with_init
        else None
    )
    d = SDEPath(drift, jnp.asarray(s, jnp.float32), jnp.asarray(times, jnp.float32), init,
                drift_args=1.5, state_shape=state_shape)
    assert d.batch_shape == (n_batch,)
    assert d.event_shape == (n_time,) + state_shape
    paths = np_rng.standard_normal((4, n_batch, n_time) + state_shape).astype(np.float32)
    got = np.asarray(d.log_prob(jnp.asarray(paths)))
    assert got.shape == (4, n_batch)
    for k in range(4):
        for b in range(n_batch):
            ref = _numpy_log_prob(drift, s, times[b], paths[k, b].astype(np.float64), 1.5,
                                  init_loc if with_init else None, 0.7)
            np.testing.assert_allclose(got[k, b], ref, rtol=2e-5, atol=1e-3)


def test_gradients_match_central_finite_differences(np_rng):
    with jax.enable_x64(True):
        n, n_time = 2, 7
        drift = _drift(n, np_rng, np.float64)
        times = jnp.asarray(np.cumsum(np_rng.uniform(0.05, 0.1, n_time)))
        path = jnp.asarray(np_rng.standard_normal((n_time, n)))
        s0 = jnp.asarray([0.5, 0.8])

        def f(weight, s, z, coef):
            d = SDEPath(eqx.tree_at(lambda m: m.weight, drift, weight), s, times,
                        dist.Normal(jnp.zeros(n), 1.0).to_event(1), drift_args=coef)
            return d.log_prob(z)

        inputs = (drift.weight, s0, path, jnp.asarray(1.3))
        grads = jax.grad(f, argnums=(0, 1, 2, 3))(*inputs)
        eps = 1e-6
        for arg_i, g in enumerate(grads):
            x = np.asarray(inputs[arg_i])
            fd = np.zeros_like(x)
            for idx in np.ndindex(x.shape):
                xp, xm = x.copy(), x.copy()
                xp[idx] += eps
                xm[idx] -= eps
                args_p = list(inputs)
                args_m = list(inputs)
                args_p[arg_i], args_m[arg_i] = jnp.asarray(xp), jnp.asarray(xm)
                fd[idx] = (f(*args_p) - f(*args_m)) / (2 * eps)
            np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-6)


def test_jit_eager_agree_and_weights_are_traced(np_rng):
    drift = _drift(3, np_rng)
    times = jnp.linspace(0.0, 1.0, 12)
    d = SDEPath(drift, 0.5, times, dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    path = d.sample(jax.random.key(1), (5,))
    n_traces = []

    @jax.jit
    def lp(distribution, value):
        n_traces.append(1)
        return distribution.log_prob(value)

    np.testing.assert_allclose(lp(d, path), d.log_prob(path), rtol=1e-5, atol=1e-4)
    # new weights through the same compiled function: no retrace, different (correct) answer
    d2 = SDEPath(eqx.tree_at(lambda m: m.weight, drift, 2.0 * drift.weight), 0.5, times,
                 dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    out2 = lp(d2, path)
    assert len(n_traces) == 1
    np.testing.assert_allclose(out2, d2.log_prob(path), rtol=1e-5, atol=1e-4)
    assert not np.allclose(out2, d.log_prob(path))
    # sampling under jit equals eager sampling
    np.testing.assert_allclose(
        jax.jit(lambda dd, k: dd.sample(k, (2,)))(d, jax.random.key(3)),
        d.sample(jax.random.key(3), (2,)), rtol=1e-5, atol=1e-5)


def test_shapes_under_plates_and_sample_shape(np_rng):
    drift = _drift(2, np_rng)
    times = jnp.linspace(0.0, 1.0, 6)

    def model():
        with numpyro.plate("windows", 4):
            return numpyro.sample(
                "z", SDEPath(drift, jnp.ones(2), times, dist.Normal(jnp.zeros(2), 1.0).to_event(1))
            )

    tr = handlers.trace(handlers.seed(model, 0)).get_trace()
    assert tr["z"]["value"].shape == (4, 6, 2)
    assert tr["z"]["fn"].batch_shape == (4,)
    assert isinstance(tr["z"]["fn"], SDEPath)  # expand keeps the class (drift stays reachable)
    assert tr["z"]["fn"].log_prob(tr["z"]["value"]).shape == (4,)
    d = SDEPath(drift, jnp.ones((3, 2)), times, dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    x = d.sample(jax.random.key(0), (5, 2))
    assert x.shape == (5, 2, 3, 6, 2)
    assert d.log_prob(x).shape == (5, 2, 3)


def test_sample_moments_match_euler_recursion(np_rng):
    """Linear drift: EM mean/variance follow m <- (1 - a dt) m, v <- (1 - a dt)^2 v + s^2 dt."""
    a, s, n_time, n_samples = 2.0, 0.7, 21, 20000
    times = jnp.linspace(0.0, 1.0, n_time)
    d = SDEPath(lambda t, z, args: -args * z, s, times,
                dist.Normal(jnp.ones(1), 0.3).to_event(1), drift_args=a)
    x = np.asarray(d.sample(jax.random.key(0), (n_samples,)))[..., 0]
    dt = 1.0 / (n_time - 1)
    m, v = [1.0], [0.09]
    for _ in range(n_time - 1):
        m.append((1 - a * dt) * m[-1])
        v.append((1 - a * dt) ** 2 * v[-1] + s**2 * dt)
    m, v = np.array(m), np.array(v)
    se_mean = np.sqrt(v / n_samples)
    assert np.all(np.abs(x.mean(0) - m) < 5 * se_mean)
    se_var = v * np.sqrt(2.0 / (n_samples - 1))
    assert np.all(np.abs(x.var(0) - v) < 5 * se_var)


def test_unsampleable_without_init_and_bad_shapes():
    d = SDEPath(lambda t, z, a: -z, 1.0, jnp.linspace(0, 1, 4), state_shape=(2,))
    with pytest.raises(NotImplementedError, match="cannot be sampled"):
        d.sample(jax.random.key(0))
    with pytest.raises(ValueError, match="state_shape is required"):
        SDEPath(lambda t, z, a: -z, 1.0, jnp.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        SDEPath(lambda t, z, a: -z, jnp.ones(3), jnp.linspace(0, 1, 4), state_shape=(2,))
