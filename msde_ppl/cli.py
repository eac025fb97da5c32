"""The ``msde`` command line.

- ``msde data CASE --out FILE.nc [--n-traj N] [--seed S]``: write a built-in dataset.
- ``msde fit --data FILE.nc --coarse NX [NY] --micro K --out RUN_DIR``: fit a model to any
  dataset in the schema.
- ``msde forecast RUN_DIR --data FILE.nc --out OUT_DIR``: ensemble forecasts and metrics.
- ``msde run [CASE] [--out RUN_DIR]``: the main job on a built-in case (default ``kdv_1d``):
  data, multiscale and implicit-scale fits, forecasts, the coarse-DNS baseline, figures and a
  ``metrics.json`` report in a new run directory.
- ``msde report RUN_DIR``: regenerate every figure and a markdown report of a run.
- ``msde baseline {coarse_dns,dmd,pod_sindy} --data FILE.nc --out DIR``: a reference baseline.
- ``msde table [--cases ...] [--methods ...] [--quick] [--runs RUN_DIR ...] [--extend TABLE_DIR]
  --out DIR``: the paper's table (every case x the five methods) with the reference's numbers.

Nothing a user has is overwritten: an existing output file or run directory is refused unless
``--overwrite`` is given (files only; run directories are never reused).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before jax is imported: see README
os.environ.setdefault("MPLBACKEND", "Agg")  # the command line draws into files only

import msde_ppl  # noqa: E402
from msde_ppl.atomic import write_json, write_text  # noqa: E402
from msde_ppl.data import CASES, DEFAULT_CASE, SchemaError, make_dataset, save  # noqa: E402
from msde_ppl.data.schema import grid_shape  # noqa: E402
from msde_ppl.pipeline.baselines import BASELINES  # noqa: E402
from msde_ppl.pipeline.run import (  # noqa: E402  (msde run's schedule: one owner)
    FIT_BUDGET_S,
    FIT_STEPS,
    RUN_MICRO_STEPS,
    RUN_STEPS,
    RUN_STEPS_2D,
    RUN_WINDOWS,
)
from msde_ppl.pipeline.table import METHODS, TABLE_CASES  # noqa: E402
from msde_ppl.pipeline.training import TrainConfig  # noqa: E402

# `msde fit`: at most FIT_STEPS steps (a quarter implicit-scale, then multiscale) within the
# budget; validation on the val split stops it earlier when it stops improving
FIT_BUDGET_TEXT = f"{FIT_BUDGET_S / 60:g}m"


def _duration(text: str) -> float:
    """An argparse type: a duration ``90``, ``90s``, ``10m``, ``1.5h`` in seconds (> 0)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 10m or 1.5h, got "
                                         f"{text!r}")
    return value


