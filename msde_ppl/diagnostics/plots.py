"""Figures of forecasts (matplotlib; the backend is left to the caller: inline in notebooks,
``Agg`` in the command line).

- :func:`plot_space_time`: truth, forecast mean, std and |error| of one trajectory as space-time
  panels (1D data) with colour bars;
- :func:`plot_field_maps`: 2D data: truth / mean / std / |error| maps at several times;
- :func:`plot_vorticity`: a 2D velocity (fields ``u``, ``v``): vorticity of the truth, of the
  forecast mean and the ensemble std of the members' vorticity at a few times;
- :func:`plot_radial_profile`: 2D data: azimuthal averages about the domain's centre (a radial
  dam break) of truth, mean and the 5–95% band at several times;
- :func:`plot_decomposition`: the macro part :math:`P\\zeta` and the micro correction of the mean
  at a few times, against the observations;
- :func:`plot_time_slices`: forecast mean with its 5–95% band, observations and the clean field
  at a few times;
- :func:`plot_energy_spectrum`: spatial energy spectra of truth and forecast;
- :func:`plot_latent_paths`: posterior macro nodes and micro coordinates over time with bands;
- :func:`plot_forest`: intervals of the physical parameters (diffusion, observation variances);
- :func:`plot_elbo_trace`: training loss with its moving average and the convergence check;
- :func:`plot_coverage`, :func:`plot_pit`, :func:`plot_spread_skill`: calibration.

Every function takes xarray / NumPy inputs (e.g. the groups of the ArviZ tree of
:mod:`msde_ppl.diagnostics.arviz_io`) and returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

__all__ = [
    "plot_coverage",
    "plot_decomposition",
    "plot_elbo_trace",
    "plot_energy_spectrum",
    "plot_field_maps",
    "plot_forest",
    "plot_latent_paths",
    "plot_pit",
    "plot_radial_profile",
    "plot_space_time",
    "plot_spread_skill",
    "plot_time_slices",
    "plot_vorticity",
    "vorticity",
]


def _field(da: xr.DataArray) -> xr.DataArray:
    return da.isel(field=0) if "field" in da.dims else da


def _units(da: xr.DataArray | None) -> str:
    """`` [units]`` from a ``units`` attribute (``"1"``: dimensionless, nothing shown)."""
    units = None if da is None else da.attrs.get("units")
    return f" [{units}]" if units and units != "1" else ""


def _label(da: xr.DataArray, fallback: str = "u") -> str:
    """The field's name and units from its attributes: ``"vorticity [1/s]"``."""
    return f"{da.attrs.get('long_name', fallback)}{_units(da)}"


def _time_text(time: xr.DataArray) -> str:
    """``"t = 0.26 s"``: a time coordinate's value with its units (none if dimensionless)."""
    units = time.attrs.get("units")
    return f"t = {float(time):.3g}" + (f" {units}" if units and units != "1" else "")


def _coord_label(da: xr.DataArray, name: str) -> str:
    """Axis label of coordinate ``name`` with its units: ``"x [m]"``, ``"time t [s]"``."""
    coord = da.coords.get(name)
    return ("time t" if name == "time" else name) + _units(coord)


def plot_space_time(fc: xr.Dataset, traj: int = 0, title: str = "") -> plt.Figure:
    """Truth / mean / std / |error| over (x, t) for a 1D forecast (2D: the last time's maps).

    Truth and mean share one colour scale; std and |error| share another that starts at 0, so
    the spread reads directly as the expected error. Names and units come from the data's
    ``long_name`` / ``units`` attributes."""
    one = fc.isel(traj=traj)
    panels = [("observed", _field(one["obs"])), ("forecast mean", _field(one["mean"])),
              ("forecast std", _field(one["std"])),
              ("|error|", abs(_field(one["obs"]) - _field(one["mean"])))]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), constrained_layout=True)
    is_1d = "y" not in panels[0][1].dims
    shown = [da if is_1d else da.isel(time=-1) for _, da in panels]
    vmin, vmax = float(shown[0].min()), float(shown[0].max())
    top = max(float(shown[2].max()), float(shown[3].max()))
    label = _label(one["obs"])
    for ax, (name, _), da in zip(axes, panels, shown, strict=True):
        shared = name in ("observed", "forecast mean")
        kwargs = dict(vmin=vmin, vmax=vmax) if shared else dict(vmin=0.0, vmax=top)
        cmap = "RdBu_r" if shared else "magma"
        if is_1d:
            im = ax.pcolormesh(da["x"], da["time"], da.values, shading="auto", cmap=cmap,
                               **kwargs)
            ax.set_xlabel(_coord_label(da, "x"))
            ax.set_ylabel(_coord_label(da, "time"))
        else:
            im = ax.pcolormesh(da["x"], da["y"], da.values.T, shading="auto", cmap=cmap,
                               **kwargs)
            ax.set_xlabel(_coord_label(da, "x"))
            ax.set_ylabel(_coord_label(da, "y"))
            name = f"{name} ({_time_text(da['time'])})"
        ax.set_title(name)
        bar = label if shared else f"{name.split(' (')[0]}{_units(one['obs'])}"
        fig.colorbar(im, ax=ax, label=bar)
    if title:
        fig.suptitle(title)
    return fig


