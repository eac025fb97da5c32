"""The common shape of a built-in test case: a PDE, its grid, its initial conditions, its data.

A case knows its semi-discrete right-hand side at *any* resolution (so the same discretised PDE
serves to make the fine-grid data and the coarse-DNS baseline), how to draw a trajectory's
initial condition from a key, and the dataset protocol of the reference (time grid, split sizes,
observation noise, coarse grid, evaluation horizon).

Determinism: trajectory ``i`` of a dataset made with seed ``s`` depends only on ``(s, i)``
(its key is ``fold_in(key(s), i)``), so asking for more trajectories extends a dataset and never
changes the ones it already had. Solvers run in float64; data are stored in float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from msde_ppl.data.cases._timestep import integrate, substeps_for

SPLITS = ("train", "val", "test")


def split_counts(n_traj: int, reference: tuple[int, int, int]) -> tuple[int, int, int]:
    """Split ``n_traj`` trajectories in the reference's train/val/test proportions.

    Largest-remainder rounding; every split gets at least one trajectory when ``n_traj >= 3``
    (with fewer, the earliest splits are filled first).
    """
    if n_traj < 1:
        raise ValueError(f"n_traj must be at least 1, got {n_traj}")
    total = sum(reference)
    exact = [n_traj * r / total for r in reference]
    counts = [int(np.floor(e)) for e in exact]
    order = np.argsort([-(e - c) for e, c in zip(exact, counts, strict=True)], kind="stable")
    for i in order[: n_traj - sum(counts)]:
        counts[i] += 1
    if n_traj >= 3:
        for i in range(3):
            if counts[i] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[i] += 1
    else:
        counts = [min(1, max(0, n_traj - i)) for i in range(3)]
    return counts[0], counts[1], counts[2]


@dataclass(frozen=True)
class PDECase:
    """Base class of the built-in cases. Subclasses set the class variables and implement
    :meth:`sample_ic_params`, :meth:`initial_condition`, :meth:`rhs` and :meth:`stable_dt`."""

    name: ClassVar[str]
    boundary: ClassVar[str]  # "periodic" or "dirichlet"
    pde: ClassVar[str]  # the equation, for the dataset's attributes
    long_name: ClassVar[str] = "solution u"  # what the field is, for figures

    domain: tuple[float, ...]
    shape: tuple[int, ...]  # fine grid
    t_final: float
    n_time: int
    split: tuple[int, int, int]
    noise_std: float
    coarse: tuple[int, ...]  # the reference's coarse grid
    eval_steps: int  # leading time steps entering the reference's error metric
    batch_size: int = 8  # trajectories solved together (bounds solver memory)

    # ----------------------------------------------------------------- grid
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def spacing(self, shape: tuple[int, ...] | None = None) -> tuple[float, ...]:
        """Grid spacing per axis: ``L/N`` (periodic) or ``L/(N-1)`` (Dirichlet, ends included)."""
        shape = self.shape if shape is None else shape
        off = 0 if self.boundary == "periodic" else 1
        return tuple(length / (n - off) for length, n in zip(self.domain, shape, strict=True))

    def coordinates(self, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, ...]:
        """Node coordinates per axis (float64), starting at 0."""
        shape = self.shape if shape is None else shape
        return tuple(np.arange(n) * h for n, h in zip(shape, self.spacing(shape), strict=True))

    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.t_final, self.n_time)

    # ------------------------------------------------------------ physics
    def sample_ic_params(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        """Draw one trajectory's initial-condition parameters."""
        raise NotImplementedError

    def initial_condition(self, params: dict, coords: tuple[jax.Array, ...]) -> jax.Array:
        """The initial field on the grid ``coords`` for one parameter set, shape ``space``."""
        raise NotImplementedError

    def rhs(self, u: jax.Array, spacing: tuple[float, ...]) -> jax.Array:
        """Semi-discrete right-hand side ``du/dt`` on a grid of the given spacing.

        Acts on the trailing ``ndim`` axes; any leading axes are batch axes.
        """
        raise NotImplementedError

    def stable_dt(self, spacing: tuple[float, ...], u_max: float) -> float:
        """A step that keeps explicit RK4 stable for fields bounded by ``u_max``."""
        raise NotImplementedError

    def solve(self, u0: np.ndarray, spacing: tuple[float, ...], times: np.ndarray) -> np.ndarray:
        """Solve the semi-discrete PDE from ``u0`` (``(batch, *space)``) at uniform ``times``.

        Fixed-step RK4 in float64 with the smallest number of equal substeps per output interval
        that respects :meth:`stable_dt`. Returns float64 ``(batch, time, *space)``.
        """
        times = np.asarray(times, dtype=np.float64)
        dt_out = float(times[1] - times[0])
        with jax.enable_x64(True):
            u0 = jnp.asarray(u0, dtype=jnp.float64)
            u_max = max(float(jnp.max(jnp.abs(u0))), 1e-12)
            substeps = substeps_for(dt_out, self.stable_dt(spacing, u_max))
            path = integrate(
                _BoundRhs(self, spacing), u0, dt_out, len(times), substeps, scheme="rk4"
            )
            return np.moveaxis(np.asarray(path), 0, 1)

    def clean_trajectories(self, keys: jax.Array) -> np.ndarray:
        """Noise-free fine-grid trajectories for per-trajectory keys, ``(n, time, *space)``."""
        with jax.enable_x64(True):
            coords = tuple(jnp.asarray(c) for c in self.coordinates())
            params = jax.vmap(self.sample_ic_params)(keys)
            u0 = jax.vmap(lambda p: self.initial_condition(p, coords))(params)
        return self.solve(np.asarray(u0), self.spacing(), self.times())

    # -------------------------------------------------------------- data
    def generate(self, n_traj: int | None = None, seed: int = 0) -> xr.Dataset:
        """Make the dataset: ``u`` (noisy, float32), ``u_clean``, ``split``, attributes.

        Observation noise is i.i.d. ``N(0, noise_std^2)`` per grid value, as in the reference.
        """
        parts = list(self.generate_batches(n_traj, seed))
        return parts[0] if len(parts) == 1 else xr.concat(parts, dim="traj",
                                                          combine_attrs="override")

    def generate_batches(self, n_traj: int | None = None, seed: int = 0):
        """The dataset of :meth:`generate` as consecutive datasets of ``batch_size``
        trajectories (the same values and split labels): what a file larger than memory is
        written from, one batch at a time (:func:`msde_ppl.data.io.save_batches`)."""
        n_traj = sum(self.split) if n_traj is None else int(n_traj)
        if n_traj < 1:
            raise ValueError(f"n_traj must be at least 1, got {n_traj}")
        root = jax.random.key(seed)
        traj_keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(n_traj))
        ic_keys, noise_keys = jax.vmap(lambda k: jax.random.split(k))(traj_keys).swapaxes(0, 1)
        labels = np.repeat(np.array(SPLITS), split_counts(n_traj, self.split))
        for start in range(0, n_traj, self.batch_size):
            sl = slice(start, start + self.batch_size)
            clean = self.clean_trajectories(ic_keys[sl])
            with jax.enable_x64(True):
                draw = partial(jax.random.normal, shape=clean.shape[1:], dtype=jnp.float64)
                noise = jax.vmap(draw)(noise_keys[sl])
            noisy = clean + self.noise_std * np.asarray(noise)
            yield self._dataset(noisy.astype(np.float32), clean.astype(np.float32),
                                labels[sl], seed)

    def _dataset(self, u: np.ndarray, u_clean: np.ndarray, labels: np.ndarray,
                 seed: int) -> xr.Dataset:
        from msde_ppl.data.schema import from_arrays

        coords = self.coordinates()
        return from_arrays(
            u,
            time=self.times(),
            x=coords[0],
            y=coords[1] if self.ndim == 2 else None,
            boundary=self.boundary,
            domain=self.domain,
            u_clean=u_clean,
            split=labels,
            noise_std=self.noise_std,
            source=f"msde_ppl built-in case '{self.name}' (seed {seed}): {self.pde}",
            long_name=self.long_name,
            # nondimensional equations: unit "1" (CF convention for dimensionless)
            units={name: "1" for name in ("u", "time", "x", "y")[: 3 + (self.ndim == 2)]},
            extra_attrs={
                "case": self.name,
                "seed": int(seed),
                "eval_steps": int(min(self.eval_steps, self.n_time)),
                "coarse_reference": np.asarray(self.coarse, dtype=np.int64),
                **{k: v for k, v in self.physical_parameters().items()},
            },
        )

    def physical_parameters(self) -> dict[str, float]:
        """PDE coefficients, stored as dataset attributes."""
        return {
            f.name: float(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in _PROTOCOL_FIELDS
        }


_PROTOCOL_FIELDS = {
    "domain",
    "shape",
    "t_final",
    "n_time",
    "split",
    "noise_std",
    "coarse",
    "eval_steps",
    "batch_size",
}


class _BoundRhs:
    """A hashable ``u -> rhs(u, spacing)`` so ``integrate`` compiles once per (case, grid)."""

    def __init__(self, case: PDECase, spacing: tuple[float, ...]):
        self.case, self.spacing = case, tuple(float(h) for h in spacing)

    def __call__(self, u: jax.Array) -> jax.Array:
        return self.case.rhs(u, self.spacing)

    def __hash__(self) -> int:
        return hash((self.case, self.spacing))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _BoundRhs)
            and self.case == other.case
            and self.spacing == other.spacing
        )


def central_diff(u: jax.Array, h: float, axis: int) -> jax.Array:
    """Periodic second-order central first derivative ``(u_{i+1} - u_{i-1}) / 2h``."""
    return (jnp.roll(u, -1, axis) - jnp.roll(u, 1, axis)) / (2.0 * h)


def central_second_diff(u: jax.Array, h: float, axis: int) -> jax.Array:
    """Periodic second-order second derivative ``(u_{i+1} - 2u_i + u_{i-1}) / h^2``."""
    return (jnp.roll(u, -1, axis) - 2.0 * u + jnp.roll(u, 1, axis)) / (h * h)
