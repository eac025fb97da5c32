r"""A fitted multiscale model as an ArviZ ``xarray.DataTree`` (the ONLY module importing ArviZ).

ArviZ 1.x API through ``arviz_base`` (containers) and ``arviz_stats`` (summaries); a major-version
change of ArviZ touches this file only (style.md, rule 15).

**What the posterior is.** The variational posterior of the amortized guide
(:class:`~msde_ppl.inference.AutoAmortizedSDE`) over one **window** of observed snapshots of a
chosen trajectory: ``n_draws`` joint draws of the global sites (mean-field LogNormal) and of the
latent path :math:`z(t_i) \sim q(z \mid y_{\text{window}})` (the encoder + temporal-kernel
Gauss–Markov process, which shares the drawn diffusion). This is the smoothing posterior the
ELBO was optimised for, so the path uncertainty shown is the *posterior* uncertainty given data.
The forecast ensemble is a *predictive* quantity (rolled out from the first snapshot without
seeing later data); it is kept separately in the ``forecast`` group, never mixed into
``posterior``.

Groups of the tree (sample dims ``chain`` (one, SVI has no chains) and ``draw``):

=========================  ==================================================================
group                      variables (dims after ``chain, draw``)
=========================  ==================================================================
``posterior``              ``diffusion_macro`` (``[field,] coarse_x[, coarse_y]``),
                           ``diffusion_micro`` (``micro``), ``obs_var_macro``,
                           ``obs_var_micro`` (``[field]``), ``zeta`` (``time, [field,]
                           coarse_x[, coarse_y]``), ``eta`` (``time, micro``), and their decoded
                           fine-grid fields ``macro`` (:math:`P\zeta`) and ``micro_part``
                           (:math:`\tfrac{\sigma_y^2}{\sigma_m^2} g(\eta)`) on ``time, [field,]
                           x[, y]``
``posterior_predictive``   ``y`` (replicated observations of the window, ``time, [field,] x``)
``observed_data``          ``y`` (the window's observations) and ``y_clean`` if known
``log``                    ``loss`` (``step``): the training loss (negative normalised ELBO)
``forecast``               the forecast Dataset (``mean``, ``std``, ``q05``, ... ) if given
=========================  ==================================================================

The macro part of :math:`z` is its first ``C * prod(coarse)`` entries (``config.n_macro``), the
micro part the last ``K``. Coarse node ``k`` sits at fine index ``k * sigma`` (the strided
restriction), which gives the ``coarse_x`` coordinate. Implicit-scale models (``K = 0``) have no
``diffusion_micro``, ``obs_var_micro``, ``eta`` or ``micro_part``.
"""

from __future__ import annotations

from pathlib import Path

import arviz_base as azb
import arviz_stats as azs
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from msde_ppl.inference import AutoAmortizedSDE
from msde_ppl.models.multiscale import PATH_SITE, decode
from msde_ppl.models.training import (
    FittedModel,
    fitted_kernel,
    fitted_networks,
    make_model,
    observations,
)

__all__ = ["PHYSICAL_PARAMETERS", "load_datatree", "save_datatree", "summary", "to_datatree"]

#: Global physical parameters of the multiscale model (variables of the ``posterior`` group).
PHYSICAL_PARAMETERS = ("diffusion_macro", "diffusion_micro", "obs_var_macro", "obs_var_micro")


def _guide_params(fitted: FittedModel) -> tuple[AutoAmortizedSDE, dict]:
    """The amortized guide of ``fitted`` and the parameter dict its ``sample_posterior`` takes."""
    kernel = fitted_kernel(fitted.params)
    model = make_model(fitted.config, fitted.modules, n_windows=1)
    guide = AutoAmortizedSDE(model, fitted.modules.encoder, kernel=kernel)
    params = dict(fitted.params)
    params[f"{PATH_SITE}_kernel$params"] = eqx.partition(kernel, eqx.is_inexact_array)[0]
    return guide, params


