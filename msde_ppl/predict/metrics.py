"""Forecast metrics (the one owner of rel-L2, CRPS and interval coverage).

The reference's metric (docs/method.md §7): for each test trajectory ``r`` and time step ``i``,
``eps_ri = ||y_ri - yhat_ri||_2 / ||y_ri||_2`` (norms over all grid values and fields), pooled
over all (trajectory, time) pairs of the evaluation window, reported as mean and (population)
standard deviation. The reference measures against the noisy observations; built-in datasets also
carry ``u_clean`` so the same metric is reported against the noise-free field.

Every metric is non-finite when any value it reads is: a forecast that went NaN or inf never
scores (sums do not skip NaN).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import special


def relative_l2(truth: xr.DataArray, pred: xr.DataArray) -> xr.DataArray:
    """``||truth - pred|| / ||truth||`` over every dim except ``traj`` and ``time``."""
    if truth.dims != pred.dims or truth.shape != pred.shape:
        raise ValueError(
            f"truth {truth.dims}{truth.shape} and prediction {pred.dims}{pred.shape} differ"
        )
    space = [d for d in truth.dims if d not in ("traj", "time")]
    diff = (truth - pred) ** 2
    return np.sqrt(diff.sum(space, skipna=False)) / np.sqrt((truth**2).sum(space, skipna=False))


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


def point_forecast_metrics(test: xr.Dataset, pred: xr.DataArray,
                           eval_steps: int | None = None) -> dict:
    """Scores of a deterministic forecast ``pred`` of ``test``'s trajectories (a baseline):
    rel-L2 vs the noisy observations (and vs ``u_clean`` when ``test`` has it) pooled over the
    first ``eval_steps`` times, as :func:`pooled_relative_l2`, and whether it is finite."""
    n = pred.sizes["time"] if eval_steps is None else min(int(eval_steps), pred.sizes["time"])
    noisy = pooled_relative_l2(test["u"].isel(time=slice(0, n)), pred.isel(time=slice(0, n)))
    result = {"rel_l2_mean": noisy["mean"], "rel_l2_std": noisy["std"], "n_pairs": noisy["n"]}
    if "u_clean" in test:
        clean = pooled_relative_l2(test["u_clean"].isel(time=slice(0, n)),
                                   pred.isel(time=slice(0, n)))
        result["rel_l2_clean_mean"] = clean["mean"]
        result["rel_l2_clean_std"] = clean["std"]
    result["finite"] = bool(np.isfinite(np.asarray(pred.isel(time=slice(0, n)).values)).all())
    return result


def baseline_metrics(fc: xr.Dataset, train: xr.Dataset | None = None,
                     eval_steps: int | None = None) -> dict[str, dict[str, float]]:
    """Rel-L2 (vs the noisy observations, pooled as :func:`pooled_relative_l2`) of two trivial
    forecasts of ``fc``'s trajectories, so a model's score can be read against them:

    - ``persistence``: the initial snapshot held for every lead time;
    - ``climatology``: the mean field of the training split ``train`` (over trajectories and
      times), omitted when ``train`` is ``None``.
    """
    obs = fc["obs"]
    n = obs.sizes["time"] if eval_steps is None else min(int(eval_steps), obs.sizes["time"])
    obs = obs.isel(time=slice(0, n))
    out = {name: pooled_relative_l2(obs, pred) for name, pred in
           _trivial_forecasts(obs, train).items()}
    return {k: {"rel_l2_mean": v["mean"], "rel_l2_std": v["std"]} for k, v in out.items()}


def _trivial_forecasts(obs: xr.DataArray, train: xr.Dataset | None) -> dict[str, xr.DataArray]:
    """Persistence (the first snapshot of ``obs`` held) and, with ``train``, climatology (its
    mean field), shaped and labelled like ``obs``."""
    held = obs.isel(time=0).expand_dims(time=obs["time"]).transpose(*obs.dims)
    out = {"persistence": held.assign_coords(obs.coords)}
    if train is not None:
        clim = _mean_field(train["u"]).broadcast_like(obs).transpose(*obs.dims)
        out["climatology"] = clim.assign_coords(obs.coords)
    return out


def _mean_field(u: xr.DataArray) -> xr.DataArray:
    """The mean of ``u`` over trajectories and times, read a block of trajectories at a time
    (a lazily opened file is never loaded whole)."""
    from msde_ppl.data.blocks import trajectory_blocks

    template = u.isel(traj=0, time=0, drop=True)
    total = np.zeros(template.shape, np.float64)
    axes = (u.dims.index("traj"), u.dims.index("time"))
    for _, block in trajectory_blocks(u):
        total += np.asarray(block, np.float64).sum(axis=axes)
    return template.copy(data=(total / (u.sizes["traj"] * u.sizes["time"])).astype(u.dtype))


DIVERGENCE_MARGIN = 1.0  # in units of the training data's range, on either side of it


def divergence_limits(data_range: list) -> tuple[np.ndarray, np.ndarray]:
    """Per field ``(lower, upper)`` beyond which a forecast value counts as diverged: the
    training data's ``[min, max]`` widened by ``DIVERGENCE_MARGIN`` times its range on each
    side (so a value that far outside is at least 1.5 ranges from the data's centre, three
    times as far as anything seen in training).
    ``data_range`` is :func:`msde_ppl.pipeline.fitted.grid_info`'s, one ``[min, max]`` per
    field."""
    lo, hi = (np.array([r[i] for r in data_range], np.float64) for i in (0, 1))
    width = np.maximum(hi - lo, np.finfo(np.float64).tiny)
    return lo - DIVERGENCE_MARGIN * width, hi + DIVERGENCE_MARGIN * width


def diverged_members(draws: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Which ensemble members of ``draws`` ``(T, S, C, *fine)`` diverged: a non-finite value,
    or one outside ``[lower, upper]`` (per field ``C``), at any time. Returns ``(S,)`` bools."""
    shape = (1, 1, -1) + (1,) * (draws.ndim - 3)
    lo, hi = np.reshape(lower, shape), np.reshape(upper, shape)
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(draws) & (draws >= lo) & (draws <= hi)
    return ~np.moveaxis(inside, 1, 0).reshape(draws.shape[1], -1).all(axis=1)


