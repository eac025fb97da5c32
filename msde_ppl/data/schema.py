"""The dataset schema and its validation.

A dataset is an ``xarray.Dataset`` with

- ``u``: float field, dims ``("traj", "time", "x")`` (1D) or ``("traj", "time", "x", "y")`` (2D),
  optionally with a ``"field"`` dim right after ``"time"`` for multi-field data;
- coordinates ``time`` (strictly increasing, uniform), ``x`` (and ``y``) uniform and increasing;
- optionally a ``split`` coordinate with values ``"train"``, ``"val"``, ``"test"``: on ``traj``
  (a label per trajectory), or on ``time`` (a split in time: every trajectory's snapshots are
  cut into consecutive blocks, each split one block, in the order train, val, test; for one
  long record, such as a flow observed once);
- optionally ``u_clean``, the noise-free field, with the dims and shape of ``u``;
- attributes ``boundary`` (``"periodic"`` or ``"dirichlet"``, required), ``domain`` (one length
  per spatial axis: ``N dx`` if periodic, ``(N - 1) dx`` if Dirichlet), ``noise_std``, ``source``,
  and optionally ``eval_steps`` (how many leading time steps the error metric uses).

:func:`validate` refuses anything else with a :class:`SchemaError` that names the problem;
:func:`from_arrays` builds a valid dataset from users' NumPy arrays.

Training runs in float32, so validation checks what float32 can hold: field values finite in
float32, float32 or float64 storage (float16 is refused: 3 significant digits), a time step in
``[1e-6, 1e6]`` that float32 times still resolve (steps uniform to 0.1% after the cast). Every
attribute must be one netCDF stores and reads back with the same values (a one-element array
comes back as a scalar): a string (UTF-8, no NUL), a real number (int64 range; not bool), or a
non-empty 1-D array of real numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

BOUNDARIES = ("periodic", "dirichlet")
SPLIT_VALUES = ("train", "val", "test")
SPATIAL_DIMS = ("x", "y")
_ALLOWED_DIMS = (
    ("traj", "time", "x"),
    ("traj", "time", "x", "y"),
    ("traj", "time", "field", "x"),
    ("traj", "time", "field", "x", "y"),
)
_UNIFORM_RTOL = 1e-5
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DT_RANGE = (1e-6, 1e6)
_FLOAT32_STEP_RTOL = 1e-3


class SchemaError(ValueError):
    """A dataset, or arrays meant to become one, do not follow the schema."""


def spatial_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """The spatial dims of ``u``: ``("x",)`` or ``("x", "y")``."""
    return tuple(d for d in ds["u"].dims if d in SPATIAL_DIMS)


def grid_shape(ds: xr.Dataset) -> tuple[int, ...]:
    """Fine-grid shape, one size per spatial dim."""
    return tuple(ds.sizes[d] for d in spatial_dims(ds))


def validate(ds: xr.Dataset, *, coarse: Sequence[int] | None = None) -> xr.Dataset:
    """Check ``ds`` against the schema; return it unchanged if it passes.

    Args:
        ds: the dataset.
        coarse: optional coarse-grid size per spatial axis; each must divide the fine size.

    Raises:
        SchemaError: naming the first problem found.
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    if "u" not in ds.data_vars:
        raise SchemaError("the dataset has no data variable 'u' (the observed field)")
    u = ds["u"]
    if u.dims not in _ALLOWED_DIMS:
        allowed = " or ".join(str(d) for d in _ALLOWED_DIMS)
        raise SchemaError(f"variable 'u' has dims {u.dims}; expected {allowed}")
    _check_float("u", u)
    if ds.sizes["traj"] < 1:
        raise SchemaError("variable 'u' has no trajectories (traj size 0)")
    if ds.sizes["time"] < 2:
        raise SchemaError(f"need at least 2 time points, got {ds.sizes['time']}")
    if "field" in u.dims and ds.sizes["field"] < 1:
        raise SchemaError("dim 'field' has size 0")

    _check_axis(ds, "time", minimum=2)
    _check_time_step(ds)
    for dim in spatial_dims(ds):
        _check_axis(ds, dim, minimum=3)

    boundary = ds.attrs.get("boundary")
    if boundary not in BOUNDARIES:
        raise SchemaError(
            f"attribute 'boundary' is {boundary!r}; expected one of {', '.join(BOUNDARIES)}"
        )
    _check_domain(ds, boundary)
    _check_optional_attrs(ds)
    _check_attrs("the dataset", ds.attrs)
    for name, var in ds.variables.items():
        _check_attrs(f"variable {name!r}", var.attrs)
    if "field" in ds.coords:
        _check_names(np.asarray(ds["field"].values))
    _check_split(ds)
    _check_finite("u", u)
    if "u_clean" in ds.data_vars:
        clean = ds["u_clean"]
        if clean.dims != u.dims or clean.shape != u.shape:
            raise SchemaError(
                f"'u_clean' has dims {clean.dims} and shape {clean.shape}; "
                f"it must match 'u' ({u.dims}, {u.shape})"
            )
        _check_float("u_clean", clean)
        _check_finite("u_clean", clean)
    if coarse is not None:
        check_coarse(ds, coarse)
    return ds