def _times(n: int, n_times: int) -> np.ndarray:
    return np.linspace(0, n - 1, n_times).astype(int)


def plot_field_maps(fc: xr.Dataset, traj: int = 0, n_times: int = 4, title: str = ""
                    ) -> plt.Figure:
    """2D forecast of one trajectory: rows truth / forecast mean / forecast std / |error|,
    columns ``n_times`` times from the first to the last; truth and mean share a colour
    scale, std and |error| share another (so the std reads as the expected error)."""
    one = fc.isel(traj=traj)
    obs, mean, std = (_field(one[k]) for k in ("obs", "mean", "std"))
    if "y" not in obs.dims:
        raise ValueError("plot_field_maps needs 2D data (dims x and y); use plot_space_time")
    err = abs(obs - mean)
    steps = _times(one.sizes["time"], n_times)
    rows = [("observed", obs, "RdBu_r"), ("forecast mean", mean, "RdBu_r"),
            ("forecast std", std, "magma"), ("|error|", err, "magma")]
    lo, hi = float(obs.min()), float(obs.max())
    top = float(max(std.isel(time=steps).max(), err.isel(time=steps).max()))
    fig, axes = plt.subplots(4, n_times, figsize=(3.2 * n_times + 1.2, 11), squeeze=False,
                             constrained_layout=True)
    for r, (name, da, cmap) in enumerate(rows):
        limits = dict(vmin=lo, vmax=hi) if cmap == "RdBu_r" else dict(vmin=0.0, vmax=top)
        for c, i in enumerate(steps):
            ax = axes[r, c]
            snap = da.isel(time=i)
            im = ax.pcolormesh(snap["x"], snap["y"], snap.values.T, shading="auto", cmap=cmap,
                               **limits)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7, labelbottom=r == len(rows) - 1, labelleft=c == 0)
            if r == 0:
                ax.set_title(_time_text(snap['time']))
            if r == len(rows) - 1:
                ax.set_xlabel(_coord_label(snap, "x"))
            if c == 0:
                ax.set_ylabel(f"{name}\n{_coord_label(snap, 'y')}")
        fig.colorbar(im, ax=axes[r].tolist(), shrink=0.9,
                     label=_label(obs) if cmap == "RdBu_r" else f"{name}{_units(obs)}")
    if title:
        fig.suptitle(title)
    return fig


def vorticity(velocity: xr.DataArray) -> xr.DataArray:
    """Vorticity :math:`\\omega = \\partial_x v - \\partial_y u` of a 2D velocity (a ``field``
    dim holding ``u`` and ``v``, dims ``x`` and ``y``), by second-order central differences
    (one-sided at the edges) on the data's coordinates; the ``field`` dim is dropped."""
    if "field" not in velocity.dims or sorted(map(str, velocity["field"].values)) != ["u", "v"]:
        raise ValueError("vorticity needs a 2D velocity: a 'field' dim with 'u' and 'v'")
    u, v = velocity.sel(field="u"), velocity.sel(field="v")
    dv_dx = v.copy(data=np.gradient(v.values, v["x"].values, axis=v.get_axis_num("x")))
    du_dy = u.copy(data=np.gradient(u.values, u["y"].values, axis=u.get_axis_num("y")))
    out = (dv_dx - du_dy).drop_vars("field", errors="ignore")
    return out.rename("vorticity")


