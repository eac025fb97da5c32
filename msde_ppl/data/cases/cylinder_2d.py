"""Cylinder wake at Re = 160 (docs/method.md §5.4), by our own lattice Boltzmann solver.

The channel ``x in [-0.5, 7.5]``, ``y in [-0.5, 0.5]`` holds a cylinder of diameter 0.125 at
the origin; a uniform stream ``U = 1`` enters on the left, the walls are free-slip, the outlet
convective; ``Re = U D / nu = 160`` (:mod:`msde_ppl.data.cases._lattice_boltzmann`: D2Q9,
regularized BGK, 20 cells per diameter, lattice velocity 0.08). The flow starts uniform with a
small transverse kick behind the cylinder and runs ``spinup`` = 20 time units (160 D/U: the
shedding is periodic by then, its lift amplitude steady) before ``t = 0``; the velocity ``(u, v)``
averaged onto cells of side 0.0125 is saved every ``dt = 0.01`` for ``t in [0, 15]`` (1501
frames), and the first 320 columns (``x < 3.5``) are kept: dims ``(traj, time, field, x, y)``,
one trajectory, fields ``u`` and ``v``, no added noise.

The split is in time, as the reference's: train ``t <= 13`` (1301 frames), val ``(13, 14]``,
test ``(14, 15]`` (100 frames each; the test forecast starts from the first test frame).
"""

from __future__ import annotations

import dataclasses
import time as _time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import xarray as xr

from msde_ppl.data.cases._lattice_boltzmann import CylinderChannel, simulate


