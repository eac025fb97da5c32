r"""Multiscale model of KdV data, fitted and forecast end to end (example script).

The model program itself is :func:`msde_ppl.models.multiscale.multiscale_model` (its docstring
has the equations and the table of sample sites); copy that file to write a variant, e.g. a
drift module with the same ``drift(t, z, args)`` signature. This script shows the whole recipe
on the built-in KdV 1D case (method.md §5.2):

1. generate the dataset with the package's own solver;
2. fit the implicit-scale model (micro dimension 0) and grow it into the multiscale model
   (progressive schedule, method.md §4.2) with the forward-solver-free ELBO;
3. forecast the test trajectories with an ensemble and score them (rel-L2, CRPS, coverage).

Run ``python models/multiscale_kdv.py --n-traj 3 --steps 20 --micro-steps 20 --n-time 101`` for
a seconds-long smoke run; the defaults take a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from msde_ppl.data.cases import KdV1D
from msde_ppl.models.multiscale import config_for
from msde_ppl.models.training import TrainConfig, fit_progressive
from msde_ppl.predict.forecast import forecast, forecast_metrics


def main(args: argparse.Namespace) -> dict:
    case = dataclasses.replace(KdV1D(), n_time=args.n_time, t_final=(args.n_time - 1) * 1e-3)
    ds = case.generate(args.n_traj, seed=args.seed)
    config = config_for("kdv_1d", case.shape, n_micro=args.micro)
    window = min(64, args.n_time)
    stages = [
        (0, TrainConfig(steps=args.steps, window=window, seed=args.seed, chunk_size=50)),
        (args.micro, TrainConfig(steps=args.micro_steps, window=window, seed=args.seed,
                                 warmup_steps=0, chunk_size=50)),
    ]
    implicit, multiscale = fit_progressive(ds, config, stages, progress=False)
    report = {}
    for name, fitted in (("implicit_scale", implicit), ("multiscale", multiscale)):
        fc = forecast(jax.random.key(args.seed), fitted, ds, split="test", n_samples=args.samples)
        report[name] = forecast_metrics(fc, ds.attrs["eval_steps"])
    print(json.dumps(report, indent=2))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-traj", type=int, default=20, help="trajectories (split 10/5/5)")
    p.add_argument("--n-time", type=int, default=1001, help="snapshots per trajectory")
    p.add_argument("--micro", type=int, default=5, help="micro dimension")
    p.add_argument("--steps", type=int, default=3000, help="implicit-scale steps")
    p.add_argument("--micro-steps", type=int, default=6000, help="multiscale steps")
    p.add_argument("--samples", type=int, default=64, help="ensemble size")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
