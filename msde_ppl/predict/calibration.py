r"""Post-hoc spread calibration of forecast ensembles, fitted on the validation split.

A learned SDE's ensemble can be over- or under-dispersed (a diffusion learned from one-step
posterior paths says little about the error growth of a long rollout). The calibration
inflates every member's deviation from the ensemble mean by a lead-time factor :math:`c(\tau)`,

.. math::

    \tilde y^{(s)}_\tau = \bar y_\tau + c(\tau)\,\big(y^{(s)}_\tau - \bar y_\tau\big),

which leaves the mean (and so the rel-L2) unchanged and multiplies the spread by
:math:`c(\tau)`. :math:`c(\tau)` is fitted on the **validation** forecast, pooled over its
trajectories and grid points, by one of two rules:

- ``"spread_skill"`` (default): :math:`c(\tau) = \mathrm{RMSE}_\tau / \mathrm{RMS}(\sigma_\tau)`,
  the factor that makes the spread–skill ratio 1 at every lead time (the moment estimator of a
  variance inflation);
- ``"crps"``: the minimiser of the CRPS of :math:`\mathcal N(\bar y_\tau, c^2\sigma_\tau^2)`
  over a log-spaced grid of factors.

Both agree for Gaussian errors; with heavy-tailed errors the CRPS rule shrinks the spread to fit
the bulk and under-covers. The default was chosen on the val split only (two-fold
cross-validation over val trajectories of KdV 1D, docs/calibration.md). The factor is then
smoothed in lead time (a moving average of :math:`\log c` over ``smooth`` lead times:
neighbouring lead times share most of their error, so the factor varies slowly with
:math:`\tau`). The test forecast is rolled out again with the factor applied inside the
ensemble (``forecast(..., spread_factor=c)``), so its quantiles, coverage and ensemble CRPS are
those of the inflated members.

**Residual persistence** (:func:`fit_residual_gain`). The forecast starts from the encoded first
snapshot, so its mean at lead 0 already misses :math:`y_0` by the reconstruction residual
:math:`e_0 = y_0 - \bar y_0` (what the coarse grid and the micro state do not carry: on a
chaotic flow under-resolved by the coarse grid, 40% of the field). That residual is *known* at
forecast time and stays correlated with the later errors :math:`e_\tau = y_\tau - \bar y_\tau`
for as long as the unresolved scales persist. The correction adds it back with a gain per lead
time and field,

.. math::

    \tilde y^{(s)}_\tau = y^{(s)}_\tau + a(\tau)\,e_0, \qquad
    a(\tau) = \min_{\tau' \le \tau} \frac{\sum e_{\tau'}\, e_0}{\sum e_0^2}
    \ \text{clipped to}\ [0, 1],

the least-squares regression of the error at lead :math:`\tau` on the initial residual, pooled
over the validation trajectories and grid points (model output statistics, as in weather
forecasting), made non-increasing in lead time: once the forecast error has grown far beyond
the residual, the ratio is mostly sampling noise (on a fast advection, gains of 0 and 1
alternated after the residual had decorrelated). :math:`a(0) = 1`, so the corrected mean
starts at the observed snapshot and falls back to the model as the residual decorrelates;
observation noise in :math:`y_0` does not persist and lowers :math:`a` by itself. It moves
every member by the same amount: the spread is then calibrated on the corrected validation
errors.

**The micro part weighted** (:func:`fit_persistence`). For a model with a micro part (the
product-of-experts likelihood's ``micro``, ensemble mean :math:`\bar m_\tau`) the residual is
taken with respect to the macro part, :math:`r_0 = y_0 - (\bar y_0 - \bar m_0)`, and the micro
forecast gets a weight of its own,
:math:`\tilde y_\tau = (\bar y_\tau - \bar m_\tau) + a(\tau) r_0 + b(\tau) \bar m_\tau`,
with :math:`a, b \in [0, 1]` fitted jointly on the validation forecast. A micro forecast
that has lost its correlation with the unresolved field but kept its amplitude is weighted
down instead of added whole (Kuramoto-Sivashinsky, docs/calibration.md).

**Heavy tails** (:func:`fit_spread_tail`). A factor that matches the RMSE pooled over the grid
over-covers when the errors are heavy-tailed relative to the spread (most grid values err less
than their spread, a few far more: a front or a wave crest the ensemble places slightly
wrong). Each member's deviation is then further scaled by a fixed weight :math:`w_s`,

.. math::

    \tilde y^{(s)}_\tau = \bar y_\tau + c(\tau)\, w_s\,\big(y^{(s)}_\tau - \bar y_\tau\big),
    \qquad w_s = \sqrt{(\nu - 2) / V_s},\quad V_s \sim \chi^2_\nu,

(the weighted deviations re-centred on the unweighted ones' average, so the draws' average
does not move), a scale mixture that turns Gaussian deviations into Student-t ones of the same
variance
(:math:`\mathbb E\,w^2 = 1`, so the spread–skill ratio is kept) with narrower central intervals.
The :math:`V_s` are stratified quantiles of :math:`\chi^2_\nu` (:func:`tail_weights`), each
member a whole path scaled. :math:`\nu` is chosen on :data:`TAIL_GRID` (:math:`\nu = \infty`:
no tail, the Gaussian) the way the factor is: by matching a target, here the 90% coverage of
the calibrated validation errors :math:`z = (y - \bar y) / (c\,m\,\sigma)` by the interval
between the 5% and 95% quantiles of the weighted members, as the forecast reads it
(:data:`~msde_ppl.predict.metrics.ENSEMBLE_QUANTILE_METHOD`, simulated, not assumed). Errors
no heavier-tailed than the spread keep Gaussian members.
(Maximum likelihood of :math:`z` was tried first: it chose the heaviest tail on the grid for
every implicit-scale model, which then under-covered on test, 0.83.)

**Errors the spread misses** (:func:`fit_spread_widening`). The opposite case: the spread
sits where the errors are not, so Gaussian members at the errors' RMS cover *less* than 90%
(a phase-separating 2D field: 0.85 of the calibrated val errors, 0.80 of the test ones; at its
interfaces errors and spread have the same RMS, yet 0.77 of the errors fall in the interval).
A tail cannot help (it only narrows the interval); the factor is multiplied by the smallest
common widening :math:`k \ge 1` whose members cover 90% of the validation errors, read as the
forecast reads them. The spread–skill ratio is then multiplied by :math:`k`, so :math:`k`
stops at 1.25, the upper edge of the spread–skill target: coverage is raised as far as that
target allows.

**Members that stay in the data's range.** A heavy tail's few far members carry deviations
several times the spread, and a large factor multiplies deviations that are already of the
order of the field's range (a front or a crest the member places elsewhere): inflated
linearly, they leave the plausible range of the field (beyond the bounds of
:func:`~msde_ppl.predict.metrics.divergence_limits`, one data range beyond its extremes)
although the dynamics did not diverge (bistable fronts of the robustness benchmark: 41 of 256
delivered test members at factors up to 2.9, none raw; wave 1D's implicit-scale model: 14 of
320 at 2.1 dof). The forecast therefore inflates in a coordinate that maps the bounds onto the
real line (``forecast``'s ``_calibrated_draws``: :math:`\operatorname{artanh}` of the value
scaled to the bounds): the inflation above is linear to within 4% inside the training data's
range and compresses only what nears a bound, so the delivered members leave the bounds
exactly where the raw ones did. (Before, the factor's inflation and the tail were scaled down
until their validation members stayed inside; the fraction that passed on validation still
carried 16 of 256 test members out on the fronts, and the shrunk factor under-dispersed the
rest.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import stats

from msde_ppl.predict.metrics import (
    ENSEMBLE_QUANTILE_METHOD,
    SPREAD_SKILL_TARGET,
    attainable_coverage,
    crps_gaussian,
    reproduces,
)

__all__ = ["FACTOR_GRID", "NO_RESIDUAL_SPREAD", "TAIL_GRID", "WIDENING_GRID",
           "ResidualSpread", "apply_persistence", "apply_residual_gain", "fit_persistence",
           "fit_residual_gain", "fit_residual_spread", "fit_spread_factor", "fit_spread_tail",
           "fit_spread_widening", "residual_rms", "tail_weights"]

#: Candidate inflation factors (log-spaced, 1/8 ... 32; 1 is on the grid).
FACTOR_GRID = np.exp2(np.linspace(-3.0, 5.0, 97))


#: Candidate degrees of freedom of the members' Student-t tail (``inf``: Gaussian, no tail);
#: denser towards 2, where the variance is carried by ever fewer members.
TAIL_GRID = (np.inf, 40.0, 20.0, 12.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.25, 2.1)


#: Bounds of the per-trajectory spread multiplier of :class:`ResidualSpread`.
_MULTIPLIER_RANGE = (1.0 / 3.0, 3.0)


class ResidualSpread(NamedTuple):
    r"""Per-trajectory spread multiplier from the first snapshot's reconstruction residual.

    A trajectory whose first snapshot the coarse model reconstructs worse is harder for it all
    along (more of its field lies in scales the model only parametrises), while the ensemble's
    spread hardly depends on the trajectory. With :math:`r` the RMS of
    :math:`e_0 = y_0 - \bar y_0` over the grid and fields (known at forecast time), every member's
    deviation from the mean is further multiplied by

    .. math::

        m = \operatorname{clip}\big((r / r_{\text{ref}})^{\beta},\ 1/3,\ 3\big),

    :math:`\beta` and :math:`r_{\text{ref}}` fitted on the validation split
    (:func:`fit_residual_spread`); :math:`\beta = 0` is no multiplier.
    """

    exponent: float
    reference: float

    def multiplier(self, rms: np.ndarray | float) -> np.ndarray:
        """:math:`m` for residual RMS values ``rms`` (same shape; 1 where ``rms`` is not
        finite)."""
        rms = np.asarray(rms, np.float64)
        if self.exponent == 0.0:
            return np.ones_like(rms)
        ratio = np.maximum(rms, np.finfo(np.float32).tiny) / self.reference
        # a non-finite residual (a diverged reconstruction) says nothing: no multiplier
        return np.where(np.isfinite(rms), np.clip(ratio**self.exponent, *_MULTIPLIER_RANGE), 1.0)


NO_RESIDUAL_SPREAD = ResidualSpread(0.0, 1.0)


def residual_rms(fc: xr.Dataset, *, obs_var: str = "obs") -> np.ndarray:
    """RMS of the first snapshot's reconstruction residual per trajectory, shape ``(traj,)``."""
    e0 = _first_residual(fc, obs_var)
    if "traj" not in e0.dims:
        e0 = e0.expand_dims("traj")
    dims = [d for d in e0.dims if d != "traj"]
    return np.sqrt(np.asarray((e0.astype(np.float64) ** 2).mean(dims).values))


