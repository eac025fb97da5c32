"""Accuracy benchmark (issue: multiscale end to end): rel-L2 / CRPS / coverage on built-in cases.

For each case: generate the dataset, fit the implicit-scale model (micro dimension 0) and grow
it into the multiscale model (progressive schedule, method.md §4.2), forecast the chosen split
(use ``--split val`` while tuning, ``test`` for the reported figures), score the coarse-DNS
baseline, and write ``benchmarks/results/accuracy.json`` and ``accuracy.md``.

    python benchmarks/accuracy.py --cases kdv_1d --stage0-steps 4000 --stage1-steps 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

from msde_ppl.data import make_dataset  # noqa: E402
from msde_ppl.models.multiscale import config_for  # noqa: E402
from msde_ppl.models.training import TrainConfig, fit_progressive, save_fitted  # noqa: E402
from msde_ppl.predict import evaluate_coarse_dns, noise_floor  # noqa: E402
from msde_ppl.predict.coarse_dns import select_split  # noqa: E402
from msde_ppl.predict.forecast import forecast, forecast_metrics  # noqa: E402

REFERENCE = {  # method.md §7.1 (vs noisy data): implicit-scale, multiscale
    "kdv_1d": (0.324, 0.042),
    "wave_1d": (0.565, 0.079),
    "burgers_1d": (0.105, 0.011),
}
RESULTS = Path(__file__).parent / "results"
MODELS = ("implicit_scale", "multiscale")


def save_dir(args: argparse.Namespace, case: str, model: str, seed: int) -> Path:
    """Where ``--save`` writes a fitted model (named by its training seed when there are
    several)."""
    suffix = f"_seed{seed}" if args.fits > 1 else ""
    return Path(args.save) / f"{args.tag}_{case}_{model}{suffix}"


def run_case(case: str, args: argparse.Namespace) -> dict:
    ds = make_dataset(case, seed=args.seed)
    config = config_for(case, ds["u"].shape[2:], n_micro=args.micro, encoder=args.encoder,
                        decoder=args.decoder, learn_kernel=None if args.scale_kernel is None
                        else args.scale_kernel == "learned")
    runs = []  # per training seed: [implicit-scale fit, multiscale fit]
    for seed in range(args.seed, args.seed + args.fits):
        common = dict(seed=seed, chunk_size=250, window=args.window,
                      windows_per_step=args.windows)
        stages = [
            (0, TrainConfig(steps=args.stage0_steps, lr=args.lr, **common)),
            (args.micro, TrainConfig(steps=args.stage1_steps, lr=args.stage1_lr,
                                     warmup_steps=args.stage1_warmup, **common)),
        ]
        runs.append(fit_progressive(ds, config, stages, progress=False))
        if args.save:
            for name, fitted in zip(MODELS, runs[-1], strict=True):
                run_dir = save_dir(args, case, name, seed)
                run_dir.mkdir(parents=True)
                save_fitted(fitted, run_dir)
    eval_steps = ds.attrs["eval_steps"]
    out: dict = {}
    for index, key in enumerate(MODELS):
        # a model's training covers its own stage and the stages it grew from
        walls = [sum(f.wall_time_s for f in fits[: index + 1]) for fits in runs]
        steps = int(sum(len(f.losses) for f in runs[0][: index + 1]))
        members = [fits[index] for fits in runs]
        labelled = [(key, members, sum(walls))]
        if args.fits > 1:  # each seed alone too, then their mixture (a deep ensemble)
            labelled = [(f"{key} (seed {args.seed + i})", [m], w)
                        for i, (m, w) in enumerate(zip(members, walls, strict=True))] + labelled
        for label, fitted, wall in labelled:
            start = time.perf_counter()
            fc = forecast(jax.random.key(args.seed), fitted, ds, split=args.split,
                          n_samples=64, n_steps=eval_steps, method=args.integrator)
            metrics = forecast_metrics(fc, eval_steps)
            metrics.update(train_wall_s=wall, forecast_wall_s=time.perf_counter() - start,
                           steps=steps * len(fitted))
            out[label] = metrics
            print(f"{case} {label}: {json.dumps(metrics)}", flush=True)
    out["coarse_dns"] = evaluate_coarse_dns(ds, split=args.split)
    split = select_split(ds, args.split)
    out["noise_floor"] = noise_floor(split, eval_steps)["mean"]
    return out


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"# Accuracy ({args.split} split; rel-L2 of the forecast mean, mean ± std over "
        "(trajectory, time) pairs)",
        "",
        f"Stage 0 (implicit-scale): {args.stage0_steps} steps; stage 1 (multiscale, "
        f"K={args.micro}): {args.stage1_steps} more steps; {args.windows} windows of "
        f"{args.window} snapshots per step; stage-1 lr {args.stage1_lr}; micro encoder: "
        f"{args.encoder or 'case default'}; micro decoder: "
        f"{args.decoder or 'case default'}; scale kernel: {args.scale_kernel or 'case default'}; "
        f"integrator: {args.integrator}; {args.fits} training seed(s) from {args.seed} "
        "(an ensemble mixes their forecasts, 64 members each; its train s is the sum). "
        f"Machine: {platform.processor() or ''} "
        f"{os.cpu_count()} cores.",
        "",
        "| case | model | rel-L2 vs noisy | rel-L2 vs clean | CRPS | 90% coverage | train s | "
        "reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, res in results.items():
        ref = REFERENCE.get(case, (None, None))
        rows = [(label, r_ref) for key, r_ref in (("implicit_scale", ref[0]),
                                                  ("multiscale", ref[1]))
                for label in res if label.split(" ")[0] == key]
        for key, r_ref in rows:
            m = res[key]
            if args.fits > 1 and " " not in key:
                key = f"{key}, {args.fits}-seed ensemble"
            lines.append(
                f"| {case} | {key} | {m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f} | "
                f"{m.get('rel_l2_clean_mean', float('nan')):.4f} | {m['crps']:.4g} | "
                f"{m['coverage_90']:.3f} | {m['train_wall_s']:.0f} | {r_ref} |"
            )
        dns = res["coarse_dns"]
        lines.append(f"| {case} | coarse DNS | {dns['rel_l2_mean']:.4f} ± {dns['rel_l2_std']:.4f} "
                     f"| {dns['rel_l2_clean_mean']:.4f} | | | | |")
        lines.append(f"| {case} | noise floor | {res['noise_floor']:.4f} | 0 | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(REFERENCE))
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--micro", type=int, default=5)
    parser.add_argument("--encoder", default=None, choices=["mlp", "cnn"],
                        help="micro encoder: an MLP or the reference's CNN on the residual; "
                        "default: the case's (CASE_CONFIGS)")
    parser.add_argument("--decoder", default=None, choices=["mlp", "stencil"],
                        help="micro decoder: g(eta) (reference form) or g(zeta, eta); default: "
                        "the case's (CASE_CONFIGS)")
    parser.add_argument("--scale-kernel", default=None, choices=["learned", "frozen"],
                        help="default: the case's (CASE_CONFIGS)")
    parser.add_argument("--integrator", default="heun", choices=["heun", "euler"])
    parser.add_argument("--windows", type=int, default=1, help="windows per step")
    parser.add_argument("--window", type=int, default=64, help="snapshots per window")
    parser.add_argument("--stage0-steps", type=int, default=4000)
    parser.add_argument("--stage1-steps", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--stage1-lr", type=float, default=1e-3)
    parser.add_argument("--stage1-warmup", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0,
                        help="dataset seed and first training seed")
    parser.add_argument("--fits", type=int, default=1,
                        help="models trained per case (training seeds seed, seed+1, ...); with "
                        "more than one, also the forecast of their mixture (a deep ensemble)")
    parser.add_argument("--tag", default="accuracy")
    parser.add_argument("--save", default=None, help="directory to save the fitted models in")
    args = parser.parse_args(argv)
    if args.fits < 1:
        parser.error(f"--fits must be at least 1, got {args.fits}")
    taken = [d for case in args.cases for m in MODELS
             for seed in range(args.seed, args.seed + args.fits)
             if args.save and (d := save_dir(args, case, m, seed)).exists()]
    if taken:
        parser.error(f"--save: {taken[0]} already exists; choose another --tag or --save")
    RESULTS.mkdir(exist_ok=True)
    results = {case: run_case(case, args) for case in args.cases}
    payload = {"settings": vars(args), "results": results}
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{args.tag}.md").write_text(markdown(results, args))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
