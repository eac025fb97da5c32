"""The generic forecast on a program written outside the package, against closed forms.

Program: ``dz = -theta z dt + s dW`` on a 4-vector state, observed as ``y ~ N(z, sigma^2)``.
With the guide's posterior of ``theta`` set to ``LogNormal(log 2, 0.5)`` and everything else
(initial state, diffusion, noise) pinned near zero, the stochastic Heun step multiplies the state
by ``g(theta) = 1 - theta h + (theta h)^2 / 2``, so the forecast mean at step ``n`` is
``m_0 E[g(theta)^n]``, an expectation over the members' OWN draws of ``theta``: a forecast that
shared one draw (or the posterior median) across members would miss it. ``theta`` reaches the
drift either as ``drift_args`` or as an array leaf of the drift module built from the sampled
site; both must be per-member.
"""

import importlib
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
import xarray as xr
from scipy import integrate, stats

import msde_ppl as msde
from msde_ppl.inference import init
from msde_ppl.inference.param_store import global_param_names
from msde_ppl.pipeline.fitted import grid_info
from msde_ppl.predict.calibration import tail_weights

N, DT, T_OUT, S = 4, 0.05, 9, 4000


class Decay(eqx.Module):
    rate: jax.Array | None = None  # set: the rate is a leaf of the module

    def __call__(self, t, z, args):
        return -(self.rate if args is None else args) * z


class Encoder(eqx.Module):
    logvar: jax.Array

    def __call__(self, y):
        return y[0], self.logvar


ENCODER = Encoder(jnp.full(N, -40.0))  # a module global: the fit can be loaded by reference


def program(y, times, *, as_leaf, n_windows=None):
    theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    drift, args = (Decay(theta), None) if as_leaf else (Decay(), theta)
    n_batch = times.shape[0]
    with numpyro.plate("windows", n_windows or n_batch, subsample_size=n_batch):
        z = numpyro.sample("z", msde.SDEPath(drift, jnp.full(N, s), times, drift_args=args,
                                             state_shape=(N,)))
        numpyro.sample("y", dist.Normal(z[:, :, None, :], 1e-4).to_event(3), obs=y)


@pytest.fixture(scope="module")
def data():
    t = DT * np.arange(T_OUT)
    u = np.tile(np.linspace(0.5, 2.0, N), (3, T_OUT, 1)).astype(np.float32)
    return msde.from_arrays(u, time=t, x=np.arange(N) / N, split=["train", "val", "test"])


def _linear_inflation(monkeypatch):
    """The calibration's inflation without the compression near the data's bounds (tested on
    its own: ``test_calibrated_draws_inflate_linearly_inside_the_data_and_never_leave_the_bounds``),
    so the tests of the factor and the tail state their linear algebra exactly."""
    forecast_module = importlib.import_module("msde_ppl.predict.forecast")
    bounded = forecast_module._calibrated_draws
    monkeypatch.setattr(forecast_module, "_calibrated_draws",
                        lambda draws, mean, c, w, shift, bounds: bounded(draws, mean, c, w, shift))


@pytest.fixture
def linear_inflation(monkeypatch):
    _linear_inflation(monkeypatch)


def _fitted(ds, as_leaf):
    model = partial(program, as_leaf=as_leaf, n_windows=1)
    guide = msde.AutoAmortizedSDE(model, ENCODER)
    y, t = msde.observations(ds, "train")
    problem, state = init(jax.random.key(0), model, guide, None, optax.identity(),
                          {"y": jnp.asarray(y[:1, :2]), "times": jnp.asarray(t[None, :2])})
    params = dict(problem.constrain(state.params))
    loc, scale = global_param_names("theta")
    params[loc], params[scale] = jnp.log(2.0), jnp.asarray(0.5)
    loc, scale = global_param_names("s")
    params[loc], params[scale] = jnp.log(1e-6), jnp.asarray(1e-3)
    return msde.Fitted(model, guide, params, losses=np.zeros(1), grid=grid_info(ds))


