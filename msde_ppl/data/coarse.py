"""Coarse-graining: restriction of fine fields to a coarse grid and interpolation back.

Coarse nodes (one size ``n`` per spatial axis, fine size ``N``, ``N % n == 0``):

- periodic axis: ``n`` equally spaced nodes on the period starting at the first fine node, i.e.
  fine indices ``0, s, 2s, ...`` with stride ``s = N / n``; restriction is exact subsampling
  ``u[::s]`` (the reference's coarse-DNS initial condition, docs/method.md §7);
- Dirichlet axis: ``n`` equally spaced nodes from the first to the last fine node (both
  boundaries are coarse nodes, so boundary data carry over); restriction evaluates the fine
  field's not-a-knot cubic spline at those nodes (exact for cubic polynomials).

Interpolation back to the fine grid, axis by axis (a tensor-product interpolant in 2D):

- ``"spline"`` (default): periodic cubic spline on periodic axes (the reference's choice),
  not-a-knot cubic spline on Dirichlet axes (reproduces cubic polynomials exactly);
- ``"fourier"`` (periodic axes only): trigonometric interpolation, exact for band-limited
  signals whose wavenumbers are below ``n / 2``.

These are NumPy/SciPy post-processing operators for baselines and plots; the learned
restriction/prolongation of the model lives in ``msde_ppl.generative``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy.interpolate import CubicSpline

from msde_ppl.data.schema import BOUNDARIES, SchemaError, spatial_dims
from msde_ppl.data.splits import evenly_spread, select_split, split_names


def coarse_coordinates(x: np.ndarray, n: int, boundary: str) -> np.ndarray:
    """Coarse node coordinates along one axis with fine coordinates ``x`` (uniform)."""
    _check_boundary(boundary)
    x = np.asarray(x, dtype=np.float64)
    big_n = x.size
    if n < 2 or big_n % n:
        raise SchemaError(f"coarse size {n} does not divide the fine grid size {big_n}")
    if boundary == "periodic":
        return x[:: big_n // n].copy()
    return np.linspace(x[0], x[-1], n)


def restrict(
    u: np.ndarray, coords: Sequence[np.ndarray], coarse: Sequence[int], boundary: str
) -> np.ndarray:
    """Restrict a field on the trailing ``len(coords)`` axes to the coarse grid ``coarse``.

    Args:
        u: fine field, shape ``(..., *fine)``.
        coords: fine coordinates per spatial axis.
        coarse: coarse size per spatial axis.
        boundary: ``"periodic"`` or ``"dirichlet"``.

    Returns:
        Coarse field, shape ``(..., *coarse)``.
    """
    u = np.asarray(u)
    n_axes = len(coords)
    _check_shapes(u, coords, coarse)
    for i, (x, n) in enumerate(zip(coords, coarse, strict=True)):
        axis = u.ndim - n_axes + i
        xc = coarse_coordinates(x, n, boundary)
        if boundary == "periodic":
            u = np.take(u, np.arange(0, x.size, x.size // n), axis=axis)
        else:
            u = CubicSpline(x, u, axis=axis, bc_type="not-a-knot")(xc)
    return u


def interpolate(
    u_coarse: np.ndarray,
    coords: Sequence[np.ndarray],
    boundary: str,
    method: str = "spline",
) -> np.ndarray:
    """Interpolate a coarse field (trailing axes) to the fine nodes ``coords``.

    Args:
        u_coarse: coarse field, shape ``(..., *coarse)``.
        coords: fine coordinates per spatial axis (the coarse nodes follow from them).
        boundary: ``"periodic"`` or ``"dirichlet"``.
        method: ``"spline"`` or ``"fourier"`` (periodic only).

    Returns:
        Fine field, shape ``(..., *fine)``.
    """
    _check_boundary(boundary)
    if method not in ("spline", "fourier"):
        raise ValueError(f"unknown interpolation method {method!r}; use 'spline' or 'fourier'")
    if method == "fourier" and boundary != "periodic":
        raise ValueError("Fourier interpolation needs a periodic boundary")
    u = np.asarray(u_coarse)
    n_axes = len(coords)
    for i, x in enumerate(coords):
        axis = u.ndim - n_axes + i
        x = np.asarray(x, dtype=np.float64)
        n = u.shape[axis]
        xc = coarse_coordinates(x, n, boundary)
        if method == "fourier":
            u = _fourier_upsample(u, x.size, axis)
        elif boundary == "periodic":
            period = x.size * (x[1] - x[0])
            closed = np.concatenate([u, np.take(u, [0], axis=axis)], axis=axis)
            spline = CubicSpline(np.append(xc, xc[0] + period), closed, axis=axis,
                                 bc_type="periodic")
            u = spline(x)
        else:
            u = CubicSpline(xc, u, axis=axis, bc_type="not-a-knot")(x)
    return u


def resolution_floor(
    u: np.ndarray, coords: Sequence[np.ndarray], coarse: Sequence[int], boundary: str
) -> float:
    r"""How much of a field a coarse grid cannot carry: the pooled relative L2 error
    :math:`\lVert u - \Pi u\rVert / \lVert u\rVert` of its reconstruction from the coarse grid.

    - periodic axes: :math:`\Pi` keeps the Fourier modes the coarse grid holds, on an axis of
      ``n`` coarse nodes :math:`|k| < n/2` and, for even ``n``, the cosine part of
      :math:`|k| = n/2` (the sine vanishes on every node), and drops the rest. It is the
      L2-best reconstruction from those modes, so for the decaying spectra of PDE data a linear
      decoder of ``n`` coarse values does no better (the learned Gaussian kernel ``P`` does a
      little worse): the model's forecast of the full field (before the calibration's residual
      persistence, :mod:`msde_ppl.predict.calibration`) starts about this far off unless a
      micro state carries the rest;
    - Dirichlet axes: :math:`\Pi` = :func:`interpolate` after :func:`restrict` (splines
      through the coarse nodes), an estimate rather than a bound.

    Args:
        u: fine field, shape ``(..., *fine)`` (any leading axes: trajectories, times, fields).
        coords: fine coordinates per spatial axis.
        coarse: coarse size per spatial axis.
        boundary: ``"periodic"`` or ``"dirichlet"``.

    Returns:
        The relative error, 0 for a field the coarse grid holds exactly (and for a zero field).
    """
    return _relative(*_dropped_energy(u, coords, coarse, boundary))


def _relative(dropped: float, total: float) -> float:
    """``sqrt(dropped / total)``, 0 for a zero field."""
    return 0.0 if total == 0 else float(np.sqrt(dropped / total))


def _dropped_energy(u, coords, coarse, boundary) -> tuple[float, float]:
    """``(|u - Pi u|^2, |u|^2)`` of :func:`resolution_floor`."""
    _check_boundary(boundary)
    u = np.asarray(u, dtype=np.float64)
    _check_shapes(u, coords, coarse)
    for x, n in zip(coords, coarse, strict=True):
        coarse_coordinates(x, n, boundary)  # n divides the fine size
    if boundary == "periodic":
        kept = u
        for i, n in enumerate(coarse):
            axis = u.ndim - len(coarse) + i
            k = np.abs(np.fft.fftfreq(u.shape[axis], 1.0 / u.shape[axis]))
            shape = [1] * u.ndim
            shape[axis] = k.size
            spec = np.fft.fft(kept, axis=axis)
            # the nodes start at fine index 0, so the Nyquist cosine is the real part
            spec = (np.where((k < n / 2).reshape(shape), spec, 0)
                    + np.where((k == n / 2).reshape(shape), spec.real, 0))
            kept = np.real(np.fft.ifft(spec, axis=axis))
    else:
        kept = interpolate(restrict(u, coords, coarse, boundary), coords, boundary)
    return float(np.sum((u - kept) ** 2)), float(np.sum(u ** 2))


def resolution_floors(
    ds: xr.Dataset, grids: Sequence[Sequence[int]], split: str | None = "train",
    n_traj: int = 16, n_time: int = 16,
) -> dict[tuple[int, ...], float]:
    """:func:`resolution_floor` of the field for each coarse grid of ``grids`` (``u_clean``
    when the dataset has it: observation noise is not a scale any grid should hold, else the
    observed ``u``), on a sample of ``split`` (all of ``ds`` without labels): up to ``n_traj``
    trajectories and ``n_time`` snapshots each, evenly spread, pooled over them and every
    field. One trajectory's snapshots are read at a time (a file larger than memory stays on
    disk)."""
    if split is not None and split in split_names(ds):
        ds = select_split(ds, split)
    dims = spatial_dims(ds)
    field = ds["u_clean" if "u_clean" in ds else "u"].isel(
        time=evenly_spread(ds.sizes["time"], n_time))
    coords = [np.asarray(ds[d].values) for d in dims]
    sums = {tuple(int(n) for n in g): np.zeros(2) for g in grids}
    for i in evenly_spread(ds.sizes["traj"], n_traj):
        u = field.isel(traj=int(i)).transpose(..., *dims).values
        for g in sums:
            sums[g] += _dropped_energy(u, coords, g, ds.attrs["boundary"])
    return {g: _relative(*sums[g]) for g in sums}


def coarser_grids(fine: Sequence[int], minimum: int = 4) -> list[tuple[int, ...]]:
    """The coarse grids with one ratio ``s > 1`` shared by every axis (``s`` divides every fine
    size, at least ``minimum`` nodes per axis), finest first."""
    ratios = [s for s in range(2, min(fine) // minimum + 1) if all(n % s == 0 for n in fine)]
    return [tuple(n // s for n in fine) for s in ratios]


def _fourier_upsample(u: np.ndarray, big_n: int, axis: int) -> np.ndarray:
    """Trigonometric interpolation from ``n`` to ``big_n`` equispaced periodic samples.

    The Nyquist coefficient of an even ``n`` is split evenly between ``+n/2`` and ``-n/2`` so the
    interpolant is real and symmetric.
    """
    spec = np.moveaxis(np.fft.fft(u, axis=axis), axis, 0)
    n = spec.shape[0]
    half = n // 2
    out = np.zeros((big_n, *spec.shape[1:]), dtype=complex)
    out[: n - half] = spec[: n - half]  # wavenumbers 0 .. ceil(n/2) - 1
    out[big_n - half :] = spec[n - half :]  # wavenumbers -floor(n/2) .. -1
    if n % 2 == 0:
        out[half] = 0.5 * spec[half]
        out[big_n - half] = 0.5 * spec[half]
    fine = np.real(np.fft.ifft(out, axis=0)) * (big_n / n)
    return np.moveaxis(fine, 0, axis)


def _check_boundary(boundary: str) -> None:
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; expected one of {BOUNDARIES}")


def _check_shapes(u: np.ndarray, coords: Sequence[np.ndarray], coarse: Sequence[int]) -> None:
    if len(coarse) != len(coords):
        raise SchemaError(f"coarse size {tuple(coarse)} does not match {len(coords)} spatial axes")
    fine = u.shape[u.ndim - len(coords):]
    if fine != tuple(np.size(x) for x in coords):
        raise SchemaError(f"field's spatial shape {fine} does not match its coordinates")
