"""Data larger than memory (msde_ppl/data/blocks.py): a lazily opened file gives the same
validation, digest, data range, climatology, minibatches and fit as the data in memory."""

import jax
import numpy as np
import pytest
from helpers import TINY, tiny_dataset

from msde_ppl.data import SchemaError, load, save
from msde_ppl.data.blocks import in_memory, trajectory_blocks
from msde_ppl.pipeline.fitted import grid_info
from msde_ppl.pipeline.training import TrainConfig, _data_digest, _training_windows, fit_multiscale
from msde_ppl.predict.metrics import baseline_metrics


@pytest.fixture
def stored(tmp_path):
    ds = tiny_dataset(split=("train", "train", "val", "train", "test"))
    path = save(ds, tmp_path / "data.nc")
    return path, load(path, lazy=True), load(path)


def test_lazy_file_reads_the_same_data_by_blocks(stored):
    _, lazy, eager = stored
    assert not in_memory(lazy["u"]) and in_memory(eager["u"])
    blocks = list(trajectory_blocks(lazy["u"], max_bytes=lazy["u"].nbytes // 3))
    assert [start for start, _ in blocks] == [0, 1, 2, 3, 4]  # one trajectory per block
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), eager["u"].values)
    assert _data_digest(lazy, "train") == _data_digest(eager, "train")
    assert grid_info(lazy, "train") == grid_info(eager, "train")
    fc = eager[["u"]].isel(traj=[4]).rename(u="obs")
    train = eager.isel(traj=np.flatnonzero(eager["split"].values == "train"))
    lazy_train = lazy.isel(traj=np.flatnonzero(lazy["split"].values == "train"))
    assert baseline_metrics(fc, lazy_train) == baseline_metrics(fc, train)
    mean = train["u"].values.astype(np.float64).mean((0, 1))
    assert baseline_metrics(fc, train)["climatology"]["rel_l2_mean"] == pytest.approx(
        float(np.mean(np.linalg.norm(fc["obs"].values[0] - mean, axis=-1)
                      / np.linalg.norm(fc["obs"].values[0], axis=-1))), rel=1e-5)


def test_minibatches_from_a_lazy_file_equal_those_in_memory(stored):
    _, lazy, eager = stored
    train = TrainConfig(steps=6, window=8, windows_per_step=3, seed=2)
    (from_file, n_file), (from_memory, n_memory) = (_training_windows(d, train)
                                                    for d in (lazy, eager))
    assert n_file == n_memory
    for i in range(3):  # inside jit, as in the fit loop
        key = jax.random.key(i)
        a, b = jax.jit(from_file)(key, 0), jax.jit(from_memory)(key, 0)
        np.testing.assert_array_equal(a["y"], b["y"])
        np.testing.assert_array_equal(a["times"], b["times"])


@pytest.mark.slow
def test_a_fit_from_a_lazy_file_equals_the_fit_in_memory(stored):
    _, lazy, eager = stored
    train = TrainConfig(steps=6, window=8, windows_per_step=2, chunk_size=3, seed=2)
    fits = [fit_multiscale(d, TINY, train, progress=False) for d in (lazy, eager)]
    np.testing.assert_array_equal(fits[0].losses, fits[1].losses)


def test_a_lazy_file_with_a_bad_value_is_refused_naming_where(tmp_path):
    ds = tiny_dataset(split=("train", "train", "val", "test"))
    ds["u"][3, 5, 7] = np.nan
    ds.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")
    with pytest.raises(SchemaError, match="traj=3, time=5, x=7"):
        load(tmp_path / "bad.nc", lazy=True)