@pytest.mark.parametrize("as_leaf", [False, True], ids=["drift_args", "module_leaf"])
def test_forecast_mean_is_the_members_expectation(data, as_leaf):
    fitted = _fitted(data, as_leaf)
    fc = msde.forecast(jax.random.key(1), fitted, data, split="test", n_samples=S)
    m0 = np.linspace(0.5, 2.0, N)
    h = DT
    law = stats.lognorm(s=0.5, scale=2.0)
    for n in (2, 8):
        def g_n(theta, n=n):
            return (1 - theta * h + (theta * h) ** 2 / 2) ** n * law.pdf(theta)
        expected, _ = integrate.quad(g_n, 0, 60)
        second, _ = integrate.quad(lambda th, n=n: (1 - th * h + (th * h) ** 2 / 2) ** (2 * n)
                                   * law.pdf(th), 0, 60)
        se = np.sqrt(second - expected**2) / np.sqrt(S)
        got = fc["mean"].values[0, n] / m0
        assert np.all(np.abs(got - expected) < 5 * se + 1e-4), (n, got, expected, se)
        # a shared draw would have no spread: the members' spread is that of g(theta)^n
        spread = fc["std"].values[0, n] / m0
        np.testing.assert_allclose(spread, np.sqrt(second - expected**2), rtol=0.1)
    assert "macro" not in fc  # a plain Normal likelihood has no macro/micro decomposition


def test_tree_and_summary_of_a_user_program(data):
    fitted = _fitted(data, False)
    tree = msde.diagnostics.to_datatree(fitted, data, window=4, n_draws=200)
    post = tree["posterior"]
    assert set(msde.diagnostics.global_sites(tree)) == {"theta", "s"}
    assert post["z"].dims == ("chain", "draw", "time", "latent")
    assert post["y_mean"].dims == ("chain", "draw", "time", "x")
    table = msde.diagnostics.summary(tree)
    median = float(np.median(post["theta"].values))
    assert abs(median / 2.0 - 1) < 5 * 0.5 * 1.25 / np.sqrt(200)  # LogNormal median, MC error
    assert list(table.index) == ["theta", "s"]


def test_a_user_program_is_loaded_by_reference(data, tmp_path):
    fitted = _fitted(data, True)
    again = msde.Fitted.load(fitted.save(tmp_path / "fit"))
    assert again.model.func is program and again.model.keywords == fitted.model.keywords
    for a, b in zip(jax.tree.leaves(fitted.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)
    fc = msde.forecast(jax.random.key(1), fitted, data, n_samples=16)
    np.testing.assert_allclose(msde.forecast(jax.random.key(1), again, data, n_samples=16)["mean"],
                               fc["mean"], rtol=1e-6)


def test_a_user_programs_centred_interpolation_is_loaded_with_it(data, tmp_path):
    """The guide's prior-mean choice travels with a fit loaded by reference (a record from
    before the option loads with the zero-mean interpolation it had)."""
    model = partial(program, as_leaf=False, n_windows=1)
    fitted = _fitted(data, False)
    for centred in (True, False):
        guide = msde.AutoAmortizedSDE(model, ENCODER, centred_interpolation=centred)
        y, t = msde.observations(data, "train")
        guide.setup(y=jnp.asarray(y[:1, :2]), times=jnp.asarray(t[None, :2]),
                    rng_key=jax.random.key(0))
        one = msde.Fitted(model, guide, fitted.params, losses=np.zeros(1), grid=fitted.grid)
        again = msde.Fitted.load(one.save(tmp_path / f"fit_{centred}"))
        assert again.guide.centred_interpolation is centred


def test_spread_factor_inflates_the_members_around_their_mean(data, linear_inflation):
    """Same key, with and without a per-lead-time factor c: the mean is unchanged, the std and
    the distance of every quantile from the mean are multiplied by c (the deviations of the
    same members are), and a bad factor is refused by name."""
    fitted = _fitted(data, as_leaf=False)
    factor = np.linspace(0.5, 3.0, T_OUT)
    plain = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=256)
    wide = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=256,
                         spread_factor=factor)
    np.testing.assert_allclose(wide["mean"], plain["mean"], rtol=1e-6)
    c = factor[None, :, None]
    np.testing.assert_allclose(wide["std"], c * plain["std"], rtol=1e-5)
    for q in ("q05", "q95"):
        np.testing.assert_allclose(wide[q] - wide["mean"], c * (plain[q] - plain["mean"]),
                                   rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="spread_factor"):
        msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=8,
                      spread_factor=np.ones(T_OUT - 1))
    with pytest.raises(ValueError, match="spread_factor"):
        msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=8,
                      spread_factor=-1.0)


