"""Restriction and interpolation: exactness on band-limited signals and polynomials."""

import numpy as np
import pytest

from msde_ppl.data import SchemaError, coarse_coordinates, interpolate, restrict
from msde_ppl.data.coarse import coarser_grids, resolution_floor, resolution_floors
from msde_ppl.data.schema import from_arrays


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


# ------------------------------------------------------------------ resolution floor
def test_resolution_floor_of_fourier_modes_is_the_dropped_share():
    """Two modes, amplitudes a (k = 3) and b (k = 9): a grid of 8 nodes holds |k| <= 4, so its
    floor is b / sqrt(a^2 + b^2); a grid of 32 holds both (floor 0)."""
    x = np.arange(64) / 64
    a, b = 2.0, 0.5
    u = a * np.sin(2 * np.pi * 3 * x) + b * np.cos(2 * np.pi * 9 * x)
    u = np.stack([u, np.roll(u, 5)])  # leading axes pool
    assert resolution_floor(u, [x], [8], "periodic") == pytest.approx(b / np.hypot(a, b),
                                                                       rel=1e-12)
    assert resolution_floor(u, [x], [32], "periodic") == pytest.approx(0.0, abs=1e-13)
    # of the coarse grid's Nyquist mode (k = 4 on 8 nodes) the nodes hold the cosine part only
    # (they start at x = 0; the sine vanishes on all of them)
    phase = 0.6
    nyquist = np.cos(2 * np.pi * 4 * x + phase)
    assert resolution_floor(nyquist, [x], [8], "periodic") == pytest.approx(abs(np.sin(phase)),
                                                                             rel=1e-12)
    assert resolution_floor(np.sin(2 * np.pi * x), [x], [2], "periodic") == pytest.approx(1.0)
    assert resolution_floor(np.zeros(64), [x], [8], "periodic") == 0.0


def test_resolution_floor_2d_is_the_tensor_product():
    """A mode (k_x, k_y) = (1, 6) survives a 16x16 grid, not a 16x8 one."""
    x, y = np.arange(32) / 32, np.arange(16) / 16
    u = np.sin(2 * np.pi * (x[:, None] + 6 * y[None, :]))
    assert resolution_floor(u, [x, y], [16, 16], "periodic") == pytest.approx(0, abs=1e-13)
    assert resolution_floor(u, [x, y], [16, 8], "periodic") == pytest.approx(1.0, rel=1e-12)


def test_dirichlet_floor_is_zero_on_cubics_and_refuses_a_non_divisor():
    x = np.linspace(-1, 1, 32)
    assert resolution_floor(1 + x - 2 * x ** 3, [x], [8], "dirichlet") == pytest.approx(
        0, abs=1e-12)
    assert resolution_floor(np.sin(6 * x), [x], [8], "dirichlet") > 1e-3
    with pytest.raises(SchemaError, match="does not divide"):
        resolution_floor(x, [x], [7], "dirichlet")


def test_coarser_grids_share_one_ratio_and_keep_four_nodes():
    assert coarser_grids([256]) == [(128,), (64,), (32,), (16,), (8,), (4,)]
    assert coarser_grids([12, 18]) == [(6, 9), (4, 6)]
    assert coarser_grids([7]) == []


def test_resolution_floors_read_a_sample_of_the_training_split(np_rng):
    """With a sample as large as the split the floors are those of the whole training
    field; the val and test trajectories (here: pure grid-scale noise) are not read."""
    x = np.arange(32) / 32
    smooth = np.sin(2 * np.pi * (x[None, None, :] + np_rng.uniform(size=(6, 5, 1))))
    smooth[:, :, ::2] += 0.1  # a grid-scale part: k = 16, dropped by 16 nodes or fewer
    u = np.concatenate([smooth, np_rng.normal(size=(2, 5, 32))])
    ds = from_arrays(u, time=np.arange(5.0), x=x,
                     split=["train"] * 6 + ["val", "test"])
    floors = resolution_floors(ds, [(16,), (8,)], n_traj=6, n_time=5)
    assert floors == {(16,): pytest.approx(resolution_floor(smooth, [x], [16], "periodic")),
                      (8,): pytest.approx(resolution_floor(smooth, [x], [8], "periodic"))}
    assert 0.05 < floors[(16,)] < 0.2
    # a smaller sample reads fewer snapshots and still sees the same field
    assert resolution_floors(ds, [(16,)], n_traj=2, n_time=2)[(16,)] == pytest.approx(
        floors[(16,)], rel=0.5)


def test_resolution_floors_pool_fields_read_u_clean_and_a_split_in_time(np_rng):
    """Two fields on a 2D grid, split in time: only the train block counts, and the noise-free
    field when given (noise on u would raise every floor)."""
    x, y = np.arange(16) / 16, np.arange(8) / 8
    wave = np.sin(2 * np.pi * (x[:, None] + 3 * y[None, :]))  # k = (1, 3)
    clean = np.stack([wave, np.ones_like(wave)])[None, None] * np.ones((2, 12, 1, 1, 1))
    clean[:, 8:] = np_rng.normal(size=(2, 4, 2, 16, 8))  # val and test: not read
    ds = from_arrays(clean + 0.1 * np_rng.normal(size=clean.shape), time=np.arange(12.0),
                     x=x, y=y, u_clean=clean, split=["train"] * 8 + ["val", "val", "test",
                                                                     "test"],
                     split_over="time")
    floors = resolution_floors(ds, [(8, 8), (4, 4)])
    assert floors[(8, 8)] == pytest.approx(0.0, abs=1e-12)
    # on 4 x 4 nodes k_y = 3 is lost: half the pooled energy (wave: 1/2, ones: 1 per point)
    assert floors[(4, 4)] == pytest.approx(np.sqrt(0.5 / 1.5), rel=1e-12)
