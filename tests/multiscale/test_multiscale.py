"""The multiscale model end to end: site match, surgery exactness, a tiny fit + forecast."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_dataset
from numpyro import handlers
from numpyro.util import check_model_guide_match
from scipy import stats

from msde_ppl.multiscale import MultiscaleConfig, build_modules, grow_modules
from msde_ppl.multiscale.program import decode
from msde_ppl.pipeline.builtin import build_program, multiscale_recipe
from msde_ppl.pipeline.training import TrainConfig, fit_multiscale, fit_progressive
from msde_ppl.predict.forecast import _sample_statistics, rollout

TINY = MultiscaleConfig(fine_shape=(64,), coarse_shape=(8,), n_micro=2, macro_hidden=(16, 16),
                        micro_hidden=(16,), codec_hidden=(16,))
TRAIN = TrainConfig(steps=150, window=16, windows_per_step=2, chunk_size=50, warmup_steps=50)


@pytest.fixture(scope="module")
def tiny_data():
    """Advected periodic bumps on 64 points: 4 trajectories x 40 snapshots."""
    return tiny_dataset(40, ("train", "train", "val", "test"))


def test_model_and_guide_sites_match(rng_key):
    model, guide = build_program(multiscale_recipe(TINY, 10), key=rng_key)
    y = jnp.zeros((3, 16, 1, 64))
    times = jnp.tile(jnp.arange(16) * 0.01, (3, 1))
    with handlers.seed(rng_seed=0):
        guide_trace = handlers.trace(guide).get_trace(y=y, times=times)
    model_trace = handlers.trace(handlers.replay(handlers.seed(model, 1), guide_trace)).get_trace(
        y=y, times=times)
    check_model_guide_match(model_trace, guide_trace)
    assert model_trace["z"]["value"].shape == (3, 16, TINY.n_latent)
    assert set(guide_trace) >= {"diffusion", "obs_var_macro", "obs_var_micro", "z"}
    # the restriction in the guide and the prolongation in the model share one parameter
    assert "z_encoder$params" in model_trace and "z_encoder$params" in guide_trace


def test_untrained_decoder_gives_macro_only_reconstruction(rng_key):
    modules = build_modules(TINY, key=rng_key)
    z = jax.random.normal(rng_key, (5, TINY.n_latent))
    macro, micro = decode(modules.encoder, modules.decoder, TINY, z)
    assert macro.shape == (5, 1, 64) and float(jnp.abs(micro).max()) == 0.0


@pytest.mark.parametrize(("encoder", "decoder", "positional"), [
    ("mlp", "mlp", False), ("mlp", "stencil", False), ("spline", "spline", False),
    # the stencil drift's position features follow its micro inputs (a grown model once read
    # the micro state as the position and lost the position)
    ("mlp", "mlp", True),
    pytest.param("cnn", "cnn", False, marks=pytest.mark.slow),  # ~15 s; test_conv covers it
])
def test_grown_model_computes_the_old_model(rng_key, encoder, decoder, positional):
    k_old, k_new, k_z = jax.random.split(rng_key, 3)
    old_cfg = dataclasses.replace(TINY, n_micro=0, encoder=encoder, decoder=decoder,
                                  positional=positional)
    old = build_modules(old_cfg, key=k_old)
    cfg, new = grow_modules(old, old_cfg, 3, key=k_new)
    assert cfg.n_micro == 3 and new.encoder.logvar.shape == (11,)
    zeta = jax.random.normal(k_z, (8,))
    for eta in (jnp.zeros(3), jnp.array([1.0, -2.0, 0.5])):
        z = jnp.concatenate([zeta, eta])
        np.testing.assert_allclose(new.drift(0.3, z)[:8], old.drift(0.3, zeta), atol=1e-6)
        macro, micro = decode(new.encoder, new.decoder, cfg, z)
        old_macro, _ = decode(old.encoder, None, old_cfg, zeta)
        np.testing.assert_allclose(macro, old_macro, atol=1e-6)
        assert float(jnp.abs(micro).max()) == 0.0
    y = jax.random.normal(k_z, (1, 64))
    np.testing.assert_allclose(new.encoder(y)[0][:8], old.encoder(y)[0], atol=1e-6)
    # growing again from K = 3 keeps the first three micro outputs of the encoder, and a
    # trained decoder's output does not depend on the two new coordinates
    cfg5, grown = grow_modules(new, cfg, 5, key=k_old)
    np.testing.assert_allclose(grown.encoder(y)[0][:11], new.encoder(y)[0], atol=1e-6)
    def last_weight(d):
        return d.convs[-1].weight if decoder == "cnn" else d.net.layers[-1].weight

    trained = eqx.tree_at(last_weight, new.decoder,
                          jax.random.normal(k_z, last_weight(new.decoder).shape))
    new = new._replace(decoder=trained)
    _, grown = grow_modules(new, cfg, 5, key=k_old)
    eta3 = jnp.array([1.0, -2.0, 0.5])
    zeta2 = zeta.reshape(1, 8)
    np.testing.assert_allclose(grown.decoder(zeta2, jnp.concatenate([eta3, jnp.ones(2)])),
                               trained(zeta2, eta3), atol=1e-5)
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_modules(new, cfg, 1, key=k_old)


def test_grown_autonomous_micro_drift_computes_the_old_one(rng_key):
    k_old, k_new, k_z = jax.random.split(rng_key, 3)
    old_cfg = dataclasses.replace(TINY, micro_time=False)
    old = build_modules(old_cfg, key=k_old)
    cfg, new = grow_modules(old, old_cfg, 4, key=k_new)
    assert not cfg.micro_time and not new.drift.micro.time_input
    z_old = jax.random.normal(k_z, (old_cfg.n_latent,))
    z_new = jnp.concatenate([z_old, jnp.zeros(2)])
    np.testing.assert_allclose(new.drift(0.3, z_new)[:old_cfg.n_latent], old.drift(0.9, z_old),
                               atol=1e-6)


def test_unknown_window_sampling_is_refused(tiny_data):
    with pytest.raises(ValueError, match="window sampling 'random'"):
        fit_multiscale(tiny_data, TINY, dataclasses.replace(TRAIN, sampling="random"),
                       progress=False)


@pytest.mark.slow  # ~20 s; the exact surgery check above is the fast version
def test_progressive_stage_starts_where_the_previous_ended(tiny_data):
    stage0 = dataclasses.replace(TRAIN, steps=100)
    stage1 = dataclasses.replace(TRAIN, steps=20, lr=1e-12, warmup_steps=0)
    fits = fit_progressive(tiny_data, TINY, [(0, stage0), (2, stage1)], progress=False)
    assert [f.config.n_micro for f in fits] == [0, 2]
    old, new = fits[0].modules, fits[1].modules
    z = jnp.concatenate([jnp.linspace(-1, 1, 8), jnp.array([0.3, -0.2])])
    np.testing.assert_allclose(new.drift(0.1, z)[:8], old.drift(0.1, z[:8]), atol=1e-4)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_rollout_matches_ou_moments(method, rng_key):
    theta, s = 2.0, 0.5
    drift = lambda t, z, args: -theta * z  # noqa: E731
    z0 = jnp.ones((4000, 1))
    paths = rollout(rng_key, drift, jnp.full((4000, 1), s), z0, 0.0, 0.05, 11, substeps=20,
                    method=method)
    t = 0.5
    mean, var = np.exp(-theta * t), s**2 / (2 * theta) * (1 - np.exp(-2 * theta * t))
    got = np.asarray(paths[:, -1, 0])
    assert abs(got.mean() - mean) < 5 * np.sqrt(var / 4000) + 0.01  # + Euler bias, dt = 2.5e-3
    assert abs(got.var() - var) < 5 * var * np.sqrt(2 / 4000) + 0.01


def test_rollout_convergence_orders_on_a_rotation(rng_key):
    """Noise-free rotation ``z' = (-w z_2, w z_1)``, exact ``z(t) = R(w t) z_0``: the global
    error of Heun falls 4x per halved step (second order), Euler's 2x (first order); per step
    Euler inflates the radius by ``sqrt(1 + w^2 h^2)``, Heun by ``sqrt(1 + w^4 h^4 / 4)``."""
    omega, t_end = 2 * np.pi, 1.0
    drift = lambda t, z, args: omega * jnp.stack([-z[1], z[0]])  # noqa: E731
    z0 = jnp.array([[1.0, 0.0]])

    def error(method, substeps):
        with jax.enable_x64(True):
            path = rollout(rng_key, drift, jnp.zeros((1, 2), jnp.float64),
                           z0.astype(jnp.float64), 0.0, 0.1, 11, substeps, method)
            end = np.asarray(path[0, -1])
        return float(np.linalg.norm(end - np.asarray(z0[0]))), float(np.linalg.norm(end))

    for method, order in (("heun", 2), ("euler", 1)):
        coarse, _ = error(method, 8)
        fine, _ = error(method, 16)
        assert abs(np.log2(coarse / fine) - order) < 0.15, (method, coarse, fine)
    _, radius = error("euler", 8)
    h = t_end / 80
    np.testing.assert_allclose(radius, (1 + (omega * h) ** 2) ** 40, rtol=1e-10)
    _, radius = error("heun", 8)
    np.testing.assert_allclose(radius, (1 + (omega * h) ** 4 / 4) ** 40, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown integration method"):
        rollout(rng_key, drift, jnp.zeros((1, 2)), z0, 0.0, 0.1, 3, method="rk4")


def test_ensemble_statistics_match_gaussian_closed_forms(np_rng):
    mu, sigma, y = 0.3, 0.7, np.array([[0.0, 1.0, -1.5]])
    draws = mu + sigma * np.asarray(np_rng.normal(size=(1, 20000, 3)), np.float32)  # (T, S, x)
    stats_ = _sample_statistics(draws, y, block=1)
    z = (y - mu) / sigma
    exact = sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert abs(stats_["crps"][0] - exact.mean()) < 0.01  # MC error of 2e4 draws: ~3e-3
    # sample quantiles: standard error sqrt(p (1 - p) / n) / density = 0.011 sigma at 5%
    np.testing.assert_allclose(stats_["q05"], mu - 1.6449 * sigma, atol=5 * 0.011 * sigma)
    np.testing.assert_allclose(stats_["q95"], mu + 1.6449 * sigma, atol=5 * 0.011 * sigma)


def test_config_for_keeps_case_choices_unless_overridden():
    from msde_ppl.multiscale import config_for

    wave = config_for("wave_1d", (1000,), decoder=None, learn_kernel=None)
    assert (wave.decoder, wave.learn_kernel, wave.kernel_init) == ("stencil", False, "gaussian")
    mlp = config_for("wave_1d", (1000,), decoder="mlp", learn_kernel=True)
    assert (mlp.decoder, mlp.learn_kernel) == ("mlp", True)
    assert config_for(None, (120,), (12,), decoder=None).decoder == "mlp"


def test_grown_dissipative_drift_computes_the_old_one(rng_key):
    """The damping, centre and bound of the dissipative form are copied when the model grows
    (the old micro coordinates keep theirs), so the grown drift is the old one at first."""
    k_old, k_new, k_z, k_p = jax.random.split(rng_key, 4)
    old_cfg = dataclasses.replace(TINY, dissipation=(0.5, 3.0, 2.0))
    old = build_modules(old_cfg, key=k_old)
    # move the dissipation parameters off their initial values, as a fit would
    def perturb(d):
        return jax.tree.map(lambda a: a + jax.random.normal(k_p, a.shape), d)

    drift = eqx.tree_at(lambda d: (d.macro.dissipation, d.micro.dissipation), old.drift,
                        (perturb(old.drift.macro.dissipation),
                         perturb(old.drift.micro.dissipation)))
    old = old._replace(drift=drift)
    cfg, new = grow_modules(old, old_cfg, 4, key=k_new)
    z_old = 3.0 * jax.random.normal(k_z, (old_cfg.n_latent,))
    z_new = jnp.concatenate([z_old, jnp.zeros(2)])
    np.testing.assert_allclose(new.drift(0.3, z_new)[:old_cfg.n_latent],
                               old.drift(0.3, z_old), atol=1e-5)


def test_dissipative_drift_draws_far_states_back(rng_key):
    """Off the data, ``<z - m, f(z)> <= -lambda |z - m|^2 + B |z - m| < 0`` for every group
    beyond ``B / lambda`` (here the macro field, per node, and the micro vector), whatever the
    networks; a free network has no such bound (its leaky-ReLU output grows with the state)."""
    cfg = dataclasses.replace(TINY, dissipation=(0.5, 3.0, 2.0))
    modules = build_modules(cfg, key=rng_key)
    drift = modules.drift
    radius_macro, radius_micro = 3.0 / 0.5, 2.0 / 0.5
    for scale in (2.0, 10.0, 1e3):
        z = scale * jax.random.normal(jax.random.fold_in(rng_key, int(scale)), (cfg.n_latent,))
        z = z.at[:8].set(jnp.sign(z[:8]) * jnp.maximum(jnp.abs(z[:8]), 1.01 * radius_macro))
        z = z.at[8:].multiply(1.01 * radius_micro / jnp.linalg.norm(z[8:]) * max(scale, 1.0))
        f = drift(0.0, z)
        assert np.all(np.asarray(z[:8] * f[:8]) < 0), scale  # every coarse node moves inward
        assert float(z[8:] @ f[8:]) < 0, scale
    with pytest.raises(ValueError, match="positive"):
        build_modules(dataclasses.replace(TINY, dissipation=(0.0, 1.0, 1.0)), key=rng_key)


def test_dissipation_from_data_scales_with_the_data():
    from msde_ppl.multiscale.program import dissipation_from_data

    u = np.cumsum(np.ones((2, 5, 3)), axis=1)  # every step changes u by 1; range 1..5
    rate, macro_bound, micro_bound, centre, radius = dissipation_from_data(u, 0.5)
    assert macro_bound == pytest.approx(8.0) and micro_bound == pytest.approx(8.0)
    assert macro_bound / rate == pytest.approx(2 * 4.0)  # the floor's ball: twice the range
    assert centre == pytest.approx(3.0) and radius == pytest.approx(4.0)  # the capped ball
    rate10, bound10, _, centre10, radius10 = dissipation_from_data(10 * u, 0.5)
    assert bound10 == pytest.approx(80.0) and rate10 == pytest.approx(rate)  # unit-free rate
    assert centre10 == pytest.approx(30.0) and radius10 == pytest.approx(40.0)


def test_scales_from_data_follow_the_units_of_amplitude_and_time():
    """Closed forms on a two-field record whose fields change by 1 and 3 per snapshot (RMS
    change 1 and 3), then the same record in other units (amplitude x a, time x b): the
    diffusion medians scale by a / sqrt(b) (the micro one by 1 / sqrt(b): its coordinates
    have no unit), the variance medians by a^2, the time scale by b; the prior medians give
    each macro coordinate its field's value."""
    from msde_ppl.multiscale.program import prior_medians, scales_from_data

    steps = np.arange(5.0)[None, :, None, None]
    u = np.concatenate([steps + 0 * np.ones((2, 5, 1, 3)), 3 * steps + np.ones((2, 5, 1, 3))],
                       axis=2)  # (traj, time, field, x)
    span, diffusion, var = scales_from_data(u, 0.5, n_channels=2)
    assert span == pytest.approx(2.0)
    np.testing.assert_allclose(diffusion, [0.5 / np.sqrt(0.5), 1.5 / np.sqrt(0.5),
                                           0.05 / np.sqrt(0.5)], rtol=1e-12)
    np.testing.assert_allclose(var, [(0.1 * np.std(u[:, :, 0])) ** 2,
                                     (0.1 * np.std(u[:, :, 1])) ** 2], rtol=1e-12)
    a, b = 40.0, 25.0
    span_ab, diffusion_ab, var_ab = scales_from_data([a * u[:1], a * u[1:]], 0.5 * b, 2)
    assert span_ab == pytest.approx(b * span)
    np.testing.assert_allclose(diffusion_ab[:2], np.array(diffusion[:2]) * a / np.sqrt(b))
    assert diffusion_ab[2] == pytest.approx(diffusion[2] / np.sqrt(b))
    np.testing.assert_allclose(var_ab, np.array(var) * a**2)
    # one field without a field dim; a constant field (also one float32 does not hold
    # exactly) falls back to the reference's values
    assert scales_from_data(np.ones((2, 4, 3)), 1.0)[1:] == ((0.1, 0.05), (1e-2,))
    third = np.full((2, 4, 3), 1 / 3, np.float32)
    assert scales_from_data(third, 1.0)[1:] == ((0.1, 0.05), (1e-2,))
    cfg = dataclasses.replace(TINY, n_channels=2, scales=(span, diffusion, var))
    d, v = prior_medians(cfg)
    n = int(np.prod(cfg.coarse_shape))
    np.testing.assert_allclose(d, np.r_[np.full(n, diffusion[0]), np.full(n, diffusion[1]),
                                        np.full(cfg.n_micro, diffusion[2])], rtol=1e-6)
    np.testing.assert_allclose(v, var, rtol=1e-6)
    np.testing.assert_allclose(prior_medians(TINY)[0], 0.1)  # the reference's constants
    np.testing.assert_allclose(prior_medians(TINY)[1], 0.01)
    with pytest.raises(ValueError, match="medians"):
        prior_medians(dataclasses.replace(cfg, scales=(1.0, (0.1,), (0.01,))))
    with pytest.raises(ValueError, match="spacing"):
        scales_from_data(u, 0.0, 2)


