"""The run pipeline: data -> progressive fit -> forecasts -> metrics (one owner).

``msde run``, ``msde fit``/``msde forecast``, ``benchmarks/accuracy.py`` and the example
``models/multiscale.py`` all go through these functions:

- :func:`model_config`: the multiscale config for a dataset (a built-in case's choices, with
  overrides);
- :func:`progressive_stages`: the two-stage schedule (implicit-scale ``K = 0``, then grown to
  ``K``);
- :func:`score`: forecast a split with a fitted model (or a mixture of several) and score it;
- :func:`run_case`: all of it for one dataset, returning the fits, forecasts and metrics.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from msde_ppl.atomic import atomic_file
from msde_ppl.data.blocks import trajectory_blocks
from msde_ppl.data.invariance import position_dependence
from msde_ppl.data.schema import grid_shape
from msde_ppl.data.splits import select_split, split_names, splits_in_time
from msde_ppl.multiscale.program import (
    CASE_CONFIGS,
    MultiscaleConfig,
    config_for,
    data_statistics,
    dissipation_from_data,
    scales_from_data,
    units_from_data,
)
from msde_ppl.pipeline.fitted import Fitted
from msde_ppl.pipeline.training import TrainConfig, fit_progressive, training_window
from msde_ppl.predict.calibration import (
    apply_persistence,
    fit_persistence,
    fit_residual_spread,
    fit_spread_factor,
    fit_spread_tail,
    fit_spread_widening,
    residual_rms,
)
from msde_ppl.predict.forecast import forecast
from msde_ppl.predict.metrics import baseline_metrics, forecast_metrics, lead_time_metrics

__all__ = ["builtin_recipe", "divergence_warning", "fit_data", "model_config",
           "progressive_stages", "run_builtin",
           "run_case", "run_schedule", "run_window", "score", "stencil_width_choice"]

# `msde run`: implicit-scale stage, then multiscale stage, 1 window per step of 64 snapshots
# (RUN_WINDOW_2D overrides it per case). About 7 ms per step on 2 CPU cores in 1D (more, noisier
# steps beat fewer larger ones on the val split): a 1D job stays within ~15 min. The 2D cases
# (~0.15 s per step at 128 x 128) get steps well within the 45-minute training budget of the 2D
# rows (burgers_2d: 19 min measured).
RUN_STEPS = 4000
RUN_MICRO_STEPS = 60000
RUN_STEPS_2D = {"burgers_2d": (3250, 9750), "shallow_water_2d": (5000, 15000),
                "cylinder_2d": (3000, 8000)}
# cylinder: set from the measured step time, not from accuracy (320 x 80 x 2 values, 256 coarse
# nodes, 32-snapshot windows). Its steps cost 0.27 s (implicit scale) and 0.46 s (multiscale) on
# 2 cores until the prolongation matrix was gathered from the kernel instead of built by one FFT
# pair per coarse node (stop 35); now 0.075 s and 0.21 s (benchmarks/perf.py --sections
# step2d): 3000 + 8000 steps are ~35 min, within the 45-minute training budget.
RUN_WINDOW_2D = {"cylinder_2d": 32}
RUN_WINDOWS = 1

# `msde fit` / fit_data: at most msde run's total steps in 1D (of which a quarter
# implicit-scale, then multiscale) within the time budget; validation on the val split stops a
# stage earlier once it stops improving (KdV fitted as unlabelled data: 20k steps stopped its
# micro stage at test rel-L2 0.164 in 93 s of a 10-min budget, against msde run's 0.041)
FIT_STEPS = RUN_STEPS + RUN_MICRO_STEPS
FIT_BUDGET_S = 600.0

# data that are not a built-in case, on a coarse grid of more than FULL_WIDTH_MAX_NODES nodes: the
# macro stencil MLP's hidden layers are NARROW_STENCIL_WIDTH wide instead of the reference's 128.
# The MLP runs at every coarse node of every snapshot of a window, and its products are most of a
# step's cost (4 GFLOP on a 16 x 16 grid at width 128, near the 2 cores' peak). There the
# 10-minute budget ended both stages far from their optimum: 2D Allen-Cahn (256 nodes,
# benchmarks/robustness.py) trained 3300 implicit-scale and 8000 multiscale steps, val 0.135, and
# twice the budget gave 0.10. Width 64: 6200 + 12000 steps, val 0.104 (docs/robustness.md,
# stop 61). The 1D grids of the benchmark (32 nodes) keep 128.
FULL_WIDTH_MAX_NODES = 128
NARROW_STENCIL_WIDTH = 64


def run_schedule(case: str) -> tuple[int, int]:
    """``msde run``'s ``(implicit-scale steps, multiscale steps)`` for a built-in case."""
    return RUN_STEPS_2D.get(case, (RUN_STEPS, RUN_MICRO_STEPS))


