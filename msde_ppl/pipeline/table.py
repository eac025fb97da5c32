"""The paper's table, regenerated: every case x the five methods (``msde table``).

Methods (docs/method.md §7): ``coarse_dns``, ``dmd``, ``pod_sindy`` (deterministic baselines,
:mod:`msde_ppl.pipeline.baselines`), ``implicit_scale`` and ``multiscale`` (the two fits of
``msde run``, :func:`~msde_ppl.pipeline.run.run_builtin`). For each, on the test split: rel-L2
mean ± std against the noisy and the clean data, and for the probabilistic methods CRPS, 90%
coverage and spread–skill (uncalibrated and calibrated on val), the wall time of training and of
prediction, and the reference's number beside ours (:data:`REFERENCE`).

The two fitted models of a case come either from this call (``msde run``'s schedule, or a
smoke-sized one with ``quick``) or from an earlier ``msde run`` directory (``runs``: its
``metrics.json`` and ``data.nc``; the baselines are then computed on that same data). Rows of
cases not scored in a call can be carried over from an earlier table (``extend``: its
``table.json``, same mode; each carried row keeps its source and says which table it came from),
so adding one case's row does not re-run the others. Outputs:
``table.json`` (everything), ``table.md`` and ``table.png`` (rel-L2 per case and method on a
log scale, the reference's as markers).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from msde_ppl.data import load, make_dataset
from msde_ppl.pipeline.baselines import BASELINES, run_baseline
from msde_ppl.predict.metrics import COVERAGE_TARGET, SPREAD_SKILL_TARGET

METHODS = ("coarse_dns", "dmd", "pod_sindy", "implicit_scale", "multiscale")
FITTED = ("implicit_scale", "multiscale")
TABLE_CASES = ("wave_1d", "kdv_1d", "burgers_2d", "cylinder_2d", "shallow_water_2d")
LABELS = {"coarse_dns": "coarse DNS", "dmd": "DMD", "pod_sindy": "POD-SINDy",
          "implicit_scale": "implicit-scale", "multiscale": "multiscale K=5"}

# The reference's table (its per-case READMEs, docs/method.md §7.1 of the spec): (mean, std)
# of the test rel-L2 against the noisy data. Burgers 1D is not in the paper's table.
REFERENCE: dict[str, dict[str, tuple[float, float]]] = {
    "wave_1d": {"coarse_dns": (1.381, 0.382), "dmd": (0.492, 0.066),
                "pod_sindy": (0.469, 0.054), "implicit_scale": (0.565, 0.116),
                "multiscale": (0.079, 0.031)},
    "kdv_1d": {"coarse_dns": (0.523, 0.196), "dmd": (0.163, 0.046),
               "pod_sindy": (0.057, 0.028), "implicit_scale": (0.324, 0.078),
               "multiscale": (0.042, 0.017)},
    "burgers_2d": {"coarse_dns": (0.560, 0.273), "dmd": (0.097, 0.039),
                   "pod_sindy": (0.057, 0.045), "implicit_scale": (0.141, 0.040),
                   "multiscale": (0.028, 0.019)},
    "cylinder_2d": {"coarse_dns": (0.130, 0.040), "dmd": (0.016, 0.006),
                    "pod_sindy": (0.051, 0.024), "implicit_scale": (0.063, 0.005),
                    "multiscale": (0.009, 0.001)},
    "shallow_water_2d": {"coarse_dns": (0.861, 0.190), "dmd": (0.531, 0.227),
                         "pod_sindy": (0.535, 0.210), "implicit_scale": (0.426, 0.099),
                         "multiscale": (0.152, 0.047)},
}

# `quick`: a smoke-sized run of the same code (few trajectories, a few hundred steps, small
# ensembles, no spread calibration); its numbers only show that every column is produced.
QUICK_TRAJ = {"wave_1d": 6, "kdv_1d": 6, "burgers_1d": 6, "burgers_2d": 4,
              "shallow_water_2d": 4, "cylinder_2d": 1}  # the cylinder: one record, split in time
QUICK_STEPS = (150, 150)
QUICK_SAMPLES = 8
FULL_SAMPLES = 64

_SCORES = ("rel_l2_mean", "rel_l2_std", "rel_l2_clean_mean", "rel_l2_clean_std", "n_pairs",
           "finite")
_PROBABILISTIC = ("crps", "coverage_90", "spread_skill")


def _row(metrics: dict, source: str) -> dict:
    """The table's entry for one method from its ``metrics.json`` entry."""
    row = {k: metrics[k] for k in _SCORES if k in metrics}
    for k in _PROBABILISTIC:
        if k in metrics:
            row[k] = metrics[k]
    cal = metrics.get("calibrated")
    if cal and "skipped" not in cal:
        for k in _PROBABILISTIC:
            row[f"{k}_calibrated"] = cal.get(k)
    row["fit_wall_time_s"] = metrics.get("fit_wall_time_s")
    row["predict_wall_time_s"] = metrics.get("predict_wall_time_s",
                                             metrics.get("forecast_wall_time_s"))
    if "fit_steps" in metrics:
        row["fit_steps"] = metrics["fit_steps"]
    if "diverged_members" in metrics:
        row["diverged_members"] = f"{metrics['diverged_members']}/{metrics['n_members']}"
    settings = {k: metrics[k] for k in ("rank", "degree", "threshold", "coarse",
                                        "active_terms", "finite_fraction") if k in metrics}
    if settings:
        row["settings"] = settings
    row["source"] = source
    return row