def test_spread_tail_reweights_the_members_and_keeps_mean_and_std(data, linear_inflation):
    """Same key, with and without a Student-t tail of 3 dof: the mean and the std are
    unchanged, so is the draws' own average (the weighted deviations are re-centred); the
    members' deviations are their own times the tail weights, so the 90% interval narrows
    relative to the spread; a mixture of two models tiles the weights over them; dof <= 2 is
    refused by name."""
    fitted = _fitted(data, as_leaf=False)
    plain = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=64,
                          return_samples=True)
    tailed = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=64,
                           return_samples=True, spread_tail=3.0)
    for name in ("mean", "std"):
        np.testing.assert_allclose(tailed[name], plain[name], rtol=1e-6)
    np.testing.assert_allclose(tailed["samples"].mean("sample"), plain["samples"].mean("sample"),
                               rtol=1e-4, atol=1e-5)
    deviation = plain["samples"] - plain["mean"]  # from the ensemble mean the draws are about
    weights = xr.DataArray(tail_weights(3.0, 64), dims="sample")
    expected = weights * deviation - (weights * deviation).mean("sample")
    np.testing.assert_allclose(tailed["samples"] - tailed["samples"].mean("sample"), expected,
                               rtol=1e-4, atol=1e-5)
    width = lambda fc: float(((fc["q95"] - fc["q05"]) / fc["std"]).median())  # noqa: E731
    assert width(tailed) < 0.95 * width(plain)
    # a mixture of two models: each model's members get the same weights
    pair = msde.forecast(jax.random.key(3), [fitted, fitted], data, split="test", n_samples=32,
                         return_samples=True)
    pair_tailed = msde.forecast(jax.random.key(3), [fitted, fitted], data, split="test",
                                n_samples=32, return_samples=True, spread_tail=3.0)
    weights = xr.DataArray(np.tile(tail_weights(3.0, 32), 2), dims="sample")
    deviation = pair["samples"] - pair["mean"]
    expected = weights * deviation - (weights * deviation).mean("sample")
    np.testing.assert_allclose(pair_tailed["samples"] - pair_tailed["samples"].mean("sample"),
                               expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=8,
                      spread_tail=2.0)


def test_residual_gain_moves_every_member_by_the_first_residual(data):
    """Same key, with and without a gain a(tau): every statistic of the draws moves by
    a(tau) (y_0 - mean_0) (the std does not), the mean at lead 0 becomes y_0 with a(0) = 1,
    and a gain of the wrong length is refused by name."""
    fitted = _fitted(data, as_leaf=False)
    gain = np.linspace(1.0, 0.2, T_OUT)
    plain = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=64)
    moved = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=64,
                          residual_gain=gain)
    residual = (plain["obs"] - plain["mean"]).isel(time=0)
    shift = gain[None, :, None] * residual.values[:, None, :]
    for name in ("mean", "q05", "q95"):
        np.testing.assert_allclose(moved[name], plain[name] + shift, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moved["std"], plain["std"], rtol=1e-6)
    np.testing.assert_allclose(moved["mean"].isel(time=0), plain["obs"].isel(time=0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="residual_gain"):
        msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=8,
                      residual_gain=np.ones(T_OUT - 1))
    with pytest.raises(ValueError, match="micro part"):  # this program has none to weight
        msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=8,
                      residual_gain=gain, micro_weight=gain)


