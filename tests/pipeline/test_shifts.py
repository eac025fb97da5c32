"""Training on translates of the windows (TrainConfig.shifts): when it is on by default, where
it is refused, and that a fit with it trains."""

import dataclasses

import jax
import numpy as np
import pytest
from helpers import TINY, tiny_dataset

from msde_ppl.data import observations
from msde_ppl.inference import checkpoint_record
from msde_ppl.pipeline.run import fit_data, shifts_choice
from msde_ppl.pipeline.training import (
    TrainConfig,
    fit,
    fit_multiscale,
    multiscale_setup,
    shift_steps,
)


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


def test_the_multiscale_fit_draws_windows_rolled_by_whole_coarse_cells():
    """``multiscale_setup`` with shifts: every window is a training window rolled by a
    multiple of the coarse cell (8 fine points), and some are rolled."""
    ds = tiny_dataset()
    u, t = observations(ds, "train")
    batch_fn = multiscale_setup(ds, TINY, TrainConfig(shifts=True, window=8,
                                                      windows_per_step=4)).batch_fn
    rolled = set()
    for i in range(5):
        batch = batch_fn(jax.random.key(i), np.int32(i))
        for w, tw in zip(np.asarray(batch["y"]), np.asarray(batch["times"]), strict=True):
            start = int(np.flatnonzero(np.isclose(t, tw[0]))[0])
            block = u[0, start:start + 8]
            shifts = [k for k in range(64) if np.array_equal(np.roll(block, k, axis=-1), w)]
            assert shifts and all(k % 8 == 0 for k in shifts), shifts
            rolled.add(shifts[0])
    assert len(rolled) > 1


def test_a_checkpoint_records_shifts_only_when_on(tmp_path):
    """A checkpoint written before ``shifts`` existed has no such setting: one without shifts
    records none either, so the old one still resumes; one with shifts records it."""
    for shifts in (False, True):
        path = tmp_path / f"{shifts}.npz"
        fit_multiscale(tiny_dataset(), TINY, TrainConfig(steps=2, window=8, chunk_size=2,
                                                         shifts=shifts),
                       progress=False, checkpoint_path=path, checkpoint_every=0.0)
        train = checkpoint_record(path)["extra"]["train"]
        assert train.get("shifts", False) is shifts and ("shifts" in train) is shifts


def test_fit_data_trains_on_shifted_windows_by_default():
    """``fit_data`` on periodic user data records ``shifts`` with the fit, and trains."""
    fitted = fit_data(tiny_dataset(), 8, 0, steps=4, budget_s=None, validate=False,
                      progress=False, positional=False)
    assert fitted.train["shifts"] is True
    assert np.all(np.isfinite(fitted.losses)) and fitted.losses.size == 4
