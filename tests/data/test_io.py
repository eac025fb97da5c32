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