def test_residual_spread_multiplies_each_trajectory_by_its_residual(data):
    """Same key: with a ResidualSpread the std of trajectory k is multiplied by
    m(rms of y_0 - mean_0 of k) (and by the spread factor), the mean does not move."""
    from msde_ppl.predict import ResidualSpread

    fitted = _fitted(data, as_leaf=False)
    plain = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=64)
    rms = np.sqrt(((plain["obs"] - plain["mean"]).isel(time=0) ** 2).mean("x")).values
    # this model reconstructs its first snapshot to rounding: the multiplier's lower bound
    spread = ResidualSpread(0.7, 1.0)
    factor = np.linspace(1.0, 2.0, T_OUT)
    wide = msde.forecast(jax.random.key(3), fitted, data, split="test", n_samples=64,
                         spread_factor=factor, residual_spread=spread)
    m = spread.multiplier(rms)
    np.testing.assert_allclose(m, 1 / 3)
    np.testing.assert_allclose(wide["spread_multiplier"], m, rtol=1e-5)
    np.testing.assert_allclose(wide["mean"], plain["mean"], rtol=1e-6)
    np.testing.assert_allclose(wide["std"], m[:, None, None] * factor[None, :, None]
                               * plain["std"], rtol=1e-5)


def test_score_calibrates_on_val_and_keeps_both_scores(data, monkeypatch, capsys):
    from msde_ppl.pipeline import run as run_module

    fitted = _fitted(data, as_leaf=False)
    fc, metrics = run_module.score(fitted, data, split="test", n_samples=64,
                                   calibrate_on="val")
    cal = metrics["calibrated"]
    assert cal["fitted_on"] == "val" and cal["spread_factor"]["min"] > 0
    assert {"coverage_90", "crps", "spread_skill"} <= set(cal) and "fit_wall_time_s" in metrics
    assert fc["spread_factor"].dims == ("time",) and fc.sizes["time"] == T_OUT
    assert fc["residual_gain"].dims == ("time",) and fc["residual_gain"].values[0] == 1
    assert "rel_l2_mean" in cal and cal["residual_gain"]["lead_1"] <= 1
    assert 0 <= cal["residual_spread"]["exponent"] <= 1 and "spread_multiplier" in fc
    # the coverage widening is part of the delivered factor, 1 when none (at most 1.25)
    assert 1.0 <= cal["spread_widening"] <= 1.25
    assert fc["spread_factor"].attrs["spread_widening"] == cal["spread_widening"]
    tail = cal["spread_tail_dof"]  # None: Gaussian members, and no attribute then
    if tail is None:
        assert "spread_tail_dof" not in fc["spread_factor"].attrs
    else:
        assert tail > 2 and fc["spread_factor"].attrs["spread_tail_dof"] == tail
    fc, spread_only = run_module.score(fitted, data, split="test", n_samples=64,
                                       calibrate_on="val", residual=False)
    assert "residual_gain" not in spread_only["calibrated"] and "residual_gain" not in fc
    # the calibrated rerun transforms the raw forecast's own members: without the residual
    # gain the mean, and so the rel-L2, is the raw one exactly
    assert spread_only["calibrated"]["rel_l2_mean"] == pytest.approx(
        spread_only["rel_l2_mean"], rel=1e-6)

    def diverged(_fc, **_):
        raise ValueError("the forecast has non-finite mean or std: it cannot be calibrated")

    monkeypatch.setattr(run_module, "fit_spread_factor", diverged)
    fc, metrics = run_module.score(fitted, data, split="test", n_samples=8, calibrate_on="val")
    assert "non-finite" in metrics["calibrated"]["skipped"]
    assert "spread_factor" not in fc and "fit_wall_time_s" in metrics  # the run still scores
    assert "calibration on 'val' skipped" in capsys.readouterr().out


