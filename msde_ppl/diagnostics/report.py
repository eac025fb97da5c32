"""``msde report DIR``: figures, ArviZ posterior and a markdown report of a run directory.

A run directory written by ``msde run`` holds ``metrics.json``, ``data.nc`` and, per fitted model
(``multiscale``, ``implicit_scale``), a saved :class:`~msde_ppl.Fitted` (``fitted.json``,
``params.eqx``, ``losses.npy``), ``forecast.nc`` and ``posterior.nc``. :func:`model_report`
writes the same figures and section for any fitted program and dataset. :func:`build_report`
writes into a NEW directory (default ``RUN_DIR/report``; an existing one is refused):

- ``report.md``: the metrics table, and per model the ELBO convergence check, the calibration
  numbers, the ArviZ summary of the physical parameters and the figures;
- ``lead_time.png``: rel-L2 (with the persistence and climatology baselines), CRPS and 90%
  coverage of every model over lead time;
- per model ``MODEL_*.png``: space-time panels (2D: field maps at several times), macro/micro
  decomposition, time slices with 5-95% bands, energy spectra, latent paths, forest plot, ELBO
  trace, coverage curve, PIT histogram, spread-skill;
- per model ``MODEL_posterior.nc``: the ArviZ tree of :mod:`msde_ppl.diagnostics.arviz_io` (globals
  and latent paths of a test window, compressed; the decoded fields are left out to keep it small).

A directory of ``msde fit`` (one fitted model, ``fitted.json`` at its top) is reported the same
way, as the ``fitted`` model: its data are the file ``msde fit`` recorded in ``run.json`` (or
``data``; a file other than the one fitted is named in a warning), and its scores and lead-time
figure come from an ``msde forecast`` directory of it (``forecast_dir``) when one is given.

Calibration (coverage curve, PIT) needs ensemble members, which ``forecast.nc`` does not keep:
the first test trajectory is re-forecast with ``n_samples`` members (``return_samples=True``);
spread-skill and CRPS use the stored ``forecast.nc`` (all test trajectories).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from msde_ppl.data import load
from msde_ppl.data.splits import select_split, split_names
from msde_ppl.diagnostics import arviz_io, checks, plots
from msde_ppl.pipeline.fitted import Fitted
from msde_ppl.pipeline.rundir import file_sha256
from msde_ppl.predict.forecast import forecast
from msde_ppl.predict.metrics import lead_time_metrics

__all__ = ["MODEL_KEYS", "build_report", "model_report"]

MODEL_KEYS = ("multiscale", "implicit_scale")
_METRIC_COLUMNS = ("rel_l2_mean", "rel_l2_std", "rel_l2_clean_mean", "crps", "coverage_90",
                   "spread_skill")
#: scores also shown after the post-hoc spread calibration (metrics["calibrated"])
_CALIBRATED_COLUMNS = ("crps", "coverage_90", "spread_skill")


def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def _metrics_section(metrics: dict) -> list[str]:
    methods = [k for k in metrics if k != "meta" and isinstance(metrics[k], dict)]
    if not methods:
        return ["(no metrics.json)"]
    def calibrated(m: str, c: str) -> object:
        cal = metrics[m].get("calibrated")
        return None if not isinstance(cal, dict) else cal.get(c)

    rows = [[m] + [_fmt(metrics[m].get(c)) for c in _METRIC_COLUMNS]
            + [_fmt(calibrated(m, c)) for c in _CALIBRATED_COLUMNS] for m in methods]
    baselines = next((metrics[m]["baselines"] for m in methods if "baselines" in metrics[m]), {})
    blank = [_fmt(None)] * (len(_METRIC_COLUMNS) - 2 + len(_CALIBRATED_COLUMNS))
    rows += [[f"{name} (trivial baseline)", _fmt(b.get("rel_l2_mean")), _fmt(b.get("rel_l2_std")),
              *blank] for name, b in baselines.items()]
    lines = _table(["method", *_METRIC_COLUMNS,
                    *(f"{c} (calibrated on val)" for c in _CALIBRATED_COLUMNS)], rows)
    meta = metrics.get("meta", {})
    if meta:
        lines += ["", "Run: " + ", ".join(f"{k} = {_fmt(meta[k])}" for k in
                                          ("dataset", "n_traj", "grid", "steps", "seed")
                                          if k in meta)]
    return lines


def model_report(key: str, fitted: Fitted, ds: xr.Dataset, out: Path, *,
                 fc: xr.Dataset | None = None, n_samples: int = 32, n_draws: int = 100,
                 seed: int = 0, progress: bool = False) -> list[str]:
    """Figures (``out/KEY_*.png``), the ArviZ tree (``out/KEY_posterior.nc``) and the markdown
    lines of one fitted program on the test split of ``ds`` (forecast first if ``fc`` is
    ``None``). ``progress`` prints a line (stderr) as each phase starts."""
    name = key.replace("_", "-")

    def say(message: str) -> None:
        if progress:
            print(f"report, {name} model: {message} ...", file=sys.stderr, flush=True)

    eval_steps = ds.attrs.get("eval_steps")
    if fc is None:
        say("forecasting the test split")
        fc = forecast(jax.random.key(seed), fitted, ds, split="test", n_samples=n_samples,
                      n_steps=eval_steps, progress=progress)
    say("forecast figures")
    lines = [f"## {key.replace('_', '-')} model", ""]
    figs = {}
    title = f"{key.replace('_', '-')} model, test trajectory 0"
    if "y" in fc.dims:  # 2D: truth / mean / std / |error| maps at several times
        figs["field maps"] = _save(plots.plot_field_maps(fc, 0, title=title),
                                   out / f"{key}_maps.png")
    else:
        figs["space-time"] = _save(plots.plot_space_time(fc, 0, title=title),
                                   out / f"{key}_space_time.png")
    if "macro" in fc:
        figs["macro/micro decomposition"] = _save(plots.plot_decomposition(fc, 0),
                                                  out / f"{key}_decomposition.png")
    figs["time slices"] = _save(plots.plot_time_slices(fc, 0), out / f"{key}_time_slices.png")

    # calibration: re-forecast the first test trajectory keeping the members (with the spread
    # factor of the run's forecast, if it was calibrated)
    test = select_split(ds, "test").isel(traj=slice(0, 1))
    factor = gain = weight = None
    if fc is not None and "residual_gain" in fc and fc["residual_gain"].sizes["time"] == \
            fc.sizes["time"]:
        gain = np.asarray(fc["residual_gain"].values, np.float64)
        if "micro_weight" in fc:
            weight = np.asarray(fc["micro_weight"].values, np.float64)
    if fc is not None and "spread_factor" in fc:
        factor = np.asarray(fc["spread_factor"].values, np.float64)
        spread = _residual_spread(fc)
        per_traj = "" if spread is None or spread.exponent == 0 else (
            f", times a per-trajectory multiplier (r / {spread.reference:.3g})^"
            f"{spread.exponent:.2f} of the first snapshot's reconstruction residual r")
        tail = _spread_tail(fc)
        tail = "" if tail is None else (f"; its members' deviations follow a Student-t tail "
                                        f"with {tail:g} degrees of freedom")
        widening = float(fc["spread_factor"].attrs.get("spread_widening", 1.0))
        if widening > 1.0:
            tail += (f"; the factor includes a widening of {widening:.3g}, where Gaussian "
                     "members at the errors' RMS covered less than 90% of the val errors")
        lines += [f"The forecast is calibrated: its spread is scaled by a factor fitted on the "
                  f"val split (median {np.median(factor):.3g}{per_traj}{tail}, "
                  "docs/calibration.md); the metrics table shows the scores before and after.",
                  ""]
    say("calibration checks (a forecast of test trajectory 0 keeping its members)")
    cal = forecast(jax.random.key(seed + 1), fitted, test, split="test", n_samples=n_samples,
                   n_steps=eval_steps, return_samples=True,
                   spread_factor=None if factor is None or factor.size != fc.sizes["time"]
                   else factor, residual_gain=gain, micro_weight=weight,
                   residual_spread=_residual_spread(fc),
                   spread_tail=_spread_tail(fc))
    figs["energy spectra"] = _save(plots.plot_energy_spectrum(cal),
                                   out / f"{key}_spectrum.png")
    curve = checks.coverage_curve(cal["samples"], cal["obs"])
    # lead time first: blocks of consecutive lead times for the correlation-aware PIT test
    pit = checks.pit_histogram(
        checks.pit_values(cal["samples"].transpose("sample", "time", ...),
                          cal["obs"].transpose("time", ...)), n_blocks=10)
    ss = checks.spread_skill(fc)
    figs["coverage"] = _save(plots.plot_coverage(curve), out / f"{key}_coverage.png")
    figs["PIT histogram"] = _save(plots.plot_pit(pit), out / f"{key}_pit.png")
    figs["spread-skill"] = _save(plots.plot_spread_skill(ss), out / f"{key}_spread_skill.png")

    lines += ["### Training", ""]
    try:
        conv = checks.elbo_convergence(fitted.losses)
        lines.append(f"ELBO convergence: **{'converged' if conv.converged else 'NOT converged'}**"
                     f" (smoothed loss {conv.smoothed_prev:.4g} -> {conv.smoothed_end:.4g} over "
                     f"the last {conv.chunk} steps, relative change {conv.rel_change:.2g}, "
                     f"tolerance {conv.tol:g}).")
    except ValueError as err:
        conv = None
        lines.append(f"ELBO convergence: not assessed ({err}).")
    figs["ELBO trace"] = _save(plots.plot_elbo_trace(fitted.losses, conv),
                               out / f"{key}_elbo.png")

    lines += ["", "### Calibration", ""]
    summary = checks.calibration_summary(fc)
    rows = [["90% coverage (all test trajectories)", _fmt(summary["coverage_90"])],
            ["mean CRPS", _fmt(summary["crps"])],
            ["spread / RMSE (mean over lead time)", _fmt(summary["spread_skill_ratio"])],
            [f"PIT uniformity p-value (trajectory 0, {n_samples} members; design effect "
             f"{pit['design_effect']:.3g} from 10 runs of lead times)", _fmt(pit["p_value"])]]
    rows += [[f"coverage of central {lvl:.0%} intervals (trajectory 0)", _fmt(emp)]
             for lvl, emp in zip(curve["level"].values, curve["empirical"].values, strict=True)]
    lines += _table(["check", "value"], rows)

    say(f"posterior draws ({n_draws}) and the ArviZ summary")
    # globals and latent paths only (the decoded fields of every draw would make the file
    # ~100x larger; the forecast is the run's own forecast.nc), compressed
    tree = arviz_io.to_datatree(fitted, ds, None, split="test", traj=0, n_draws=n_draws,
                                seed=seed, decoded=False)
    arviz_io.save_datatree(tree, out / f"{key}_posterior.nc")
    table = arviz_io.summary(tree, warn=False)  # the warning is written below
    lines += ["", "### Posterior of the global parameters (ArviZ)", "",
              f"Variational posterior, {n_draws} draws; latent paths over a window of "
              f"{tree.attrs['window_length']} snapshots of test trajectory 0 "
              f"(`{key}_posterior.nc`).", ""]
    stale = fitted.stale_scales()
    if stale:
        lines += ["**Warning**: the posterior scales of " + ", ".join(
            f"`{k}` ({v:.0%} of its coordinates)" for k, v in stale.items())
            + " are still within 5% of their initial value: their uncertainty was not "
            "learned, read those intervals with care.", ""]
    lines += _table(["parameter", *map(str, table.columns)],
                    [[str(i), *(_fmt(v if isinstance(v, bool | np.bool_) else float(v))
                                for v in row)] for i, row in
                     zip(table.index, table.to_numpy(), strict=True)])
    figs["latent paths"] = _save(plots.plot_latent_paths(tree["posterior"].to_dataset()),
                                 out / f"{key}_latent_paths.png")
    figs["physical parameters"] = _save(plots.plot_forest(tree["posterior"].to_dataset()),
                                        out / f"{key}_forest.png")
    lines += ["", "### Figures", ""]
    lines += [f"![{name}]({path})" for name, path in figs.items()]
    return lines + [""]


def _fit_dir_data(run_dir: Path, data: str | Path | xr.Dataset | None) -> xr.Dataset:
    """The dataset of an ``msde fit`` directory: ``data``, or the file its ``run.json`` names;
    a file other than the fitted one (by SHA-256) is named in a warning."""
    record = {}
    if (run_dir / "run.json").is_file():
        record = json.loads((run_dir / "run.json").read_text())
    if isinstance(data, xr.Dataset):
        return data
    path = Path(data) if data is not None else record.get("args", {}).get("data")
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"{run_dir} is a directory of `msde fit`; give its data (--data FILE): "
            + ("its run.json names none" if path is None else f"{path} does not exist"))
    digest = record.get("data_sha256")
    if digest is not None and file_sha256(path) != digest:
        warnings.warn(f"{path} is not the file the model in {run_dir} was fitted to (its "
                      "SHA-256 differs): the test split may hold trajectories it was fitted on",
                      UserWarning, stacklevel=3)
    return load(path)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 data: str | Path | xr.Dataset | None = None,
                 forecast_dir: str | Path | None = None,
                 n_samples: int = 32, n_draws: int = 100, seed: int = 0,
                 progress: bool = False) -> Path:
    """Regenerate every figure and write ``report.md`` for a run directory of ``msde run`` or
    a model directory of ``msde fit``.

    Args:
        run_dir: the run directory (``msde run``) or model directory (``msde fit``).
        out_dir: directory to create (default ``run_dir/report``); must not exist.
        data: an ``msde fit`` directory's dataset (a path, or a labelled ``xarray.Dataset``);
            default: the file its ``run.json`` records. Not used for ``msde run`` directories
            (their ``data.nc``).
        forecast_dir: an ``msde forecast`` directory of the ``msde fit`` model, whose
            ``forecast.nc`` and ``metrics.json`` the report shows (default: the report
            forecasts the test split itself, without the metrics table).
        n_samples: ensemble members of the calibration re-forecast.
        n_draws: posterior draws of the ArviZ tree.
        seed: PRNG seed.
        progress: print a line (stderr) as each phase starts.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir`` is neither kind of directory, or its data are missing.
        FileExistsError: ``out_dir`` exists.
        ValueError: the data have no test split.
    """
    run_dir = Path(run_dir)
    metrics = {}
    if (run_dir / "fitted.json").is_file():  # msde fit: one model at the top
        models = {"fitted": run_dir}
        ds = _fit_dir_data(run_dir, data)
        fc_files = {}
        if forecast_dir is not None:
            forecast_dir = Path(forecast_dir)
            if not (forecast_dir / "forecast.nc").is_file():
                raise FileNotFoundError(f"{forecast_dir} is not a directory of `msde forecast`:"
                                        " forecast.nc is missing")
            fc_files["fitted"] = forecast_dir / "forecast.nc"
            if (forecast_dir / "metrics.json").is_file():
                metrics = json.loads((forecast_dir / "metrics.json").read_text())
                if "model" in metrics:
                    metrics["fitted"] = metrics.pop("model")
    else:
        if not (run_dir / "data.nc").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory of `msde run` (data.nc "
                                    "is missing) nor a model directory of `msde fit` "
                                    "(fitted.json is missing)")
        models = {k: run_dir / k for k in MODEL_KEYS if (run_dir / k / "fitted.json").is_file()}
        if not models:
            raise FileNotFoundError(f"{run_dir} has no fitted model ({', '.join(MODEL_KEYS)}/"
                                    "fitted.json)")
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
        ds = load(run_dir / "data.nc")
        fc_files = {k: d / "forecast.nc" for k, d in models.items()
                    if (d / "forecast.nc").is_file()}
    if "test" not in split_names(ds):
        raise ValueError("the report scores the test split, and the data have none: label "
                         "them (msde_ppl.data.with_held_out_splits applies msde fit's rule)")
    keys = list(models)
    out = run_dir / "report" if out_dir is None else Path(out_dir)
    if out.exists():
        raise FileExistsError(f"report directory {out} already exists; choose another "
                              "output directory")
    out.mkdir(parents=True)
    lines = [f"# Report of `{run_dir}`", "", "## Metrics (test split)", ""]
    lines += _metrics_section(metrics) + [""]
    forecasts = {}
    for key, path in fc_files.items():
        with xr.open_dataset(path, engine="h5netcdf") as f:
            forecasts[key] = f.load()
    if forecasts:
        train = select_split(ds, "train") if "train" in split_names(ds) else None
        scores = {k.replace("_", "-"): lead_time_metrics(f, train, ds.attrs.get("eval_steps"))
                  for k, f in forecasts.items()}
        name = _save(plots.plot_lead_time(scores), out / "lead_time.png")
        lines += ["Scores by lead time on the test split, against the persistence (initial "
                  "snapshot held) and climatology (training mean field) forecasts:", "",
                  f"![scores by lead time]({name})", ""]
    for key in keys:
        fc = forecasts.get(key)
        lines += model_report(key, Fitted.load(models[key]), ds, out, fc=fc,
                              n_samples=n_samples, n_draws=n_draws, seed=seed,
                              progress=progress)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _residual_spread(fc):
    """The :class:`ResidualSpread` a calibrated forecast was made with (``None`` if none)."""
    from msde_ppl.predict.calibration import ResidualSpread

    attrs = fc["spread_factor"].attrs if fc is not None and "spread_factor" in fc else {}
    if "residual_spread_exponent" not in attrs:
        return None
    return ResidualSpread(float(attrs["residual_spread_exponent"]),
                          float(attrs["residual_spread_reference"]))


def _spread_tail(fc) -> float | None:
    """The degrees of freedom of the members' tail a calibrated forecast was made with
    (``None``: Gaussian members, or not calibrated)."""
    attrs = fc["spread_factor"].attrs if fc is not None and "spread_factor" in fc else {}
    return float(attrs["spread_tail_dof"]) if "spread_tail_dof" in attrs else None
