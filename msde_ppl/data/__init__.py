"""The data layer: schema and validation, netCDF I/O, built-in PDE datasets, coarse-graining,
and the window sampler."""

from msde_ppl.data.cases import CASES, DEFAULT_CASE, PDECase, get_case
from msde_ppl.data.coarse import coarse_coordinates, interpolate, restrict
from msde_ppl.data.io import load, save
from msde_ppl.data.sampler import WindowSampler, window_starts
from msde_ppl.data.schema import (
    SchemaError,
    check_coarse,
    from_arrays,
    grid_shape,
    spatial_dims,
    validate,
)


def make_dataset(case: str, n_traj: int | None = None, seed: int = 0):
    """Generate the built-in dataset ``case`` (see :data:`CASES`) as an ``xarray.Dataset``."""
    return get_case(case).generate(n_traj=n_traj, seed=seed)


__all__ = [
    "CASES",
    "DEFAULT_CASE",
    "PDECase",
    "SchemaError",
    "WindowSampler",
    "check_coarse",
    "coarse_coordinates",
    "from_arrays",
    "get_case",
    "grid_shape",
    "interpolate",
    "load",
    "make_dataset",
    "restrict",
    "save",
    "spatial_dims",
    "validate",
    "window_starts",
]