def noise_floor(ds: xr.Dataset, eval_steps: int | None = None) -> dict[str, float] | None:
    """The error of a perfect noise-free prediction against the noisy data,
    ``||u - u_clean|| / ||u||`` pooled like :func:`pooled_relative_l2` (``None`` without
    ``u_clean``)."""
    if "u_clean" not in ds:
        return None
    return pooled_relative_l2(ds["u"], ds["u_clean"], eval_steps)


def crps_sorted(draws: np.ndarray, obs: np.ndarray) -> np.ndarray:
    r"""Fair (unbiased) ensemble CRPS per observation from draws sorted along the LAST axis:
    :math:`\frac1S\sum_i|X_i - y| - \frac{1}{2S(S-1)}\sum_{i,j}|X_i - X_j|`, the pair sum by
    the sorted-weights identity :math:`\sum_{i,j}|X_i - X_j| = 2\sum_k (2k - S + 1) X_{(k)}`."""
    n = draws.shape[-1]
    gaps = draws - np.asarray(obs, draws.dtype)[..., None]
    np.abs(gaps, out=gaps)
    skill = gaps @ np.full(n, 1.0 / n, draws.dtype)  # the mean over draws, by BLAS
    weights = (2 * np.arange(n) - n + 1).astype(draws.dtype)
    spread = (draws @ weights) * (2 / (n * (n - 1)))  # a matrix-vector product (BLAS)
    return skill - 0.5 * spread


def crps_ensemble(samples: np.ndarray, obs: np.ndarray, *, sample_axis: int = 0) -> np.ndarray:
    """Fair ensemble CRPS (:func:`crps_sorted`) of ``samples`` along ``sample_axis``."""
    draws = np.sort(np.moveaxis(np.asarray(samples, np.float64), sample_axis, -1), axis=-1)
    return crps_sorted(draws, np.asarray(obs, np.float64))


def crps_gaussian(mean: np.ndarray, std: np.ndarray, obs: np.ndarray) -> np.ndarray:
    r"""CRPS of :math:`\mathcal N(\mu, \sigma^2)` at ``obs``: :math:`\sigma[z(2\Phi(z)-1) +
    2\varphi(z) - 1/\sqrt\pi]`, :math:`z = (y-\mu)/\sigma`."""
    mean, std, obs = (np.asarray(a, np.float64) for a in (mean, std, obs))
    z = (obs - mean) / std
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    cdf = 0.5 * (1 + special.erf(z / np.sqrt(2)))
    return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi))


def interval_coverage(obs, lower, upper) -> float:
    """Fraction of ``obs`` inside ``[lower, upper]`` (NaN if any value is not finite)."""
    obs, lower, upper = (np.asarray(a, np.float64) for a in (obs, lower, upper))
    if not (np.isfinite(obs).all() and np.isfinite(lower).all() and np.isfinite(upper).all()):
        return float("nan")
    return float(((obs >= lower) & (obs <= upper)).mean())