def _int_at_least(minimum: int, description: str):
    """An argparse type: an integer ``>= minimum``, refused with ``expected <description>``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _float_above(minimum: float, inclusive: bool, description: str):
    """An argparse type: a finite number above ``minimum`` (or equal, if ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_float = _float_above(0.0, False, "a finite number > 0")
_nonnegative_float = _float_above(0.0, True, "a finite number >= 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msde",
        description="Learn stochastic multiscale models (coarse-grid latent SDEs) from data.",
    )
    parser.add_argument("--version", action="version", version=f"msde_ppl {msde_ppl.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cases = ", ".join(sorted(CASES))

    data = sub.add_parser(
        "data",
        help="write a built-in dataset to a netCDF file",
        description=f"Generate a built-in dataset with its own solver and write it. "
        f"Cases: {cases}.",
    )
    data.add_argument("case", metavar="CASE", help=f"one of: {cases}")
    data.add_argument("--out", required=True, type=Path, help="netCDF file to write (.nc)")
    data.add_argument(
        "--n-traj",
        type=_positive_int,
        default=None,
        help="number of trajectories (default: the reference's train+val+test count); the "
        "train/val/test split keeps the reference's proportions",
    )
    data.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    data.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    data.set_defaults(handler=cmd_data)

    fit = sub.add_parser(
        "fit",
        help="fit a multiscale model to a dataset",
        description="Fit the multiscale model (or, with --micro 0, the implicit-scale model) "
        "to the training split of any dataset in the schema; write the fitted model to a new "
        "run directory, with checkpoints and a status file (docs/reliability.md). "
        "`msde fit --resume RUN_DIR` continues an interrupted fit exactly where it stopped.",
    )
    fit.add_argument("--data", type=Path, help="dataset (.nc) in the schema (required)")
    fit.add_argument("--coarse", type=_positive_int, nargs="+", metavar="N",
                     help="coarse grid size per spatial axis (must divide the fine grid; "
                     "required)")
    fit.add_argument("--micro", type=_nonnegative_int, metavar="K",
                     help="micro dimension (0: implicit-scale model; required)")
    fit.add_argument("--steps", type=_positive_int, default=FIT_STEPS,
                     help=f"optimisation steps in all, at most (default {FIT_STEPS}); the fit "
                     "ends earlier when its val score stops improving or at --budget")
    fit.add_argument("--budget", type=_duration, default=FIT_BUDGET_S, metavar="TIME",
                     help="training wall-time budget, e.g. 90s, 10m, 1.5h (default "
                     f"{FIT_BUDGET_TEXT}); the fit stops there and keeps its best model")
    fit.add_argument("--no-validation", action="store_true",
                     help="do not score the model on the val split while it trains (by "
                     "default, when the data have a val split, a forecast score over the "
                     "evaluation horizon picks the best checkpoint and stops the fit when it "
                     "stops improving; docs/method.md section 5)")
    fit.add_argument("--no-progressive", action="store_true",
                     help="with --micro K > 0, train the multiscale model from scratch instead "
                     "of first fitting the implicit-scale model for a quarter of the steps and "
                     "growing it (docs/method.md §5)")
    fit.add_argument("--window", type=_positive_int, default=None,
                     help=f"snapshots per window (default {TrainConfig.window}, or every "
                     "training snapshot of shorter trajectories)")
    fit.add_argument("--windows", type=_positive_int, default=RUN_WINDOWS,
                     help=f"windows per optimisation step (default {RUN_WINDOWS})")
    fit.add_argument("--lr", type=_positive_float, default=1e-3,
                     help="initial learning rate (default 1e-3)")
    fit.add_argument("--ema", type=_ema_decay, default=None, metavar="DECAY",
                     help="validate, checkpoint and keep the exponential moving average of the "
                     "parameters with this decay (e.g. 0.999: about the last 1000 steps); "
                     "default: none")
    fit.add_argument("--encoder", choices=["mlp", "spline", "cnn"], default=None,
                     help="micro encoder on the residual y - G*y: 'mlp' (cheap), 'spline' (the "
                     "MLP on the residual's cubic-spline coefficients, knots every 2 fine "
                     "points: ~1/4 of the work in 2D) or 'cnn' (the reference's strided "
                     "convolutions; 1D or 2D grids, every axis divisible by 8); "
                     "default: the built-in case's choice, else 'mlp'")
    fit.add_argument("--decoder", choices=["mlp", "spline", "cnn", "stencil"], default=None,
                     help="micro decoder: 'mlp' g(eta), 'spline' g(eta) through a cubic-spline "
                     "basis (knots every 2 fine points), 'cnn' g(eta) by the reference's "
                     "transposed convolutions (1D or 2D, axes divisible by 8) or 'stencil' "
                     "(translation-equivariant g(zeta, eta) reading the local coarse field); "
                     "default: the built-in case's choice, else 'mlp'")
    fit.add_argument("--scale-kernel", choices=["learned", "frozen"], default=None,
                     help="learn the restriction/prolongation kernel (the reference) or hold it "
                     "at its initial profile; default: the built-in case's choice, else "
                     "'learned'")
    fit.add_argument("--physics", choices=["burgers", "kdv"], default=None,
                     help="physics-informed macro drift: a known coarse finite-difference PDE "
                     "operator (Burgers -u u_x + nu u_xx, KdV -u u_x - delta u_xxx) with its "
                     "coefficient as a sample site, plus the learned stencil correction; needs "
                     "a periodic 1D dataset with a 'domain' attribute (default: none)")
    fit.add_argument("--positional", action=argparse.BooleanOptionalAction, default=None,
                     help="the macro drift also reads each coarse node's position (cos and sin "
                     "of its angle along each axis), for data that are not translation "
                     "invariant: a speed, diffusivity or forcing that varies in space, an "
                     "obstacle; --no-positional: the same stencil network at every node "
                     "(default: the built-in case's choice, else on when a linear stencil "
                     "regression per node leaves less than half of a shared one's residual on "
                     "the val split: docs/robustness.md)")
    fit.add_argument("--shifts", action=argparse.BooleanOptionalAction, default=None,
                     help="train on random translates of the windows by whole coarse cells "
                     "(periodic data whose drift does not read the position); default: on for "
                     "such data unless they are a built-in case (docs/robustness.md)")
    fit.add_argument("--drift", choices=["free", "dissipative"], default=None,
                     help="drift networks: 'dissipative' (output saturated at a learned bound "
                     "plus a learned linear relaxation: forecasts stay near the data) or "
                     "'free' (the reference's); default: 'free' for the built-in cases, "
                     "'dissipative' for any other data")
    fit.add_argument("--stencil-width", type=_positive_int, default=None, metavar="W",
                     help="width of each hidden layer of the macro drift's stencil network "
                     "(default 128, the reference's; 64 for data that are not a built-in case "
                     "on a coarse grid of more than 128 nodes, where a step costs most: "
                     "docs/robustness.md)")
    fit.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    fit.add_argument("--checkpoint-every", type=_nonnegative_float, default=60.0,
                     metavar="SECONDS", help="write a checkpoint after this many seconds of "
                     "training (default 60; 0: after every chunk of steps)")
    fit.add_argument("--out", type=Path, help="run directory to create (required)")
    fit.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                     help="continue the interrupted or killed fit in RUN_DIR with the settings "
                     "it was started with (no other option is needed; the result is "
                     "bit-identical to an uninterrupted fit)")
    fit.set_defaults(handler=cmd_fit)
    _FIT_DEFAULTS.update({a.dest: a.default for a in fit._actions
                          if a.dest not in ("help", "resume")})

    fc = sub.add_parser(
        "forecast",
        help="ensemble forecasts of a fitted model, with metrics",
        description="Forecast every trajectory of a split from its first snapshot and write "
        "forecast.nc, metrics.json and figures of its first trajectory (space-time panels or "
        "field maps, the macro/micro decomposition) into a new directory.",
    )
    fc.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                    help="directory written by msde fit; several (fits of the same data, e.g. "
                    "other seeds) forecast as one equal-weight mixture, --samples per model")
    fc.add_argument("--data", required=True, type=Path, help="dataset (.nc)")
    fc.add_argument("--split", default="test",
                    help="split to forecast (default test), or 'all' (every trajectory; the "
                    "scores are then flagged in_sample when the data are the ones the model "
                    "was fitted to). Data without split labels are split by the same rule as "
                    "msde fit's")
    fc.add_argument("--samples", type=_positive_int, default=64, help="ensemble size (64)")
    fc.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    fc.add_argument("--integrator", choices=["heun", "euler"], default="heun",
                    help="SDE integrator: stochastic Heun (default) or Euler-Maruyama")
    fc.add_argument("--substeps", type=_positive_int, default=1,
                    help="integrator steps per data interval, at least (default 1; more, "
                    "up to 64, where the learned drift is stiff at the forecast's states: "
                    "docs/method.md section 6)")
    fc.add_argument("--fixed-steps", action="store_true",
                    help="exactly --substeps integrator steps per data interval, whatever "
                    "the drift's stiffness")
    fc.add_argument("--horizon", type=_int_at_least(2, "an integer >= 2"), default=None,
                    metavar="N", help="forecast and score only the first N snapshots "
                    "(default: the dataset's evaluation horizon, eval_steps, or all)")
    fc.add_argument("--out", required=True, type=Path, help="output directory to create")
    fc.add_argument("--calibrate-on", metavar="SPLIT", default=None,
                    help="fit a post-hoc spread factor per lead time on SPLIT (spread-skill "
                    "matching) and the members' tail (90%% coverage matching, "
                    "docs/calibration.md), apply them to the forecast and add the "
                    "calibrated scores to metrics.json (forecast.nc is then the calibrated "
                    "forecast); default: val, when the data have a val split and another "
                    "split is forecast")
    fc.add_argument("--no-calibrate", action="store_true",
                    help="do not calibrate the spread (forecast.nc is the raw ensemble)")
    fc.add_argument("--no-residual", action="store_true",
                    help="calibrate the spread only: do not carry the first snapshot's "
                    "reconstruction residual forward (residual persistence, a gain per lead "
                    "time fitted on the calibration split, docs/calibration.md)")
    fc.add_argument("--allow-incomplete", action="store_true",
                    help="also forecast a run that failed or was interrupted (its last saved "
                    "state)")
    fc.set_defaults(handler=cmd_forecast)

    run = sub.add_parser(
        "run",
        help="the main job: data, fits, forecasts, baselines and a report in a new run directory",
        description="Generate the built-in dataset CASE, fit the multiscale and implicit-scale "
        "models, forecast the test split, run the coarse-DNS baseline and write metrics.json, "
        "figures and the posterior into a new run directory.",
    )
    run.add_argument("case", nargs="?", default=DEFAULT_CASE, metavar="CASE",
                     help=f"one of: {cases} (default {DEFAULT_CASE})")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory to create (default runs/CASE-TIMESTAMP); must not exist")
    run.add_argument("--n-traj", type=_positive_int, default=None,
                     help="number of trajectories (default: the reference's)")
    run.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    per_case = ", ".join(f"{c} {a}" for c, (a, _) in RUN_STEPS_2D.items())
    run.add_argument("--steps", type=_positive_int, default=None,
                     help=f"steps of the implicit-scale fit (default {RUN_STEPS}; {per_case})")
    per_case = ", ".join(f"{c} {b}" for c, (_, b) in RUN_STEPS_2D.items())
    run.add_argument("--micro-steps", type=_positive_int, default=None,
                     help="further steps after growing it into the multiscale model "
                     f"(default {RUN_MICRO_STEPS}; {per_case})")
    run.add_argument("--micro", type=_positive_int, default=5, help="micro dimension (5)")
    run.add_argument("--samples", type=_positive_int, default=64,
                     help="forecast ensemble size (64)")
    run.set_defaults(handler=cmd_run)

    report = sub.add_parser(
        "report",
        help="figures and a markdown report of a run or model directory",
        description="Regenerate every figure (forecasts, uncertainty, calibration, ELBO trace, "
        "posterior of the physical parameters and latent paths) and write report.md plus the "
        "ArviZ posterior (netCDF) of a run directory written by `msde run`, or of a model "
        "directory written by `msde fit` (on the test split of its data; with --forecast, the "
        "scores of an `msde forecast` directory of it).",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="directory of msde run, or of msde fit")
    report.add_argument("--data", type=Path, default=None,
                        help="for an msde fit directory: its dataset (default: the file msde fit "
                        "recorded); unlabelled data are split by msde fit's rule")
    report.add_argument("--forecast", type=Path, default=None, metavar="FORECAST_DIR",
                        help="for an msde fit directory: an msde forecast directory of it, whose "
                        "metrics and forecast the report shows")
    report.add_argument("--out", type=Path, default=None,
                        help="report directory to create (default RUN_DIR/report); must not "
                        "exist")
    report.add_argument("--samples", type=_positive_int, default=32,
                        help="ensemble members of the calibration re-forecast (default 32)")
    report.add_argument("--draws", type=_positive_int, default=100,
                        help="posterior draws of the ArviZ tree (default 100)")
    report.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    report.add_argument("--allow-incomplete", action="store_true",
                        help="also report a run that failed or was interrupted")
    report.set_defaults(handler=cmd_report)

    base = sub.add_parser(
        "baseline",
        help="a reference baseline (coarse DNS, DMD, POD-SINDy) fitted and scored on a dataset",
        description="Fit a baseline on the train split and forecast SPLIT from each "
        "trajectory's first snapshot: coarse_dns (the PDE on the coarse grid; built-in cases "
        "only), dmd (PyDMD on the first training trajectory) or pod_sindy (POD of the training "
        "snapshots + pysindy, threshold chosen on val). Writes metrics.json (the schema of "
        "msde forecast) and prediction.nc into a new directory. DMD and POD-SINDy need the "
        "baselines extra: pip install -e \".[baselines]\".",
    )
    base.add_argument("method", choices=BASELINES, help="which baseline")
    base.add_argument("--data", required=True, type=Path, help="dataset (.nc)")
    base.add_argument("--split", default="test", help="split to forecast (default test)")
    base.add_argument("--coarse", type=_positive_int, nargs="+", metavar="N", default=None,
                      help="coarse grid per axis (default: the built-in case's); sets the "
                      "DMD / POD rank n_macro + 5")
    base.add_argument("--rank", type=_positive_int, default=None,
                      help="DMD / POD rank (default n_macro + 5)")
    base.add_argument("--degree", type=_positive_int, default=None,
                      help="POD-SINDy polynomial degree (default 2 for kdv_1d, else 1)")
    base.add_argument("--threshold", type=_positive_float, default=None,
                      help="POD-SINDy STLSQ threshold (default: chosen on the val split)")
    base.add_argument("--seed", type=_nonnegative_int, default=0,
                      help="seed of POD's randomized SVD (default 0)")
    base.add_argument("--out", required=True, type=Path, help="output directory to create")
    base.set_defaults(handler=cmd_baseline)

    table = sub.add_parser(
        "table",
        help="the paper's table: every case x the five methods, with the reference's numbers",
        description="Score coarse DNS, DMD, POD-SINDy, the implicit-scale and the multiscale "
        "model on the test split of each case (fitting the two models with msde run's "
        "schedule, or taking them from earlier `msde run` directories with --runs) and write "
        "table.md, table.json and table.png into a new directory.",
    )
    table.add_argument("--cases", nargs="+", default=list(TABLE_CASES), metavar="CASE",
                       help=f"built-in cases (default: {' '.join(TABLE_CASES)})")
    table.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                       metavar="METHOD", help=f"subset of: {' '.join(METHODS)}")
    table.add_argument("--quick", action="store_true",
                       help="smoke-sized: few trajectories, 150 + 150 steps, 8 members, no "
                       "calibration (checks that every column is produced)")
    table.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN_DIR",
                       help="`msde run` directories whose models (and data) to use for their "
                       "cases instead of fitting")
    table.add_argument("--extend", type=Path, default=None, metavar="TABLE_DIR",
                       help="an earlier `msde table` output: its rows of the cases not scored "
                       "here are carried over (same mode, quick or full)")
    table.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    table.add_argument("--out", required=True, type=Path, help="output directory to create")
    table.set_defaults(handler=cmd_table)
    return parser


