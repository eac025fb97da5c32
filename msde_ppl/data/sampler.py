"""Minibatches of windows of consecutive snapshots (method.md §4.1), with fixed shapes.

A *window* is ``M`` consecutive snapshots of one trajectory. Window starts along a trajectory of
``T`` snapshots are ``0, s, 2s, ...`` with stride ``s = M - overlap`` (the reference overlaps
consecutive windows by one snapshot), plus a last window ending at ``T - 1`` so every snapshot is
covered; unlike the reference's shorter remainder chunk, every window has exactly ``M``
snapshots, so a jitted step never recompiles.

An epoch visits every (trajectory, start) pair once in an order drawn from a key, grouped into
batches of ``B`` windows; the last batch is filled up with the first windows of the same
permutation so every batch has shape ``(B, M, ...)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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


class WindowSampler(NamedTuple):
    """Index sets for shuffled minibatches of windows.

    Attributes:
        index: ``(n_windows, 2)`` int array of ``(trajectory, start)`` pairs.
        window: snapshots per window ``M``.
        batch_windows: windows per minibatch ``B``.
    """

    index: np.ndarray
    window: int
    batch_windows: int

    @classmethod
    def create(
        cls, n_traj: int, n_time: int, window: int, batch_windows: int = 1, overlap: int = 1
    ) -> WindowSampler:
        if n_traj < 1:
            raise ValueError(f"need at least one trajectory, got {n_traj}")
        if batch_windows < 1:
            raise ValueError(f"batch_windows must be at least 1, got {batch_windows}")
        starts = window_starts(n_time, window, overlap)
        traj, start = np.meshgrid(np.arange(n_traj), starts, indexing="ij")
        index = np.stack([traj.ravel(), start.ravel()], axis=1).astype(np.int32)
        return cls(index=index, window=window, batch_windows=batch_windows)

    @property
    def n_windows(self) -> int:
        return self.index.shape[0]

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.n_windows // self.batch_windows)

    def epoch(self, rng_key: jax.Array) -> jax.Array:
        """Shuffled ``(trajectory, start)`` pairs, shape ``(batches_per_epoch, B, 2)``."""
        order = jax.random.permutation(rng_key, self.n_windows)
        pad = self.batches_per_epoch * self.batch_windows - self.n_windows
        order = jnp.concatenate([order, order[:pad]])
        return jnp.asarray(self.index)[order].reshape(self.batches_per_epoch, self.batch_windows, 2)

    def gather(self, u: jax.Array, batch: jax.Array) -> jax.Array:
        """Windows of ``u`` (``(traj, time, ...)``) for a batch of pairs: ``(B, M, ...)``.

        Jit-friendly: fixed output shape, integer indexing only.
        """
        steps = batch[:, 1:2] + jnp.arange(self.window)[None, :]
        return u[batch[:, 0:1], steps]
