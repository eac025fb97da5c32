"""Minibatches of windows of consecutive snapshots (method: docs/method.md §5), fixed shapes.

A *window* is ``M`` consecutive snapshots of one trajectory. :func:`window_starts` gives the
starts ``0, s, 2s, ...`` with stride ``s = M - overlap`` (the reference overlaps consecutive
windows by one snapshot), plus a last window ending at ``T - 1`` so every snapshot is covered;
every window has exactly ``M`` snapshots, so a jitted step never recompiles.

:func:`random_windows` is the training minibatch source: ``B`` windows per step, each a
uniformly drawn trajectory and a uniformly drawn start among ``starts``:

- ``sampling="uniform"``: every start (stride 1), so snapshot ``i`` lies in
  ``min(i + 1, M, T - i)`` windows and the first and last ``M - 1`` snapshots are seen up to
  ``M`` times less often than the rest;
- ``sampling="tiled"``: the reference's chunks overlapping by one snapshot, so every snapshot is
  seen equally often.

With ``shift_steps`` (periodic data), every window is also rolled along each spatial axis ``d``
by ``k_d * shift_steps[d]`` cells, ``k_d`` uniform in ``0 .. N_d / shift_steps[d] - 1`` and
independent per window and axis: the minibatch is drawn from the data's translates by whole
coarse cells, so a model whose dynamics do not depend on position is fitted to every
translate of the few trajectories there are (:class:`~msde_ppl.pipeline.training.TrainConfig`
``shifts``).

:func:`n_windows` is the number of windows the data set is cut into, the plate size that scales a
minibatch to the whole data set.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from msde_ppl.data.blocks import WindowReader

__all__ = ["n_windows", "random_windows", "window_starts"]


def window_starts(n_time: int, window: int, overlap: int = 1) -> np.ndarray:
    """Start indices of the windows along one trajectory (see module docstring)."""
    if window < 2:
        raise ValueError(f"window must hold at least 2 snapshots, got {window}")
    if window > n_time:
        raise ValueError(f"window of {window} snapshots is longer than the {n_time} available")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, {window - 1}], got {overlap}")
    starts = np.arange(0, n_time - window + 1, window - overlap)
    if starts[-1] != n_time - window:
        starts = np.append(starts, n_time - window)
    return starts


def n_windows(n_traj: int, n_time: int, window: int) -> int:
    """Windows (overlapping by one snapshot) the data set holds: the minibatch plate size."""
    return n_traj * max(1, (n_time - 1) // (window - 1))


def random_windows(
    u: jax.Array,
    times: jax.Array,
    window: int,
    windows_per_step: int = 1,
    sampling: str = "uniform",
    constrain: Callable[[dict], dict] | None = None,
    shift_steps: tuple[int, ...] | None = None,
) -> Callable[[jax.Array, jax.Array], dict]:
    """Minibatch source ``batch_fn(rng_key, step) -> {"y": (B, M, ...), "times": (B, M)}``.

    Args:
        u: observations ``(traj, time, ...)``, or a
            :class:`~msde_ppl.data.blocks.WindowReader` of data too large for memory (the
            windows are then read from the file at every step; the same batches).
        times: time stamps ``(time,)``.
        window: snapshots per window ``M``.
        windows_per_step: windows per minibatch ``B``.
        sampling: ``"uniform"`` or ``"tiled"`` (module docstring).
        constrain: optional map applied to every batch (e.g. a sharding constraint).
        shift_steps: per spatial axis (the last ``len(shift_steps)`` axes of a snapshot), the
            step of the random periodic shifts (module docstring); each must divide the axis'
            size. ``None``: no shifts.

    Raises:
        ValueError: unknown ``sampling``, or a shift step that does not divide its axis.
    """
    if sampling not in ("uniform", "tiled"):
        raise ValueError(f"unknown window sampling {sampling!r}; use 'uniform' or 'tiled'")
    reader = u if isinstance(u, WindowReader) else None
    if reader is not None:
        if reader.window != window:
            raise ValueError(f"the reader reads windows of {reader.window}, not {window}")
        n_traj, n_time = reader.n_traj, reader.n_time
    else:
        u = jnp.asarray(u)
        n_traj, n_time = u.shape[:2]
    times = jnp.asarray(times)
    starts = jnp.asarray(window_starts(n_time, window,
                                      window - 1 if sampling == "uniform" else 1))
    b = windows_per_step
    roll = None if shift_steps is None else _periodic_shifts(
        reader.item_shape[1:] if reader is not None else u.shape[2:], tuple(shift_steps))

    def batch_fn(rng_key: jax.Array, step: jax.Array) -> dict:
        # a third key only with shifts: the windows drawn without them stay the same
        key_traj, key_start, *key_shift = jax.random.split(rng_key, 2 if roll is None else 3)
        traj = jax.random.randint(key_traj, (b,), 0, n_traj)
        start = starts[jax.random.randint(key_start, (b,), 0, starts.shape[0])]
        idx = start[:, None] + jnp.arange(window)[None, :]
        y = reader(traj, start) if reader is not None else u[traj[:, None], idx]
        if roll is not None:
            y = roll(key_shift[0], y)
        batch = {"y": y, "times": times[idx]}
        return batch if constrain is None else constrain(batch)

    return batch_fn


def _periodic_shifts(snapshot_shape: tuple[int, ...], steps: tuple[int, ...]):
    """``roll(key, y)``: every window of ``y`` ``(B, M, *snapshot_shape)`` rolled along the
    last ``len(steps)`` axes by an independent random multiple of ``steps`` (module
    docstring)."""
    if not steps or len(steps) > len(snapshot_shape):
        raise ValueError(f"shift steps {steps} do not match snapshots of shape {snapshot_shape}")
    axes = tuple(range(-len(steps), 0))  # the last len(steps) axes of a window, as of y
    sizes = tuple(snapshot_shape[a] for a in axes)
    for size, s in zip(sizes, steps, strict=True):
        if not (isinstance(s, int | np.integer) and 0 < s <= size and size % s == 0):
            raise ValueError(f"a shift step must be a positive integer dividing its axis' "
                             f"size; got {s} for an axis of {size}")
    counts = jnp.asarray([size // s for size, s in zip(sizes, steps, strict=True)])

    def roll(key: jax.Array, y: jax.Array) -> jax.Array:
        k = jax.random.randint(key, (y.shape[0], len(steps)), 0, counts[None, :])
        shifts = k * jnp.asarray(steps)[None, :]
        return jax.vmap(lambda w, s: jnp.roll(w, s, axis=axes))(y, shifts)

    return roll