def run_window(case: str) -> int:
    """``msde run``'s snapshots per training window for a built-in case."""
    return RUN_WINDOW_2D.get(case, TrainConfig.window)


def model_config(
    ds: xr.Dataset,
    coarse: Sequence[int] | None = None,
    n_micro: int = 5,
    *,
    encoder: str | None = None,
    decoder: str | None = None,
    scale_kernel: str | None = None,
    physics: str | None = None,
    drift: str | None = None,
    positional: bool | None = None,
    stencil_width: int | None = None,
    on_position: Callable[[bool, dict | None], None] | None = None,
) -> MultiscaleConfig:
    """The multiscale config for ``ds``: the built-in case's choices (if ``ds`` is one) with
    the given overrides (``None`` keeps the case's or the generic default).

    ``drift`` is ``"free"`` (the reference's networks) or ``"dissipative"`` (their output
    saturated at a learned bound plus a learned linear relaxation, initialised from the
    training split, :func:`~msde_ppl.multiscale.program.dissipation_from_data`); default: free
    for the built-in cases (their recipes were tuned with it), dissipative for any other data.
    ``positional``: every coarse node's drift also reads its position (a flow that is not
    translation invariant: a coefficient that varies in space, an obstacle); default: the
    case's choice for the built-in cases (on for the cylinder only), else on when the data
    show it (:func:`positional_choice`; ``on_position(chosen, evidence)`` is told the
    choice and its evidence when the data made it).
    ``stencil_width``: the width of every hidden layer of the macro stencil MLP; default:
    the case's (the reference's 128) for the built-in cases, for any other data 128, or
    :data:`NARROW_STENCIL_WIDTH` on a coarse grid of more than :data:`FULL_WIDTH_MAX_NODES`
    nodes (:func:`stencil_width_choice`).
    Data split in time forecast times past the training record, so their micro dynamics are
    autonomous (``micro_time=False``): a drift reading the absolute time would extrapolate.
    """
    case = ds.attrs.get("case")
    if drift is None:
        drift = "free" if case in CASE_CONFIGS else "dissipative"
    auto_position = positional is None and case not in CASE_CONFIGS
    if drift not in ("free", "dissipative"):
        raise ValueError(f"unknown drift form {drift!r}; use 'free' or 'dissipative'")
    dissipation = scales = units = None
    if drift == "dissipative" or case not in CASE_CONFIGS:
        has_train = "train" in split_names(ds)
        sel = select_split(ds, "train") if has_train else ds
        dt = float(np.diff(np.asarray(sel["time"].values[:2], np.float64))[0])
        # one pass over the training data (a file may be read block by block) for both
        stats = data_statistics((block for _, block in trajectory_blocks(sel["u"])),
                                ds.sizes.get("field", 1))
        if drift == "dissipative":
            dissipation = dissipation_from_data(stats, dt)
        if case not in CASE_CONFIGS:  # the built-in recipes keep the reference's constants
            scales = scales_from_data(stats, dt)
            units = units_from_data(stats)
    domain = ds.attrs.get("domain")
    domain = None if domain is None else tuple(float(d) for d in list(domain))
    config = config_for(
        case, grid_shape(ds), coarse, n_micro=n_micro,
        n_channels=ds.sizes.get("field", 1), encoder=encoder, decoder=decoder,
        learn_kernel=None if scale_kernel is None else scale_kernel == "learned",
        physics=physics, domain=domain if physics else None, dissipation=dissipation,
        scales=scales, units=units,
        micro_time=False if splits_in_time(ds) else None,
        positional=positional)
    if stencil_width is None:
        stencil_width = stencil_width_choice(ds, config.coarse_shape)
    if stencil_width is not None:
        if (isinstance(stencil_width, bool) or not isinstance(stencil_width, numbers.Integral)
                or stencil_width < 1):
            raise ValueError(f"the stencil MLP's width must be a positive integer, got "
                             f"{stencil_width!r}")
        # every hidden layer this wide (the config's layers all have one width: msde fit
        # records that one number)
        config = dataclasses.replace(
            config, macro_hidden=(int(stencil_width),) * len(config.macro_hidden))
    if auto_position:
        chosen, evidence = positional_choice(ds, config)
        config = dataclasses.replace(config, positional=chosen)
        if on_position is not None:
            on_position(chosen, evidence)
    return config


