"""Cost of a learned ensemble against the fine solver, for 2D cases (issue: performance, item 4).

For each ``msde run`` directory given (its ``data.nc`` and ``multiscale/`` model): the time of
a 64-member forecast of one test trajectory over the evaluation horizon, decoded to the fine
grid (the compiled part of :func:`msde_ppl.forecast`, one predictive draw per member), and of
the full :func:`msde_ppl.forecast` of that trajectory (adds the quantiles and CRPS in NumPy),
against the case's own fine solver over the same horizon for one trajectory and for 64 (one
batch). Medians of ``--repeats`` calls after a warm-up (compile excluded); the machine's load is
recorded.

Writes benchmarks/results/ensemble_cost.{json,md}.

    python benchmarks/ensemble_cost.py runs/shallow_water_2d runs/burgers_2d
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from msde_ppl import Fitted, forecast
from msde_ppl.data import load, observations, select_split
from msde_ppl.data.cases import get_case
from msde_ppl.predict.forecast import trajectory_ensemble

OUT = Path(__file__).parent / "results"


def median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def measure(run_dir: Path, repeats: int, members: int) -> dict:
    ds = load(run_dir / "data.nc")
    fitted = Fitted.load(run_dir / "multiscale")
    case = get_case(ds.attrs["case"])
    n_out = int(ds.attrs.get("eval_steps", ds.sizes["time"]))
    y, times = observations(ds, "test")
    y, times = y[:1, :n_out], times[:n_out]
    ensemble = trajectory_ensemble(fitted, times, members)
    keys = iter(jax.random.split(jax.random.key(0), 2 * repeats + 4))
    ensemble_s = median_time(lambda: ensemble(next(keys), y[0]), repeats)
    one = select_split(ds, "test").isel(traj=[0], time=slice(0, n_out))
    full_s = median_time(lambda: forecast(next(keys), fitted, one, split=None,
                                          n_samples=members)["mean"].values, repeats)
    u0 = np.asarray(one["u_clean"].isel(traj=0, time=0).values, np.float64)[None]
    grid = case.spacing(u0.shape[1:])
    out_times = case.times()[:n_out]
    fine_one_s = median_time(lambda: case.solve(u0, grid, out_times), repeats)
    fine_batch_s = median_time(lambda: case.solve(np.repeat(u0, members, 0), grid, out_times),
                               max(1, repeats // 2))
    return {
        "case": ds.attrs["case"], "members": members, "snapshots": n_out,
        "fine_grid": list(u0.shape[1:]), "coarse_grid": list(fitted.config.coarse_shape),
        "micro": fitted.config.n_micro,
        "ensemble_s": ensemble_s, "forecast_full_s": full_s,
        "fine_solver_one_s": fine_one_s, "fine_solver_batch_s": fine_batch_s,
        "speedup_vs_batch_of_fine_solves": fine_batch_s / ensemble_s,
        "speedup_full_forecast_vs_batch": fine_batch_s / full_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--members", type=int, default=64)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = [measure(r, args.repeats, args.members) for r in args.runs]
    load_after = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    meta = {"load_before": load_before, "load_after": load_after, "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": args.repeats}
    (OUT / "ensemble_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# A learned 64-member ensemble against 64 fine solves (one test trajectory)", "",
             f"Medians of {args.repeats} calls after a warm-up; load average "
             f"{load_before[0]:.2f} -> {load_after[0]:.2f} (1 min) on {os.cpu_count()} cores, "
             f"{meta['date']}.", "",
             "| case | fine grid | coarse + micro | snapshots | ensemble (s) | full forecast (s) "
             "| 1 fine solve (s) | 64 fine solves (s) | 64 solves / ensemble | "
             "64 solves / full forecast |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {'x'.join(map(str, r['fine_grid']))} | "
            f"{'x'.join(map(str, r['coarse_grid']))} + {r['micro']} | {r['snapshots']} | "
            f"{r['ensemble_s']:.2f} | {r['forecast_full_s']:.2f} | {r['fine_solver_one_s']:.2f} | "
            f"{r['fine_solver_batch_s']:.2f} | {r['speedup_vs_batch_of_fine_solves']:.1f}x | "
            f"{r['speedup_full_forecast_vs_batch']:.1f}x |")
    (OUT / "ensemble_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
