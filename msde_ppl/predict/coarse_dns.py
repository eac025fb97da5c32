"""The coarse-DNS (under-resolved direct numerical simulation) baseline (docs/method.md §7).

From each test trajectory's first (noisy) snapshot: restrict to the coarse grid
(:func:`msde_ppl.data.coarse.restrict`), solve the *same* semi-discrete PDE on the coarse grid
(the built-in case's right-hand side at the coarse spacing), and interpolate every output
snapshot back to the fine grid (periodic cubic spline in 1D, as the reference; tensor-product
not-a-knot cubic spline for Dirichlet data). The reference solves with LSODA at default
tolerances; we use the case's fixed-step RK4 under its stability limit.

Only datasets made by a built-in case can be baselined this way: the PDE must be known.
"""

from __future__ import annotations

import dataclasses
import time as _time
from collections.abc import Sequence

import numpy as np
import xarray as xr

from msde_ppl.data.cases import CASES, PDECase, get_case
from msde_ppl.data.coarse import interpolate, restrict
from msde_ppl.data.schema import SchemaError, check_coarse, spatial_dims, validate
from msde_ppl.data.splits import select_split
from msde_ppl.predict.metrics import point_forecast_metrics


def case_of(ds: xr.Dataset) -> PDECase:
    """The built-in case that produced ``ds``, with its stored PDE coefficients."""
    name = ds.attrs.get("case")
    if name not in CASES:
        raise SchemaError(
            "the coarse-DNS baseline needs the PDE that produced the data, but the dataset's "
            f"'case' attribute is {name!r}; built-in cases: {', '.join(sorted(CASES))}"
        )
    case = get_case(name)
    if not isinstance(case, PDECase):
        return case.for_dataset(ds)
    physical = {k: float(ds.attrs[k]) for k in case.physical_parameters() if k in ds.attrs}
    return dataclasses.replace(case, **physical)


def coarse_dns(
    ds: xr.Dataset,
    coarse: Sequence[int] | None = None,
    *,
    split: str | None = "test",
    method: str = "spline",
) -> xr.DataArray:
    """Coarse-DNS forecast of every trajectory of ``split``, on the fine grid.

    Args:
        ds: a dataset made by a built-in case.
        coarse: coarse size per spatial axis (default: the reference's for the case).
        split: which trajectories to forecast.
        method: interpolation back to the fine grid, ``"spline"`` or ``"fourier"``.

    Returns:
        ``DataArray`` with the dims, coordinates and shape of ``ds["u"]`` restricted to ``split``.
    """
    validate(ds)
    case = case_of(ds)
    if not isinstance(case, PDECase):  # the cylinder wake: its own kinetic solver
        return case.coarse_dns(select_split(ds, split))
    coarse = check_coarse(ds, case.coarse if coarse is None else coarse)
    ds = select_split(ds, split)
    if "field" in ds["u"].dims:
        raise SchemaError("built-in cases are single-field; this dataset has a 'field' dim")
    coords = [np.asarray(ds[d].values, dtype=np.float64) for d in spatial_dims(ds)]
    boundary = ds.attrs["boundary"]
    u0 = restrict(np.asarray(ds["u"].isel(time=0).values, np.float64), coords, coarse, boundary)
    path = case.solve(u0, case.spacing(coarse), np.asarray(ds["time"].values))
    fine = interpolate(path, coords, boundary, method).astype(ds["u"].dtype)
    return ds["u"].copy(data=fine)


def coarse_dns_grid(ds: xr.Dataset, coarse: Sequence[int] | None = None) -> list[int]:
    """The grid the coarse DNS of ``ds`` solves on (the case's own lattice for the cylinder,
    else ``coarse`` or the case's coarse grid)."""
    case = case_of(ds)
    if not isinstance(case, PDECase):
        return list(case.coarse_dns_grid)
    return list(check_coarse(ds, case.coarse if coarse is None else coarse))


def evaluate_coarse_dns(
    ds: xr.Dataset,
    coarse: Sequence[int] | None = None,
    *,
    split: str | None = "test",
    method: str = "spline",
) -> dict:
    """Run :func:`coarse_dns` and score it as in docs/method.md §7 (``metrics.json`` entry);
    ``split=None`` scores every trajectory."""
    start = _time.perf_counter()
    pred = coarse_dns(ds, coarse, split=split, method=method)
    wall = _time.perf_counter() - start
    result = point_forecast_metrics(select_split(ds, split), pred,
                                    ds.attrs.get("eval_steps"))
    result.update({
        "coarse": coarse_dns_grid(ds, coarse),
        "interpolation": method,
        "wall_time_s": wall,
        "fit_wall_time_s": 0.0,
        "predict_wall_time_s": wall,
    })
    return result