def fit_residual_spread(fc: xr.Dataset, corrected: xr.Dataset | None = None, *,
                        obs_var: str = "obs", min_traj: int = 3) -> ResidualSpread:
    r""":class:`ResidualSpread` fitted on a (validation) forecast.

    :math:`\beta` is the least-squares slope of :math:`\log(\mathrm{RMSE}_k /
    \mathrm{RMS}(\sigma_k))` on :math:`\log r_k` over the trajectories :math:`k` (errors and
    spreads pooled over lead times after the first and grid values), clipped to ``[0, 1]``;
    :math:`r_{\text{ref}}` the geometric mean of the :math:`r_k`. Fewer than ``min_traj``
    trajectories, or residuals that do not vary, give :data:`NO_RESIDUAL_SPREAD`.

    Args:
        fc: the forecast whose lead-0 residuals :math:`r_k` are read (before any residual
            correction).
        corrected: the forecast whose errors the spread is to match (``fc`` after
            :func:`apply_residual_gain`); default ``fc``.
    """
    rms = residual_rms(fc, obs_var=obs_var)
    if rms.size < min_traj or not (np.isfinite(rms).all() and (rms > 0).all()):
        return NO_RESIDUAL_SPREAD
    target = fc if corrected is None else corrected
    later = target.isel(time=slice(1, None))
    pooled = [d for d in later["mean"].dims if d != "traj"]
    err = np.sqrt(np.asarray(((later[obs_var] - later["mean"]).astype(np.float64) ** 2)
                             .mean(pooled).values))
    spread = np.sqrt(np.asarray((later["std"].astype(np.float64) ** 2).mean(pooled).values))
    if not (np.isfinite(err).all() and np.isfinite(spread).all() and (spread > 0).all()
            and (err > 0).all()):
        return NO_RESIDUAL_SPREAD
    x = np.log(rms) - np.log(rms).mean()
    y = np.log(err / spread)
    if np.sum(x * x) <= 0:
        return NO_RESIDUAL_SPREAD
    slope = float(np.clip(np.sum(x * (y - y.mean())) / np.sum(x * x), 0.0, 1.0))
    return ResidualSpread(slope, float(np.exp(np.log(rms).mean())))


