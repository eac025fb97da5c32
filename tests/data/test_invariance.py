"""The stencil regression test for position-dependent coarse dynamics
(:mod:`msde_ppl.data.invariance`) and the default it sets (``model_config``)."""

import numpy as np
import pytest
from scipy.linalg import expm

from msde_ppl.data import from_arrays
from msde_ppl.data.invariance import position_dependence
from msde_ppl.pipeline.run import POSITION_RATIO, model_config

SPLIT = ["train"] * 8 + ["val"] * 2 + ["test"] * 2


def _advection(speed, seed=0, n=64, n_time=40, dt=0.01):
    """Exact solutions of u_t = -c(x) u_x (spectral derivative) from random 3-mode states."""
    rng = np.random.default_rng(seed)
    x = np.arange(n) / n
    k = np.fft.fftfreq(n, 1.0 / n)
    deriv = np.real(np.fft.ifft(2j * np.pi * k[:, None] * np.fft.fft(np.eye(n), axis=0),
                                axis=0))
    step = expm(-dt * speed(x)[:, None] * deriv)
    trajs = []
    for _ in SPLIT:
        u = sum(rng.normal() / m * np.sin(2 * np.pi * m * x + rng.uniform(0, 2 * np.pi))
                for m in range(1, 4))
        path = [u]
        for _ in range(n_time - 1):
            path.append(step @ path[-1])
        trajs.append(path)
    return from_arrays(np.asarray(trajs), time=np.arange(n_time) * dt, x=x, split=SPLIT)


def test_a_speed_varying_in_space_is_found_and_a_constant_one_is_not():
    varying = position_dependence(_advection(lambda x: 1 + 0.5 * np.sin(2 * np.pi * x)), [16])
    constant = position_dependence(_advection(lambda x: np.ones_like(x)), [16])
    assert varying["ratio"] < 0.2 * POSITION_RATIO
    # one linear stencil is the exact coarse dynamics up to the time step's error: the per-node
    # fits can only add their estimation noise on val
    assert constant["rss_shared"] < 0.05 and constant["ratio"] > 0.9
    assert model_config(_advection(lambda x: 1 + 0.5 * np.sin(2 * np.pi * x)), [16]).positional
    assert not model_config(_advection(lambda x: np.ones_like(x)), [16]).positional
    # an explicit choice is kept whatever the data show
    assert model_config(_advection(lambda x: np.ones_like(x)), [16], positional=True).positional


def test_two_fields_in_2d_and_no_val_split():
    rng = np.random.default_rng(1)
    x, y = np.arange(16) / 16, np.arange(8) / 8
    t = np.arange(40) * 0.1
    phase = rng.uniform(0, 1, size=(12, 1, 1, 1))
    wave = np.sin(2 * np.pi * (x[:, None] + y[None, :] - t[:, None, None] + phase))
    u = np.stack([wave, np.cos(2 * np.pi * wave)], axis=2)  # (12, 40, 2, 16, 8)
    ds = from_arrays(u, time=t, x=x, y=y, split=SPLIT)
    test = position_dependence(ds, [8, 4])  # 2 * 25 + 1 coefficients per node, 8 * 39 pairs
    assert test["n_train"] == 8 * 39 and test["ratio"] > POSITION_RATIO
    # too few pairs for 51 coefficients per node: no test (a per-node fit would be noise)
    assert position_dependence(ds.isel(time=slice(0, 6)), [8, 4]) is None
    assert position_dependence(from_arrays(u, time=t, x=x, y=y), [8, 4]) is None
    assert position_dependence(ds.drop_vars("split"), [8, 4]) is None
    with pytest.raises(Exception, match="divide"):
        position_dependence(ds, [7, 4])


def test_dirichlet_walls_do_not_count_as_position_dependence():
    """Heat equation between walls held at 0 (constant diffusivity): the wall nodes' tendency
    is 0 and a wrapped neighbourhood spans both walls, so they are left out of the test."""
    n, nu, dt = 64, 0.02, 0.002
    x = np.linspace(0, 1, n)
    lap = (np.eye(n, k=1) - 2 * np.eye(n) + np.eye(n, k=-1)) / (x[1] - x[0]) ** 2
    lap[[0, -1]] = 0  # the walls keep their value
    step = expm(dt * nu * lap)
    rng = np.random.default_rng(2)
    trajs = []
    for _ in SPLIT:
        u = sum(rng.normal() / m * np.sin(np.pi * m * x) for m in range(1, 5))
        path = [u]
        for _ in range(39):
            path.append(step @ path[-1])
        trajs.append(path)
    ds = from_arrays(np.asarray(trajs), time=np.arange(40) * dt, x=x, boundary="dirichlet",
                     split=SPLIT)
    assert position_dependence(ds, [16])["ratio"] > POSITION_RATIO
