"""The shallow-water finite-volume solver (msde_ppl/data/cases/_finite_volume.py) against the
exact planar dam break (Stoker), and the radial dam break's conservation and symmetry."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.data.cases import ShallowWater2D
from msde_ppl.data.cases._finite_volume import solve_shallow_water
from tests.oracles.stoker import stoker


def planar_dam_break(n: int, t: float, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2D solver on a strip of ``n x 4`` cells of [-1, 1] with h = 2 for x < 0, 1 beyond
    (uniform across the strip); returns cell centres and the depth at ``t`` along the strip."""
    dx = 2.0 / n
    x = -1.0 + (np.arange(n) + 0.5) * dx
    h = np.where(x < 0, 2.0, 1.0)[:, None] * np.ones((1, 4))
    with jax.enable_x64(True):
        state = jnp.stack([jnp.asarray(h), jnp.zeros_like(h), jnp.zeros_like(h)])
        spacing = (dx, dx)
        if axis == 1:  # the same problem along y
            state = jnp.swapaxes(state, -1, -2)
        path = solve_shallow_water(state, spacing, t, 2)
        out = np.asarray(path[-1])
    if axis == 1:  # back to x along the strip: (h, hv, hu) -> (h, hu, hv)
        out = np.swapaxes(out, -1, -2)[[0, 2, 1]]
    return x, out


@pytest.mark.parametrize("axis", [0, 1])
def test_planar_dam_break_converges_to_stoker(axis):
    t = 0.4  # the waves reach |x| < 0.7: the strip's ends stay still
    errors = []
    for n in (100, 200, 400):
        x, state = planar_dam_break(n, t, axis)
        h_exact, u_exact = stoker(x, t)
        h = state[0]
        assert np.abs(h - h[:, :1]).max() < 1e-12  # stays uniform across the strip
        assert np.abs(state[2]).max() < 1e-12  # no transverse momentum
        errors.append(np.mean(np.abs(h[:, 0] - h_exact)) * 2.0)  # L1 over [-1, 1]
        u = state[1][:, 0] / h[:, 0]
        assert np.mean(np.abs(u - u_exact)) * 2.0 < 2.5 * errors[-1] + 1e-3
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    # a shock and a rarefaction's kinks: first order in L1 for any shock-capturing scheme
    assert np.all(orders > 0.75), (errors, orders)
    assert errors[-1] < 4e-3, errors


def test_radial_dam_break_conserves_mass_and_keeps_its_symmetry():
    case = dataclasses.replace(ShallowWater2D(), n_time=11)
    ds = case.generate(n_traj=2)
    u = ds["u_clean"].values.astype(np.float64)  # h - 1
    with jax.enable_x64(True):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
        clean = case.clean_trajectories(jax.vmap(lambda k: jax.random.split(k)[0])(keys))
    dx = case.spacing()[0]
    mass = clean.sum((-1, -2)) * dx * dx
    np.testing.assert_allclose(mass, mass[:, :1] * np.ones_like(mass), rtol=0, atol=1e-12)
    assert np.abs(clean[:, :, [0, -1], :]).max() == 0  # no wave reaches the boundary
    # the grid is symmetric under x -> -x, y -> -y and x <-> y, and so is the scheme
    for image in (clean[..., ::-1, :], clean[..., :, ::-1], np.swapaxes(clean, -1, -2)):
        np.testing.assert_allclose(image, clean, rtol=0, atol=1e-11)
    # radial symmetry beyond the grid's: at the same radius, the depth differs by far less
    # than it varies along the radius (away from the front, smeared over ~3 cells)
    x = case.coordinates()[0]
    r = np.hypot(x[:, None], x[None, :])
    final = clean[:, -1]
    bins = np.digitize(r, np.arange(0, 2.5, dx))
    for field in final:
        spread = [field[bins == b].std() for b in np.unique(bins) if (bins == b).sum() > 8]
        assert np.median(spread) < 0.02 * np.ptp(field)
    np.testing.assert_allclose(u, clean.astype(np.float32), atol=0.1)  # u is clean + noise


def test_radial_dam_break_dataset_protocol():
    case = ShallowWater2D()
    assert (case.shape, case.n_time, case.eval_steps, case.coarse) == ((128, 128), 101, 100,
                                                                       (8, 8))
    x = case.coordinates()[0]
    np.testing.assert_allclose([x[0], x[-1], x[1] - x[0]], [-2.5 + 5 / 256, 2.5 - 5 / 256,
                                                           5 / 128], rtol=1e-12)
    small = dataclasses.replace(case, n_time=3, t_final=0.02)
    ds = small.generate(n_traj=3)
    assert set(ds["split"].values) == {"train", "val", "test"}
    noise = (ds["u"] - ds["u_clean"]).values.astype(np.float64)
    assert abs(noise.std() - 0.01) < 5 * 0.01 / np.sqrt(2 * noise.size)
    radius = [np.sqrt((ds["u_clean"].isel(traj=i, time=0).values > 0.5).sum() * (5 / 128) ** 2
                      / np.pi) for i in range(3)]
    assert all(0.28 < r < 0.72 for r in radius)  # R ~ U(0.3, 0.7), to a cell
