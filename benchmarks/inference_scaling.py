"""Training-step cost vs trajectory length for the solver-free ELBO (two-scale OU model).

A step touches one minibatch of windows of M snapshots, never the whole trajectory, so the median
step time must stay flat (within about 10%) as the trajectory grows from 10^3 to 10^5 snapshots.
Writes ``benchmarks/results/inference_scaling.json`` and ``inference_scaling.md``.

Usage: ``python benchmarks/inference_scaling.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from msde_ppl.inference import (
    AutoAmortizedSDE,
    SolverFreeELBO,
    init,
    make_chunk_runner,
    window_batches,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_model():
    path = ROOT / "models" / "ou_two_scale.py"
    spec = importlib.util.spec_from_file_location("ou_two_scale", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(rng_key: jax.Array, ou, n_snapshots: int, window: int, batch_windows: int,
            chunk_size: int, repeats: int) -> dict:
    """Median per-step wall time (s) over ``repeats`` jitted chunks after one warm-up chunk."""
    key_sim, key_enc, key_init = jax.random.split(rng_key, 3)
    times = jnp.arange(n_snapshots) * 0.01
    _, obs = ou.simulate(key_sim, times, a=1.0, c=0.8, s=(0.5, 1.0), eps=0.1, obs_std=0.1)
    windows = {"times": ou.make_windows(times, window), "obs": ou.make_windows(obs, window)}
    n_windows = windows["times"].shape[0]

    def model(times, obs):
        ou.model(times, obs, n_windows=n_windows)

    guide = AutoAmortizedSDE(model, ou.SnapshotEncoder(key=key_enc))
    batch_fn = window_batches(windows, batch_windows)
    problem, state = init(key_init, model, guide, SolverFreeELBO(normalize=True),
                          optax.adam(1e-3), batch_fn(key_init, jnp.zeros((), jnp.int32)))
    run = make_chunk_runner(problem, batch_fn, chunk_size)
    n_active = jnp.asarray(chunk_size)
    t0 = time.perf_counter()
    state, *_ = jax.block_until_ready(run(state, n_active))
    compile_s = time.perf_counter() - t0
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, *_ = jax.block_until_ready(run(state, n_active))
        per_step.append((time.perf_counter() - t0) / chunk_size)
    return {
        "n_snapshots": n_snapshots,
        "n_windows": int(n_windows),
        "median_step_s": float(np.median(per_step)),
        "steps_per_s": float(1.0 / np.median(per_step)),
        "first_chunk_s_incl_compile": compile_s,
    }


def main(args: argparse.Namespace) -> dict:
    ou = _load_model()
    rng_key = jax.random.key(args.seed)
    sizes = [1_000, 10_000, 100_000]
    repeats = 5 if args.quick else 20
    chunk = 50 if args.quick else 200
    rows = []
    for i, n in enumerate(sizes):
        row = measure(jax.random.fold_in(rng_key, i), ou, n, args.window, args.batch_windows,
                      chunk, repeats)
        rows.append(row)
        print(f"N={n:>7d}: median step {1e3 * row['median_step_s']:.3f} ms "
              f"({row['steps_per_s']:.0f} steps/s)")
    base = rows[0]["median_step_s"]
    spread = max(abs(r["median_step_s"] / base - 1.0) for r in rows)
    out = {
        "model": "ou_two_scale",
        "window_M": args.window,
        "batch_windows": args.batch_windows,
        "chunk_size": chunk,
        "repeats": repeats,
        "rows": rows,
        "max_relative_deviation_from_N1e3": spread,
        "flat_within_10pct": bool(spread <= 0.10),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "inference_scaling.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# Solver-free ELBO step cost vs trajectory length (OU, M={args.window}, "
        f"{args.batch_windows} window(s)/step)",
        "",
        "| snapshots N | windows | median step (ms) | steps/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['n_snapshots']} | {r['n_windows']} | {1e3 * r['median_step_s']:.3f} | "
              f"{r['steps_per_s']:.0f} |" for r in rows]
    lines += ["", f"Max deviation from N=10^3: {100 * spread:.1f}% "
              f"({'flat' if out['flat_within_10pct'] else 'NOT flat'} within ±10%)."]
    (results / "inference_scaling.md").write_text("\n".join(lines) + "\n")
    print(f"max deviation {100 * spread:.1f}%")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter timing repeats")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--batch-windows", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    main(_parser().parse_args())
