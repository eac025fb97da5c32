r"""Ensemble forecasts of a fitted multiscale model on the fine grid (method.md §3).

From a trajectory's first snapshot :math:`y_0`:

1. encode :math:`z_0 \sim \mathcal N(\mathrm{enc}_\mu(y_0), \mathrm{enc}_{\sigma^2})`, one draw per
   ensemble member, and draw the member's global parameters (diffusion, observation variances)
   from their variational posterior;
2. roll the learned SDE forward with the stochastic Heun method (default) or Euler–Maruyama
   (``substeps`` equal steps per data interval, see :func:`rollout`) in one ``lax.scan``, all
   members in parallel;
3. decode every state through the product-of-experts likelihood: predictive mean
   :math:`\mu_y = P\zeta + (\sigma_y^2/\sigma_m^2) g(\eta)` and variance :math:`\sigma_y^2`.

The forecast mean is the ensemble average of :math:`\mu_y` (the exact expectation of the
decoder noise), the standard deviation follows from the law of total variance
(:math:`\mathrm{Var}[\mu_y] + \mathbb E[\sigma_y^2]`), and quantiles and CRPS use one predictive
draw :math:`\mu_y + \sigma_y\varepsilon` per member.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax import lax

from msde_ppl.models.multiscale import decode
from msde_ppl.models.training import FittedModel, fitted_networks, observations
from msde_ppl.predict.metrics import pooled_relative_l2

__all__ = ["forecast", "forecast_metrics", "rollout", "trajectory_ensemble"]


def _posterior_draws(rng_key: jax.Array, params: dict, name: str, n: int) -> jax.Array:
    """``n`` draws of a positive global site from its mean-field LogNormal posterior."""
    loc = jnp.asarray(params[f"{name}_auto_loc"])
    scale = jnp.asarray(params[f"{name}_auto_scale"])
    eps = jax.random.normal(rng_key, (n, *loc.shape))
    return jnp.exp(loc[None] + scale[None] * eps)


def rollout(
    rng_key: jax.Array,
    drift,
    diffusion: jax.Array,
    z0: jax.Array,
    t0: float,
    dt: float,
    n_out: int,
    substeps: int = 1,
    method: str = "heun",
) -> jax.Array:
    r"""Paths of the additive-noise SDE ``dz = drift(t, z) dt + diag(diffusion) dW``.

    Each inner step of size :math:`h` draws :math:`\Delta W \sim \mathcal N(0, h)` and
    applies

    - ``"euler"`` (Euler–Maruyama): :math:`z' = z + f(t, z) h + s\Delta W`;
    - ``"heun"`` (stochastic Heun): :math:`\tilde z = z + f(t, z) h + s\Delta W`,
      :math:`z' = z + \tfrac12 [f(t, z) + f(t + h, \tilde z)] h + s\Delta W`. For additive
      noise both methods converge with strong order 1, but Heun is second order on the
      drift: an oscillatory mode :math:`f = i\omega z` grows by :math:`\sqrt{1 + \omega^4
      h^4/4}` per step instead of Euler's :math:`\sqrt{1 + \omega^2 h^2}` (the learned drifts
      of advective cases have such modes); it costs two drift evaluations per step.

    Args:
        rng_key: PRNG key.
        drift: ``drift(t, z, args)`` on one state ``(n_z,)``.
        diffusion: ``(S, n_z)`` per-member diffusion.
        z0: ``(S, n_z)`` initial states.
        t0: initial (absolute) time.
        dt: output spacing; the inner step is ``dt / substeps``.
        n_out: number of outputs including ``z0``.
        substeps: inner steps per output interval.
        method: ``"heun"`` or ``"euler"``.

    Returns:
        ``(S, n_out, n_z)``.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown integration method {method!r}; use 'heun' or 'euler'")
    h = dt / substeps
    batched = jax.vmap(lambda t, z: drift(t, z, None), in_axes=(None, 0))

    def inner(carry, key):
        t, z = carry
        kick = diffusion * jnp.sqrt(h) * jax.random.normal(key, z.shape, z.dtype)
        slope = batched(t, z)
        if method == "heun":
            slope = 0.5 * (slope + batched(t + h, z + slope * h + kick))
        return (t + h, z + slope * h + kick), None

    def outer(carry, key):
        carry, _ = lax.scan(inner, carry, jax.random.split(key, substeps))
        return carry, carry[1]

    keys = jax.random.split(rng_key, n_out - 1)
    _, path = lax.scan(outer, (jnp.asarray(t0, z0.dtype), z0), keys)
    return jnp.concatenate([z0[None], path], axis=0).swapaxes(0, 1)


_DECODE_BLOCK = 32  # snapshots decoded at a time


