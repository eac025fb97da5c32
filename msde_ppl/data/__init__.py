"""The data layer: schema and validation, netCDF I/O, built-in PDE datasets, coarse-graining,
splits and windows."""

from msde_ppl.data.cases import CASES, DEFAULT_CASE, PDECase, get_case
from msde_ppl.data.coarse import coarse_coordinates, interpolate, restrict
from msde_ppl.data.io import load, save
from msde_ppl.data.schema import (
    SchemaError,
    check_coarse,
    from_arrays,
    grid_shape,
    spatial_dims,
    validate,
)
from msde_ppl.data.splits import (
    first_snapshots,
    observations,
    select_split,
    with_held_out_splits,
)
from msde_ppl.data.windows import n_windows, random_windows, window_starts


def make_dataset(case: str, n_traj: int | None = None, seed: int = 0):
    """Generate the built-in dataset ``case`` (see :data:`CASES`) as an ``xarray.Dataset``."""
    return get_case(case).generate(n_traj=n_traj, seed=seed)


__all__ = [
    "CASES",
    "DEFAULT_CASE",
    "PDECase",
    "SchemaError",
    "check_coarse",
    "coarse_coordinates",
    "first_snapshots",
    "from_arrays",
    "get_case",
    "grid_shape",
    "interpolate",
    "load",
    "make_dataset",
    "n_windows",
    "observations",
    "random_windows",
    "restrict",
    "save",
    "select_split",
    "with_held_out_splits",
    "spatial_dims",
    "validate",
    "window_starts",
]
