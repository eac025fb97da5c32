"""Micro codecs on a 2D case (issue: the paper's 2D cases, item 3): the reference's strided CNN
encoder/decoder against our MLP codec, scored on the val split.

Both multiscale stages (K = 5) start from the same fitted implicit-scale model, the one an
``msde run`` saved (``RUN/implicit_scale``), grown with each codec
(:func:`msde_ppl.multiscale.grow_modules`: the micro state starts idle), and train the same
steps on the same windows (same seed). ``--reference-fit`` also scores ``RUN/multiscale``, the
``msde run`` recipe's own multiscale model (MLP codec, its full schedule). Every model is
scored on the val split over the dataset's evaluation horizon with ``--samples`` members.
Writes ``benchmarks/results/codec2d_<tag>.{json,md}`` (rows of earlier invocations with the
same settings are kept: codecs can be run one at a time).

    msde run burgers_2d --out RUN
    python benchmarks/codec2d.py --run RUN/<case dir> --steps 1200 --window 16 --samples 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from msde_ppl import Fitted  # noqa: E402
from msde_ppl.data import load  # noqa: E402
from msde_ppl.pipeline.run import score  # noqa: E402
from msde_ppl.pipeline.training import TrainConfig, fit_multiscale, grown_start  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METRICS = ("rel_l2_mean", "rel_l2_std", "rel_l2_clean_mean", "crps", "coverage_90",
           "spread_skill")


def grown_fit(ds, start: Fitted, codec: str, n_micro: int, train: TrainConfig) -> Fitted:
    """The multiscale stage grown from ``start`` (a K = 0 fit) with the micro ``codec``, as
    :func:`~msde_ppl.pipeline.training.fit_progressive` grows its second stage."""
    if start.config.n_micro:
        raise ValueError("the starting model must be an implicit-scale (K = 0) fit")
    old = dataclasses.replace(start.config, encoder=codec, decoder=codec)  # no micro nets yet
    config, warm = grown_start(start, n_micro, train.seed, old_config=old)
    return fit_multiscale(ds, config, train, progress=False, warm_start=warm)


def val_scores(fitted: Fitted, ds, n_samples: int, seed: int) -> dict:
    start = time.perf_counter()
    _, metrics = score(fitted, ds, split="val", n_samples=n_samples, seed=seed)
    out = {k: metrics[k] for k in METRICS if k in metrics}
    return {**out, "score_wall_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="an msde run case directory (data.nc, implicit_scale/, multiscale/)")
    parser.add_argument("--codecs", nargs="+", default=["mlp", "cnn"],
                        choices=["mlp", "spline", "cnn"])
    parser.add_argument("--micro", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-fit", action="store_true",
                        help="also score RUN/multiscale (msde run's own multiscale model)")
    parser.add_argument("--tag", default="burgers_2d")
    args = parser.parse_args(argv)

    ds = load(args.run / "data.nc")
    start = Fitted.load(args.run / "implicit_scale")
    train = TrainConfig(steps=args.steps, window=args.window, windows_per_step=1,
                        seed=args.seed, chunk_size=50)
    rows = []
    if args.reference_fit:
        fitted = Fitted.load(args.run / "multiscale")
        rows.append({"model": "msde run's multiscale (mlp)", "steps": int(fitted.losses.size),
                     "window": fitted.train.get("window"), "train_wall_s": fitted.wall_time_s,
                     **val_scores(fitted, ds, args.samples, args.seed)})
        print(json.dumps(rows[-1]), flush=True)
    for codec in args.codecs:
        fitted = grown_fit(ds, start, codec, args.micro, train)
        rows.append({"model": f"grown, {codec} codec", "steps": args.steps,
                     "window": args.window, "train_wall_s": fitted.wall_time_s,
                     "train_s_per_step": fitted.wall_time_s / args.steps,
                     **val_scores(fitted, ds, args.samples, args.seed)})
        print(json.dumps(rows[-1]), flush=True)
    one, five, _ = os.getloadavg()
    path = RESULTS / f"codec2d_{args.tag}.json"
    if path.exists():  # rows of earlier invocations (other codecs) are kept, same rows replaced
        earlier = json.loads(path.read_text())
        if (earlier["samples"], earlier["seed"], earlier["micro"]) != (args.samples, args.seed,
                                                                        args.micro):
            raise SystemExit(f"{path} holds rows scored with other settings; use another --tag")
        names = {r["model"] for r in rows}
        rows = [r for r in earlier["rows"] if r["model"] not in names] + rows
    result = {"run": str(args.run), "micro": args.micro, "samples": args.samples,
              "seed": args.seed, "rows": rows,
              "load": f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    lines = [f"# Micro codecs on {args.tag}: val split ({args.samples} members)", "",
             f"Multiscale K = {args.micro} grown from `{args.run}/implicit_scale`; seed "
             f"{args.seed}; load {result['load']}.", "",
             "| model | steps | window | training (s) | val rel-L2 | clean | CRPS | coverage 90% | "
             "spread–skill |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r['window']} | {r['train_wall_s']:.0f} | "
              f"{r['rel_l2_mean']:.4f} ± {r['rel_l2_std']:.4f} | {r['rel_l2_clean_mean']:.4f} | "
              f"{r['crps']:.4f} | {r['coverage_90']:.3f} | {r['spread_skill']:.2f} |"
              for r in rows]
    (RESULTS / f"codec2d_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
