"""Restriction and interpolation: exactness on band-limited signals and polynomials."""

import numpy as np
import pytest

from msde_ppl.data import SchemaError, coarse_coordinates, interpolate, restrict


def bandlimited(x, kmax, rng):
    """Random real trigonometric polynomial on [0, 1) with wavenumbers 0..kmax."""
    a, b = rng.normal(size=(2, kmax + 1))
    k = np.arange(kmax + 1)[:, None]
    return (a[:, None] * np.cos(2 * np.pi * k * x) + b[:, None] * np.sin(2 * np.pi * k * x)).sum(0)


def test_periodic_restriction_is_subsampling():
    x = np.arange(1000) / 1000
    u = np.random.default_rng(0).normal(size=(2, 3, 1000))
    np.testing.assert_array_equal(restrict(u, [x], [20], "periodic"), u[..., ::50])
    np.testing.assert_array_equal(coarse_coordinates(x, 20, "periodic"), x[::50])


@pytest.mark.parametrize("n", [20, 25])
def test_fourier_interpolation_is_exact_on_bandlimited_signals(np_rng, n):
    x = np.arange(1000) / 1000
    u = bandlimited(x, (n - 1) // 2, np_rng)
    back = interpolate(restrict(u, [x], [n], "periodic"), [x], "periodic", "fourier")
    np.testing.assert_allclose(back, u, atol=1e-12)


def test_fourier_interpolation_2d_exact(np_rng):
    x, y = np.arange(64) / 64, np.arange(32) / 32
    u = bandlimited(x, 3, np_rng)[:, None] * bandlimited(y, 3, np_rng)[None, :]
    coarse = restrict(u, [x, y], [8, 8], "periodic")
    assert coarse.shape == (8, 8)
    np.testing.assert_allclose(interpolate(coarse, [x, y], "periodic", "fourier"), u, atol=1e-12)


def test_periodic_spline_converges_at_fourth_order():
    x = np.arange(960) / 960
    u = np.exp(np.sin(2 * np.pi * x))
    errors = [np.abs(interpolate(restrict(u, [x], [n], "periodic"), [x], "periodic") - u).max()
              for n in (20, 40, 80)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - 4) < 0.4), errors


def test_dirichlet_restriction_keeps_boundaries_and_is_exact_on_cubics():
    x = np.linspace(0, 1, 128)
    y = np.linspace(0, 2, 64)
    cubic = lambda s: 1 + s - 2 * s**2 + 3 * s**3  # noqa: E731
    u = cubic(x)[:, None] * cubic(y / 2)[None, :]
    coarse = restrict(u, [x, y], [8, 8], "dirichlet")
    xc, yc = coarse_coordinates(x, 8, "dirichlet"), coarse_coordinates(y, 8, "dirichlet")
    assert xc[0] == 0 and xc[-1] == 1 and yc[-1] == 2
    np.testing.assert_allclose(coarse, cubic(xc)[:, None] * cubic(yc / 2)[None, :], atol=1e-12)
    np.testing.assert_allclose(interpolate(coarse, [x, y], "dirichlet"), u, atol=1e-12)


def test_refusals():
    x = np.arange(100) / 100
    with pytest.raises(SchemaError, match="does not divide"):
        restrict(np.zeros(100), [x], [30], "periodic")
    with pytest.raises(ValueError, match="unknown boundary"):
        interpolate(np.zeros(10), [x], "open")
    with pytest.raises(ValueError, match="needs a periodic boundary"):
        interpolate(np.zeros(10), [x], "dirichlet", "fourier")
    with pytest.raises(SchemaError, match="does not match its coordinates"):
        restrict(np.zeros(99), [x], [10], "periodic")
