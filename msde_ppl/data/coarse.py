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
from scipy.interpolate import CubicSpline

from msde_ppl.data.schema import BOUNDARIES, SchemaError


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