def _window_draws(
    fitted: FittedModel, y: np.ndarray, times: np.ndarray, n_draws: int, rng_key: jax.Array,
) -> dict[str, np.ndarray]:
    """Posterior draws over one window ``y`` (``(M, C, *fine)``) at ``times`` (``(M,)``)."""
    cfg = fitted.config
    guide, params = _guide_params(fitted)
    key_post, key_obs = jax.random.split(rng_key)
    draws = guide.sample_posterior(key_post, params, y=jnp.asarray(y)[None],
                                   times=jnp.asarray(times)[None], sample_shape=(n_draws,))
    z = draws[PATH_SITE][:, 0]  # (S, M, n_z)
    encoder, _, decoder = fitted_networks(fitted)
    macro, micro = decode(encoder, decoder, cfg, z)  # (S, M, C, *fine)
    per_field = (n_draws, 1, cfg.n_channels) + (1,) * len(cfg.fine_shape)
    var_macro = jnp.reshape(draws["obs_var_macro"], per_field)
    if micro is None:
        var_y, micro_part = var_macro, None
    else:
        var_micro = jnp.reshape(draws["obs_var_micro"], per_field)
        var_y = 1.0 / (1.0 / var_macro + 1.0 / var_micro)
        micro_part = var_macro / (var_macro + var_micro) * micro
    mu = macro if micro_part is None else macro + micro_part
    y_rep = mu + jnp.sqrt(var_y) * jax.random.normal(key_obs, mu.shape)
    out = {name: np.asarray(value) for name, value in draws.items() if name != PATH_SITE}
    out.update(z=np.asarray(z), macro=np.asarray(macro), y_rep=np.asarray(y_rep))
    if micro_part is not None:
        out["micro_part"] = np.asarray(micro_part)
    return out


def _spatial_dims(ds: xr.Dataset) -> tuple[str, ...]:
    return tuple(d for d in ds["u"].dims if d not in ("traj", "time", "field"))


