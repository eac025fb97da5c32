r"""A fitted program as an ArviZ ``xarray.DataTree`` (the ONLY module importing ArviZ).

ArviZ 1.x API through ``arviz_base`` (containers) and ``arviz_stats`` (summaries); a major-version
change of ArviZ touches this file only.

Works for any :class:`~msde_ppl.Fitted` with one SDE path site: the global sites are the ones
the guide found in the program, not a list of names.

**What the posterior is.** The variational posterior of the amortized guide over one **window**
of observed snapshots of a chosen trajectory: ``n_draws`` joint draws of the global sites and of
the latent path :math:`z(t_i) \sim q(z \mid y_{\text{window}})` (``guide.sample_posterior``).
This is the smoothing posterior the ELBO was optimised for. The forecast ensemble is a
*predictive* quantity (rolled out from the first snapshot without seeing later data); it is kept
separately in the ``forecast`` group, never mixed into ``posterior``.

Groups of the tree (sample dims ``chain`` (one, SVI has no chains) and ``draw``):

=========================  ==================================================================
group                      variables (dims after ``chain, draw``)
=========================  ==================================================================
``posterior``              every global site under its own name (dims ``{site}_dim_k``); the
                           latent path: by the fit's ``latent_parts`` (built-in model:
                           ``zeta`` on ``time, [field,] coarse_x[, coarse_y]`` and ``eta`` on
                           ``time, micro``), else the path site on ``time, latent``; and the
                           decoded mean ``y_mean`` on ``time, [field,] x[, y]`` (with the
                           product-of-experts likelihood also ``macro`` :math:`P\zeta` and
                           ``micro_part``)
``posterior_predictive``   ``y`` (replicated observations of the window)
``observed_data``          ``y`` (the window's observations) and ``y_clean`` if known
``log``                    ``loss`` (``step``): the training loss (negative normalised ELBO)
``forecast``               the forecast Dataset (``mean``, ``std``, ``q05``, ... ) if given
=========================  ==================================================================

Attributes record the window, the global sites (``global_sites``) and the sites whose
variational scales have not moved from their initial value (``stale_scales``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import arviz_base as azb
import arviz_stats as azs
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from msde_ppl.data.splits import observations, select_split
from msde_ppl.pipeline.fitted import Fitted
from msde_ppl.predict.forecast import observe

__all__ = ["global_sites", "load_datatree", "save_datatree", "summary", "to_datatree"]


def _window_draws(fitted: Fitted, y: np.ndarray, times: np.ndarray, n_draws: int,
                  rng_key: jax.Array, decoded: bool = True) -> dict[str, np.ndarray]:
    """Posterior draws over one window ``y`` (``(M, C, *fine)``) at ``times`` (``(M,)``): the
    global sites, the path, and (``decoded``) the program's observation part given each draw."""
    key_post, key_obs = jax.random.split(rng_key)
    batch = {"y": jnp.asarray(y)[None], "times": jnp.asarray(times)[None]}
    draws = fitted.guide.sample_posterior(key_post, fitted.params, **batch,
                                          sample_shape=(n_draws,))
    site = fitted.path_site
    latent = {k: v for k, v in draws.items() if k in fitted.global_sites or k == site}
    out = {k: np.asarray(v) for k, v in latent.items()}
    out[site] = out[site][:, 0]  # (S, M, *state)
    if not decoded:
        return out

    @jax.jit
    def decode(values, keys):
        return jax.vmap(lambda v, k: observe(fitted, fitted.params, v, k, batch["times"]))(
            values, keys)

    y_rep, mean, _, parts = decode(latent, jax.random.split(key_obs, n_draws))
    out.update(y_rep=np.asarray(y_rep), y_mean=np.asarray(mean))
    out.update({"micro_part" if k == "micro" else k: np.asarray(v) for k, v in parts.items()})
    return out


def _spatial_dims(ds: xr.Dataset) -> tuple[str, ...]:
    return tuple(d for d in ds["u"].dims if d not in ("traj", "time", "field"))


