"""Performance benchmark (issue: performance and scale): step time, time to accuracy, scaling,
rollout speed-up, memory, compilation.

Sections (``--sections``, default all):

- ``reference``: median training-step time at the reference implementation's Burgers 1D
  configuration (fine 1000, coarse 20, K = 5, ONE window of M = 128 consecutive snapshots per
  step, the reference's CNN micro encoder/decoder and drift sizes), achieved GFLOP/s from XLA's
  cost analysis of one step, compile time separated from run time, and the proof that later
  chunks never recompile (trace count and jit cache size stay 1). Our default configuration
  (MLP micro codec, 4 windows of 64) is timed the same way for comparison.
- ``step2d``: median 2D training-step time and GFLOP/s at the Burgers 2D / dam-break sizes
  (128 x 128 -> 8 x 8, windows of 64 and 128) and the cylinder's (2 x 320 x 80 -> 32 x 8,
  windows of 32 and 64): implicit scale, and multiscale (K = 5) with the MLP and the spline
  micro codec; plus a per-op breakdown (``jax.profiler`` trace) of each multiscale step.
- ``scaling``: step time against the amount of training data (10^3 .. 10^5 snapshots, in
  trajectories of 10^3: one trajectory of 10^5 snapshots has float32 times too coarse for its
  step, which the schema refuses; each is a tiled Burgers trajectory, since a step's cost does
  not depend on the values), window size M and windows per step (with the loop
  ``loop="auto"`` picks: one step per dispatch for several windows).
- ``accuracy``: time to accuracy. The Burgers 1D multiscale model (K = 5) is trained with the
  package's recipe (implicit-scale stage, then K = 5 by parameter surgery) and its test-split
  forecast (64 paths, rel-L2 against the noisy data over the reference's evaluation window, as
  the reference measures it) is scored every ``--eval-every`` steps; evaluation time is excluded
  from the training wall time. Reports the first training time at which rel-L2 <= 0.040 and
  <= 0.015. ``--tta-cases`` adds other built-in cases, each trained with ``msde run``'s recipe
  (its config, stages and steps) and scored against the reference's multiscale rel-L2 (long;
  ``--sections accuracy --tta-cases kdv_1d wave_1d`` keeps the earlier results of the cases it
  does not run).
- ``forecast``: ensemble forecast (64 paths, the whole test horizon, decoded to the fine grid,
  one predictive draw per path: the compiled part of :func:`~msde_ppl.predict.forecast`)
  against the fine-grid solver over the same horizon (one trajectory, and 64 trajectories in one
  batch), compile excluded; the full :func:`~msde_ppl.predict.forecast` (which adds quantiles
  and CRPS in NumPy) is timed too.
- ``memory``: peak resident memory (``VmHWM``) of a fit and of a forecast, each in a fresh
  process.
- ``render``: nothing measured; ``perf.md`` written again from ``perf.json``.

``perf.md`` opens with issue 22's targets (:data:`TARGETS`) against the sections' numbers, each
``met`` or how far off, with what holds a missed one back (:func:`targets_summary`).

Writes ``benchmarks/results/perf.json`` and ``perf.md``. Timings are medians; the machine's load
average is recorded next to them.

    python benchmarks/perf.py            # everything; time to accuracy of Burgers 1D only (~25 min)
    python benchmarks/perf.py --sections accuracy --tta-cases wave_1d kdv_1d   # ~20 min
    python benchmarks/perf.py --quick    # fewer repeats, a short accuracy run, Burgers only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before jax is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from msde_ppl import Fitted  # noqa: E402
from msde_ppl.data import CASES, from_arrays, make_dataset  # noqa: E402
from msde_ppl.data.cases import PDECase, get_case  # noqa: E402
from msde_ppl.inference import init, make_chunk_runner, step  # noqa: E402
from msde_ppl.multiscale import config_for  # noqa: E402
from msde_ppl.pipeline.run import builtin_recipe  # noqa: E402
from msde_ppl.pipeline.training import TrainConfig, fit_progressive, multiscale_setup  # noqa: E402
from msde_ppl.predict import forecast, forecast_metrics  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REFERENCE_STEP_S = 0.110  # reference PyTorch code, this CPU (issue text)
REFERENCE_EVAL_S = (96.0, 118.0)  # its forecast evaluation of one test trajectory
REFERENCE_TTA_S = 15 * 60.0  # its time to 0.040 on Burgers 1D


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def reference_config(fine_shape, **overrides):
    """The reference's Burgers 1D sizes with its CNN micro codec."""
    return config_for("burgers_1d", fine_shape, n_micro=5, encoder="cnn", decoder="cnn",
                      **overrides)


# ----------------------------------------------------------------------------- step time
def compiled_step(ds, config, train: TrainConfig, seed: int = 0):
    """``(setup, problem, state, example batch, compiled one-step program, compile s)`` of a
    fit of ``config`` on ``ds``."""
    setup = multiscale_setup(ds, config, train)
    key_init, key_batch, key_run = jax.random.split(jax.random.key(seed), 3)
    example = setup.batch_fn(key_batch, jnp.zeros((), jnp.int32))
    problem, state = init(key_init, setup.model, setup.guide, setup.elbo, setup.optimizer,
                          example, beta_schedule=setup.beta_schedule)
    state = state._replace(rng_key=key_run)
    one_step = jax.jit(lambda st, batch: step(problem, st, batch))
    start = time.perf_counter()
    compiled = one_step.lower(state, example).compile()
    return setup, problem, state, example, compiled, time.perf_counter() - start


