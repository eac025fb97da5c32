"""Coarse-DNS baseline: consistency at full resolution and the KdV error range of the reference."""

import dataclasses

import numpy as np
import pytest

from msde_ppl.data import SchemaError, from_arrays, make_dataset
from msde_ppl.data.cases import Burgers1D, Burgers2D
from msde_ppl.predict import coarse_dns, evaluate_coarse_dns


def clean_copy(ds):
    """The dataset with the noise-free field as observations (coarse DNS is then exact at N)."""
    out = ds.copy()
    out["u"] = ds["u_clean"]
    return out


def test_full_resolution_coarse_dns_reproduces_the_data_1d():
    case = dataclasses.replace(Burgers1D(), n_time=21, t_final=0.2)
    ds = clean_copy(case.generate(3))
    pred = coarse_dns(ds, coarse=[1000], split=None)
    np.testing.assert_allclose(pred.values, ds.u_clean.values, atol=2e-6)


def test_every_trajectory_is_scored_with_no_split():
    """``split=None`` (``msde forecast --split all``) scores all trajectories."""
    case = dataclasses.replace(Burgers1D(), n_time=11, t_final=0.1, eval_steps=10)
    ds = clean_copy(case.generate(3))
    assert evaluate_coarse_dns(ds, [1000], split=None)["n_pairs"] == 3 * 10
    assert evaluate_coarse_dns(ds, [1000])["n_pairs"] == 10


def test_full_resolution_coarse_dns_reproduces_the_data_2d():
    case = dataclasses.replace(Burgers2D(), n_time=6, t_final=0.05)
    ds = clean_copy(case.generate(3))
    pred = coarse_dns(ds, coarse=[128, 128], split="test")
    np.testing.assert_allclose(pred.values, ds.u_clean.values[2:], atol=2e-6)
    # a genuinely coarse run has the data's shape and keeps its (frozen) boundary values
    coarse = coarse_dns(ds, coarse=[16, 16], split="test").values
    assert coarse.shape == (1, 6, 128, 128)
    for edge in (coarse[:, :, 0, :], coarse[:, :, -1, :], coarse[:, :, :, 0], coarse[:, :, :, -1]):
        np.testing.assert_allclose(edge, edge[:, :1].repeat(6, axis=1), atol=1e-6)
    np.testing.assert_allclose(coarse[:, 0, 0, 0], ds.u.values[2:, 0, 0, 0], atol=1e-6)


@pytest.fixture(scope="module")
def kdv(optimized_xla):
    return make_dataset("kdv_1d")  # the fine KdV solve: running it, not compiling, costs


def test_kdv_coarse_dns_error_in_reference_range(kdv):
    result = evaluate_coarse_dns(kdv)
    # reference (docs/method.md §7): 0.523 +- 0.196; measured here: 0.543 +- 0.208
    assert result["n_pairs"] == 5 * 1000
    assert 0.42 < result["rel_l2_mean"] < 0.62
    assert 0.1 < result["rel_l2_std"] < 0.3
    assert abs(result["rel_l2_clean_mean"] - result["rel_l2_mean"]) < 0.01


def test_refuses_user_data_without_a_known_pde():
    ds = from_arrays(np.zeros((1, 3, 8)), time=np.arange(3.0), x=np.arange(8.0))
    with pytest.raises(SchemaError, match="needs the PDE"):
        coarse_dns(ds, [4])


def test_refuses_missing_split_and_bad_coarse(kdv):
    with pytest.raises(SchemaError, match="does not divide"):
        coarse_dns(kdv, [30])
    with pytest.raises(SchemaError, match="no trajectory in split 'holdout'"):
        coarse_dns(kdv, [20], split="holdout")
