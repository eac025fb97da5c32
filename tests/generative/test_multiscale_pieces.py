"""Scale operators, stencil drift and the product-of-experts likelihood against exact answers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from msde_ppl.generative.drifts import (
    MultiscaleDrift,
    StencilDrift,
    neighbourhood_index,
    position_features,
)
from msde_ppl.generative.likelihood import ProductOfExpertsNormal
from msde_ppl.generative.operators import ScaleOperator

CONFIGS = [((1000,), (20,), 1), ((120,), (12,), 2), ((32, 48), (4, 6), 2)]


def random_kernel(op, key):
    """The operator with a random (non-symmetric) kernel and bias, to test the general case."""
    k1, k2 = jax.random.split(key)
    op = eqx.tree_at(lambda o: o.weight, op, jax.random.normal(k1, op.weight.shape))
    return eqx.tree_at(lambda o: o.bias, op, jax.random.normal(k2, op.bias.shape))


@pytest.mark.parametrize("fine, coarse, channels", CONFIGS)
def test_prolongation_is_adjoint_of_restriction(fine, coarse, channels, rng_key):
    with jax.enable_x64(True):
        op = random_kernel(ScaleOperator(fine, coarse, channels), rng_key)
        op = jax.tree.map(lambda a: a.astype(jnp.float64), op)
        ky, kz = jax.random.split(jax.random.fold_in(rng_key, 1))
        y = jax.random.normal(ky, (channels, *fine), jnp.float64)
        zeta = jax.random.normal(kz, (channels, *coarse), jnp.float64)
        bias_c = op.bias.reshape((-1,) + (1,) * len(fine))
        sigma_d = np.prod(op.stride)
        # <R y - b, zeta>_coarse (spacing sigma h) == <y, P zeta - b>_fine (spacing h)
        lhs = sigma_d * jnp.sum((op.restrict(y) - bias_c) * zeta)
        rhs = jnp.sum(y * (op.prolong(zeta) - bias_c))
        assert abs(float(lhs - rhs)) < 1e-10 * float(jnp.abs(lhs) + 1)


@pytest.mark.parametrize("fine, coarse, channels", CONFIGS)
def test_batched_prolongation_equals_field_by_field(fine, coarse, channels, rng_key):
    """The matrix form of P (2D grids) and the per-field FFT form agree to rounding, also
    under vmap (a forecast's members)."""
    with jax.enable_x64(True):
        op = random_kernel(ScaleOperator(fine, coarse, channels), rng_key)
        op = jax.tree.map(lambda a: a.astype(jnp.float64), op)
        zeta = jax.random.normal(jax.random.fold_in(rng_key, 3), (3, 5, channels, *coarse),
                                 jnp.float64)
        one_by_one = jax.vmap(jax.vmap(op.prolong))(zeta)
        np.testing.assert_allclose(jax.vmap(op.prolong_many)(zeta), one_by_one, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(op.prolong_many(zeta[0]), one_by_one[0], rtol=1e-12,
                                   atol=1e-12)


def test_restriction_is_circular_correlation_subsampled(rng_key):
    op = random_kernel(ScaleOperator((60,), (6,)), rng_key)
    y = np.asarray(jax.random.normal(jax.random.fold_in(rng_key, 2), (1, 60)))
    g = np.asarray(op.kernel[0])
    half = g.size // 2
    direct = np.array([sum(g[m + half] * y[0, (j + m) % 60] for m in range(-half, half + 1))
                       for j in range(0, 60, 10)]) + float(op.bias[0])
    np.testing.assert_allclose(np.asarray(op.restrict(jnp.asarray(y)))[0], direct, atol=1e-4)


@pytest.mark.parametrize("n_sigma", [2, 3])
def test_bspline_operators_reproduce_constants_and_linear_fields(n_sigma):
    op = ScaleOperator((1000,), (20,), n_sigma=n_sigma)
    np.testing.assert_allclose(op.restrict(jnp.ones((1, 1000))), 1.0, atol=1e-6)
    np.testing.assert_allclose(op.prolong(jnp.ones((1, 20))), 1.0, atol=1e-5)
    # cubic B-splines reproduce linear functions: a periodic linear coarse field (away from the
    # wrap) is interpolated linearly between coarse nodes
    zeta = jnp.arange(20.0)[None]
    fine = op.prolong(zeta)[0]
    inner = np.arange(150, 850)
    np.testing.assert_allclose(fine[inner], inner / 50.0, atol=1e-4)


def test_bspline_2d_partition_of_unity():
    op = ScaleOperator((32, 48), (4, 6), n_channels=2)
    np.testing.assert_allclose(op.prolong(jnp.ones((2, 4, 6))), 1.0, atol=1e-5)
    np.testing.assert_allclose(op.restrict(jnp.ones((2, 32, 48))), 1.0, atol=1e-5)


def test_gaussian_init_is_the_reference_kernel():
    op = ScaleOperator((1000,), (20,), init="gaussian")
    g = np.asarray(op.kernel[0])
    k = np.arange(201) - 100
    np.testing.assert_allclose(g, np.exp(-(k**2) / 5000) / np.exp(-(k**2) / 5000).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown kernel init"):
        ScaleOperator((1000,), (20,), init="box")


def test_frozen_kernel_gets_no_gradient_but_bias_does(rng_key):
    y = jax.random.normal(rng_key, (1, 60))

    def loss(op):
        return jnp.sum(op.prolong(op.restrict(y)) ** 2)

    learned = jax.grad(loss)(ScaleOperator((60,), (6,)))
    frozen_op = ScaleOperator((60,), (6,), learn_kernel=False)
    frozen = jax.grad(loss)(frozen_op)
    assert float(jnp.abs(learned.weight).max()) > 0
    np.testing.assert_array_equal(frozen.weight, 0.0)
    np.testing.assert_allclose(frozen.bias, learned.bias, rtol=1e-5)
    # the forward map is unchanged by freezing
    np.testing.assert_array_equal(frozen_op.restrict(y), ScaleOperator((60,), (6,)).restrict(y))


def test_operator_refuses_non_dividing_grid():
    with pytest.raises(ValueError, match="does not divide"):
        ScaleOperator((100,), (30,))


@pytest.mark.parametrize("coarse", [(20,), (6, 8)])
def test_stencil_drift_is_translation_equivariant(coarse, rng_key):
    k_net, k_z, k_a = jax.random.split(rng_key, 3)
    drift = StencilDrift(coarse, n_channels=2, n_aux=3, key=k_net)
    zeta = jax.random.normal(k_z, (2, *coarse))
    aux = jax.random.normal(k_a, (3,))
    out = drift(zeta, aux)
    for axis in range(len(coarse)):
        shifted = drift(jnp.roll(zeta, 1, axis=1 + axis), aux)
        np.testing.assert_allclose(shifted, jnp.roll(out, 1, axis=1 + axis), atol=1e-5)


def test_positional_stencil_drift_reads_each_node_position(rng_key):
    """With positional features the drift is the same node MLP applied to [neighbourhood,
    aux, cos/sin of the node's indices]: equal to a plain drift whose aux carries them."""
    coarse = (6, 4)
    k_net, k_z, k_a = jax.random.split(rng_key, 3)
    drift = StencilDrift(coarse, n_channels=2, n_aux=3, positional=True, key=k_net)
    zeta = jax.random.normal(k_z, (2, *coarse))
    aux = jax.random.normal(k_a, (3,))
    out = np.asarray(drift(zeta, aux))
    features = position_features(coarse)
    assert features.shape == (24, 4)
    np.testing.assert_allclose(features[5], [np.cos(2 * np.pi * 1 / 6), np.sin(2 * np.pi / 6),
                                             np.cos(2 * np.pi * 1 / 4), np.sin(2 * np.pi / 4)],
                               atol=1e-12)  # node (1, 1) in row-major order
    for node in (0, 5, 23):
        plain = StencilDrift(coarse, n_channels=2, n_aux=7, key=k_net)
        plain = eqx.tree_at(lambda d: d.mlp, plain, drift.mlp)
        both = plain(zeta, jnp.concatenate([aux, jnp.asarray(features[node], jnp.float32)]))
        np.testing.assert_allclose(out.reshape(2, -1)[:, node],
                                   np.asarray(both).reshape(2, -1)[:, node], atol=1e-5)
    shifted = np.asarray(drift(jnp.roll(zeta, 1, axis=1), aux))
    assert np.abs(shifted - np.roll(out, 1, axis=1)).max() > 1e-4  # no longer equivariant


def test_stencil_drift_is_local(rng_key):
    drift = StencilDrift((20,), key=rng_key)
    zeta = jnp.zeros((1, 20))
    jac = jax.jacobian(lambda z: drift(z, jnp.zeros((0,))))(zeta)[0, :, 0, :]
    d = np.abs(np.subtract.outer(np.arange(20), np.arange(20)))
    periodic_distance = np.minimum(d, 20 - d)
    far = np.abs(np.asarray(jac)) * (periodic_distance > 2)
    assert far.max() == 0.0  # node j depends on nodes j-2..j+2 (periodic) only
    assert np.abs(np.asarray(jac)).max() > 0


def test_neighbourhood_index_wraps():
    idx = neighbourhood_index((5,), 2)
    np.testing.assert_array_equal(idx[0], [3, 4, 0, 1, 2])
    assert neighbourhood_index((4, 3), 1).shape == (12, 9)


def test_multiscale_drift_shapes_and_closure_case(rng_key):
    drift = MultiscaleDrift((20,), 5, key=rng_key)
    z = jnp.ones(25)
    assert drift(0.3, z).shape == (25,)
    closure = MultiscaleDrift((20,), 0, key=rng_key)
    assert closure(0.3, jnp.ones(20)).shape == (20,) and closure.micro is None


def test_autonomous_micro_drift_ignores_time(rng_key):
    k_z, k_drift = jax.random.split(rng_key)
    z = jax.random.normal(k_z, (25,))
    autonomous = MultiscaleDrift((20,), 5, micro_time=False, key=k_drift)
    np.testing.assert_array_equal(autonomous(0.0, z), autonomous(0.7, z))
    assert autonomous.micro.mlp.layers[0].weight.shape[1] == 25
    timed = MultiscaleDrift((20,), 5, key=k_drift)
    assert timed.micro.mlp.layers[0].weight.shape[1] == 26
    assert not np.allclose(timed(0.0, z)[20:], timed(0.7, z)[20:])


def test_product_of_experts_against_hand_computed_gaussians(np_rng):
    macro, micro, y = np_rng.normal(size=(3, 4, 7))
    var_m, var_mu = 0.04, 0.01
    d = ProductOfExpertsNormal(macro, micro, var_m, var_mu)
    var_y = 1 / (1 / var_m + 1 / var_mu)
    mean = macro + var_y / var_mu * micro
    np.testing.assert_allclose(d.log_prob(y), stats.norm.logpdf(y, mean, np.sqrt(var_y)).sum(-1),
                               rtol=1e-5)
    # the unnormalised product is exactly the product of the two expert densities
    full = ProductOfExpertsNormal(macro, micro, var_m, var_mu, agreement=True)
    experts = (stats.norm.logpdf(y, macro, np.sqrt(var_m))
               + stats.norm.logpdf(y, macro + micro, np.sqrt(var_mu))).sum(-1)
    np.testing.assert_allclose(full.log_prob(y), experts, rtol=1e-5)
    assert d.batch_shape == (4,) and d.event_shape == (7,)


def test_product_of_experts_without_micro_is_macro_gaussian(np_rng):
    macro, y = np_rng.normal(size=(2, 10))
    d = ProductOfExpertsNormal(macro, None, 0.09)
    np.testing.assert_allclose(d.log_prob(y), stats.norm.logpdf(y, macro, 0.3).sum(), rtol=1e-5)
    np.testing.assert_allclose(d.mean, macro)


def test_product_of_experts_sampling_moments(rng_key):
    macro, micro = jnp.zeros(3), jnp.array([1.0, -1.0, 0.5])
    d = ProductOfExpertsNormal(macro, micro, 0.04, 0.01)
    draws = d.sample(rng_key, (20000,))
    n = draws.shape[0]
    se_mean = jnp.sqrt(d.variance / n)
    assert jnp.all(jnp.abs(draws.mean(0) - d.mean) < 5 * se_mean)
    # standard error of a sample variance of normals: var * sqrt(2 / (n - 1))
    assert jnp.all(jnp.abs(draws.var(0) - d.variance) < 5 * d.variance * np.sqrt(2 / (n - 1)))


def test_stencil_micro_decoder_is_translation_equivariant(rng_key):
    from msde_ppl.generative.codec import StencilMicroDecoder

    k_net, k_last, k_z = jax.random.split(rng_key, 3)
    dec = StencilMicroDecoder(3, (10,), (6,), key=k_net)
    last = dec.net.layers[-1]  # starts at zero: give it weights to test the placement
    dec = eqx.tree_at(lambda d: d.net.layers[-1].weight, dec,
                      jax.random.normal(k_last, last.weight.shape))
    zeta = jax.random.normal(k_z, (1, 10))
    eta = jnp.array([0.1, -0.3, 0.2])
    out = dec(zeta, eta)
    assert out.shape == (1, 60)
    np.testing.assert_allclose(dec(jnp.roll(zeta, 1, axis=1), eta), jnp.roll(out, 6, axis=1),
                               atol=1e-5)
    # cell j holds the fine points within half a coarse spacing of node j (fine index 6 j)
    jac = jax.jacobian(lambda z: dec(z, eta))(zeta)[0, :, 0, :]  # (fine, coarse)
    near = np.abs(np.asarray(jac))[np.arange(60), (np.arange(60) + 3) // 6 % 10]
    assert np.all(near > 0)


def test_untrained_stencil_decoder_is_zero():
    from msde_ppl.generative.codec import StencilMicroDecoder

    dec = StencilMicroDecoder(2, (4, 6), (8, 8), n_channels=2, key=jax.random.key(0))
    assert float(jnp.abs(dec(jnp.ones((2, 4, 6)), jnp.ones(2))).max()) == 0.0


@pytest.mark.parametrize("fine, coarse, channels", [((128, 128), (8, 8), 1),
                                                    ((320, 80), (32, 8), 2),
                                                    ((32, 48), (4, 6), 2)])
def test_matrix_and_fft_scale_operators_agree_with_gradients(fine, coarse, channels, rng_key,
                                                              monkeypatch):
    """R, P and their kernel gradients by the gathered matrix (:meth:`columns`) equal the FFT
    forms to rounding (float64), whichever path :attr:`uses_matrix` picks by default."""
    from msde_ppl.generative import operators

    with jax.enable_x64(True):
        op = random_kernel(ScaleOperator(fine, coarse, channels), rng_key)
        op = jax.tree.map(lambda a: a.astype(jnp.float64), op)
        ky, kz = jax.random.split(jax.random.fold_in(rng_key, 5))
        y = jax.random.normal(ky, (channels, *fine), jnp.float64)
        zeta = jax.random.normal(kz, (3, channels, *coarse), jnp.float64)

        def outputs(o):
            loss = lambda o: jnp.sum(jnp.sin(o.restrict(y))) + jnp.sum(  # noqa: E731
                jnp.cos(o.prolong_many(zeta)))
            return o.restrict(y), o.prolong_many(zeta), eqx.filter_grad(loss)(o).weight

        # one compiled program per path (a fresh function each: the path is chosen when
        # traced, and a shared cache would hand the second call the first one's program)
        monkeypatch.setattr(operators, "MATRIX_COST", 10**6)
        assert op.uses_matrix
        by_matrix = eqx.filter_jit(lambda o: outputs(o))(op)
        monkeypatch.setattr(operators, "MATRIX_COST", 0)
        assert not op.uses_matrix
        by_fft = eqx.filter_jit(lambda o: outputs(o))(op)
        for a, b in zip(by_matrix, by_fft, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * float(jnp.abs(b).max()))
        coarse_r, smooth = op.restrict_and_smooth(y)
        np.testing.assert_allclose(coarse_r, by_fft[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(smooth, op.smooth(y), rtol=1e-12, atol=1e-12)


def test_matrix_threshold_picks_the_cheaper_form():
    """Burgers 2D (64 nodes on 128 x 128) by matrix, the cylinder (256 on 320 x 80) by FFT."""
    assert ScaleOperator((128, 128), (8, 8)).uses_matrix
    assert not ScaleOperator((320, 80), (32, 8), 2).uses_matrix
    assert not ScaleOperator((1000,), (20,)).uses_matrix  # 1D: FFTs


@pytest.mark.parametrize("n_points, spacing", [(128, 2), (80, 2), (320, 4), (37, 3), (5, 8)])
def test_spline_basis_reproduces_cubics_up_to_the_boundary(n_points, spacing):
    from msde_ppl.generative.operators import spline_basis

    basis = spline_basis(n_points, spacing)
    n_knots = basis.shape[1] - 2
    assert (n_points - 1) / (n_knots - 1) <= spacing  # knots at most `spacing` points apart
    x = np.linspace(-1.0, 2.0, n_points)  # not periodic: different values at the two ends
    for f in (np.ones_like(x), x, x**2 - 0.5 * x**3):
        coeffs, *_ = np.linalg.lstsq(basis, f, rcond=None)
        np.testing.assert_allclose(basis @ coeffs, f, atol=1e-10)


def test_spline_codec_reads_coefficients_and_starts_at_zero(rng_key):
    """The spline encoder's network reads exactly the least-squares coefficients of a residual
    in its basis; the decoder starts at zero and decodes through the same basis."""
    from msde_ppl.generative.codec import SplineMicroDecoder, SplineMicroEncoder
    from msde_ppl.generative.operators import spline_basis

    k1, k2, k3 = jax.random.split(rng_key, 3)
    fine = (24, 10)
    encoder = SplineMicroEncoder(2, fine, 3, spacing=2, hidden=(8,), key=k1)
    b1, b2 = spline_basis(24, 2), spline_basis(10, 2)
    coeffs = np.asarray(jax.random.normal(k2, (2, b1.shape[1], b2.shape[1])))
    field = np.einsum("ij,cjk,lk->cil", b1, coeffs, b2)
    ls = np.einsum("ij,cjk,lk->cil", np.linalg.pinv(b1), field, np.linalg.pinv(b2))
    expected = encoder.net(jnp.asarray(ls.ravel(), jnp.float32))
    np.testing.assert_allclose(encoder(jnp.asarray(field, jnp.float32)), expected, rtol=1e-4,
                               atol=1e-5)
    decoder = SplineMicroDecoder(3, (2, *fine), spacing=2, hidden=(8,), key=k3)
    eta = jnp.array([1.0, -0.5, 2.0])
    assert decoder(None, eta).shape == (2, *fine) and float(jnp.abs(decoder(None, eta)).max()) == 0
    trained = eqx.tree_at(lambda d: d.net.layers[-1].weight, decoder,
                          jax.random.normal(k1, decoder.net.layers[-1].weight.shape))
    out_coeffs = np.asarray(trained.net(eta)).reshape(2, b1.shape[1], b2.shape[1])
    np.testing.assert_allclose(trained(None, eta),
                               np.einsum("ij,cjk,lk->cil", b1, out_coeffs, b2), rtol=1e-4,
                               atol=1e-5)