@partial(jax.jit, static_argnames=("config", "n_samples", "n_out", "substeps", "method"))
def _trajectory_ensemble(key, y_traj, *, t0, dt, networks, params, config, n_samples, n_out,
                         substeps, method):
    """Predictive draws ``(T', S, C, *fine)`` (``T' >= T``: the horizon padded to whole decode
    blocks) and ensemble summaries of one trajectory (module docstring, steps 1-3).

    Jitted once per model size and horizon: later trajectories and later calls with the same
    sizes reuse the compiled program. Snapshots are decoded ``_DECODE_BLOCK`` at a time, so the
    only full-horizon fine-grid array is the output."""
    cfg = config
    encoder, drift, decoder = networks
    field_shape = (1,) * (1 + len(cfg.fine_shape))
    k_z0, k_glob, k_path, k_obs = jax.random.split(key, 4)
    mean0, logvar0 = encoder(y_traj[0])
    eps = jax.random.normal(k_z0, (n_samples, cfg.n_latent))
    z0 = mean0[None] + jnp.exp(0.5 * logvar0)[None] * eps
    k_diff, k_vm, k_vmu = jax.random.split(k_glob, 3)
    diffusion = _posterior_draws(k_diff, params, "diffusion", n_samples)
    paths = rollout(k_path, drift, diffusion, z0, t0, dt, n_out, substeps, method)  # (S, T, n_z)
    var_macro = _posterior_draws(k_vm, params, "obs_var_macro", n_samples)
    var_macro = var_macro.reshape(n_samples, 1, cfg.n_channels, *field_shape[1:])
    var_micro = None
    if decoder is not None:
        var_micro = _posterior_draws(k_vmu, params, "obs_var_micro", n_samples)
        var_micro = var_micro.reshape(var_macro.shape)

    def decode_block(args):
        """Decode ``block`` times of every member: draws ``(block, S, C, *fine)`` and the
        ensemble summaries (decoding by blocks bounds the memory to one output array)."""
        z_block, key_block = args  # (S, block, n_z)
        macro, micro = decode(encoder, decoder, cfg, z_block)  # (S, block, C, *fine)
        if micro is None:
            var_y, micro_part = var_macro, jnp.zeros_like(macro)
        else:
            var_y = 1.0 / (1.0 / var_macro + 1.0 / var_micro)
            micro_part = var_macro / (var_macro + var_micro) * micro
        mu = macro + micro_part
        draws = mu + jnp.sqrt(var_y) * jax.random.normal(key_block, mu.shape)
        std = jnp.sqrt(mu.var(0) + jnp.broadcast_to(var_y, mu.shape).mean(0))
        return jnp.swapaxes(draws, 0, 1), dict(mean=mu.mean(0), std=std, macro=macro.mean(0),
                                               micro=micro_part.mean(0))

    n_blocks = -(-n_out // _DECODE_BLOCK)
    padded = jnp.pad(paths, ((0, 0), (0, n_blocks * _DECODE_BLOCK - n_out), (0, 0)), mode="edge")
    blocks = padded.reshape(n_samples, n_blocks, _DECODE_BLOCK, -1).swapaxes(0, 1)
    draws, summary = lax.map(decode_block, (blocks, jax.random.split(k_obs, n_blocks)))
    merge = lambda a: a.reshape(n_blocks * _DECODE_BLOCK, *a.shape[2:])  # noqa: E731
    summary = {k: merge(v)[:n_out] for k, v in summary.items()}
    summary.update(latent_mean=paths.mean(0), latent_std=paths.std(0))
    return merge(draws), summary


def trajectory_ensemble(fitted: FittedModel, times: np.ndarray, n_samples: int = 64,
                        substeps: int = 1, method: str = "heun"):
    """``ensemble(key, y_traj) -> (draws, summary)``: the compiled per-trajectory forecast of
    :func:`forecast` over ``times`` (``y_traj``: ``(T, C, *fine)``, draws ``(T', S, C, *fine)``)."""
    networks = jax.tree.map(jnp.asarray, fitted_networks(fitted))  # one jit signature
    global_params = {k: jnp.asarray(v) for k, v in fitted.params.items()
                     if k.endswith(("_auto_loc", "_auto_scale"))}
    return partial(_trajectory_ensemble, t0=jnp.float32(times[0]),
                   dt=jnp.float32(times[1] - times[0]), networks=networks, params=global_params,
                   config=fitted.config, n_samples=n_samples, n_out=len(times),
                   substeps=substeps, method=method)


def forecast(
    rng_key: jax.Array,
    fitted: FittedModel | Sequence[FittedModel],
    ds: xr.Dataset,
    *,
    split: str | None = "test",
    n_samples: int = 64,
    substeps: int = 1,
    method: str = "heun",
    n_steps: int | None = None,
    levels: Sequence[float] | None = None,
    return_samples: bool = False,
) -> xr.Dataset:
    """Forecast every trajectory of ``split`` from its first snapshot.

    ``fitted`` may be a sequence of ``R`` models fitted to the same data (e.g. from different
    seeds): the forecast is then the equal-weight mixture of their ensembles (a deep
    ensemble), ``n_samples`` members per model. Its mean is the average of the models' means,
    its variance the mixture's (:math:`\\overline{\\mathrm{std}^2 + \\mathrm{mean}^2} -
    \\mathrm{mean}^2`), and quantiles and CRPS use all ``R * n_samples`` draws. The models'
    latent spaces are not comparable, so ``latent_mean`` and ``latent_std`` gain a leading
    ``fit`` dim.

    Optional outputs (nothing else changes when they are requested):

    - ``levels``: nominal probabilities ``p`` of central predictive intervals; adds ``lower`` and
      ``upper`` (dims ``("level", *data dims)``, the ``(1 - p)/2`` and ``(1 + p)/2`` quantiles of
      the predictive draws, linear interpolation);
    - ``return_samples``: adds ``samples`` (dims ``("sample", *data dims)``), the predictive draws
      :math:`\\mu_y + \\sigma_y\\varepsilon`, one per member (memory: ``n_samples`` fields).

    Returns:
        ``xarray.Dataset`` with ``mean``, ``std``, ``q05``, ``q95``, ``macro`` and ``micro``
        (ensemble means of :math:`P\\zeta` and of the weighted micro part) on the data's dims,
        ``crps`` (per trajectory and time, against the noisy data), and ``latent_mean``,
        ``latent_std`` (``traj, time, latent``).
    """
    y, times = observations(ds, split)
    if n_steps is not None:
        y, times = y[:, :n_steps], times[:n_steps]
    n_out = y.shape[1]
    fits = [fitted] if isinstance(fitted, FittedModel) else list(fitted)
    if not fits:
        raise ValueError("forecast needs at least one fitted model")
    ensembles = [trajectory_ensemble(f, times, n_samples, substeps, method) for f in fits]

    keys = jax.random.split(rng_key, y.shape[0])
    parts = []
    for key, y_traj in zip(keys, y, strict=True):
        fit_keys = [key] if len(fits) == 1 else jax.random.split(key, len(fits))
        runs = [jax.tree.map(np.asarray, ensemble(k, jnp.asarray(y_traj)))
                for ensemble, k in zip(ensembles, fit_keys, strict=True)]
        draws, summary = runs[0] if len(runs) == 1 else _mixture(runs)
        draws = draws[:n_out]  # (T, R * S, C, *fine)
        summary.update(_sample_statistics(draws, y_traj))
        if levels is not None:
            summary.update(_interval_bounds(draws, levels))
        if return_samples:
            summary["samples"] = np.moveaxis(draws, 1, 0)
        parts.append(summary)
    out = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    result = _as_dataset(out, ds, split, n_out, ensemble=len(fits) > 1)
    if levels is not None or return_samples:
        result = _add_optional(result, out, levels)
    return result


def _mixture(runs: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """Pool the ensembles ``(draws, summary)`` of several models with equal weights."""
    draws = np.concatenate([d for d, _ in runs], axis=1)
    summaries = [s for _, s in runs]
    stack = lambda name: np.stack([s[name] for s in summaries])  # noqa: E731
    mean = stack("mean").mean(0)
    second = (stack("std") ** 2 + stack("mean") ** 2).mean(0)
    summary = dict(mean=mean, std=np.sqrt(np.maximum(second - mean**2, 0.0)),
                   macro=stack("macro").mean(0), micro=stack("micro").mean(0),
                   latent_mean=stack("latent_mean"), latent_std=stack("latent_std"))
    return draws, summary


def _interval_bounds(draws: np.ndarray, levels: Sequence[float], block: int = 64) -> dict:
    """Central-interval bounds ``(level, T, ...)`` of predictive draws ``(T, S, ...)``."""
    probs = np.asarray(levels, np.float64)
    if probs.ndim != 1 or np.any((probs <= 0) | (probs >= 1)):
        raise ValueError(f"levels must be probabilities in (0, 1), got {levels}")
    lower = np.empty((len(probs), draws.shape[0], *draws.shape[2:]), draws.dtype)
    upper = np.empty_like(lower)
    for start in range(0, draws.shape[0], block):
        chunk = draws[start : start + block]
        lower[:, start : start + block] = np.quantile(chunk, (1 - probs) / 2, axis=1)
        upper[:, start : start + block] = np.quantile(chunk, (1 + probs) / 2, axis=1)
    return {"lower": lower, "upper": upper}


def _add_optional(result: xr.Dataset, out: dict, levels: Sequence[float] | None) -> xr.Dataset:
    """Add ``lower``/``upper`` (``level``) and ``samples`` (``sample``) to a forecast."""
    dims = result["mean"].dims
    has_field = "field" in dims

    def squeeze(arr: np.ndarray, axis: int) -> np.ndarray:
        return arr if has_field else np.take(arr, 0, axis=axis)

    if levels is not None:
        for name in ("lower", "upper"):  # (traj, level, T, C, ...) -> (level, traj, T, ...)
            arr = squeeze(np.moveaxis(out[name], 1, 0), 3)
            result[name] = (("level", *dims), arr.astype(np.float32))
        result = result.assign_coords(level=np.asarray(levels, np.float64))
    if "samples" in out:  # (traj, S, T, C, ...) -> (S, traj, T, ...)
        arr = squeeze(np.moveaxis(out["samples"], 1, 0), 3)
        result["samples"] = (("sample", *dims), arr.astype(np.float32))
    return result


def _sample_statistics(draws: np.ndarray, obs: np.ndarray, block: int = 64) -> dict:
    """5% and 95% quantiles (linear interpolation) and the fair ensemble CRPS per time, from
    predictive draws ``(T, S, ...)``; sorted in NumPy by blocks of times (XLA's CPU sort is
    several times slower, and blocks bound the memory)."""
    n = draws.shape[1]
    pos = np.array([0.05, 0.95]) * (n - 1)
    lo, frac = np.floor(pos).astype(int), pos - np.floor(pos)
    weights = (2 * np.arange(n) - n + 1).astype(np.float64)
    q = np.empty((2, draws.shape[0], *draws.shape[2:]), draws.dtype)
    crps = np.empty(draws.shape[0])
    for start in range(0, draws.shape[0], block):
        chunk = np.sort(np.moveaxis(draws[start : start + block], 1, -1), axis=-1)
        hi = np.minimum(lo + 1, n - 1)
        for j in range(2):
            q[j, start : start + block] = ((1 - frac[j]) * chunk[..., lo[j]]
                                           + frac[j] * chunk[..., hi[j]])
        o = obs[start : start + block][..., None]
        skill = np.abs(chunk - o).mean(-1)
        spread = (chunk * weights).sum(-1) * 2 / (n * (n - 1))
        value = skill - 0.5 * spread
        crps[start : start + block] = value.reshape(value.shape[0], -1).mean(-1)
    return {"q05": q[0], "q95": q[1], "crps": crps}


def _as_dataset(out: dict, ds: xr.Dataset, split: str | None, n_out: int,
                ensemble: bool = False) -> xr.Dataset:
    sel = ds
    if split is not None and "split" in ds.coords:
        sel = ds.isel(traj=np.flatnonzero(np.asarray(ds["split"].values).astype(str) == split))
    sel = sel.isel(time=slice(0, n_out))
    dims = sel["u"].dims
    has_field = "field" in dims
    data = {}
    for name in ("mean", "std", "q05", "q95", "macro", "micro"):
        arr = out[name] if has_field else out[name][:, :, 0]
        data[name] = (dims, arr.astype(np.float32))
    data["crps"] = (("traj", "time"), out["crps"])
    for name in ("latent_mean", "latent_std"):  # ensemble: (traj, fit, ...) -> (fit, traj, ...)
        data[name] = ((("fit",) if ensemble else ()) + ("traj", "time", "latent"),
                      np.moveaxis(out[name], 1, 0) if ensemble else out[name])
    coords = {k: v for k, v in sel.coords.items()}
    result = xr.Dataset(data, coords=coords, attrs={"boundary": ds.attrs["boundary"]})
    for name in ("u", "u_clean"):
        if name in sel:
            result[f"obs_{name}" if name == "u_clean" else "obs"] = sel[name]
    return result


def forecast_metrics(fc: xr.Dataset, eval_steps: int | None = None) -> dict:
    """Rel-L2 of the mean (vs noisy and clean data), CRPS and 90% coverage (method.md §6)."""
    n = fc.sizes["time"] if eval_steps is None else min(int(eval_steps), fc.sizes["time"])
    window = fc.isel(time=slice(0, n))
    noisy = pooled_relative_l2(window["obs"], window["mean"])
    result = {"rel_l2_mean": noisy["mean"], "rel_l2_std": noisy["std"], "n_pairs": noisy["n"]}
    if "obs_u_clean" in window:
        clean = pooled_relative_l2(window["obs_u_clean"], window["mean"])
        result["rel_l2_clean_mean"] = clean["mean"]
        result["rel_l2_clean_std"] = clean["std"]
    inside = (window["obs"] >= window["q05"]) & (window["obs"] <= window["q95"])
    result["coverage_90"] = float(inside.mean())
    result["crps"] = float(window["crps"].mean())
    return result