def _from_run(run_dir: Path) -> tuple[str, xr.Dataset, dict]:
    """``(case, dataset, metrics)`` of an ``msde run`` directory."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory of `msde run` (no "
                                "metrics.json)")
    metrics = json.loads(path.read_text())
    case = metrics.get("meta", {}).get("dataset")
    if case is None or not (Path(run_dir) / "data.nc").is_file():
        raise ValueError(f"{run_dir}: metrics.json names no dataset, or data.nc is missing; "
                         "it was not written by `msde run`")
    return case, load(Path(run_dir) / "data.nc"), metrics


def build_table(
    cases: Sequence[str] = TABLE_CASES,
    methods: Sequence[str] = METHODS,
    *,
    quick: bool = False,
    runs: Sequence[Path] = (),
    extend: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Score ``methods`` on the test split of every case in ``cases``.

    Args:
        cases: built-in case names.
        methods: a subset of :data:`METHODS`.
        quick: the smoke-sized settings (:data:`QUICK_TRAJ`, :data:`QUICK_STEPS`).
        runs: ``msde run`` directories whose fitted models' scores (and data) stand in for
            fitting a case here.
        extend: an earlier ``msde table`` output directory; its rows for the cases not in
            ``cases`` are carried over (case order: :data:`TABLE_CASES`, then the rest).
        seed: dataset, training, forecast and POD seed.
        log: where progress lines go.

    Returns:
        ``{"settings": {...}, "cases": {case: {method: row}}}`` (rows: :func:`_row`, plus
        ``"reference"``).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    from msde_ppl.data.cases import get_case

    for case in cases:
        get_case(case)  # a clear error for an unknown name, before any work
    earlier = _earlier_table(extend, quick, methods) if extend is not None else None
    previous = {}
    for run_dir in runs:
        case, ds, metrics = _from_run(run_dir)
        previous[case] = (Path(run_dir), ds, metrics)
    table = {"cases": {}, "settings": {
        "quick": bool(quick), "seed": int(seed), "methods": list(methods),
        "created": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_avg_start": _load(),
    }}
    for case in cases:
        rows = {}
        if case in previous:
            run_dir, ds, run_metrics = previous[case]
            log(f"[{case}] models and data from {run_dir}")
            for name in FITTED:
                if name in methods and name in run_metrics:
                    rows[name] = _row(run_metrics[name], f"msde run {run_dir}")
            if "coarse_dns" in methods and "coarse_dns" in run_metrics:
                rows["coarse_dns"] = _row(run_metrics["coarse_dns"], f"msde run {run_dir}")
        else:
            n_traj = QUICK_TRAJ.get(case, 6) if quick else None
            log(f"[{case}] generating the dataset"
                + (f" ({n_traj} trajectories)" if n_traj else ""))
            ds = make_dataset(case, n_traj=n_traj, seed=seed)
            if any(m in methods for m in FITTED):
                rows.update(_fit_models(ds, case, methods, quick, seed, log))
        for name in BASELINES:
            if name in methods and name not in rows:
                log(f"[{case}] {LABELS[name]}")
                _, metrics = run_baseline(name, ds, seed=seed)
                rows[name] = _row(metrics, "this table")
        for name, row in rows.items():
            ref = REFERENCE.get(case, {}).get(name)
            row["reference"] = None if ref is None else {"rel_l2_mean": ref[0],
                                                         "rel_l2_std": ref[1]}
        table["cases"][case] = {m: rows[m] for m in methods if m in rows}
        line = ", ".join(f"{LABELS[m]} {_fmt(r.get('rel_l2_mean'))}"
                         for m, r in table["cases"][case].items())
        log(f"[{case}] rel-L2: {line}")
    table["settings"]["load_avg_end"] = _load()
    if earlier is not None:
        _carry_over(table, earlier, Path(extend))
    return table


def _earlier_table(extend: Path, quick: bool, methods: Sequence[str]) -> dict:
    """The ``table.json`` of an earlier ``msde table`` output, checked against this call."""
    path = Path(extend) / "table.json"
    if not path.is_file():
        raise FileNotFoundError(f"{extend} is not an `msde table` output (no table.json)")
    earlier = json.loads(path.read_text())
    if bool(earlier["settings"]["quick"]) != bool(quick):
        raise ValueError(f"{extend} is a {'quick' if earlier['settings']['quick'] else 'full'} "
                         "table; its rows cannot be mixed with a "
                         f"{'quick' if quick else 'full'} one")
    missing = [m for m in methods if m not in earlier["settings"]["methods"]]
    if missing:
        raise ValueError(f"{extend} has no column for {', '.join(missing)}; pass --methods "
                         f"{' '.join(earlier['settings']['methods'])} or re-score its cases")
    return earlier


def _carry_over(table: dict, earlier: dict, extend: Path) -> None:
    """Add ``earlier``'s rows of the cases ``table`` has not scored, in :data:`TABLE_CASES`
    order; rows the earlier table computed itself say so with its date."""
    created = earlier["settings"]["created"]
    carried = [c for c in earlier["cases"] if c not in table["cases"]]
    for case in carried:
        rows = {}
        for m in table["settings"]["methods"]:
            if m in earlier["cases"][case]:
                row = dict(earlier["cases"][case][m])
                if row.get("source") == "this table":
                    row["source"] = f"msde table of {created}"
                rows[m] = row
        table["cases"][case] = rows
    order = [c for c in TABLE_CASES if c in table["cases"]]
    table["cases"] = {c: table["cases"][c] for c in order + [c for c in table["cases"]
                                                             if c not in order]}
    table["settings"]["carried_over"] = {"from": str(extend), "created": created,
                                         "cases": carried,
                                         "load_avg": [earlier["settings"].get("load_avg_start"),
                                                      earlier["settings"].get("load_avg_end")]}


def _fit_models(ds, case, methods, quick, seed, log) -> dict:
    """The implicit-scale and multiscale fits of ``msde run`` (or the quick schedule)."""
    from msde_ppl.pipeline.run import run_builtin, run_schedule

    steps, micro_steps = QUICK_STEPS if quick else run_schedule(case)
    log(f"[{case}] fitting: {steps} implicit-scale + {micro_steps} multiscale steps")
    start = time.perf_counter()
    result = run_builtin(ds, case, steps=steps, micro_steps=micro_steps, seed=seed,
                         n_samples=QUICK_SAMPLES if quick else FULL_SAMPLES,
                         calibrate=not quick)
    log(f"[{case}] fitted and forecast in {time.perf_counter() - start:.0f} s")
    return {name: _row(result["metrics"][name], "this table")
            for name in FITTED if name in methods}


def _load() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


def _load_text(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "diverged"
    return f"{value:.{digits}f}"


def _error_cell(row: dict, key: str) -> str:
    """A rel-L2 cell: "diverged" for a diverged row (its non-finite scores are null after a
    JSON round trip), blank where the score was not computed."""
    value = row.get(key)
    if value is None and not _diverged(row):
        return ""
    return _fmt(value, 4)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _diverged(row: dict) -> bool:
    """A scored method whose forecast went non-finite (the table's cell and the figure's bar
    both say so)."""
    value = row.get("rel_l2_mean")
    return not row.get("finite", True) or value is None or not math.isfinite(value)


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    finite = (row.get("settings") or {}).get("finite_fraction")
    ours = (("diverged" if finite is None else f"diverged ({finite:.0%} of snapshots finite)")
            if _diverged(row) else
            f"{_fmt(row['rel_l2_mean'])} ± {_fmt(row['rel_l2_std'])}")
    ref = row.get("reference")
    return ours if ref is None else f"{ours} / {ref['rel_l2_mean']:.3f}"


def to_markdown(table: dict) -> str:
    """``table.md``: the paper-style table (ours / reference) and the details per method."""
    s = table["settings"]
    methods = s["methods"]
    mode = ("quick (smoke-sized: few trajectories and steps; not comparable with the "
            "reference)" if s["quick"] else "full (msde run's schedule)")
    load = f"{_load_text(s.get('load_avg_start'))} -> {_load_text(s.get('load_avg_end'))}"
    lines = ["# msde table", "",
             f"Settings: {mode}, seed {s['seed']}, {s['created']}, {s['machine']}, load average "
             f"{load} (1 min)." + _carried_text(s),
             "",
             "Test rel-L2 mean ± std against the noisy data (ours / the reference's):", "",
             "| case | " + " | ".join(LABELS[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for case, rows in table["cases"].items():
        lines.append(f"| {case} | " + " | ".join(_cell(rows.get(m)) for m in methods) + " |")
    lines += _calibration_lines(table)
    lines += ["", "Details (test split; CRPS, 90% coverage and spread–skill uncalibrated -> "
              "calibrated on val; times in seconds):", "",
              "| case | method | rel-L2 | vs clean | CRPS | 90% coverage | spread–skill | "
              "training | prediction | source |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for case, rows in table["cases"].items():
        for m, r in rows.items():
            def pair(key, r=r):
                if key not in r:
                    return ""
                cal = r.get(f"{key}_calibrated")
                return _fmt(r[key], 4) + ("" if cal is None else f" -> {_fmt(cal, 4)}")
            lines.append(
                f"| {case} | {LABELS[m]} | {_error_cell(r, 'rel_l2_mean')} | "
                f"{_error_cell(r, 'rel_l2_clean_mean')} | {pair('crps')} | "
                f"{pair('coverage_90')} | {pair('spread_skill')} | "
                f"{_seconds(r.get('fit_wall_time_s'))} | {_seconds(r.get('predict_wall_time_s'))}"
                f" | {r['source']} |")
    return "\n".join(lines) + "\n"


def _calibration_lines(table: dict) -> list[str]:
    """The probabilistic methods' test scores after the val-fitted calibration (uncalibrated
    where a row has none), each against the targets :data:`COVERAGE_TARGET` and
    :data:`SPREAD_SKILL_TARGET`."""
    lines = ["", "Test CRPS, 90% coverage and spread–skill of the ensembles, calibrated on val "
             f"(targets: coverage in [{COVERAGE_TARGET[0]}, {COVERAGE_TARGET[1]}], spread–skill "
             f"in [{SPREAD_SKILL_TARGET[0]}, {SPREAD_SKILL_TARGET[1]}]):", "",
             "| case | method | CRPS | 90% coverage | spread–skill | targets |",
             "|---|---|---|---|---|---|"]
    for case, rows in table["cases"].items():
        for m, r in rows.items():
            if "coverage_90" not in r:
                continue
            cal = r.get("coverage_90_calibrated") is not None
            crps, cov, ss = (r.get(f"{k}_calibrated" if cal else k) for k in _PROBABILISTIC)
            met = (cov is not None and ss is not None
                   and COVERAGE_TARGET[0] <= cov <= COVERAGE_TARGET[1]
                   and SPREAD_SKILL_TARGET[0] <= ss <= SPREAD_SKILL_TARGET[1])
            lines.append(f"| {case} | {LABELS[m]} | {_fmt(crps, 4)} | {_fmt(cov)} | "
                         f"{_fmt(ss, 2)} | {'met' if met else 'missed'}"
                         f"{'' if cal else ' (uncalibrated)'} |")
    return lines


def _carried_text(settings: dict) -> str:
    carried = settings.get("carried_over")
    if not carried or not carried["cases"]:
        return ""
    return (f" Rows of {', '.join(carried['cases'])} carried over from the table of "
            f"{carried['created']} ({carried['from']}).")


def plot_table(table: dict):
    """Bars of our rel-L2 per case and method (log scale), the reference's as black marks."""
    import matplotlib.pyplot as plt

    cases = list(table["cases"])
    methods = table["settings"]["methods"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.9 * len(cases), 3.6))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = np.arange(len(cases)) + (j - (len(methods) - 1) / 2) * width
        rows = [table["cases"][c].get(m) for c in cases]
        ours = [np.nan if row is None or _diverged(row) else row["rel_l2_mean"] for row in rows]
        ax.bar(xs, ours, width, label=LABELS[m], color=f"C{j}")
        for x, row in zip(xs, rows, strict=True):
            if row is not None and _diverged(row):  # scored, but no number
                ax.text(x, 0.03, "diverged", rotation=90, ha="center", va="bottom",
                        fontsize=7, color=f"C{j}", transform=ax.get_xaxis_transform())
        refs = [(table["cases"][c].get(m) or {}).get("reference") for c in cases]
        ax.scatter(xs, [r["rel_l2_mean"] if r else np.nan for r in refs], marker="_", s=160,
                   color="k", zorder=3, label="reference" if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(cases)), cases)
    ax.set_ylabel("test rel-L2 (vs noisy data)")
    ax.legend(fontsize=7, ncols=2)
    ax.set_title("msde table" + (" (quick: smoke-sized)" if table["settings"]["quick"] else ""))
    fig.tight_layout()
    return fig


def write_table(table: dict, out: Path) -> Path:
    """Write ``table.json``, ``table.md`` and ``table.png`` into the new directory ``out``."""
    import matplotlib.pyplot as plt

    from msde_ppl.atomic import write_json, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    write_json(out / "table.json", table)
    write_text(out / "table.md", to_markdown(table))
    fig = plot_table(table)
    fig.savefig(out / "table.png", dpi=110)
    plt.close(fig)
    return out