def _trajectories(fc: xr.Dataset, obs_var: str):
    """``(mean, std, obs)`` of each trajectory of a forecast as float64 ``(time, values)``
    arrays, one trajectory at a time (a 2D forecast is never copied whole).

    Raises:
        ValueError: a non-finite mean or std.
    """
    n_time = fc.sizes["time"]
    space = [d for d in fc["mean"].dims if d not in ("traj", "time")]
    for i in range(fc.sizes.get("traj", 1)):
        one = fc.isel(traj=i) if "traj" in fc.dims else fc
        mean, std, obs = (np.asarray(one[name].transpose("time", *space).values,
                                     np.float64).reshape(n_time, -1)
                          for name in ("mean", "std", obs_var))
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("the forecast has non-finite mean or std: it cannot be calibrated")
        yield mean, std, obs


def fit_spread_factor(fc: xr.Dataset, *, rule: str = "spread_skill", obs_var: str = "obs",
                      smooth: int = 25, grid: np.ndarray = FACTOR_GRID,
                      traj_multiplier: np.ndarray | None = None) -> np.ndarray:
    """Spread factor per lead time of a (validation) forecast, shape ``(time,)``.

    Args:
        fc: a forecast of :func:`msde_ppl.forecast` (``mean``, ``std`` and ``obs_var``).
        rule: ``"spread_skill"`` or ``"crps"`` (module docstring).
        obs_var: the observations scored against.
        smooth: width (lead times) of the moving average of ``log c``; ``1``: none.
        grid: candidate factors of the ``"crps"`` rule, increasing and positive.
        traj_multiplier: a per-trajectory multiplier of the spread applied before the fit
            (:meth:`ResidualSpread.multiplier`), shape ``(traj,)``; the factor is then the
            common part on top of it.

    Raises:
        ValueError: non-finite forecast values, or bad settings.
    """
    if rule not in ("spread_skill", "crps"):
        raise ValueError(f"rule must be 'spread_skill' or 'crps', got {rule!r}")
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or grid.size < 2 or not np.all(grid > 0) or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be increasing positive factors")
    if int(smooth) < 1:
        raise ValueError(f"smooth must be a positive number of lead times, got {smooth}")
    n_time = fc.sizes["time"]
    # per lead time, sums over trajectories and grid values
    scores = np.zeros((grid.size, n_time))  # "crps": summed CRPS per candidate factor
    err2, spread2 = np.zeros(n_time), np.zeros(n_time)  # squared errors and spreads
    obs2 = np.zeros(n_time)
    for i, (mean, std, obs) in enumerate(_trajectories(fc, obs_var)):
        std = np.maximum(std, np.finfo(np.float32).tiny)
        if traj_multiplier is not None:
            std = std * float(np.asarray(traj_multiplier).reshape(-1)[i])
        seen = np.isfinite(obs)  # a missing observation drops that value, not its lead time
        obs = np.where(seen, obs, mean)
        if rule == "crps":
            for g, c in enumerate(grid):
                scores[g] += np.where(seen, crps_gaussian(mean, c * std, obs), 0.0).sum(axis=1)
        err2 += ((obs - mean) ** 2).sum(axis=1)
        obs2 += np.where(seen, obs**2, 0.0).sum(axis=1)
        spread2 += np.where(seen, std**2, 0.0).sum(axis=1)
    if rule == "crps":
        log_c = np.log(grid[np.argmin(scores, axis=0)])  # scores: (G, T)
    else:  # RMSE / RMS spread: the common count of values cancels
        tiny = np.finfo(np.float32).tiny  # a lead time with no observation: 0 / 0, skipped below
        log_c = np.log(np.maximum(np.sqrt(err2), tiny) / np.maximum(np.sqrt(spread2), tiny))
    # a lead time without error (up to float32 rounding of the data: lead 0 of a
    # residual-corrected forecast, whose mean is the observation) says nothing about the
    # spread: it takes its nearest neighbours' factor instead of dragging theirs towards 0
    # through the smoothing
    informative = ~reproduces(err2, obs2)
    if not informative.any():
        raise ValueError("the forecast matches its observations exactly at every lead time: "
                         "no spread factor can be fitted")
    index = np.arange(n_time)
    log_c = np.interp(index, index[informative], log_c[informative])
    width = min(int(smooth), n_time)
    if width > 1:
        left = (width - 1) // 2
        padded = np.pad(log_c, (left, width - 1 - left), mode="edge")
        log_c = np.convolve(padded, np.full(width, 1.0 / width), mode="valid")
    return np.exp(log_c)


