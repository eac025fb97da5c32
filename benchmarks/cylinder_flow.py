"""The cylinder wake of our lattice Boltzmann solver (msde_ppl/data/cases/_lattice_boltzmann.py)
against published values, on several lattices (issue: cylinder wake, item 2).

For each lattice (cells per diameter, ``--cells``): spin-up from uniform flow, then a record of
``--record`` time units saved every 0.01; reports the Strouhal number from the transverse
velocity at a probe 0.5 behind the cylinder (x = 0.5, y = 0) and from the lift, the mean drag
coefficient, the lift amplitude, the volume flux at x = 2 (should be U H), the time per lattice
step and the wall time. The reference values: unconfined 2D flow at Re = 160, St = 0.187
(Williamson 1996's fit of parallel shedding), Cd ~1.33 (2D simulations at Re 150-200); the
walls at +-4 D raise both (classical blockage corrections, Allen & Vincenti 1944: ~6% on the
speed past the cylinder, so St ~0.20, Cd ~1.5).

Writes benchmarks/results/cylinder_flow.{json,md,png}.

    python benchmarks/cylinder_flow.py                      # 10 and 20 cells per diameter
    python benchmarks/cylinder_flow.py --cells 10 20 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from msde_ppl.data.cases._lattice_boltzmann import (  # noqa: E402
    CylinderChannel,
    shedding_frequency,
    simulate,
)

OUT = Path(__file__).parent / "results"


def run(cells: int, spinup: float, record: float) -> dict:
    channel = dataclasses.replace(CylinderChannel(), cells_per_diameter=cells)
    start = time.perf_counter()
    out = simulate(channel, spinup, record, 0.01, n_columns=320)
    wall = time.perf_counter() - start
    n_steps = round((spinup + record + 0.01) / channel.dt)
    x, y = out["x"], out["y"]
    probe = out["u"][:, 1, np.argmin(np.abs(x - 0.5)), np.argmin(np.abs(y))]
    to_st = channel.diameter / channel.inflow
    flux = float(out["u"][:, 0, np.argmin(np.abs(x - 2.0))].mean() * channel.height)
    return {
        "cells_per_diameter": cells, "lattice": list(channel.shape), "tau": channel.tau,
        "u_lattice": channel.u_lattice, "lattice_dt": channel.dt, "finite": out["finite"],
        "strouhal_probe": shedding_frequency(probe, 0.01) * to_st,
        "strouhal_lift": shedding_frequency(out["lift"], 0.01) * to_st,
        "drag_mean": float(out["drag"].mean()),
        "lift_amplitude": float(0.5 * (out["lift"].max() - out["lift"].min())),
        "flux_at_x2": flux, "wall_time_s": wall, "ms_per_step": 1e3 * wall / n_steps,
        "n_steps": n_steps, "_probe": probe, "_lift": out["lift"], "_drag": out["drag"],
        "_time": out["time"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--spinup", type=float, default=20.0)
    parser.add_argument("--record", type=float, default=10.0)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [run(c, args.spinup, args.record) for c in args.cells]
    meta = {"spinup": args.spinup, "record": args.record, "machine": platform.machine(),
            "cores": os.cpu_count(), "load_1min": [load_before, os.getloadavg()[0]],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    OUT.mkdir(exist_ok=True)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (OUT / "cylinder_flow.json").write_text(json.dumps({"meta": meta, "runs": public}, indent=1))
    lines = ["# Cylinder wake at Re = 160 (lattice Boltzmann, D/H = 1/8, slip walls)", "",
             f"Spin-up {args.spinup} time units, then {args.record} recorded; load average "
             f"{load_before:.2f} -> {os.getloadavg()[0]:.2f} (1 min), {meta['date']}.", "",
             "| cells per D | lattice | tau | St (probe) | St (lift) | mean Cd | lift amplitude "
             "| flux at x = 2 | ms / step | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in public:
        lines.append(
            f"| {r['cells_per_diameter']} | {r['lattice'][0]} x {r['lattice'][1]} | "
            f"{r['tau']:.4f} | {r['strouhal_probe']:.4f} | {r['strouhal_lift']:.4f} | "
            f"{r['drag_mean']:.3f} | {r['lift_amplitude']:.3f} | {r['flux_at_x2']:.4f} | "
            f"{r['ms_per_step']:.2f} | {r['wall_time_s']:.0f} |")
    lines += ["", "Published (unconfined 2D, Re = 160): St 0.187, Cd ~1.33; with walls at "
              "+-4 D expect St ~0.20, Cd ~1.5 (blockage corrections)."]
    (OUT / "cylinder_flow.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True, constrained_layout=True)
    for r in rows:
        label = f"{r['cells_per_diameter']} cells per D"
        axes[0].plot(r["_time"], r["_drag"], label=label)
        axes[1].plot(r["_time"], r["_lift"], label=label)
    axes[0].set_ylabel("drag coefficient")
    axes[1].set_ylabel("lift coefficient")
    axes[1].set_xlabel("time after spin-up")
    axes[0].legend()
    fig.savefig(OUT / "cylinder_flow.png", dpi=90)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
