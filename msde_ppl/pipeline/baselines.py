"""The reference's baselines behind one call (``msde baseline``, ``msde table``).

- ``coarse_dns``: the same PDE solved on the coarse grid (:mod:`msde_ppl.predict.coarse_dns`;
  built-in cases only);
- ``dmd``: exact DMD of the first training trajectory (:mod:`msde_ppl.predict.dmd`);
- ``pod_sindy``: POD of the training snapshots + SINDy in the POD coefficients
  (:mod:`msde_ppl.predict.pod_sindy`).

DMD and POD-SINDy use rank ``n_macro + 5`` (``n_macro``: fields times coarse nodes, the
multiscale model's macro dimension) as the reference does. Each is scored on the first
``eval_steps`` snapshots of ``split`` like the models (:func:`~msde_ppl.predict.metrics.
point_forecast_metrics`), with its training and prediction wall times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import xarray as xr

from msde_ppl.data.schema import check_coarse
from msde_ppl.data.splits import select_split
from msde_ppl.predict.coarse_dns import case_of, coarse_dns, coarse_dns_grid
from msde_ppl.predict.dmd import dmd_forecast
from msde_ppl.predict.metrics import point_forecast_metrics
from msde_ppl.predict.pod_sindy import pod_sindy_forecast

BASELINES = ("coarse_dns", "dmd", "pod_sindy")


def default_coarse(ds: xr.Dataset) -> tuple[int, ...] | None:
    """The built-in case's coarse grid for ``ds`` (``None`` for other data)."""
    try:
        return tuple(case_of(ds).coarse)
    except Exception:  # not a built-in case
        return None


def macro_rank(ds: xr.Dataset, coarse: Sequence[int]) -> int:
    """``n_fields * prod(coarse) + 5``: the reference's DMD / POD rank."""
    coarse = check_coarse(ds, coarse)
    return int(ds.sizes.get("field", 1) * math.prod(coarse) + 5)


def run_baseline(
    name: str,
    ds: xr.Dataset,
    *,
    split: str = "test",
    coarse: Sequence[int] | None = None,
    rank: int | None = None,
    degree: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
) -> tuple[xr.DataArray, dict]:
    """Fit baseline ``name`` (:data:`BASELINES`) on ``ds``'s train split and forecast
    ``split``: ``(prediction, metrics)``.

    Args:
        coarse: coarse grid (default: the built-in case's); sets the rank and coarse DNS's grid.
        rank: DMD / POD rank (default ``n_macro + 5``).
        degree, threshold: POD-SINDy's library degree and STLSQ threshold (default: the
            reference's degree, the threshold chosen on val).
        seed: POD-SINDy's randomized SVD.

    Returns:
        the prediction (dims of ``ds["u"]`` on ``split``) and a ``metrics.json`` entry:
        rel-L2 mean/std vs noisy (and clean) data, ``finite``, ``fit_wall_time_s``,
        ``predict_wall_time_s`` and the method's settings.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    eval_steps = ds.attrs.get("eval_steps")
    test = select_split(ds, split)
    if name == "coarse_dns":
        import time

        start = time.perf_counter()
        pred = coarse_dns(ds, coarse, split=split)
        wall = time.perf_counter() - start
        info = {"coarse": coarse_dns_grid(ds, coarse),
                "fit_wall_time_s": 0.0, "predict_wall_time_s": wall}
    else:
        coarse = default_coarse(ds) if coarse is None else coarse
        if rank is None:
            if coarse is None:
                raise ValueError(f"the {name} rank is n_macro + 5, which needs the coarse grid "
                                 "of data that is not a built-in case: pass --coarse or --rank")
            rank = macro_rank(ds, coarse)
        if name == "dmd":
            pred, info = dmd_forecast(ds, rank, split=split, n_steps=eval_steps)
        else:
            pred, info = pod_sindy_forecast(ds, rank, split=split, n_steps=eval_steps,
                                            degree=degree, threshold=threshold, seed=seed)
    metrics = point_forecast_metrics(test, pred, eval_steps)
    metrics.update(info)
    return pred, metrics
