"""The fields' units (``MultiscaleConfig.units``, ``msde_ppl.generative.units``): a model of
data ``a u + b`` is the model of ``u`` in other units, at initialisation and after training."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.data import from_arrays
from msde_ppl.generative.units import check_units, rescale, standardise
from msde_ppl.multiscale import build_modules
from msde_ppl.multiscale.program import decode, units_from_data
from msde_ppl.pipeline.run import model_config
from msde_ppl.pipeline.training import TrainConfig, fit_progressive

SMALL = dict(macro_hidden=(16, 16), micro_hidden=(16,), codec_hidden=(16,))


def travelling_waves(a: float = 1.0, b: float = 0.0):
    """Six noisy travelling waves on 32 points (4 train, 1 val, 1 test), as ``a u + b``."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    t = np.arange(12) * 0.1
    u = np.stack([np.sin(x - 0.7 * t[:, None] + p) + 0.3 * np.cos(3 * x + p)
                  for p in rng.uniform(0, 6, 6)])
    u = u + 0.01 * rng.standard_normal(u.shape)
    return from_arrays((a * u + b).astype(np.float32), time=t, x=x,
                       split=["train"] * 4 + ["val", "test"])


def test_units_from_data_are_each_fields_mid_range_and_half_width():
    rng = np.random.default_rng(1)
    u = np.stack([2.0 + 3.0 * rng.standard_normal((3, 6, 5)), np.full((3, 6, 5), 7.0)], axis=2)
    u[0, 2, 0, 1] = np.nan  # a missing value is skipped
    first = u[:, :, 0]
    lo, hi = np.nanmin(first), np.nanmax(first)
    centre, spread = units_from_data(u, n_channels=2)
    np.testing.assert_allclose(centre, [0.5 * (lo + hi), 7.0], rtol=1e-12)
    np.testing.assert_allclose(spread, [0.5 * (hi - lo), 1.0], rtol=1e-12)  # constant: 1
    # in blocks of trajectories, as a file is read, the same numbers
    blocks = units_from_data([u[:1], u[1:]], n_channels=2)
    np.testing.assert_allclose(blocks[0], centre, rtol=1e-12)
    np.testing.assert_allclose(blocks[1], spread, rtol=1e-12)
    # data that are not a built-in case get them; the built-in recipes keep the raw numbers
    assert model_config(travelling_waves(), coarse=(8,), positional=False).units is not None
    builtin = travelling_waves()
    builtin.attrs["case"] = "kdv_1d"
    assert model_config(builtin, coarse=(8,)).units is None
    with pytest.raises(ValueError, match="one centre and one spread per field"):
        check_units(((0.0,), (1.0, 2.0)), 1)
    with pytest.raises(ValueError, match="positive spreads"):
        check_units(((0.0,), (0.0,)), 1)


def test_standardise_and_rescale_closed_forms():
    u = jnp.arange(12.0).reshape(2, 6)
    units = ((1.0, -2.0), (2.0, 4.0))
    np.testing.assert_allclose(standardise(u, units), (u - jnp.array([[1.0], [-2.0]]))
                               / jnp.array([[2.0], [4.0]]))
    np.testing.assert_allclose(standardise(u, units, centre=False),
                               u / jnp.array([[2.0], [4.0]]))
    np.testing.assert_allclose(rescale(u, units), u * jnp.array([[2.0], [4.0]]))
    assert standardise(u, None) is u and rescale(u, None) is u


def _configs(a: float, b: float, decoder: str = "mlp"):
    plain, scaled = travelling_waves(), travelling_waves(a, b)
    configs = [dataclasses.replace(model_config(ds, coarse=(8,), n_micro=2, positional=False),
                                   decoder=decoder, **SMALL) for ds in (plain, scaled)]
    return (plain, scaled), configs


