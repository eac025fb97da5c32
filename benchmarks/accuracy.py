"""Accuracy benchmark (issue: multiscale end to end): rel-L2 / CRPS / coverage on built-in cases.

For each case: generate the dataset, fit the implicit-scale model (micro dimension 0) and grow
it into the multiscale model (progressive schedule, docs/method.md §5), forecast the chosen split
(use ``--split val`` while tuning, ``test`` for the reported figures), score the coarse-DNS
baseline, and write ``benchmarks/results/accuracy.json`` and ``accuracy.md``.

    python benchmarks/accuracy.py --cases kdv_1d --stage0-steps 4000 --stage1-steps 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from msde_ppl.data import make_dataset, select_split  # noqa: E402
from msde_ppl.pipeline.run import model_config, progressive_stages, score  # noqa: E402
from msde_ppl.pipeline.training import TrainConfig, fit_progressive  # noqa: E402
from msde_ppl.predict import evaluate_coarse_dns, noise_floor  # noqa: E402

REFERENCE = {  # docs/method.md §7 (vs noisy data): implicit-scale, multiscale
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
    config = model_config(ds, n_micro=args.micro, encoder=args.encoder, decoder=args.decoder,
                          scale_kernel=args.scale_kernel, physics=args.physics)
    runs = []  # per training seed: [implicit-scale fit, multiscale fit]
    for seed in range(args.seed, args.seed + args.fits):
        first = TrainConfig(steps=args.stage0_steps, lr=args.lr, seed=seed, chunk_size=250,
                            window=args.window, windows_per_step=args.windows)
        stages = progressive_stages(args.micro, first, args.stage1_steps, args.stage1_lr,
                                    args.stage1_warmup)
        runs.append(fit_progressive(ds, config, stages, progress=False))
        if args.save:
            for name, fitted in zip(MODELS, runs[-1], strict=True):
                fitted.save(save_dir(args, case, name, seed))
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
            _, metrics = score(fitted, ds, split=args.split, n_samples=64, seed=args.seed,
                               integrator=args.integrator,
                               calibrate_on="val" if args.split != "val" else None)
            metrics.update(train_wall_s=wall, forecast_wall_s=metrics["forecast_wall_time_s"],
                           steps=steps * len(fitted))
            if args.physics and key == "multiscale":
                metrics["physics"] = _coefficient(fitted[0], ds)
            out[label] = metrics
            print(f"{case} {label}: {json.dumps(metrics)}", flush=True)
    out["coarse_dns"] = evaluate_coarse_dns(ds, split=args.split)
    split = select_split(ds, args.split)
    out["noise_floor"] = noise_floor(split, eval_steps)["mean"]
    return out


def _coefficient(fitted, ds) -> dict:
    """The physics coefficient's posterior (median, 90% interval) next to the generator's."""
    from msde_ppl.generative.physics import PHYSICS

    name = PHYSICS[fitted.config.physics][0]
    lo, med, hi = (float(v) for v in fitted.global_quantiles([0.05, 0.5, 0.95])[name])
    truth = {"viscosity": "nu", "dispersion": "beta"}[name]  # the generators' attribute names
    return {"site": name, "median": med, "q05": lo, "q95": hi,
            "generator": float(ds.attrs[truth]) if truth in ds.attrs else None}


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
        f"integrator: {args.integrator}; physics: {args.physics or 'none'}; "
        f"{args.fits} training seed(s) from {args.seed} "
        "(an ensemble mixes their forecasts, 64 members each; its train s is the sum). "
        f"Machine: {platform.processor() or ''} "
        f"{os.cpu_count()} cores.",
        "",
        "CRPS / 90% coverage / spread-skill: uncalibrated, then (after →) with the spread "
        "factor fitted on the val split (docs/calibration.md).",
        "",
        "| case | model | rel-L2 vs noisy | rel-L2 vs clean | CRPS | 90% coverage | "
        "spread/skill | train s | reference |",
        "|---|---|---|---|---|---|---|---|---|",
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
            cal = m.get("calibrated")
            cal = None if cal is None or "skipped" in cal else cal

            def pair(name, fmt, m=m, cal=cal):
                return f"{m[name]:{fmt}}" + (f" → {cal[name]:{fmt}}" if cal else "")

            lines.append(
                f"| {case} | {key} | {m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f} | "
                f"{m.get('rel_l2_clean_mean', float('nan')):.4f} | {pair('crps', '.4g')} | "
                f"{pair('coverage_90', '.3f')} | {pair('spread_skill', '.2f')} | "
                f"{m['train_wall_s']:.0f} | {r_ref} |"
            )
            if "physics" in m:
                c = m["physics"]
                lines.append(f"| {case} | {key}: effective {c['site']} | median {c['median']:.4g}, "
                             f"90% [{c['q05']:.4g}, {c['q95']:.4g}] | generator {c['generator']} "
                             "| | | | | |")
        dns = res["coarse_dns"]
        lines.append(f"| {case} | coarse DNS | {dns['rel_l2_mean']:.4f} ± {dns['rel_l2_std']:.4f} "
                     f"| {dns['rel_l2_clean_mean']:.4f} | | | | | |")
        lines.append(f"| {case} | noise floor | {res['noise_floor']:.4f} | 0 | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(REFERENCE))
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--micro", type=int, default=5)
    parser.add_argument("--encoder", default=None, choices=["mlp", "spline", "cnn"],
                        help="micro encoder: an MLP or the reference's CNN on the residual; "
                        "default: the case's (CASE_CONFIGS)")
    parser.add_argument("--decoder", default=None, choices=["mlp", "spline", "stencil"],
                        help="micro decoder: g(eta) (reference form) or g(zeta, eta); default: "
                        "the case's (CASE_CONFIGS)")
    parser.add_argument("--scale-kernel", default=None, choices=["learned", "frozen"],
                        help="default: the case's (CASE_CONFIGS)")
    parser.add_argument("--integrator", default="heun", choices=["heun", "euler"])
    parser.add_argument("--physics", default=None, choices=["burgers", "kdv"],
                        help="physics-informed macro drift (a known coarse PDE operator with "
                        "its coefficient as a sample site, plus the learned correction)")
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
