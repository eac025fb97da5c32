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


def _shift_of(window: np.ndarray, u: np.ndarray, start: int, steps) -> tuple[int, int, int]:
    """``(traj, a, b)``: the trajectory and the multiples of ``steps`` that roll its snapshots
    ``start ..`` onto ``window``; exactly one must."""
    found = []
    for traj in range(u.shape[0]):
        block = u[traj, start : start + window.shape[0]]
        for a in range(u.shape[-2] // steps[0]):
            for b in range(u.shape[-1] // steps[1]):
                rolled = np.roll(block, (a * steps[0], b * steps[1]), axis=(-2, -1))
                if np.array_equal(rolled, window):
                    found.append((traj, a, b))
    assert len(found) == 1, found
    return found[0]


def test_random_windows_shift_every_window_by_uniform_whole_steps():
    """Each window is a data window rolled by multiples of the steps (2, 3) on an 8 x 12 grid,
    the 4 x 4 shifts drawn uniformly and independently per window: 3200 draws, chi-square
    over the 16 shifts below its 99.9% quantile for 15 degrees of freedom (37.7)."""
    u = np.arange(3 * 10 * 1 * 8 * 12, dtype=np.float32).reshape(3, 10, 1, 8, 12)
    times = jnp.arange(10, dtype=jnp.float32)
    batch_fn = jax.jit(random_windows(jnp.asarray(u), times, 4, windows_per_step=64,
                                      shift_steps=(2, 3)))
    counts = np.zeros((4, 4))
    for i in range(50):
        batch = batch_fn(jax.random.key(i), jnp.int32(i))
        y, t = np.asarray(batch["y"]), np.asarray(batch["times"])
        assert y.shape == (64, 4, 1, 8, 12)
        for w, tw in zip(y, t, strict=True):
            _, a, b = _shift_of(w, u, int(tw[0]), (2, 3))
            counts[a, b] += 1
    expected = counts.sum() / counts.size
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 37.7, counts


def test_random_windows_without_shifts_draw_the_same_windows_as_before():
    """No shifts: the trajectory and start keys are the two halves of the step's key, as
    before shifts existed (the built-in recipes' minibatches are unchanged)."""
    u = jnp.arange(4 * 30 * 2, dtype=jnp.float32).reshape(4, 30, 2)
    times = jnp.arange(30, dtype=jnp.float32)
    batch = random_windows(u, times, 5, windows_per_step=3)(jax.random.key(7), jnp.int32(0))
    key_traj, key_start = jax.random.split(jax.random.key(7))
    traj = jax.random.randint(key_traj, (3,), 0, 4)
    start = jnp.asarray(window_starts(30, 5, 4))[jax.random.randint(key_start, (3,), 0, 26)]
    idx = start[:, None] + jnp.arange(5)[None, :]
    np.testing.assert_array_equal(batch["y"], u[traj[:, None], idx])


@pytest.mark.parametrize("steps, match", [((3,), "dividing its axis"), ((0,), "dividing"),
                                          ((2, 2, 2, 2), "do not match")])
def test_random_windows_refuse_shift_steps_that_do_not_fit(steps, match):
    with pytest.raises(ValueError, match=match):
        random_windows(jnp.zeros((1, 10, 1, 8)), jnp.arange(10.0), 4, shift_steps=steps)
