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

ENSEMBLE_QUANTILE_METHOD = "weibull"
r"""How every forecast reads a quantile of its ``S`` members (NumPy's ``method=``): the
:math:`p`-quantile at the order-statistic position :math:`p(S + 1)` (counted from 1; linear
between neighbours, clipped to the extremes). For members and an observation that are
exchangeable, :math:`P(Y < X_{(k)}) = k / (S + 1)`, so the interval between the
:math:`(1 \mp p)/2` quantiles covers :math:`p` (exactly where the positions are whole numbers:
for 64 members at :math:`p = 0.9`, positions 3.25 and 61.75, :math:`58.5/65 = 0.900`).
NumPy's default reads position :math:`1 + p(S - 1)` and covers
:math:`(60.85 - 4.15)/65 = 0.872` there: a perfectly calibrated ensemble would look
over-confident."""


def ensemble_positions(probs: np.ndarray, n_members: int) -> np.ndarray:
    """0-based fractional positions in the sorted members of the ``probs`` quantiles, as
    :data:`ENSEMBLE_QUANTILE_METHOD` reads them: :math:`p(S + 1) - 1` clipped to
    :math:`[0, S - 1]`."""
    if n_members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {n_members}")
    return np.clip(np.asarray(probs, np.float64) * (n_members + 1) - 1, 0, n_members - 1)


def attainable_coverage(level: float, n_members: int) -> float:
    """The expected coverage of the central ``level`` interval of ``n_members`` members, read
    as :data:`ENSEMBLE_QUANTILE_METHOD` reads it, for an observation exchangeable with the
    members (a perfectly calibrated ensemble): the gap between the two positions of
    :func:`ensemble_positions` over :math:`S + 1`. ``level`` for 64 members (58.5 / 65); less
    where the positions are clipped to the extremes, :math:`(S - 1)/(S + 1)` for fewer than 19
    members at 0.9 (0.78 for 8)."""
    probs = np.array([(1 - level) / 2, (1 + level) / 2])
    positions = ensemble_positions(probs, n_members)
    if np.array_equal(positions, probs * (n_members + 1) - 1):  # not clipped: exactly level
        return float(level)
    return float((positions[1] - positions[0]) / (n_members + 1))


#: Targets of a calibrated forecast on test: the coverage of its 90% interval, and its
#: spread–skill ratio (RMS spread over the RMSE of the mean).
COVERAGE_TARGET = (0.85, 0.95)
SPREAD_SKILL_TARGET = (0.8, 1.25)


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
    n = fc.sizes["time"] if eval_steps is None else min(int(eval_steps), fc.sizes["time"])
    rows = _snapshot_scores(fc.isel(time=slice(0, n)), train, needs=())
    return {name: {"rel_l2_mean": float(rows[name].mean()), "rel_l2_std": float(rows[name].std())}
            for name in _TRIVIAL if name in rows}


_TRIVIAL = ("persistence", "climatology")


