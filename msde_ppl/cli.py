"""The ``msde`` command line.

- ``msde data CASE --out FILE.nc [--n-traj N] [--seed S]``: write a built-in dataset.
- ``msde run [CASE] [--out RUN_DIR]``: the main job on a built-in case (default ``kdv_1d``):
  data, baselines and a ``metrics.json`` report in a new run directory.

Nothing a user has is overwritten: an existing output file or run directory is refused unless
``--overwrite`` is given (files only; run directories are never reused).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see design.md §1: before jax is imported

import msde_ppl  # noqa: E402
from msde_ppl.data import CASES, DEFAULT_CASE, SchemaError, make_dataset, save  # noqa: E402
from msde_ppl.data.schema import grid_shape  # noqa: E402


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


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

    run = sub.add_parser(
        "run",
        help="the main job: data, baselines and a metrics report in a new run directory",
        description="Generate the built-in dataset CASE, run the baselines on its test split "
        "and write data.nc and metrics.json into a new run directory.",
    )
    run.add_argument("case", nargs="?", default=DEFAULT_CASE, metavar="CASE",
                     help=f"one of: {cases} (default {DEFAULT_CASE})")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory to create (default runs/CASE-TIMESTAMP); must not exist")
    run.add_argument("--n-traj", type=_positive_int, default=None,
                     help="number of trajectories (default: the reference's)")
    run.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    run.set_defaults(handler=cmd_run)
    return parser


def cmd_data(args: argparse.Namespace) -> int:
    _check_case(args.case)
    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    start = time.perf_counter()
    ds = make_dataset(args.case, n_traj=args.n_traj, seed=args.seed)
    save(ds, out, overwrite=args.overwrite)
    print(
        f"wrote {out}: case {args.case}, {ds.sizes['traj']} trajectories x {ds.sizes['time']} "
        f"snapshots on a {'x'.join(map(str, grid_shape(ds)))} grid "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from msde_ppl.predict import evaluate_coarse_dns, noise_floor
    from msde_ppl.predict.coarse_dns import select_split

    _check_case(args.case)
    run_dir: Path = args.out or Path("runs") / f"{args.case}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists():
        raise FileExistsError(f"run directory {run_dir} already exists; choose another --out")
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    print(f"[1/2] generating {args.case} ...", flush=True)
    ds = make_dataset(args.case, n_traj=args.n_traj, seed=args.seed)
    save(ds, run_dir / "data.nc")
    print("[2/2] coarse-DNS baseline on the test split ...", flush=True)
    metrics: dict = {"coarse_dns": evaluate_coarse_dns(ds)}
    test = select_split(ds, "test")
    floor = noise_floor(test, test.attrs.get("eval_steps"))
    metrics["meta"] = {
        "dataset": args.case,
        "n_traj": int(ds.sizes["traj"]),
        "n_time": int(ds.sizes["time"]),
        "grid": list(grid_shape(ds)),
        "seed": args.seed,
        "eval_steps": int(ds.attrs["eval_steps"]),
        "noise_floor_rel_l2": None if floor is None else floor["mean"],
        "wall_time_s": time.perf_counter() - start,
        "package_version": msde_ppl.__version__,
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    dns = metrics["coarse_dns"]
    print(
        f"coarse DNS rel-L2 (test, vs noisy data): {dns['rel_l2_mean']:.3f} ± "
        f"{dns['rel_l2_std']:.3f}; vs clean: {dns['rel_l2_clean_mean']:.3f}"
    )
    print(f"report: {run_dir / 'metrics.json'}")
    return 0


def _check_case(name: str) -> None:
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; built-in cases are: {', '.join(sorted(CASES))}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (SchemaError, ValueError, FileExistsError, FileNotFoundError, OSError) as err:
        print(f"msde {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
