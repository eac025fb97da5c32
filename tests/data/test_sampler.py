"""Window sampler: coverage, fixed shapes, determinism, correct gathering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.data import WindowSampler, window_starts


def test_window_starts_match_reference_chunking():
    starts = window_starts(1001, 64)
    assert len(starts) == 16  # the reference's 16 chunks per 1001-step trajectory
    assert starts[0] == 0 and starts[-1] == 1001 - 64
    assert np.all(np.diff(starts)[:-1] == 63)  # consecutive windows overlap by one snapshot
    covered = np.zeros(1001, bool)
    for s in starts:
        covered[s : s + 64] = True
    assert covered.all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_time=10, window=11), "longer than"),
    (dict(n_time=10, window=1), "at least 2"),
    (dict(n_time=10, window=4, overlap=4), "overlap"),
])
def test_window_starts_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        window_starts(**kwargs)


def test_epoch_covers_every_window_with_fixed_shapes():
    sampler = WindowSampler.create(n_traj=3, n_time=101, window=16, batch_windows=4)
    assert sampler.n_windows == 3 * len(window_starts(101, 16))
    batches = np.asarray(sampler.epoch(jax.random.key(1)))
    assert batches.shape == (sampler.batches_per_epoch, 4, 2)
    pairs = {tuple(p) for p in batches.reshape(-1, 2)}
    assert pairs == {tuple(p) for p in sampler.index}


def test_epoch_is_deterministic_given_key_and_shuffled():
    sampler = WindowSampler.create(n_traj=5, n_time=200, window=10, batch_windows=3)
    a = sampler.epoch(jax.random.key(7))
    b = sampler.epoch(jax.random.key(7))
    c = sampler.epoch(jax.random.key(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(np.asarray(a).reshape(-1, 2)[: sampler.n_windows], sampler.index)


def test_gather_returns_consecutive_snapshots_and_compiles_once():
    u = jnp.arange(3 * 50 * 4, dtype=jnp.float32).reshape(3, 50, 4)
    sampler = WindowSampler.create(n_traj=3, n_time=50, window=8, batch_windows=2)
    traces = []

    @jax.jit
    def gather(u, batch):
        traces.append(1)
        return sampler.gather(u, batch)

    for batch in sampler.epoch(jax.random.key(0)):
        windows = gather(u, batch)
        assert windows.shape == (2, 8, 4)
        for w, (r, s) in zip(np.asarray(windows), np.asarray(batch), strict=True):
            np.testing.assert_array_equal(w, np.asarray(u)[r, s : s + 8])
    assert len(traces) == 1
