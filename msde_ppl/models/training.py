"""Training recipe for the multiscale model on a dataset in the schema (method.md §4).

- minibatches: ``windows_per_step`` windows of ``window`` consecutive snapshots of the training
  split, drawn uniformly at every step over (trajectory, start) pairs (fixed shapes, so the
  jitted step compiles once). ``sampling="uniform"``: every start, so snapshot ``i`` lies in
  ``min(i + 1, window, n_time - i)`` windows and the first and last ``window - 1`` snapshots
  (the initial condition above all) are seen up to ``window`` times less often than the rest;
  ``"tiled"``: the reference's chunks overlapping by one snapshot
  (:func:`~msde_ppl.data.window_starts`), every snapshot seen equally often;
- objective: the forward-solver-free ELBO, normalised per observed scalar (ELBO / (N n_y), the
  reference's scale), KL-rate integral by the reference's ``T_B mean_i`` rule, with a linear
  KL warm-up over ``warmup_steps``;
- optimiser: Adam, learning rate ``lr`` decayed by 10% every 2000 steps (continuously), as the
  reference; gradient norm clipped at ``clip_norm``;
- ``data_parallel=True`` shards the windows of every step over ``jax.devices()``.

A fitted model is saved as ``params.pkl`` (constrained parameters, NumPy arrays) plus
``config.json`` (sizes and the data's grid), and reloaded with :func:`load_fitted`.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from numpyro.infer.initialization import init_to_value

from msde_ppl.data.sampler import window_starts
from msde_ppl.data.schema import SchemaError, check_coarse, grid_shape, validate
from msde_ppl.inference import (
    AutoAmortizedSDE,
    SolverFreeELBO,
    TemporalKernel,
    fit,
    linear_beta_warmup,
)
from msde_ppl.models.multiscale import (
    ENCODER_NAME,
    PATH_SITE,
    MultiscaleConfig,
    MultiscaleModules,
    build_modules,
    multiscale_model,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: the reference's, see module docstring).

    ``loop`` is how a chunk of ``chunk_size`` steps runs (:func:`~msde_ppl.inference.fit`):
    ``"scan"``, ``"python"``, or ``"auto"`` (``"python"`` when the model has convolutional
    networks, which XLA's CPU backend runs slowly inside a loop, else ``"scan"``).
    ``sampling`` is how window starts are drawn, ``"uniform"`` or ``"tiled"`` (module
    docstring).
    """

    steps: int = 2000
    window: int = 64
    windows_per_step: int = 1
    data_parallel: bool = False
    lr: float = 1e-3
    decay_steps: int = 2000
    decay_rate: float = 0.9
    warmup_steps: int = 1600
    clip_norm: float = 100.0
    chunk_size: int = 100
    seed: int = 0
    loop: str = "auto"
    sampling: str = "uniform"


class FittedModel(NamedTuple):
    """A fitted multiscale model: sizes, networks' structure, and constrained parameters."""

    config: MultiscaleConfig
    modules: MultiscaleModules
    params: dict
    losses: np.ndarray
    wall_time_s: float


def observations(ds: xr.Dataset, split: str | None = "train") -> tuple[np.ndarray, np.ndarray]:
    """``u`` of one split as ``(traj, time, C, *fine)`` float32, and the times (float32)."""
    if split is not None and "split" in ds.coords:
        mask = np.asarray(ds["split"].values).astype(str) == split
        if not mask.any():
            raise SchemaError(f"the dataset has no trajectory in split {split!r}")
        ds = ds.isel(traj=np.flatnonzero(mask))
    u = np.asarray(ds["u"].values, np.float32)
    if "field" not in ds["u"].dims:
        u = u[:, :, None]
    return u, np.asarray(ds["time"].values, np.float32)


def make_model(config: MultiscaleConfig, modules: MultiscaleModules, n_windows: int):
    """The model program bound to its sizes, networks and plate size."""
    return partial(multiscale_model, config=config, modules=modules, n_windows=n_windows)


class WarmStart(NamedTuple):
    """Initial point of a fit: networks, temporal kernel and global-site values."""

    modules: MultiscaleModules
    kernel: TemporalKernel
    global_values: dict