def time_steps(ds, config, train: TrainConfig, repeats: int) -> dict:
    """Compile time, per-step median and spread, XLA FLOPs of one step, recompilation check."""
    setup, problem, state, _, compiled, step_compile_s = compiled_step(ds, config, train)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan")))

    traces: list = []
    run = make_chunk_runner(problem, setup.batch_fn, train.chunk_size, traces, setup.loop)
    n = jnp.asarray(train.chunk_size)
    start = time.perf_counter()
    state, *_ = run(state, n)
    jax.block_until_ready(state.params)
    first_chunk_s = time.perf_counter() - start
    per_step = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, *_ = run(state, n)
        jax.block_until_ready(state.params)
        per_step.append((time.perf_counter() - start) / train.chunk_size)
    median = float(np.median(per_step))
    return {
        "step_median_s": median,
        "step_p10_s": float(np.percentile(per_step, 10)),
        "step_p90_s": float(np.percentile(per_step, 90)),
        "steps_timed": repeats * train.chunk_size,
        "chunk_size": train.chunk_size,
        "flops_per_step": flops,
        "gflops_per_s": flops / median / 1e9,
        "compile_s": first_chunk_s - median * train.chunk_size,
        "single_step_compile_s": step_compile_s,
        "traces": len(traces),
        "jit_cache_size": int(run.cache_size()),
        "loop": setup.loop,
        "snapshots_per_step": train.window * train.windows_per_step,
    }


def section_reference(ds, args) -> dict:
    fine = ds["u"].shape[2:]
    repeats = 5 if args.quick else 20
    ref = time_steps(ds, reference_config(fine),
                     TrainConfig(window=128, windows_per_step=1, chunk_size=10), repeats)
    ref["speedup_vs_reference"] = REFERENCE_STEP_S / ref["step_median_s"]
    ours = time_steps(ds, config_for("burgers_1d", fine, n_micro=5),
                      TrainConfig(window=64, windows_per_step=4, chunk_size=20), repeats)
    print(f"reference config: {json.dumps(ref)}\ndefault config: {json.dumps(ours)}", flush=True)
    return {"reference_config": ref, "default_config": ours, "load": load_note()}


# ----------------------------------------------------------------------------- 2D step
STEP2D_CONFIGS = {
    # name: (case, (fields, nx, ny), windows M timed)
    "burgers_2d": ("burgers_2d", (1, 128, 128), (64, 128)),
    "cylinder_2d": ("cylinder_2d", (2, 320, 80), (32, 64)),
}


def synthetic_2d(fields: int, nx: int, ny: int, n_traj: int = 2, n_time: int = 300):
    """Travelling smooth waves on a 2D grid: a step's cost does not depend on the values, and
    the built-in 2D datasets take minutes to generate."""
    rng = np.random.default_rng(0)
    x, y = np.arange(nx) / nx, np.arange(ny) / ny
    xx, yy = np.meshgrid(x, y, indexing="ij")
    t = np.arange(n_time) * 0.01
    u = np.zeros((n_traj, n_time, fields, nx, ny), np.float32)
    for i in range(n_traj):
        for f in range(fields):
            a, b = rng.uniform(0, 2 * np.pi, 2)
            u[i, :, f] = (np.sin(2 * np.pi * xx + a + t[:, None, None])
                          * np.cos(2 * np.pi * yy + b))
    names = None if fields == 1 else [f"f{k}" for k in range(fields)]
    return from_arrays(u if fields > 1 else u[:, :, 0], time=t, x=x, y=y, fields=names)


def op_breakdown(ds, config, train: TrainConfig, n_steps: int = 5, top: int = 12) -> dict:
    """Per-op time of ``n_steps`` jitted training steps from a ``jax.profiler`` trace: the
    ``top`` XLA ops by summed duration, with output shape and the JAX operation they come
    from, and the share of FFTs. Durations of ops running concurrently on the two cores add
    up, so shares (not sums) are the figure to read."""
    import collections
    import gzip
    import re
    import tempfile

    *_, state, example, compiled, _ = compiled_step(ds, config, train, seed=1)
    hlo = compiled.as_text()
    state, _ = compiled(state, example)
    jax.block_until_ready(state.params)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(n_steps):
            state, _ = compiled(state, example)
        jax.block_until_ready(state.params)
        jax.profiler.stop_trace()
        trace = next(Path(tmp).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]
    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            totals[e["args"]["hlo_op"]] += e["dur"]
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*",
                                                           hlo, re.M)}
    bodies = {m.group(1): m.group(2) for m in re.finditer(
        r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)}

    def describe(op: str) -> tuple[str, str]:
        line = lines.get(op, "")
        called = re.search(r"calls=%?([\w.\-]+)", line)
        text = bodies.get(called.group(1), "") if called else line
        names = re.findall(r'op_name="([^"]+)"', text) or re.findall(r'op_name="([^"]+)"', line)
        name = collections.Counter(n.split("/", 1)[-1] for n in names).most_common(1)
        shape = re.search(r"= (\S+)", line)
        return (shape.group(1).split("{")[0] if shape else "?"), (name[0][0] if name else "?")

    total = sum(totals.values())
    fft = sum(v for op, v in totals.items() if op.startswith("fft"))
    rows = []
    for op, v in totals.most_common(top):
        shape, origin = describe(op)
        rows.append({"op": op, "share": v / total, "ms_per_step": v / n_steps / 1e3,
                     "shape": shape, "origin": origin[:90]})
    return {"ops": rows, "fft_share": fft / total, "summed_ms_per_step": total / n_steps / 1e3}


def section_step2d(args) -> dict:
    """Median 2D training-step times (implicit scale, multiscale with the MLP and the spline
    micro codec, and with the reference's CNN codec at the smaller window) at the 2D cases'
    sizes, GFLOP/s from XLA's cost analysis, and a per-op breakdown of the multiscale step at
    ``msde run``'s window."""
    from msde_ppl.pipeline.run import run_window

    repeats = 3 if args.quick else 10
    out: dict = {"load_before": load_note()}
    for name, (case, (fields, nx, ny), windows) in STEP2D_CONFIGS.items():
        ds = synthetic_2d(fields, nx, ny)
        rows = []
        for window in windows:
            codecs = ((0, None), (5, "mlp"), (5, "spline"))
            if window == windows[0]:  # the reference's CNN codec: ~30-85x the MLP's step
                codecs += ((5, "cnn"),)
            for n_micro, codec in codecs:
                config = config_for(case, (nx, ny), n_micro=n_micro, n_channels=fields,
                                    encoder=codec, decoder=codec)
                timed = time_steps(ds, config, TrainConfig(window=window, windows_per_step=1,
                                                           chunk_size=10), repeats)
                timed.update(window=window, n_micro=n_micro, codec=codec or "-")
                print(f"step2d {name}: {json.dumps(timed)}", flush=True)
                rows.append(timed)
        window = run_window(case)
        breakdown = op_breakdown(ds, config_for(case, (nx, ny), n_micro=5, n_channels=fields),
                                 TrainConfig(window=window, windows_per_step=1))
        out[name] = {"grid": f"{fields} x {nx} x {ny}", "steps": rows,
                     "breakdown": {"window": window, **breakdown}}
    out["load_after"] = load_note()
    return out