def check_coarse(ds: xr.Dataset, coarse: Sequence[int]) -> tuple[int, ...]:
    """Check a coarse-grid size against the fine grid of ``ds``; return it as a tuple.

    Coarse node ``k`` sits at fine index ``k * sigma`` with ``sigma = N / n``, so each coarse size
    must be a positive integer dividing the fine size along its axis.
    """
    dims = spatial_dims(ds)
    try:
        coarse = tuple(int(c) for c in coarse)
    except (TypeError, ValueError):
        raise SchemaError(f"coarse size must be integers, got {coarse!r}") from None
    if len(coarse) != len(dims):
        raise SchemaError(
            f"coarse size {coarse} has {len(coarse)} entries; the data have "
            f"{len(dims)} spatial dim(s) {dims}"
        )
    for n_c, dim in zip(coarse, dims, strict=True):
        n = ds.sizes[dim]
        if n_c < 2:
            raise SchemaError(f"coarse size {n_c} along {dim!r} must be at least 2")
        if n_c > n or n % n_c:
            near = [d for d in range(2, n + 1) if n % d == 0]
            near = sorted(near, key=lambda d: abs(d - n_c))[:3]
            raise SchemaError(
                f"coarse size {n_c} does not divide the fine grid size {n} along {dim!r} "
                f"(nearest divisors: {', '.join(map(str, sorted(near)))})"
            )
    return coarse


def _check_float(name: str, var: xr.DataArray) -> None:
    if not np.issubdtype(var.dtype, np.floating):
        raise SchemaError(f"variable {name!r} must be a float array, got dtype {var.dtype}")
    if var.dtype not in _FLOAT_DTYPES:
        raise SchemaError(f"variable {name!r} has dtype {var.dtype}; store it as float32 or "
                          f"float64 (e.g. u.astype('float32')): "
                          + ("float16 keeps about 3 significant digits"
                             if var.dtype == np.float16 else "training runs in float32"))


def _check_finite(name: str, var: xr.DataArray) -> None:
    """Finite values, all within the float32 range (training runs in float32); read a block
    of trajectories at a time (a lazily opened file is never loaded whole)."""
    from msde_ppl.data.blocks import trajectory_blocks

    axis = var.dims.index("traj") if "traj" in var.dims else None
    for offset, values in trajectory_blocks(var):
        for bad, what in ((~np.isfinite(values), "non-finite value(s) (NaN or inf)"),
                          (np.abs(values) > _FLOAT32_MAX,
                           f"value(s) beyond the float32 range (|value| > {_FLOAT32_MAX:.3g}; "
                           "training runs in float32; rescale the field)")):
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                where = [int(i) + (offset if k == axis else 0) for k, i in enumerate(first)]
                text = ", ".join(f"{d}={i}" for d, i in zip(var.dims, where, strict=True))
                raise SchemaError(f"variable {name!r} has {int(bad.sum())} {what} in "
                                  f"trajectories {offset}..; first at {text}: "
                                  f"{float(values[first]):.3g}")


