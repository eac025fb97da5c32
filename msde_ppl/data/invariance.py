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
node and once with a :math:`\beta_j` per node, and scores both on the validation split. The
ratio of their residual sums of squares on val,

.. math:: \rho = \mathrm{RSS}_\text{per node} / \mathrm{RSS}_\text{shared},

is well below 1 only when the local linear dynamics differ between nodes in a way that holds on
held-out trajectories. Measured (coarse 32; docs/robustness.md): advection with a speed
:math:`1 + \sin(2\pi x)/2` 0.14; Kuramoto–Sivashinsky 1.01, bistable fronts 1.15, and the
built-in KdV, Burgers and wave data (coarse 20) 0.85, 0.72, 1.00 — translation-invariant
equations whose data are less than perfectly homogeneous (12 trajectories). Noise that swamps
the tendency (or nonlinear dynamics the linear stencil misses) leaves :math:`\rho \approx 1`,
so the test errs on the side of the translation-equivariant drift.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import xarray as xr

from msde_ppl.data.coarse import restrict
from msde_ppl.data.schema import spatial_dims
from msde_ppl.data.splits import select_split, split_names

__all__ = ["position_dependence"]


def position_dependence(ds: xr.Dataset, coarse: Sequence[int], radius: int = 2,
                        n_traj: int = 16, n_time: int = 64) -> dict | None:
    """The stencil regression test of the module docstring on ``ds``'s ``train`` and ``val``
    splits (up to ``n_traj`` trajectories and ``n_time`` snapshot pairs of each, evenly
    spread; one trajectory read at a time).

    Returns:
        ``{"rss_shared", "rss_per_node", "ratio"}`` (residual sums of squares on val relative
        to the val tendency's variance about its mean, and their ratio), or ``None`` when the
        test cannot be made: no ``val`` split, fewer than 2 snapshots, a constant tendency.
    """
    if not {"train", "val"} <= split_names(ds) or ds.sizes["time"] < 2:
        return None
    x_train, y_train = _tendencies(select_split(ds, "train"), coarse, radius, n_traj, n_time)
    x_val, y_val = _tendencies(select_split(ds, "val"), coarse, radius, n_traj, n_time)
    shared = np.linalg.lstsq(x_train.reshape(-1, x_train.shape[-1]),
                             y_train.reshape(-1, y_train.shape[-1]), rcond=None)[0]
    gram = np.einsum("snf,sng->nfg", x_train, x_train)
    ridge = 1e-8 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(gram.shape[-1])
    per_node = np.linalg.solve(gram + ridge, np.einsum("snf,snc->nfc", x_train, y_train))
    total = float(np.sum((y_val - y_val.mean(axis=(0, 1))) ** 2))
    rss_shared = float(np.sum((y_val - x_val @ shared) ** 2))
    rss_node = float(np.sum((y_val - np.einsum("snf,nfc->snc", x_val, per_node)) ** 2))
    if not total > 0 or not rss_shared > 0:
        return None
    return {"rss_shared": rss_shared / total, "rss_per_node": rss_node / total,
            "ratio": rss_node / rss_shared}


def _tendencies(ds: xr.Dataset, coarse: Sequence[int], radius: int, n_traj: int,
                n_time: int) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(S, n_nodes, C (2r+1)^d + 1)`` and tendencies ``(S, n_nodes, C)`` of up to
    ``n_traj x n_time`` snapshot pairs of ``ds``."""
    dims = spatial_dims(ds)
    coords = [np.asarray(ds[d].values) for d in dims]
    times = np.asarray(ds["time"].values, np.float64)
    dt = float(times[1] - times[0])
    pick = lambda n, k: np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))  # noqa: E731
    starts = pick(ds.sizes["time"] - 1, n_time)
    axes = tuple(range(-len(dims), 0))
    feats, tends = [], []
    for i in pick(ds.sizes["traj"], n_traj):
        traj = ds["u"].isel(traj=int(i))
        pair = [traj.isel(time=t).transpose("time", ..., *dims).values
                for t in (starts, starts + 1)]
        if "field" not in ds["u"].dims:
            pair = [p[:, None] for p in pair]
        now, nxt = (restrict(p.astype(np.float64), coords, coarse, ds.attrs["boundary"])
                    for p in pair)  # (S, C, *coarse)
        shifts = itertools.product(range(-radius, radius + 1), repeat=len(dims))
        hood = np.stack([np.roll(now, [-s for s in shift], axis=axes) for shift in shifts], 2)
        hood = hood.reshape(now.shape[0], -1, int(np.prod(coarse)))  # (S, C * stencil, nodes)
        feats.append(np.concatenate([hood.transpose(0, 2, 1),
                                     np.ones((now.shape[0], hood.shape[2], 1))], axis=2))
        tends.append(((nxt - now) / dt).reshape(now.shape[0], now.shape[1], -1)
                     .transpose(0, 2, 1))
    return np.concatenate(feats), np.concatenate(tends)