def _snapshot_scores(window: xr.Dataset, train: xr.Dataset | None = None,
                     needs: tuple[str, ...] = ("mean", "std", "band"),
                     ) -> dict[str, np.ndarray]:
    """Per-snapshot scores ``(traj, time)`` of a forecast window, read one trajectory at a time
    in float64 (a forecast of many 2D snapshots is never copied whole, a lazily opened one never
    loaded whole). With ``y`` the observations (``obs``) and ``m``, ``s``, ``[l, u]`` the
    forecast's ``mean``, ``std`` and 5–95% band (``q05``, ``q95``), sums over the grid values:

    - ``persistence`` (and, with ``train``, ``climatology``): the rel-L2 of the trivial
      forecasts of :func:`baseline_metrics` (always);
    - with ``"mean"`` in ``needs``: ``rel_l2`` = ``||y - m|| / ||y||`` (``rel_l2_clean``
      against ``obs_u_clean`` when there is one), ``err2`` = ``sum (y - m)^2`` and ``obs2`` =
      ``sum y^2``;
    - with ``"std"``: ``std2`` = ``sum s^2`` and ``sane`` = all of ``m, s`` finite;
    - with ``"band"``: ``inside`` = #{``l <= y <= u``} and ``readable`` = all of ``y, l, u``
      finite;
    - ``size``: the number of grid values per snapshot (a scalar).
    """
    n_traj, n_time = window.sizes["traj"], window.sizes["time"]
    space = [d for d in window["obs"].dims if d not in ("traj", "time")]
    clim = None
    if train is not None:
        clim = np.asarray(_mean_field(train["u"]).transpose(*space).values, np.float64).ravel()
    scores: dict[str, np.ndarray] = {}

    def put(name: str, i: int, value: np.ndarray) -> None:
        if name not in scores:
            scores[name] = np.empty((n_traj, n_time), value.dtype)
        scores[name][i] = value

    def rel(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return np.sqrt(((truth - pred) ** 2).sum(1)) / np.sqrt((truth**2).sum(1))

    size = 0
    for i in range(n_traj):
        def read(name: str, i: int = i) -> np.ndarray:
            block = window[name].isel(traj=i).transpose("time", *space)
            return np.asarray(block.values, np.float64).reshape(n_time, -1)

        obs = read("obs")
        size = obs.shape[1]
        put("persistence", i, rel(obs, obs[:1]))
        if clim is not None:
            put("climatology", i, rel(obs, clim[None]))
        if "mean" in needs:
            mean = read("mean")
            put("rel_l2", i, rel(obs, mean))
            if "obs_u_clean" in window:
                put("rel_l2_clean", i, rel(read("obs_u_clean"), mean))
            put("err2", i, ((obs - mean) ** 2).sum(1))
            put("obs2", i, (obs**2).sum(1))
            if "std" in needs:
                std = read("std")
                put("std2", i, (std**2).sum(1))
                put("sane", i, np.isfinite(mean).all(1) & np.isfinite(std).all(1))
                del std
            del mean
        if "band" in needs:
            lower, upper = read("q05"), read("q95")
            put("inside", i, ((obs >= lower) & (obs <= upper)).sum(1).astype(np.float64))
            put("readable", i, np.isfinite(obs).all(1) & np.isfinite(lower).all(1)
                & np.isfinite(upper).all(1))
            del lower, upper
        del obs
    scores["size"] = np.asarray(size)
    return scores


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
    lo, hi = np.reshape(np.asarray(lower), shape), np.reshape(np.asarray(upper), shape)
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


#: Relative error below which a forecast's mean reproduces its observations (float32 rounding
#: of the data is ~6e-8; a forecast's own error is orders of magnitude above this).
EXACT_REL_L2 = 1e-5


def reproduces(err2, obs2):
    """Whether a mean with squared error ``err2`` reproduces observations of squared norm
    ``obs2`` (:data:`EXACT_REL_L2`): a residual-corrected forecast at its initial snapshot,
    whose mean is the observation. Such a lead time has no error to score a spread against.
    Elementwise on arrays (NumPy or xarray); ``False`` where either is NaN."""
    return err2 <= EXACT_REL_L2**2 * obs2


def forecast_metrics(fc: xr.Dataset, eval_steps: int | None = None) -> dict:
    """Rel-L2 of the mean (vs noisy and clean data), CRPS, 90% coverage and the spread-skill
    ratio (RMS ``std`` over the RMSE of the mean, both pooled over every value) of a forecast of
    :func:`msde_ppl.forecast` over its first ``eval_steps`` times (docs/method.md §7); read one
    trajectory at a time."""
    n = fc.sizes["time"] if eval_steps is None else min(int(eval_steps), fc.sizes["time"])
    window = fc.isel(time=slice(0, n))
    rows = _snapshot_scores(window)
    result = {"rel_l2_mean": float(rows["rel_l2"].mean()),
              "rel_l2_std": float(rows["rel_l2"].std()), "n_pairs": int(rows["rel_l2"].size)}
    if "rel_l2_clean" in rows:
        result["rel_l2_clean_mean"] = float(rows["rel_l2_clean"].mean())
        result["rel_l2_clean_std"] = float(rows["rel_l2_clean"].std())
    result["coverage_90"] = (float(rows["inside"].sum() / (rows["size"] * rows["inside"].size))
                             if rows["readable"].all() else float("nan"))
    result["crps"] = float(np.asarray(window["crps"].values, np.float64).mean())
    finite = bool(rows["sane"].all())
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = float(np.sqrt(rows["std2"].sum()) / np.sqrt(rows["err2"].sum()))
    result["spread_skill"] = ratio if finite else float("nan")  # not 0 = spread / inf
    result["finite"] = finite
    if "diverged" in fc:
        flags = np.asarray(fc["diverged"].values, bool)
        result["diverged_members"] = int(flags.sum())
        result["n_members"] = int(flags.size)
    return result


def lead_time_metrics(fc: xr.Dataset, train: xr.Dataset | None = None,
                      eval_steps: int | None = None) -> xr.Dataset:
    """Scores of a forecast as functions of lead time (over its first ``eval_steps`` times),
    each averaged over trajectories (coverage and spread-skill pooled over trajectories and grid
    values), read one trajectory at a time:

    - ``rel_l2``: rel-L2 of the mean vs the noisy observations (and ``rel_l2_clean``);
    - ``crps``, ``coverage_90`` (of the 5–95% band), ``spread_skill`` (RMS std / RMSE; NaN
      where the mean reproduces the observations, :func:`reproduces`: a calibrated
      forecast's initial snapshot);
    - ``persistence`` and ``climatology``: rel-L2 of the trivial forecasts of
      :func:`baseline_metrics` (``climatology`` only with ``train``).

    Returns an ``xarray.Dataset`` over ``time`` (the forecast's times) with ``lead_time``
    (time since the initial snapshot) as a coordinate.
    """
    n = fc.sizes["time"] if eval_steps is None else min(int(eval_steps), fc.sizes["time"])
    window = fc.isel(time=slice(0, n))
    rows = _snapshot_scores(window, train)
    out = {"rel_l2": _traj_mean(rows["rel_l2"])}
    if "rel_l2_clean" in rows:
        out["rel_l2_clean"] = _traj_mean(rows["rel_l2_clean"])
    crps = window["crps"].transpose("traj", "time").values
    out["crps"] = _traj_mean(np.asarray(crps, np.float64))
    n_values = rows["size"] * rows["inside"].shape[0]
    # as interval_coverage: NaN where a value is not finite
    out["coverage_90"] = np.where(rows["readable"].all(0), rows["inside"].sum(0) / n_values,
                                  np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.sqrt(rows["std2"].sum(0)) / np.sqrt(rows["err2"].sum(0))
    # a mean that reproduces the observations (a calibrated forecast at its initial snapshot,
    # which it was conditioned on) has no skill to compare a spread with: 1e8 is not a ratio
    conditioned = reproduces(rows["err2"].sum(0), rows["obs2"].sum(0))
    out["spread_skill"] = np.where(rows["sane"].all(0) & ~conditioned, ratio, np.nan)
    for name in _TRIVIAL:
        if name in rows:
            out[name] = _traj_mean(rows[name])
    times = np.asarray(window["time"].values, np.float64)
    return xr.Dataset({k: ("time", np.asarray(v, np.float64)) for k, v in out.items()},
                      coords={"time": window["time"], "lead_time": ("time", times - times[0])})


def _traj_mean(values: np.ndarray) -> np.ndarray:
    """Mean over trajectories (axis 0) skipping NaN (a trajectory whose score is NaN is left
    out of that lead time; NaN only where every one is)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lead times stay NaN
        return np.nanmean(values, axis=0)