def _check_time_step(ds: xr.Dataset) -> None:
    """A time step float32 training can use: in ``_DT_RANGE`` and resolved by float32 times."""
    times = np.asarray(ds["time"].values, np.float64)
    dt = (times[-1] - times[0]) / (times.size - 1)
    low, high = _DT_RANGE
    if not low <= dt <= high:
        raise SchemaError(f"the time step {dt:.3g} is outside [{low:g}, {high:g}]: float32 "
                          "training cannot use it; express time in other units (e.g. divide "
                          f"the times by {dt:.3g})")
    if np.abs(times).max() > _FLOAT32_MAX:
        raise SchemaError("coordinate 'time' has values beyond the float32 range")
    if not _float32_resolves(times, dt):
        problem = (f"the time step {dt:.3g} is too small for times as large as "
                   f"{np.abs(times).max():.3g} in float32 (steps vary by more than "
                   f"{_FLOAT32_STEP_RTOL:.1%} after the cast)")
        if _float32_resolves(times - times[0], dt):
            raise SchemaError(f"{problem}; shift the times to start at 0")
        # float32 spacing at |t| is at most |t| 2^-23: from 0, n <= rtol 2^23 steps resolve
        longest = int(_FLOAT32_STEP_RTOL * 2.0**23)
        raise SchemaError(f"{problem}: {times.size} snapshots are too many for one trajectory "
                          f"with float32 times; cut it into trajectories of equal length, at "
                          f"most {longest} snapshots each (one time coordinate, from 0, for all)")


def _float32_resolves(times: np.ndarray, dt: float) -> bool:
    """Whether the steps of ``times`` (float64) stay within ``_FLOAT32_STEP_RTOL`` of ``dt``
    once the times are cast to float32."""
    steps = np.diff(times.astype(np.float32).astype(np.float64))
    return bool(np.abs(steps - dt).max() <= _FLOAT32_STEP_RTOL * dt)


def _check_text(what: str, text: str) -> None:
    if "\x00" in text:
        raise SchemaError(f"{what} contains a NUL character, which netCDF cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"{what} is not valid Unicode text (netCDF stores UTF-8)") from None


def _check_attrs(owner: str, attrs: dict) -> None:
    """Every attribute is one netCDF stores and reads back unchanged (module docstring)."""
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise SchemaError(f"{owner} has an attribute named {key!r}; names must be "
                              "non-empty strings")
        _check_text(f"the attribute name {key!r} of {owner}", key)
        what = f"attribute {key!r} of {owner}"
        if isinstance(value, str):
            _check_text(what, value)
            continue
        if isinstance(value, (bool, np.bool_)):
            raise SchemaError(f"{what} is a boolean, which netCDF cannot store; use 0 or 1")
        if isinstance(value, (int, float, np.integer, np.floating)):
            _check_attr_numbers(what, np.asarray(value))
            continue
        if isinstance(value, (list, tuple, np.ndarray)):
            try:
                arr = np.asarray(value)
            except (TypeError, ValueError):
                arr = np.asarray([], dtype=object)
            numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype,
                                                                              np.floating)
            if arr.ndim == 1 and arr.size > 0 and numeric:
                _check_attr_numbers(what, arr)
                continue
            raise SchemaError(f"{what} is {type(value).__name__} {value!r:.80}: netCDF stores "
                              "only non-empty 1-D arrays of real numbers (int or float32/64)")
        raise SchemaError(f"{what} has type {type(value).__name__}: netCDF stores strings, real "
                          "numbers and 1-D numeric arrays only (no nested or None values)")


