r"""Calibration and convergence checks of forecasts and fits (NumPy / xarray only, no ArviZ).

- :func:`interval_coverage`, :func:`coverage_curve`, :func:`coverage_from_bounds`: the fraction of
  observations inside central predictive intervals, against the nominal probability ``p``. With
  ``n`` independent observations a calibrated forecast gives :math:`\hat p \sim
  \mathrm{Binomial}(n, p)/n`, standard error :math:`\sqrt{p(1-p)/n}` (reported as ``se``; spatially
  and temporally correlated errors make the effective ``n`` smaller, so read it as a lower bound).
  For exchangeable members and observation, :math:`P(X_{(i)} < Y < X_{(j)}) = (j - i)/(S + 1)`:
  the intervals are read between the quantiles at positions :math:`q(S + 1)`
  (:data:`~msde_ppl.predict.metrics.ENSEMBLE_QUANTILE_METHOD`), which cover ``p`` for a
  calibrated ensemble (NumPy's default reading covers less: 0.872 for 64 members at 0.9).
- :func:`pit_values`, :func:`pit_histogram`: the randomised probability integral transform of an
  ensemble, :math:`\mathrm{PIT} = (r + U)/(S + 1)` with :math:`r` the number of members below the
  observation (ties split at random) and :math:`U \sim \mathcal U(0, 1)`; exactly uniform when the
  observation is exchangeable with the members. Histogram with a chi-square uniformity p-value.
- :func:`spread_skill`: ensemble spread :math:`\sqrt{\overline{\sigma^2}}` against the RMSE of the
  mean per lead time; a calibrated forecast has ratio 1 (``< 1``: over-confident).
- :func:`crps_ensemble`, :func:`crps_gaussian`: fair ensemble CRPS and its Gaussian closed form.
- :func:`elbo_convergence`: whether the smoothed training loss still moves over the last chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import stats

from msde_ppl.predict.metrics import (
    ENSEMBLE_QUANTILE_METHOD,
    crps_ensemble,
    crps_gaussian,
    interval_coverage,
    reproduces,
)

__all__ = [
    "DEFAULT_LEVELS",
    "ConvergenceCheck",
    "calibration_summary",
    "coverage_curve",
    "coverage_from_bounds",
    "crps_ensemble",
    "crps_gaussian",
    "elbo_convergence",
    "interval_coverage",
    "pit_histogram",
    "pit_values",
    "spread_skill",
]

#: Nominal probabilities of the central intervals checked by default.
DEFAULT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def _block_se(inside: np.ndarray, n_blocks: int) -> np.ndarray:
    """Batch-means standard error of coverage fractions: ``inside`` is ``(levels, K, m)`` with
    the values of ``K`` blocks (trajectories, or runs of consecutive lead times) along axis 1;
    the spread of the block fractions measures the uncertainty of their mean whatever the
    correlation inside a block."""
    fractions = inside.reshape(inside.shape[0], n_blocks, -1).mean(-1)
    return fractions.std(axis=1, ddof=1) / np.sqrt(n_blocks)


def _blocked(inside: xr.DataArray, first: str, n_blocks: int) -> tuple[np.ndarray, int, str]:
    """``(levels, K, m)`` values of ``inside`` (dims ``first, ...``) in ``K`` blocks: one per
    trajectory when there are at least ``n_blocks`` of them, else ``n_blocks`` runs of
    consecutive lead times (trailing values that do not fill a run are dropped)."""
    if "traj" in inside.dims and inside.sizes["traj"] >= n_blocks:
        arr = np.asarray(inside.transpose(first, "traj", ...))
        return arr.reshape(arr.shape[0], arr.shape[1], -1), arr.shape[1], "trajectories"
    if "time" in inside.dims and inside.sizes["time"] >= 2 * n_blocks:
        arr = np.asarray(inside.transpose(first, "time", ...))
        per = arr.shape[1] // n_blocks
        arr = arr[:, : per * n_blocks].reshape(arr.shape[0], n_blocks, -1)
        return arr, n_blocks, f"runs of {per} consecutive lead times"
    arr = np.asarray(inside)
    return arr.reshape(arr.shape[0], 1, -1), 1, ""


def _curve(levels: np.ndarray, inside: xr.DataArray, first: str, n_blocks: int,
           finite: bool = True) -> xr.Dataset:
    """Coverage curve from the indicators ``inside`` (dims ``first, *data dims``); NaN where
    the forecast or the observations are not finite (a diverged forecast never scores)."""
    if int(n_blocks) < 2:
        raise ValueError(f"n_blocks must be at least 2, got {n_blocks}")
    n = int(np.prod([inside.sizes[d] for d in inside.dims if d != first]))
    empirical = np.asarray(inside).reshape(len(levels), -1).mean(1)
    if not finite:
        empirical = np.full(len(levels), np.nan)
    binomial = np.sqrt(levels * (1 - levels) / n)
    blocks, k, kind = _blocked(inside, first, n_blocks)
    if k >= 2:
        se = np.maximum(_block_se(blocks, k), binomial)
        how = (f"se = batch-means standard error over {k} blocks ({kind}; the fractions of "
               "neighbouring grid points and times are correlated), at least the binomial one")
    else:
        se = binomial
        how = ("se = binomial standard error sqrt(p (1 - p) / n), which assumes independent "
               "values and so overstates the certainty for correlated fields")
    return xr.Dataset(
        {"empirical": (("level",), empirical), "se": (("level",), se)},
        coords={"level": levels},
        attrs={"n": n, "n_blocks": k,
               "description": "fraction of observations inside central intervals; " + how},
    )


def coverage_curve(
    samples: xr.DataArray,
    obs: xr.DataArray,
    levels: Sequence[float] = DEFAULT_LEVELS,
    *,
    sample_dim: str = "sample",
    n_blocks: int = 10,
) -> xr.Dataset:
    """Empirical coverage of the ensemble's central intervals at each nominal ``level``.

    Args:
        samples: predictive draws with a ``sample_dim`` dimension.
        obs: observations (dims of ``samples`` without ``sample_dim``).
        levels: nominal probabilities in (0, 1).
        sample_dim: name of the ensemble dimension.
        n_blocks: blocks for the standard error: trajectories if there are at least this many,
            else this many runs of consecutive lead times.

    Returns:
        Dataset over ``level`` with ``empirical`` and ``se``: the batch-means standard error
        over the blocks (not the binomial one, which treats correlated grid points and times
        as independent; the binomial is used only when there are fewer than ``n_blocks``
        trajectories and fewer than ``2 n_blocks`` lead times). Blocks of lead times of one
        trajectory also absorb a genuine trend of coverage with lead time into the standard
        error: conservative.
    """
    probs = _check_levels(levels)
    lower = samples.quantile((1 - probs) / 2, dim=sample_dim, method=ENSEMBLE_QUANTILE_METHOD)
    upper = samples.quantile((1 + probs) / 2, dim=sample_dim, method=ENSEMBLE_QUANTILE_METHOD)
    upper = upper.assign_coords(quantile=lower["quantile"].values)  # pair bounds by position
    inside = ((obs >= lower) & (obs <= upper)).transpose("quantile", ...)
    finite = bool(np.isfinite(np.asarray(samples)).all() and np.isfinite(np.asarray(obs)).all())
    return _curve(probs, inside, "quantile", n_blocks, finite)


def coverage_from_bounds(fc: xr.Dataset, obs_var: str = "obs", n_blocks: int = 10,
                         ) -> xr.Dataset:
    """Coverage curve of a forecast that has ``lower``/``upper`` over ``level`` (from
    ``forecast(..., levels=...)``), or only ``q05``/``q95`` (one level, 0.9); standard errors as
    in :func:`coverage_curve`."""
    obs = fc[obs_var]
    lower, upper = (fc["lower"], fc["upper"]) if "lower" in fc else (fc["q05"], fc["q95"])
    if "lower" in fc:
        probs = np.asarray(fc["level"].values, np.float64)
        inside = ((obs >= lower) & (obs <= upper)).transpose("level", ...)
    else:
        probs = np.array([0.9])
        inside = ((obs >= lower) & (obs <= upper)).expand_dims("level")
    finite = all(bool(np.isfinite(np.asarray(a)).all()) for a in (obs, lower, upper))
    return _curve(probs, inside, "level", n_blocks, finite)


def _check_levels(levels: Sequence[float]) -> np.ndarray:
    probs = np.asarray(levels, np.float64)
    if probs.ndim != 1 or probs.size == 0 or np.any((probs <= 0) | (probs >= 1)):
        raise ValueError(f"levels must be probabilities in (0, 1), got {levels}")
    return probs


def pit_values(
    samples: xr.DataArray | np.ndarray,
    obs: xr.DataArray | np.ndarray,
    *,
    sample_axis: int = 0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Randomised PIT of each observation within its ensemble (flattened, values in (0, 1)).

    Args:
        samples: ``S`` draws along ``sample_axis`` (an ``xarray.DataArray`` is used through its
            values: put the sample dim at ``sample_axis``).
        obs: observations, shape of ``samples`` without ``sample_axis``.
        sample_axis: axis of the draws.
        rng: generator for the tie-breaking uniforms (default seeded 0).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    draws = np.moveaxis(np.asarray(samples), sample_axis, 0)
    y = np.asarray(obs)[None]
    n_draws = draws.shape[0]
    below = (draws < y).sum(0)
    ties = (draws == y).sum(0)
    rank = below + np.floor(rng.uniform(size=below.shape) * (ties + 1))
    return ((rank + rng.uniform(size=below.shape)) / (n_draws + 1)).ravel()


def pit_histogram(pit: np.ndarray, bins: int = 10, n_blocks: int | None = None) -> dict:
    r"""Counts of PIT values in ``bins`` equal bins, the uniform expectation and a chi-square
    goodness-of-fit p-value.

    With ``n_blocks``, ``pit`` (in the order :func:`pit_values` returns it) is cut into that
    many consecutive blocks (put the lead-time or trajectory dim first so that a block is a run
    of them) and the statistic is corrected for the correlation of neighbouring values by the
    second-order Rao–Scott (Satterthwaite) correction: with :math:`V` the covariance of the
    bin fractions estimated from the spread of the blocks' fractions and
    :math:`D = n\,\operatorname{diag}(1/p)\,V` (:math:`p = 1/\text{bins}`), the statistic
    :math:`X^2\,\operatorname{tr}D/\operatorname{tr}D^2` is referred to a chi-square with
    :math:`(\operatorname{tr}D)^2/\operatorname{tr}D^2` degrees of freedom;
    ``design_effect`` is :math:`\operatorname{tr}D/(\text{bins}-1)` and ``n_eff = n /
    design_effect``. Without it the values are assumed independent, which for a forecast field
    overstates the evidence against uniformity by a large factor.
    """
    pit = np.asarray(pit).ravel()
    counts, edges = np.histogram(pit, bins=bins, range=(0.0, 1.0))
    expected = counts.sum() / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    deff, p_value = 1.0, float(stats.chi2.sf(chi2, bins - 1))
    if n_blocks is not None:
        k = int(n_blocks)
        if k < 2:
            raise ValueError(f"n_blocks must be at least 2, got {n_blocks}")
        per = pit.size // k
        blocks = pit[: per * k].reshape(k, per)
        fractions = np.stack([np.histogram(b, bins=bins, range=(0.0, 1.0))[0] / per
                              for b in blocks])  # (K, bins)
        cov = np.cov(fractions, rowvar=False) / k  # covariance of the pooled fractions
        design = pit.size * cov * bins  # n diag(1/p) V
        trace, trace_sq = float(np.trace(design)), float(np.sum(design * design.T))
        if trace > 0 and trace_sq > 0:
            deff = max(trace / (bins - 1), 1.0)
            dof = trace**2 / trace_sq
            scale = trace / trace_sq
            if deff == 1.0:  # never claim more certainty than independent values
                dof, scale = bins - 1, 1.0
            p_value = float(stats.chi2.sf(chi2 * scale, dof))
    return {"counts": counts, "edges": edges, "expected": float(expected), "chi2": chi2,
            "design_effect": deff, "n_eff": float(pit.size / deff), "p_value": p_value}


def spread_skill(fc: xr.Dataset, obs_var: str = "obs") -> xr.Dataset:
    """Spread (RMS of ``std``), RMSE of ``mean`` against ``obs_var`` and their ratio per lead time
    (averaged over every dim but ``time``); the ratio is NaN where the mean reproduces the
    observations (:func:`~msde_ppl.predict.metrics.reproduces`: a calibrated forecast's initial
    snapshot, which it was conditioned on). A lead time with a non-finite value scores NaN
    (no mean that skips it: a blown-up member must not leave a finite ratio)."""
    dims = [d for d in fc["mean"].dims if d != "time"]
    obs = fc[obs_var].astype(np.float64)
    spread = np.sqrt((fc["std"].astype(np.float64) ** 2).mean(dims, skipna=False))
    rmse = np.sqrt(((obs - fc["mean"]) ** 2).mean(dims, skipna=False))
    exact = reproduces(rmse**2, (obs**2).mean(dims, skipna=False))
    return xr.Dataset({"spread": spread, "rmse": rmse, "ratio": (spread / rmse).where(~exact)})


class ConvergenceCheck(NamedTuple):
    """Result of :func:`elbo_convergence`.

    Attributes:
        converged: ``rel_change < tol``.
        rel_change: ``|s_end - s_prev| / scale``.
        smoothed_end: mean loss over the last ``window`` steps.
        smoothed_prev: mean loss over the ``window`` steps before the last chunk.
        scale: ``max(|smoothed_end|, |smoothed_start - smoothed_end|)`` (a relative change of a
            loss near zero is measured against the total decrease).
        window, chunk, tol: the settings used.
    """

    converged: bool
    rel_change: float
    smoothed_end: float
    smoothed_prev: float
    scale: float
    window: int
    chunk: int
    tol: float


def elbo_convergence(
    losses: np.ndarray, *, window: int | None = None, chunk: int | None = None,
    tol: float = 0.01,
) -> ConvergenceCheck:
    """Has the training loss levelled off?

    The loss is smoothed by a moving average over ``window`` steps (default 5% of the run, at
    least 10); the smoothed value at the end is compared with the value ``chunk`` steps earlier
    (default 20% of the run): converged when the relative change is below ``tol``.

    Raises:
        ValueError: fewer than ``window + chunk`` finite losses.
    """
    losses = np.asarray(losses, np.float64)
    n = losses.size
    window = max(10, n // 20) if window is None else int(window)
    chunk = max(window, n // 5) if chunk is None else int(chunk)
    if n < window + chunk or not np.isfinite(losses).all():
        raise ValueError(f"need at least window + chunk = {window + chunk} finite losses, got "
                         f"{n} (finite: {bool(np.isfinite(losses).all())})")
    end = losses[n - window :].mean()
    prev = losses[n - chunk - window : n - chunk].mean()
    start = losses[:window].mean()
    scale = max(abs(end), abs(start - end), np.finfo(np.float64).tiny)
    rel = abs(end - prev) / scale
    return ConvergenceCheck(bool(rel < tol), float(rel), float(end), float(prev), float(scale),
                            window, chunk, float(tol))


def calibration_summary(fc: xr.Dataset, obs_var: str = "obs") -> dict:
    """Scalars of a forecast: 90% coverage, mean CRPS, mean spread/skill ratio, and (with
    ``samples``) the PIT uniformity p-value; each NaN when a value it reads is not finite."""
    out = {"coverage_90": interval_coverage(fc[obs_var], fc["q05"], fc["q95"]),
           "crps": float(fc["crps"].mean(skipna=False))}  # NaN if any value is not finite
    ss = spread_skill(fc, obs_var)
    out["spread_skill_ratio"] = float(ss["spread"].mean(skipna=False)
                                      / ss["rmse"].mean(skipna=False))
    if "samples" in fc:
        pit = pit_values(fc["samples"].transpose("sample", ...), fc[obs_var])
        out["pit_p_value"] = pit_histogram(pit)["p_value"]
    return out
