"""How much of a validated fit's choice is Monte Carlo noise: a micro stage's best checkpoint
and its start (the grown implicit-scale model) scored on the val split over fresh keys.

    python benchmarks/validation_noise.py --pde bistable_fronts --work DIR

generates the robustness benchmark's data (``benchmarks/unseen_pdes.py``, seed 0, 24
trajectories), fits it as ``msde fit --data PDE.nc --coarse 32 --micro 5`` (``16 16`` in 2D)
does but without the confirmation of the micro stage's best
(``Validation(confirm_samples=None)``, so the stage delivers the best of its evaluations on
the selection's key), and scores that best and the
stage's start with the validation's score (``ValidationMonitor.score``): with 16 members on
the selection's key ``key(0)`` and on the fresh keys ``key(1) ... key(7)``, with 64 members on
``key(1) ... key(3)`` and on the confirmation's key ``fold_in(key(0), 1)``. ``--fit DIR``
reuses such a fit (a ``msde fit`` run directory or this script's ``fit`` folder: its
``stages/stage0`` and ``stages/stage1``). Val only; nothing here touches the test split.
Results: ``benchmarks/results/validation_noise_<pde>.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unseen_pdes import PDES  # noqa: E402

from msde_ppl import Fitted  # noqa: E402
from msde_ppl.data import load, save  # noqa: E402
from msde_ppl.pipeline.run import (  # noqa: E402
    FIT_BUDGET_S,
    FIT_STEPS,
    model_config,
    progressive_stages,
    shifts_choice,
)
from msde_ppl.pipeline.training import (  # noqa: E402
    TrainConfig,
    _initial_fitted,
    fit_progressive,
    grown_start,
)
from msde_ppl.pipeline.validation import Validation, ValidationMonitor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N_MICRO = 5


def fit_without_confirmation(name: str, work: Path) -> tuple[Path, Path]:
    """``(data file, fit folder)``: the PDE's data and ``msde fit``'s fit of it with the
    confirmation off."""
    make, coarse = PDES[name]
    data = work / f"{name}.nc"
    ds = make(n_traj=24, seed=0)
    save(ds, data, overwrite=True)
    ds = load(data)
    # msde fit's defaults: since stop 61 Allen-Cahn's 16 x 16 grid gets a stencil network 64
    # wide; the stored results were measured at 128
    config = model_config(ds, coarse, N_MICRO)
    train = TrainConfig(steps=FIT_STEPS, seed=0, shifts=shifts_choice(ds, config))
    first = dataclasses.replace(train, steps=FIT_STEPS // 4)
    stages = progressive_stages(N_MICRO, first, FIT_STEPS - first.steps)
    fit_progressive(ds, config, stages, progress=False,
                    checkpoint_dir=work / "fit" / "stages", budget_s=FIT_BUDGET_S,
                    validation=Validation(seed=0, confirm_samples=None))
    return data, work / "fit"


def scores(data: Path, fit: Path) -> dict:
    """The best's and the start's val scores on each key (module docstring)."""
    ds = load(data)
    stage0 = Fitted.load(fit / "stages" / "stage0")
    best = Fitted.load(fit / "stages" / "stage1")
    train = TrainConfig(**best.train)
    config, warm = grown_start(stage0, best.config.n_micro, train.seed, 1)
    start = _initial_fitted(ds, config, train, warm)
    monitor = ValidationMonitor(Validation(seed=0), ds)
    keys = [("selection key(0)", 16, jax.random.key(0))]
    keys += [(f"fresh key({k})", 16, jax.random.key(k)) for k in range(1, 8)]
    keys += [(f"fresh key({k})", 64, jax.random.key(k)) for k in range(1, 4)]
    keys += [("confirmation fold_in(key(0), 1)", 64, jax.random.fold_in(jax.random.key(0), 1))]
    rows = []
    for label, n, key in keys:
        b, s = monitor.score(best, n, key), monitor.score(start, n, key)
        rows.append({"key": label, "members": n, "best": b, "start": s, "difference": b - s})
        print(f"{label:34s} {n:3d} members: best {b:.4f}, start {s:.4f}, "
              f"difference {b - s:+.4f}", flush=True)
    return {"best_step": best.validation["best_step"], "rows": rows}


def markdown(name: str, result: dict, meta: dict) -> str:
    lines = [f"# Validation noise: {name}", "",
             f"`{meta['command']}` ({meta['date']}). The micro stage's best checkpoint (step "
             f"{result['best_step']}, chosen on the selection's key) minus its start, val "
             "score (rel-L2 of the ensemble mean over the lead times), per key.", "",
             "| key | members | best | start | best minus start |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['key']} | {r['members']} | {r['best']:.4f} | {r['start']:.4f} "
                     f"| {r['difference']:+.4f} |")
    lines.append("")
    for n in (16, 64):
        d = np.array([r["difference"] for r in result["rows"]
                      if r["members"] == n and r["key"].startswith("fresh")])
        lines.append(f"Fresh keys, {n} members: mean {d.mean():+.4f}, sd {d.std(ddof=1):.4f} "
                     f"({d.size} keys).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pde", default="bistable_fronts", choices=list(PDES))
    parser.add_argument("--work", type=Path, default=Path("runs") / "validation_noise")
    parser.add_argument("--fit", type=Path, default=None, metavar="DIR",
                        help="reuse this fit (with --data) instead of fitting")
    parser.add_argument("--data", type=Path, default=None, help="the data of --fit")
    args = parser.parse_args()
    if (args.fit is None) != (args.data is None):
        parser.error("--fit and --data go together")
    if args.fit is None:
        args.work.mkdir(parents=True, exist_ok=True)
        data, fit = fit_without_confirmation(args.pde, args.work)
    else:
        data, fit = args.data, args.fit
    result = scores(data, fit)
    meta = {"command": "python benchmarks/validation_noise.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"validation_noise_{args.pde}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(args.pde, result, meta))
    print(markdown(args.pde, result, meta))


if __name__ == "__main__":
    main()
