r"""Ensemble forecasts of ANY fitted program with one SDE path site (docs/method.md §6).

From a trajectory's first snapshot :math:`y_0`, for a :class:`~msde_ppl.Fitted` program with one
:class:`~msde_ppl.generative.SDEPath` site and one observed site:

1. **globals**: one joint draw of the global sites per ensemble member from the variational
   posterior (``guide.sample_posterior``);
2. **initial state**: :math:`z_0 \sim \mathcal N(m(y_0), v(y_0))`, the guide's amortized
   encoder at the first snapshot;
3. **dynamics**: the path site's own drift :math:`f(t, z, \text{args})` and diffusion
   :math:`s`, read from the program's trace with the member's globals substituted (so a drift
   coefficient that is a sample site, passed as ``drift_args``, varies across members), rolled
   forward with the stochastic Heun method (default) or Euler–Maruyama (:func:`rollout`) in one
   ``lax.scan``, all members in parallel, with inner steps per snapshot interval chosen from
   the drift's stiffness (:mod:`msde_ppl.predict.stability`);
4. **observation**: the program itself, conditioned on the rolled-out path (NumPyro
   ``substitute``), gives the observed site's distribution at every time: its ``mean`` and
   ``variance`` and one predictive draw per member. A variant's own decoder and likelihood are
   used with no extra code; for the built-in product-of-experts likelihood the macro part
   :math:`P\zeta` and the weighted micro part are recorded too.

The forecast mean is the ensemble average of the conditional means, the standard deviation
follows from the law of total variance (:math:`\mathrm{Var}[\mu_y] + \mathbb E[\sigma_y^2]`),
and quantiles and CRPS use the predictive draws.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax import lax
from jax.extend import core as jax_core
from numpyro import handlers

from msde_ppl.data.splits import observations, select_split, split_names
from msde_ppl.generative.likelihood import ProductOfExpertsNormal
from msde_ppl.pipeline.fitted import Fitted, grid_info
from msde_ppl.predict.calibration import ResidualSpread, tail_weights
from msde_ppl.predict.metrics import (
    ENSEMBLE_QUANTILE_METHOD,
    crps_sorted,
    diverged_members,
    divergence_limits,
    ensemble_positions,
)
from msde_ppl.predict.stability import StiffnessProbe, stable_substeps
from msde_ppl.progress import Progress

__all__ = ["forecast", "observe", "program_trace", "rollout", "trajectory_ensemble"]

_DECODE_VALUES = 2**23  # fine-grid values (members x snapshots x field) decoded at a time


def _decode_block(n_samples: int, n_values: int) -> int:
    """Snapshots decoded at a time: 32, fewer when a block of ``n_samples`` fields of
    ``n_values`` values would exceed :data:`_DECODE_VALUES` (2D grids: big temporaries cost
    more in memory traffic than they save in dispatch), and at least 2: the program is traced
    on a window of the block's snapshots, and a path site needs two times."""
    return int(max(2, min(32, _DECODE_VALUES // max(1, n_samples * n_values))))


def rollout(
    rng_key: jax.Array,
    drift: Callable,
    diffusion: jax.Array,
    z0: jax.Array,
    t0: float,
    dt: float,
    n_out: int,
    substeps: int = 1,
    method: str = "heun",
    *,
    args: Any = None,
    args_axes: Any = None,
    adaptive: bool = False,
    max_substeps: int = 64,
    return_substeps: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Paths of the additive-noise SDE ``dz = drift(t, z, args) dt + diag(diffusion) dW``.

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
        drift: ``drift(t, z, args)`` on one state.
        diffusion: ``(S, *state)`` per-member diffusion.
        z0: ``(S, *state)`` initial states.
        t0: initial (absolute) time.
        dt: output spacing; the inner step is ``dt / n``, ``n`` the interval's inner steps.
        n_out: number of outputs including ``z0``.
        substeps: inner steps per output interval (with ``adaptive``, the least number).
        method: ``"heun"`` or ``"euler"``.
        args: the drift's third argument (a pytree), shared or per member.
        args_axes: ``vmap`` axes of ``args`` (``0`` for per-member leaves, ``None`` shared).
        adaptive: choose the inner steps per output interval from the drift's stiffness at
            the current states (:mod:`msde_ppl.predict.stability`), at least
            ``substeps`` and at most ``max(max_substeps, substeps)``: a learned drift whose
            Jacobian has large oscillatory eigenvalues (advective and wave-like data)
            otherwise grows without bound under the explicit step, where the SDE it defines
            does not. Without it the steps are fixed, in a ``lax.scan`` (reverse
            differentiable), with the noise of earlier versions.
        return_substeps: also return the inner steps taken per interval, ``(n_out - 1,)``.

    Returns:
        ``(S, n_out, *state)`` (and the steps per interval with ``return_substeps``).
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown integration method {method!r}; use 'heun' or 'euler'")
    batched = jax.vmap(drift, in_axes=(None, 0, args_axes))
    if not adaptive:
        path = _fixed_step_path(rng_key, batched, diffusion, z0, t0, dt, n_out, substeps,
                                method, args)
        counts = jnp.full((n_out - 1,), substeps, jnp.int32)
        return (path, counts) if return_substeps else path
    max_substeps = max(int(max_substeps), int(substeps))
    horizon = dt * (n_out - 1)
    probe = StiffnessProbe(drift, args, args_axes, z0.shape[0])

    def inner(i, carry):
        t, z, key, h = carry
        kick = diffusion * jnp.sqrt(h) * jax.random.normal(jax.random.fold_in(key, i),
                                                           z.shape, z.dtype)
        return t + h, _step(batched, args, method, t, z, h, kick), key, h

    def outer(carry, key):
        t, z, direction = carry
        key, k_probe = jax.random.split(key)
        eigenvalues, direction = probe.eigenvalues(k_probe, t, z, direction)
        n_sub = stable_substeps(eigenvalues, dt, horizon, method, substeps, max_substeps)
        h = jnp.asarray(dt, z.dtype) / n_sub.astype(z.dtype)
        t_new, z, _, _ = lax.fori_loop(0, n_sub, inner, (t, z, key, h))
        return (t_new, z, direction), (z, n_sub)

    t_start = jnp.asarray(t0, z0.dtype)
    k_probe, k_path = jax.random.split(rng_key)
    direction = probe.start(k_probe, z0)
    keys = jax.random.split(k_path, n_out - 1)
    _, (path, counts) = lax.scan(outer, (t_start, z0, direction), keys)
    path = _with_start(z0, path)
    return (path, counts) if return_substeps else path


def _step(batched: Callable, args: Any, method: str, t, z, h, kick) -> jax.Array:
    """One inner step of :func:`rollout` (its docstring has the two methods) from ``z`` at
    time ``t`` with step ``h`` and noise increment ``kick`` (``diffusion * dW``)."""
    slope = batched(t, z, args)
    if method == "heun":
        slope = 0.5 * (slope + batched(t + h, z + slope * h + kick, args))
    return z + slope * h + kick


def _with_start(z0: jax.Array, path: jax.Array) -> jax.Array:
    """``(S, n_out, *state)`` from the initial states ``(S, *state)`` and the scanned
    outputs ``(n_out - 1, S, *state)``."""
    return jnp.moveaxis(jnp.concatenate([z0[None], path], axis=0), 0, 1)


def _fixed_step_path(rng_key, batched, diffusion, z0, t0, dt, n_out, substeps, method, args):
    """:func:`rollout` with ``substeps`` fixed inner steps per interval (nested scans)."""
    h = dt / substeps

    def inner(carry, key):
        t, z = carry
        kick = diffusion * jnp.sqrt(h) * jax.random.normal(key, z.shape, z.dtype)
        return (t + h, _step(batched, args, method, t, z, h, kick)), None

    def outer(carry, key):
        carry, _ = lax.scan(inner, carry, jax.random.split(key, substeps))
        return carry, carry[1]

    keys = jax.random.split(rng_key, n_out - 1)
    _, path = lax.scan(outer, (jnp.asarray(t0, z0.dtype), z0), keys)
    return _with_start(z0, path)


def _depends_on_input(fn: Callable, *args: Any) -> Any:
    """Which outputs of ``fn(*args)`` depend on ``args`` (a pytree of bools like the output),
    by dependency propagation through ``fn``'s jaxpr (closed-over values are constants)."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    jaxpr = closed.jaxpr
    live = set(jaxpr.invars)

    def reads(var: Any) -> bool:
        return not isinstance(var, jax_core.Literal) and var in live

    for eqn in jaxpr.eqns:
        if any(reads(v) for v in eqn.invars):
            live.update(eqn.outvars)
    return jax.tree.unflatten(jax.tree.structure(out_shape), [reads(v) for v in jaxpr.outvars])


def _observed_parts(fn: Any) -> dict:
    """Decomposition of the built-in likelihood (``macro`` and weighted ``micro``), if any."""
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    if isinstance(base, ProductOfExpertsNormal):
        return {"macro": base.macro, "micro": base.micro_part}
    return {}


def program_trace(fitted: Fitted, params: dict, values: dict, key: jax.Array,
                  times: jax.Array) -> dict:
    """Trace of ``fitted``'s program with its parameters and the latent ``values`` substituted
    (``times``: ``(B, M)``; the observed site is sampled, i.e. ``y=None``)."""
    data = {**params, **values}
    return handlers.trace(handlers.substitute(handlers.seed(fitted.model, key), data=data)
                          ).get_trace(y=None, times=times)


def observe(fitted: Fitted, params: dict, values: dict, key: jax.Array, times: jax.Array):
    """The program's observation part on ONE window given its latent ``values`` (the path of
    shape ``(1, M, *state)`` and the globals): ``(draw, mean, variance, parts)`` of the observed
    site, each ``(M, C, *fine)`` (``parts``: :func:`_observed_parts`)."""
    tr = program_trace(fitted, params, values, key, times)
    fn, value = tr[fitted.obs_site]["fn"], tr[fitted.obs_site]["value"]
    parts = {name: v[0] for name, v in _observed_parts(fn).items()}
    return value[0], fn.mean[0], fn.variance[0], parts


def _build_ensemble(fitted: Fitted, n_out: int, dt: float, n_samples: int, substeps: int,
                    method: str, adaptive: bool = True) -> tuple[Callable, Callable, int]:
    """The compiled parts of the per-trajectory forecast (module docstring): ``roll(key,
    y_traj, t0, params) -> (paths, globals, k_obs, substeps)`` (steps 1-3; ``paths``: ``(S, T',
    *state)``, ``T'`` the horizon padded to whole decode blocks; ``substeps``: ``(T - 1,)``,
    the integrator's inner steps per interval, :func:`rollout` with ``adaptive``) and
    ``decode(params, globals, z_block, key, t_block) -> (draws, summary)`` (step 4 on a block
    of snapshots: draws ``(block, S, C, *fine)``), the number of blocks and the block size
    (:func:`_decode_block`). Decoding a block at a time bounds the memory by one block of
    fields whatever the horizon and the grid."""
    guide = fitted.guide
    site, state_shape = fitted.path_site, fitted.state_shape
    global_sites = fitted.global_sites
    block = _decode_block(n_samples, int(np.prod(fitted.grid["fine_shape"]))
                          * int(fitted.grid["n_channels"]))
    n_blocks = -(-n_out // block)

    def roll(key, y_traj, t0, params):
        k_z0, k_glob, k_path, k_obs, k_trace = jax.random.split(key, 5)
        times2 = (t0 + dt * jnp.arange(2, dtype=jnp.float32))[None]
        draws = guide.sample_posterior(k_glob, params, y=y_traj[None, :2], times=times2,
                                       sample_shape=(n_samples,))
        globals_ = {k: draws[k] for k in global_sites}
        mean0, var0 = guide.encode(params, y_traj[0])
        eps = jax.random.normal(k_z0, (n_samples, *state_shape))
        z0 = mean0[None] + jnp.sqrt(var0)[None] * eps

        still = jnp.zeros((1, 2, *state_shape))

        def dynamics(g: dict):
            path = program_trace(fitted, params, {**g, site: still}, k_trace, times2)[site]["fn"]
            diffusion = jnp.reshape(path.batch_diffusion(), (-1, *state_shape))[0]
            return (path.drift_params, path.drift_args), diffusion

        one = jax.tree.map(lambda x: x[0], globals_)
        static = program_trace(fitted, params, {**one, site: still}, k_trace,
                               times2)[site]["fn"].drift_static
        varies = _depends_on_input(lambda g: dynamics(g)[0], one)
        (drift_params, drift_args), diffusion = jax.vmap(dynamics)(globals_)
        args = jax.tree.map(lambda x, v: x if v else x[0], (drift_params, drift_args), varies)
        axes = jax.tree.map(lambda v: 0 if v else None, varies)

        def member_drift(t, z, a):
            p, extra = a
            return eqx.combine(p, static)(t, z, extra)

        paths, counts = rollout(k_path, member_drift, diffusion, z0, t0, dt, n_out, substeps,
                                method, args=args, args_axes=axes, adaptive=adaptive,
                                return_substeps=True)  # (S, T, *state), (T - 1,)
        pad = [(0, 0), (0, n_blocks * block - n_out)] + [(0, 0)] * len(state_shape)
        return jnp.pad(paths, pad, mode="edge"), globals_, k_obs, counts

    def decode(params, globals_, z_block, key_block, tb):
        def observe_member(g, z, k):
            return observe(fitted, params, {**g, site: z[None]}, k, tb[None])

        # the predictive draws are one normal per member and fine value (a million per
        # snapshot on 128 x 128): threefry's sequential form gives two 32-bit words per
        # block cipher call where the partitionable form (JAX's default, for sharded arrays)
        # keeps one, and halves the decode's largest cost; same distribution, another stream
        with jax.threefry_partitionable(False):
            keys = jax.random.split(key_block, n_samples)
            draw, mu, var, extra = jax.vmap(observe_member)(globals_, z_block, keys)
        mean = _member_mean(mu)
        std = jnp.sqrt(_member_mean((mu - mean[None]) ** 2) + _member_mean(var, like=mu))
        summary = dict(mean=mean, std=std)
        for k, v in extra.items():
            summary[k] = _member_mean(v)
            summary[f"{k}_std"] = jnp.sqrt(_member_mean((v - summary[k][None]) ** 2))
        return jnp.swapaxes(draw, 0, 1), summary  # (block, S, C, *fine)

    return jax.jit(roll), jax.jit(decode), n_blocks, block


def _member_mean(x: jax.Array, like: jax.Array | None = None) -> jax.Array:
    """Mean over the leading (member) axis as a matrix-vector product: XLA's CPU reduction
    over a leading axis of 2D fields walks memory with the field's stride and took 65% of a
    dam-break decode (64 members of 128 x 128), the product streams it. ``like``: broadcast
    ``x`` to its shape first (a variance shared by the grid)."""
    if like is not None:
        x = jnp.broadcast_to(x, like.shape)
    weights = jnp.full((x.shape[0],), 1.0 / x.shape[0], x.dtype)
    return jnp.tensordot(weights, x, axes=(0, 0))


class TrajectoryEnsemble:
    """The compiled ensemble forecast of one trajectory (:func:`trajectory_ensemble`).

    ``ensemble.blocks(key, y_traj, t0)`` returns the latent statistics (``latent_mean``,
    ``latent_std``: ``(T, n_z)``; ``substeps``: ``(T,)``, the integrator's inner steps over
    the interval ending at each snapshot, 0 at the first) and an iterator over decode blocks
    ``(start, draws, summary)``: predictive draws ``(b, S, C, *fine)`` of snapshots
    ``start .. start + b - 1`` and their ensemble ``mean``, ``std`` (and ``macro``/``micro``),
    as NumPy arrays; only one block of fields is in memory at a time. ``ensemble(key, y_traj,
    t0)`` returns all of it at once: ``(draws (T, S, C, *fine), summary)``.
    """

    def __init__(self, parts: tuple[Callable, Callable, int], params: dict, start: float,
                 dt: float, n_out: int):
        self._roll, self._decode, self._n_blocks, self._block = parts
        self._params, self._start, self._dt, self._n_out = params, start, dt, n_out

    def blocks(self, key: jax.Array, y_traj, t0: float | None = None):
        t0 = jnp.float32(self._start if t0 is None else t0)
        paths, globals_, k_obs, counts = self._roll(key, jnp.asarray(y_traj), t0, self._params)
        flat = np.asarray(paths[:, : self._n_out]).reshape(paths.shape[0], self._n_out, -1)
        latent = dict(latent_mean=flat.mean(0), latent_std=flat.std(0),
                      substeps=np.concatenate([[0], np.asarray(counts)]).astype(np.int32))
        keys = jax.random.split(k_obs, self._n_blocks)

        def iterate():
            for b in range(self._n_blocks):
                start = b * self._block
                tb = t0 + self._dt * (start + jnp.arange(self._block, dtype=jnp.float32))
                z_block = lax.dynamic_slice_in_dim(paths, start, self._block, axis=1)
                draws, summary = self._decode(self._params, globals_, z_block, keys[b], tb)
                valid = min(self._block, self._n_out - start)
                yield (start, np.asarray(draws)[:valid],
                       {k: np.asarray(v)[:valid] for k, v in summary.items()})

        return latent, iterate()

    def __call__(self, key: jax.Array, y_traj, t0: float | None = None):
        latent, blocks = self.blocks(key, y_traj, t0)
        draws = summary = None
        for start, block_draws, block_summary in blocks:  # filled in place: one copy
            if draws is None:
                draws = np.empty((self._n_out, *block_draws.shape[1:]), block_draws.dtype)
                summary = {k: np.empty((self._n_out, *v.shape[1:]), v.dtype)
                           for k, v in block_summary.items()}
            draws[start:start + len(block_draws)] = block_draws
            for k, v in block_summary.items():
                summary[k][start:start + len(v)] = v
        return draws, {**summary, **latent}


def trajectory_ensemble(fitted: Fitted, times: np.ndarray, n_samples: int = 64,
                        substeps: int = 1, method: str = "heun", *,
                        params: dict | None = None,
                        adaptive_steps: bool = True) -> TrajectoryEnsemble:
    """The compiled per-trajectory forecast of :func:`forecast` over ``times``
    (:class:`TrajectoryEnsemble`; ``y_traj``: ``(T, C, *fine)``), from time ``t0`` (default
    ``times[0]``).

    Compiled once per fitted model and horizon: later trajectories and later calls with the same
    sizes reuse the program (``fitted`` keeps it). ``params`` (default ``fitted.params``) runs
    the same program with other parameters of the same structure (e.g. later checkpoints of
    the same fit), without compiling again. ``adaptive_steps``: the inner steps per snapshot
    interval from the drift's stiffness, at least ``substeps`` (:func:`rollout`,
    :mod:`msde_ppl.predict.stability`); off: exactly ``substeps``."""
    times = np.asarray(times)
    dt = float(times[1] - times[0])
    signature = (len(times), dt, int(n_samples), int(substeps), method, bool(adaptive_steps))
    if signature not in fitted._compiled:
        fitted._compiled[signature] = _build_ensemble(fitted, len(times), dt, int(n_samples),
                                                      int(substeps), method,
                                                      bool(adaptive_steps))
    params = jax.tree.map(jnp.asarray, fitted.params if params is None else params)
    return TrajectoryEnsemble(fitted._compiled[signature], params, float(times[0]), dt,
                              len(times))


def _check_grid(fitted: Fitted, ds: xr.Dataset) -> None:
    grid = fitted.grid
    dims = [d for d in ds["u"].dims if d not in ("traj", "time", "field")]
    shape = [int(ds.sizes[d]) for d in dims]
    channels = int(ds.sizes.get("field", 1))
    if shape != list(grid["fine_shape"]) or channels != grid["n_channels"]:
        raise ValueError(f"the data's grid {shape} with {channels} field(s) differs from the "
                         f"model's {grid['fine_shape']} with {grid['n_channels']}")


def forecast(
    rng_key: jax.Array,
    fitted: Fitted | Sequence[Fitted],
    ds: xr.Dataset,
    *,
    split: str | None = "test",
    n_samples: int = 64,
    substeps: int = 1,
    method: str = "heun",
    adaptive_steps: bool = True,
    n_steps: int | None = None,
    levels: Sequence[float] | None = None,
    return_samples: bool = False,
    spread_factor: float | Sequence[float] | np.ndarray | None = None,
    residual_gain: Sequence[float] | np.ndarray | None = None,
    micro_weight: Sequence[float] | np.ndarray | None = None,
    residual_spread: ResidualSpread | None = None,
    spread_tail: float | None = None,
    progress: bool | str = False,
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
      the predictive draws at the order-statistic positions ``q(S + 1)``,
      :data:`~msde_ppl.predict.metrics.ENSEMBLE_QUANTILE_METHOD`);
    - ``return_samples``: adds ``samples`` (dims ``("sample", *data dims)``), the predictive
      draws, one per member (memory: ``n_samples`` fields).

    ``spread_factor`` (a scalar, or one value per output time) inflates every predictive draw's
    deviation from the ensemble mean, :math:`\\bar y + c(\\tau)(y^{(s)} - \\bar y)`, before
    any statistic is taken (``std`` is multiplied by :math:`c`; the mean, the latent
    statistics and ``macro``/``micro`` are unchanged): the post-hoc calibration of
    :mod:`msde_ppl.predict.calibration`, fitted on the validation split.

    ``residual_spread`` (a :class:`~msde_ppl.predict.calibration.ResidualSpread`) multiplies
    that inflation, per trajectory, by :math:`m(r)`, :math:`r` the RMS of the first snapshot's
    reconstruction residual :math:`y_0 - \\bar y_0` (the output then has ``spread_multiplier``,
    dims ``traj``).

    ``spread_tail`` (degrees of freedom :math:`\\nu > 2`; ``None`` or ``inf``: none) further
    scales member :math:`s`'s deviation by a fixed weight :math:`w_s` with
    :math:`\\overline{w^2} = 1`, a Student-t scale mixture
    (:func:`~msde_ppl.predict.calibration.tail_weights`): the same ``std``, heavier tails
    and narrower central intervals. The weighted deviations are re-centred so that the draws'
    average is the one without the tail (in the bounded coordinate below; in the data's units
    to within its curvature).

    The factor and the tail inflate the deviations in a coordinate that maps the data's
    bounds (:func:`~msde_ppl.predict.metrics.divergence_limits`) onto the real line
    (:func:`_calibrated_draws`): linear within the training data's range, and no member the
    dynamics kept inside the bounds is carried out of them (``std`` is the raw one times
    :math:`c`).

    ``residual_gain`` (one value per output time, or ``(time, field)``) moves every draw by
    :math:`a(\\tau)\\,(y_0 - \\bar y_0)`, before the inflation (the two commute where it is
    linear), the first snapshot's reconstruction residual carried forward (residual
    persistence, :func:`~msde_ppl.predict.fit_residual_gain`): ``mean`` and the predictive
    statistics move with it, ``macro``/``micro`` stay the model's parts.

    ``micro_weight`` (the same shapes; needs ``residual_gain`` and a model with a micro part,
    ``micro`` in the output) weights the micro part's ensemble mean in every draw instead
    (each member keeps its own deviation from it),
    :math:`y^{(s)}_\\tau + a(\\tau)\\,r_0 + (b(\\tau) - 1)\\,\\bar m_\\tau`, the residual
    then taken with respect to the macro part, :math:`r_0 = y_0 - (\\bar y_0 - \\bar m_0)`
    (:func:`~msde_ppl.predict.fit_persistence`; :math:`\\bar m_\\tau` the micro part's
    ensemble mean).

    ``adaptive_steps`` (default on) chooses the integrator's inner steps per snapshot
    interval, at least ``substeps``, from the drift's stiffness at the members' states
    (:func:`rollout`); off, exactly ``substeps``. The output's ``substeps`` (``traj, time``)
    are the steps taken over the interval ending at each snapshot.

    ``progress`` reports one line per trajectory (:class:`msde_ppl.progress.Progress`; a string
    is the label).

    Returns:
        ``xarray.Dataset`` with ``mean``, ``std``, ``q05``, ``q95`` on the data's dims (and,
        for the product-of-experts likelihood, ``macro`` and ``micro``: ensemble means of
        :math:`P\\zeta` and of the weighted micro part, with their ensemble spreads
        ``macro_std`` and ``micro_std``), ``crps`` (per trajectory and time,
        against the noisy data), ``latent_mean``, ``latent_std`` (``traj, time, latent``) and
        ``diverged`` (``traj, member``: the member left the training data's bounds,
        :func:`~msde_ppl.predict.metrics.diverged_members`; the bounds are its attributes).
    """
    fits = [fitted] if isinstance(fitted, Fitted) else list(fitted)
    if not fits:
        raise ValueError("forecast needs at least one fitted model")
    for f in fits:
        _check_grid(f, ds)
    y, times = observations(ds, split)
    if n_steps is not None:
        y, times = y[:, :n_steps], times[:n_steps]
    n_out = y.shape[1]
    if n_out < 2:
        raise ValueError(f"a forecast needs at least 2 snapshots, got {n_out}")
    factor = None
    if spread_factor is not None:
        factor = np.broadcast_to(np.asarray(spread_factor, np.float64), (n_out,)) \
            if np.ndim(spread_factor) == 0 else np.asarray(spread_factor, np.float64)
        if factor.shape != (n_out,) or not (np.isfinite(factor).all() and (factor > 0).all()):
            raise ValueError(f"spread_factor must be a positive scalar or {n_out} positive "
                             f"values (one per output time), got shape "
                             f"{np.shape(spread_factor)}")
    gain = None if residual_gain is None else _gain_per_field(residual_gain, n_out, y.shape[2])
    if micro_weight is not None:
        if gain is None:
            raise ValueError("micro_weight weights the micro part in the residual-persistence "
                             "correction: it needs residual_gain too")
        micro_weight = _gain_per_field(micro_weight, n_out, y.shape[2], "micro_weight")
    weights = None
    if spread_tail is not None:
        # each model of a mixture: the same weights (raises for dof <= 2)
        weights = np.tile(tail_weights(spread_tail, n_samples), len(fits))
        if np.all(weights == 1.0):
            weights = None
    ensembles = [trajectory_ensemble(f, times, n_samples, substeps, method,
                                     adaptive_steps=adaptive_steps) for f in fits]
    lower, upper = divergence_limits(_training_range(fits[0], ds))

    keys = jax.random.split(rng_key, y.shape[0])
    out: dict[str, np.ndarray] = {}  # (traj, ...) per statistic, filled one trajectory at a time
    label = progress if isinstance(progress, str) else f"forecast ({split or 'all'})"
    bar = Progress(y.shape[0], label, unit="trajectory", enabled=bool(progress))
    bar.compiling()
    for i, (key, y_traj) in enumerate(zip(keys, y, strict=True)):
        fit_keys = [key] if len(fits) == 1 else jax.random.split(key, len(fits))
        runs = [ensemble.blocks(k, y_traj) for ensemble, k in zip(ensembles, fit_keys,
                                                                  strict=True)]
        latents = [latent for latent, _ in runs]
        summary = dict(latents[0]) if len(fits) == 1 else {
            name: np.stack([latent[name] for latent in latents]) for name in latents[0]}
        diverged = None
        for block in zip(*(blocks for _, blocks in runs), strict=True):
            start = block[0][0]
            draws, stats = block[0][1:] if len(block) == 1 else _mixture(
                [b[1:] for b in block])  # (b, R * S, C, *fine)
            span = slice(start, start + draws.shape[0])
            if micro_weight is not None and "micro" not in stats:
                raise ValueError("micro_weight needs a model with a micro part (the "
                                 "product-of-experts likelihood's 'micro'); this one has none")
            if start == 0:  # blocks come in order: the first holds lead 0
                residual = y_traj[0] - stats["mean"][0]  # (C, *fine)
                if residual_spread is not None:  # of the reconstruction residual, always
                    rms = float(np.sqrt(np.mean(np.square(residual, dtype=np.float64))))
                    summary["spread_multiplier"] = np.asarray(
                        residual_spread.multiplier(rms), np.float32)
                if micro_weight is not None:  # carried: with respect to the macro part
                    residual = residual + stats["micro"][0]
            multiplier = (1.0 if residual_spread is None
                          else float(summary["spread_multiplier"]))
            c = shift = None
            if factor is not None or residual_spread is not None or weights is not None:
                c = _block_factor(np.ones(n_out) if factor is None else factor, multiplier,
                                  span, draws)
            if gain is not None:
                a = gain[span].reshape(-1, *residual.shape[:1], *(1,) * (residual.ndim - 1))
                shift = a * residual  # (b, C, *fine)
                if micro_weight is not None:
                    w = micro_weight[span].reshape(a.shape)
                    shift = shift + (w - 1) * stats["micro"]
                shift = shift.astype(draws.dtype)
            raw_mean = stats["mean"]
            draws, ratio = _calibrated_draws(draws, raw_mean, c, weights, shift, (lower, upper))
            if ratio is not None:
                stats["std"] = stats["std"] * ratio
            if shift is not None:
                stats["mean"] = raw_mean + shift
            hit = diverged_members(draws, lower, upper)
            diverged = hit if diverged is None else diverged | hit
            stats.update(_sample_statistics(draws, y_traj[span]))
            if levels is not None:
                stats.update({k: np.moveaxis(v, 0, 1) for k, v in
                              _interval_bounds(draws, levels).items()})  # (b, level, ...)
            if return_samples:
                stats["samples"] = draws
            for name, value in stats.items():
                if name not in summary:
                    summary[name] = np.empty((n_out, *value.shape[1:]), value.dtype)
                summary[name][span] = value
        summary["diverged"] = diverged
        if levels is not None:
            for name in ("lower", "upper"):
                summary[name] = np.moveaxis(summary[name], 1, 0)
        if return_samples:
            summary["samples"] = np.moveaxis(summary["samples"], 1, 0)
        for name, value in summary.items():  # no list of per-trajectory copies to stack
            if name not in out:
                out[name] = np.empty((y.shape[0], *value.shape), value.dtype)
            out[name][i] = value
        del summary
        bar.update(1)
    bar.close()
    result = _as_dataset(out, ds, split, n_out, ensemble=len(fits) > 1)
    result["diverged"].attrs.update(  # the bounds as text: netCDF keeps strings exactly
        description="member left the data's bounds: a non-finite value, or one outside "
        "[lower, upper] (one pair per field) at some time",
        bounds=json.dumps({"lower": lower.tolist(), "upper": upper.tolist()}))
    if levels is not None or return_samples:
        result = _add_optional(result, out, levels)
    return result


def _block_factor(factor: np.ndarray, multiplier: float, span: slice,
                  draws: np.ndarray) -> np.ndarray:
    """One block's spread factor ``(b, 1, ...)`` (broadcasting over ``draws``' members and
    fields): the lead times ``span`` of ``factor`` ``(n_out,)`` times the trajectory's
    multiplier."""
    return np.reshape(factor[span] * multiplier,
                      (-1,) + (1,) * (draws.ndim - 1)).astype(draws.dtype)


def _calibrated_draws(draws: np.ndarray, mean: np.ndarray, c: np.ndarray | None,
                      weights: np.ndarray | None, shift: np.ndarray | None,
                      bounds: tuple[np.ndarray, np.ndarray] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    r"""One block's members ``(b, S, C, *fine)`` after the post-hoc calibration, and the factor
    of the reported spread, ``(b, 1, ...)`` (``None`` without an inflation).

    The residual shift ``shift`` ``(b, C, *fine)`` moves every member and the mean ``mean``
    ``(b, C, *fine)`` first (it commutes with a linear inflation). The deviations are then
    inflated by the factor ``c`` ``(b, 1, ...)`` and the tail's weights :math:`w_s` (re-centred
    so the deviations' average does not move); ``None`` leaves that step out. Without
    ``bounds``: :math:`\bar y + c\,(w_s d_s - \overline{w d})` with
    :math:`d_s = y^{(s)} - \bar y`; the reported spread is multiplied by :math:`c`. With
    ``bounds`` (per field ``lower, upper``, shape ``(C,)``:
    :func:`~msde_ppl.predict.metrics.divergence_limits`) the inflation acts in the coordinate
    :math:`\zeta = \operatorname{artanh}((y - \kappa)/h)` that maps the bounds' interval
    (centre :math:`\kappa`, half-width :math:`h`) onto the real line,

    .. math:: \tilde y^{(s)} = \kappa + h \tanh\big(\overline{\zeta}
              + c\,(w_s \delta_s - \overline{w\delta})\big), \qquad
              \delta_s = \zeta(y^{(s)}) - \overline{\zeta},

    :math:`\overline{\zeta}` the average over the members inside the bounds, so no inflation
    carries a member out of them, and a factor of 1 without a tail changes nothing. Within the
    training data's range (the inner third of the bounds' width) :math:`\tanh` is linear to
    within 4% and so is the inflation; a deviation of the order of the data's range (a front
    the member places elsewhere, times a factor of 3) is compressed as it nears a bound (the
    reported spread stays :math:`c` times the raw one: the spread the inflation aims at, which
    the compressed members fall short of only near the bounds). A member already outside the
    bounds (or not finite: the dynamics diverged) is inflated linearly, so it stays counted;
    the others keep their anchor, the average of the members inside. Jitted
    (:func:`_inflate`): on a 2D block of 8 snapshots x 64 members x 128 x 128 it takes about
    twice the linear inflation's time (0.11 s against 0.05 s)."""
    if c is None and weights is None:
        return (draws if shift is None else draws + shift[:, None]), None
    c_spread = np.ones((1,) * (draws.ndim - 1), draws.dtype) if c is None else c[:, 0]
    limits = (None, None) if bounds is None else _bounds_inward(*bounds, draws.dtype)
    as_array = lambda x: None if x is None else np.asarray(x, draws.dtype)  # noqa: E731
    out = _inflate(draws, mean.astype(draws.dtype), as_array(c), as_array(weights),
                   as_array(shift), *limits)
    return np.asarray(out), c_spread


@jax.jit
def _inflate(draws, mean, c, weights, shift, lower, upper):
    """:func:`_calibrated_draws`' transform, traced (``None`` arguments leave their step out;
    ``lower is None``: the linear inflation): one fused pass of XLA's, on both cores."""
    if shift is not None:
        draws = draws + shift[:, None]
        mean = mean + shift
    mean = mean[:, None]

    def inflate(deviation):
        if weights is not None:
            w = weights.reshape(1, -1, *(1,) * (draws.ndim - 2))
            weighted = w * deviation
            deviation = (weighted - weighted.mean(1, keepdims=True)
                         + deviation.mean(1, keepdims=True))
        return deviation if c is None else c * deviation

    linear = mean + inflate(draws - mean)
    if lower is None:
        return linear
    shape = (1, 1, -1) + (1,) * (draws.ndim - 3)
    lower, upper = jnp.reshape(lower, shape), jnp.reshape(upper, shape)
    centre, half = (lower + upper) / 2, (upper - lower) / 2
    edge = 1 - 4 * jnp.finfo(draws.dtype).eps  # artanh stays finite
    p = (draws - centre) / half
    inside = jnp.abs(p) < 1  # False where not finite
    n_inside = jnp.maximum(inside.sum(1, keepdims=True), 1)
    # the anchor: the members inside the bounds, averaged (inside them too, whatever the others)
    anchor = jnp.where(inside, draws, 0).sum(1, keepdims=True) / n_inside
    q, p = (anchor - centre) / half, jnp.where(inside, p, 0)
    # differences of artanh and tanh from the small deviations themselves (no cancellation in
    # float32): artanh p - artanh q = artanh((p - q) / (1 - p q)) and
    # tanh(a + b) - tanh a = tanh b (1 - tanh^2 a) / (1 + tanh a tanh b)
    ratio = jnp.where(inside, ((draws - anchor) / half) / (1 - p * q), 0)
    delta = jnp.arctanh(jnp.clip(ratio, -edge, edge))  # zeta(y_s) - zeta(anchor); 0 outside
    average = delta.sum(1, keepdims=True) / n_inside  # mean zeta - zeta(anchor)
    step = jnp.tanh(average + inflate(jnp.where(inside, delta - average, 0)))
    bounded = anchor + half * step * (1 - q * q) / (1 + q * step)
    # strictly inside in exact arithmetic; float32 can round a saturated tanh one ulp past
    return jnp.where(inside, jnp.clip(bounded, lower, upper), linear)


def _bounds_inward(lower, upper, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The bounds in ``dtype``, each rounded towards the other: a member clipped to them is
    inside the exact bounds :func:`~msde_ppl.predict.metrics.diverged_members` checks."""
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    low, high = lower.astype(dtype), upper.astype(dtype)
    low = np.where(low < lower, np.nextafter(low, np.asarray(np.inf, dtype)), low)
    high = np.where(high > upper, np.nextafter(high, np.asarray(-np.inf, dtype)), high)
    return low.astype(dtype), high.astype(dtype)


def _gain_per_field(gain, n_out: int, n_channels: int, name: str = "residual_gain"
                    ) -> np.ndarray:
    """A residual gain (or micro weight, ``name``) as ``(n_out, n_channels)`` (one value per
    time is shared by the fields)."""
    arr = np.asarray(gain, np.float64)
    if arr.ndim == 1:
        arr = np.repeat(arr[:, None], n_channels, axis=1)
    if arr.shape != (n_out, n_channels) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be {n_out} finite values (one per output time) or "
                         f"({n_out}, {n_channels}) (per time and field), got shape "
                         f"{np.shape(gain)}")
    return arr


def _training_range(fitted: Fitted, ds: xr.Dataset) -> list:
    """Per field ``[min, max]`` of the model's training data (saved with it), or, for a model
    saved without it, of ``ds``'s train split (all of ``ds`` if it has none)."""
    saved = fitted.grid.get("data_range")
    if saved is not None and all(r is not None for r in saved):
        return saved
    return grid_info(ds, "train" if "train" in split_names(ds) else None)["data_range"]


def _mixture(runs: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """Pool one block of the ensembles ``(draws, summary)`` of several models with equal
    weights."""
    draws = np.concatenate([d for d, _ in runs], axis=1)
    summaries = [s for _, s in runs]
    stack = lambda name: np.stack([s[name] for s in summaries])  # noqa: E731
    mean = stack("mean").mean(0)
    second = (stack("std") ** 2 + stack("mean") ** 2).mean(0)
    summary = dict(mean=mean, std=np.sqrt(np.maximum(second - mean**2, 0.0)))
    for name in ("macro", "micro"):
        if all(name in s for s in summaries):
            summary[name] = stack(name).mean(0)
        if all(f"{name}_std" in s for s in summaries):  # the pooled spread, as for std
            spread = (stack(f"{name}_std") ** 2 + stack(name) ** 2).mean(0)
            summary[f"{name}_std"] = np.sqrt(np.maximum(spread - summary[name] ** 2, 0.0))
    return draws, summary


def _interval_bounds(draws: np.ndarray, levels: Sequence[float], block: int = 64) -> dict:
    """Central-interval bounds ``(level, T, ...)`` of predictive draws ``(T, S, ...)``, read as
    :data:`~msde_ppl.predict.metrics.ENSEMBLE_QUANTILE_METHOD`."""
    probs = np.asarray(levels, np.float64)
    if probs.ndim != 1 or np.any((probs <= 0) | (probs >= 1)):
        raise ValueError(f"levels must be probabilities in (0, 1), got {levels}")
    lower = np.empty((len(probs), draws.shape[0], *draws.shape[2:]), draws.dtype)
    upper = np.empty_like(lower)
    for start in range(0, draws.shape[0], block):
        chunk = draws[start : start + block]
        lower[:, start : start + block] = np.quantile(chunk, (1 - probs) / 2, axis=1,
                                                      method=ENSEMBLE_QUANTILE_METHOD)
        upper[:, start : start + block] = np.quantile(chunk, (1 + probs) / 2, axis=1,
                                                      method=ENSEMBLE_QUANTILE_METHOD)
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
    """5% and 95% quantiles (read as :data:`~msde_ppl.predict.metrics.ENSEMBLE_QUANTILE_METHOD`)
    and the fair ensemble CRPS per time, from
    predictive draws ``(T, S, ...)``; sorted in NumPy by blocks of times (XLA's CPU sort is
    several times slower, and blocks bound the memory)."""
    n = draws.shape[1]
    pos = ensemble_positions(np.array([0.05, 0.95]), n)
    lo, frac = np.floor(pos).astype(int), pos - np.floor(pos)
    q = np.empty((2, draws.shape[0], *draws.shape[2:]), draws.dtype)
    crps = np.empty(draws.shape[0])
    for start in range(0, draws.shape[0], block):
        chunk = np.ascontiguousarray(np.moveaxis(draws[start : start + block], 1, -1))
        chunk.sort(axis=-1)  # in place on a contiguous copy: several times faster
        hi = np.minimum(lo + 1, n - 1)
        for j in range(2):
            q[j, start : start + block] = ((1 - frac[j]) * chunk[..., lo[j]]
                                           + frac[j] * chunk[..., hi[j]])
        value = crps_sorted(chunk, obs[start : start + block])
        crps[start : start + block] = value.reshape(value.shape[0], -1).mean(-1)
    return {"q05": q[0], "q95": q[1], "crps": crps}


def _as_dataset(out: dict, ds: xr.Dataset, split: str | None, n_out: int,
                ensemble: bool = False) -> xr.Dataset:
    sel = select_split(ds, split) if "split" in ds.coords else ds
    sel = sel.isel(time=slice(0, n_out))
    dims = sel["u"].dims
    has_field = "field" in dims
    data = {}
    for name in ("mean", "std", "q05", "q95", "macro", "micro", "macro_std", "micro_std"):
        if name in out:
            arr = out[name] if has_field else out[name][:, :, 0]
            data[name] = (dims, arr.astype(np.float32, copy=False))
    data["crps"] = (("traj", "time"), out["crps"])
    data["diverged"] = (("traj", "member"), out["diverged"])
    if "spread_multiplier" in out:
        data["spread_multiplier"] = ("traj", out["spread_multiplier"])
    data["substeps"] = ((("fit",) if ensemble else ()) + ("traj", "time"),
                        np.moveaxis(out["substeps"], 1, 0) if ensemble else out["substeps"])
    for name in ("latent_mean", "latent_std"):  # ensemble: (traj, fit, ...) -> (fit, traj, ...)
        data[name] = ((("fit",) if ensemble else ()) + ("traj", "time", "latent"),
                      np.moveaxis(out[name], 1, 0) if ensemble else out[name])
    coords = {k: v for k, v in sel.coords.items()}
    result = xr.Dataset(data, coords=coords, attrs={"boundary": ds.attrs.get("boundary", "")})
    for name in ("u", "u_clean"):
        if name in sel:
            result[f"obs_{name}" if name == "u_clean" else "obs"] = sel[name]
    # the data's units and name go with every field of the forecast (figures read them)
    field_attrs = {k: v for k, v in sel["u"].attrs.items() if k in ("units", "long_name")}
    for name in ("mean", "std", "q05", "q95", "macro", "micro", "macro_std", "micro_std", "obs",
                 "obs_u_clean"):
        if name in result:
            result[name].attrs.update(field_attrs)
    return result