def plot_vorticity(obs: xr.DataArray, samples: xr.DataArray, times: Sequence[int] | None = None,
                   title: str = "") -> plt.Figure:
    """Rows: the vorticity of the truth, of the forecast mean (the mean of the members'
    vorticity: it is linear in the velocity) and the std of the members' vorticity, at
    ``times`` (indices; default three from the first lead time to the last).

    Args:
        obs: the true velocity of one trajectory, dims ``(time, field, x, y)``.
        samples: the ensemble's velocity draws, dims ``(sample, time, field, x, y)``.
    """
    n = obs.sizes["time"]
    times = list(_times(n, 4)[1:] if times is None else times)
    truth = vorticity(obs.isel(time=times))
    members = vorticity(samples.isel(time=times))
    rows = [("truth", truth, "RdBu_r"), ("forecast mean", members.mean("sample"), "RdBu_r"),
            ("forecast std", members.std("sample"), "magma")]
    top = float(np.nanpercentile(np.abs(truth.values), 99.5))
    fig, axes = plt.subplots(3, len(times), figsize=(4.2 * len(times) + 1.2, 6.4),
                             squeeze=False, constrained_layout=True)
    std_top = float(rows[2][1].max())
    for r, (name, da, cmap) in enumerate(rows):
        limits = dict(vmin=-top, vmax=top) if cmap == "RdBu_r" else dict(vmin=0.0, vmax=std_top)
        for c in range(len(times)):
            ax = axes[r, c]
            snap = da.isel(time=c)
            im = ax.pcolormesh(snap["x"], snap["y"], snap.values.T, shading="auto", cmap=cmap,
                               **limits)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7, labelbottom=r == 2, labelleft=c == 0)
            if r == 0:
                ax.set_title(_time_text(snap["time"]))
            if r == 2:
                ax.set_xlabel(_coord_label(snap, "x"))
            if c == 0:
                ax.set_ylabel(f"{name}\n{_coord_label(snap, 'y')}")
        fig.colorbar(im, ax=axes[r].tolist(), shrink=0.9, label=f"{name} vorticity")
    if title:
        fig.suptitle(title)
    return fig


def _radial_average(da: xr.DataArray, edges: np.ndarray) -> np.ndarray:
    """Azimuthal average of ``(time, x, y)`` values about the grid's centre over the radius
    bins ``edges``: ``(time, bins)``."""
    x, y = da["x"].values, da["y"].values
    r = np.hypot(x[:, None] - 0.5 * (x[0] + x[-1]), y[None, :] - 0.5 * (y[0] + y[-1]))
    index = np.digitize(r.ravel(), edges) - 1
    values = da.values.reshape(da.shape[0], -1)
    keep = (index >= 0) & (index < len(edges) - 1)
    sums = np.stack([np.bincount(index[keep], v[keep], len(edges) - 1) for v in values])
    counts = np.bincount(index[keep], minlength=len(edges) - 1)
    return sums / np.maximum(counts, 1)


def plot_radial_profile(fc: xr.Dataset, traj: int = 0, n_times: int = 4) -> plt.Figure:
    """Radial profiles (azimuthal averages about the domain's centre) of the observations, the
    clean field, the forecast mean and its 5–95% band at ``n_times`` times: the radial dam
    break's fronts in one line per time."""
    one = fc.isel(traj=traj)
    steps = _times(one.sizes["time"], n_times)
    x = one["x"].values
    width = float(x[1] - x[0])
    edges = np.arange(0.0, 0.5 * float(x[-1] - x[0]) + width, width)
    centres = 0.5 * (edges[1:] + edges[:-1])
    profile = {k: _radial_average(_field(one[k]).isel(time=steps), edges)
               for k in ("obs", "mean", "q05", "q95", "obs_u_clean") if k in one}
    fig, axes = plt.subplots(1, n_times, figsize=(4 * n_times, 3.4), sharey=True,
                             constrained_layout=True, squeeze=False)
    for c, i in enumerate(steps):
        ax = axes[0, c]
        ax.fill_between(centres, profile["q05"][c], profile["q95"][c], color="C0", alpha=0.3,
                        lw=0, label="5–95% band (averaged)")
        ax.plot(centres, profile["obs"][c], ".", color="0.3", ms=3, label="observed")
        if "obs_u_clean" in profile:
            ax.plot(centres, profile["obs_u_clean"][c], color="k", lw=1, label="clean")
        ax.plot(centres, profile["mean"][c], color="C0", lw=1.5, label="forecast mean")
        ax.set_title(_time_text(one['time'][i]))
        ax.set_xlabel("radius r" + _units(one.coords.get("x")))
    axes[0, 0].set_ylabel(f"azimuthal average of {_label(one['obs'])}")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"radial profiles, trajectory {traj}")
    return fig