def _window_sharding(windows: int):
    """Data parallelism: shard the windows of a step over all devices (``jax.sharding``).

    Parameters and optimiser state stay replicated; XLA's SPMD partitioner splits the per-window
    work and reduces the gradients across devices. The same code runs on one CPU, several GPUs,
    or several hosts after ``jax.distributed.initialize()``.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    if windows % len(devices):
        raise ValueError(f"{windows} windows per step cannot be split evenly over "
                         f"{len(devices)} devices")
    mesh = Mesh(np.asarray(devices), ("windows",))
    sharding = NamedSharding(mesh, PartitionSpec("windows"))
    return lambda batch: jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)


class TrainingSetup(NamedTuple):
    """Everything a fit of the multiscale model runs: the program pair, objective, optimiser,
    KL-weight schedule and the fixed-shape minibatch function ``batch_fn(key, step)``."""

    modules: MultiscaleModules
    model: Callable
    guide: AutoAmortizedSDE
    elbo: SolverFreeELBO
    optimizer: optax.GradientTransformation
    beta_schedule: Callable | None
    batch_fn: Callable
    loop: str
    fit_key: jax.Array


def training_setup(
    ds: xr.Dataset,
    config: MultiscaleConfig,
    train: TrainConfig = TrainConfig(),
    *,
    warm_start: WarmStart | None = None,
) -> TrainingSetup:
    """Validate ``ds`` against ``config`` and build the fit of its training split (module
    docstring), from scratch or from ``warm_start``."""
    validate(ds, coarse=config.coarse_shape)
    if tuple(grid_shape(ds)) != tuple(config.fine_shape):
        raise SchemaError(f"model fine grid {config.fine_shape} differs from the data's "
                          f"{grid_shape(ds)}")
    check_coarse(ds, config.coarse_shape)
    u_np, t_np = observations(ds, "train")
    n_traj, n_time = u_np.shape[:2]
    if train.window > n_time:
        raise SchemaError(f"window of {train.window} snapshots is longer than the {n_time} "
                          "snapshots per trajectory")
    u, t = jnp.asarray(u_np), jnp.asarray(t_np)
    m, b = train.window, train.windows_per_step
    constrain = _window_sharding(b) if train.data_parallel else (lambda batch: batch)

    if train.sampling not in ("uniform", "tiled"):
        raise ValueError(f"unknown window sampling {train.sampling!r}; use 'uniform' or 'tiled'")
    # uniform: every start (stride 1); tiled: the reference's chunks, overlapping by one
    starts = jnp.asarray(window_starts(n_time, m, m - 1 if train.sampling == "uniform" else 1))

    def batch_fn(rng_key: jax.Array, step: jax.Array) -> dict:
        key_traj, key_start = jax.random.split(rng_key)
        traj = jax.random.randint(key_traj, (b,), 0, n_traj)
        start = starts[jax.random.randint(key_start, (b,), 0, starts.shape[0])]
        idx = start[:, None] + jnp.arange(m)[None, :]
        return constrain({"y": u[traj[:, None], idx], "times": t[idx]})

    n_windows = n_traj * max(1, (n_time - 1) // (m - 1))
    key_modules, key_fit = jax.random.split(jax.random.key(train.seed))
    if warm_start is None:
        modules = build_modules(config, key=key_modules)
        model = make_model(config, modules, n_windows)
        guide = AutoAmortizedSDE(model, modules.encoder)
    else:
        modules = warm_start.modules
        model = make_model(config, modules, n_windows)
        guide = AutoAmortizedSDE(model, modules.encoder, kernel=warm_start.kernel,
                                 init_loc_fn=init_to_value(values=warm_start.global_values))
    elbo = SolverFreeELBO(normalize=True, quadrature="mean")
    schedule = optax.exponential_decay(train.lr, train.decay_steps, train.decay_rate)
    optimizer = optax.chain(optax.clip_by_global_norm(train.clip_norm), optax.adam(schedule))
    beta = None
    if train.warmup_steps > 0:
        beta = partial(linear_beta_warmup, n_transition=train.warmup_steps)
    loop = train.loop
    if loop == "auto":
        loop = "python" if "cnn" in (config.encoder, config.decoder) else "scan"
    return TrainingSetup(modules, model, guide, elbo, optimizer, beta, batch_fn, loop, key_fit)


def fit_multiscale(
    ds: xr.Dataset,
    config: MultiscaleConfig,
    train: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    warm_start: WarmStart | None = None,
    callback: Callable[[FittedModel], bool | None] | None = None,
) -> FittedModel:
    """Fit ``config`` to the training split of ``ds`` (see module docstring), from scratch or
    from ``warm_start``.

    ``callback(fitted_so_far)`` runs after every chunk of steps with the model fitted so far
    (its ``losses`` and ``wall_time_s`` up to that point); its own run time is not counted in
    any wall time, and returning ``True`` stops the fit there.
    """
    setup = training_setup(ds, config, train, warm_start=warm_start)
    spent = [0.0]
    timed_callback = None
    if callback is not None:
        def timed_callback(params: dict, losses: np.ndarray) -> bool | None:
            start_cb = time.perf_counter()
            so_far = FittedModel(config, setup.modules, jax.tree.map(np.asarray, params),
                                 np.asarray(losses), start_cb - start - spent[0])
            stop = callback(so_far)
            spent[0] += time.perf_counter() - start_cb
            return stop

    start = time.perf_counter()
    result = fit(setup.fit_key, setup.model, setup.guide, setup.elbo, setup.optimizer,
                 setup.batch_fn, num_steps=train.steps, chunk_size=train.chunk_size,
                 beta_schedule=setup.beta_schedule, checkpoint_path=checkpoint_path,
                 progress=progress, callback=timed_callback, loop=setup.loop)
    wall = time.perf_counter() - start - spent[0]
    params = jax.tree.map(np.asarray, result.params)
    return FittedModel(config, setup.modules, params, np.asarray(result.losses), wall)


def fitted_networks(fitted: FittedModel) -> MultiscaleModules:
    """The networks of ``fitted`` with their fitted weights."""
    modules, params = fitted.modules, fitted.params

    def combine(template: eqx.Module, name: str) -> eqx.Module:
        _, static = eqx.partition(template, eqx.is_inexact_array)
        return eqx.combine(params[f"{name}$params"], static)

    return MultiscaleModules(
        combine(modules.encoder, ENCODER_NAME),
        combine(modules.drift, "drift"),
        None if modules.decoder is None else combine(modules.decoder, "micro_decoder"),
    )


def fitted_kernel(params: dict) -> TemporalKernel:
    """The guide's fitted temporal kernel."""
    template = TemporalKernel(key=jax.random.key(0))
    leaves = params[f"{PATH_SITE}_kernel$params"]
    params_tree, static = eqx.partition(template, eqx.is_inexact_array)
    if not isinstance(leaves, list | tuple):
        leaves = jax.tree.leaves(leaves)
    values = jax.tree.unflatten(jax.tree.structure(params_tree), [jnp.asarray(v) for v in leaves])
    return eqx.combine(values, static)


