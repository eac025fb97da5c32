"""AutoAmortizedSDE: sites and shapes, plate sizes that change between calls, posterior API."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import Predictive

from msde_ppl.generative import SDEPath
from msde_ppl.inference import (
    AutoAmortizedSDE,
    GaussMarkovPath,
    SolverFreeELBO,
    TemporalKernel,
    init,
)


def _data(ou, n_windows, n_time=16, seed=0):
    times = jnp.arange(n_windows * (n_time - 1) + 1) * 0.05
    _, obs = ou.simulate(jax.random.key(seed), times, a=1.0, c=0.8, s=(0.5, 1.0), eps=0.1,
                         obs_std=0.1)
    return ou.make_windows(times, n_time), ou.make_windows(obs, n_time)


def _guide(ou, model):
    # a narrow warp network keeps eager (un-jitted) guide calls fast
    return AutoAmortizedSDE(model, ou.SnapshotEncoder(key=jax.random.key(1)),
                            kernel=TemporalKernel(hidden_size=8, key=jax.random.key(2)))


def _params(ou, model, guide, times, obs):
    problem, state = init(jax.random.key(0), model, guide, SolverFreeELBO(), _adam(),
                          {"times": times, "obs": obs})
    return problem.constrain(state.params)


def _adam():
    import optax

    return optax.adam(1e-3)


def test_sites_shapes_and_parameter_names(ou):
    times, obs = _data(ou, 3)
    guide = _guide(ou, ou.model)
    tr = handlers.trace(handlers.seed(guide, 0)).get_trace(times, obs)
    assert isinstance(tr["z"]["fn"], GaussMarkovPath)
    assert tr["z"]["value"].shape == (3, 16, 2)
    assert tr["a"]["value"].shape == () and tr["s"]["value"].shape == (2,)
    assert float(tr["a"]["value"]) > 0 and np.all(np.asarray(tr["s"]["value"]) > 0)
    params = {n for n, s in tr.items() if s["type"] == "param"}
    assert {"a_auto_loc", "a_auto_scale", "c_auto_loc", "s_auto_loc",
            "z_encoder$params", "z_kernel$params"} <= params
    # no model site leaks into the guide trace (only its params pass through)
    assert "obs" not in tr and "windows" in tr


def test_guide_built_on_one_size_works_on_another(ou):
    """The frozen-subsample-size bug of AutoGuide._create_plates must not occur."""
    times, obs = _data(ou, 6)
    guide = _guide(ou, ou.model)
    # build with 2 windows out of 6 (subsampled plate), call with 4, then with all 6 unsubsampled
    for n_batch, n_total in ((2, 6), (4, 6), (6, None), (3, None)):
        kw = {} if n_total is None else {"n_windows": n_total}

        def model(times, obs, kw=kw):
            ou.model(times, obs, **kw)

        guide.model = model

        @jax.jit
        def run(t, o, model=model):
            g_tr = handlers.trace(handlers.seed(guide, 1)).get_trace(t, o)
            m_tr = handlers.trace(handlers.replay(handlers.seed(model, 2), g_tr)).get_trace(t, o)
            return (g_tr["z"]["value"], jnp.asarray(g_tr["z"]["scale"] or 1.0),
                    jnp.asarray(m_tr["z"]["scale"] or 1.0))

        value, g_scale, m_scale = run(times[:n_batch], obs[:n_batch])
        assert value.shape == (n_batch, 16, 2)
        expected_scale = (n_total or n_batch) / n_batch
        assert float(g_scale) == pytest.approx(expected_scale)
        assert float(m_scale) == pytest.approx(expected_scale)


def test_subsample_indices_are_shared_with_the_model(ou):
    """A model that indexes its data by the plate's indices sees the windows the guide encoded."""
    times, obs = _data(ou, 8)

    def model(times, obs):
        with numpyro.plate("windows", times.shape[0], subsample_size=3) as idx:
            path = SDEPath(ou.TwoScaleDrift(0.1), jnp.ones(2), times[idx], state_shape=(2,),
                           drift_args=(1.0, 0.0))
            z = numpyro.sample("z", path)
            numpyro.sample("obs", dist.Normal(z, 0.1).to_event(2), obs=obs[idx])

    guide = _guide(ou, model)
    g_tr = handlers.trace(handlers.seed(guide, 3)).get_trace(times, obs)
    m_tr = handlers.trace(handlers.replay(handlers.seed(model, 4), g_tr)).get_trace(times, obs)
    idx = np.asarray(g_tr["windows"]["value"])
    np.testing.assert_array_equal(idx, np.asarray(m_tr["windows"]["value"]))
    np.testing.assert_array_equal(np.asarray(m_tr["obs"]["value"]), np.asarray(obs)[idx])
    # identity encoder + small nugget: the guide's mean tracks the windows it encoded
    q = g_tr["z"]["fn"]
    np.testing.assert_array_equal(np.asarray(q.times), np.asarray(times)[idx])
    err = np.abs(np.asarray(q.loc) - np.asarray(obs)[idx]).mean()
    err_other = np.abs(np.asarray(q.loc) - np.asarray(obs)[(idx + 1) % 8]).mean()
    assert err < 0.5 * err_other


