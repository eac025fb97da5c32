"""Figures of forecasts (matplotlib, ``Agg``-safe; never imported by library code).

- :func:`plot_space_time`: truth, forecast mean, std and |error| of one trajectory as space-time
  panels (1D data) with colour bars;
- :func:`plot_decomposition`: the macro part :math:`P\\zeta` and the micro correction of the mean
  at a few times, against the observations.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["plot_decomposition", "plot_space_time"]


def _field(da: xr.DataArray) -> xr.DataArray:
    return da.isel(field=0) if "field" in da.dims else da


def plot_space_time(fc: xr.Dataset, traj: int = 0, title: str = "") -> plt.Figure:
    """Truth / mean / std / |error| over (x, t) for a 1D forecast (2D: the last time's maps)."""
    one = fc.isel(traj=traj)
    panels = [("observed", _field(one["obs"])), ("forecast mean", _field(one["mean"])),
              ("forecast std", _field(one["std"])),
              ("|error|", abs(_field(one["obs"]) - _field(one["mean"])))]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), constrained_layout=True)
    is_1d = "y" not in panels[0][1].dims
    vmin = float(panels[0][1].min())
    vmax = float(panels[0][1].max())
    for ax, (name, da) in zip(axes, panels, strict=True):
        shared = name in ("observed", "forecast mean")
        kwargs = dict(vmin=vmin, vmax=vmax) if shared else {}
        cmap = "RdBu_r" if shared else "magma"
        if is_1d:
            im = ax.pcolormesh(da["x"], da["time"], da.values, shading="auto", cmap=cmap,
                               **kwargs)
            ax.set_xlabel("x")
            ax.set_ylabel("time t")
        else:
            last = da.isel(time=-1)
            im = ax.pcolormesh(last["x"], last["y"], last.values.T, shading="auto", cmap=cmap,
                               **kwargs)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
            name = f"{name} (t = {float(last['time']):.3g})"
        ax.set_title(name)
        fig.colorbar(im, ax=ax, label="u")
    if title:
        fig.suptitle(title)
    return fig


def plot_decomposition(fc: xr.Dataset, traj: int = 0, n_times: int = 4) -> plt.Figure:
    """Macro part, micro correction and their sum against the observations at a few times."""
    one = fc.isel(traj=traj)
    steps = np.linspace(0, one.sizes["time"] - 1, n_times).astype(int)
    fig, axes = plt.subplots(1, n_times, figsize=(4 * n_times, 3.4), sharey=True,
                             constrained_layout=True)
    for ax, i in zip(np.atleast_1d(axes), steps, strict=True):
        snap = one.isel(time=i)
        obs, macro, micro = (_field(snap[k]) for k in ("obs", "macro", "micro"))
        if "y" in obs.dims:  # 2D: a horizontal cut through the middle
            mid = obs.sizes["y"] // 2
            obs, macro, micro = (d.isel(y=mid) for d in (obs, macro, micro))
        x = obs["x"].values
        ax.plot(x, obs.values, color="0.6", lw=2.5, label="observed")
        ax.plot(x, macro.values, label="macro  Pζ")
        ax.plot(x, micro.values, label="micro correction")
        ax.plot(x, (macro + micro).values, "k--", lw=1, label="mean")
        ax.set_title(f"t = {float(snap['time']):.3g}")
        ax.set_xlabel("x")
    np.atleast_1d(axes)[0].set_ylabel("u")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return fig