@dataclass(frozen=True)
class Cylinder2D:
    """The cylinder-wake dataset (module docstring). Not a :class:`PDECase`: the flow has no
    family of initial conditions (one record, split in time) and its solver is kinetic."""

    name: ClassVar[str] = "cylinder_2d"
    long_name: ClassVar[str] = "velocity"
    boundary: ClassVar[str] = "dirichlet"
    pde: ClassVar[str] = ("incompressible Navier-Stokes, flow past a cylinder in a channel, "
                          "Re = U D / nu = 160, D = 0.125, H = 1, U = 1, slip walls")

    channel: CylinderChannel = CylinderChannel()
    spinup: float = 20.0
    t_final: float = 15.0
    dt: float = 0.01
    output_dx: float = 0.0125
    n_columns: int = 320
    split_times: tuple[float, float] = (13.0, 14.0)  # train t <= 13, val (13, 14], test after
    coarse: tuple[int, ...] = (32, 8)  # the reference's 8 x 32 (x first here)
    eval_steps: int = 100
    noise_std: float = 0.0
    coarse_dns_cells: int = 5  # cells per diameter of the coarse-DNS lattice

    @property
    def coarse_dns_grid(self) -> tuple[int, int]:
        """The coarse-DNS lattice over the kept columns, ``(x, y)``."""
        factor = round(self._coarse_channel().dx / self.output_dx)
        return self.shape[0] // factor, self.shape[1] // factor

    def for_dataset(self, ds: xr.Dataset) -> Cylinder2D:
        """This case with the flow and sampling of ``ds`` (its Reynolds number, diameter and
        lattice from the attributes; the snapshot interval, cell size and kept columns from
        its coordinates), so the coarse DNS solves the flow that made the data."""
        t = np.asarray(ds["time"].values, np.float64)
        x = np.asarray(ds["x"].values, np.float64)
        steps, cells = np.diff(t), np.diff(x)
        if t.size < 2 or np.ptp(steps) > 1e-6 * steps.mean() or np.ptp(cells) > 1e-6 * cells[0]:
            raise ValueError("the cylinder's coarse DNS needs equally spaced snapshots and "
                             "cells")
        channel = dataclasses.replace(self.channel, **{
            k: type(getattr(self.channel, k))(ds.attrs[k])
            for k in ("reynolds", "diameter", "cells_per_diameter") if k in ds.attrs})
        return dataclasses.replace(self, channel=channel, dt=float(steps.mean()),
                                   output_dx=float(cells[0]), n_columns=x.size)

    def _coarse_channel(self) -> CylinderChannel:
        return dataclasses.replace(self.channel, cells_per_diameter=self.coarse_dns_cells)

    def coarse_dns(self, sel: xr.Dataset) -> xr.DataArray:
        """The coarse-DNS baseline of the trajectories of ``sel`` (a split of the dataset):
        the same lattice Boltzmann scheme with ``coarse_dns_cells`` cells per diameter (the
        coarsest lattice that still resolves the cylinder and stays stable: 5, i.e. cells of
        0.025, 2 x 2 data cells), started from each trajectory's first snapshot averaged onto
        it (the stream ``(U, 0)`` beyond the kept columns, populations at equilibrium), and
        interpolated back by tensor-product cubic splines."""
        from scipy.interpolate import RectBivariateSpline

        coarse = self._coarse_channel()
        factor = coarse.dx / self.output_dx
        if abs(factor - round(factor)) > 1e-9 or round(factor) < 1:
            raise ValueError(f"the coarse lattice ({coarse.dx:g}) is not a whole number of "
                             f"data cells ({self.output_dx:g})")
        k = round(factor)
        u = np.asarray(sel["u"].transpose("traj", "time", "field", "x", "y").values, np.float64)
        n_traj, n_time, _, nx, ny = u.shape
        x = np.asarray(sel["x"].values, np.float64)
        y = np.asarray(sel["y"].values, np.float64)
        out = np.empty_like(u)
        for i in range(n_traj):
            start = u[i, 0].reshape(2, nx // k, k, ny // k, k).mean((2, 4))
            lattice = np.stack([np.full(coarse.shape, self.channel.inflow),
                                np.zeros(coarse.shape)])
            lattice[:, : start.shape[1]] = start
            run = simulate(coarse, 0.0, (n_time - 2) * self.dt, self.dt, output_dx=coarse.dx,
                           n_columns=start.shape[1], initial_velocity=lattice)
            out[i, 0] = u[i, 0]
            for t in range(1, n_time):
                for c in range(2):
                    spline = RectBivariateSpline(run["x"], run["y"], run["u"][t - 1, c])
                    out[i, t, c] = spline(x, y)
        dims = ("traj", "time", "field", "x", "y")
        return sel["u"].copy(data=xr.DataArray(out, dims=dims).transpose(*sel["u"].dims)
                             .values.astype(sel["u"].dtype))

    @property
    def n_time(self) -> int:
        return round(self.t_final / self.dt) + 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_columns, round(self.channel.height / self.output_dx)

    def generate(self, n_traj: int | None = None, seed: int = 0) -> xr.Dataset:
        """The dataset (one trajectory; ``seed`` is recorded, the flow is deterministic)."""
        return next(self.generate_batches(n_traj, seed))

    def generate_batches(self, n_traj: int | None = None, seed: int = 0):
        if n_traj not in (None, 1):
            raise ValueError(f"{self.name} is one record of the flow (a split in time): "
                             f"n_traj must be 1, got {n_traj}")
        from msde_ppl.data.schema import from_arrays

        start = _time.perf_counter()
        out = simulate(self.channel, self.spinup, self.t_final, self.dt,
                       output_dx=self.output_dx, n_columns=self.n_columns)
        if not out["finite"]:
            raise FloatingPointError("the lattice Boltzmann run went non-finite")
        t = out["time"]
        labels = np.where(t <= self.split_times[0] + 1e-9, "train",
                          np.where(t <= self.split_times[1] + 1e-9, "val", "test"))
        u = out["u"][None].astype(np.float32)  # (1, time, 2, x, y)
        tail = slice(len(out["drag"]) // 2, None)
        yield from_arrays(
            u, time=t, x=out["x"], y=out["y"], boundary=self.boundary,
            domain=[(n - 1) * self.output_dx for n in self.shape], u_clean=u,
            split=labels, split_over="time", fields=["u", "v"], noise_std=0.0,
            source=f"msde_ppl built-in case '{self.name}' (seed {seed}): {self.pde}",
            long_name=self.long_name,
            units={"u": "1", "time": "1", "x": "1", "y": "1"},
            extra_attrs={
                "case": self.name, "seed": int(seed), "eval_steps": self.eval_steps,
                "coarse_reference": np.asarray(self.coarse, np.int64),
                "reynolds": self.channel.reynolds, "diameter": self.channel.diameter,
                "cells_per_diameter": self.channel.cells_per_diameter,
                "lattice_dt": out["dt"], "tau": out["tau"], "spinup": self.spinup,
                "drag_coefficient_mean": float(np.mean(out["drag"][tail])),
                "solver_wall_time_s": _time.perf_counter() - start,
            },
        )