def plot_decomposition(fc: xr.Dataset, traj: int = 0, n_times: int = 4) -> plt.Figure:
    """Macro part :math:`P\\zeta` and micro correction of the forecast (ensemble means with
    ±2 ensemble std bands) and their sum against the observations at a few times (2D data: a
    cut at the middle ``y``). A model without a micro state (implicit-scale: its correction is
    zero) shows the macro part only, and says so."""
    one = fc.isel(traj=traj)
    steps = np.linspace(0, one.sizes["time"] - 1, n_times).astype(int)
    has_micro = bool(np.any(np.asarray(_field(one["micro"]).values) != 0))
    fig, axes = plt.subplots(1, n_times, figsize=(4 * n_times, 3.4), sharey=True,
                             constrained_layout=True, squeeze=False)
    for ax, i in zip(axes[0], steps, strict=True):
        snap = one.isel(time=i)
        x = _cut(snap["obs"])["x"].values
        ax.plot(x, _cut(snap["obs"]).values, color="0.6", lw=2.5, label="observed")
        parts = [("macro", "macro  Pζ", "C0")] + ([("micro", "micro correction", "C1")]
                                                  if has_micro else [])
        for name, label, color in parts:
            mean = _cut(snap[name]).values
            ax.plot(x, mean, color=color, label=label)
            if f"{name}_std" in snap:
                spread = 2 * _cut(snap[f"{name}_std"]).values
                ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.25, lw=0,
                                label=f"{label.split()[0]} ±2 std")
        if has_micro:
            ax.plot(x, _cut(snap["mean"]).values, "k--", lw=1, label="mean (macro + micro)")
        ax.set_title(_time_text(snap['time']))
        ax.set_xlabel(_coord_label(snap, "x"))
    axes[0, 0].set_ylabel(_label(one["obs"]))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center",
               ncol=6, fontsize=8)
    fig.suptitle("macro / micro decomposition of the forecast"
                 + ("" if has_micro else " (no micro state: implicit-scale model)"))
    return fig


def _cut(da: xr.DataArray) -> xr.DataArray:
    """One field; 2D data: the horizontal cut through the middle of ``y``."""
    da = _field(da)
    return da.isel(y=da.sizes["y"] // 2) if "y" in da.dims else da


def plot_time_slices(fc: xr.Dataset, traj: int = 0, n_times: int = 4) -> plt.Figure:
    """Forecast mean and 5–95% band against the observations (and the clean field) at a few
    lead times (2D data: a cut at the middle ``y``)."""
    one = fc.isel(traj=traj)
    steps = np.linspace(0, one.sizes["time"] - 1, n_times).astype(int)
    fig, axes = plt.subplots(1, n_times, figsize=(4 * n_times, 3.4), sharey=True,
                             constrained_layout=True, squeeze=False)
    for ax, i in zip(axes[0], steps, strict=True):
        snap = one.isel(time=i)
        x = _cut(snap["mean"])["x"].values
        ax.fill_between(x, _cut(snap["q05"]).values, _cut(snap["q95"]).values, color="C0",
                        alpha=0.3, lw=0, label="5–95% band")
        ax.plot(x, _cut(snap["obs"]).values, ".", color="0.3", ms=2.5, label="observed")
        if "obs_u_clean" in snap:
            ax.plot(x, _cut(snap["obs_u_clean"]).values, color="k", lw=1, label="clean")
        ax.plot(x, _cut(snap["mean"]).values, color="C0", lw=1.5, label="forecast mean")
        ax.set_title(f"{_time_text(snap['time'])} (step {i})")
        ax.set_xlabel(_coord_label(snap, "x"))
    axes[0, 0].set_ylabel(_label(one["obs"]))
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"forecast time slices, trajectory {traj}")
    return fig