def test_score_delivers_the_fitted_heavy_tail_inside_the_data_bounds(data, monkeypatch):
    """With the factor at 3 and the heaviest tail on the grid (2.1 dof), linearly inflated
    members leave the data's bounds; ``score`` delivers that very factor and tail (nothing is
    scaled down), and no member the raw forecast kept inside the bounds leaves them."""
    from msde_ppl.pipeline import run as run_module

    factor = np.full(T_OUT, 3.0)
    monkeypatch.setattr(run_module, "fit_spread_factor", lambda *a, **k: factor)
    monkeypatch.setattr(run_module, "fit_spread_tail", lambda *a, **k: 2.1)
    fitted = _fitted(data, as_leaf=False)
    raw, _ = run_module.score(fitted, data, split="test", n_samples=64, seed=5)
    fc, metrics = run_module.score(fitted, data, split="test", n_samples=64,
                                   calibrate_on="val", residual=False, seed=5)
    cal = metrics["calibrated"]
    assert cal["spread_tail_dof"] == 2.1 and cal["spread_factor"]["max"] == 3.0
    np.testing.assert_allclose(fc["spread_factor"], factor, rtol=1e-6)
    # the same members (the run's key) inflated linearly would leave the bounds
    _linear_inflation(monkeypatch)
    linear = msde.forecast(jax.random.key(5), fitted, data, split="test", n_samples=64,
                           spread_factor=factor, spread_tail=2.1)
    assert int(linear["diverged"].sum()) > 0
    assert int(fc["diverged"].sum()) == int(raw["diverged"].sum()) == 0


def test_score_widens_gaussian_members_only(data, monkeypatch):
    """The fitted widening multiplies the delivered factor when the tail is Gaussian, and is
    neither fitted nor applied when a tail was chosen (the nearest coverage match stands)."""
    from msde_ppl.pipeline import run as run_module

    factor = np.full(T_OUT, 1.5)
    monkeypatch.setattr(run_module, "fit_spread_factor", lambda *a, **k: factor)
    monkeypatch.setattr(run_module, "fit_spread_widening", lambda *a, **k: 1.2)
    fitted = _fitted(data, as_leaf=False)
    for tail, widening in ((np.inf, 1.2), (4.0, 1.0)):
        monkeypatch.setattr(run_module, "fit_spread_tail", lambda *a, _t=tail, **k: _t)
        fc, metrics = run_module.score(fitted, data, split="test", n_samples=16,
                                       calibrate_on="val", residual=False, seed=5)
        cal = metrics["calibrated"]
        assert cal["spread_widening"] == widening
        assert fc["spread_factor"].attrs["spread_widening"] == widening
        np.testing.assert_allclose(fc["spread_factor"], widening * factor, rtol=1e-6)
        assert cal["spread_factor"]["max"] == pytest.approx(widening * 1.5)


def test_members_beyond_the_training_range_are_counted(data):
    """The decaying forecast stays inside the training data's widened range (no member
    diverged); against a model whose recorded training range is tiny, every member is out."""
    from msde_ppl.pipeline import run as run_module

    fitted = _fitted(data, as_leaf=False)
    fc, metrics = run_module.score(fitted, data, split="test", n_samples=16)
    assert fc["diverged"].dims == ("traj", "member") and not fc["diverged"].values.any()
    assert metrics["diverged_members"] == 0 and metrics["n_members"] == 16
    assert run_module.divergence_warning(metrics) is None
    narrow = fitted.replace(grid={**fitted.grid, "data_range": [[10.0, 10.001]]})
    _, metrics = run_module.score(narrow, data, split="test", n_samples=16)
    assert metrics["diverged_members"] == 16
    assert "16 of 16 forecast members" in run_module.divergence_warning(metrics)