def stencil_width_choice(ds: xr.Dataset, coarse_shape: Sequence[int]) -> int | None:
    """The default hidden width of the macro stencil MLP for ``ds`` on ``coarse_shape``:
    :data:`NARROW_STENCIL_WIDTH` for data that are not a built-in case on a coarse grid of more
    than :data:`FULL_WIDTH_MAX_NODES` nodes (a step's cost grows with the nodes, and a fit within
    the time budget gets few steps), else ``None``: the config's (the reference's)."""
    generic = ds.attrs.get("case") not in CASE_CONFIGS
    if generic and math.prod(coarse_shape) > FULL_WIDTH_MAX_NODES:
        return NARROW_STENCIL_WIDTH
    return None


#: :func:`positional_choice` gives the drift the position when a stencil regression per node
#: leaves less than this share of a shared one's residual on val.
POSITION_RATIO = 0.5


def positional_choice(ds: xr.Dataset, config: MultiscaleConfig) -> tuple[bool, dict | None]:
    """Whether the macro drift of ``config`` should read each node's position on ``ds``, and
    the evidence: :func:`~msde_ppl.data.invariance.position_dependence` on the train and val
    splits, on when its ratio is below :data:`POSITION_RATIO` (advection with a speed varying
    in space: 0.14; the translation-invariant equations measured: 0.72 or more;
    docs/robustness.md). Without a val split there is no test and no position."""
    test = position_dependence(ds, config.coarse_shape, config.radius)
    return test is not None and test["ratio"] < POSITION_RATIO, test


def shifts_choice(ds: xr.Dataset, config: MultiscaleConfig) -> bool:
    """Whether a fit of ``config`` to ``ds`` trains on random translates of its windows by
    default (``TrainConfig.shifts``): for data that are not a built-in case (whose recipes
    were tuned without), on a periodic domain, with a drift that does not read the position.
    With few trajectories the global micro networks otherwise tell the training trajectories
    apart: on the robustness benchmark's Allen–Cahn the micro encoder gave the training
    snapshots codes of RMS 1.4–2.7 and held-out ones 0.5–0.9 (docs/robustness.md, stop 60)."""
    return (ds.attrs.get("case") not in CASE_CONFIGS and ds.attrs.get("boundary") == "periodic"
            and not config.positional)


