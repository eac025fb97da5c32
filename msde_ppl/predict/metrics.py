"""Forecast error metrics.

The reference's metric (method.md §6): for each test trajectory ``r`` and time step ``i``,
``eps_ri = ||y_ri - yhat_ri||_2 / ||y_ri||_2`` (norms over all grid values and fields), pooled
over all (trajectory, time) pairs of the evaluation window, reported as mean and (population)
standard deviation. The reference measures against the noisy observations; built-in datasets also
carry ``u_clean`` so the same metric is reported against the noise-free field.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def relative_l2(truth: xr.DataArray, pred: xr.DataArray) -> xr.DataArray:
    """``||truth - pred|| / ||truth||`` over every dim except ``traj`` and ``time``."""
    if truth.dims != pred.dims or truth.shape != pred.shape:
        raise ValueError(
            f"truth {truth.dims}{truth.shape} and prediction {pred.dims}{pred.shape} differ"
        )
    space = [d for d in truth.dims if d not in ("traj", "time")]
    diff = (truth - pred) ** 2
    return np.sqrt(diff.sum(space)) / np.sqrt((truth**2).sum(space))


def pooled_relative_l2(
    truth: xr.DataArray, pred: xr.DataArray, eval_steps: int | None = None
) -> dict[str, float]:
    """Mean and std of :func:`relative_l2` pooled over trajectories and the first
    ``eval_steps`` time steps (all if ``None``)."""
    err = relative_l2(truth, pred)
    if eval_steps is not None:
        err = err.isel(time=slice(0, int(eval_steps)))
    values = np.asarray(err.values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def noise_floor(ds: xr.Dataset, eval_steps: int | None = None) -> dict[str, float] | None:
    """The error of a perfect noise-free prediction against the noisy data,
    ``||u - u_clean|| / ||u||`` pooled like :func:`pooled_relative_l2` (``None`` without
    ``u_clean``)."""
    if "u_clean" not in ds:
        return None
    return pooled_relative_l2(ds["u"], ds["u_clean"], eval_steps)