@pytest.mark.slow
def test_predictive_sample_posterior_median_quantiles(ou):
    times, obs = _data(ou, 3)
    guide = _guide(ou, ou.model)
    params = _params(ou, ou.model, guide, times, obs)
    pred = Predictive(ou.model, guide=guide, params=params, num_samples=7,
                      return_sites=["obs", "z"])(jax.random.key(5), times, obs)
    assert pred["obs"].shape == (7, 3, 16, 2) and pred["z"].shape == (7, 3, 16, 2)
    # posterior predictive: the amortized guide needs the data, the model must not see it
    draws = guide.sample_posterior(jax.random.key(7), params, times, obs, sample_shape=(50,))
    ppc = Predictive(ou.model, posterior_samples=draws, return_sites=["obs"])(
        jax.random.key(8), times, None)
    resid = np.asarray(ppc["obs"] - draws["z"])  # obs ~ N(z, 0.1)
    assert abs(resid.std() - 0.1) < 5 * 0.1 / np.sqrt(2 * resid.size)
    draws = guide.sample_posterior(jax.random.key(6), params, times, obs, sample_shape=(4000,))
    assert draws["z"].shape == (4000, 3, 16, 2) and draws["s"].shape == (4000, 2)
    med = guide.median(params, times, obs)
    qs = guide.quantiles(params, [0.05, 0.5, 0.95], times, obs)
    for k in ("a", "c", "s", "z"):
        np.testing.assert_allclose(qs[k][1], med[k], rtol=1e-6)
        assert np.all(np.asarray(qs[k][0]) < np.asarray(qs[k][2]))
    # Monte Carlo check of the stated quantiles: the fraction of draws below q_p is p
    n = draws["a"].shape[0]
    for k in ("a", "c", "s", "z"):
        for i, p in enumerate((0.05, 0.5, 0.95)):
            frac = (np.asarray(draws[k]) < np.asarray(qs[k][i])).mean(0)
            assert np.all(np.abs(frac - p) < 5 * np.sqrt(p * (1 - p) / n))


@pytest.mark.slow
def test_arviz_conversion(ou):
    arviz_base = pytest.importorskip("arviz_base")
    import optax
    from numpyro.infer import SVI

    times, obs = _data(ou, 2)
    guide = _guide(ou, ou.model)
    params = _params(ou, ou.model, guide, times, obs)

    class _Result:  # the attribute from_numpyro_svi reads from an SVIRunResult
        def __init__(self, params):
            self.params = params

    svi = SVI(ou.model, guide, optax.adam(1e-3), SolverFreeELBO())
    tree = arviz_base.from_numpyro_svi(svi, svi_result=_Result(params), model_args=(times, obs),
                                       num_samples=10)
    post = tree["posterior"]
    assert post["a"].shape[-1:] == (10,) or 10 in post["a"].shape
    assert "z" in post


def test_no_hidden_seed_kernels_from_the_first_calls_key_and_paths_without_a_key(ou):
    """The default kernels' networks are drawn from the key the guide's first call is seeded
    with (SVI.init's): same key, same networks; another key, others; unseeded, an error.
    ``posterior_paths`` without a key is deterministic (globals at their medians), with keys it
    is conditioned on draws of the globals."""
    times, obs = _data(ou, 2)
    encoder = ou.SnapshotEncoder(key=jax.random.key(1))

    def kernel_leaves(seed):
        guide = AutoAmortizedSDE(ou.model, encoder, kernel="interpolation")
        trace = handlers.trace(handlers.seed(guide, seed)).get_trace(times, obs)
        return [np.asarray(x) for x in jax.tree.leaves(trace["z_kernel$params"]["value"])]

    first, again, other = kernel_leaves(0), kernel_leaves(0), kernel_leaves(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    with pytest.raises(ValueError, match="concrete key"):
        AutoAmortizedSDE(ou.model, encoder, kernel="interpolation")(times, obs)

    def init_kernel_leaves(seed):  # fit.init sets the guide up with a key split from its own
        guide = AutoAmortizedSDE(ou.model, encoder, kernel="interpolation")
        _, state = init(jax.random.key(seed), ou.model, guide, SolverFreeELBO(), _adam(),
                        {"times": times, "obs": obs})
        return [np.asarray(v) for k, v in sorted(state.params.items()) if "kernel" in k]

    first, again, other = init_kernel_leaves(5), init_kernel_leaves(5), init_kernel_leaves(6)
    assert first and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))

    guide = AutoAmortizedSDE(ou.model, encoder)  # the OU smoother reads the diffusion s
    params = _params(ou, ou.model, guide, times, obs)
    plain = [guide.posterior_paths(params, times, obs)["z"] for _ in range(2)]
    np.testing.assert_array_equal(plain[0].loc, plain[1].loc)
    median_s = guide.global_quantiles(params, [0.5])["s"][0]  # unkeyed: globals at medians
    np.testing.assert_allclose(plain[0].diffusion, np.broadcast_to(median_s, np.shape(
        plain[0].diffusion)), rtol=1e-6)
    drawn = [guide.posterior_paths(params, times, obs, rng_key=jax.random.key(k))["z"]
             for k in (3, 4)]
    assert not np.allclose(drawn[0].var, drawn[1].var)
    assert np.all(np.isfinite(plain[0].var)) and np.all(np.asarray(plain[0].var) > 0)
