"""The robustness benchmark's own solvers (benchmarks/unseen_pdes.py) against physics: exact
solutions, linear growth rates, front speeds and convergence orders."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import unseen_pdes as pdes  # noqa: E402


def test_ks_small_mode_grows_at_the_linear_rate():
    """A mode of amplitude 1e-6 evolves as exp((k^2 - k^4) t) (the nonlinearity is O(1e-12))
    for an unstable (k < 1) and a stable (k > 1) wavenumber."""
    length, n = 32 * np.pi, 64
    x = np.arange(n) * length / n
    for m in (5, 20):
        k = 2 * np.pi * m / length
        u = pdes.ks_solve(1e-6 * np.cos(k * x), length, 0.05, 100, 100)
        amplitude = 2 * np.abs(np.fft.rfft(u[-1])[m]) / n
        assert amplitude == pytest.approx(1e-6 * np.exp((k**2 - k**4) * 5.0), rel=1e-5)


def test_ks_etdrk4_converges_at_third_order_or_better_and_keeps_the_mean():
    """Cox–Matthews ETDRK4 is fourth order on non-stiff problems and known to lose up to an
    order on stiff ones (Hochbruck & Ostermann 2005): measured here 8.9x and 10.3x per halved
    step (order 3.2–3.4), so the check is > 8x (third order)."""
    length, n = 22.0, 64
    x = np.arange(n) * length / n
    u0 = np.cos(2 * np.pi * x / length) + 0.3 * np.sin(4 * np.pi * x / length) + 0.2

    def at_t2(h):
        return pdes.ks_solve(u0, length, h, int(round(2 / h)), int(round(2 / h)))[-1]

    ref = at_t2(0.00125)
    errors = [np.abs(at_t2(h) - ref).max() for h in (0.1, 0.05, 0.025)]
    assert errors[0] / errors[1] > 8 and errors[1] / errors[2] > 8, errors
    assert at_t2(0.02).mean() == pytest.approx(0.2, abs=1e-10)  # d/dt of the mean is 0


def test_nagumo_front_travels_at_the_exact_speed():
    """A plateau of u = 1 on u = 0: its two fronts move outward at c = sqrt(D/2)(1 - 2a)."""
    length, n, diff, a = 200.0, 1024, 1.0, 0.2
    x = np.arange(n) * length / n
    u0 = 0.5 * (1 - np.tanh((np.abs(x - length / 2) - 20) / np.sqrt(2 * diff)))
    out = pdes.nagumo_solve(u0, length, diff, a, 0.01, 6000, 2000)  # t = 0, 20, 40, 60
    width = out.sum(axis=1) * length / n  # the plateau's length
    speed = np.diff(width[1:]).mean() / 20 / 2
    assert speed == pytest.approx(np.sqrt(diff / 2) * (1 - 2 * a), rel=0.01)
    assert out.min() > -1e-3 and out.max() < 1 + 1e-3  # stays between the stable states


def test_advection_with_constant_speed_is_the_exact_shift_and_decay():
    n, nu = 64, 1e-2
    x = np.arange(n) / n
    u0 = np.sin(2 * np.pi * x) + 0.5 * np.cos(6 * np.pi * x)
    out = pdes.variable_advection_solve(u0, np.ones(n), nu, 1e-3, 500, 500)[-1]  # t = 0.5
    t = 0.5
    exact = (np.exp(-nu * (2 * np.pi) ** 2 * t) * np.sin(2 * np.pi * (x - t))
             + 0.5 * np.exp(-nu * (6 * np.pi) ** 2 * t) * np.cos(6 * np.pi * (x - t)))
    np.testing.assert_allclose(out, exact, atol=1e-9)


def test_allen_cahn_circle_shrinks_at_the_curvature_flow_rate():
    """A disc of phase +1 in -1: its interface moves by curvature, V = eps^2 / R, so its area
    falls at the constant rate 2 pi eps^2 (the sharp-interface limit; its corrections are
    O((eps / R)^2), 2% at the radii of t = 5..20, the rate measured there)."""
    length, n, eps = 2 * np.pi, 64, 0.15
    x = np.arange(n) * length / n
    r = np.hypot(x[:, None] - length / 2, x[None, :] - length / 2)
    u0 = np.tanh((1.5 - r) / (np.sqrt(2) * eps))
    out = pdes.allen_cahn_solve(u0, length, eps, 0.005, 4000, 1000)  # t = 0, 5, .., 20
    area = ((1 + out) / 2).sum(axis=(1, 2)) * (length / n) ** 2
    rate = np.polyfit([5.0, 10.0, 15.0, 20.0], area[1:], 1)[0]
    assert rate == pytest.approx(-2 * np.pi * eps**2, rel=0.02)


def test_allen_cahn_energy_never_grows_and_the_scheme_is_first_order():
    """Even at a step of 1.5 the stabilised scheme's energy never grows (without the
    stabiliser it does, by 0.03 in a step); halving the step halves the error."""
    rng = np.random.default_rng(0)
    length, n, eps = 2 * np.pi, 32, 0.15
    u0 = 0.5 * np.tanh(3 * rng.standard_normal((n, n)))
    for stabiliser, grows in ((2.0, False), (0.0, True)):
        out = pdes.allen_cahn_solve(u0, length, eps, 1.5, 40, 1, stabiliser=stabiliser)
        energy = pdes.allen_cahn_energy(out, length, eps)
        if grows:
            assert np.diff(energy).max() > 1e-3
        else:
            assert np.diff(energy).max() <= 1e-12 and energy[-1] < 0.2 * energy[0]

    def at_t1(h):
        return pdes.allen_cahn_solve(u0, length, eps, h, int(round(1 / h)), int(round(1 / h)))[-1]

    ref = at_t1(0.01 / 16)
    errors = [np.abs(at_t1(h) - ref).max() for h in (0.02, 0.01)]
    assert 1.8 < errors[0] / errors[1] < 2.3, errors  # halving the step halves the error


@pytest.mark.parametrize("name", list(pdes.PDES))
def test_datasets_are_valid_bounded_and_split(name):
    make, coarse = pdes.PDES[name]
    ds = make(n_traj=6, seed=1, n_time=21)
    assert set(ds["split"].values.tolist()) == {"train", "val", "test"}
    clean = ds["u_clean"].values
    assert np.isfinite(clean).all() and np.abs(clean).max() < 10
    axes = [d for d in ("x", "y") if d in ds.sizes]
    assert len(axes) == len(coarse) and ds.attrs["noise_std"] > 0
    assert all(ds.sizes[d] % c == 0 for d, c in zip(axes, coarse, strict=True))


def test_fronts_keep_the_threshold_that_made_each_trajectory():
    """The stored threshold and diffusivity re-solve each clean trajectory, and the physics
    reference with a one-point prior at that threshold is that trajectory."""
    ds = pdes.make_bistable_fronts(n_traj=2, seed=3, n_fine=128, n_time=21)
    length = float(np.atleast_1d(ds.attrs["domain"])[0])
    dt = float(ds["time"][1] - ds["time"][0])
    lo, hi = pdes.FRONTS_THRESHOLDS
    for i, a in enumerate(ds["threshold"].values):
        assert lo <= a <= hi
        clean = ds["u_clean"].values[i]
        again = pdes.nagumo_solve(clean[0].astype(np.float64), length, ds.attrs["diffusivity"],
                                  float(a), dt / pdes._FRONTS_SUBSTEPS,
                                  20 * pdes._FRONTS_SUBSTEPS, pdes._FRONTS_SUBSTEPS)
        np.testing.assert_allclose(again, clean, atol=1e-5)


def test_the_fronts_reference_is_the_mean_over_the_threshold_prior():
    """Midpoints of the prior: the mean of the solves at those thresholds, the initial state
    first, and between the slowest and fastest front at every time (u is monotone in a for
    these states: a lower threshold makes the u = 1 plateaus grow faster)."""
    length, n = 50.0, 128
    x = np.arange(n) * length / n
    u0 = 0.5 * (1 - np.tanh((np.abs(x - length / 2) - 5) / np.sqrt(2)))
    ref = pdes.fronts_bayes_forecast(u0, length, 1.0, 0.5, 11, n_thresholds=4)
    lo, hi = pdes.FRONTS_THRESHOLDS
    solves = [pdes.nagumo_solve(u0, length, 1.0, a, 0.05, 100, 10)
              for a in lo + (hi - lo) * (np.arange(4) + 0.5) / 4]
    np.testing.assert_allclose(ref, np.mean(solves, axis=0), atol=1e-12)
    np.testing.assert_allclose(ref[0], u0)
    assert np.all(ref <= solves[0] + 1e-12) and np.all(ref >= solves[-1] - 1e-12)


def test_shallow_water_conserves_mass_and_momentum_and_keeps_a_lake_at_rest():
    """Flux form on a periodic grid: the sums of h and hu are constant to round-off; a lake at
    rest (h = 1, hu = 0) stays exactly at rest."""
    n, length = 128, 1.0
    x = (np.arange(n) + 0.5) / n
    state = np.stack([1 + 0.1 * np.exp(-((x - 0.5) / 0.05) ** 2), 0.02 * np.sin(2 * np.pi * x)])
    path = pdes.shallow_water_solve(state, length, 1e-3, 800, 100)  # t = 0.8: bores have formed
    sums = path.sum(axis=-1)
    np.testing.assert_allclose(sums, np.broadcast_to(sums[0], sums.shape), rtol=0, atol=1e-11)
    lake = pdes.shallow_water_solve(np.stack([np.ones(n), np.zeros(n)]), length, 1e-3, 50, 50)
    np.testing.assert_array_equal(lake[-1], lake[0])


def test_shallow_water_small_wave_travels_at_the_gravity_wave_speed():
    """Linearised about depth 1 (g = 1), h = 1 + e cos(2 pi x), hu = e cos(2 pi x) is a wave
    moving right at c = 1: after t = 0.25 the state is the initial one shifted by 0.25, up to
    the scheme's error and O(e^2) nonlinearity. On a grid twice as fine the mean error falls by
    more than 3x (measured 3.6: second order away from the extrema) and the largest by more
    than 2x (2.4: the minmod limiter clips the extrema to first order, its known loss)."""
    eps, t_end = 1e-4, 0.25

    def error(n):
        x = (np.arange(n) + 0.5) / n
        wave = eps * np.cos(2 * np.pi * x)
        state = np.stack([1 + wave, wave])
        steps = n  # h = 0.25 / n: CFL 0.25
        end = pdes.shallow_water_solve(state, 1.0, t_end / steps, steps, steps)[-1]
        exact = eps * np.cos(2 * np.pi * (x - t_end))
        err = np.abs(np.stack([end[0] - 1 - exact, end[1] - exact])) / eps
        return err.mean(), err.max()

    (mean_c, max_c), (mean_f, max_f) = error(64), error(128)
    assert max_c < 0.05 and mean_c / mean_f > 3 and max_c / max_f > 2, (mean_c, mean_f, max_c,
                                                                       max_f)


def test_shallow_water_bore_travels_at_the_rankine_hugoniot_speed():
    """A bore into still water: depth h_l behind, h_r = 1 ahead at rest, connected by a
    right-going shock of speed s = sqrt(g h_l (h_l + h_r) / (2 h_r)) with flow u_l =
    s (1 - h_r / h_l) behind it (the jump conditions of mass and momentum). The computed
    front (where h crosses the middle depth) is at x0 + s t to within two cells; the
    periodic wrap's own waves stay far behind it."""
    n, h_l, h_r, x0, t_end = 400, 1.5, 1.0, 0.5, 0.2
    s = np.sqrt(h_l * (h_l + h_r) / (2 * h_r))
    u_l = s * (1 - h_r / h_l)
    x = (np.arange(n) + 0.5) / n
    behind = (x > 0.05) & (x < x0)
    state = np.stack([np.where(behind, h_l, h_r), np.where(behind, h_l * u_l, 0.0)])
    steps = 400  # CFL (u_l + sqrt(g h_l)) h / dx = 0.33
    end = pdes.shallow_water_solve(state, 1.0, t_end / steps, steps, steps)[-1]
    window = (x > 0.6) & (x < 0.95)
    front = x[window][np.flatnonzero(end[0][window] < 0.5 * (h_l + h_r))[0]]
    assert abs(front - (x0 + s * t_end)) < 2 / n, (front, x0 + s * t_end)
    # behind the front the state is the bore's
    np.testing.assert_allclose(end[0][(x > 0.6) & (x < front - 0.02)], h_l, atol=0.02)
