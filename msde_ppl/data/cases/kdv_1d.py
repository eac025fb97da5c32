"""KdV 1D: ``u_t = -u u_x - beta u_xxx`` on the periodic interval ``[0, 10)`` (docs/method.md §7).

Discretisation (the reference's method of lines): ``N = 1000`` nodes, ``dx = 0.01``; ``u_x`` by the
central difference ``(u_{i+1} - u_{i-1}) / 2dx``; ``u_xxx`` by the biased stencil ``(u_{i+2} -
3u_{i+1} + 3u_i - u_{i-1}) / dx^3`` (second order about ``x_{i+1/2}``, so first order at ``x_i``;
its symbol has real part ``2(1 - cos k)^2 / dx^3 >= 0``, which makes ``-beta u_xxx`` slightly
dissipative at the grid scale, hence stable). The reference integrates with LSODA; we use RK4 in
float64 with ~65 equal substeps per output step (the stability limit of the stiff third-derivative
term), which makes the time error negligible next to the space error.

Initial condition: ``u0 = A cos(pi x) exp(-(x - 7.5)^2 / s^2)``, ``A = 2 + 0.1 xi``,
``s = 1 + 0.1 xi'`` with ``xi, xi' ~ N(0, 1)``. ``t in [0, 1]``, 1001 snapshots, split 10/5/5,
observation noise ``N(0, 0.01^2)``, coarse grid 20 (``dx = 0.5``), evaluated on the first 1000
steps.

Measured accuracy (tests/data/test_solvers.py): the soliton ``3c sech^2(sqrt(c/beta)/2 (x - ct))``
with ``c = 1`` carried to ``t = 0.5`` has relative L2 error 0.108, 0.060, 0.032 for
``N = 250, 500, 1000``: first order in ``dx`` (the biased ``u_xxx`` stencil, mostly a phase
error). The data are therefore the reference's *semi-discrete* KdV, as in the paper, not a
spectrally accurate KdV solution. Halving the RK4 step changes the data by < 1e-6.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from msde_ppl.data.cases._base import PDECase, central_diff


@dataclass(frozen=True)
class KdV1D(PDECase):
    name = "kdv_1d"
    boundary = "periodic"
    pde = "u_t = -u u_x - beta u_xxx, periodic"

    domain: tuple[float, ...] = (10.0,)
    shape: tuple[int, ...] = (1000,)
    t_final: float = 1.0
    n_time: int = 1001
    split: tuple[int, int, int] = (10, 5, 5)
    noise_std: float = 0.01
    coarse: tuple[int, ...] = (20,)
    eval_steps: int = 1000
    beta: float = 0.02

    def sample_ic_params(self, rng_key):
        xi = jax.random.normal(rng_key, (2,), dtype=jnp.float64)
        return {"amplitude": 2.0 + 0.1 * xi[0], "width": 1.0 + 0.1 * xi[1]}

    def initial_condition(self, params, coords):
        (x,) = coords
        return (
            params["amplitude"]
            * jnp.cos(jnp.pi * x)
            * jnp.exp(-((x - 7.5) ** 2) / params["width"] ** 2)
        )

    def rhs(self, u, spacing):
        (h,) = spacing
        up1, um1, up2 = jnp.roll(u, -1, -1), jnp.roll(u, 1, -1), jnp.roll(u, -2, -1)
        u_xxx = (up2 - 3.0 * up1 + 3.0 * u - um1) / h**3
        return -u * central_diff(u, h, -1) - self.beta * u_xxx

    def stable_dt(self, spacing, u_max):
        (h,) = spacing
        # |eigenvalues| <= 8 beta / h^3 (third-derivative stencil) + u_max / h (advection);
        # RK4 is stable for |z| up to ~2.6 along both axes: keep a safety margin.
        return 2.5 / (8.0 * self.beta / h**3 + u_max / h)
