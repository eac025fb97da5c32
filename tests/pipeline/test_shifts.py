"""Training on translates of the windows (TrainConfig.shifts): when it is on by default, where
it is refused, and that a fit with it trains."""

import dataclasses

import numpy as np
import pytest
from helpers import TINY, tiny_dataset

from msde_ppl.pipeline.run import fit_data, shifts_choice
from msde_ppl.pipeline.training import TrainConfig, fit, shift_steps


def test_shifts_are_on_for_periodic_user_data_whose_drift_ignores_the_position():
    ds = tiny_dataset()
    assert ds.attrs["boundary"] == "periodic"
    assert shifts_choice(ds, TINY) is True
    assert shifts_choice(ds, dataclasses.replace(TINY, positional=True)) is False
    assert shifts_choice(ds.assign_attrs(boundary="dirichlet"), TINY) is False
    assert shifts_choice(ds.assign_attrs(case="kdv_1d"), TINY) is False  # a built-in recipe


def test_shift_steps_are_the_coarse_cell_and_refused_where_they_change_the_data():
    ds, on = tiny_dataset(), TrainConfig(shifts=True)
    assert shift_steps(ds, TINY, on) == (8,)  # 64 fine points, 8 coarse nodes
    assert shift_steps(ds, TINY, TrainConfig()) is None
    with pytest.raises(ValueError, match="periodic domain; the data's boundary is 'dirichlet'"):
        shift_steps(ds.assign_attrs(boundary="dirichlet"), TINY, on)
    with pytest.raises(ValueError, match="reads it"):
        shift_steps(ds, dataclasses.replace(TINY, positional=True), on)


def test_a_program_of_ones_own_is_refused_shifts():
    with pytest.raises(ValueError, match="needs the built-in multiscale model"):
        fit(lambda **kw: None, tiny_dataset(), None, train=TrainConfig(shifts=True, steps=1))


def test_fit_data_trains_on_shifted_windows_by_default():
    """``fit_data`` on periodic user data records ``shifts`` with the fit, and trains."""
    fitted = fit_data(tiny_dataset(), 8, 0, steps=4, budget_s=None, validate=False,
                      progress=False, positional=False)
    assert fitted.train["shifts"] is True
    assert np.all(np.isfinite(fitted.losses)) and fitted.losses.size == 4