def _first_residual(fc: xr.Dataset, obs_var: str) -> xr.DataArray:
    """``e_0 = y_0 - mean_0`` per trajectory (the reconstruction residual of the first
    snapshot)."""
    first = fc.isel(time=0, drop=True)
    return first[obs_var] - first["mean"]


def fit_residual_gain(fc: xr.Dataset, *, obs_var: str = "obs") -> np.ndarray:
    r"""Residual-persistence gain per lead time (and field) of a (validation) forecast,
    shape ``(time,)``, or ``(time, field)`` for a forecast with a ``field`` dim (module
    docstring): :math:`a(\tau) = \sum e_\tau e_0 / \sum e_0^2` in ``[0, 1]``, ``a(0) = 1``,
    non-increasing in lead time (a running minimum).

    A field whose first snapshot is reconstructed exactly has no residual to carry: its gain is
    0 after lead 0. A missing (NaN) observation drops its pair :math:`(e_\tau, e_0)` from the
    sums; a lead time with no pair left keeps the gain before it.

    Raises:
        ValueError: non-finite forecast means.
    """
    if not np.isfinite(fc["mean"].values).all():
        raise ValueError("the forecast has non-finite means: no residual gain can be fitted")
    e0 = _first_residual(fc, obs_var)
    err = fc[obs_var] - fc["mean"]
    pooled = [d for d in fc["mean"].dims if d not in ("time", "field")]
    # a missing observation drops its pair only: zeros in the sums, e_0^2 counted where e_tau
    # is present (dot products, no full-size product temporaries)
    has_err, has_e0 = (x.notnull().astype(np.float32) for x in (err, e0))
    e0_or_zero = e0.fillna(0.0)
    num = xr.dot(err.fillna(0.0), e0_or_zero, dim=pooled)
    den = xr.dot(has_err, e0_or_zero**2, dim=pooled)
    pairs = xr.dot(has_err, has_e0, dim=pooled)
    ratio = (num / den.where(den > 0)).fillna(0.0)
    return _running_gain(np.asarray(ratio.transpose("time", ...).values, np.float64),
                         np.asarray(pairs.transpose("time", ...).values))


def apply_residual_gain(fc: xr.Dataset, gain: np.ndarray, *, obs_var: str = "obs") -> xr.Dataset:
    """``fc`` with its ``mean`` moved by ``gain(tau) e_0`` (nothing else changes): the
    corrected validation forecast the spread factor is then fitted on."""
    e0 = _first_residual(fc, obs_var).fillna(0.0)  # no first observation: nothing to carry
    dims = ("time", "field") if "field" in fc["mean"].dims else ("time",)
    shift = xr.DataArray(np.asarray(gain, np.float32), dims=dims) * e0
    out = fc.copy()
    out["mean"] = (fc["mean"] + shift).transpose(*fc["mean"].dims)
    return out


def _macro_parts(fc: xr.Dataset, obs_var: str):
    r"""``(d, r, m)`` of :func:`fit_persistence`: the errors of the macro part
    :math:`y_\tau - (\bar y_\tau - \bar m_\tau)`, the first snapshot's residual with
    respect to the macro part :math:`r_0 = y_0 - (\bar y_0 - \bar m_0)` and the micro
    part's ensemble mean :math:`\bar m_\tau` (``micro``)."""
    macro = fc["mean"] - fc["micro"]
    first = macro.isel(time=0, drop=True)
    return fc[obs_var] - macro, fc[obs_var].isel(time=0, drop=True) - first, fc["micro"]


