"""The cylinder-wake dataset (msde_ppl/data/cases/cylinder_2d.py) on a short record: its layout
(two fields, one trajectory split in time, no noise) and its coarse-DNS baseline."""

import dataclasses

import numpy as np
import pytest

from msde_ppl.data import validate
from msde_ppl.data.cases import CASES, Cylinder2D
from msde_ppl.data.cases._lattice_boltzmann import CylinderChannel
from msde_ppl.data.splits import select_split
from msde_ppl.predict import evaluate_coarse_dns


@pytest.fixture(scope="module")
def short_record():
    case = dataclasses.replace(Cylinder2D(), channel=CylinderChannel(cells_per_diameter=10),
                               spinup=0.3, t_final=0.4, split_times=(0.2, 0.3), eval_steps=10)
    return case, case.generate()


def test_the_record_is_two_fields_split_in_time(short_record):
    case, ds = short_record
    validate(ds)
    assert CASES["cylinder_2d"].shape == (320, 80) and CASES["cylinder_2d"].n_time == 1501
    assert ds["u"].dims == ("traj", "time", "field", "x", "y")
    assert ds["u"].shape == (1, 41, 2, 320, 80)
    assert list(ds["field"].values) == ["u", "v"] and ds["split"].dims == ("time",)
    assert [select_split(ds, s).sizes["time"] for s in ("train", "val", "test")] == [21, 10, 10]
    np.testing.assert_allclose(ds["x"].values[[0, -1]], [-0.49375, 3.49375])
    np.testing.assert_allclose(ds["y"].values[[0, -1]], [-0.49375, 0.49375])
    np.testing.assert_array_equal(ds["u"].values, ds["u_clean"].values)  # no added noise
    u = ds["u"].sel(field="u").values
    assert np.isfinite(u).all() and 0.9 < u[..., 0, :].mean() < 1.1  # the inflow
    inside = (ds["x"].values[:, None] ** 2 + ds["y"].values[None, :] ** 2) < 0.05**2
    assert np.abs(ds["u"].values[..., inside]).max() == 0.0  # no flow inside the cylinder
    with pytest.raises(ValueError, match="n_traj must be 1"):
        case.generate(n_traj=2)


def test_coarse_dns_starts_from_the_test_frame_and_stays_close(short_record):
    case, ds = short_record
    pred = case.coarse_dns(select_split(ds, "test"))
    test = select_split(ds, "test")
    assert pred.dims == test["u"].dims and pred.shape == test["u"].shape
    np.testing.assert_array_equal(pred.values[:, 0], test["u"].values[:, 0])
    err = np.linalg.norm((pred - test["u"]).values[0, 1:].reshape(9, -1), axis=1) / \
        np.linalg.norm(test["u"].values[0, 1:].reshape(9, -1), axis=1)
    assert np.all(err < 0.2), err  # 0.09 time units on a lattice of 5 cells per diameter
    metrics = evaluate_coarse_dns(ds.assign_attrs(case="cylinder_2d"))
    assert metrics["finite"] and metrics["coarse"] == [160, 40]
