"""Forecasts, metrics and baselines."""

from msde_ppl.predict.coarse_dns import coarse_dns, evaluate_coarse_dns
from msde_ppl.predict.metrics import noise_floor, pooled_relative_l2, relative_l2

__all__ = ["coarse_dns", "evaluate_coarse_dns", "noise_floor", "pooled_relative_l2", "relative_l2"]
