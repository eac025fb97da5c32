"""netCDF storage of datasets (xarray + h5netcdf, zlib-compressed).

Writing goes to a temporary file in the target folder that is renamed into place only once
complete (:mod:`msde_ppl.atomic`), so a failed write never leaves a half-written file or
destroys an existing one; an existing file is replaced only when asked (``overwrite=True``).
Files get the mode the user's umask gives.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xarray as xr

from msde_ppl.atomic import atomic_file
from msde_ppl.data.schema import validate

ENGINE = "h5netcdf"
_VECTOR_ATTRS = {"domain", "coarse_reference"}


def save(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate ``ds`` and write it to ``path`` (netCDF4, float variables zlib-compressed).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        SchemaError: ``ds`` is not a valid dataset.
    """
    validate(ds)
    path = _check_target(Path(path), overwrite)
    with atomic_file(path) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE, encoding=_encoding(ds))
    return path


def save_batches(batches: Iterable[xr.Dataset], path: str | os.PathLike, *,
                 overwrite: bool = False) -> tuple[Path, int]:
    """Write consecutive batches of trajectories (datasets alike but for their ``traj``
    extent, e.g. :meth:`~msde_ppl.data.cases.PDECase.generate_batches`) into one file, holding
    one batch in memory at a time: the first batch makes the file with an unlimited ``traj``
    dimension, the others are appended to it. Atomic and overwrite-safe as :func:`save`.
    Returns the path and the number of trajectories written."""
    import h5netcdf

    path = _check_target(Path(path), overwrite)
    it = iter(batches)
    first = validate(next(it))
    n = first.sizes["traj"]
    with atomic_file(path) as tmp:
        first.to_netcdf(tmp, engine=ENGINE, encoding=_encoding(first), unlimited_dims=["traj"])
        along = [name for name, var in first.variables.items() if "traj" in var.dims]
        del first
        with h5netcdf.File(tmp, "a") as f:
            for batch in it:
                validate(batch)
                k = batch.sizes["traj"]
                f.resize_dimension("traj", n + k)
                for name in along:
                    values = batch[name].values
                    if values.dtype.kind == "U":  # split labels: stored as variable-length text
                        values = values.astype(object)
                    f.variables[name][n:n + k] = values
                n += k
    return path, n


def _check_target(path: Path, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; refusing to overwrite it (choose another path or pass "
            "overwrite=True)"
        )
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    return path


def _encoding(ds: xr.Dataset) -> dict:
    """zlib level 4 for the float arrays, chunked by :func:`_chunks`."""
    return {name: {"zlib": True, "complevel": 4, **_chunks(var)}
            for name, var in ds.variables.items()
            if np.issubdtype(var.dtype, np.floating) and var.ndim >= 2}


def _chunks(var: xr.Variable) -> dict:
    """HDF5 chunks of one trajectory and at most 16 snapshots (whole fields) for the
    observations, so a training window or a trajectory reads only its own chunks."""
    if var.dims[:2] != ("traj", "time"):
        return {}
    return {"chunksizes": (1, min(16, var.shape[1]), *var.shape[2:])}


def load(path: str | os.PathLike, *, lazy: bool | None = None) -> xr.Dataset:
    """Read and validate a dataset written by :func:`save` (or any file in the schema).

    ``lazy=True`` leaves the observations in the file (xarray's lazy indexing: a slice reads
    only itself; :mod:`msde_ppl.data.blocks`), so data larger than memory can be validated,
    trained on and forecast; the file stays open while the dataset is used. ``None``
    (default): lazy when ``u`` (and ``u_clean``) exceed :data:`~msde_ppl.data.blocks.LAZY_BYTES`.
    """
    from msde_ppl.data.blocks import LAZY_BYTES

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    try:
        ds = xr.open_dataset(path, engine=ENGINE)
        size = sum(ds[name].nbytes for name in ("u", "u_clean") if name in ds)
        if not (lazy or (lazy is None and size > LAZY_BYTES)):
            with ds:
                ds = ds.load()
    except OSError as err:
        raise OSError(f"{path} is not a readable netCDF4/HDF5 file: {err}") from None
    # netCDF stores a length-1 attribute array as a scalar: restore the vector attributes.
    for name in _VECTOR_ATTRS & set(ds.attrs):
        ds.attrs[name] = np.atleast_1d(ds.attrs[name])
    if "split" in ds.coords:
        ds = ds.assign_coords(split=(ds["split"].dims[0],
                                     np.asarray(ds["split"].values).astype(str)))
    return validate(ds)
