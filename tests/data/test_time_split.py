"""A split in time: one long record cut into consecutive train / val / test blocks (the
``split`` coordinate on ``time``), as the cylinder wake is observed once."""

import numpy as np
import pytest

from msde_ppl.data import SchemaError, from_arrays, validate
from msde_ppl.data.io import load, save
from msde_ppl.data.splits import observations, select_split, split_names, splits_in_time
from msde_ppl.pipeline.training import TrainConfig, check_training_data, training_window


def record(labels=None, n_traj=1):
    labels = ["train"] * 12 + ["val"] * 4 + ["test"] * 4 if labels is None else labels
    n_time = len(labels)
    t = 0.1 * np.arange(n_time)
    x = np.arange(8) / 8
    u = np.sin(2 * np.pi * (x[None, None, :] - t[None, :, None])) * np.ones((n_traj, 1, 1))
    return from_arrays(u, time=t, x=x, split=labels, split_over="time")


def test_each_split_is_its_block_of_times_of_every_trajectory(tmp_path):
    ds = record(n_traj=2)
    assert splits_in_time(ds) and split_names(ds) == {"train", "val", "test"}
    test = select_split(ds, "test")
    assert test.sizes == {"traj": 2, "time": 4, "x": 8}
    np.testing.assert_allclose(test["time"].values, 0.1 * np.arange(16, 20))
    y, t = observations(ds, "val")
    assert y.shape == (2, 4, 1, 8) and t[0] == pytest.approx(1.2)
    np.testing.assert_array_equal(y[:, 0, 0], ds["u"].values[:, 12].astype(np.float32))
    save(ds, tmp_path / "d.nc")
    back = load(tmp_path / "d.nc")
    assert back["split"].dims == ("time",)
    np.testing.assert_array_equal(back["split"].values, ds["split"].values)


def test_a_fit_windows_only_the_train_block():
    ds = record()
    # 12 train snapshots: windows of 4 start at 0..8 (n_windows counts the train block only)
    assert check_training_data(ds, TrainConfig(window=4)) == check_training_data(
        record(["train"] * 12 + ["val"] * 2 + ["test"] * 2), TrainConfig(window=4))
    with pytest.raises(SchemaError, match="longer than"):
        check_training_data(ds, TrainConfig(window=13))


def test_data_split_in_time_gets_autonomous_micro_dynamics():
    """Forecasts of a split in time start past the training record: the default config's
    micro drift does not read the absolute time there (it does for trajectory splits)."""
    from msde_ppl.pipeline.run import model_config

    assert model_config(record(), coarse=(4,)).micro_time is False
    by_traj = from_arrays(record()["u"].values.repeat(3, 0), time=record()["time"].values,
                          x=record()["x"].values, split=["train", "val", "test"])
    assert model_config(by_traj, coarse=(4,)).micro_time is True


@pytest.mark.parametrize("labels, match", [
    (["train"] * 6 + ["test"] * 4 + ["val"] * 4, "order train, val, test"),
    (["train"] * 4 + ["val"] * 4 + ["train"] * 4 + ["test"] * 4, "order train, val, test"),
    (["train"] * 10 + ["val"] + ["test"] * 4, "at least 2 snapshots"),
])
def test_refuses_blocks_out_of_order_or_too_short(labels, match):
    with pytest.raises(SchemaError, match=match):
        record(labels)


def test_refuses_labels_of_the_wrong_length_and_unknown_axes():
    with pytest.raises(SchemaError, match="one label per snapshot"):
        from_arrays(np.zeros((1, 5, 8)), time=np.arange(5.0), x=np.arange(8.0),
                    split=["train"] * 4, split_over="time")
    with pytest.raises(SchemaError, match="split_over"):
        from_arrays(np.zeros((1, 5, 8)), time=np.arange(5.0), x=np.arange(8.0),
                    split=["train"] * 5, split_over="x")
    ds = record()
    with pytest.raises(SchemaError, match="'traj'.*or 'time'"):
        validate(ds.assign_coords(split=("x", np.array(["train"] * 8))))


def test_unlabelled_data_are_held_out_by_trajectory_or_with_one_or_two_in_time():
    """Three or more trajectories: the last tenth test, the tenth before val; one or two: the
    same in time (at least 2 snapshots a block); too few snapshots: refused, naming both ways
    to label."""
    from msde_ppl.data.splits import SPLIT_RULE, SPLIT_RULE_TIME, with_held_out_splits

    def unlabelled(n_traj, n_time):
        return from_arrays(np.zeros((n_traj, n_time, 8)), time=np.arange(float(n_time)),
                           x=np.arange(8.0))

    ds = with_held_out_splits(unlabelled(12, 5))
    assert ds["split"].dims == ("traj",) and ds.attrs["split_rule"] == SPLIT_RULE
    assert ds["split"].values.tolist() == ["train"] * 10 + ["val", "test"]
    ds = with_held_out_splits(unlabelled(1, 200))
    validate(ds)
    assert splits_in_time(ds) and ds.attrs["split_rule"] == SPLIT_RULE_TIME
    assert ds["split"].values.tolist() == ["train"] * 160 + ["val"] * 20 + ["test"] * 20
    assert select_split(ds, "test").sizes["time"] == 20
    assert training_window(ds) == 64  # 160 training snapshots
    ds = with_held_out_splits(unlabelled(2, 10))
    validate(ds)
    assert ds["split"].values.tolist() == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert training_window(ds) == 6 and training_window(ds, window=4) == 4
    with pytest.raises(SchemaError, match="2 trajectories of 9 snapshots.*split_over='time'"):
        with_held_out_splits(unlabelled(2, 9))
    with pytest.raises(SchemaError, match="already has"):
        with_held_out_splits(ds)