def _box_least_squares(srr, smm, srm, sdr, sdm):
    r"""Per entry, the minimiser :math:`(a, b) \in [0, 1]^2` of
    :math:`a^2 S_{rr} + b^2 S_{mm} + 2ab S_{rm} - 2a S_{dr} - 2b S_{dm}` (a least-squares
    fit of two regressors in Gram form; arrays of one shape): the best of the unconstrained
    optimum (if inside the box) and the four edges' one-dimensional optima (clipped), among
    which the minimum of a convex quadratic over the box lies. Ties go to the larger
    :math:`a`."""
    def objective(a, b):
        return a * a * srr + b * b * smm + 2 * a * b * srm - 2 * a * sdr - 2 * b * sdm

    def along_b(a):  # b's optimum on the edge a = const
        return np.clip(np.divide(sdm - a * srm, smm, out=np.zeros_like(smm), where=smm > 0),
                       0.0, 1.0)

    def along_a(b):
        return np.clip(np.divide(sdr - b * srm, srr, out=np.zeros_like(srr), where=srr > 0),
                       0.0, 1.0)

    det = srr * smm - srm * srm
    regular = det > 1e-12 * srr * smm
    safe = np.where(regular, det, 1.0)
    a_in, b_in = (smm * sdr - srm * sdm) / safe, (srr * sdm - srm * sdr) / safe
    inside = regular & (a_in >= 0) & (a_in <= 1) & (b_in >= 0) & (b_in <= 1)
    # the edges in the order ties are broken (argmin keeps the first): the larger gain first,
    # so collinear regressors (a micro part that is the held residual) keep the residual's
    # gain, which the running minimum then does not cut for every later lead time
    candidates = [(np.full_like(srr, 1.0), along_b(1.0)), (along_a(0.0), np.zeros_like(srr)),
                  (along_a(1.0), np.ones_like(srr)), (np.zeros_like(srr), along_b(0.0))]
    values = [objective(a, b) for a, b in candidates]
    # the interior optimum competes too (a nearly singular system is not trusted blindly)
    candidates.insert(0, (np.where(inside, a_in, 0.0), np.where(inside, b_in, 0.0)))
    values.insert(0, np.where(inside, objective(a_in, b_in), np.inf))
    best = np.argmin(np.stack(values), axis=0)
    return (np.choose(best, [c[0] for c in candidates]),
            np.choose(best, [c[1] for c in candidates]))