def test_scales_reach_the_networks_and_the_grown_micro_state(rng_key):
    """With ``scales``, the micro drift divides its time by the span, the encoder's macro
    variances start at the fields' noise medians, and growing a model without micro state
    starts the new diffusion coordinates at the micro prior's median (not at the macro
    diffusion, which is in the data's units)."""
    from msde_ppl.multiscale.surgery import grown_global_values

    scales = (80.0, (40.0, 0.07), (4.0,))
    cfg = dataclasses.replace(TINY, scales=scales)
    modules = build_modules(cfg, key=rng_key)
    assert modules.drift.micro.time_scale == 80.0
    np.testing.assert_allclose(modules.encoder.logvar[:cfg.n_macro], np.log(4.0), rtol=1e-6)
    old = dataclasses.replace(cfg, n_micro=0)
    medians = {"diffusion": np.full(old.n_latent, 35.0), "obs_var_macro": np.array([3.0])}
    grown = grown_global_values(medians, old, cfg.n_micro)
    np.testing.assert_allclose(grown["diffusion"], np.r_[np.full(old.n_macro, 35.0),
                                                         np.full(cfg.n_micro, 0.07)],
                               rtol=1e-6)
    reference = grown_global_values(medians, dataclasses.replace(old, scales=None), 2)
    np.testing.assert_allclose(reference["diffusion"][-2:], 35.0)  # as before: the macro one


