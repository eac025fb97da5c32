"""netCDF round trip is bit-exact; writing never silently overwrites or half-writes."""

import os

import numpy as np
import pytest
import xarray as xr

from msde_ppl.data import from_arrays, load, make_dataset, save


@pytest.fixture(scope="module")
def builtin():
    return make_dataset("burgers_1d", n_traj=3)


def test_round_trip_is_bit_exact(tmp_path, builtin):
    path = save(builtin, tmp_path / "b.nc")
    back = load(path)
    xr.testing.assert_identical(back, builtin)
    for name in ("u", "u_clean"):
        assert back[name].dtype == builtin[name].dtype
        assert back[name].values.tobytes() == builtin[name].values.tobytes()
    assert list(back.split.values) == ["train", "val", "test"]


def test_round_trip_2d_multifield_float64(tmp_path, np_rng):
    u = np_rng.normal(size=(2, 3, 2, 4, 6))
    ds = from_arrays(u, time=np.arange(3.0), x=np.arange(4.0), y=np.arange(6.0) * 0.5,
                     fields=["u", "v"], boundary="dirichlet", noise_std=0.1)
    back = load(save(ds, tmp_path / "m.nc"))
    xr.testing.assert_identical(back, ds)
    assert back.u.values.tobytes() == u.tobytes()


def test_file_is_compressed(tmp_path):
    ds = from_arrays(np.zeros((4, 50, 200)), time=np.arange(50.0), x=np.arange(200.0))
    path = save(ds, tmp_path / "z.nc")
    assert os.path.getsize(path) < ds.u.nbytes / 10


def test_refuses_to_overwrite(tmp_path, builtin):
    path = tmp_path / "keep.nc"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save(builtin, path)
    assert path.read_bytes() == b"precious"
    save(builtin, path, overwrite=True)
    xr.testing.assert_identical(load(path), builtin)


def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path, builtin, monkeypatch):
    path = tmp_path / "keep.nc"
    path.write_bytes(b"precious")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save(builtin, path, overwrite=True)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nc"]


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset file"):
        load(tmp_path / "missing.nc")
    junk = tmp_path / "junk.nc"
    junk.write_text("not netcdf")
    with pytest.raises(OSError, match="not a readable netCDF4"):
        load(junk)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(from_arrays(np.zeros((1, 2, 4)), time=[0.0, 1.0], x=np.arange(4.0)),
             tmp_path / "nofolder" / "a.nc")


def test_saved_files_follow_the_umask(tmp_path, builtin):
    old = os.umask(0o022)
    try:
        path = save(builtin, tmp_path / "shared.nc")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a colleague, as open() would


# ------------------------------------------- property: round trip exactly, or a SchemaError
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from msde_ppl.data import SchemaError  # noqa: E402

_text = st.text(max_size=6)  # any Unicode, NUL and lone surrogates included
_numbers = (st.integers(-(2 ** 70), 2 ** 70) | st.floats(width=64) | st.booleans())
_attr_values = (_text | _numbers | st.none()
                | st.lists(st.integers(-5, 5) | st.floats(-1e3, 1e3), max_size=3)
                | st.lists(_text, min_size=1, max_size=2)
                | st.dictionaries(_text, st.integers(), max_size=1))


@st.composite
def dataset_inputs(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32]))
    n_traj, n_time, nx = draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(3, 5))
    fields = draw(st.none() | st.lists(_text, min_size=1, max_size=2))
    shape = (n_traj, n_time, nx) if fields is None else (n_traj, n_time, len(fields), nx)
    finite = {np.float32: st.floats(-1e6, 1e6, width=32), np.float64: st.floats(-1e6, 1e6),
              np.float16: st.floats(-100, 100, width=16), np.int32: st.integers(-9, 9)}[dtype]
    elements = draw(st.sampled_from(["finite", "wild"]))
    u = draw(hnp.arrays(dtype, shape, elements=finite if elements == "finite" else None))
    dt = draw(st.sampled_from([0.01, 0.25, 1.0, 1e-9, 3e6]))
    t0 = draw(st.sampled_from([0.0, -3.0, 1e7]))
    kw = dict(time=t0 + dt * np.arange(n_time), x=np.arange(nx) / nx,
              boundary=draw(st.sampled_from(["periodic", "dirichlet"])), fields=fields)
    if draw(st.booleans()):
        kw["split"] = draw(st.lists(st.sampled_from(["train", "val", "test"]),
                                    min_size=n_traj, max_size=n_traj))
    if draw(st.booleans()):
        kw["noise_std"] = draw(_numbers | _text)
    if draw(st.booleans()):  # the right length, a wrong one, or not lengths at all
        kw["domain"] = draw(st.sampled_from([[1.0], [1.0 - 1.0 / nx], [2.0]])
                            | st.lists(_numbers | _text, max_size=2) | _text)
    kw["extra_attrs"] = draw(st.dictionaries(st.text(min_size=1, max_size=5)
                                             .filter(lambda k: k not in _RESERVED),
                                             _attr_values, max_size=2))
    return u, kw


_RESERVED = {"boundary", "domain", "noise_std", "source", "eval_steps", "coarse_reference",
             "case", "split"}


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype.kind == b.dtype.kind and np.array_equal(
        a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.filterwarnings("ignore:the first and last points along:UserWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(dataset_inputs())
def test_any_input_round_trips_exactly_or_raises_schema_error(tmp_path_factory, inputs):
    u, kw = inputs
    try:
        ds = from_arrays(u, **kw)
    except SchemaError:
        event("refused")
        return
    event("accepted")
    path = save(ds, tmp_path_factory.mktemp("rt") / "d.nc")
    back = load(path)
    assert back.u.dtype == ds.u.dtype and back.u.values.tobytes() == ds.u.values.tobytes()
    for name in ds.coords:
        assert _same(back[name].values.astype(ds[name].dtype), ds[name].values), name
    assert set(back.attrs) == set(ds.attrs)
    for key, value in ds.attrs.items():
        stored = back.attrs[key]
        if isinstance(value, str):
            assert stored == value, key
        else:
            assert _same(np.ravel(stored), np.ravel(value)), key


def test_batches_written_one_at_a_time_equal_the_whole_dataset(tmp_path):
    import dataclasses

    from msde_ppl.data.cases import Burgers1D
    from msde_ppl.data.io import save_batches

    case = dataclasses.replace(Burgers1D(), n_time=4, t_final=0.003, batch_size=2)
    path, n = save_batches(case.generate_batches(5), tmp_path / "big.nc")
    whole = case.generate(5)
    assert n == 5
    stored = load(path)
    for name in ("u", "u_clean"):
        np.testing.assert_array_equal(stored[name].values, whole[name].values)
    assert list(stored["split"].values) == list(whole["split"].values) == [
        "train", "train", "train", "val", "test"]
    assert stored.attrs["case"] == "burgers_1d"
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_batches(case.generate_batches(2), path)
    assert path.read_bytes() == before
