"""Window starts and the training minibatch source: coverage, fixed shapes, gathering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.data import n_windows, random_windows, window_starts


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


def test_random_windows_gather_consecutive_snapshots_and_compile_once():
    u = jnp.arange(3 * 50 * 4, dtype=jnp.float32).reshape(3, 50, 4)
    times = jnp.arange(50, dtype=jnp.float32) * 0.1
    batch_fn = random_windows(u, times, 8, windows_per_step=2)
    traces = []

    @jax.jit
    def draw(key, step):
        traces.append(1)
        return batch_fn(key, step)

    seen_starts = set()
    for i in range(30):
        batch = draw(jax.random.key(i), jnp.int32(i))
        y, t = np.asarray(batch["y"]), np.asarray(batch["times"])
        assert y.shape == (2, 8, 4) and t.shape == (2, 8)
        for w, tw in zip(y, t, strict=True):
            start = int(round(tw[0] / 0.1))
            traj = int(w[0, 0]) // (50 * 4)
            np.testing.assert_array_equal(w, np.asarray(u)[traj, start : start + 8])
            np.testing.assert_allclose(tw, np.asarray(times)[start : start + 8])
            seen_starts.add(start)
    assert len(traces) == 1
    assert len(seen_starts) > 10  # uniform sampling: many different starts


@pytest.mark.parametrize("sampling, expected", [
    ("uniform", set(range(0, 101 - 16 + 1))),
    ("tiled", set(window_starts(101, 16))),
])
def test_random_windows_starts(sampling, expected):
    u = jnp.zeros((1, 101, 1))
    times = jnp.arange(101, dtype=jnp.float32)
    batch_fn = jax.jit(random_windows(u, times, 16, windows_per_step=64, sampling=sampling))
    starts = set()
    for i in range(40):
        batch = batch_fn(jax.random.key(i), jnp.int32(i))
        starts |= {int(t) for t in np.asarray(batch["times"][:, 0])}
    assert starts == expected


def test_random_windows_refuses_unknown_sampling():
    with pytest.raises(ValueError, match="sampling 'shuffled'"):
        random_windows(jnp.zeros((1, 10, 1)), jnp.arange(10.0), 4, sampling="shuffled")


def test_n_windows_counts_reference_chunks():
    assert n_windows(10, 1001, 64) == 10 * 15
