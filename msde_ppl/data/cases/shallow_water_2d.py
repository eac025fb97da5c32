"""Shallow water 2D, radial dam break (docs/method.md §5.5), by our own finite-volume solver.

``h_t + (hu)_x + (hv)_y = 0`` and the momentum equations with ``g = 1`` and a flat bottom on
``[-2.5, 2.5]^2``, ``128 x 128`` cells; initially at rest, ``h = 2`` inside a radius
``R ~ U(0.3, 0.7)`` about the origin and ``1`` outside. Solved by
:mod:`msde_ppl.data.cases._finite_volume` (HLLC fluxes, MC-limited MUSCL, SSP-RK2 under
CFL 0.45, outflow boundaries) to ``t = 1``, 101 frames. The dataset's field is ``h - 1``
plus ``N(0, 0.01^2)`` noise (the reference's preprocessing of PDEBench's ``2D_rdb_NA_NA``).

The grid: values at the cell centres ``x_i = -2.5 + (i + 1/2) dx``, ``dx = 5/128``. The
schema's ``"dirichlet"`` label (ends included as nodes, boundary values frozen) is exact for
these data: the fastest wave (speed below 1.5) travels at most 1.5 + 0.7 from the origin by
``t = 1``, so the edge cells (at 2.48) never leave ``h = 1``; the stored ``domain`` is the
span of the cell centres, ``127 dx``.

The coarse-DNS baseline runs the same scheme on the coarse nodes taken as cell centres (the
restricted initial height, zero momentum: exact, since the fluid starts at rest).

Split: the reference trained on 900 trajectories of a one-parameter family (the radius). We
keep its 90/5/5 proportions with 200 trajectories (180/10/10) by default: 101 frames of
``128^2`` values are 13 MB per trajectory (noisy and clean), so 200 of them (2.6 GB) fit in
memory, and a fit within the 45-minute budget (~10^4 steps of one 64-frame window) visits each
of the 360 training windows ~30 times; more trajectories of the same family would mostly go
unseen. ``--n-traj`` takes any count.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from msde_ppl.data.cases._base import PDECase
from msde_ppl.data.cases._finite_volume import shallow_water_rhs, solve_shallow_water

_CELLS = 128
_WIDTH = 5.0


@dataclass(frozen=True)
class ShallowWater2D(PDECase):
    name = "shallow_water_2d"
    long_name = "height deviation h - 1"
    boundary = "dirichlet"
    pde = ("shallow water h_t + div(h u) = 0, (h u)_t + div(h u u) + grad(g h^2 / 2) = 0, "
           "g = 1, flat bottom, radial dam break; field h - 1")

    domain: tuple[float, ...] = (_WIDTH * (_CELLS - 1) / _CELLS,) * 2
    shape: tuple[int, ...] = (_CELLS, _CELLS)
    t_final: float = 1.0
    n_time: int = 101
    split: tuple[int, int, int] = (180, 10, 10)
    noise_std: float = 0.01
    coarse: tuple[int, ...] = (8, 8)
    eval_steps: int = 100
    batch_size: int = 20
    g: float = 1.0
    cfl: float = 0.45

    def coordinates(self, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, ...]:
        """Cell centres per axis, symmetric about 0 (first at ``-2.5 + dx/2`` on the fine
        grid; on a coarser grid the same span)."""
        shape = self.shape if shape is None else shape
        return tuple(-0.5 * length + np.arange(n) * h for n, h, length in
                     zip(shape, self.spacing(shape), self.domain, strict=True))

    def sample_ic_params(self, rng_key):
        return {"radius": jax.random.uniform(rng_key, (), jnp.float64, 0.3, 0.7)}

    def initial_condition(self, params, coords):
        x, y = coords
        r = jnp.sqrt(x[:, None] ** 2 + y[None, :] ** 2)
        return jnp.where(r < params["radius"], 1.0, 0.0)  # h - 1

    def state(self, field: jax.Array) -> jax.Array:
        """Conserved state ``(..., 3, Nx, Ny)`` at rest with height ``field + 1``."""
        h = field + 1.0
        return jnp.stack([h, jnp.zeros_like(h), jnp.zeros_like(h)], axis=-3)

    def rhs(self, u, spacing):
        """The finite-volume right-hand side of the conserved state ``u`` ``(..., 3, Nx,
        Ny)`` (not of the field alone: the momenta are part of the state)."""
        return shallow_water_rhs(u, tuple(spacing), self.g)

    def stable_dt(self, spacing, u_max):
        return self.cfl / (np.sqrt(self.g * (1.0 + u_max)) * sum(1.0 / h for h in spacing))

    def solve(self, u0: np.ndarray, spacing: tuple[float, ...], times: np.ndarray) -> np.ndarray:
        """The field ``h - 1`` ``(batch, time, *space)`` from the fluid at rest with height
        ``u0 + 1`` (``(batch, *space)``), at the uniform ``times``."""
        times = np.asarray(times, np.float64)
        with jax.enable_x64(True):
            state0 = self.state(jnp.asarray(u0, jnp.float64))
            path = solve_shallow_water(state0, tuple(float(h) for h in spacing),
                                       float(times[1] - times[0]), len(times), self.g,
                                       self.cfl)
            return np.moveaxis(np.asarray(path[..., 0, :, :]) - 1.0, 0, 1)
