"""Burgers 2D (scalar): ``u_t = nu (u_xx + u_yy) - u (u_x + u_y)`` on ``[0, 1]^2``
(docs/method.md §7).

``128 x 128`` nodes including the boundary (``h = 1/127``), second-order central differences at
interior nodes; boundary values stay at their initial values (non-zero Dirichlet data, ~0.1).
``nu = 0.005``. The reference steps with Heun at ``dt = 0.001``; we use RK4 in float64 with
equal substeps under the stability limit (one per output step at this resolution).

Initial condition ``c1 exp(-(x - 0.3)^2 / c2) exp(-(y - 0.3)^2 / c2)``, ``c1 = 1 + 0.1 xi``,
``c2 = (0.2 + 0.01 xi')^2``. ``t in [0, 1]``, 1001 snapshots, split 20/5/5, noise
``N(0, 0.001^2)``, coarse grid 8 x 8, evaluated on the first 1000 steps. ``u[..., i, j]`` is the
value at ``(x_i, y_j)``.

Measured accuracy (tests/data/test_solvers.py): self-convergence under refinement
``h = 1/32, 1/64, 1/128`` shows second order.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from msde_ppl.data.cases._base import PDECase


@dataclass(frozen=True)
class Burgers2D(PDECase):
    name = "burgers_2d"
    boundary = "dirichlet"
    pde = "u_t = nu (u_xx + u_yy) - u (u_x + u_y), boundary values frozen (Dirichlet)"

    domain: tuple[float, ...] = (1.0, 1.0)
    shape: tuple[int, ...] = (128, 128)
    t_final: float = 1.0
    n_time: int = 1001
    split: tuple[int, int, int] = (20, 5, 5)
    noise_std: float = 0.001
    coarse: tuple[int, ...] = (8, 8)
    eval_steps: int = 1000
    batch_size: int = 5
    nu: float = 0.005

    def sample_ic_params(self, rng_key):
        xi = jax.random.normal(rng_key, (2,), dtype=jnp.float64)
        return {"amplitude": 1.0 + 0.1 * xi[0], "variance": (0.2 + 0.01 * xi[1]) ** 2}

    def initial_condition(self, params, coords):
        x, y = coords
        gx = jnp.exp(-((x - 0.3) ** 2) / params["variance"])
        gy = jnp.exp(-((y - 0.3) ** 2) / params["variance"])
        return params["amplitude"] * gx[:, None] * gy[None, :]

    def rhs(self, u, spacing):
        hx, hy = spacing
        c = u[..., 1:-1, 1:-1]
        east, west = u[..., 2:, 1:-1], u[..., :-2, 1:-1]
        north, south = u[..., 1:-1, 2:], u[..., 1:-1, :-2]
        u_x = (east - west) / (2.0 * hx)
        u_y = (north - south) / (2.0 * hy)
        lap = (east - 2.0 * c + west) / hx**2 + (north - 2.0 * c + south) / hy**2
        interior = self.nu * lap - c * (u_x + u_y)
        return jnp.zeros_like(u).at[..., 1:-1, 1:-1].set(interior)

    def stable_dt(self, spacing, u_max):
        hx, hy = spacing
        return 2.5 / (4.0 * self.nu * (1 / hx**2 + 1 / hy**2) + u_max * (1 / hx + 1 / hy))