def _check_attr_numbers(what: str, values: np.ndarray) -> None:
    """Numbers netCDF reads back unchanged: integers in the int64 range, float32/64."""
    if values.dtype == np.float16:
        raise SchemaError(f"{what} is float16, which netCDF cannot store; use float32/64")
    if np.issubdtype(values.dtype, np.integer) or values.dtype == object:
        ints = [int(v) for v in np.ravel(values)]
        info = np.iinfo(np.int64)
        if any(not info.min <= v <= info.max for v in ints):
            raise SchemaError(f"{what} holds integers outside the int64 range netCDF stores")


def _check_names(names: np.ndarray) -> None:
    texts = [str(n) for n in names]
    for text in texts:
        _check_text(f"field name {text!r}", text)
    if len(set(texts)) != len(texts):
        raise SchemaError(f"field names must be distinct, got {texts}")


def _check_axis(ds: xr.Dataset, dim: str, minimum: int) -> None:
    if dim not in ds.coords:
        raise SchemaError(f"coordinate {dim!r} is missing")
    coord = ds.coords[dim]
    if coord.dims != (dim,):
        raise SchemaError(f"coordinate {dim!r} must be 1-D along {dim!r}, has dims {coord.dims}")
    if not np.issubdtype(coord.dtype, np.number) or np.issubdtype(coord.dtype, np.complexfloating):
        raise SchemaError(f"coordinate {dim!r} must be real numbers, got dtype {coord.dtype}")
    values = np.asarray(coord.values, dtype=np.float64)
    if values.size < minimum:
        raise SchemaError(f"dim {dim!r} has {values.size} points; need at least {minimum}")
    if not np.isfinite(values).all():
        raise SchemaError(f"coordinate {dim!r} has non-finite values")
    steps = np.diff(values)
    if not (steps > 0).all():
        i = int(np.argmax(~(steps > 0)))
        raise SchemaError(
            f"coordinate {dim!r} is not strictly increasing (at index {i + 1}: "
            f"{values[i + 1]!r} after {values[i]!r})"
        )
    mean = (values[-1] - values[0]) / (values.size - 1)
    worst = np.max(np.abs(steps - mean))
    # a step between two values rounded to the coordinate's own dtype is off by up to one ulp
    # of the largest value, <= eps |v|max (float32 times of 200 snapshots at 0.1: 1.5e-5 of
    # the step); twice that is allowed on top of the relative tolerance
    # (capped at _FLOAT32_STEP_RTOL of a step, float32 times' limit: beyond, float32 cannot
    # hold the grid)
    eps = np.finfo(coord.dtype).eps if np.issubdtype(coord.dtype, np.floating) else 0.0
    rounding = min(2.0 * eps * np.abs(values).max(), _FLOAT32_STEP_RTOL * mean)
    if worst > _UNIFORM_RTOL * mean + rounding:
        raise SchemaError(
            f"coordinate {dim!r} is not uniformly spaced (steps range from {steps.min():.6g} "
            f"to {steps.max():.6g})"
        )


