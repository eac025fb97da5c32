"""Forecasts, metrics and baselines."""

from msde_ppl.predict.calibration import (
    ResidualSpread,
    apply_persistence,
    apply_residual_gain,
    fit_persistence,
    fit_residual_gain,
    fit_residual_spread,
    fit_spread_factor,
    fit_spread_tail,
    fit_spread_widening,
    tail_weights,
)
from msde_ppl.predict.coarse_dns import coarse_dns, evaluate_coarse_dns
from msde_ppl.predict.forecast import forecast, rollout
from msde_ppl.predict.metrics import (
    baseline_metrics,
    crps_ensemble,
    diverged_members,
    divergence_limits,
    forecast_metrics,
    interval_coverage,
    lead_time_metrics,
    noise_floor,
    pooled_relative_l2,
    relative_l2,
)

__all__ = ["ResidualSpread", "apply_persistence", "apply_residual_gain", "baseline_metrics",
           "coarse_dns", "crps_ensemble", "diverged_members", "divergence_limits",
           "evaluate_coarse_dns", "fit_persistence", "fit_residual_gain", "fit_residual_spread",
           "fit_spread_factor", "fit_spread_tail", "fit_spread_widening", "forecast",
           "forecast_metrics", "interval_coverage", "lead_time_metrics", "noise_floor",
           "pooled_relative_l2", "relative_l2", "rollout", "tail_weights"]
