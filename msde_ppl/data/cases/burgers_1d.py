"""Burgers 1D: ``u_t = -u u_x + nu u_xx`` on the periodic interval ``[0, 1)`` (docs/method.md §7).

The reference's earliest setup: ``N = 1000`` nodes, central differences for ``u_x`` and ``u_xx``
(both second order), ``nu = 0.0005``. The reference steps with Heun at ``dt = 0.001``, which sits
exactly on Heun's stability edge for the grid-scale diffusive mode (``4 nu dt / dx^2 = 2``); we use
RK4 in float64 with equal substeps under the stability limit instead (time error negligible).

Initial condition ``a exp(-(x - 0.5)^2 / v)``, ``a = 0.25 + 0.05 xi``, ``v = 0.01 + 0.0025 xi'``.
``t in [0, 1]``, 1001 snapshots, split 8/1/1, noise ``N(0, 0.001^2)``, coarse grid 20.

Measured accuracy (tests/data/test_solvers.py): self-convergence under grid refinement
``N = 250, 500, 1000`` before the front steepens shows the expected second order.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from msde_ppl.data.cases._base import PDECase, central_diff, central_second_diff


@dataclass(frozen=True)
class Burgers1D(PDECase):
    name = "burgers_1d"
    boundary = "periodic"
    pde = "u_t = -u u_x + nu u_xx, periodic"

    domain: tuple[float, ...] = (1.0,)
    shape: tuple[int, ...] = (1000,)
    t_final: float = 1.0
    n_time: int = 1001
    split: tuple[int, int, int] = (8, 1, 1)
    noise_std: float = 0.001
    coarse: tuple[int, ...] = (20,)
    eval_steps: int = 1000
    nu: float = 0.0005

    def sample_ic_params(self, rng_key):
        xi = jax.random.normal(rng_key, (2,), dtype=jnp.float64)
        return {"amplitude": 0.25 + 0.05 * xi[0], "variance": 0.01 + 0.0025 * xi[1]}

    def initial_condition(self, params, coords):
        (x,) = coords
        return params["amplitude"] * jnp.exp(-((x - 0.5) ** 2) / params["variance"])

    def rhs(self, u, spacing):
        (h,) = spacing
        return -u * central_diff(u, h, -1) + self.nu * central_second_diff(u, h, -1)

    def stable_dt(self, spacing, u_max):
        (h,) = spacing
        return 2.0 / (4.0 * self.nu / h**2 + u_max / h)