def _warn_repeated_endpoint(u: np.ndarray, dims: tuple[str, ...],
                            spatial: tuple[str, ...]) -> None:
    """Warn when a periodic grid repeats its first point at its end (``np.linspace(0, L, N)``
    instead of ``endpoint=False``): along a spatial axis the first and last slices are equal
    in every snapshot (to 1e-6 of each field's largest value there) while the two slices next
    to them are not mirror images of each other. A field that is constant along the axis or
    symmetric about the seam (a cell-centred grid) gives no such evidence and is left alone.
    The periodic stencil would otherwise read the repeated point twice, and the domain would
    come out as ``L N / (N - 1)``. Only four slices are read, in float64. Empty data gives no
    evidence (the validation that follows refuses it)."""
    if u.size == 0:
        return
    for dim in spatial:
        axis = dims.index(dim)
        rest = [d for d in dims if d != dim]
        keep = rest.index("field") if "field" in rest else None
        with np.errstate(over="ignore", invalid="ignore"):
            first, last, inner_first, inner_last = (
                np.take(u, i, axis=axis).astype(np.float64) for i in (0, -1, 1, -2))
            others = tuple(k for k in range(first.ndim) if k != keep)
            scale = np.max(np.maximum(np.abs(first), np.abs(last)), axis=others, keepdims=True)
            if not np.all(np.isfinite(scale)):
                continue  # refused by the validation that follows
            tol = 1e-6 * scale
            repeated = bool(np.all(np.abs(first - last) <= tol))
            mirrored = bool(np.all(np.abs(inner_first - inner_last) <= tol))
        if repeated and not mirrored:
            warnings.warn(
                f"the first and last points along {dim!r} hold the same values in every "
                f"snapshot: a periodic grid should not repeat its first point at its end (use "
                f"np.linspace(0, L, N, endpoint=False)); if it does, drop the last point; if "
                f"the field is not periodic (fixed values at both ends), pass "
                f"boundary='dirichlet'", UserWarning, stacklevel=3)


def _spacing(ds: xr.Dataset, dim: str) -> float:
    values = np.asarray(ds.coords[dim].values, dtype=np.float64)
    return float((values[-1] - values[0]) / (values.size - 1))


def _check_domain(ds: xr.Dataset, boundary: str) -> None:
    if "domain" not in ds.attrs:
        return
    dims = spatial_dims(ds)
    try:
        domain = np.atleast_1d(np.asarray(ds.attrs["domain"], dtype=np.float64))
    except (TypeError, ValueError):
        raise SchemaError(
            f"attribute 'domain' must be lengths, got {ds.attrs['domain']!r}"
        ) from None
    if domain.shape != (len(dims),):
        raise SchemaError(
            f"attribute 'domain' has {domain.size} length(s); expected one per spatial dim {dims}"
        )
    for length, dim in zip(domain, dims, strict=True):
        n = ds.sizes[dim]
        expected = _spacing(ds, dim) * (n if boundary == "periodic" else n - 1)
        if not np.isfinite(length) or abs(length - expected) > 1e-4 * expected:
            rule = "N * dx" if boundary == "periodic" else "(N - 1) * dx"
            raise SchemaError(
                f"attribute 'domain' gives length {float(length)!r} along {dim!r}, but a "
                f"{boundary} grid of {n} points with spacing {_spacing(ds, dim):.6g} has length "
                f"{rule} = {expected:.6g}"
            )


def _check_optional_attrs(ds: xr.Dataset) -> None:
    if "noise_std" in ds.attrs:
        noise = ds.attrs["noise_std"]
        if not (np.isscalar(noise) and np.isreal(noise) and np.isfinite(noise) and noise >= 0):
            raise SchemaError(f"attribute 'noise_std' must be a finite number >= 0, got {noise!r}")
    if "eval_steps" in ds.attrs:
        steps = ds.attrs["eval_steps"]
        if not (np.issubdtype(type(steps), np.integer) and 1 <= steps <= ds.sizes["time"]):
            raise SchemaError(
                f"attribute 'eval_steps' must be an integer in [1, {ds.sizes['time']}], "
                f"got {steps!r}"
            )


def _check_split(ds: xr.Dataset) -> None:
    if "split" not in ds.coords:
        return
    split = ds.coords["split"]
    if split.dims not in (("traj",), ("time",)):
        raise SchemaError(f"coordinate 'split' must lie on dim 'traj' (a label per trajectory) "
                          f"or 'time' (a split in time), has dims {split.dims}")
    labels = np.asarray(split.values).astype(str)
    unknown = set(labels.tolist()) - set(SPLIT_VALUES)
    if unknown:
        raise SchemaError(
            f"coordinate 'split' has unknown value(s) {sorted(unknown)}; "
            f"allowed: {', '.join(SPLIT_VALUES)}"
        )
    if split.dims == ("time",):
        blocks = [str(labels[0])] + [str(b) for a, b in zip(labels[:-1], labels[1:],
                                                           strict=True) if a != b]
        order = [name for name in SPLIT_VALUES if name in blocks]
        if blocks != order:
            raise SchemaError(
                "a split in time ('split' on dim 'time') must cut the record into consecutive "
                f"blocks in the order train, val, test; got the blocks {blocks}")
        short = [name for name in order if (labels == name).sum() < 2]
        if short:
            raise SchemaError(f"a split in time needs at least 2 snapshots per split; "
                              f"{short[0]!r} has 1")