def test_the_micro_drift_reads_the_time_in_units_of_its_time_scale(rng_key):
    """A micro drift with time scale T at time t is the same network at t / T (T = 1 is the
    reference's raw time); a non-positive scale is refused."""
    from msde_ppl.generative.drifts import MicroDrift

    raw = MicroDrift(4, 2, (8,), key=rng_key)
    scaled = MicroDrift(4, 2, (8,), time_scale=250.0, key=rng_key)
    zeta, eta = jnp.arange(4.0) / 4, jnp.array([0.3, -0.2])
    np.testing.assert_allclose(scaled(jnp.asarray(500.0), zeta, eta),
                               raw(jnp.asarray(2.0), zeta, eta), rtol=1e-6)
    with pytest.raises(ValueError, match="time_scale"):
        MicroDrift(4, 2, (8,), time_scale=0.0, key=rng_key)


def test_the_macro_ball_never_exceeds_its_largest_radius(rng_key):
    """With a largest radius r, whatever the learned rate and bound (a rate near 0 and a bound
    100 times larger: an uncapped ball of radius 7e6), every coarse node beyond r of the
    centre moves inward; a non-positive radius is refused."""
    from msde_ppl.generative.drifts import Dissipation

    cfg = dataclasses.replace(TINY, dissipation=(0.5, 3.0, 2.0, 1.5, 4.0))
    drift = build_modules(cfg, key=rng_key).drift
    loose = eqx.tree_at(lambda d: (d.macro.dissipation.rate_raw, d.macro.dissipation.log_bound),
                        drift, (jnp.full((1,), -10.0), jnp.full((1,), np.log(300.0))))
    assert drift.macro.dissipation.max_radius == 4.0
    for scale in (1.0, 10.0, 1e3):
        z = scale * jax.random.normal(jax.random.fold_in(rng_key, int(scale)), (cfg.n_latent,))
        offset = jnp.sign(z[:8]) * jnp.maximum(jnp.abs(z[:8]), 1.01 * 4.0)
        z = z.at[:8].set(1.5 + offset)
        f = loose(0.0, z)
        assert np.all(np.asarray(offset * f[:8]) < 0), scale  # every coarse node moves inward
    with pytest.raises(ValueError, match="radius"):
        Dissipation(2, 0.5, 1.0, 0.0, 0.0)