def to_datatree(
    fitted: Fitted,
    ds: xr.Dataset,
    fc: xr.Dataset | None = None,
    *,
    split: str | None = "test",
    traj: int = 0,
    start: int = 0,
    window: int | None = None,
    n_draws: int = 100,
    seed: int = 0,
    decoded: bool = True,
) -> xr.DataTree:
    """A fit as an ArviZ DataTree (groups and dims in the module docstring).

    Args:
        fitted: the fitted model (``losses`` become the ``log`` group).
        ds: the dataset (schema of ``msde_ppl.data``).
        fc: a forecast of :func:`msde_ppl.forecast` (stored as ``forecast``).
        split: split of ``ds`` the window is taken from (``None``: all trajectories).
        traj: trajectory index within the split.
        start: first snapshot of the window.
        window: snapshots in the window (default ``min(64, n_time - start)``).
        n_draws: posterior draws.
        seed: PRNG seed of the draws.
        decoded: include the decoded fine-grid fields (``y_mean``, ``macro``, ``micro_part``)
            and the ``posterior_predictive`` group (``n_draws`` fine fields per snapshot each;
            ``False`` keeps the file small).

    Returns:
        ``xarray.DataTree`` with ``posterior``, ``posterior_predictive`` (if ``decoded``),
        ``observed_data``, ``log`` and (if ``fc``) ``forecast``.
    """
    sel = select_split(ds, split) if split is not None and "split" in ds.coords else ds
    n_traj = sel.sizes["traj"] if split is None or "split" in ds.coords else 0
    if not 0 <= traj < n_traj:
        raise ValueError(f"traj {traj} is out of range: split {split!r} has {n_traj} "
                         "trajectories")
    y_all, t_all = observations(sel.isel(traj=[traj]), None)  # reads that trajectory only
    window = min(64, y_all.shape[1] - start) if window is None else window
    if start < 0 or window < 2 or start + window > y_all.shape[1]:
        raise ValueError(f"window [{start}, {start + window}) does not fit in "
                         f"{y_all.shape[1]} snapshots (and needs at least 2)")
    sl = slice(start, start + window)
    y_win, t_win = y_all[0, sl], t_all[sl]
    d = _window_draws(fitted, y_win, t_win, n_draws, jax.random.key(seed), decoded)

    has_field = "field" in ds["u"].dims
    space = _spatial_dims(ds)
    field = ("field",) if has_field else ()

    def fields(x: np.ndarray, axis: int) -> np.ndarray:  # drop C = 1 when data has no field dim
        return x if has_field else np.take(x, 0, axis=axis)

    posterior, dims = {}, {}
    for name in fitted.global_sites:
        posterior[name] = d[name]
        dims[name] = [f"{name}_dim_{k}" for k in range(d[name].ndim - 1)]
    path = d[fitted.path_site].reshape(n_draws, window, -1)
    coords = {"time": t_win}
    for s_dim in space:
        coords[s_dim] = np.asarray(ds[s_dim].values)
    if has_field:
        coords["field"] = ds["field"].values
    parts = fitted.latent_parts or {fitted.path_site: None}
    for name, part in parts.items():
        if part is None:
            posterior[name], dims[name] = path, ["time", "latent"]
            continue
        values = path[..., part["start"]:part["stop"]].reshape(n_draws, window, *part["shape"])
        if name == "zeta":  # the macro field on the coarse grid: (C, *coarse)
            coarse = [f"coarse_{s_dim}" for s_dim in space]
            for s_dim, c_dim, n_coarse in zip(space, coarse, part["shape"][1:], strict=True):
                grid = coords[s_dim]
                coords[c_dim] = grid[:: len(grid) // n_coarse]
            posterior[name], dims[name] = fields(values, 2), ["time", *field, *coarse]
        else:
            posterior[name] = values
            dims[name] = ["time"] + (["micro"] if name == "eta" else
                                     [f"{name}_dim_{k}" for k in range(len(part["shape"]))])
            if name == "eta":
                coords["micro"] = np.arange(part["shape"][0])
    for name in ("y_mean", "macro", "micro_part") if decoded else ():
        if name in d:
            posterior[name] = fields(d[name], 2)
            dims[name] = ["time", *field, *space]
    observed = {"y": fields(y_win, 1)}
    if "u_clean" in ds:
        clean = select_split(ds, split) if "split" in ds.coords else ds
        observed["y_clean"] = np.asarray(clean["u_clean"].isel(traj=traj, time=sl).values,
                                         np.float32)
    obs_dims = {"y": ["time", *field, *space], "y_clean": ["time", *field, *space]}
    attrs = {
        "posterior_source": "AutoAmortizedSDE variational posterior q(z | y_window) and "
                            "mean-field globals",
        "window_split": "all" if split is None else split,
        "window_traj": traj,
        "window_start": start,
        "window_length": window,
        "path_site": fitted.path_site,
        "global_sites": json.dumps(fitted.global_sites),
        "stale_scales": json.dumps(fitted.stale_scales()),
    }
    groups = {"posterior": {k: np.asarray(v)[None] for k, v in posterior.items()},
              "observed_data": observed}
    if decoded:
        groups["posterior_predictive"] = {"y": np.asarray(fields(d["y_rep"], 2))[None]}
    tree = azb.from_dict(
        groups,
        dims={**dims, **{k: v for k, v in obs_dims.items() if k in observed}},
        coords=coords,
        sample_dims=["chain", "draw"],
    )
    losses = np.asarray(fitted.losses, np.float64)
    tree["log"] = xr.Dataset({"loss": (("step",), losses)},
                             coords={"step": np.arange(losses.size)},
                             attrs={"description": "training loss per step (negative ELBO "
                                    "normalised per observed scalar)"})
    if fc is not None:
        tree["forecast"] = fc
    tree.attrs.update(attrs)
    return tree


def global_sites(tree: xr.DataTree) -> list[str]:
    """The global sites of the program a tree was made from."""
    return list(json.loads(tree.attrs.get("global_sites", "[]")))


def save_datatree(tree: xr.DataTree, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``tree`` to a netCDF4 file (h5netcdf, every numeric variable zlib-compressed);
    refuses an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    encoding = {}
    for node in tree.subtree:
        group = node.path if node.path != "/" else "/"
        encoding[group] = {name: {"zlib": True, "complevel": 4}
                           for name, var in node.dataset.data_vars.items()
                           if np.issubdtype(var.dtype, np.number) and var.ndim > 0}
    tree.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return path


def load_datatree(path: str | Path) -> xr.DataTree:
    """Read a tree written by :func:`save_datatree` (fully loaded, file closed)."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


def summary(
    tree: xr.DataTree,
    var_names: list[str] | tuple[str, ...] | None = None,
    *,
    ci_prob: float = 0.9,
    kind: str = "stats",
    warn: bool = True,
) -> pd.DataFrame:
    """``arviz_stats.summary`` of the global parameters (default: every global site of the
    program, :func:`global_sites`): mean, sd and the ``ci_prob`` equal-tailed interval per
    coordinate.

    ``kind="stats"`` by default: SVI draws are independent, so the MCMC diagnostics (R-hat, ESS)
    carry no information here.

    Sites whose variational scales are still within 5% of their initial value (the tree's
    ``stale_scales``) are flagged: a ``scale_at_init`` column is ``True`` on their rows and
    (``warn=True``) a ``UserWarning`` names them (their intervals show the guide's initial
    width, not a learned uncertainty).
    """
    wanted = list(var_names) if var_names is not None else global_sites(tree)
    names = [v for v in wanted if v in tree["posterior"]]
    if not names:
        raise ValueError(f"none of {wanted} is in the posterior")
    table = azs.summary(tree, var_names=names, kind=kind, ci_prob=ci_prob, ci_kind="eti",
                        round_to="none")
    stale = {k: v for k, v in json.loads(tree.attrs.get("stale_scales", "{}")).items()
             if k in names}
    table["scale_at_init"] = [str(i).split("[")[0] in stale for i in table.index]
    if stale and warn:
        warnings.warn("the variational scales of " + ", ".join(
            f"{k} ({v:.0%} of its coordinates)" for k, v in stale.items())
            + " are still within 5% of their initial value: their intervals show the guide's "
            "initial width, not a learned uncertainty", UserWarning, stacklevel=2)
    return table