def forecast_metrics(fc: xr.Dataset, eval_steps: int | None = None) -> dict:
    """Rel-L2 of the mean (vs noisy and clean data), CRPS, 90% coverage and the spread-skill
    ratio (RMS ``std`` over the RMSE of the mean, both pooled over every value) of a forecast of
    :func:`msde_ppl.forecast` over its first ``eval_steps`` times (docs/method.md §7)."""
    n = fc.sizes["time"] if eval_steps is None else min(int(eval_steps), fc.sizes["time"])
    window = fc.isel(time=slice(0, n))
    noisy = pooled_relative_l2(window["obs"], window["mean"])
    result = {"rel_l2_mean": noisy["mean"], "rel_l2_std": noisy["std"], "n_pairs": noisy["n"]}
    if "obs_u_clean" in window:
        clean = pooled_relative_l2(window["obs_u_clean"], window["mean"])
        result["rel_l2_clean_mean"] = clean["mean"]
        result["rel_l2_clean_std"] = clean["std"]
    result["coverage_90"] = interval_coverage(window["obs"], window["q05"], window["q95"])
    result["crps"] = float(np.asarray(window["crps"].values, np.float64).mean())
    std = np.asarray(window["std"].values, np.float64)
    error = np.asarray(window["obs"].values, np.float64) - np.asarray(window["mean"].values,
                                                                        np.float64)
    finite = all(np.isfinite(np.asarray(window[v].values)).all() for v in ("mean", "std"))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = float(np.sqrt(np.mean(std**2)) / np.sqrt(np.mean(error**2)))
    result["spread_skill"] = ratio if finite else float("nan")  # not 0 = spread / inf
    result["finite"] = bool(finite)
    if "diverged" in fc:
        flags = np.asarray(fc["diverged"].values, bool)
        result["diverged_members"] = int(flags.sum())
        result["n_members"] = int(flags.size)
    return result


def lead_time_metrics(fc: xr.Dataset, train: xr.Dataset | None = None,
                      eval_steps: int | None = None) -> xr.Dataset:
    """Scores of a forecast as functions of lead time (over its first ``eval_steps`` times),
    each averaged over trajectories (coverage and spread-skill pooled over trajectories and grid
    values):

    - ``rel_l2``: rel-L2 of the mean vs the noisy observations (and ``rel_l2_clean``);
    - ``crps``, ``coverage_90`` (of the 5–95% band), ``spread_skill`` (RMS std / RMSE);
    - ``persistence`` and ``climatology``: rel-L2 of the trivial forecasts of
      :func:`baseline_metrics` (``climatology`` only with ``train``).

    Returns an ``xarray.Dataset`` over ``time`` (the forecast's times) with ``lead_time``
    (time since the initial snapshot) as a coordinate.
    """
    n = fc.sizes["time"] if eval_steps is None else min(int(eval_steps), fc.sizes["time"])
    window = fc.isel(time=slice(0, n))
    obs = window["obs"]
    space = [d for d in obs.dims if d not in ("traj", "time")]
    out = {"rel_l2": relative_l2(obs, window["mean"]).mean("traj")}
    if "obs_u_clean" in window:
        out["rel_l2_clean"] = relative_l2(window["obs_u_clean"], window["mean"]).mean("traj")
    out["crps"] = window["crps"].mean("traj")
    inside = (obs >= window["q05"]) & (obs <= window["q95"])
    readable = (np.isfinite(obs) & np.isfinite(window["q05"]) & np.isfinite(window["q95"])).all(
        ["traj", *space])  # as interval_coverage: NaN where a value is not finite
    out["coverage_90"] = inside.mean(["traj", *space]).where(readable)
    error2 = ((obs - window["mean"]) ** 2).mean(["traj", *space])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.sqrt((window["std"] ** 2).mean(["traj", *space])) / np.sqrt(error2)
    sane = (np.isfinite(window["mean"]) & np.isfinite(window["std"])).all(["traj", *space])
    out["spread_skill"] = ratio.where(sane)  # not 0 = spread / inf
    for name, pred in _trivial_forecasts(obs, train).items():
        out[name] = relative_l2(obs, pred).mean("traj")
    result = xr.Dataset({k: v.astype(np.float64) for k, v in out.items()})
    times = np.asarray(window["time"].values, np.float64)
    return result.assign_coords(lead_time=("time", times - times[0]))
