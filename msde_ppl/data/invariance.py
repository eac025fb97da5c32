r"""Does the coarse dynamics of a dataset depend on position? A stencil regression test.

The macro drift is one stencil network applied at every coarse node (translation-equivariant,
docs/method.md §1.1); with ``positional`` it also reads the node's position, which a flow
through a heterogeneous medium needs (a speed, diffusivity or forcing varying in space) and a
translation-invariant one does not (there the position is only a way to fit the training data's
particulars). The test fits the coarse tendency

.. math::

    \frac{\zeta_j(t + \Delta t) - \zeta_j(t)}{\Delta t} \approx
    \beta^\top [\zeta_{j-r}(t), \dots, \zeta_{j+r}(t), 1]

(all fields of the periodic neighbourhood of radius ``r``, ``\zeta`` = :func:`restrict` of the
field) by least squares on the training split, once with one :math:`\beta` shared by every
node and once with a :math:`\beta_j` per node, and scores both on the validation split (other
trajectories, or later times with a split in time). The ratio of their residual sums of
squares on val (each field's scaled by its val variance),

.. math:: \rho = \mathrm{RSS}_\text{per node} / \mathrm{RSS}_\text{shared},

is well below 1 only when the local linear dynamics differ between nodes in a way that holds on
held-out data. On a Dirichlet axis only the nodes at least ``r`` from a wall take part (a wall
node's fixed value, or a neighbourhood wrapped across the walls, would differ from the interior
by construction). Measured (docs/robustness.md): advection with a speed
:math:`1 + \sin(2\pi x)/2` 0.14 (coarse 32); Kuramoto–Sivashinsky 1.01 and bistable fronts
1.15 (coarse 32), and the built-in KdV, Burgers and wave data 0.85, 0.72, 1.00 (coarse 20,
12 trajectories) — translation-invariant equations whose data are not perfectly homogeneous.
Noise that swamps the tendency, or nonlinear dynamics the linear stencil misses, leave
:math:`\rho \approx 1`; with fewer than :data:`MIN_SAMPLES_PER_FEATURE` training pairs per
coefficient of a node there is no test (the per-node fits would be mostly noise).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import xarray as xr

from msde_ppl.data.coarse import restrict
from msde_ppl.data.schema import spatial_dims
from msde_ppl.data.splits import evenly_spread, select_split, split_names

__all__ = ["MIN_SAMPLES_PER_FEATURE", "position_dependence"]

#: Training snapshot pairs per coefficient of a node's fit below which there is no test.
MIN_SAMPLES_PER_FEATURE = 5


def position_dependence(ds: xr.Dataset, coarse: Sequence[int], radius: int = 2,
                        n_traj: int = 16, n_time: int = 64) -> dict | None:
    """The stencil regression test of the module docstring on ``ds``'s ``train`` and ``val``
    splits (up to ``n_traj`` trajectories and ``n_time`` snapshot pairs of each, evenly
    spread; one trajectory in memory at a time).

    Returns:
        ``{"rss_shared", "rss_per_node", "ratio", "n_train"}``: the residual sums of squares on
        val (per field relative to its variance about its mean, averaged over fields), their
        ratio and the number of training pairs per node; ``None`` when the test cannot be made
        (no ``val`` split, too few training pairs, a constant tendency).
    """
    if not {"train", "val"} <= split_names(ds):
        return None
    train = select_split(ds, "train")
    gram = rhs = None
    n_train = 0
    for x, y in _tendencies(train, coarse, radius, n_traj, n_time):
        xt = x.transpose(1, 2, 0)  # (nodes, F, S)
        gram = xt @ x.transpose(1, 0, 2) + (0 if gram is None else gram)
        rhs = xt @ y.transpose(1, 0, 2) + (0 if rhs is None else rhs)
        n_train += x.shape[0]
    if gram is None or n_train < MIN_SAMPLES_PER_FEATURE * gram.shape[-1]:
        return None
    shared = np.linalg.lstsq(gram.sum(0), rhs.sum(0), rcond=None)[0]  # (F, C)
    ridge = 1e-8 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(gram.shape[-1])
    per_node = np.linalg.solve(gram + ridge, rhs)  # (nodes, F, C)
    sums = np.zeros((5, rhs.shape[-1]))  # n, sum y, sum y^2, rss shared, rss per node
    for x, y in _tendencies(select_split(ds, "val"), coarse, radius, n_traj, n_time):
        sums += [np.full(y.shape[-1], y.shape[0] * y.shape[1]), y.sum((0, 1)),
                 (y ** 2).sum((0, 1)), ((y - x @ shared) ** 2).sum((0, 1)),
                 ((y - np.einsum("snf,nfc->snc", x, per_node)) ** 2).sum((0, 1))]
    variance = sums[2] - sums[1] ** 2 / np.maximum(sums[0], 1)
    fields = variance > 1e-12 * np.maximum(sums[2], 1e-300)
    if not fields.any():
        return None
    rss_shared = float(np.mean(sums[3][fields] / variance[fields]))
    rss_node = float(np.mean(sums[4][fields] / variance[fields]))
    if not rss_shared > 0:
        return None
    return {"rss_shared": rss_shared, "rss_per_node": rss_node, "ratio": rss_node / rss_shared,
            "n_train": n_train}


def _tendencies(ds: xr.Dataset, coarse: Sequence[int], radius: int, n_traj: int,
                n_time: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per trajectory (up to ``n_traj``): features ``(S, nodes, C (2r+1)^d + 1)`` and
    tendencies ``(S, nodes, C)`` of up to ``n_time`` snapshot pairs; on Dirichlet data the
    nodes at least ``radius`` from every wall only."""
    dims = spatial_dims(ds)
    coords = [np.asarray(ds[d].values) for d in dims]
    times = np.asarray(ds["time"].values, np.float64)
    if times.size < 2:
        return
    dt = float(times[1] - times[0])
    starts = evenly_spread(times.size - 1, n_time)
    read = np.union1d(starts, starts + 1)
    now_at, next_at = np.searchsorted(read, starts), np.searchsorted(read, starts + 1)
    axes = tuple(range(-len(dims), 0))
    inner = np.ones(tuple(coarse), bool)
    if ds.attrs["boundary"] != "periodic":
        for axis, n in enumerate(coarse):
            keep = (np.arange(n) >= radius) & (np.arange(n) < n - radius)
            inner &= keep.reshape([-1 if a == axis else 1 for a in range(len(coarse))])
    inner = inner.ravel()
    for i in evenly_spread(ds.sizes["traj"], n_traj):
        snaps = ds["u"].isel(traj=int(i), time=read).transpose("time", ..., *dims).values
        if "field" not in ds["u"].dims:
            snaps = snaps[:, None]
        zeta = restrict(snaps.astype(np.float64), coords, coarse, ds.attrs["boundary"])
        now, nxt = zeta[now_at], zeta[next_at]  # (S, C, *coarse)
        shifts = itertools.product(range(-radius, radius + 1), repeat=len(dims))
        hood = np.stack([np.roll(now, [-s for s in shift], axis=axes) for shift in shifts], 2)
        hood = hood.reshape(now.shape[0], -1, inner.size).transpose(0, 2, 1)  # (S, nodes, CS)
        feats = np.concatenate([hood, np.ones((*hood.shape[:2], 1))], axis=2)
        tends = ((nxt - now) / dt).reshape(now.shape[0], now.shape[1], -1).transpose(0, 2, 1)
        yield feats[:, inner], tends[:, inner]