def fit_persistence(fc: xr.Dataset, *, obs_var: str = "obs"
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    r"""The delivered mean's correction per lead time (and field), fitted on a (validation)
    forecast: ``(residual_gain, micro_weight)``.

    Without a micro part (no ``micro`` in ``fc``, or one that is 0 everywhere: an
    implicit-scale model): :func:`fit_residual_gain` and ``None``.
    With one (the product-of-experts likelihood's weighted micro part, ensemble mean
    :math:`\bar m_\tau`), the delivered mean is

    .. math:: \tilde y_\tau = (\bar y_\tau - \bar m_\tau) + a(\tau)\, r_0
              + b(\tau)\, \bar m_\tau, \qquad r_0 = y_0 - (\bar y_0 - \bar m_0),

    the macro part, the first snapshot's residual with respect to the macro part (the micro
    part plus the reconstruction residual, what the coarse state does not carry) carried with
    the gain :math:`a`, and the model's micro forecast with the weight :math:`b`: the
    least-squares fit of the macro part's error on the two regressors, pooled over
    trajectories and grid points per lead time (and field), with :math:`a, b \in [0, 1]`.
    :math:`a(0) = 1, b(0) = 0` (the corrected mean starts at :math:`y_0`); :math:`a` is made
    non-increasing in lead time as in :func:`fit_residual_gain`, and :math:`b` is then refitted
    given it. :math:`b = 1, a = 0` is the model's own mean; :math:`b = 1` and the residual
    persistence of :func:`fit_residual_gain` differ only in carrying :math:`\bar m_0` too.
    A micro forecast that decorrelates from the unresolved field before the held first micro
    part does gets a small weight, and that part is carried instead (docs/calibration.md).
    Only the micro part's ensemble mean is weighted: each member keeps its own deviation
    from it (the spread is calibrated afterwards). A lead time without a pair keeps the values
    before it (lead 1: weight 1); a micro part that is 0 at a lead time has weight 1 there.

    The pair is kept only if, fitted without each trajectory in turn, it predicts the left-out
    trajectories better (squared error pooled over lead times ``>= 1``) than the residual gain
    alone fitted the same way; otherwise, and with fewer than 2 trajectories, the result is
    that of :func:`fit_residual_gain` and ``None``: a weight fitted on one trajectory can fit
    that trajectory's blend of held and forecast micro parts and miss the next.

    Raises:
        ValueError: non-finite forecast means.
    """
    if "micro" not in fc or not np.any(fc["micro"].values):  # no micro part, or an idle one
        return fit_residual_gain(fc, obs_var=obs_var), None
    if not np.isfinite(fc["mean"].values).all():
        raise ValueError("the forecast has non-finite means: no residual gain can be fitted")
    if fc.sizes.get("traj", 1) < 2:  # no trajectory to leave out (below)
        return fit_residual_gain(fc, obs_var=obs_var), None
    d, r0, m = _macro_parts(fc, obs_var)
    # float64: the held-out errors below are differences of large sums
    has = (d.notnull() & r0.notnull()).astype(np.float64)  # a missing value drops its pair
    d0, r = d.fillna(0.0), r0.fillna(0.0)
    raw, e0 = d0 - m, r - m.isel(time=0, drop=True)  # the model's own error and e_0
    within = [k for k in fc["mean"].dims if k not in ("traj", "time", "field")]

    def per_traj(*factors):  # (K, T[, C]) sums over each trajectory's grid points
        out = xr.dot(has, *factors, dim=within)
        out = out.expand_dims("traj") if "traj" not in out.dims else out
        return np.asarray(out.transpose("traj", "time", ...).values, np.float64)

    # the Gram sums of the joint fit and of the residual gain alone, per trajectory
    joint = [per_traj(*f) for f in ((r, r), (m, m), (r, m), (d0, r), (d0, m), (d0, d0))]
    alone = [per_traj(*f) for f in ((e0, e0), (raw, e0), (raw, raw))]
    pairs = per_traj()
    total, total_alone, total_pairs = ([x.sum(0) for x in joint[:5]], [x.sum(0) for x in alone[:2]],
                                       pairs.sum(0))
    a, b = _joint_gain_and_weight(total, total_pairs)
    # kept only where it predicts held-out trajectories better than the residual gain alone
    # (leave one trajectory out): a weight fitted on one trajectory's micro part, or on few,
    # can fit that trajectory's blend of held and forecast micro parts and miss the next
    # (Burgers 1D, one val trajectory: test 0.0166 -> 0.0200, docs/calibration.md)
    n = pairs.shape[0]
    held_out = {"joint": 0.0, "alone": 0.0}
    for k in range(n):
        rest = [t - x[k] for t, x in zip(total, joint[:5], strict=True)]
        fa, fb = _joint_gain_and_weight(rest, total_pairs - pairs[k])
        srr, smm, srm, sdr, sdm, sdd = (x[k] for x in joint)
        held_out["joint"] += float(np.sum((sdd - 2 * fa * sdr - 2 * fb * sdm + fa * fa * srr
                                           + fb * fb * smm + 2 * fa * fb * srm)[1:]))
        see, sde, sdd = (x[k] for x in alone)
        rest_ee, rest_de = (t - x[k] for t, x in zip(total_alone, alone[:2], strict=True))
        gain = _running_gain(np.divide(rest_de, rest_ee, out=np.zeros_like(rest_ee),
                                       where=rest_ee > 0), total_pairs - pairs[k])
        held_out["alone"] += float(np.sum((sdd - 2 * gain * sde + gain * gain * see)[1:]))
    if not held_out["joint"] < held_out["alone"]:  # a tie, or NaN: the residual gain alone
        return fit_residual_gain(fc, obs_var=obs_var), None
    return a, b


def _running_gain(ratio: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """A gain per lead time ``(T[, C])`` from least-squares ratios: clipped to [0, 1], 1 at lead
    0, non-increasing (:func:`fit_residual_gain`)."""
    gain = np.where(pairs > 0, np.clip(ratio, 0.0, 1.0), np.nan)  # no pair: NaN
    gain[0] = 1.0
    # non-increasing in lead time: once the forecast error dwarfs the residual, the ratio is
    # mostly sampling noise (clipped to 0 or 1 at random); a residual that has decorrelated
    # is not trusted to come back. fmin skips a NaN: a lead time without a pair keeps the
    # gain before it.
    return np.fmin.accumulate(gain, axis=0)


def _joint_gain_and_weight(sums: list, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_persistence`'s ``(a, b)`` from the pooled Gram sums ``(S_rr, S_mm, S_rm,
    S_dr, S_dm)`` and pair counts, each ``(T[, C])``."""
    a, _ = _box_least_squares(*sums)
    a = _running_gain(a, pairs)
    srr, smm, srm, sdr, sdm = sums
    b = np.clip(np.divide(sdm - a * srm, smm, out=np.ones_like(smm), where=smm > 0), 0.0, 1.0)
    b[0] = 0.0
    for i in range(1, len(b)):  # no pair at a lead time: the weight before it (1 at lead 1:
        # b(0) = 0 is the lead-0 constraint, not a fit)
        b[i] = np.where(pairs[i] > 0, b[i], b[i - 1] if i > 1 else 1.0)
    return a, b


def apply_persistence(fc: xr.Dataset, gain: np.ndarray, micro_weight: np.ndarray | None, *,
                      obs_var: str = "obs") -> xr.Dataset:
    r"""``fc`` with its ``mean`` corrected as :func:`fit_persistence` describes (``micro_weight
    None``: :func:`apply_residual_gain`); nothing else changes."""
    if micro_weight is None:
        return apply_residual_gain(fc, gain, obs_var=obs_var)
    _, r0, m = _macro_parts(fc, obs_var)
    dims = ("time", "field") if "field" in fc["mean"].dims else ("time",)
    a = xr.DataArray(np.asarray(gain, np.float32), dims=dims)
    b = xr.DataArray(np.asarray(micro_weight, np.float32), dims=dims)
    out = fc.copy()
    out["mean"] = (fc["mean"] + a * r0.fillna(0.0) + (b - 1) * m).transpose(*fc["mean"].dims)
    return out


def tail_weights(dof: float, n_members: int) -> np.ndarray:
    r"""Per-member weights :math:`w_s = \sqrt{(\nu - 2) / V_s}` of the Student-t tail with
    ``dof`` :math:`\nu` degrees of freedom, shape ``(n_members,)`` (module docstring).

    :math:`V_s` are the :math:`\chi^2_\nu` quantiles at levels :math:`(k + 1/2) / n`, member
    :math:`s` taking level :math:`k = s\,d \bmod n` for a stride :math:`d \approx 0.618\,n`
    coprime to :math:`n` (a fixed order; the members are exchangeable, so any would do),
    normalised to :math:`\overline{w^2} = 1`. A mixture of models gives each model's members
    the same weights (``forecast`` tiles them). ``dof = inf``: all ones.

    Raises:
        ValueError: ``dof`` not above 2, or no members.
    """
    n = int(n_members)
    if n < 1:
        raise ValueError(f"n_members must be positive, got {n_members}")
    dof = float(dof)
    if not dof > 2.0:  # also catches nan
        raise ValueError(f"the tail needs more than 2 degrees of freedom (a finite variance), "
                         f"got {dof}")
    if np.isinf(dof):
        return np.ones(n)
    weights = np.sqrt((dof - 2.0) / stats.chi2.ppf((np.arange(n) + 0.5) / n, dof))
    stride = max(1, int(0.618 * n))
    while np.gcd(stride, n) != 1:
        stride -= 1
    weights = weights[(np.arange(n) * stride) % n]
    return weights / np.sqrt(np.mean(weights**2))


class _EnsembleInterval:
    """The central ``level`` interval of an ensemble whose members are standard normal
    deviations times ``weights``, as the forecast reads it
    (:data:`~msde_ppl.predict.metrics.ENSEMBLE_QUANTILE_METHOD`), simulated over ``n_sims``
    ensembles :math:`k` with bounds :math:`(l_k, u_k)`."""

    def __init__(self, weights: np.ndarray, rng: np.random.Generator, level: float = 0.9,
                 n_sims: int = 4000):
        members = np.asarray(weights, np.float64) * rng.standard_normal((n_sims, len(weights)))
        self.lower, self.upper = np.quantile(members, [(1 - level) / 2, (1 + level) / 2],
                                             axis=1, method=ENSEMBLE_QUANTILE_METHOD)

    def covered(self, z_sorted: np.ndarray, scale: float = 1.0) -> float:
        r"""Expected number of the values ``z_sorted`` (ascending) inside the interval
        widened ``scale`` times, :math:`\frac1K \sum_k \#\{s\,l_k \le z \le s\,u_k\}`: two
        binary searches per simulated ensemble instead of one per value."""
        inside = (np.searchsorted(z_sorted, scale * self.upper, side="right")
                  - np.searchsorted(z_sorted, scale * self.lower, side="left"))
        return float(inside.mean())


def _standardised_errors(fc: xr.Dataset, factor: np.ndarray, obs_var: str,
                         traj_multiplier: np.ndarray | None):
    r"""The calibrated errors :math:`z = (y - \bar y) / (c(\tau)\, m\, \sigma)` of each
    trajectory, sorted, as a 1D array per trajectory; lead times whose errors are zero up to
    rounding (lead 0 of a residual-corrected forecast) and missing observations left out.

    Raises:
        ValueError: non-finite forecast values, or a factor of the wrong shape.
    """
    n_time = fc.sizes["time"]
    factor = np.asarray(factor, np.float64)
    if factor.shape != (n_time,) or not (np.isfinite(factor).all() and (factor > 0).all()):
        raise ValueError(f"factor must be {n_time} positive values, got shape {factor.shape}")
    for i, (mean, std, obs) in enumerate(_trajectories(fc, obs_var)):
        err = obs - mean
        # a missing observation drops that value only, not its lead time
        keep = ~reproduces(np.nansum(err**2, axis=1), np.nansum(obs**2, axis=1))
        scale = np.maximum(std, np.finfo(np.float32).tiny) * factor[:, None]
        if traj_multiplier is not None:
            scale = scale * float(np.asarray(traj_multiplier).reshape(-1)[i])
        z = (err / scale)[keep].ravel()
        yield np.sort(z[np.isfinite(z)])  # a missing observation says nothing


def fit_spread_tail(fc: xr.Dataset, factor: np.ndarray, n_members: int,
                    rng: np.random.Generator, *, n_models: int = 1, obs_var: str = "obs",
                    traj_multiplier: np.ndarray | None = None,
                    grid: tuple[float, ...] = TAIL_GRID, level: float = 0.9) -> float:
    r"""Degrees of freedom of the members' Student-t tail fitted on a (validation) forecast:
    the :math:`\nu` of ``grid`` whose ensemble covers the standardised errors
    :math:`z = (y - \bar y) / (c(\tau)\, m\, \sigma)` (module docstring) at the rate
    nearest ``level``, with the interval read as the forecast reads it: between the
    :math:`(1 \mp \text{level})/2` quantiles of ``n_models`` times ``n_members`` members,
    Gaussian deviations times ``tail_weights(nu, n_members)`` for each model (simulated with
    ``rng``). ``inf`` (Gaussian members) when
    they cover at most ``level`` already: a tail only ever narrows the interval (then
    :func:`fit_spread_widening` widens the spread instead). For an ensemble too small to hold
    ``level`` of perfectly calibrated errors, the rate it can hold
    (:func:`~msde_ppl.predict.metrics.attainable_coverage`) replaces ``level``.

    Args:
        fc: the forecast the spread factor was fitted on (after any residual correction).
        factor: that spread factor, shape ``(time,)`` (:func:`fit_spread_factor`).
        n_members: the ensemble size per model the weights are for.
        rng: the generator of the simulated ensembles.
        n_models: models of a mixture forecast, each with ``n_members`` members.
        traj_multiplier: the per-trajectory multiplier it was fitted with, shape ``(traj,)``.
        grid: candidate degrees of freedom, each above 2 (``inf`` allowed).
        level: the nominal probability of the central interval matched.

    Lead times whose errors are zero up to rounding (lead 0 of a residual-corrected forecast)
    are left out.

    Raises:
        ValueError: non-finite forecast values, a factor of the wrong shape, or a bad grid.
    """
    candidates = sorted({float(g) for g in grid}, reverse=True)  # lightest tail first
    if not candidates or not all(g > 2.0 for g in candidates):
        raise ValueError(f"grid must hold degrees of freedom above 2, got {grid}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a probability in (0, 1), got {level}")
    intervals = [_EnsembleInterval(np.tile(tail_weights(dof, n_members), int(n_models)), rng,
                                   level) for dof in candidates]
    covered = np.zeros(len(candidates))
    count = 0
    for z in _standardised_errors(fc, factor, obs_var, traj_multiplier):
        covered += [interval.covered(z) for interval in intervals]
        count += z.size
    if count == 0:
        raise ValueError("the forecast has no informative errors: no tail can be fitted")
    # an ensemble too small for its interval to hold `level` of even perfectly calibrated
    # errors aims at what it can hold (64 members: `level` itself)
    target = attainable_coverage(level, int(n_members) * int(n_models))
    coverage = covered / count  # non-increasing as the tail gets heavier (up to MC noise)
    if coverage[0] <= target:  # the lightest tail (Gaussian on the default grid) covers enough
        return candidates[0]
    return candidates[int(np.argmin(np.abs(coverage - target)))]


#: Candidate widenings of :func:`fit_spread_widening`: 1 to the upper edge of the
#: spread–skill target (1.25), in steps of about 0.7%.
WIDENING_GRID = np.exp(np.linspace(0.0, np.log(SPREAD_SKILL_TARGET[1]), 33))


def fit_spread_widening(fc: xr.Dataset, factor: np.ndarray, dof: float, n_members: int,
                        rng: np.random.Generator, *, n_models: int = 1, obs_var: str = "obs",
                        traj_multiplier: np.ndarray | None = None,
                        grid: np.ndarray = WIDENING_GRID, level: float = 0.9) -> float:
    r"""A common widening :math:`k \ge 1` of the calibrated spread fitted on a (validation)
    forecast: the smallest :math:`k` of ``grid`` whose members (the tail ``dof`` of
    :func:`fit_spread_tail`, read as the forecast reads them, simulated with ``rng``) cover
    the standardised errors :math:`z = (y - \bar y) / (c(\tau)\, m\, \sigma)` at a rate of
    at least ``level``; 1 when they do already, the grid's end when no :math:`k` on it does.

    A tail only ever narrows the interval, so when even Gaussian members with the spread of the
    errors' RMS cover less than ``level`` (the spread sits where the errors are not: at the
    interfaces of a phase-separating field the members spread where they place an interface,
    and the truth's lies where they agree on a phase), :func:`fit_spread_tail` keeps Gaussian
    members and the spread itself must widen: the spread–skill ratio is then multiplied by
    :math:`k`. The default grid ends at the upper edge of the spread–skill target
    (:data:`~msde_ppl.predict.metrics.SPREAD_SKILL_TARGET`, 1.25): coverage is raised as far
    as the spread–skill target allows.

    The rate aimed at is ``level``, or less where the ensemble is too small for its interval to
    hold ``level`` of even perfectly calibrated errors
    (:func:`~msde_ppl.predict.metrics.attainable_coverage`: 0.78 for 8 members): the widening
    corrects the spread, not the size of the ensemble.

    Args: as :func:`fit_spread_tail`, with ``dof`` the tail chosen there (``inf``: Gaussian)
    and ``grid`` increasing candidate widenings from 1.

    Raises:
        ValueError: non-finite forecast values, a factor of the wrong shape, a bad grid or
            level, or no informative errors.
    """
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or grid.size < 1 or grid[0] != 1.0 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be increasing widenings starting at 1")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a probability in (0, 1), got {level}")
    n_total = int(n_members) * int(n_models)
    interval = _EnsembleInterval(np.tile(tail_weights(dof, n_members), int(n_models)), rng,
                                 level)
    covered = np.zeros(grid.size)
    count = 0
    for z in _standardised_errors(fc, factor, obs_var, traj_multiplier):
        covered += [interval.covered(z, k) for k in grid]
        count += z.size
    if count == 0:
        raise ValueError("the forecast has no informative errors: no widening can be fitted")
    # coverage grows with k (every simulated interval holds 0)
    enough = np.flatnonzero(covered / count >= attainable_coverage(level, n_total))
    return float(grid[enough[0]]) if enough.size else float(grid[-1])