def test_score_by_lead_time_and_a_shorter_horizon(data):
    from msde_ppl.pipeline import run as run_module

    fitted = _fitted(data, as_leaf=False)
    fc, metrics = run_module.score(fitted, data, split="test", n_samples=16, horizon=4)
    assert fc.sizes["time"] == 4
    lead = metrics["lead_time"]
    assert lead["lead_time"] == pytest.approx(list(DT * np.arange(4)))
    assert set(lead) >= {"rel_l2", "crps", "coverage_90", "spread_skill", "persistence",
                         "climatology"}
    assert np.mean(lead["rel_l2"]) == pytest.approx(metrics["rel_l2_mean"], rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        run_module.score(fitted, data, split="test", n_samples=4, horizon=1)


def test_a_decode_block_holds_at_least_two_snapshots(data, monkeypatch):
    """Many members of a big field: the decode block would be one snapshot, on which the
    program's path site cannot be traced (it needs two times); the block stays at two and the
    members' mean (which does not depend on the decode's keys) is the default block's."""
    fitted = _fitted(data, as_leaf=False)
    default = msde.forecast(jax.random.key(1), fitted, data, split="test", n_samples=64)
    forecast_module = importlib.import_module("msde_ppl.predict.forecast")
    monkeypatch.setattr(forecast_module, "_DECODE_VALUES", 64 * N)  # one snapshot's fields
    fitted = _fitted(data, as_leaf=False)  # a fresh compile cache
    small = msde.forecast(jax.random.key(1), fitted, data, split="test", n_samples=64)
    np.testing.assert_allclose(small["mean"].values, default["mean"].values, rtol=1e-6)


def _bounded_inflation_direct(raw, c, weights, shift, lower, upper):
    """The bounded inflation written out in float64 from its definition,
    :math:`\\kappa + h \\tanh(\\bar\\zeta + c(w_s \\delta_s - \\overline{w\\delta}))`, for
    members all inside the bounds."""
    y = raw.astype(np.float64) + (0.0 if shift is None else shift[:, None])
    shape = (1, 1, -1) + (1,) * (raw.ndim - 3)
    lower, upper = np.reshape(lower, shape), np.reshape(upper, shape)
    centre, half = (lower + upper) / 2, (upper - lower) / 2
    zeta = np.arctanh((y - centre) / half)
    delta = zeta - zeta.mean(1, keepdims=True)
    if weights is not None:
        wd = np.reshape(weights, (1, -1) + (1,) * (raw.ndim - 2)) * delta
        delta = wd - wd.mean(1, keepdims=True)
    return centre + half * np.tanh(zeta.mean(1, keepdims=True)
                                   + (delta if c is None else c * delta))


@pytest.mark.parametrize("with_c, with_weights, with_shift",
                         [(True, True, True), (True, False, True), (False, True, False),
                          (True, False, False)])
def test_calibrated_draws_inflate_linearly_inside_the_data_and_never_leave_the_bounds(
        with_c, with_weights, with_shift):
    r"""``_calibrated_draws`` without bounds is the linear inflation
    :math:`\bar y + a e_0 + c(w_s d_s - \overline{wd})`, its spread ratio ``c``. With bounds
    (two fields, each a range beyond an off-centre data range on either side, as
    :func:`divergence_limits` sets them) it is the inflation of
    :math:`\zeta = \operatorname{artanh}((y - \kappa)/h)` about the members' average, to
    float32 rounding (against the definition in float64, the clip at the bounds not firing);
    it agrees with the linear one to within the :math:`\tanh` curvature, is the identity at
    a factor of 1 without a tail, keeps every finite member inside for any factor (also where
    float32 rounds a bound outwards), and inflates a member already outside (or non-finite)
    linearly while the others keep their anchor; the reported spread is ``c`` times the raw
    one either way."""
    forecast_module = importlib.import_module("msde_ppl.predict.forecast")
    calibrated = forecast_module._calibrated_draws
    rng = np.random.default_rng(4)
    # field 0 in [0.2, 1.0], field 1 in [-3, -1]: the members sit off the bounds' centres
    low, high = np.array([0.2, -3.0]), np.array([1.0, -1.0])
    lower, upper = low - (high - low), high + (high - low)
    u = rng.uniform(size=(3, 32, 2, 8, 6))
    raw = (low[:, None, None] + u * (high - low)[:, None, None]).astype(np.float32)
    mean = raw.mean(1)
    c = np.linspace(1.5, 2.5, 3, dtype=np.float32).reshape(3, 1, 1, 1, 1) if with_c else None
    weights = (msde.predict.tail_weights(2.5, 32).astype(np.float32) if with_weights
               else None)
    shift = (0.02 * rng.normal(size=mean.shape)).astype(np.float32) if with_shift else None
    # the linear inflation, written out
    m = mean if shift is None else mean + shift
    d = raw - mean[:, None]
    if weights is not None:
        wd = weights.reshape(1, -1, 1, 1, 1) * d
        d = wd - wd.mean(1, keepdims=True) + d.mean(1, keepdims=True)
    expected = m[:, None] + (d if c is None else c * d)
    linear, ratio = calibrated(raw, mean, c, weights, shift)
    np.testing.assert_allclose(linear, expected, atol=1e-5)
    np.testing.assert_allclose(ratio, np.broadcast_to(1.0 if c is None else c[:, 0],
                                                      ratio.shape), rtol=1e-6)
    bounded, ratio = calibrated(raw, mean, c, weights, shift, (lower, upper))
    direct = _bounded_inflation_direct(raw, c, weights, shift, lower, upper)
    half = np.reshape((upper - lower) / 2, (1, 1, 2, 1, 1))
    lo5, hi5 = (np.reshape(b, (1, 1, 2, 1, 1)) for b in (lower, upper))
    assert ((direct > lo5) & (direct < hi5)).all()
    np.testing.assert_allclose(bounded, direct, atol=2e-6 * half.max())
    # where the linear members stay in the data's range (the bounds' inner third), tanh is
    # linear to within a few % of that range
    field_low, field_high = (np.reshape(b, (1, 1, 2, 1, 1)) for b in (low, high))
    near = (linear >= field_low) & (linear <= field_high)
    width = np.broadcast_to(field_high - field_low, linear.shape)
    assert near.mean() > 0.5
    assert (np.abs(bounded - linear)[near] / width[near]).max() < 0.05
    np.testing.assert_allclose(ratio, np.broadcast_to(1.0 if c is None else c[:, 0],
                                                      ratio.shape), rtol=1e-6)
    if not with_weights:  # a factor of 1: nothing moves but the shift
        one = np.ones((3, 1, 1, 1, 1), np.float32)
        np.testing.assert_allclose(calibrated(raw, mean, one, None, shift, (lower, upper))[0],
                                   raw + (0 if shift is None else shift[:, None]),
                                   atol=3e-7 * half.max())
    # a factor of 30: linear members leave the bounds, bounded ones stay inside
    big = np.full((3, 1, 1, 1, 1), 30.0, np.float32)
    assert msde.predict.diverged_members(calibrated(raw, mean, big, weights, shift)[0],
                                         lower, upper).any()
    inside, _ = calibrated(raw, mean, big, weights, shift, (lower, upper))
    assert not msde.predict.diverged_members(inside, lower, upper).any()
    # bounds that float32 rounds outwards (0.2 -> 0.20000000298): still inside
    tight_lower, tight_upper = np.array([-0.1, -0.1]), np.array([0.2, 0.2])
    small = (0.1 * u).astype(np.float32)
    tight, _ = calibrated(small, small.mean(1), big, weights, None, (tight_lower, tight_upper))
    assert not msde.predict.diverged_members(tight, tight_lower, tight_upper).any()
    # a member already out (or not finite) is inflated linearly and stays counted; one far out
    # (it drags the members' plain mean outside the bounds) leaves the others inflated about
    # the average of the members inside
    raw[1, 5, 0, 2, 2], raw[2, 7, 1, 0, 0], raw[0, 3, 0, 1, 1] = 2.5, np.nan, 1e3
    mean = raw.mean(1)
    out, _ = calibrated(raw, mean, c, None, shift, (lower, upper))
    lin, _ = calibrated(raw, mean, c, None, shift)
    for member, index in ((5, (1, 0, 2, 2)), (3, (0, 0, 1, 1))):
        assert out[index[0], member, *index[1:]] == pytest.approx(
            lin[index[0], member, *index[1:]], rel=1e-6)
    flagged = msde.predict.diverged_members(out, lower, upper)
    assert flagged[3] and flagged[5] and flagged[7] and flagged.sum() == 3
    others = np.delete(out[0, :, 0, 1, 1], 3)
    assert np.isfinite(others).all() and (others >= lower[0]).all() and (others <= upper[0]).all()
