"""Data larger than memory: a split read a few trajectories, or one window, at a time.

A dataset opened with :func:`msde_ppl.data.load` ``(lazy=True)`` (the default for a file whose
observations exceed :data:`LAZY_BYTES`) keeps its arrays in the file: indexing reads only the
requested slice (xarray's lazy backend indexing over h5netcdf). Whatever touches a whole split
goes through this module instead of ``.values``:

- :func:`trajectory_blocks`: a variable as consecutive blocks of trajectories of at most
  ``max_bytes`` each (the schema's finiteness check, the data range, the training digest, the
  climatology, the dissipative drift's initial bounds);
- :class:`WindowReader`: the training minibatches, read window by window from the file inside
  the jitted step (``jax.pure_callback``): peak memory is one step's windows, not the split.

For an in-memory dataset the same functions work on its arrays (views, no copies).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

__all__ = ["BLOCK_BYTES", "LAZY_BYTES", "WindowReader", "in_memory", "trajectory_blocks"]

#: Largest block of trajectories read at once by :func:`trajectory_blocks`.
BLOCK_BYTES = 256 * 2**20
#: Observations larger than this are opened lazily by ``load`` and trained on window by window.
LAZY_BYTES = 2 * 2**30


def in_memory(da: xr.DataArray) -> bool:
    """Whether ``da``'s values are in memory (not a lazy view of a file)."""
    return bool(da.variable._in_memory)


def trajectory_blocks(da: xr.DataArray, max_bytes: int = BLOCK_BYTES,
                      dtype=None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, values)`` of consecutive blocks of ``da`` along ``traj`` (all of ``da`` at
    once if it has no ``traj`` dim), each at most ``max_bytes`` (one trajectory at least);
    ``values`` keep ``da``'s axis order, cast to ``dtype`` if given."""
    if "traj" not in da.dims:
        yield 0, np.asarray(da.values, dtype)
        return
    n = da.sizes["traj"]
    per_traj = max(1, da.nbytes // max(n, 1))
    step = max(1, int(max_bytes // per_traj))
    for start in range(0, n, step):
        yield start, np.asarray(da.isel(traj=slice(start, start + step)).values, dtype)


class WindowReader:
    """Training windows read from (a lazily opened) ``u`` of selected trajectories.

    ``reader(traj, start)`` inside traced code (``traj``, ``start``: ``(B,)`` int32) returns
    ``(B, M, C, *fine)`` float32 windows ``u[trajectories[traj[b]], start[b] : start[b] + M]``
    by ``jax.pure_callback``: the host reads exactly those slices, so a jitted training step
    sees the same batches as with the split in memory, and the memory held is one batch.
    """

    def __init__(self, u: xr.DataArray, trajectories: np.ndarray, window: int):
        self._u = u.transpose("traj", "time", *(d for d in u.dims if d not in ("traj", "time")))
        self._field = "field" in u.dims
        self._traj = np.asarray(trajectories, np.int64)
        self.window = int(window)
        spatial = [self._u.sizes[d] for d in self._u.dims[2:]]
        self.item_shape = (self.window, *([] if self._field else [1]), *spatial)

    @property
    def n_traj(self) -> int:
        return len(self._traj)

    @property
    def n_time(self) -> int:
        return int(self._u.sizes["time"])

    def read(self, traj: np.ndarray, start: np.ndarray) -> np.ndarray:
        """The windows of (local) trajectories ``traj`` from ``start`` (host side)."""
        out = np.empty((len(traj), *self.item_shape), np.float32)
        for b, (i, s) in enumerate(zip(np.asarray(traj), np.asarray(start), strict=True)):
            part = self._u.isel(traj=int(self._traj[i]), time=slice(int(s), int(s) + self.window))
            values = np.asarray(part.values, np.float32)
            out[b] = values if self._field else values[:, None]
        return out

    def __call__(self, traj: jax.Array, start: jax.Array) -> jax.Array:
        shape = jax.ShapeDtypeStruct((traj.shape[0], *self.item_shape), jnp.float32)
        return jax.pure_callback(self.read, shape, traj, start)