def cmd_baseline(args: argparse.Namespace) -> int:
    from msde_ppl.data import load
    from msde_ppl.pipeline.baselines import run_baseline

    if args.out.exists():
        raise FileExistsError(f"output directory {args.out} already exists; choose another --out")
    ds = load(args.data)
    pred, metrics = run_baseline(args.method, ds, split=args.split, coarse=args.coarse,
                                 rank=args.rank, degree=args.degree, threshold=args.threshold,
                                 seed=args.seed)
    out = _new_dir(args.out, "output directory")
    pred.to_dataset(name="prediction").to_netcdf(out / "prediction.nc", engine="h5netcdf")
    meta = _meta(ds, grid_shape(ds), args.seed)
    meta["split"] = args.split
    _write_metrics(out / "metrics.json", {args.method: metrics, "meta": meta})
    finite = metrics["finite"]
    print(f"{args.method} on {args.split}: rel-L2 (vs noisy data) "
          + (f"{metrics['rel_l2_mean']:.4f} ± {metrics['rel_l2_std']:.4f}" if finite else
             "not finite (the forecast diverged)")
          + f"; training {metrics['fit_wall_time_s']:.1f} s, prediction "
          f"{metrics['predict_wall_time_s']:.1f} s")
    if not finite:
        print(f"warning: the {args.method} forecast diverged", file=sys.stderr)
    print(f"report: {out / 'metrics.json'}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from msde_ppl.pipeline.table import build_table, write_table

    if args.out.exists():
        raise FileExistsError(f"output directory {args.out} already exists; choose another --out")
    for case in args.cases:
        _check_case(case)
    table = build_table(args.cases, args.methods, quick=args.quick, runs=args.runs,
                        extend=args.extend, seed=args.seed,
                        log=lambda line: print(line, flush=True))
    out = write_table(table, args.out)
    print(f"report: {out / 'table.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from msde_ppl.diagnostics.report import build_report
    from msde_ppl.pipeline.rundir import require_complete

    require_complete(args.run_dir, args.allow_incomplete)
    data = None
    if (args.run_dir / "fitted.json").is_file():  # msde fit's directory: label its data
        from msde_ppl.data import load

        path = args.data
        if path is None:
            try:
                path = Path(json.loads((args.run_dir / "run.json").read_text())["args"]["data"])
            except (OSError, ValueError, KeyError):
                path = None
        if path is not None and path.is_file():
            data = _labelled(load(path), path)
            if _file_digest(path) != _recorded_digest(args.run_dir):
                print(f"warning: {path} is not the file the model was fitted to: its test "
                      "split may hold trajectories it was fitted on", file=sys.stderr)
    elif args.data is not None or args.forecast is not None:
        raise ValueError("--data and --forecast are for msde fit directories; an msde run "
                         "directory reports its own data.nc and forecasts")
    path = build_report(args.run_dir, args.out, data=data, forecast_dir=args.forecast,
                        n_samples=args.samples, n_draws=args.draws, seed=args.seed,
                        progress=True)
    print(f"report: {path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    _check_case(args.case)
    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    from msde_ppl.data.io import save_batches

    start = time.perf_counter()
    case = CASES[args.case]  # written a batch of trajectories at a time: any count fits
    _, n_traj = save_batches(case.generate_batches(args.n_traj, args.seed), out,
                             overwrite=args.overwrite)
    print(
        f"wrote {out}: case {args.case}, {n_traj} trajectories x {case.n_time} "
        f"snapshots on a {'x'.join(map(str, case.shape))} grid "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from msde_ppl.pipeline.rundir import RunLock, StopRequest, write_status
    from msde_ppl.pipeline.training import FitStopped

    _check_case(args.case)
    run_dir: Path = args.out or Path("runs") / f"{args.case}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = _new_dir(run_dir, "run directory")

    def on_abort(signum: int) -> None:
        write_status(run_dir, "interrupted", f"{signal.Signals(signum).name} twice: aborted "
                     "at once", command="run")

    with StopRequest(on_abort) as stop, RunLock(run_dir):
        write_status(run_dir, "running", command="run")
        try:
            _run_job(args, run_dir, stop)
        except FitStopped as err:
            reason = (f"{err} (stage {err.stage + 1})" if err.status == "failed" else
                      f"{signal.Signals(stop.signum).name} during the fit")
            write_status(run_dir, err.status, reason, command="run",
                         non_finite=err.status == "failed")
            print(f"msde run: {err.status}: {reason} (in {run_dir})", file=sys.stderr)
            return 1 if err.status == "failed" else stop.exit_code
        except _Interrupted:
            write_status(run_dir, "interrupted", f"{signal.Signals(stop.signum).name}",
                         command="run")
            print(f"msde run: interrupted (in {run_dir})", file=sys.stderr)
            return stop.exit_code
        except BaseException as err:
            write_status(run_dir, "failed", f"{type(err).__name__}: {err}", command="run")
            raise
        write_status(run_dir, "complete", command="run")
    print(f"report: {run_dir / 'metrics.json'}")
    return 0


class _Interrupted(Exception):
    """A stop request seen between the phases of ``msde run``."""


def _run_job(args: argparse.Namespace, run_dir: Path, stop) -> None:
    """The phases of ``msde run``; ``stop()`` is checked between them."""
    import jax

    from msde_ppl.data.splits import select_split
    from msde_ppl.pipeline.run import run_builtin, run_schedule
    from msde_ppl.predict import evaluate_coarse_dns, noise_floor

    def check() -> None:
        if stop():
            raise _Interrupted

    start = time.perf_counter()
    steps, micro_steps = run_schedule(args.case)
    args.steps = steps if args.steps is None else args.steps
    args.micro_steps = micro_steps if args.micro_steps is None else args.micro_steps
    print(f"[1/5] generating {args.case} ...", flush=True)
    ds = make_dataset(args.case, n_traj=args.n_traj, seed=args.seed)
    save(ds, run_dir / "data.nc")
    print(f"[2/5] fitting the implicit-scale model ({args.steps} steps), then growing it into "
          f"the multiscale model (micro dimension {args.micro}, {args.micro_steps} steps) ...",
          flush=True)
    check()
    result = run_builtin(ds, args.case, steps=args.steps, micro_steps=args.micro_steps,
                         n_micro=args.micro, seed=args.seed, n_samples=args.samples,
                         progress=True, should_stop=stop, save_to=run_dir)
    check()
    metrics = dict(result["metrics"])
    # the fitted models and forecasts are written as each is done (run_case's save_to)
    print("[3/5] writing the posteriors ...", flush=True)
    for key, fitted in (("multiscale", result["fits"][-1]), ("implicit_scale", result["fits"][0])):
        _write_posterior(fitted, ds, run_dir / key / "posterior.nc", args.seed)
        print(f"      {key}: rel-L2 {metrics[key]['rel_l2_mean']:.4f} "
              f"(clean {metrics[key].get('rel_l2_clean_mean', float('nan')):.4f}), "
              f"fit {metrics[key]['fit_wall_time_s']:.0f} s", flush=True)
    check()
    print("[4/5] coarse-DNS baseline on the test split ...", flush=True)
    metrics["coarse_dns"] = evaluate_coarse_dns(ds)
    check()
    print("[5/5] figures ...", flush=True)
    _write_figures(result["forecasts"], run_dir, radial=args.case == "shallow_water_2d")
    if _is_velocity(ds):
        for key, fitted in (("multiscale", result["fits"][-1]),
                            ("implicit_scale", result["fits"][0])):
            _write_vorticity(fitted, ds, result["forecasts"][key], run_dir, key,
                             jax.random.fold_in(jax.random.key(args.seed), 7 + len(key)))
    test = select_split(ds, "test")
    floor = noise_floor(test, test.attrs.get("eval_steps"))
    metrics["meta"] = _meta(ds, grid_shape(ds), args.seed)
    metrics["meta"].update({
        "steps": args.steps,
        "micro_steps": args.micro_steps,
        "noise_floor_rel_l2": None if floor is None else floor["mean"],
        "wall_time_s": time.perf_counter() - start,
    })
    _write_metrics(run_dir / "metrics.json", metrics)
    print("rel-L2 on the test split (vs noisy data):")
    for key in ("multiscale", "implicit_scale", "coarse_dns"):
        m = metrics[key]
        print(f"  {key:15s} {m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f}")
    for name, m in metrics["multiscale"].get("baselines", {}).items():
        print(f"  {name:15s} {m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f}  (trivial baseline)")
    for key in ("multiscale", "implicit_scale"):
        _warn_diverged(metrics[key], f"the {key.replace('_', '-')} model")
    print("90% coverage and spread/skill on the test split (uncalibrated -> calibrated on val):")
    for key in ("multiscale", "implicit_scale"):
        m, cal = metrics[key], metrics[key].get("calibrated")
        after = (f" -> {cal['coverage_90']:.2f}, {cal['spread_skill']:.2f}"
                 if cal and "skipped" not in cal else "")
        print(f"  {key:15s} {m['coverage_90']:.2f}, {m['spread_skill']:.2f}{after}")


def _write_posterior(fitted, ds, path: Path, seed: int) -> None:
    """The ArviZ tree of a fit (posterior of the globals and of a test window's latent path,
    without the decoded fields: ``msde report`` adds those; :func:`msde_ppl.diagnostics.
    to_datatree`) as netCDF."""
    from msde_ppl.diagnostics import arviz_io

    tree = arviz_io.to_datatree(fitted, ds, split="test", n_draws=100, seed=seed, decoded=False)
    arviz_io.save_datatree(tree, path)


def _write_figures(forecasts: dict, run_dir: Path, radial: bool = False,
                   split: str = "test") -> list[Path]:
    """Per model: space-time panels (1D) or field maps at several times (2D), the macro/micro
    decomposition, and for a radial problem (the dam break) radial profiles. Returns the
    files written."""
    import matplotlib.pyplot as plt

    from msde_ppl.diagnostics.plots import (
        plot_decomposition,
        plot_field_maps,
        plot_radial_profile,
        plot_space_time,
    )

    written = []

    def save(fig, name: str, dpi: int) -> None:
        fig.savefig(run_dir / name, dpi=dpi)
        plt.close(fig)
        written.append(run_dir / name)

    for key, fc in forecasts.items():
        what = "forecast" if key == "model" else f"{key.replace('_', '-')} model"
        title = f"{what}, {split} trajectory 0"
        if "y" in fc.dims:
            save(plot_field_maps(fc, 0, title=title), f"{key}_maps.png", 80)
            if radial:
                save(plot_radial_profile(fc, 0), f"{key}_radial_profile.png", 90)
        else:
            save(plot_space_time(fc, 0, title=title), f"{key}_space_time.png", 90)
        if "macro" in fc:
            save(plot_decomposition(fc, 0), f"{key}_decomposition.png", 90)
    return written


def _is_velocity(ds) -> bool:
    """A 2D velocity: fields exactly ``u`` and ``v`` on dims ``x`` and ``y``."""
    return ("field" in ds["u"].dims and "y" in ds["u"].dims
            and sorted(map(str, ds["field"].values)) == ["u", "v"])


def _warn_diverged(metrics: dict, name: str) -> None:
    """Print :func:`~msde_ppl.pipeline.run.divergence_warning` for the raw forecast of
    ``metrics`` and for its calibrated one (whose widened spread can push members past the
    bounds the raw ones kept)."""
    from msde_ppl.pipeline.run import divergence_warning

    for warning in (divergence_warning(metrics, name),
                    divergence_warning(metrics.get("calibrated", {}),
                                       f"{name} after calibration (its widened spread)")):
        if warning:
            print(warning, file=sys.stderr)


def _write_vorticity(fitted, ds, fc, run_dir: Path, key: str, rng_key) -> Path:
    """``{key}_vorticity.png``: truth / mean / std of the vorticity at three test times (the
    first test trajectory), from a forecast that keeps its members (64), over ``fc``'s horizon
    and spread as in ``fc`` (its ``spread_factor``, ``residual_gain`` and ``micro_weight``,
    when calibrated)."""
    import matplotlib.pyplot as plt

    from msde_ppl.data.splits import select_split
    from msde_ppl.diagnostics.plots import plot_vorticity
    from msde_ppl.diagnostics.report import _residual_spread, _spread_tail
    from msde_ppl.predict import forecast

    one = select_split(ds, "test").isel(traj=[0])
    factor = fc["spread_factor"].values if "spread_factor" in fc else None
    gain = fc["residual_gain"].values if "residual_gain" in fc else None
    weight = fc["micro_weight"].values if "micro_weight" in fc else None
    draws = forecast(rng_key, fitted, one, split=None, n_samples=64, return_samples=True,
                     spread_factor=factor, residual_gain=gain, micro_weight=weight,
                     residual_spread=_residual_spread(fc), spread_tail=_spread_tail(fc),
                     n_steps=fc.sizes.get("time"))  # fc's horizon
    obs = one["u"].isel(traj=0, time=slice(0, draws.sizes["time"]))
    obs = obs.transpose("time", "field", "x", "y")
    samples = draws["samples"].isel(traj=0).transpose("sample", "time", "field", "x", "y")
    fig = plot_vorticity(obs, samples, title=f"{key.replace('_', '-')} model, vorticity, "
                         "test trajectory 0")
    path = run_dir / f"{key}_vorticity.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _new_dir(path: Path, what: str) -> Path:
    if path.exists():
        raise FileExistsError(f"{what} {path} already exists; choose another --out")
    path.mkdir(parents=True)
    return path


_FIT_DEFAULTS: dict = {}  # msde fit's option defaults (filled by build_parser)
_FIT_SETTINGS = ("data", "coarse", "micro", "steps", "budget", "no_validation", "no_progressive",
                 "window", "windows", "lr", "ema",
                 "encoder", "decoder", "scale_kernel", "physics", "drift", "positional",
                 "shifts", "stencil_width", "seed", "checkpoint_every")
# settings that run.json did not always record, with the value a fit then had: an --ema fit
# recorded without it resumes with no EMA and is refused by its checkpoint's settings check
_LATER_FIT_SETTINGS = {"ema": None, "positional": "legacy", "shifts": False,
                       "stencil_width": 128}


def _file_digest(path: Path) -> str:
    from msde_ppl.pipeline.rundir import file_sha256

    return file_sha256(path)


def _resumed_fit_args(args: argparse.Namespace) -> argparse.Namespace:
    """The settings of the fit in ``args.resume`` (its ``run.json``), checked resumable."""
    from msde_ppl.pipeline.rundir import describe, read_status, still_running

    run_dir: Path = args.resume
    given = [k for k, default in _FIT_DEFAULTS.items() if getattr(args, k) != default]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--resume continues a fit with the settings it was started with; "
                         f"it takes no other option (got {flags})")
    record_file = run_dir / "run.json"
    if not record_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory of `msde fit` (no run.json)")
    try:
        record = json.loads(record_file.read_text())
        record["args"] = {**_LATER_FIT_SETTINGS, **record["args"]}
        missing = [k for k in _FIT_SETTINGS if k not in record["args"]]
        if missing and {"data", "coarse", "micro", "steps"} <= set(record["args"]):
            raise ValueError(f"the fit in {run_dir} was started by another version of msde_ppl "
                             f"(its run.json has no {', '.join(missing)}); it cannot be resumed "
                             "by this one")
        settings = {k: record["args"][k] for k in _FIT_SETTINGS}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{record_file} is damaged ({err!r}); the fit cannot be resumed"
                         ) from None
    status = read_status(run_dir)
    if status is not None and status["state"] == "complete":
        raise ValueError(f"the fit in {run_dir} is complete; there is nothing to resume")
    if still_running(status, run_dir):
        raise ValueError(f"the fit in {run_dir} is still running (process {status['pid']})")
    if status is not None and status.get("non_finite"):
        raise ValueError(f"the fit in {run_dir} failed with a non-finite loss "
                         f"({status['reason']}); resuming would repeat it: fit again with "
                         "other settings")
    settings["data"] = Path(settings["data"])
    if not settings["data"].is_file():
        raise FileNotFoundError(f"the data of the fit in {run_dir}, {settings['data']}, are gone")
    if _file_digest(settings["data"]) != record.get("data_sha256"):
        raise ValueError(f"{settings['data']} changed since the fit in {run_dir} began; it "
                         "cannot be resumed on other data")
    if status is not None:
        print(f"resuming {run_dir} (status {describe(status, run_dir)})", flush=True)
    return argparse.Namespace(**settings, out=run_dir, resume=run_dir)


def _recorded_digest(run_dir: Path) -> str | None:
    """The SHA-256 of the data ``msde fit`` recorded in ``run_dir/run.json`` (or ``None``)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text())["data_sha256"]
    except (OSError, ValueError, KeyError):
        return None


def _fitted_on(run_dirs: list[Path], data: Path) -> bool | None:
    """Whether every model of ``run_dirs`` was fitted (``msde fit``'s ``run.json``) to the
    file ``data``, byte for byte; ``None`` when a run has no such record."""
    digests = [_recorded_digest(run_dir) for run_dir in run_dirs]
    if None in digests:
        return None
    return all(d == _file_digest(data) for d in digests)


def _labelled(ds, path) -> object:
    """``ds`` with split labels: its own, or held out by the stated rule (with a warning)."""
    from msde_ppl.data.splits import splits_in_time, with_held_out_splits

    if "split" in ds.coords:
        return ds
    ds = with_held_out_splits(ds)
    counts = {k: int((ds["split"].values == k).sum()) for k in ("train", "val", "test")}
    what = "snapshots" if splits_in_time(ds) else "trajectories"
    print(f"warning: {path} has no split labels; held out {ds.attrs['split_rule']} (train "
          f"{counts['train']}, val {counts['val']}, test {counts['test']} {what}). "
          "msde fit trains on train only and msde forecast scores test by the same rule; "
          "label the data to choose yourself.", file=sys.stderr)
    return ds


def _ema_decay(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"an EMA decay must be in (0, 1), got {text}")
    return value


def _fit_plan(args: argparse.Namespace):
    """``(ds, config, stages)`` of a ``msde fit``, every input checked before anything is
    written."""
    from msde_ppl.data import load, validate
    from msde_ppl.generative.codec import cnn_fits_grid
    from msde_ppl.pipeline.run import model_config, progressive_stages, shifts_choice
    from msde_ppl.pipeline.training import check_training_data, shift_steps

    ds = load(args.data)
    validate(ds, coarse=args.coarse)
    for flag, choice in (("--encoder", args.encoder), ("--decoder", args.decoder)):
        grid = tuple(grid_shape(ds))
        if choice == "cnn" and not cnn_fits_grid(grid):
            raise ValueError(f"{flag} cnn needs a 1D or 2D grid with every axis divisible by "
                             f"8, got {grid}")
    if args.physics and "domain" not in ds.attrs:
        raise ValueError("--physics needs the dataset's 'domain' attribute (the grid spacing)")
    ds = _labelled(ds, args.data)
    if args.window is None:  # recorded in run.json as resolved, so a resume keeps it
        args.window = _default_window(ds)
    positional = args.positional
    if positional == "legacy":  # a run.json from before the option: the case's choice, or off
        positional = None if ds.attrs.get("case") in CASES else False
    config = model_config(ds, args.coarse, args.micro, encoder=args.encoder,
                          decoder=args.decoder, scale_kernel=args.scale_kernel,
                          physics=args.physics, drift=args.drift,
                          positional=positional, stencil_width=args.stencil_width,
                          on_position=None if args.resume else _say_positional)
    if args.stencil_width is None:  # recorded in run.json as resolved, so a resume keeps it
        args.stencil_width = config.macro_hidden[0]
    if args.shifts is None:  # recorded in run.json as resolved, so a resume keeps it
        args.shifts = shifts_choice(ds, config)
    train = TrainConfig(steps=args.steps, window=args.window, lr=args.lr, seed=args.seed,
                        windows_per_step=args.windows, ema_decay=args.ema, shifts=args.shifts)
    check_training_data(ds, train)
    shift_steps(ds, config, train)  # an impossible --shifts is refused before anything runs
    stages = [(args.micro, train)]
    if args.micro and not args.no_progressive and args.steps >= 4:
        first = dataclasses.replace(train, steps=args.steps // 4)
        stages = progressive_stages(args.micro, first, args.steps - first.steps)
    return ds, config, stages


def _default_window(ds) -> int:
    """:func:`~msde_ppl.pipeline.training.training_window` of the data, said when it is
    shorter than the default."""
    from msde_ppl.pipeline.training import training_window

    window = training_window(ds)
    if window < TrainConfig.window:
        print(f"window: {window} snapshots, a whole training trajectory (the default "
              f"{TrainConfig.window} is longer; --window to choose)", flush=True)
    return window


def _say_positional(chosen: bool, test: dict | None) -> None:
    """Say whether the drift reads the position, and why (the data's stencil regression)."""
    from msde_ppl.pipeline.run import POSITION_RATIO

    if test is None:
        why = ("the data could not be tested: no val split, too few training snapshots or "
               "a constant field")
    else:
        why = (f"a stencil regression per node leaves {test['ratio']:.3g} of a shared one's "
               f"val residual; {'<' if chosen else '>='} {POSITION_RATIO}")
    what, flag = (("reads each node's position", "--no-positional") if chosen
                  else ("translation-equivariant", "--positional"))
    print(f"macro drift: {what} ({why}; {flag} to change)", flush=True)


#: A coarse grid whose resolution floor exceeds this leaves much of the field to the micro state.
_FLOOR_WARN = 0.1
#: The floor a suggested grid must meet.
_FLOOR_GOOD = 0.05


def _grid_name(grid) -> str:
    return "x".join(str(n) for n in grid)


def _listed(floors: dict, grids) -> str:
    """``"32: 0.397, 16: 0.933"``: the floors of ``grids``."""
    return ", ".join(f"{_grid_name(g)}: {floors[g]:.3g}" for g in grids)


def _resolution_floors(ds, coarse: tuple[int, ...], n_micro: int) -> dict:
    """Say, before a fit, how much of the training field the coarse grid cannot carry
    (:func:`msde_ppl.data.coarse.resolution_floor`: the rel-L2 of the best reconstruction from
    the grid's Fourier modes on periodic data, a spline estimate otherwise), beside the floors
    of the grids with one ratio shared by every axis; warn when nothing will carry a large
    rest (``--micro 0``). Returns the floors for ``run.json``."""
    from msde_ppl.data.coarse import coarser_grids, resolution_floors

    grids = [coarse] + [g for g in coarser_grids(grid_shape(ds)) if g != coarse]
    floors = resolution_floors(ds, grids)
    floor = floors[coarse]
    others = _listed(floors, grids[1:])
    bound = "at best" if ds.attrs["boundary"] == "periodic" else "about (a spline estimate)"
    print(f"coarse grid {_grid_name(coarse)}: the macro state alone reconstructs the training "
          f"field to rel-L2 {floor:.3g} {bound}"
          + (f" (other grids: {others})" if others else "")
          + ("; the micro state is to carry the rest" if n_micro and floor > _FLOOR_WARN
             else ""), flush=True)
    if n_micro == 0 and floor > _FLOOR_WARN:
        finer = [g for g in grids[1:] if floors[g] <= _FLOOR_GOOD
                 and all(a >= b for a, b in zip(g, coarse, strict=True))]
        best = min(finer, key=math.prod) if finer else None
        print(f"warning: with --micro 0 nothing carries what the coarse grid "
              f"{_grid_name(coarse)} cannot hold (rel-L2 {floor:.3g} of the training field): "
              "its forecasts of the full field start about that far off (before the "
              "calibration adds back the first snapshot's residual); give the model a micro "
              "state (--micro K)"
              + (f" or a finer grid (--coarse {' '.join(map(str, best))}: {floors[best]:.3g})"
                 if best else ""), file=sys.stderr)
    return {"coarse": list(coarse), "rel_l2": floors[coarse],
            "grids": {_grid_name(g): floors[g] for g in grids}}


def _coarse_hint(data: Path | None) -> str:
    """The resolution floors of the coarse grids ``data`` allows, to help choose ``--coarse``
    (nothing when the file cannot be read: the missing flags are the error then)."""
    from msde_ppl.data import load
    from msde_ppl.data.coarse import coarser_grids, resolution_floors

    try:
        ds = load(data)  # validated
    except (OSError, ValueError, TypeError):
        return ""
    grids = coarser_grids(grid_shape(ds))
    if not grids:
        return ""
    return (f"; for --coarse, the rel-L2 to which each coarse grid reconstructs the data at "
            f"best (what is left is for the micro state): "
            f"{_listed(resolution_floors(ds, grids), grids)}")


def _status_state(run_dir: Path) -> str | None:
    from msde_ppl.pipeline.rundir import read_status

    try:
        status = read_status(run_dir)
    except ValueError:
        return None
    return None if status is None else status["state"]


def _fit_stopped(err, run_dir: Path, n_stages: int, earlier: list, stop) -> int:
    """Save the last good state of a stopped fit, mark the run, say so in one line; the exit
    code (1: failed, 128 + signal: interrupted)."""
    import numpy as np

    from msde_ppl.pipeline.rundir import write_status

    losses = np.concatenate([*earlier, err.fitted.losses])
    err.fitted.replace(losses=losses).save(run_dir, into=True)
    where = f"step {err.step} of stage {err.stage + 1}/{n_stages}"
    if err.status == "failed":
        reason = (f"non-finite loss or gradient at {where}; the last good state (the step "
                  "before) is saved")
    else:
        reason = (f"{signal.Signals(stop.signum).name} after {where}; continue with "
                  f"`msde fit --resume {run_dir}`")
    write_status(run_dir, err.status, reason, command="fit", step=int(losses.size),
                 stage=err.stage, non_finite=err.status == "failed")
    print(f"msde fit: {err.status}: {reason} (in {run_dir})", file=sys.stderr)
    return 1 if err.status == "failed" else stop.exit_code


def cmd_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from msde_ppl.data.splits import split_names
    from msde_ppl.pipeline.rundir import RunLock, StopRequest, write_status
    from msde_ppl.pipeline.training import FitStopped, fit_progressive
    from msde_ppl.pipeline.validation import Validation

    resuming = args.resume is not None
    if resuming:
        args = _resumed_fit_args(args)
    else:
        missing = [flag for flag, value in (("--data", args.data), ("--coarse", args.coarse),
                                            ("--micro", args.micro), ("--out", args.out))
                   if value is None]
        if missing:
            hint = _coarse_hint(args.data) if "--coarse" in missing else ""
            raise ValueError(f"{', '.join(missing)} required (or --resume RUN_DIR){hint}")
        if args.out.exists():
            raise FileExistsError(f"run directory {args.out} already exists; choose another "
                                  "--out (or continue it with --resume)")
    ds, config, stages = _fit_plan(args)
    floors = None if resuming else _resolution_floors(ds, config.coarse_shape, args.micro)
    run_dir: Path = args.out
    stage_dir = run_dir / "stages"

    def earlier_losses(n_stages: int) -> list:
        return [np.load(stage_dir / f"stage{i}" / "losses.npy") for i in range(n_stages)]

    def on_abort(signum: int) -> None:
        write_status(run_dir, "interrupted", f"{signal.Signals(signum).name} twice: aborted "
                     "at once; resume continues from the last checkpoint", command="fit")

    with StopRequest(on_abort) as stop:  # from the run directory's first file to its last
        if not resuming:
            _new_dir(run_dir, "run directory")
        with RunLock(run_dir):  # one writer; a reader can tell a killed run
            try:
                write_status(run_dir, "running", command="fit")
                if not resuming:
                    settings = {k: getattr(args, k) for k in _FIT_SETTINGS}
                    settings["data"] = str(Path(args.data).resolve())
                    settings["positional"] = config.positional  # as decided: resumes the same
                    record = {"command": "fit", "args": settings,
                              "data_sha256": _file_digest(args.data),
                              "package_version": msde_ppl.__version__,
                              "resolution_floor": floors}
                    write_text(run_dir / "run.json", json.dumps(record, indent=2) + "\n")
                validation = None
                if not args.no_validation and "val" in split_names(ds):
                    validation = Validation(seed=args.seed)
                try:
                    fits = fit_progressive(ds, config, stages, progress=True,
                                           checkpoint_dir=stage_dir, resume=resuming,
                                           checkpoint_every=args.checkpoint_every,
                                           should_stop=stop, validation=validation,
                                           budget_s=args.budget)
                except FitStopped as err:
                    return _fit_stopped(err, run_dir, len(stages), earlier_losses(err.stage), stop)
                # the saved model's log covers every stage of its fit
                fitted = fits[-1].replace(wall_time_s=sum(f.wall_time_s for f in fits),
                                          losses=np.concatenate([f.losses for f in fits]))
                fitted.save(run_dir, into=True)
                write_status(run_dir, "complete", command="fit", step=int(fitted.losses.size))
            except BaseException as err:
                if _status_state(run_dir) == "running":
                    write_status(run_dir, "failed", f"{type(err).__name__}: {err}", command="fit")
                raise
    for i, stage in enumerate(fits):
        print(f"stage {i + 1}/{len(fits)} (micro dimension {stage.config.n_micro}): "
              f"{_stage_outcome(stage)}")
    print(f"fitted {fitted.losses.size} steps in {fitted.wall_time_s:.0f} s of training; final "
          f"loss {fitted.losses[-1]:.4f}; model in {run_dir}")
    return 0


def _stage_outcome(stage) -> str:
    """How a stage of a fit ended, in words."""
    steps = int(stage.losses.size)
    planned = int((stage.train or {}).get("steps", steps))
    val = stage.validation
    if val is None:
        return f"{steps} of {planned} steps" + (" (time budget reached)" if steps < planned
                                                else "")
    why = {"patience": "val score stopped improving", "budget": "time budget reached",
           None: "all steps done"}[val["stopped_by"]]
    shown = lambda v: "not finite" if v is None else f"{v:.4f}"  # noqa: E731
    check = val.get("confirmation")  # a grown stage's best scored again against its start
    step = check["best_step"] if check else val["best_step"]
    score = dict(val["history"]).get(step) if check else val["best_score"]
    outcome = (f"{steps} of {planned} steps ({why}); best val score (forecast rel-L2) "
               f"{shown(score)} at step {step}")
    if not check:
        return outcome + ", kept"
    outcome += (f"; scored again with {check['n_samples']} members on a fresh key: "
                f"{shown(check['best_score'])} against the start's "
                f"{shown(check['start_score'])}, ")
    if check["kept"] == "best":
        return outcome + "kept"
    eps = val.get("settings", {}).get("min_rel_improvement", 0.0)
    return outcome + (f"not better by {eps:.1%}, so the stage's start (the previous stage's "
                      "model with an idle micro state) is kept")

def cmd_forecast(args: argparse.Namespace) -> int:
    from msde_ppl.data import load
    from msde_ppl.data.splits import split_names
    from msde_ppl.pipeline.fitted import Fitted
    from msde_ppl.pipeline.run import score
    from msde_ppl.pipeline.rundir import require_complete

    if args.out.exists():
        raise FileExistsError(f"output directory {args.out} already exists; choose another --out")
    for run_dir in args.run_dirs:
        require_complete(run_dir, args.allow_incomplete)
    fits = [Fitted.load(run_dir) for run_dir in args.run_dirs]
    ds = load(args.data)
    if args.split != "all":
        ds = _labelled(ds, args.data)
    for run_dir, f in zip(args.run_dirs, fits, strict=True):
        if list(grid_shape(ds)) != list(f.grid["fine_shape"]):
            raise ValueError(f"the data's grid {grid_shape(ds)} differs from the model's "
                             f"{tuple(f.grid['fine_shape'])} ({run_dir})")
    if args.no_calibrate and args.calibrate_on is not None:
        raise ValueError("--no-calibrate and --calibrate-on contradict each other")
    if args.calibrate_on is None and not args.no_calibrate and args.split != "val" \
            and "val" in split_names(ds):
        args.calibrate_on = "val"
    if args.calibrate_on is not None and args.calibrate_on == args.split:
        raise ValueError(f"--calibrate-on {args.calibrate_on} is the split being scored; "
                         "calibrate on another one (e.g. val)")
    fc, metrics = score(fits, ds, split=None if args.split == "all" else args.split,
                        n_samples=args.samples, seed=args.seed,
                        integrator=args.integrator, substeps=args.substeps,
                        adaptive_steps=not args.fixed_steps,
                        calibrate_on=args.calibrate_on, residual=not args.no_residual,
                        horizon=args.horizon, progress=True)
    out = _new_dir(args.out, "output directory")
    fc.to_netcdf(out / "forecast.nc", engine="h5netcdf")
    if args.split == "all":
        metrics["in_sample"] = _fitted_on(args.run_dirs, args.data)
    if metrics["in_sample"] is not False:
        print("warning: " + ("these are in-sample scores: the model was fitted to these "
                             "trajectories" if metrics["in_sample"] else
                             "the scored trajectories may include the ones the model was "
                             "fitted to (in_sample unknown)"), file=sys.stderr)
    report = {"model": metrics}
    if ds.attrs.get("case") in CASES and "split" in ds.coords:
        from msde_ppl.predict import evaluate_coarse_dns

        config = fits[0].config
        report["coarse_dns"] = evaluate_coarse_dns(
            ds, None if config is None else config.coarse_shape,
            split=None if args.split == "all" else args.split)
    report["meta"] = _meta(ds, grid_shape(ds), args.seed)
    _write_metrics(out / "metrics.json", report)
    figures = _write_figures({"model": fc}, out, split=args.split)
    print(f"rel-L2 (vs noisy data) {metrics['rel_l2_mean']:.4f} ± {metrics['rel_l2_std']:.4f}; "
          f"CRPS {metrics['crps']:.3g}; 90% coverage {metrics['coverage_90']:.2f}; "
          f"spread/skill {metrics['spread_skill']:.2f}")
    if "calibrated" in metrics and "skipped" not in metrics["calibrated"]:
        cal = metrics["calibrated"]
        weighted = ("" if "micro_weight" not in cal else
                    f", micro part's weight {cal['micro_weight']['lead_1']:.2f}")
        moved = (f"rel-L2 {cal['rel_l2_mean']:.4f} ± {cal['rel_l2_std']:.4f} (residual "
                 f"persistence, gain {cal['residual_gain']['lead_1']:.2f}{weighted} at lead 1); "
                 if "residual_gain" in cal else "")
        tail = ("" if cal.get("spread_tail_dof") is None
                else f"; members' Student-t tail, {cal['spread_tail_dof']:g} dof")
        if cal.get("spread_widening", 1.0) > 1.0:
            tail += (f"; spread widened {cal['spread_widening']:.3g}x (Gaussian members at the "
                     "errors' RMS covered less than 90% on the calibration split)")
        print(f"calibrated on {cal['fitted_on']}: {moved}CRPS {cal['crps']:.3g}; 90% coverage "
              f"{cal['coverage_90']:.2f}; spread/skill {cal['spread_skill']:.2f}{tail}")
    _print_baselines(metrics)
    if not metrics["finite"]:
        print("warning: the forecast holds non-finite values (it diverged); its scores are "
              "not finite", file=sys.stderr)
    _warn_diverged(metrics, "the model")
    print(f"figures: {', '.join(str(p) for p in figures)}")
    print(f"report: {out / 'metrics.json'}")
    return 0


def _print_baselines(metrics: dict) -> None:
    """The trivial baselines' rel-L2 next to the model's (skill against them, one line), and a
    warning when the forecast written (the calibrated one when there is one) does no better
    than one of them: the model then adds nothing a user could not have had for free."""
    base = metrics.get("baselines", {})
    if not base:
        return
    parts = ", ".join(f"{name} {m['rel_l2_mean']:.4f}" for name, m in base.items())
    cal = metrics.get("calibrated") or {}
    score = cal.get("rel_l2_mean", metrics["rel_l2_mean"])
    written = f" ({score:.4f} calibrated)" if "rel_l2_mean" in cal else ""
    print(f"trivial baselines (rel-L2): {parts}; the model: {metrics['rel_l2_mean']:.4f}"
          f"{written}")
    beaten_by = [f"{name} ({m['rel_l2_mean']:.4f})" for name, m in base.items()
                 if math.isfinite(m["rel_l2_mean"]) and not score < m["rel_l2_mean"]]
    if beaten_by and math.isfinite(score):  # a diverged forecast has its own warning
        print(f"warning: the forecast written (rel-L2 {score:.4f}) is no better than "
              f"{' or '.join(beaten_by)}: the model adds nothing over a trivial forecast here; "
              "train longer (--budget), try another coarse grid, or check the data",
              file=sys.stderr)


def _write_metrics(path: Path, metrics: dict) -> None:
    """``metrics.json`` as strict JSON: a non-finite score (a diverged forecast) is ``null``,
    never a number (each model's ``finite`` entry says so too)."""
    write_json(path, metrics)


def _meta(ds, grid, seed) -> dict:
    return {
        "dataset": ds.attrs.get("case", ds.attrs.get("source")),
        "n_traj": int(ds.sizes["traj"]),
        "n_time": int(ds.sizes["time"]),
        "grid": list(grid),
        "seed": seed,
        "eval_steps": int(ds.attrs.get("eval_steps", ds.sizes["time"])),
        "package_version": msde_ppl.__version__,
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def _check_case(name: str) -> None:
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; built-in cases are: {', '.join(sorted(CASES))}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (SchemaError, ValueError, FileExistsError, FileNotFoundError, OSError,
            FloatingPointError, ImportError) as err:
        print(f"msde {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