def from_arrays(
    u,
    *,
    time,
    x,
    y=None,
    boundary: str = "periodic",
    domain: Sequence[float] | None = None,
    u_clean=None,
    split: Sequence[str] | None = None,
    split_over: str = "traj",
    fields: Sequence[str] | None = None,
    noise_std: float | None = None,
    source: str = "user data",
    extra_attrs: dict | None = None,
    long_name: str | None = None,
    units: dict[str, str] | None = None,
) -> xr.Dataset:
    """Build a validated dataset from arrays.

    Args:
        u: observed field, shape ``(traj, time, [field,] x[, y])``. Integer arrays are cast to
            float64; anything else that is not real floating point is refused.
        time: snapshot times, shape ``(time,)``, strictly increasing and uniform.
        x: grid coordinates along x, shape ``(x,)``, uniform; ``y`` likewise for 2D data.
        boundary: ``"periodic"`` or ``"dirichlet"``.
        domain: lengths per spatial axis; computed from the grid when omitted.
        u_clean: optional noise-free field, same shape as ``u``.
        split: optional ``"train"``/``"val"``/``"test"`` label per trajectory, or per
            snapshot with ``split_over="time"`` (a split in time: consecutive blocks, in the
            order train, val, test).
        split_over: ``"traj"`` (default) or ``"time"``: what ``split`` labels.
        fields: names of the fields if ``u`` has a field axis (its presence is inferred from
            ``u.ndim``: one more axis than ``2 + number of spatial axes``).
        noise_std: observation noise standard deviation, if known.
        source: what produced the data.
        extra_attrs: further attributes to store.
        long_name: what ``u`` is (e.g. ``"vorticity"``), stored as its ``long_name``
            attribute; figures label their colour bars and axes with it.
        units: units per name, any of ``"u"``, ``"time"``, ``"x"``, ``"y"`` (e.g.
            ``{"u": "m/s", "time": "s", "x": "m"}``), stored as ``units`` attributes
            (CF convention); figures show them.

    Raises:
        SchemaError: if the arrays cannot form a valid dataset.
    """
    u = _as_float_array("u", u)
    time = _as_coord("time", time)
    x = _as_coord("x", x)
    coords: dict = {"time": time, "x": x}
    spatial = ("x",)
    if y is not None:
        coords["y"] = _as_coord("y", y)
        spatial = ("x", "y")
    n_space = len(spatial)
    if u.ndim == 2 + n_space:
        dims = ("traj", "time", *spatial)
    elif u.ndim == 3 + n_space:
        dims = ("traj", "time", "field", *spatial)
    else:
        raise SchemaError(
            f"'u' has {u.ndim} axes; with {n_space} spatial axis/axes it needs "
            f"{2 + n_space} (traj, time, {', '.join(spatial)}) or {3 + n_space} (with a field axis)"
        )
    expected = {"time": time.size, **{d: coords[d].size for d in spatial}}
    for axis, dim in enumerate(dims):
        if dim in expected and u.shape[axis] != expected[dim]:
            raise SchemaError(
                f"'u' has {u.shape[axis]} entries along {dim!r} (axis {axis}) but the {dim!r} "
                f"coordinate has {expected[dim]}"
            )
    if "field" in dims:
        n_fields = u.shape[2]
        names = [f"f{i}" for i in range(n_fields)] if fields is None else [str(f) for f in fields]
        if len(names) != n_fields:
            raise SchemaError(f"{len(names)} field names given for {n_fields} fields")
        coords["field"] = names
    elif fields is not None:
        raise SchemaError("field names given but 'u' has no field axis")
    if split_over not in ("traj", "time"):
        raise SchemaError(f"split_over must be 'traj' or 'time', got {split_over!r}")
    if split is not None:
        split = np.asarray(split).astype(str)
        n = u.shape[0] if split_over == "traj" else time.size
        if split.shape != (n,):
            what = "trajectory" if split_over == "traj" else "snapshot (split_over='time')"
            raise SchemaError(f"'split' has shape {split.shape}; expected one label per {what} "
                              f"({n},)")
        coords["split"] = (split_over, split)
    data_vars = {"u": (dims, u)}
    if u_clean is not None:
        u_clean = _as_float_array("u_clean", u_clean)
        if u_clean.shape != u.shape:
            raise SchemaError(f"'u_clean' has shape {u_clean.shape}; 'u' has {u.shape}")
        data_vars["u_clean"] = (dims, u_clean)
    if boundary not in BOUNDARIES:
        raise SchemaError(f"boundary {boundary!r} is unknown; expected one of {BOUNDARIES}")
    attrs: dict = {"boundary": boundary, "source": str(source)}
    ds = xr.Dataset(data_vars, coords=coords)
    for dim in spatial:
        _check_axis(ds, dim, minimum=3)
    if boundary == "periodic":  # the noise-free field, when given, shows a repeat best
        _warn_repeated_endpoint(u if u_clean is None else u_clean, dims, spatial)
    if domain is None:
        off = 0 if boundary == "periodic" else 1
        domain = [_spacing(ds, d) * (ds.sizes[d] - off) for d in spatial]
    try:
        attrs["domain"] = np.atleast_1d(np.asarray(domain, dtype=np.float64))
    except (TypeError, ValueError):
        raise SchemaError(f"'domain' must be lengths (numbers), got {domain!r}") from None
    if noise_std is not None:
        if isinstance(noise_std, (bool, np.bool_, str, bytes)):
            raise SchemaError(f"'noise_std' must be a number, got {noise_std!r}")
        try:
            attrs["noise_std"] = float(noise_std)
        except (TypeError, ValueError):
            raise SchemaError(f"'noise_std' must be a number, got {noise_std!r}") from None
    if long_name is not None:
        ds["u"].attrs["long_name"] = str(long_name)
    for name, unit in (units or {}).items():
        if name not in ("u", "time", "x", "y") or name not in ds.variables:
            raise SchemaError(f"units given for {name!r}; expected some of 'u', 'time', "
                              f"{', '.join(repr(d) for d in spatial)}")
        ds[name].attrs["units"] = str(unit)
        if name == "u" and u_clean is not None:
            ds["u_clean"].attrs["units"] = str(unit)
    if extra_attrs is not None and not isinstance(extra_attrs, dict):
        raise SchemaError(f"'extra_attrs' must be a dict, got {type(extra_attrs).__name__}")
    attrs.update(extra_attrs or {})
    ds.attrs.update(attrs)
    return validate(ds)


def _as_float_array(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise SchemaError(f"{name!r} cannot be read as an array: {err}") from None
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise SchemaError(f"{name!r} must hold real floating-point numbers, got dtype {arr.dtype}")
    if arr.dtype not in _FLOAT_DTYPES:
        raise SchemaError(f"{name!r} has dtype {arr.dtype}; pass float32 or float64 (float16 "
                          "keeps about 3 significant digits; training runs in float32)")
    return arr


def _as_coord(name: str, values) -> np.ndarray:
    arr = _as_float_array(name, values)
    if arr.ndim != 1:
        raise SchemaError(f"coordinate {name!r} must be 1-D, got shape {arr.shape}")
    return arr