def test_2d_training_step_by_matrix_equals_step_by_fft(rng_key, monkeypatch):
    """The loss and gradient of a training step of a small 2D multiscale model (two fields) on
    fixed inputs: the scale operators applied as gathered matrices give the FFT forms' values
    to float32 rounding. (Updated parameters are not compared: Adam's first step is
    ``lr * g / |g|``, which rounding flips for gradients near zero.)"""
    from msde_ppl.data import from_arrays
    from msde_ppl.generative import operators
    from msde_ppl.inference import init
    from msde_ppl.pipeline.training import multiscale_setup

    rng = np.random.default_rng(0)
    u = rng.normal(size=(2, 20, 2, 16, 12)).astype(np.float32)
    ds = from_arrays(u, time=np.arange(20) * 0.01, x=np.arange(16) / 16, y=np.arange(12) / 12,
                     fields=["a", "b"], split=["train", "train"])
    config = MultiscaleConfig(fine_shape=(16, 12), coarse_shape=(4, 3), n_channels=2,
                              n_micro=2, macro_hidden=(8,), micro_hidden=(8,), codec_hidden=(8,))
    k_init, k_batch, k_loss = jax.random.split(rng_key, 3)
    results = []
    for cost in (10**6, 0):
        monkeypatch.setattr(operators, "MATRIX_COST", cost)
        setup = multiscale_setup(ds, config, TrainConfig(window=8, windows_per_step=2))
        assert setup.loop == "python"  # several windows: scanned chunks can hang on CPU
        batch = setup.batch_fn(k_batch, jnp.zeros((), jnp.int32))
        problem, state = init(k_init, setup.model, setup.guide, setup.elbo, setup.optimizer,
                              batch, beta_schedule=setup.beta_schedule)

        def loss(params, p=problem, b=batch):
            return p.elbo.loss(k_loss, p.constrain(params), p.model, p.guide, **b)

        results.append(jax.jit(jax.value_and_grad(loss))(state.params))
    assert multiscale_setup(ds, config, TrainConfig(window=8)).loop == "scan"
    (loss_m, grads_m), (loss_f, grads_f) = results
    np.testing.assert_allclose(loss_m, loss_f, rtol=1e-5)
    # float32: a gradient that cancels to ~0 (e.g. the kernel warp's output bias) keeps
    # rounding of the order of eps times the largest gradient
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_f))
    for a, b in zip(jax.tree.leaves(grads_m), jax.tree.leaves(grads_f), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


CNN_2D = MultiscaleConfig(fine_shape=(16, 24), coarse_shape=(4, 6), n_channels=2, n_micro=0,
                          macro_hidden=(8,), micro_hidden=(8,), encoder="cnn", decoder="cnn")


def test_the_cnn_codec_grows_on_a_2d_grid(rng_key):
    """The reference's 2D CNN codec inside the model: grown from K = 0 it reconstructs what the
    old model did (an idle micro state)."""
    k_old, k_new, k_z = jax.random.split(rng_key, 3)
    old = build_modules(CNN_2D, key=k_old)
    cfg, new = grow_modules(old, CNN_2D, 3, key=k_new)
    zeta = jax.random.normal(k_z, (CNN_2D.n_latent,))
    macro, micro = decode(new.encoder, new.decoder, cfg, jnp.concatenate([zeta, jnp.ones(3)]))
    np.testing.assert_allclose(macro, decode(old.encoder, None, CNN_2D, zeta)[0], atol=1e-6)
    assert micro.shape == (2, 16, 24) and float(jnp.abs(micro).max()) == 0.0


@pytest.mark.slow  # ~30 s of compilation; test_conv covers the layers
def test_the_cnn_codec_trains_on_a_2d_grid(rng_key):
    """The ELBO of a 2D model with the CNN codec and its gradient are finite, and the fit uses
    the per-step Python loop."""
    from msde_ppl.data import from_arrays
    from msde_ppl.inference import init
    from msde_ppl.pipeline.training import multiscale_setup

    k_init, k_batch, k_loss = jax.random.split(rng_key, 3)
    cfg = dataclasses.replace(CNN_2D, n_micro=3)
    u = np.random.default_rng(0).normal(size=(1, 12, 2, 16, 24)).astype(np.float32)
    ds = from_arrays(u, time=np.arange(12) * 0.01, x=np.arange(16) / 16,
                     y=np.arange(24) / 24, fields=["a", "b"], split=["train"])
    setup = multiscale_setup(ds, cfg, TrainConfig(window=8))
    assert setup.loop == "python"  # convolutions run faster outside a scan on XLA's CPU
    batch = setup.batch_fn(k_batch, jnp.zeros((), jnp.int32))
    problem, state = init(k_init, setup.model, setup.guide, setup.elbo, setup.optimizer, batch,
                          beta_schedule=setup.beta_schedule)
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: problem.elbo.loss(k_loss, problem.constrain(p), problem.model, problem.guide,
                                    **batch)))(state.params)
    assert np.isfinite(float(loss))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