@pytest.mark.parametrize("decoder", ["mlp", "stencil"])
def test_networks_read_and_write_the_fields_in_their_units(decoder):
    """Modules of the same key for data ``u`` and ``a u + b``: the macro drift at ``a zeta +
    b`` is ``a`` times the drift at ``zeta`` (dissipative form included), the micro drift and
    the micro encoder give the same numbers, the micro decoder writes ``a`` times as much
    (the stencil decoder also reads ``zeta``), and the prolongation gives ``a P zeta + b``,
    also after the scale kernel's taps no longer sum to one (learned)."""
    a, b = 37.0, -5.0
    _, (c1, c2) = _configs(a, b, decoder)
    np.testing.assert_allclose(c2.units[0], a * np.array(c1.units[0]) + b, rtol=1e-5)
    np.testing.assert_allclose(c2.units[1], a * np.array(c1.units[1]), rtol=1e-5)
    key = jax.random.key(3)
    m1, m2 = build_modules(c1, key=key), build_modules(c2, key=key)
    m1, m2 = (eqx.tree_at(lambda m: m.encoder.scale.weight, m, 1.07 * m.encoder.scale.weight)
              for m in (m1, m2))  # a learned kernel: its taps sum to 1.07
    k_zeta, k_eta, k_dec, k_y = jax.random.split(jax.random.key(4), 4)
    zeta = jax.random.normal(k_zeta, (c1.n_macro,))
    eta = jax.random.normal(k_eta, (c1.n_micro,))
    d1 = m1.drift(0.3, jnp.concatenate([zeta, eta]))
    d2 = m2.drift(0.3, jnp.concatenate([a * zeta + b, eta]))
    n = c1.n_macro
    assert float(jnp.max(jnp.abs(d1[:n]))) > 0.1  # not a trivial drift
    np.testing.assert_allclose(d2[:n], a * d1[:n], rtol=2e-4, atol=2e-4 * a)
    np.testing.assert_allclose(d2[n:], d1[n:], rtol=2e-4, atol=2e-4)
    # the decoder's output layer starts at zero: give both the same random one
    last = m1.decoder.net.layers[-1]
    weight = 0.1 * jax.random.normal(k_dec, last.weight.shape)
    dec1, dec2 = (eqx.tree_at(lambda d: d.net.layers[-1].weight, m.decoder, weight)
                  for m in (m1, m2))
    z1 = jnp.concatenate([zeta, eta])[None]
    z2 = jnp.concatenate([a * zeta + b, eta])[None]
    macro1, micro1 = decode(m1.encoder, dec1, c1, z1)
    macro2, micro2 = decode(m2.encoder, dec2, c2, z2)
    assert float(jnp.max(jnp.abs(micro1))) > 1e-3
    np.testing.assert_allclose(micro2, a * micro1, rtol=2e-4, atol=2e-4 * a)
    np.testing.assert_allclose(macro2, a * macro1 + b, rtol=2e-4, atol=2e-4 * a)
    y = jax.random.normal(k_y, c1.obs_shape)
    (mean1, _), (mean2, _) = m1.encoder(y), m2.encoder(a * y + b)
    np.testing.assert_allclose(mean2[n:], mean1[n:], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(mean2[:n], a * mean1[:n] + b, rtol=2e-4, atol=2e-4 * a)


def test_training_is_the_same_in_other_units():
    """Fitted for 20 Adam steps from the same seed on ``u`` and on ``64 u + 8`` (a power of
    two: the data scale exactly in floating point), every network weight stays the same (their
    inputs and the ELBO's gradients are the same numbers: the networks read standardised
    fields, the learned biases and centres are stored in the fields' spreads, and the guide's
    path interpolation reproduces constants), the parameters with units move by log 64, and
    the loss per observed scalar differs by the same constant at every step."""
    a, b = 64.0, 8.0
    (plain, scaled), (c1, c2) = _configs(a, b)
    train = TrainConfig(steps=20, seed=0, window=8)
    f1 = fit_progressive(plain, c1, [(2, train)], progress=False)[-1]
    f2 = fit_progressive(scaled, c2, [(2, train)], progress=False)[-1]
    assert not np.allclose(f1.losses[0], f1.losses[-1])  # it trained
    for name in ("drift$params", "micro_decoder$params", "z_encoder$params", "z_kernel$params"):
        p1, p2 = f1.params[name], f2.params[name]
        if name == "drift$params":  # the dissipative form's bound and centre have units
            d1, d2 = p1.macro.dissipation, p2.macro.dissipation
            np.testing.assert_allclose(d2.log_bound, d1.log_bound + np.log(a), atol=1e-5)
            np.testing.assert_allclose(d2.centre * c2.units[1][0],
                                       a * d1.centre * c1.units[1][0] + b, rtol=1e-5)
            p1, p2 = (eqx.tree_at(lambda d: (d.macro.dissipation.log_bound,
                                             d.macro.dissipation.centre), p, (0.0, 0.0))
                      for p in (p1, p2))
        if name == "z_kernel$params":  # the warp's output bias has a zero gradient (a shift
            # of the warped time changes nothing), so Adam turns rounding into steps of lr
            p1, p2 = ((p.raw_lengthscale, p.raw_amplitude, p.raw_nugget) for p in (p1, p2))
        if name == "z_encoder$params":  # the macro log-variances are in the data's units
            n = c1.n_macro
            np.testing.assert_allclose(p2.logvar[:n], p1.logvar[:n] + 2 * np.log(a), atol=1e-4)
            p1, p2 = (eqx.tree_at(lambda e: e.logvar, p, p.logvar[n:]) for p in (p1, p2))
        # weights moved by ~2e-2; Adam's normalised step turns a rounding-level difference
        # of a near-zero gradient into up to ~1e-4 (without the units: differences 3.5e-3)
        for x1, x2 in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
            np.testing.assert_allclose(x2, x1, rtol=1e-3, atol=5e-4)
    np.testing.assert_allclose(f2.params["diffusion_auto_loc"][:c1.n_macro],
                               f1.params["diffusion_auto_loc"][:c1.n_macro] + np.log(a),
                               atol=1e-4)
    shift = np.asarray(f2.losses, np.float64) - np.asarray(f1.losses, np.float64)
    assert np.ptp(shift) < 1e-4


def test_a_saved_fit_with_units_loads_with_its_centred_guide(tmp_path):
    """The guide's centred interpolation is on exactly for a config with units, and a saved
    fit loads with it, its units and its parameters; the built-in recipes' guides stay
    zero-mean."""
    from msde_ppl.pipeline.builtin import build_program, multiscale_recipe
    from msde_ppl.pipeline.fitted import Fitted

    (plain, _), (c1, _) = _configs(1.0, 0.0)
    fitted = fit_progressive(plain, c1, [(2, TrainConfig(steps=3, seed=0, window=8))],
                             progress=False)[-1]
    assert fitted.guide.centred_interpolation
    loaded = Fitted.load(fitted.save(tmp_path / "fit"))
    assert loaded.guide.centred_interpolation and loaded.config.units == c1.units
    for x1, x2 in zip(jax.tree.leaves(fitted.params), jax.tree.leaves(loaded.params),
                      strict=True):
        np.testing.assert_array_equal(np.asarray(x2), np.asarray(x1))
    builtin = dataclasses.replace(c1, units=None)
    _, guide = build_program(multiscale_recipe(builtin, n_windows=4), key=jax.random.key(0))
    assert not guide.centred_interpolation