# ----------------------------------------------------------------------------- scaling
SCALING_TRAJECTORY = 1_000  # snapshots per trajectory of the scaling section's data


def tiled_dataset(ds, n_snapshots: int, per_trajectory: int = SCALING_TRAJECTORY):
    """``n_snapshots`` training snapshots in trajectories of ``per_trajectory``, tiled from
    ``ds``'s first trajectory."""
    if n_snapshots % per_trajectory:
        raise ValueError(f"{n_snapshots} snapshots are not trajectories of {per_trajectory}")
    u = np.asarray(ds["u"].values[0], np.float32)
    reps = -(-per_trajectory // u.shape[0])
    one = np.concatenate([u] * reps)[:per_trajectory]
    tiled = np.stack([one] * (n_snapshots // per_trajectory))
    dt = float(ds["time"][1] - ds["time"][0])
    return from_arrays(tiled, time=np.arange(per_trajectory) * dt, x=ds["x"].values,
                       boundary=ds.attrs["boundary"], domain=ds.attrs["domain"])


def section_scaling(ds, args) -> dict:
    fine = ds["u"].shape[2:]
    config = config_for("burgers_1d", fine, n_micro=5)
    repeats = 3 if args.quick else 10
    out: dict = {"length": [], "window": [], "windows_per_step": []}
    lengths = (1_000, 10_000, 100_000)
    for n in lengths:
        r = time_steps(tiled_dataset(ds, n), config, TrainConfig(window=64, chunk_size=50),
                       repeats)
        out["length"].append({"snapshots": n, "per_trajectory": SCALING_TRAJECTORY, **r})
        print(f"length {n}: {r['step_median_s'] * 1e3:.2f} ms", flush=True)
    base = out["length"][0]["step_median_s"]
    out["length_max_deviation"] = max(abs(r["step_median_s"] / base - 1) for r in out["length"])
    for m in (16, 32, 64, 128, 256):
        r = time_steps(ds, config, TrainConfig(window=m, chunk_size=50), repeats)
        out["window"].append({"window": m, **r})
        print(f"window {m}: {r['step_median_s'] * 1e3:.2f} ms", flush=True)
    for b in (1, 2, 4, 8):
        r = time_steps(ds, config, TrainConfig(window=64, windows_per_step=b, chunk_size=25),
                       repeats)
        out["windows_per_step"].append({"windows_per_step": b, **r})
        print(f"windows/step {b}: {r['step_median_s'] * 1e3:.2f} ms", flush=True)
    out["load"] = load_note()
    return out


# ----------------------------------------------------------------------------- accuracy
def time_to_accuracy(ds, case: str, thresholds, config, stages, eval_every: int,
                     split: str = "test", stop_early: bool = True) -> tuple[dict, Fitted]:
    """Fit ``stages`` (``[(0, train_0), (K, train_1)]``), scoring the ``split`` forecast of the
    multiscale model every ``eval_every`` steps of its stage (the raw ensemble, 64 paths, over
    the dataset's evaluation horizon); with ``stop_early``, stop once every threshold is met,
    else run every step (the whole curve; the recorded times are the first evaluations at or
    below each threshold, and the first after which all stay below; evaluation time is
    excluded from the training wall time)."""
    chunk = stages[-1][1].chunk_size
    if eval_every < 1 or eval_every % chunk:
        # the callback runs where a training chunk ends: other multiples would be skipped
        raise ValueError(f"{case}: evaluate every multiple of the training chunk ({chunk} "
                         f"steps), got {eval_every}")
    eval_steps = int(ds.attrs["eval_steps"])
    stage0 = stages[0][1].steps
    curve: list[dict] = []
    stage0_wall = [0.0]

    def score(fitted: Fitted) -> bool:
        """Score the multiscale model; stop once the last threshold is reached."""
        steps = len(fitted.losses)
        if fitted.config.n_micro == 0:
            if steps == stage0:
                stage0_wall[0] = fitted.wall_time_s
            return False
        if steps % eval_every and steps != stages[-1][1].steps:  # the last one is scored too
            return False
        fc = forecast(jax.random.key(1), fitted, ds, split=split, n_samples=64,
                      n_steps=eval_steps)
        metrics = forecast_metrics(fc, eval_steps)
        point = {"steps": stage0 + steps, "train_wall_s": stage0_wall[0] + fitted.wall_time_s,
                 "rel_l2": metrics["rel_l2_mean"], "rel_l2_clean": metrics["rel_l2_clean_mean"]}
        curve.append(point)
        print(f"{case} tta: {json.dumps(point)}", flush=True)
        return stop_early and point["rel_l2"] <= min(thresholds)

    fits = fit_progressive(ds, config, stages, progress=False, callback=score)
    result: dict = {"split": split, "stage0_steps": stage0,
                    "stage1_steps_max": stages[-1][1].steps,
                    "windows_per_step": stages[-1][1].windows_per_step,
                    "window": stages[-1][1].window, "eval_every": eval_every, "curve": curve}
    result.update(threshold_times(curve, thresholds))
    result["load"] = load_note()
    return result, fits[-1]


def burgers_stages(stage0: int, stage1: int, windows: int, eval_every: int):
    """The Burgers 1D accuracy run's recipe (config_for's sizes, K = 5, windows of 64)."""
    chunk = min(eval_every, 250)
    return [(0, TrainConfig(steps=stage0, windows_per_step=windows, chunk_size=chunk)),
            (5, TrainConfig(steps=stage1, windows_per_step=windows, chunk_size=chunk,
                            warmup_steps=0))]


def threshold_times(curve: list[dict], thresholds) -> dict:
    """First evaluation at or below each threshold, and the first after which every later
    evaluation stays at or below it (``sustained_``; None if the last one is above)."""
    out: dict = {}
    for threshold in thresholds:
        hit = next((p for p in curve if p["rel_l2"] <= threshold), None)
        out[f"time_to_{threshold}"] = None if hit is None else hit["train_wall_s"]
        out[f"steps_to_{threshold}"] = None if hit is None else hit["steps"]
        # a non-finite score (a blown-up forecast) counts as above
        above = [i for i, p in enumerate(curve) if not p["rel_l2"] <= threshold]
        last_above = above[-1] if above else -1
        held = curve[last_above + 1] if last_above + 1 < len(curve) else None
        out[f"sustained_time_to_{threshold}"] = None if held is None else held["train_wall_s"]
        out[f"sustained_steps_to_{threshold}"] = None if held is None else held["steps"]
    return out


def settled_time(curve: list[dict], tolerance: float = 0.1,
                 min_points: int = 3) -> float | None:
    """Training time from which every evaluation of ``curve`` stays within ``tolerance``
    (relative) of the last one: when a run that never reaches its target stopped improving.
    ``None`` when fewer than ``min_points`` evaluations lie in that stretch (too few to say)
    or the last one is not finite."""
    if not curve or not np.isfinite(curve[-1]["rel_l2"]):
        return None
    bound = (1 + tolerance) * curve[-1]["rel_l2"]
    above = [i for i, p in enumerate(curve) if not p["rel_l2"] <= bound]
    start = above[-1] + 1 if above else 0
    return curve[start]["train_wall_s"] if len(curve) - start >= min_points else None


def section_accuracy(ds, args, previous: dict | None = None,
                     save=None) -> tuple[dict, Fitted | None]:
    """Time to accuracy of ``--tta-cases``: Burgers 1D with its accuracy recipe (targets 0.040,
    the reference's ~15 min, and 0.015), every other built-in case with ``msde run``'s recipe
    and the reference's multiscale rel-L2 as the target (pipeline.table.REFERENCE). Cases not
    run keep their ``previous`` result."""
    from msde_ppl.pipeline.table import REFERENCE

    out, fitted = dict(previous or {}), None
    for case in args.tta_cases:
        if case == "burgers_1d":
            stage1 = 3000 if args.quick else args.burgers_steps
            stages = burgers_stages(1000 if args.quick else 2000, stage1, args.windows,
                                    args.eval_every)
            res, fitted = time_to_accuracy(ds, case, (0.040, 0.015),
                                           config_for(case, ds["u"].shape[2:], n_micro=5),
                                           stages, args.eval_every, args.tta_split)
            res["reference_time_to_0.04_s"] = REFERENCE_TTA_S
        else:
            case_ds = make_dataset(case)
            config, stages = builtin_recipe(case_ds, case)
            res, _ = time_to_accuracy(case_ds, case, (REFERENCE[case]["multiscale"][0],),
                                      config, stages, args.tta_eval_every, args.tta_split,
                                      stop_early=False)
            res["recipe"] = "msde run"
        out[case] = res
        if save is not None:  # a long run per case: keep each as it ends
            save(out)
    return out, fitted


# ----------------------------------------------------------------------------- forecast
# What limits each fine solver's time step (the cases' docstrings and stable_dt).
FINE_STEP_LIMIT = {
    "burgers_1d": "explicit RK4, diffusion: dt < 2 / (4 nu / dx^2 + |u| / dx)",
    "burgers_2d": "explicit RK4, diffusion: dt < 2.5 / (4 nu (1/dx^2 + 1/dy^2) + ...)",
    "kdv_1d": "explicit RK4, dispersion: dt < 2.5 / (8 beta / dx^3 + |u| / dx)",
    "wave_1d": "explicit RK4, advection: dt < 2.5 dx / c",
    "shallow_water_2d": "SSP-RK2 finite volume, CFL 0.45 on gravity waves sqrt(g h)",
    "cylinder_2d": "lattice Boltzmann, acoustic scaling: dt = u_lattice dx / U "
                   "(u_lattice 0.08, 20 cells per diameter)",
}


def fine_solve_costs(case, ds, times, n_paths: int, median_time) -> dict:
    """Seconds of the fine solver over the forecast horizon ``times``: one solve, and
    ``n_paths`` solves (batched through the PDE cases' vectorised solvers; the cylinder's
    lattice Boltzmann run is one state at a time, so ``n_paths`` runs cost ``n_paths`` times one:
    a run's cost does not depend on its state). Also the fine steps per snapshot and what
    limits them."""
    from msde_ppl.data.cases import PDECase

    times = np.asarray(times, np.float64)
    dt_out = float(times[1] - times[0])
    out = {"fine_step_limit": FINE_STEP_LIMIT.get(case.name, "")}
    if isinstance(case, PDECase):
        u0 = np.asarray(ds["u_clean"].isel(traj=0, time=0).values, np.float64)[None]
        grid = case.spacing(u0.shape[1:])
        local = times - times[0]
        out["fine_solver_one_s"] = median_time(lambda: case.solve(u0, grid, local))
        out["fine_solver_64_s"] = median_time(
            lambda: case.solve(np.repeat(u0, n_paths, 0), grid, local))
        out["fine_solver_64_batched"] = True
        out["fine_steps_per_snapshot"] = int(np.ceil(
            dt_out / case.stable_dt(grid, float(np.abs(u0).max()) + 1e-12)))
        return out
    from msde_ppl.data.cases._lattice_boltzmann import simulate

    lattice_dt = case.channel.dt  # the snapshot times are float32: whole lattice steps again
    dt_out = round(dt_out / lattice_dt) * lattice_dt
    horizon = round(float(times[-1] - times[0]) / dt_out) * dt_out
    out["fine_solver_one_s"] = median_time(lambda: simulate(
        case.channel, 0.0, horizon - dt_out, dt_out, output_dx=case.output_dx,
        n_columns=case.n_columns)["u"])
    out["fine_solver_64_s"] = n_paths * out["fine_solver_one_s"]
    out["fine_solver_64_batched"] = False
    out["fine_steps_per_snapshot"] = round(dt_out / case.channel.dt)
    return out


def forecast_dataset(case: str):
    """The test data of the forecast section: the built-in dataset, with fewer trajectories in
    2D (the ensemble's cost is per trajectory), and for the cylinder a short record with the
    full test block (100 snapshots; its spin-up and train block shortened)."""
    import dataclasses

    from msde_ppl.data.cases import Cylinder2D

    if case == "cylinder_2d":
        return dataclasses.replace(Cylinder2D(), spinup=2.0, t_final=3.0,
                                   split_times=(1.0, 2.0)).generate()
    return make_dataset(case, n_traj=20 if case.endswith("2d") else None)


def section_forecast(ds, fitted: Fitted, args) -> dict:
    from msde_ppl.data import observations
    from msde_ppl.predict.forecast import trajectory_ensemble

    case = get_case(ds.attrs["case"])
    if not isinstance(case, PDECase):
        case = case.for_dataset(ds)
    y, times = observations(ds, "test")
    n_out = y.shape[1]
    s = 64
    ensemble = trajectory_ensemble(fitted, times, s)  # what forecast() runs per trajectory

    repeats = 3 if args.quick else 7
    y_traj = jnp.asarray(y[0])

    def median_time(fn) -> float:
        jax.block_until_ready(fn())
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples.append(time.perf_counter() - start)
        return float(np.median(samples))

    ens_s = median_time(lambda: ensemble(jax.random.key(0), y_traj))
    fine = fine_solve_costs(case, ds, times, s, median_time)
    fine_one_s, fine_batch_s = fine["fine_solver_one_s"], fine["fine_solver_64_s"]
    start = time.perf_counter()
    forecast(jax.random.key(2), fitted, ds, split="test", n_samples=s)
    first_full = time.perf_counter() - start
    full_s = median_time(lambda: forecast(jax.random.key(2), fitted, ds, split="test",
                                          n_samples=s)["mean"].values)
    out = {
        "case": ds.attrs["case"], "paths": s, "snapshots": n_out, "fine_points": int(y[0, 0].size),
        "test_trajectories": int(y.shape[0]),
        "ensemble_s": ens_s, **fine,
        "speedup_vs_one_fine_solve": fine_one_s / ens_s,
        "speedup_vs_64_fine_solves": fine_batch_s / ens_s,
        "forecast_full_s": full_s, "forecast_full_first_call_s": first_full,
        "speedup_full_vs_reference_eval": REFERENCE_EVAL_S[0] / (full_s / y.shape[0]),
        "load": load_note(),
    }
    print(f"forecast: {json.dumps(out)}", flush=True)
    return out


# ----------------------------------------------------------------------------- memory
PEAK = """
def _peak_kib():
    # VmHWM: this process's peak resident set (ru_maxrss would also count the parent's peak,
    # which Linux carries across fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""
CHILD = PEAK + """
import os, sys
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import jax
from msde_ppl.data import load
from msde_ppl import Fitted
from msde_ppl.multiscale import config_for
from msde_ppl.pipeline.training import TrainConfig, fit_multiscale
from msde_ppl.predict.forecast import forecast
what, data, run_dir = sys.argv[1:4]
ds = load(data)
if what == "fit":
    cfg = config_for("burgers_1d", ds["u"].shape[2:], n_micro=5)
    fitted = fit_multiscale(ds, cfg, TrainConfig(steps=500, windows_per_step=4), progress=False)
    fitted.save(os.path.join(run_dir, 'model'))
elif what == "fit_2d":  # Burgers 2D, 128 x 128 -> 8 x 8, default training settings
    cfg = config_for("burgers_2d", ds["u"].shape[2:], n_micro=5)
    fit_multiscale(ds, cfg, TrainConfig(steps=200), progress=False)
elif what == "fit_reference":
    cfg = config_for("burgers_1d", ds["u"].shape[2:], n_micro=5, encoder="cnn", decoder="cnn")
    fit_multiscale(ds, cfg, TrainConfig(steps=200, window=128, chunk_size=50), progress=False)
else:
    fitted = Fitted.load(os.path.join(run_dir, 'model'))
    forecast(jax.random.key(0), fitted, ds, split="test", n_samples=64)
print(_peak_kib())
"""


def peak_rss_mib(what: str, data: Path, run_dir: Path) -> float:
    """Peak resident memory (MiB) of a fresh process doing ``what``."""
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(data), str(run_dir)],
                          check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024.0


def section_memory(ds, args) -> dict:
    import tempfile

    from msde_ppl.data import save

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "burgers_1d.nc"
        save(ds, data)
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        baseline = subprocess.run(
            [sys.executable, "-c", PEAK + "import jax, msde_ppl.pipeline.training, xarray\n"
             "print(_peak_kib())"], check=True, capture_output=True, text=True)
        out = {
            "import_baseline_mib": int(baseline.stdout.strip()) / 1024.0,
            "fit_mib": peak_rss_mib("fit", data, run_dir),
            "fit_reference_config_mib": peak_rss_mib("fit_reference", data, run_dir),
            "forecast_mib": peak_rss_mib("forecast", data, run_dir),
        }
        # a 2D fit on 6 Burgers 2D trajectories (4 train: 262 MB of data, 0.73 GiB in all)
        data_2d = Path(tmp) / "burgers_2d.nc"
        save(make_dataset("burgers_2d", n_traj=6), data_2d)
        out["fit_2d_mib"] = peak_rss_mib("fit_2d", data_2d, run_dir)
    print(f"memory: {json.dumps(out)}", flush=True)
    return out


# ----------------------------------------------------------------------------- report
#: Issue 22's targets (benchmarks, not tests): the 2D step, the 1D reference step, peak memory,
#: 64-member ensembles against 64 fine solves, time to accuracy.
TARGETS = {"step2d_gflops": 250.0, "step2d_m128_s": 0.05, "step2d_m64_s": 0.025,
           "step_reference_s": 0.035, "fit_mib": 1024.0, "fit_2d_mib": 2048.0,
           "forecast_mib": 1024.0, "ensemble_speedup": 10.0, "time_to_accuracy_s": 45 * 60.0}

#: The 2D cases whose time to accuracy the targets ask for (each one that runs in the package).
TTA_CASES_2D = ("shallow_water_2d", "burgers_2d", "cylinder_2d")


def _verdict(value: float | None, target: float, larger_is_better: bool = False) -> str:
    """``met`` or ``missed by x`` (how far from the target, as a ratio)."""
    if value is None:
        return "**not measured**"
    if (value >= target) if larger_is_better else (value <= target):
        return "met"
    ratio = target / value if larger_is_better else value / target
    if ratio < 1.1:  # "1.0x off" would read as met
        return f"**missed** ({100 * (ratio - 1):.1f}% off)"
    return f"**missed** ({ratio:.1f}x off)"


def _against_reference(case: str, level: str, reference_s: float, held: float | None,
                       first: float | None) -> tuple:
    """The targets-table row of a time to accuracy against 1/5 of the reference's time
    (``held``: from when the curve stays below ``level``; ``first``: when it first was)."""
    target = reference_s / 5
    first_text = "" if first is None else f" (first below: {first:.0f} s)"
    if held is None:
        measured, status = "not reached" + first_text, "**missed** (not reached)"
    else:
        measured, status = f"{held:.0f} s to stay below {level}" + first_text, \
            _verdict(held, target)
    why = ""
    if held is None or held > target:
        why = (f"the noisy curve: first below after {first:.0f} s, then above again"
               if first is not None and (held is None or first < held) else
               "the training time")
    return (f"5. time to accuracy, {case}, against the reference's {reference_s:.0f} s",
            f"<= {target:.0f} s (1/5)", measured, status, why)


def targets_summary(res: dict) -> list[str]:
    """Markdown lines: each of issue 22's targets against what ``res`` (perf.json) measured,
    and what holds a missed one back (the profile's top op where one was recorded)."""
    t = TARGETS
    rows = []
    steps = res.get("step2d", {})
    for case in ("burgers_2d", "cylinder_2d"):
        multiscale = [x for x in steps.get(case, {}).get("steps", []) if x["n_micro"] > 0]
        if not multiscale:
            rows.append((f"1. 2D step, {case}", "", "not measured", "**not measured**", ""))
            continue
        top = steps[case].get("breakdown", {}).get("ops", [])
        held = ("memory-bound work, not arithmetic: small GEMMs, FFTs, gathers and elementwise "
                "passes (Adam's over the codec's weights among them)")
        if top:
            held += f"; the largest op takes {100 * top[0]['share']:.0f}% ({top[0]['origin']})"
        best = max(multiscale, key=lambda x: x["gflops_per_s"])
        rows.append((f"1. 2D step, {case}, multiscale K = 5",
                     f">= {t['step2d_gflops']:.0f} GFLOP/s",
                     f"{best['gflops_per_s']:.0f} GFLOP/s ({best['codec']} codec, M = "
                     f"{best['window']}: {best['step_median_s']:.3f} s)",
                     _verdict(best["gflops_per_s"], t["step2d_gflops"], True), held))
        if case == "burgers_2d":
            for window, key in ((128, "step2d_m128_s"), (64, "step2d_m64_s")):
                at = [x for x in multiscale if x["window"] == window]
                if at:
                    fast = min(at, key=lambda x: x["step_median_s"])
                    rows.append((f"1. 2D step, {case}, M = {window}", f"<= {t[key]} s",
                                 f"{fast['step_median_s']:.3f} s ({fast['codec']} codec)",
                                 _verdict(fast["step_median_s"], t[key]), "as above"))
    ref = res.get("reference", {}).get("reference_config")
    rows.append(("2. 1D step, reference configuration", f"<= {t['step_reference_s']} s",
                  "not measured" if ref is None else
                  f"{ref['step_median_s']:.3f} s ({ref['gflops_per_s']:.0f} GFLOP/s)",
                  _verdict(None if ref is None else ref["step_median_s"], t["step_reference_s"]),
                  "the CNN codec: XLA's CPU convolutions with few channels (6–60 GFLOP/s), run "
                  f"in a Python loop per step (loop = {ref['loop'] if ref else '?'}: inside a "
                  "scan they are ten times slower)"))
    mem = res.get("memory", {})
    for key, what in (("fit_mib", "3. peak memory, 1D fit"),
                      ("fit_2d_mib", "3. peak memory, 2D fit"),
                      ("forecast_mib", "3. peak memory, forecast")):
        value = mem.get(key)
        rows.append((what, f"<= {t[key]:.0f} MiB",
                     "not measured" if value is None else f"{value:.0f} MiB",
                     _verdict(value, t[key]),
                     "the compile of the training chunk (+0.5–0.7 GiB over ~0.5 GiB of live "
                     "state)" + ("; the 2D dataset held in memory" if "2d" in key else "")
                     if key != "forecast_mib" else ""))
    fc = res.get("forecast", {})
    for case in ("shallow_water_2d", "cylinder_2d"):
        one = fc.get(case)
        rows.append((f"4. 64-member ensemble vs 64 fine solves, {case}",
                     f">= {t['ensemble_speedup']:.0f}x",
                     "not measured" if one is None else
                     f"{one['speedup_vs_64_fine_solves']:.1f}x "
                     f"({one['ensemble_s']:.1f} s vs {one['fine_solver_64_s']:.0f} s)",
                     _verdict(None if one is None else one["speedup_vs_64_fine_solves"],
                              t["ensemble_speedup"], True),
                     "" if one is None else f"fine step: {one['fine_step_limit']}"))
    acc = res.get("accuracy", {})
    for case in [c for c in acc if c.endswith("_1d")] + list(TTA_CASES_2D):
        one = acc.get(case)
        if one is None:
            rows.append((f"5. time to accuracy, {case}", "<= 45 min", "no curve run",
                         "**not measured**", "not run; where the case's `msde run` ends above "
                         "the reference's number (the cylinder: 0.022 against 0.009, "
                         "docs/benchmarks.md) the curve cannot reach it either"))
            continue
        target_key = next(k for k in one if k.startswith("sustained_time_to_"))
        level = target_key.rsplit("_", 1)[-1]
        value = one[target_key]
        last = one["curve"][-1] if one.get("curve") else None
        shown = (f"{value:.0f} s to stay below {level}" if value is not None else
                 f"not reached ({level}); last {last['rel_l2']:.3f} after "
                 f"{last['train_wall_s']:.0f} s"
                 if last else f"not reached ({level})")
        held = ""
        if value is None and last is not None and not np.isfinite(last["rel_l2"]):
            held = "the recipe's last checkpoint forecasts non-finite values"
        elif value is None and last is not None:
            settled = settled_time(one["curve"])
            held = ("the model's accuracy, not its speed: the recipe's last checkpoint is "
                    f"{last['rel_l2'] / float(level):.1f}x the reference's number"
                    + (f", and the curve stays within 10% of that last value from "
                       f"{settled:.0f} s of training on" if settled is not None else ""))
        rows.append((f"5. time to accuracy, {case}", "<= 45 min", shown,
                     _verdict(value, t["time_to_accuracy_s"]) if value is not None else
                     "**missed** (not reached)", held))
        reference_s = one.get(f"reference_time_to_{level}_s")
        if reference_s is not None:  # where the reference's own time is known
            rows.append(_against_reference(case, level, reference_s, value,
                                           one.get(f"time_to_{level}")))
    lines = ["## Issue 22's targets (from the sections below)", "",
             "| item | target | measured | status | what holds it back |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return lines + [""]


def markdown(res: dict) -> str:
    lines = ["# Performance (Burgers 1D unless stated; medians)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores. "
             f"jax {jax.__version__}.", ""]
    lines += targets_summary(res)
    if "reference" in res:
        r, d = res["reference"]["reference_config"], res["reference"]["default_config"]
        lines += [
            "## Training step", "",
            "| configuration | snapshots/step | median step (s) | p10–p90 (s) | GFLOP/step | "
            "GFLOP/s | compile (s) | traces | vs reference 0.110 s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, x in (("reference (CNN codec, M=128, 1 window)", r),
                        ("ours (MLP codec, M=64, 4 windows)", d)):
            lines.append(
                f"| {name} | {x['snapshots_per_step']} | {x['step_median_s']:.4f} | "
                f"{x['step_p10_s']:.4f}–{x['step_p90_s']:.4f} | {x['flops_per_step'] / 1e9:.2f} | "
                f"{x['gflops_per_s']:.0f} | {x['compile_s']:.1f} | {x['traces']} | "
                f"{REFERENCE_STEP_S / x['step_median_s']:.1f}x |")
        lines += ["", f"({res['reference']['load']})", ""]
    if "step2d" in res:
        st = res["step2d"]
        lines += ["## 2D training step (synthetic fields of the cases' sizes, one window per step)",
                  "", "| case (fields x grid) | window M | K | micro codec | median step (s) | "
                  "p10–p90 (s) | GFLOP/step | GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
        for name in STEP2D_CONFIGS:
            if name not in st:
                continue
            for x in st[name]["steps"]:
                lines.append(
                    f"| {name} ({st[name]['grid']}) | {x['window']} | {x['n_micro']} | "
                    f"{x['codec']} | {x['step_median_s']:.4f} | {x['step_p10_s']:.4f}–"
                    f"{x['step_p90_s']:.4f} | {x['flops_per_step'] / 1e9:.2f} | "
                    f"{x['gflops_per_s']:.0f} |")
        for name in STEP2D_CONFIGS:
            if name not in st:
                continue
            b = st[name]["breakdown"]
            lines += ["", f"Top XLA ops of the {name} multiscale step (MLP codec, M = "
                      f"{b['window']}; shares of summed op time, FFTs {100 * b['fft_share']:.0f}%"
                      "):", "", "| op | share | output | from |", "|---|---|---|---|"]
            lines += [f"| {o['op']} | {100 * o['share']:.1f}% | `{o['shape']}` | {o['origin']} |"
                      for o in b["ops"]]
        lines += ["", f"(before: {st['load_before']}; after: {st['load_after']})", ""]
    if "scaling" in res:
        sc = res["scaling"]
        lines += ["## Step time scaling (ours, MLP codec)", "",
                  "| training snapshots | median step (ms) |", "|---:|---:|"]
        lines += [f"| {x['snapshots']} | {x['step_median_s'] * 1e3:.2f} |" for x in sc["length"]]
        lines += ["", f"Max deviation from 10^3: {100 * sc['length_max_deviation']:.1f}%.", "",
                  "| window M | median step (ms) | per snapshot (ms) |", "|---:|---:|---:|"]
        lines += [f"| {x['window']} | {x['step_median_s'] * 1e3:.2f} | "
                  f"{x['step_median_s'] * 1e3 / x['window']:.3f} |" for x in sc["window"]]
        lines += ["", "| windows per step (M=64) | median step (ms) | per snapshot (ms) | loop |",
                  "|---:|---:|---:|---|"]
        lines += [f"| {x['windows_per_step']} | {x['step_median_s'] * 1e3:.2f} | "
                  f"{x['step_median_s'] * 1e3 / x['snapshots_per_step']:.3f} | "
                  f"{x.get('loop', 'scan')} |" for x in sc["windows_per_step"]]
        lines += ["", f"({sc['load']})", ""]
    if "accuracy" in res:
        split = next(iter(res["accuracy"].values())).get("split", "test")
        lines += [f"## Time to accuracy ({split} split, rel-L2 vs noisy data)", "",
                  "| case | target | first reached: training s (steps) | stays below from: "
                  "training s (steps) | reference |", "|---|---|---|---|---|"]

        def shown(t, n):
            return "not reached" if t is None else f"{t:.0f} ({n})"

        for case, a in res["accuracy"].items():
            for key in a:
                if key.startswith("time_to_"):
                    target = key.removeprefix("time_to_")
                    ref = ("~900 s" if case == "burgers_1d" and target == "0.04" else
                           "its multiscale rel-L2; its time unknown" if a.get("recipe") else "")
                    lines.append(
                        f"| {case} | {target} | {shown(a[key], a['steps_to_' + target])} | "
                        f"{shown(a.get('sustained_' + key), a.get('sustained_steps_to_' + target))}"
                        f" | {ref} |")
        for case, a in res["accuracy"].items():
            final = a["curve"][-1] if a["curve"] else None
            if final:
                recipe = ("msde run's recipe, " if a.get("recipe") else "") + (
                    f"{a['windows_per_step']} window(s) of {a.get('window', 64)} per step")
                lines.append(f"\n{case} ({recipe}): "
                             f"last evaluated {final['rel_l2']:.4f} after "
                             f"{final['steps']} steps, {final['train_wall_s']:.0f} s "
                             f"({a['load']}).")
        lines.append("")
    if "forecast" in res:
        lines += ["## Ensemble forecast vs fine solver (one test trajectory, whole horizon)", "",
                  "| case | snapshots x fine points | ensemble of 64 (s) | fine solver, 1 (s) | "
                  "fine solver, 64 (s) | ensemble speed-up vs 1 / vs 64 | full `forecast()` per "
                  "trajectory (s) | vs reference's 96–118 s |", "|---|---|---|---|---|---|---|---|"]
        for case, f in res["forecast"].items():
            lines.append(
                f"| {case} | {f['snapshots']} x {f['fine_points']} | {f['ensemble_s']:.3f} | "
                f"{f['fine_solver_one_s']:.3f} | {f['fine_solver_64_s']:.3f} | "
                f"{f['speedup_vs_one_fine_solve']:.2f}x / {f['speedup_vs_64_fine_solves']:.2f}x | "
                f"{f['forecast_full_s'] / f['test_trajectories']:.2f} | "
                f"{f['speedup_full_vs_reference_eval']:.0f}x |")
        lines += ["", "Ensemble: encode, roll 64 paths, decode to the fine grid, one predictive "
                  "draw per path, mean and std. "
                  "Full `forecast()` adds quantiles, CRPS and the xarray output. Fine solver: "
                  "64 solves in one vectorised batch where the solver is vectorised, else 64 "
                  "times one solve.", "",
                  "| case | fine steps per snapshot | what limits the fine step | 64 solves |",
                  "|---|---|---|---|"]
        for case, f in res["forecast"].items():
            if "fine_step_limit" in f:
                lines.append(f"| {case} | {f['fine_steps_per_snapshot']} | "
                             f"{f['fine_step_limit']} | "
                             f"{'batched' if f['fine_solver_64_batched'] else '64 x one'} |")
        lines.append("")
    if "memory" in res:
        m = res["memory"]
        lines += ["## Peak memory (fresh process, VmHWM)", "", "| process | MiB |", "|---|---|",
                  f"| import only | {m['import_baseline_mib']:.0f} |",
                  f"| fit (ours, 500 steps) | {m['fit_mib']:.0f} |",
                  f"| fit (reference config, 200 steps) | {m['fit_reference_config_mib']:.0f} |",
                  f"| forecast (1 test trajectory, 64 paths) | {m['forecast_mib']:.0f} |"]
        if "fit_2d_mib" in m:
            lines.append(f"| fit, Burgers 2D (6 trajectories, 200 steps) | {m['fit_2d_mib']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, short accuracy run")
    parser.add_argument("--sections", nargs="+",
                        default=["reference", "scaling", "step2d", "accuracy", "forecast",
                                 "memory"])
    parser.add_argument("--tta-cases", nargs="+", default=["burgers_1d"], choices=sorted(CASES),
                        metavar="CASE",
                        help="cases of the accuracy section (default burgers_1d; others, e.g. "
                        "kdv_1d wave_1d, with msde run's recipe and the reference's multiscale "
                        "rel-L2 as the target; long, --quick does not shorten them)")
    parser.add_argument("--tta-eval-every", type=int, default=4000,
                        help="multiscale steps between test evaluations of the msde-run-recipe "
                        "accuracy runs")
    parser.add_argument("--burgers-steps", type=int, default=40000,
                        help="maximum K=5 steps of the Burgers time-to-accuracy run")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--windows", type=int, default=1,
                        help="windows of 64 per step in the accuracy runs (default 1, chosen on "
                        "the val split)")
    parser.add_argument("--tta-split", default="test", choices=["val", "test"],
                        help="split scored by the time-to-accuracy runs (val to choose a recipe)")
    parser.add_argument("--forecast-cases", nargs="+", default=None, metavar="CASE",
                        help="cases of the forecast section (default burgers_1d kdv_1d; also "
                        "shallow_water_2d, burgers_2d, cylinder_2d)")
    parser.add_argument("--tag", default="perf")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / f"{args.tag}.json"
    res: dict = json.loads(out_json.read_text()) if out_json.exists() else {}
    if args.sections == ["render"]:  # perf.md again from perf.json, nothing measured
        (RESULTS / f"{args.tag}.md").write_text(markdown(res))
        print(markdown(res))
        return
    res["settings"] = dict(vars(args))  # this invocation's (earlier sections keep their own)

    ds = make_dataset("burgers_1d")
    fitted = None

    def save() -> None:
        out_json.write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / f"{args.tag}.md").write_text(markdown(res))

    if "reference" in args.sections:
        res["reference"] = section_reference(ds, args)
        res["reference_config"] = res["reference"]["reference_config"]  # the contract's key
        save()
    if "scaling" in args.sections:
        res["scaling"] = section_scaling(ds, args)
        save()
    if "step2d" in args.sections:
        res["step2d"] = section_step2d(args)
        save()
    if "accuracy" in args.sections or "forecast" in args.sections:
        def save_accuracy(acc: dict) -> None:
            res["accuracy"] = acc
            save()

        if "accuracy" in args.sections:  # saved as each case ends
            _, fitted = section_accuracy(ds, args, res.get("accuracy"), save_accuracy)
    if "forecast" in args.sections:
        from msde_ppl.pipeline.run import model_config
        from msde_ppl.pipeline.training import fit_multiscale

        res.setdefault("forecast", {})
        cases = args.forecast_cases or (("burgers_1d",) if args.quick else ("burgers_1d",
                                                                            "kdv_1d"))
        for case in cases:
            case_ds = ds if case == "burgers_1d" else forecast_dataset(case)
            case_fit = fitted if case == "burgers_1d" else None
            if case_fit is None:  # a short fit: the forecast's cost does not depend on weights
                case_fit = fit_multiscale(case_ds, model_config(case_ds, n_micro=5),
                                          TrainConfig(steps=200 if case.endswith("1d") else 50),
                                          progress=False)
            res["forecast"][case] = section_forecast(case_ds, case_fit, args)
            save()
    if "memory" in args.sections:
        res["memory"] = section_memory(ds, args)
        save()
    print(markdown(res))


if __name__ == "__main__":
    sys.exit(main())
