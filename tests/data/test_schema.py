"""Schema refusals: one test per class of bad input, plus a fuzz of from_arrays/validate."""

import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from msde_ppl.data import SchemaError, check_coarse, from_arrays, validate


def make(n_traj=2, n_time=5, nx=8, ny=None, **kw):
    rng = np.random.default_rng(1)
    shape = (n_traj, n_time, nx) if ny is None else (n_traj, n_time, nx, ny)
    kw.setdefault("boundary", "periodic")
    return from_arrays(
        rng.normal(size=shape),
        time=np.arange(n_time) * 0.1,
        x=np.arange(nx) / nx,
        y=None if ny is None else np.arange(ny) / ny,
        **kw,
    )


def test_valid_1d_2d_and_multifield():
    assert validate(make()) is not None
    assert make(ny=6).u.dims == ("traj", "time", "x", "y")
    ds = from_arrays(np.zeros((1, 3, 2, 4)), time=[0, 1, 2], x=np.arange(4.0), fields=["u", "v"])
    assert ds.u.dims == ("traj", "time", "field", "x")
    assert list(ds.field.values) == ["u", "v"]
    assert np.allclose(ds.attrs["domain"], [4.0])  # periodic: N dx


def test_dirichlet_domain_is_n_minus_one_spacings():
    ds = make(boundary="dirichlet")
    assert np.isclose(ds.attrs["domain"][0], 7 / 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_refuses_non_finite_values(bad):
    u = np.zeros((2, 4, 8))
    u[1, 2, 3] = bad
    with pytest.raises(SchemaError, match=r"non-finite.*traj=1, time=2, x=3"):
        from_arrays(u, time=np.arange(4.0), x=np.arange(8.0))


def test_refuses_non_finite_clean_field():
    clean = np.zeros((2, 4, 8))
    clean[0, 0, 0] = np.nan
    with pytest.raises(SchemaError, match="'u_clean' has 1 non-finite"):
        from_arrays(np.zeros((2, 4, 8)), time=np.arange(4.0), x=np.arange(8.0), u_clean=clean)


def test_refuses_missing_u():
    with pytest.raises(SchemaError, match="no data variable 'u'"):
        validate(xr.Dataset({"v": ("a", np.zeros(3))}))


def test_refuses_non_dataset():
    with pytest.raises(SchemaError, match="expected an xarray.Dataset"):
        validate(np.zeros(3))


def test_refuses_misordered_dims():
    ds = make().transpose("time", "traj", "x")
    with pytest.raises(SchemaError, match=r"dims \('time', 'traj', 'x'\)"):
        validate(ds)


def test_refuses_wrong_number_of_axes():
    with pytest.raises(SchemaError, match="has 2 axes"):
        from_arrays(np.zeros((3, 8)), time=np.arange(3.0), x=np.arange(8.0))


def test_refuses_missing_coordinate():
    ds = make().drop_vars("x")
    with pytest.raises(SchemaError, match="coordinate 'x' is missing"):
        validate(ds)


def test_refuses_non_monotone_time():
    with pytest.raises(SchemaError, match="'time' is not strictly increasing"):
        from_arrays(np.zeros((1, 3, 8)), time=[0.0, 0.2, 0.1], x=np.arange(8.0))


def test_refuses_repeated_time():
    with pytest.raises(SchemaError, match="'time' is not strictly increasing"):
        from_arrays(np.zeros((1, 3, 8)), time=[0.0, 0.1, 0.1], x=np.arange(8.0))


def test_refuses_non_uniform_time():
    with pytest.raises(SchemaError, match="'time' is not uniformly spaced"):
        from_arrays(np.zeros((1, 3, 8)), time=[0.0, 0.1, 0.3], x=np.arange(8.0))


def test_refuses_non_uniform_grid():
    x = np.arange(8.0)
    x[-1] += 0.5
    with pytest.raises(SchemaError, match="'x' is not uniformly spaced"):
        from_arrays(np.zeros((1, 3, 8)), time=np.arange(3.0), x=x)


def test_refuses_unknown_boundary():
    ds = make()
    ds.attrs["boundary"] = "neumann"
    with pytest.raises(SchemaError, match="'boundary' is 'neumann'"):
        validate(ds)
    with pytest.raises(SchemaError, match="boundary 'open' is unknown"):
        make(boundary="open")


def test_refuses_missing_boundary():
    ds = make()
    del ds.attrs["boundary"]
    with pytest.raises(SchemaError, match="'boundary' is None"):
        validate(ds)


def test_refuses_domain_inconsistent_with_grid():
    with pytest.raises(SchemaError, match="'domain' gives length 2.0"):
        make(domain=[2.0])


def test_refuses_coarse_size_not_dividing_grid():
    ds = make(nx=1000, n_time=3)
    assert check_coarse(ds, [20]) == (20,)
    with pytest.raises(SchemaError, match=r"coarse size 30 does not divide .* 1000 along 'x'"):
        validate(ds, coarse=[30])
    with pytest.raises(SchemaError, match="has 2 entries"):
        validate(ds, coarse=[20, 20])
    with pytest.raises(SchemaError, match="must be at least 2"):
        validate(ds, coarse=[1])


def test_refuses_unknown_split_label():
    with pytest.raises(SchemaError, match=r"unknown value\(s\) \['training'\]"):
        make(split=["train", "training"])


def test_refuses_split_of_wrong_length():
    with pytest.raises(SchemaError, match="one label per trajectory"):
        make(split=["train"])


def test_refuses_non_float_field():
    ds = make()
    ds["u"] = ds["u"].astype(bool)
    with pytest.raises(SchemaError, match="must be a float array"):
        validate(ds)
    with pytest.raises(SchemaError, match="real floating-point"):
        from_arrays(np.zeros((1, 3, 8), complex), time=np.arange(3.0), x=np.arange(8.0))


def test_integer_field_is_cast_to_float():
    ds = from_arrays(np.ones((1, 3, 8), int), time=np.arange(3), x=np.arange(8))
    assert ds.u.dtype == np.float64


def test_refuses_shape_mismatch_with_coordinates():
    with pytest.raises(SchemaError, match="has 4 entries along 'time'"):
        from_arrays(np.zeros((1, 4, 8)), time=np.arange(3.0), x=np.arange(8.0))


def test_refuses_clean_field_of_other_shape():
    with pytest.raises(SchemaError, match="'u_clean' has shape"):
        from_arrays(np.zeros((1, 3, 8)), time=np.arange(3.0), x=np.arange(8.0),
                    u_clean=np.zeros((1, 3, 4)))


def test_refuses_bad_noise_and_eval_steps_attributes():
    ds = make()
    ds.attrs["noise_std"] = -1.0
    with pytest.raises(SchemaError, match="'noise_std'"):
        validate(ds)
    ds = make()
    ds.attrs["eval_steps"] = 99
    with pytest.raises(SchemaError, match="'eval_steps'"):
        validate(ds)


def test_refuses_too_few_points():
    with pytest.raises(SchemaError, match="at least 2 time points"):
        from_arrays(np.zeros((1, 1, 8)), time=[0.0], x=np.arange(8.0))
    with pytest.raises(SchemaError, match="'x' has 2 points"):
        from_arrays(np.zeros((1, 3, 2)), time=np.arange(3.0), x=np.arange(2.0))


# ---------------------------------------------------------------------------------- fuzz
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def array_inputs(draw):
    n_space = draw(st.integers(1, 2))
    extra = draw(st.integers(-1, 2))  # wrong ndim, plain, field axis, too many
    sizes = draw(st.lists(st.integers(0, 5), min_size=max(1, 2 + n_space + extra),
                          max_size=max(1, 2 + n_space + extra)))
    u = draw(hnp.arrays(np.float64, tuple(sizes), elements=floats))

    def coord(n):
        kind = draw(st.sampled_from(["uniform", "random", "constant"]))
        if kind == "uniform":
            return np.arange(n) * draw(st.floats(-2, 2, allow_nan=False)) + 0.0
        if kind == "constant":
            return np.zeros(n)
        return draw(hnp.arrays(np.float64, (n,), elements=floats))

    time = coord(sizes[1] if len(sizes) > 1 else draw(st.integers(0, 4)))
    x = coord(draw(st.integers(0, 5)) if draw(st.booleans()) else (sizes[-n_space]))
    y = coord(sizes[-1]) if n_space == 2 else None
    boundary = draw(st.sampled_from(["periodic", "dirichlet", "other"]))
    split = draw(st.none() | st.lists(st.sampled_from(["train", "val", "test", "x"]),
                                      min_size=0, max_size=4))
    return dict(u=u, time=time, x=x, y=y, boundary=boundary, split=split)


@pytest.mark.filterwarnings("ignore:the first and last points along:UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array_inputs())
# empty data on a periodic grid: the repeated-endpoint check used to reduce an empty array
@example(inputs=dict(u=np.zeros((0, 0, 3)), time=np.zeros(0), x=np.arange(3.0), y=None,
                     boundary="periodic", split=None))
def test_fuzz_from_arrays_only_raises_schema_error(inputs):
    inputs = dict(inputs)  # the @example's dict is not ours to change
    u = inputs.pop("u")
    try:
        ds = from_arrays(u, **inputs)
    except SchemaError:
        return
    # whatever was accepted is valid and finite
    assert validate(ds) is ds
    assert np.isfinite(ds.u.values).all()
    assert (np.diff(ds.time.values) > 0).all()


# ------------------------------------------------------- what float32 training and netCDF hold
def _ok(**kw):
    args = dict(time=np.arange(4.0) * 0.1, x=np.arange(8.0))
    args.update(kw)
    return args


@pytest.mark.parametrize("values, message", [
    (np.zeros((1, 4, 8), np.float16), "float16 keeps about 3 significant digits"),
    (np.full((1, 4, 8), 1e39), "beyond the float32 range"),
    (np.zeros((1, 4, 8), np.complex64), "real floating-point"),
    (np.zeros((1, 4, 8), bool), "real floating-point"),
])
def test_refuses_data_float32_training_cannot_hold(values, message):
    with pytest.raises(SchemaError, match=message):
        from_arrays(values, **_ok())


def test_refuses_a_float16_field_in_a_dataset():
    ds = from_arrays(np.zeros((1, 4, 8)), **_ok())
    with pytest.raises(SchemaError, match="float16"):
        validate(ds.assign(u=ds.u.astype(np.float16)))


@pytest.mark.parametrize("time, message", [
    (np.arange(4) * 2.6e-14, "outside \\[1e-06, 1e\\+06\\]"),
    (np.arange(4) * 1e7, "outside"),
    (1e6 + np.arange(4) * 1e-3, "too small for times as large as .*shift the times to start"),
])
def test_refuses_degenerate_time_steps(time, message):
    with pytest.raises(SchemaError, match=message):
        from_arrays(np.zeros((1, 4, 8)), **_ok(time=time))


def test_a_trajectory_too_long_for_float32_times_is_refused_with_the_remedy():
    """Shifting cannot help a long trajectory (the float32 spacing at its last time exceeds
    0.1% of the step); the message says to cut it, and the cut pieces are accepted."""
    n, dt = 20_000, 1e-3
    with pytest.raises(SchemaError, match="20000 snapshots are too many .* at most 8388 "):
        from_arrays(np.zeros((1, n, 8), np.float32), **_ok(time=np.arange(n) * dt))
    pieces = np.zeros((4, n // 4, 8), np.float32)
    assert from_arrays(pieces, **_ok(time=np.arange(n // 4) * dt)).sizes["traj"] == 4
    for step in (0.1, 1e-3, 0.7, 3.3e-5):  # the advised length always passes
        from_arrays(np.zeros((1, 8388, 8), np.float32), **_ok(time=np.arange(8388) * step))


@pytest.mark.parametrize("n, dt", [(200, 0.1), (1000, 1e-3), (8000, 0.01)])
def test_float32_coordinates_rounded_from_uniform_values_are_uniform(n, dt):
    """Times and x stored as float32 carry their rounding (one ulp per step, 1.5e-5 of the
    step for 200 times at 0.1): accepted; a real irregularity of 1e-4 of a step is not."""
    time = (np.arange(n) * dt).astype(np.float32)
    x = np.linspace(0, 2 * np.pi, 256, endpoint=False).astype(np.float32)
    ds = from_arrays(np.zeros((1, n, 256), np.float32), time=time, x=x)
    assert ds.sizes["time"] == n
    bumped = np.arange(n) * dt
    bumped[n // 2:] += 1e-4 * dt
    with pytest.raises(SchemaError, match="not uniformly spaced"):
        from_arrays(np.zeros((1, n, 8), np.float32), time=bumped, x=np.arange(8.0))


@pytest.mark.parametrize("kw, message", [
    ({"domain": ["a"]}, "'domain' must be lengths"),
    ({"noise_std": "0.1"}, "'noise_std' must be a number"),
    ({"noise_std": [0.1, 0.2]}, "'noise_std' must be a number"),
    ({"extra_attrs": {"meta": {"nested": 1}}}, "no nested or None"),
    ({"extra_attrs": {"flag": True}}, "boolean"),
    ({"extra_attrs": {"none": None}}, "no nested or None"),
    ({"extra_attrs": {"big": 2 ** 70}}, "int64 range"),
    ({"extra_attrs": {"empty": []}}, "non-empty 1-D"),
    ({"extra_attrs": {"names": ["a", "b"]}}, "non-empty 1-D"),
    ({"extra_attrs": {"note": "a\x00b"}}, "NUL"),
    ({"extra_attrs": {"note": "\ud800"}}, "not valid Unicode"),
    ({"extra_attrs": {3: "x"}}, "non-empty strings"),
    ({"extra_attrs": ["not", "a", "dict"]}, "must be a dict"),
])
def test_refuses_attributes_netcdf_cannot_store(kw, message):
    with pytest.raises(SchemaError, match=message):
        from_arrays(np.zeros((1, 4, 8)), **_ok(**kw))


def test_refuses_repeated_field_names():
    with pytest.raises(SchemaError, match="distinct"):
        from_arrays(np.zeros((1, 4, 2, 8)), fields=["u", "u"], **_ok())


def test_a_periodic_grid_that_repeats_its_first_point_is_warned_about():
    """``np.linspace(0, 1, N)`` on a periodic field: the last column repeats the first, so the
    stencil would see that point twice; a grid without the endpoint is not warned about."""
    t = np.arange(10) * 0.1
    with_end = np.linspace(0.0, 1.0, 33)
    u = np.sin(2 * np.pi * (with_end[None, None] - t[None, :, None]))
    with pytest.warns(UserWarning, match="repeat its first point .* drop the last point"):
        from_arrays(np.repeat(u, 2, axis=0), time=t, x=with_end)
    x = with_end[:-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_arrays(np.repeat(u[..., :-1], 2, axis=0), time=t, x=x)
        from_arrays(np.zeros((2, 10, 33)), time=t, x=with_end)  # a constant field: no evidence
        from_arrays(np.repeat(u, 2, axis=0), time=t, x=with_end, boundary="dirichlet")
        # no evidence either, and correct periodic data: constant along x but not in time; a
        # cell-centred grid with a field symmetric about the seam; 2D, independent of x
        decaying = np.exp(-t)[None, :, None] * np.ones((2, 10, 32))
        from_arrays(decaying, time=t, x=x)
        centred = (np.arange(32) + 0.5) / 32
        cosine = np.cos(2 * np.pi * centred)[None, None] * np.exp(-t)[None, :, None]
        from_arrays(np.repeat(cosine, 2, axis=0), time=t, x=centred)
        shear = np.broadcast_to(np.sin(2 * np.pi * x)[None, None, None, :], (2, 10, 32, 32))
        from_arrays(np.array(shear), time=t, x=x, y=x)
    # noisy observations hide the repeat; the noise-free field given beside them shows it
    noisy = np.repeat(u, 2, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(2, 10, 33))
    with pytest.warns(UserWarning, match="repeat its first point"):
        from_arrays(noisy, u_clean=np.repeat(u, 2, axis=0), time=t, x=with_end)


def test_float32_rounding_allowance_is_capped():
    """A float32 grid far from 0 whose spacing float32 cannot hold (steps off by ~15%) is
    still refused: the rounding allowance stops at 0.1% of a step."""
    x = (1000.0 + np.cumsum(np.tile([0.0009, 0.0011], 16))).astype(np.float32)
    with pytest.raises(SchemaError, match="not uniformly spaced"):
        from_arrays(np.zeros((1, 4, 32), np.float32), **_ok(x=x))