def _spectrum(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean energy per wavenumber ``|u_k|^2 / n^2`` along ``axis`` (mean over other axes)."""
    n = values.shape[axis]
    power = np.abs(np.fft.rfft(values, axis=axis)) ** 2 / n**2
    power = np.moveaxis(power, axis, -1)
    return power.reshape(-1, power.shape[-1]).mean(0)


def plot_energy_spectrum(fc: xr.Dataset, times: Sequence[int] | None = None) -> plt.Figure:
    """Spatial energy spectra along ``x`` (averaged over trajectories and, in 2D, ``y``) of the
    observations, the clean field, the forecast mean and (if present) the ensemble members, at
    a few lead times."""
    n_time = fc.sizes["time"]
    times = list(np.linspace(0, n_time - 1, 3).astype(int)) if times is None else list(times)
    fig, axes = plt.subplots(1, len(times), figsize=(4.5 * len(times), 3.6), sharey=True,
                             constrained_layout=True, squeeze=False)
    names = [("obs", "observed", "0.5"), ("obs_u_clean", "clean", "k"),
             ("mean", "forecast mean", "C0"), ("samples", "ensemble members", "C1")]
    for ax, i in zip(axes[0], times, strict=True):
        snap = fc.isel(time=i)
        top = np.finfo(np.float64).tiny
        for var, label, color in names:
            if var not in snap:
                continue
            da = _field(snap[var])
            power = _spectrum(da.values, da.dims.index("x"))
            k = np.arange(power.size)
            ax.loglog(k[1:], power[1:], color=color, lw=1.2, label=label)
            top = max(top, float(power[1:].max()))
        # round-off tails of smooth fields (1e-20) would squash the resolved range
        ax.set_ylim(bottom=top * 1e-10)
        ax.set_xlabel("wavenumber k (modes along x)")
        ax.set_title(_time_text(snap['time']))
    axes[0, 0].set_ylabel("energy |û_k|² / n² (u²)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("energy spectra: truth vs forecast")
    return fig


def _band(ax: plt.Axes, t: np.ndarray, draws: np.ndarray, color: str, label: str) -> None:
    """Median and 5–95% band of ``draws`` ``(S, T)`` over ``t``."""
    lo, med, hi = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    ax.fill_between(t, lo, hi, color=color, alpha=0.25, lw=0)
    ax.plot(t, med, color=color, lw=1.2, label=label)


def plot_latent_paths(posterior: xr.Dataset, n_nodes: int = 4) -> plt.Figure:
    """Posterior latent paths over the window, median with 5–95% bands: ``n_nodes`` macro nodes
    of ``zeta`` and every micro coordinate of ``eta`` (the built-in model), or the first
    ``n_nodes`` coordinates of each latent variable with a ``latent`` dim (any other program).

    Args:
        posterior: the ``posterior`` group of the ArviZ tree (dims ``chain, draw, time, ...``).
        n_nodes: macro nodes / coordinates shown (evenly spaced).
    """
    t = posterior["time"].values
    panels = []  # (title, ylabel, [(label, draws (S, T))])
    if "zeta" in posterior:
        zeta = posterior["zeta"].stack(sample=("chain", "draw")).transpose("sample", "time", ...)
        zeta = zeta.isel(field=0) if "field" in zeta.dims else zeta
        coarse = [d for d in zeta.dims if d.startswith("coarse_")]
        flat = zeta.stack(node=coarse).transpose("sample", "time", "node")
        picks = np.linspace(0, flat.sizes["node"] - 1,
                            min(n_nodes, flat.sizes["node"])).astype(int)
        lines = []
        for node in picks:
            where = flat["node"].values[node]
            where = where if isinstance(where, tuple) else (where,)
            label = ", ".join(f"{c[7:]}={float(v):.3g}" for c, v in zip(coarse, where,
                                                                          strict=True))
            lines.append((f"ζ at {label}", flat.values[:, :, node]))
        panels.append(("macro latent nodes", "ζ (macro state)", lines))
        if "eta" in posterior:
            eta = posterior["eta"].stack(sample=("chain", "draw")).transpose("sample", "time",
                                                                              "micro")
            panels.append(("micro latent coordinates", "η (micro state)",
                           [(f"η[{j}]", eta.values[:, :, j]) for j in range(eta.sizes["micro"])]))
    else:
        for name in posterior.data_vars:
            da = posterior[name]
            if "latent" not in da.dims:
                continue
            da = da.stack(sample=("chain", "draw")).transpose("sample", "time", "latent")
            picks = np.linspace(0, da.sizes["latent"] - 1,
                                min(n_nodes, da.sizes["latent"])).astype(int)
            panels.append((f"latent path {name}", name,
                           [(f"{name}[{j}]", da.values[:, :, j]) for j in picks]))
    if not panels:
        raise ValueError("the posterior has no latent path (zeta/eta, or a 'latent' dim)")
    # one small axis per path: overlapping bands of several coordinates are unreadable
    n_rows = max(len(lines) for _, _, lines in panels)
    fig, axes = plt.subplots(n_rows, len(panels), figsize=(6 * len(panels), 1.9 * n_rows + 0.8),
                             constrained_layout=True, squeeze=False, sharex=True)
    for c, (title, ylabel, lines) in enumerate(panels):
        axes[0, c].set_title(f"{title} (median, 5–95%)")
        for r in range(n_rows):
            ax = axes[r, c]
            if r >= len(lines):
                ax.remove()
                continue
            label, draws = lines[r]
            _band(ax, t, draws, f"C{c}", label)
            ax.text(0.01, 0.95, label, transform=ax.transAxes, va="top", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_xlabel("time t", fontsize=8)
            ax.tick_params(labelbottom=True)
    fig.suptitle("posterior latent paths over the window")
    return fig


def plot_forest(
    posterior: xr.Dataset,
    var_names: Sequence[str] | None = None,
    log: bool | None = None,
) -> plt.Figure:
    """Forest plot of the global parameters: median, 50% and 90% equal-tailed intervals for
    every coordinate. ``var_names`` default: every posterior variable without a ``time`` dim;
    ``log`` default: a log axis when every draw is positive."""
    if var_names is None:
        var_names = [v for v in posterior.data_vars if "time" not in posterior[v].dims]
    rows = []
    for name in var_names:
        if name not in posterior:
            continue
        da = posterior[name].stack(sample=("chain", "draw"))
        other = [d for d in da.dims if d != "sample"]
        flat = da.stack(coord=other) if other else da.expand_dims(coord=[""])
        flat = flat.transpose("coord", "sample")
        for i in range(flat.sizes["coord"]):
            index = flat["coord"].values[i]
            suffix = "" if index == "" else f"[{_fmt_index(index)}]"
            rows.append((f"{name}{suffix}", flat.values[i]))
    if not rows:
        raise ValueError(f"none of {list(var_names)} is in the posterior")
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.4), constrained_layout=True)
    ypos = np.arange(len(rows))[::-1]
    for y, (_, draws) in zip(ypos, rows, strict=True):
        q05, q25, q50, q75, q95 = np.quantile(draws, [0.05, 0.25, 0.5, 0.75, 0.95])
        ax.plot([q05, q95], [y, y], color="C0", lw=1)
        ax.plot([q25, q75], [y, y], color="C0", lw=3)
        ax.plot(q50, y, "o", color="k", ms=3)
    ax.set_yticks(ypos, [name for name, _ in rows], fontsize=8)
    if log is None:
        log = all(np.all(draws > 0) for _, draws in rows)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("value (diffusion: u per √t; obs. variance: u²)")
    ax.set_ylabel("parameter [coordinate]")
    ax.set_title("physical parameters: median, 50% and 90% intervals")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _fmt_index(index: object) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    return ", ".join(f"{p:.3g}" if isinstance(p, float) else str(p) for p in parts)


def plot_elbo_trace(losses: np.ndarray, check: object | None = None,
                    window: int | None = None) -> plt.Figure:
    """Training loss per step with a moving average; ``check`` (a
    :class:`~msde_ppl.diagnostics.checks.ConvergenceCheck`) is marked and written in the title."""
    losses = np.asarray(losses, np.float64)
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    steps = np.arange(losses.size)
    ax.plot(steps, losses, color="0.7", lw=0.6, label="loss per step")
    window = getattr(check, "window", None) or window or max(1, losses.size // 20)
    if losses.size >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", lw=1.5,
                label=f"moving average ({window} steps)")
    title = "training loss (negative ELBO per observed scalar)"
    if check is not None:
        ax.axvspan(losses.size - check.chunk, losses.size, color="C1", alpha=0.1,
                   label="last chunk")
        state = "converged" if check.converged else "NOT converged"
        title += f"\n{state}: relative change {check.rel_change:.2g} (tol {check.tol:g})"
    if losses.size:
        lo, hi = np.quantile(losses, [0.0, 0.98])
        pad = 0.05 * (hi - lo) + 1e-12
        ax.set_ylim(lo - pad, hi + pad)  # the first steps can be orders of magnitude larger
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_coverage(curve: xr.Dataset, label: str = "forecast") -> plt.Figure:
    """Empirical vs nominal coverage of central intervals (from
    :func:`~msde_ppl.diagnostics.checks.coverage_curve`) with the ±2 SE band of a calibrated
    forecast around the diagonal (the curve's correlation-aware, batch-means SE)."""
    levels = curve["level"].values
    fig, ax = plt.subplots(figsize=(4.6, 4.4), constrained_layout=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.fill_between(levels, levels - 2 * curve["se"].values, levels + 2 * curve["se"].values,
                    color="0.8", lw=0,
                    label="±2 SE" + (f" ({curve.attrs['n_blocks']} blocks)"
                                     if curve.attrs.get("n_blocks", 1) > 1 else " (binomial)"))
    ax.plot(levels, curve["empirical"].values, "o-", color="C0", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal probability of the central interval")
    ax.set_ylabel("fraction of observations inside")
    ax.set_title("interval coverage")
    ax.legend(fontsize=8)
    return fig


def plot_pit(hist: dict) -> plt.Figure:
    """PIT histogram (from :func:`~msde_ppl.diagnostics.checks.pit_histogram`) with the uniform
    expectation."""
    edges, counts = hist["edges"], hist["counts"]
    density = counts / (counts.sum() * np.diff(edges))
    fig, ax = plt.subplots(figsize=(5, 3.6), constrained_layout=True)
    ax.bar(edges[:-1], density, width=np.diff(edges), align="edge", color="C0", alpha=0.7,
           edgecolor="white", label="PIT")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="uniform (calibrated)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT value (rank of the observation in the ensemble)")
    ax.set_ylabel("density")
    deff = hist.get("design_effect", 1.0)
    ax.set_title(f"PIT histogram (uniformity p = {hist['p_value']:.2g}"
                 + (f", design effect {deff:.3g})" if deff > 1 else ")"))
    ax.legend(fontsize=8)
    return fig


def plot_spread_skill(ss: xr.Dataset) -> plt.Figure:
    """Spread and RMSE (left) and their ratio (right) over lead time (from
    :func:`~msde_ppl.diagnostics.checks.spread_skill`)."""
    t = ss["time"].values
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax.plot(t, ss["rmse"].values, color="C3", label="RMSE of the mean")
    ax.plot(t, ss["spread"].values, color="C0", label="spread (RMS std)")
    ax.set_xlabel("lead time t")
    ax.set_ylabel("u")
    ax.set_title("skill and spread")
    ax.legend(fontsize=8)
    ax_ratio.plot(t, ss["ratio"].values, color="k")
    ax_ratio.axhline(1.0, color="0.5", ls="--", lw=1)
    ax_ratio.set_xlabel("lead time t")
    ax_ratio.set_ylabel("spread / RMSE")
    ax_ratio.set_title("spread–skill ratio (1: calibrated, < 1: over-confident)", fontsize=10)
    return fig


def plot_lead_time(scores: dict[str, xr.Dataset]) -> plt.Figure:
    """Rel-L2 (with the persistence and climatology baselines), CRPS and 90% coverage over lead
    time for several models (``{name: msde_ppl.predict.lead_time_metrics(...)}``)."""
    fig, (ax_err, ax_crps, ax_cov) = plt.subplots(1, 3, figsize=(14, 3.8),
                                                  constrained_layout=True)
    for i, (name, sc) in enumerate(scores.items()):
        t = sc["lead_time"].values
        ax_err.plot(t, sc["rel_l2"].values, color=f"C{i}", label=name)
        ax_crps.plot(t, sc["crps"].values, color=f"C{i}", label=name)
        ax_cov.plot(t, sc["coverage_90"].values, color=f"C{i}", label=name)
    first = next(iter(scores.values()))
    t = first["lead_time"].values
    for name, style in (("persistence", ":"), ("climatology", "--")):
        if name in first:
            ax_err.plot(t, first[name].values, color="0.4", ls=style, label=name)
    ax_err.set(xlabel="lead time", ylabel="rel-L2 (vs data)", title="error of the mean")
    ax_err.legend(fontsize=8)
    ax_crps.set(xlabel="lead time", ylabel="CRPS", title="CRPS")
    ax_cov.axhline(0.9, color="0.5", ls="--", lw=1)
    ax_cov.set(xlabel="lead time", ylabel="coverage", ylim=(0, 1.02),
               title="coverage of the 5–95% band (nominal 0.9)")
    return fig