def fit_data(
    ds: xr.Dataset,
    coarse: int | Sequence[int],
    n_micro: int = 5,
    *,
    steps: int = FIT_STEPS,
    budget_s: float | None = FIT_BUDGET_S,
    validate: bool = True,
    train: TrainConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    **options: str | bool | None,
) -> Fitted:
    """Fit the built-in multiscale model to any dataset, as ``msde fit`` does.

    The implicit-scale model (micro dimension 0) takes the first quarter of ``steps`` and is
    then grown into the multiscale model (``n_micro``), which takes the rest; with a ``val``
    split and ``validate``, every stage is scored on it while it trains, keeps its best
    checkpoint and stops when the score stops improving (:class:`~msde_ppl.Validation`);
    ``budget_s`` bounds the training time (seconds, ``None``: no bound).

    Args:
        ds: a dataset in the schema, with ``split`` labels (the fit reads ``train``; see
            :func:`msde_ppl.data.with_held_out_splits` for data without labels).
        coarse: coarse grid, one size per spatial axis (an int for 1D data).
        n_micro: micro dimension ``K`` (0: the implicit-scale model only).
        steps: total optimisation steps (at most); with ``train=None``, the windows are
            shifted as :func:`shifts_choice` says.
        budget_s: training time budget in seconds.
        validate: score on the val split while training (when there is one).
        train: optimisation settings (default :class:`TrainConfig` with ``steps``, ``seed``
            and :func:`~msde_ppl.pipeline.training.training_window`: whole trajectories when
            they are shorter than its window).
        seed: PRNG seed.
        progress: report progress (a bar, or lines in a log).
        **options: model options of :func:`model_config` (``encoder``, ``decoder``,
            ``scale_kernel``, ``physics``, ``drift``, ``stencil_width``, ``positional``: by
            default decided from the data, :func:`positional_choice`).

    Returns:
        The fitted multiscale model (the last stage).

    Raises:
        SchemaError: the dataset has no split labels, or no train split.
    """
    from msde_ppl.data.schema import SchemaError
    from msde_ppl.pipeline.validation import Validation

    if "split" not in ds.coords:
        raise SchemaError(
            "the dataset has no 'split' labels, so nothing would be held out for an honest "
            "score: label it (from_arrays(..., split=[...])) or use "
            "msde_ppl.data.with_held_out_splits(ds), the rule msde fit applies")
    coarse = (coarse,) if isinstance(coarse, int) else tuple(coarse)
    config = model_config(ds, coarse, n_micro, **options)
    train = (TrainConfig(steps=steps, seed=seed, window=training_window(ds),
                         shifts=shifts_choice(ds, config)) if train is None
             else dataclasses.replace(train, steps=steps, seed=seed))
    stages = [(n_micro, train)]
    if n_micro and steps >= 4:
        first = dataclasses.replace(train, steps=steps // 4)
        stages = progressive_stages(n_micro, first, steps - first.steps)
    validation = Validation(seed=seed) if validate and "val" in split_names(ds) else None
    fits = fit_progressive(ds, config, stages, progress=progress, validation=validation,
                           budget_s=budget_s)
    return fits[-1].replace(wall_time_s=sum(f.wall_time_s for f in fits))


def progressive_stages(n_micro: int, train: TrainConfig, micro_steps: int,
                       micro_lr: float | None = None, micro_warmup: int = 0,
                       ) -> list[tuple[int, TrainConfig]]:
    """``[(0, train), (n_micro, train with micro_steps)]``: the implicit-scale model, then the
    multiscale model grown from it (no warm-up by default: it starts at the fitted model)."""
    rest = dataclasses.replace(train, steps=micro_steps, warmup_steps=micro_warmup,
                               lr=train.lr if micro_lr is None else micro_lr)
    return [(0, train), (n_micro, rest)]


def score(
    fitted: Fitted | Sequence[Fitted],
    ds: xr.Dataset,
    *,
    split: str | None = "test",
    n_samples: int = 64,
    seed: int = 0,
    integrator: str = "heun",
    substeps: int = 1,
    adaptive_steps: bool = True,
    calibrate_on: str | None = None,
    residual: bool = True,
    horizon: int | None = None,
    progress: bool = False,
) -> tuple[xr.Dataset, dict]:
    """Forecast ``split`` over the dataset's evaluation horizon (its ``eval_steps`` snapshots,
    at most ``horizon`` of them) and score it: ``(forecast, metrics)`` with the fits' training
    time and steps (a list of fits is one mixture), the rel-L2 of the persistence and
    climatology forecasts (``metrics["baselines"]``), the number of diverged members
    (``diverged_members`` of ``n_members``, :func:`~msde_ppl.predict.diverged_members`) and
    the scores by lead time (``metrics["lead_time"]``: lists, :func:`~msde_ppl.predict.
    lead_time_metrics`).

    ``calibrate_on="val"`` also fits the post-hoc spread factor on that split
    (:func:`~msde_ppl.predict.fit_spread_factor`), forecasts ``split`` again with it, and adds
    the calibrated scores as ``metrics["calibrated"]`` (the returned forecast is then the
    calibrated one; the top-level metrics stay the uncalibrated ones). If the calibration
    split's forecast is not finite, the calibration is skipped (a printed warning) and
    ``metrics["calibrated"]`` says why. A calibrated forecast carries its factor as the
    ``spread_factor`` variable (over ``time``). With ``residual`` (default) the calibration
    first fits the residual-persistence gain on that split
    (:func:`~msde_ppl.predict.fit_persistence`: the first snapshot's reconstruction residual
    carried forward, which moves the mean, so ``metrics["calibrated"]`` has its own rel-L2;
    for a model with a micro part, jointly with the micro part's weight,
    ``metrics["calibrated"]["micro_weight"]``),
    then a per-trajectory spread multiplier that grows with that residual
    (:class:`~msde_ppl.predict.calibration.ResidualSpread`, ``metrics["calibrated"]
    ["residual_spread"]``), then the spread factor on the corrected errors, then the members'
    tail (:func:`~msde_ppl.predict.fit_spread_tail`: ``metrics["calibrated"]
    ["spread_tail_dof"]``, ``None`` for Gaussian members), then a common widening of the
    factor where even Gaussian members cover less than 90% of the calibration split's errors
    (:func:`~msde_ppl.predict.fit_spread_widening`, ``metrics["calibrated"]
    ["spread_widening"]``, 1 for none), all applied in a coordinate that
    keeps inside the data's bounds every member the dynamics kept there
    (:func:`~msde_ppl.predict.forecast`); the forecast
    carries the gain as ``residual_gain`` (and ``micro_weight``) and the multipliers as
    ``spread_multiplier``.
    ``metrics["in_sample"]`` is ``True`` for the train split, ``False`` for another one,
    ``None`` for every trajectory (``split=None``: unknown here). ``progress`` reports each
    forecast's trajectories as they are done.
    """
    eval_steps = ds.attrs.get("eval_steps")
    if horizon is not None:
        if int(horizon) < 2:
            raise ValueError(f"a forecast horizon needs at least 2 snapshots, got {horizon}")
        eval_steps = min(int(horizon), int(eval_steps or ds.sizes["time"]))
    start = time.perf_counter()
    key_raw = jax.random.key(seed)
    fc = forecast(key_raw, fitted, ds, split=split, n_samples=n_samples,
                  substeps=substeps, method=integrator, n_steps=eval_steps,
                  adaptive_steps=adaptive_steps,
                  progress=progress and (f"forecast of the {split} split" if split
                                         else "forecast of every trajectory"))
    metrics = forecast_metrics(fc, eval_steps)
    # the package's fits train on the train split: any other split is held out
    metrics["in_sample"] = None if split is None else split == "train"
    metrics["forecast_wall_time_s"] = time.perf_counter() - start
    taken = np.asarray(fc["substeps"].isel(time=slice(1, None)).values)
    metrics["integrator"] = dict(method=integrator, substeps=int(substeps),
                                 adaptive_steps=bool(adaptive_steps),
                                 steps_taken_median=float(np.median(taken)),
                                 steps_taken_max=int(taken.max()))
    splits = split_names(ds)
    train = select_split(ds, "train") if "train" in splits else None
    metrics["baselines"] = baseline_metrics(fc, train, eval_steps)
    metrics["lead_time"] = _as_lists(lead_time_metrics(fc, train, eval_steps))
    if calibrate_on is not None:
        # the calibration split's ensemble has its own key; the calibrated rerun reuses the raw
        # forecast's key, so it transforms the very same members (the factor and the gain are
        # fitted on the other split): raw and delivered scores differ by the calibration
        # alone, not by a second ensemble's Monte Carlo error
        key_val = jax.random.fold_in(key_raw, 1)
        fc_val = forecast(key_val, fitted, ds, split=calibrate_on, n_samples=n_samples,
                          substeps=substeps, method=integrator, n_steps=eval_steps,
                          adaptive_steps=adaptive_steps,
                          progress=progress and f"forecast of the {calibrate_on} split "
                          "(to calibrate the spread)")
        gain = weight = spread = multiplier = None
        try:
            if residual:
                gain, weight = fit_persistence(fc_val)
                corrected = apply_persistence(fc_val, gain, weight)
                spread = fit_residual_spread(fc_val, corrected)
                multiplier = spread.multiplier(residual_rms(fc_val))
                fc_val = corrected
                del corrected  # a shallow copy: it would keep the raw statistics alive
            factor = fit_spread_factor(fc_val, traj_multiplier=multiplier)
            n_models = 1 if isinstance(fitted, Fitted) else len(fitted)
            # the tail's simulated ensembles: a generator of their own, from the run's seed
            simulation = np.random.default_rng(
                np.asarray(jax.random.key_data(jax.random.fold_in(key_raw, 2))).tolist())
            tail = fit_spread_tail(fc_val, factor, n_samples, simulation, n_models=n_models,
                                   traj_multiplier=multiplier)
            # a tail is matched to the coverage already (the nearest on its grid); Gaussian
            # members that under-cover are widened instead
            widening = (fit_spread_widening(fc_val, factor, tail, n_samples, simulation,
                                            n_models=n_models, traj_multiplier=multiplier)
                        if np.isinf(tail) else 1.0)
            factor = factor * widening
        except ValueError as err:  # a diverging model: report it, keep the uncalibrated scores
            print(f"warning: spread calibration on {calibrate_on!r} skipped: {err}")
            metrics["calibrated"] = {"fitted_on": calibrate_on, "skipped": str(err)}
            factor = gain = weight = spread = tail = widening = None
        # a 2D forecast holds GBs (8 full-resolution statistics per snapshot): keep only what
        # is still needed while the calibrated rerun allocates its own
        del fc_val
        if factor is not None:
            del fc  # scored above; the calibrated forecast replaces it
        if factor is not None:
            fc = forecast(key_raw, fitted, ds, split=split, n_samples=n_samples,
                          substeps=substeps, method=integrator, n_steps=eval_steps,
                          adaptive_steps=adaptive_steps,
                          spread_factor=factor, residual_gain=gain, micro_weight=weight,
                          residual_spread=spread,
                          spread_tail=tail,
                          progress=progress and f"calibrated forecast of the {split} split")
            calibrated = forecast_metrics(fc, eval_steps)
            calibrated["fitted_on"] = calibrate_on
            calibrated["lead_time"] = _as_lists(lead_time_metrics(fc, train, eval_steps))
            calibrated["spread_factor"] = {"min": float(factor.min()),
                                           "median": float(np.median(factor)),
                                           "max": float(factor.max())}
            # degrees of freedom of the members' Student-t tail; None: Gaussian (no tail)
            calibrated["spread_tail_dof"] = None if np.isinf(tail) else tail
            # the common widening (included in the factor) where even Gaussian members
            # under-covered the calibration split's errors; 1: none
            calibrated["spread_widening"] = widening
            metrics["calibrated"] = calibrated
            if gain is not None:
                calibrated["residual_gain"] = {
                    "lead_1": float(np.mean(gain[1])) if len(gain) > 1 else 1.0,
                    "half_life_steps": _half_life(gain)}
                fc["residual_gain"] = (("time", "field") if gain.ndim == 2 else ("time",),
                                       gain.astype(np.float32))
                fc["residual_gain"].attrs["description"] = (
                    f"residual-persistence gain fitted on the {calibrate_on} split: the first "
                    "snapshot's reconstruction residual times this is added to every member"
                    + ("" if weight is None else " (the residual with respect to the macro "
                       "part, see micro_weight)"))
            if weight is not None:
                calibrated["micro_weight"] = {
                    "lead_1": float(np.mean(weight[1])) if len(weight) > 1 else 0.0,
                    "median": float(np.median(weight[1:])) if len(weight) > 1 else 0.0}
                fc["micro_weight"] = (("time", "field") if weight.ndim == 2 else ("time",),
                                      weight.astype(np.float32))
                fc["micro_weight"].attrs["description"] = (
                    f"weight of the model's micro part (its ensemble mean) in the delivered "
                    f"mean, fitted on the "
                    f"{calibrate_on} split with the residual gain (fit_persistence)")
            fc["spread_factor"] = ("time", factor.astype(np.float32))
            fc["spread_factor"].attrs["description"] = (
                f"post-hoc spread factor fitted on the {calibrate_on} split (applied to this "
                "forecast's members)")
            if np.isfinite(tail):
                fc["spread_factor"].attrs["spread_tail_dof"] = tail
            fc["spread_factor"].attrs["spread_widening"] = widening
            if spread is not None:
                calibrated["residual_spread"] = spread._asdict()
                fc["spread_factor"].attrs.update(residual_spread_exponent=spread.exponent,
                                                 residual_spread_reference=spread.reference)
    fits = [fitted] if isinstance(fitted, Fitted) else list(fitted)
    metrics["fit_wall_time_s"] = sum(f.wall_time_s for f in fits)
    metrics["fit_steps"] = int(sum(len(f.losses) for f in fits))
    losses = [float(f.losses[-1]) for f in fits if len(f.losses)]
    metrics["final_loss"] = losses[0] if len(losses) == 1 else (losses or None)
    return fc, metrics


def _half_life(gain: np.ndarray) -> int | None:
    """First lead time (in steps) at which the mean residual gain falls below 1/2 (``None``:
    not within the horizon)."""
    below = np.flatnonzero(np.reshape(gain, (len(gain), -1)).mean(1) < 0.5)
    return int(below[0]) if below.size else None


def _as_lists(scores: xr.Dataset) -> dict[str, list[float]]:
    """Lead-time scores as JSON-able lists (``lead_time`` first)."""
    out = {"lead_time": np.asarray(scores["lead_time"].values, np.float64).tolist()}
    out.update({k: np.asarray(v.values, np.float64).tolist() for k, v in scores.items()})
    return out


def divergence_warning(metrics: dict, name: str = "the model") -> str | None:
    """A one-line warning when some forecast members of ``metrics`` (:func:`score`'s)
    diverged, else ``None``."""
    n_bad, n_all = metrics.get("diverged_members", 0), metrics.get("n_members", 0)
    if not n_bad:
        return None
    return (f"warning: {n_bad} of {n_all} forecast members of {name} diverged (non-finite, or "
            "more than the training data's range beyond its min or max); its scores include "
            "them")


def builtin_recipe(ds: xr.Dataset, case: str, *, steps: int | None = None,
                   micro_steps: int | None = None, n_micro: int = 5, seed: int = 0,
                   ) -> tuple[MultiscaleConfig, list[tuple[int, TrainConfig]]]:
    """``msde run``'s ``(config, stages)`` for a built-in case: the case's config on its coarse
    grid, ``steps`` implicit-scale then ``micro_steps`` multiscale steps (default: the case's
    :func:`run_schedule`), 1 window of :func:`run_window` snapshots per step."""
    from msde_ppl.data.cases import get_case

    default_steps, default_micro = run_schedule(case)
    first = TrainConfig(steps=default_steps if steps is None else steps, seed=seed,
                        windows_per_step=RUN_WINDOWS, window=run_window(case))
    micro_steps = default_micro if micro_steps is None else micro_steps
    return (model_config(ds, get_case(case).coarse, n_micro),
            progressive_stages(n_micro, first, micro_steps))


def run_builtin(ds: xr.Dataset, case: str, *, steps: int, micro_steps: int, n_micro: int = 5,
                seed: int = 0, n_samples: int = 64, calibrate: bool = True,
                progress: bool = False, should_stop=None, save_to: Path | None = None) -> dict:
    """``msde run``'s recipe on a built-in case's dataset: the case's config on its coarse
    grid, ``steps`` implicit-scale steps then ``micro_steps`` multiscale steps (1 window of
    :func:`run_window` snapshots per step), both scored on the test split (:func:`run_case`,
    which also documents ``save_to``)."""
    config, stages = builtin_recipe(ds, case, steps=steps, micro_steps=micro_steps,
                                    n_micro=n_micro, seed=seed)
    return run_case(ds, config, stages, split="test", n_samples=n_samples, seed=seed,
                    calibrate=calibrate, progress=progress, should_stop=should_stop,
                    save_to=save_to)


def run_case(
    ds: xr.Dataset,
    config: MultiscaleConfig,
    stages: list[tuple[int, TrainConfig]],
    *,
    split: str = "test",
    n_samples: int = 64,
    seed: int = 0,
    integrator: str = "heun",
    calibrate: bool = True,
    progress: bool = False,
    callback=None,
    should_stop=None,
    save_to: Path | None = None,
) -> dict:
    """Fit ``stages`` progressively and score the implicit-scale (first stage) and multiscale
    (last stage) models on ``split``.

    When the dataset has a ``val`` split (and ``split`` is another) and ``calibrate`` is set,
    each model's spread is also calibrated on it (:func:`score` with ``calibrate_on="val"``):
    the metrics gain ``"calibrated"`` and the forecasts are the calibrated ones.

    With ``save_to`` (an existing directory), each model is written to ``save_to / name`` as
    soon as the fit ends (:meth:`Fitted.save`; a later failure loses no fit) and its forecast to
    ``save_to / name / "forecast.nc"`` as soon as it is scored; the returned forecasts are then
    opened lazily from those files, so a 2D case's forecasts (GBs each) are not all held in
    memory at once.

    Returns:
        ``{"fits": [Fitted, ...], "forecasts": {name: Dataset}, "metrics": {name: dict}}`` with
        names ``"implicit_scale"`` and ``"multiscale"``; the multiscale model's training time
        and steps include the stages it grew from.

    Raises:
        FitStopped: a stage stopped (non-finite loss, or ``should_stop()``).
    """
    fits = fit_progressive(ds, config, stages, progress=progress, callback=callback,
                           should_stop=should_stop)
    named = {"implicit_scale": fits[0], "multiscale": fits[-1]} if len(fits) > 1 else {
        ("multiscale" if config.n_micro else "implicit_scale"): fits[-1]}
    if save_to is not None:
        for name, fitted in named.items():
            fitted.save(Path(save_to) / name)
    forecasts, metrics = {}, {}
    splits = split_names(ds)
    calibrate_on = "val" if calibrate and "val" in splits and split != "val" else None
    for name, fitted in named.items():
        if progress:
            print(f"scoring the {name.replace('_', '-')} model on the {split} split ...",
                  file=sys.stderr, flush=True)
        forecasts[name], metrics[name] = score(fitted, ds, split=split, n_samples=n_samples,
                                               seed=seed, integrator=integrator,
                                               calibrate_on=calibrate_on, progress=progress)
        if save_to is not None:  # to disk, then read back lazily: one forecast in memory
            path = Path(save_to) / name / "forecast.nc"
            with atomic_file(path) as tmp:
                forecasts[name].to_netcdf(tmp, engine="h5netcdf")
            forecasts[name] = xr.open_dataset(path, engine="h5netcdf")
        if name == "multiscale" and len(fits) > 1:
            metrics[name]["fit_wall_time_s"] = sum(f.wall_time_s for f in fits)
            metrics[name]["fit_steps"] = int(sum(len(f.losses) for f in fits))
    return {"fits": fits, "forecasts": forecasts, "metrics": metrics}