def fit_progressive(
    ds: xr.Dataset,
    config: MultiscaleConfig,
    stages: list[tuple[int, TrainConfig]],
    *,
    progress: bool = True,
    callback: Callable[[FittedModel], bool | None] | None = None,
) -> list[FittedModel]:
    """Fit with a growing micro dimension: ``stages = [(K_0, train_0), (K_1, train_1), ...]``,
    ``K`` non-decreasing; stage ``k`` starts from stage ``k - 1`` grown by
    :func:`msde_ppl.models.surgery.grow_modules`. Returns every stage's fitted model.
    ``callback`` is passed to every stage's :func:`fit_multiscale`."""
    from msde_ppl.models.surgery import grow_modules, grown_global_values

    fitted: list[FittedModel] = []
    for i, (n_micro, train) in enumerate(stages):
        stage_config, warm = dataclasses.replace(config, n_micro=n_micro), None
        if fitted:
            prev = fitted[-1]
            stage_config, modules = grow_modules(fitted_networks(prev), prev.config, n_micro,
                                                 key=jax.random.key(train.seed + 1000 * i))
            warm = WarmStart(modules, fitted_kernel(prev.params),
                             grown_global_values(prev.params, prev.config, n_micro))
        fitted.append(fit_multiscale(ds, stage_config, train, progress=progress,
                                     warm_start=warm, callback=callback))
    return fitted


def save_fitted(fitted: FittedModel, run_dir: str | Path, train: TrainConfig | None = None) -> None:
    """Write ``config.json``, ``params.pkl`` and ``losses.npy`` into ``run_dir``."""
    run_dir = Path(run_dir)
    meta = {"model": dataclasses.asdict(fitted.config), "wall_time_s": fitted.wall_time_s,
            "train": None if train is None else dataclasses.asdict(train)}
    (run_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    leaves = {name: [np.asarray(x) for x in jax.tree.leaves(value)]
              for name, value in fitted.params.items()}
    with open(run_dir / "params.pkl", "wb") as f:
        pickle.dump(leaves, f)
    np.save(run_dir / "losses.npy", fitted.losses)


def load_fitted(run_dir: str | Path) -> FittedModel:
    """Reload a model written by :func:`save_fitted`."""
    run_dir = Path(run_dir)
    for name in ("config.json", "params.pkl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a fitted run: {name} is missing")
    meta = json.loads((run_dir / "config.json").read_text())
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}
    config = MultiscaleConfig(**cfg)
    with open(run_dir / "params.pkl", "rb") as f:
        leaves = pickle.load(f)
    losses = np.load(run_dir / "losses.npy") if (run_dir / "losses.npy").exists() else np.zeros(0)
    modules = build_modules(config, key=jax.random.key(0))
    templates = {f"{ENCODER_NAME}$params": modules.encoder, "drift$params": modules.drift,
                 "micro_decoder$params": modules.decoder}
    params = {}
    for name, values in leaves.items():
        template = templates.get(name)
        if template is None:  # plain arrays (globals) or modules not needed to forecast
            params[name] = values[0] if len(values) == 1 else values
            continue
        structure = jax.tree.structure(eqx.partition(template, eqx.is_inexact_array)[0])
        params[name] = jax.tree.unflatten(structure, [jnp.asarray(v) for v in values])
    return FittedModel(config, modules, params, losses, float(meta.get("wall_time_s", 0.0)))