def to_datatree(
    fitted: FittedModel,
    ds: xr.Dataset,
    fc: xr.Dataset | None = None,
    *,
    split: str | None = "test",
    traj: int = 0,
    start: int = 0,
    window: int | None = None,
    n_draws: int = 100,
    seed: int = 0,
) -> xr.DataTree:
    """A fit as an ArviZ DataTree (groups and dims in the module docstring).

    Args:
        fitted: the fitted model (``losses`` become the ``log`` group).
        ds: the dataset (schema of ``msde_ppl.data``).
        fc: a forecast of :func:`msde_ppl.predict.forecast.forecast` (stored as ``forecast``).
        split: split of ``ds`` the window is taken from (``None``: all trajectories).
        traj: trajectory index within the split.
        start: first snapshot of the window.
        window: snapshots in the window (default ``min(64, n_time - start)``).
        n_draws: posterior draws.
        seed: PRNG seed of the draws.

    Returns:
        ``xarray.DataTree`` with ``posterior``, ``posterior_predictive``, ``observed_data``,
        ``log`` and (if ``fc``) ``forecast``.
    """
    cfg = fitted.config
    y_all, t_all = observations(ds, split)
    if not 0 <= traj < y_all.shape[0]:
        raise ValueError(f"traj {traj} is out of range: split {split!r} has {y_all.shape[0]} "
                         "trajectories")
    window = min(64, y_all.shape[1] - start) if window is None else window
    if start < 0 or window < 2 or start + window > y_all.shape[1]:
        raise ValueError(f"window [{start}, {start + window}) does not fit in "
                         f"{y_all.shape[1]} snapshots (and needs at least 2)")
    sl = slice(start, start + window)
    y_win, t_win = y_all[traj, sl], t_all[sl]
    d = _window_draws(fitted, y_win, t_win, n_draws, jax.random.key(seed))

    has_field = "field" in ds["u"].dims
    space = _spatial_dims(ds)
    coarse = tuple(f"coarse_{s}" for s in space)
    field = ("field",) if has_field else ()
    c = cfg.n_channels

    def chained(x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[None]  # one chain

    def fields(x: np.ndarray, axis: int) -> np.ndarray:  # drop C = 1 when data has no field dim
        return x if has_field else np.take(x, 0, axis=axis)

    n_macro = cfg.n_macro
    zeta = d["z"][..., :n_macro].reshape(n_draws, window, c, *cfg.coarse_shape)
    posterior = {
        "diffusion_macro": fields(d["diffusion"][:, :n_macro].reshape(n_draws, c,
                                                                     *cfg.coarse_shape), 1),
        "obs_var_macro": fields(d["obs_var_macro"], 1),
        "zeta": fields(zeta, 2),
        "macro": fields(d["macro"], 2),
    }
    dims = {"diffusion_macro": [*field, *coarse], "obs_var_macro": [*field],
            "zeta": ["time", *field, *coarse], "macro": ["time", *field, *space]}
    if cfg.n_micro:
        posterior.update(diffusion_micro=d["diffusion"][:, n_macro:],
                         obs_var_micro=fields(d["obs_var_micro"], 1),
                         eta=d["z"][..., n_macro:], micro_part=fields(d["micro_part"], 2))
        dims.update(diffusion_micro=["micro"], obs_var_micro=[*field], eta=["time", "micro"],
                    micro_part=["time", *field, *space])
    coords = {"time": t_win, "micro": np.arange(cfg.n_micro)}
    for s, cs, n_fine, n_coarse in zip(space, coarse, cfg.fine_shape, cfg.coarse_shape,
                                       strict=True):
        grid = np.asarray(ds[s].values)
        coords[s] = grid
        coords[cs] = grid[:: n_fine // n_coarse]
    if has_field:
        coords["field"] = ds["field"].values
    observed = {"y": fields(y_win, 1)}
    if "u_clean" in ds:
        clean = ds["u_clean"]
        if split is not None and "split" in ds.coords:
            clean = clean.isel(traj=np.flatnonzero(ds["split"].values.astype(str) == split))
        observed["y_clean"] = np.asarray(clean.isel(traj=traj, time=sl).values, np.float32)
    obs_dims = {"y": ["time", *field, *space], "y_clean": ["time", *field, *space]}
    attrs = {
        "posterior_source": "AutoAmortizedSDE variational posterior q(z | y_window) and "
                            "mean-field globals",
        "window_split": "all" if split is None else split,
        "window_traj": traj,
        "window_start": start,
        "window_length": window,
        "n_macro": n_macro,
        "n_micro": cfg.n_micro,
    }
    tree = azb.from_dict(
        {
            "posterior": {k: chained(v) for k, v in posterior.items()},
            "posterior_predictive": {"y": chained(fields(d["y_rep"], 2))},
            "observed_data": observed,
        },
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


def save_datatree(tree: xr.DataTree, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``tree`` to a netCDF4 file (h5netcdf); refuses an existing file unless
    ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    tree.to_netcdf(path, engine="h5netcdf")
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
) -> pd.DataFrame:
    """``arviz_stats.summary`` of the physical parameters (default :data:`PHYSICAL_PARAMETERS`
    present in the tree): mean, sd and the ``ci_prob`` equal-tailed interval per coordinate.

    ``kind="stats"`` by default: SVI draws are independent, so the MCMC diagnostics (R-hat, ESS)
    carry no information here.
    """
    names = [v for v in (var_names or PHYSICAL_PARAMETERS) if v in tree["posterior"]]
    if not names:
        raise ValueError(f"none of {var_names or PHYSICAL_PARAMETERS} is in the posterior")
    return azs.summary(tree, var_names=names, kind=kind, ci_prob=ci_prob, ci_kind="eti",
                       round_to="none")
