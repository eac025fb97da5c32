"""Training recipe: fit any program to a dataset (:func:`fit`), and the built-in multiscale model
(:func:`fit_multiscale`, :func:`fit_progressive`), each returning a :class:`~msde_ppl.Fitted`.

Recipe (docs/method.md §5; defaults are the reference's):

- minibatches: ``windows_per_step`` windows of ``window`` consecutive snapshots of the training
  split (:func:`msde_ppl.data.random_windows`; fixed shapes, so the jitted step compiles once);
- objective: the forward-solver-free ELBO, normalised per observed scalar (ELBO / (N n_y), the
  reference's scale), KL-rate integral by the reference's ``T_B mean_i`` rule (kernel
  interpolation guides; a Markov guide integrates at random interior times), with a linear
  KL warm-up over ``warmup_steps``; a window's first state has a flat density (its entropy
  enters the ELBO), except in the built-in model, which keeps the reference's convention of
  dropping that term;
- optimiser: Adam, learning rate ``lr`` decayed by 10% every 2000 steps (continuously), as the
  reference; gradient norm clipped at ``clip_norm``. The posterior scales of the global sites
  (the ``scale`` of their mean-field Normals) take ``global_lr_factor`` times larger steps:
  with Adam a parameter moves at most about ``lr`` per step, and a well-determined global's
  posterior scale must travel from the built-in guide's initial 0.1 (``BUILTIN_INIT_SCALE``;
  ``AutoAmortizedSDE``'s default is 0.01) to a few 1e-3 (a change of ~3.5 in
  its softplus-unconstrained value), which at ``lr = 1e-3`` takes more steps than a fit has;
  every other parameter (the globals' locations included) keeps ``lr``;
- ``data_parallel=True`` shards the windows of every step over ``jax.devices()``.

Faults (docs/reliability.md): every fit can write checkpoints (``checkpoint_path``; a
progressive fit, ``checkpoint_dir``) and resume from them bit-identically (``resume=True``;
not a fit whose time budget ends a stage or decays its learning rate, :class:`BudgetDecay`:
the clock drives those);
a non-finite loss or a stop request (``should_stop``) ends it with :class:`FitStopped`, which
carries the model at its last good step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax
import xarray as xr

from msde_ppl.data.blocks import WindowReader, in_memory, trajectory_blocks
from msde_ppl.data.schema import SchemaError, check_coarse, grid_shape, validate
from msde_ppl.data.splits import observations, select_split, splits_in_time
from msde_ppl.data.windows import n_windows, random_windows
from msde_ppl.inference import AutoAmortizedSDE, SolverFreeELBO, TemporalKernel, linear_beta_warmup
from msde_ppl.inference import fit as run_fit
from msde_ppl.inference.fit import FitInterrupted, NonFiniteLossError
from msde_ppl.inference.param_store import global_param_names
from msde_ppl.multiscale.program import MultiscaleConfig, MultiscaleModules
from msde_ppl.pipeline.builtin import build_program, latent_parts, multiscale_recipe
from msde_ppl.pipeline.fitted import Fitted, grid_info, train_dict
from msde_ppl.pipeline.validation import Validation, ValidationMonitor

__all__ = ["BudgetDecay", "FitStopped", "MultiscaleSetup", "TrainConfig", "WarmStart",
           "check_training_data", "fit", "fit_multiscale", "fit_progressive", "grown_start",
           "multiscale_setup", "shift_steps", "training_window"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: the reference's, see module docstring).

    ``loop`` is how a chunk of ``chunk_size`` steps runs (:func:`~msde_ppl.inference.fit`):
    ``"scan"``, ``"python"``, or ``"auto"`` (``"python"`` when the built-in model has
    convolutional networks, which XLA's CPU backend runs slowly inside a loop, or when a step
    takes several windows, whose scanned chunks JAX's CPU runtime can hang for good
    (docs/reliability.md); else ``"scan"``). ``sampling`` is how window starts are drawn,
    ``"uniform"`` or ``"tiled"`` (:func:`msde_ppl.data.random_windows`). ``ema_decay``: the
    fit's result, its checkpoints and its validation use the exponential moving average of the
    parameters (:func:`~msde_ppl.inference.parameter_ema`; ``None``: the last iterate).

    ``shifts`` (the built-in model, periodic data, a drift that does not read the position):
    every training window is rolled by a random whole number of coarse cells along each axis
    (:func:`msde_ppl.data.random_windows`), so the fit sees every translate of the training
    trajectories. The macro drift is translation-equivariant and predicts the translates
    alike; the global micro encoder, decoder and drift are not, and from a few trajectories
    seen in one position they learn codes that tell the trajectories apart rather than
    describe the sub-grid field (docs/robustness.md, stop 60).
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
    global_lr_factor: float = 10.0
    chunk_size: int = 100
    seed: int = 0
    loop: str = "auto"
    sampling: str = "uniform"
    ema_decay: float | None = None
    shifts: bool = False


#: settings added after fits were first saved, with their default: a saved record lacks them
#: when they had it, so settings are compared without them there (:func:`_resumable_train`)
_LATER_TRAIN_SETTINGS = {"shifts": TrainConfig.shifts}


def _resumable_train(train: TrainConfig | dict | None) -> dict | None:
    """Training settings as a checkpoint records them and a resume compares them: a later
    setting (:data:`_LATER_TRAIN_SETTINGS`) only when it differs from its default, so a stage
    or a checkpoint saved before it existed still resumes."""
    settings = train_dict(train)
    return None if settings is None else {
        k: v for k, v in settings.items()
        if not (k in _LATER_TRAIN_SETTINGS and v == _LATER_TRAIN_SETTINGS[k])}


def training_window(ds: xr.Dataset, window: int = TrainConfig.window) -> int:
    """Snapshots per training window for ``ds``: ``window``, or every snapshot of a training
    trajectory (the train block, for a split in time) when there are fewer."""
    sel = select_split(ds, "train") if "split" in ds.coords else ds
    return min(window, sel.sizes["time"])


class FitStopped(RuntimeError):
    """A fit that ended before its last step.

    Attributes:
        status: ``"failed"`` (a non-finite loss or gradient) or ``"interrupted"`` (a stop
            request, e.g. Ctrl-C).
        fitted: the :class:`~msde_ppl.Fitted` model at the last good step, with the losses so
            far (of this stage, for a progressive fit).
        step: the step at which it stopped (the offending one when failed).
        stage: index of the stage of a progressive fit (``None`` otherwise).
    """

    def __init__(self, message: str, status: str, fitted: Fitted, step: int,
                 stage: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fitted = fitted
        self.step = step
        self.stage = stage


class WarmStart(NamedTuple):
    """Initial point of a fit: networks, temporal kernel and global-site values."""

    modules: MultiscaleModules
    kernel: TemporalKernel
    global_values: dict


def _window_sharding(windows: int) -> Callable[[dict], dict]:
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
    sharding = NamedSharding(Mesh(np.asarray(devices), ("windows",)), PartitionSpec("windows"))
    return lambda batch: jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)


def check_training_data(ds: xr.Dataset, train: TrainConfig, split: str = "train") -> int:
    """Refuse what a fit could not train on, before anything is computed or written: invalid
    settings, no trajectory in ``split``, windows longer than the trajectories. Returns the
    number of windows of the split.

    Raises:
        SchemaError: the data, naming the problem; ValueError: the settings.
    """
    _check_train(train)
    validate(ds)
    if "split" not in ds.coords and split != "train":
        raise SchemaError(f"split {split!r} requested but the dataset has no 'split' coordinate")
    sel = select_split(ds, split) if "split" in ds.coords else ds
    n_traj, n_time = sel.sizes["traj"], sel.sizes["time"]
    if train.window > n_time:
        raise SchemaError(f"window of {train.window} snapshots is longer than the {n_time} "
                          "snapshots per trajectory")
    return n_windows(n_traj, n_time, train.window)


def _training_windows(ds: xr.Dataset, train: TrainConfig, split: str = "train",
                      shift_steps: tuple[int, ...] | None = None):
    """``(batch_fn, n_windows)`` over the training split (fixed-shape minibatches; with
    ``shift_steps``, windows rolled by random multiples of them, :func:`random_windows`)."""
    check_training_data(ds, train, split)
    constrain = _window_sharding(train.windows_per_step) if train.data_parallel else None
    if in_memory(ds["u"]):
        u, t = observations(ds, split)
    else:  # a file larger than memory: every step reads its windows (msde_ppl.data.blocks)
        if splits_in_time(ds):  # the split's block of times, read lazily
            sel = select_split(ds, split)
            u = WindowReader(sel["u"], np.arange(sel.sizes["traj"]), train.window)
            t = np.asarray(sel["time"].values, np.float32)
        else:
            rows = (np.flatnonzero(np.asarray(ds["split"].values) == split)
                    if "split" in ds.coords else np.arange(ds.sizes["traj"]))
            u = WindowReader(ds["u"], rows, train.window)
            t = np.asarray(ds["time"].values, np.float32)
    n_traj, n_time = (u.n_traj, u.n_time) if isinstance(u, WindowReader) else u.shape[:2]
    batch_fn = random_windows(u, t, train.window, train.windows_per_step, train.sampling,
                              constrain, shift_steps)
    return batch_fn, n_windows(n_traj, n_time, train.window)


def _objective(train: TrainConfig, guide: AutoAmortizedSDE, initial: str = "flat"):
    """``(elbo, optimizer, beta_schedule)`` of the recipe. ``initial``: the first state of a
    window has a flat density (``"flat"``, the ELBO of the program as written) or its term is
    dropped (``"drop"``, the reference code's convention, kept by the built-in model)."""
    elbo = SolverFreeELBO(normalize=True, quadrature="mean", initial=initial)
    schedule = optax.exponential_decay(train.lr, train.decay_steps, train.decay_rate)

    def labels(params: dict) -> dict:  # called at optimiser init, after the guide's set-up
        names = {global_param_names(site, guide.prefix)[1] for site in guide.global_sites}
        return {k: "global_scale" if k in names else "rest" for k in params}

    optimizer = optax.chain(
        optax.clip_by_global_norm(train.clip_norm),
        optax.multi_transform(
            {"rest": optax.adam(schedule),
             "global_scale": optax.adam(lambda step: train.global_lr_factor * schedule(step))},
            labels),
    )
    beta = None
    if train.warmup_steps > 0:
        beta = partial(linear_beta_warmup, n_transition=train.warmup_steps)
    return elbo, optimizer, beta


def _check_train(train: TrainConfig) -> None:
    if not (np.isfinite(train.lr) and train.lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {train.lr}")
    if not (np.isfinite(train.global_lr_factor) and train.global_lr_factor > 0):
        raise ValueError("global_lr_factor must be a positive number, got "
                         f"{train.global_lr_factor}")
    if train.window < 2:
        raise ValueError(f"a window needs at least 2 snapshots, got {train.window}")
    if train.steps < 1 or train.windows_per_step < 1 or train.chunk_size < 1:
        raise ValueError("steps, windows_per_step and chunk_size must be positive")


def _data_digest(ds: xr.Dataset, split: str) -> str:
    """SHA-1 of the training arrays (float32 values and times): what a checkpoint was fitted to."""
    sel = select_split(ds, split) if "split" in ds.coords else ds
    digest = hashlib.sha1()
    for _, block in trajectory_blocks(sel["u"], dtype=np.float32):  # the split's bytes in order
        digest.update(np.ascontiguousarray(block).tobytes())
    digest.update(np.ascontiguousarray(np.asarray(sel["time"].values, np.float32)).tobytes())
    return digest.hexdigest()


class Checkpointing(NamedTuple):
    """Where and how often a fit writes checkpoints, whether it resumes from one, and the stop
    request it polls (see :func:`msde_ppl.inference.fit`)."""

    path: str | Path | None = None
    resume: bool = False
    every_s: float = 60.0
    should_stop: Callable[[], bool] | None = None


def _run(
    model: Callable,
    guide: AutoAmortizedSDE,
    ds: xr.Dataset,
    train: TrainConfig,
    batch_fn: Callable,
    objective: tuple,
    *,
    loop: str,
    recipe: dict | None,
    parts: dict | None,
    progress: bool | str,
    checkpointing: Checkpointing,
    split: str,
    callback: Callable[[Fitted], bool | None] | None,
    lr_factor: Callable[[], float] | None = None,
) -> Fitted:
    """Run the fit loop on ``objective = (elbo, optimizer, beta_schedule)`` and wrap its result
    (the one place a fit becomes a :class:`Fitted`).

    Raises:
        FitStopped: a non-finite loss, or a stop request; ``.fitted`` is the last good state.
        ValueError: the checkpoint to resume from belongs to another fit.
    """
    grid = grid_info(ds, split)
    elbo, optimizer, beta = objective

    def wrap(params: dict, losses: np.ndarray, wall: float) -> Fitted:
        return Fitted(model, guide, jax.tree.map(np.asarray, params), losses=np.asarray(losses),
                      grid=grid, wall_time_s=wall, recipe=recipe, train=train_dict(train),
                      latent_parts=parts)

    spent = [0.0]
    timed_callback = None
    if callback is not None:
        def timed_callback(params: dict, losses: np.ndarray) -> bool | None:
            start_cb = time.perf_counter()
            stop = callback(wrap(params, losses, start_cb - start - spent[0]))
            spent[0] += time.perf_counter() - start_cb
            return stop

    extra = None
    if checkpointing.path is not None:  # what the checkpoint belongs to, checked on resume
        extra = {"recipe": recipe, "train": _resumable_train(train),
                 "data": _data_digest(ds, split),
                 "program": None if recipe else _program_name(model)}
    key_fit = _seed_keys(train)[1]
    start = time.perf_counter()
    try:
        result = run_fit(key_fit, model, guide, elbo, optimizer, batch_fn,
                         num_steps=train.steps, chunk_size=train.chunk_size, beta_schedule=beta,
                         checkpoint_path=checkpointing.path, resume=checkpointing.resume,
                         checkpoint_every=checkpointing.every_s, checkpoint_extra=extra,
                         should_stop=checkpointing.should_stop, progress=progress,
                         callback=timed_callback, loop=loop,
                         # user programs: tail-averaged global posteriors; the built-in
                         # recipe keeps its last iterate (its validation picks checkpoints)
                         average_from=0.5 if recipe is None else None,
                         ema_decay=train.ema_decay, lr_factor=lr_factor)
    except NonFiniteLossError as err:
        if err.params is None:  # the data themselves are not finite
            raise
        last = wrap(err.params, err.losses, time.perf_counter() - start - spent[0])
        raise FitStopped(f"non-finite loss or gradient at step {err.step}", "failed", last,
                         err.step) from err
    except FitInterrupted as err:
        last = wrap(err.params, err.losses, time.perf_counter() - start - spent[0])
        raise FitStopped(str(err), "interrupted", last, int(err.state.step)) from err
    return wrap(result.params, result.losses, time.perf_counter() - start - spent[0])


def _program_name(model: Callable) -> str:
    func = getattr(model, "func", model)  # unwrap functools.partial
    name = getattr(func, "__qualname__", type(func).__name__)
    return f"{getattr(func, '__module__', '?')}.{name}"


def _seed_keys(train: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """``(key_networks, key_fit)`` of a training seed."""
    key_modules, key_fit = jax.random.split(jax.random.key(train.seed))
    return key_modules, key_fit


def _accepts(model: Callable, name: str) -> bool:
    try:
        params = inspect.signature(model).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def fit(
    model: Callable,
    ds: xr.Dataset,
    guide: AutoAmortizedSDE,
    *,
    steps: int | None = None,
    train: TrainConfig | None = None,
    split: str = "train",
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 60.0,
    should_stop: Callable[[], bool] | None = None,
    callback: Callable[[Fitted], bool | None] | None = None,
) -> Fitted:
    """Fit any program to the training split of ``ds`` with the package's recipe.

    Args:
        model: NumPyro program ``model(y, times, **kw)``: ``y`` of shape ``(B, M, C, *fine)``
            (or ``None``), ``times`` ``(B, M)``; one :class:`~msde_ppl.generative.SDEPath` site
            and one observed site. If it takes ``n_windows`` (and it is not bound), it receives
            the number of windows in the training data (the plate size that scales a minibatch).
        ds: dataset in the schema.
        guide: an :class:`~msde_ppl.inference.AutoAmortizedSDE` of ``model``.
        steps: optimisation steps (overrides ``train.steps``).
        train: optimisation settings (default :class:`TrainConfig`).
        split: the split trained on.
        progress: show a progress bar.
        checkpoint_path: write a checkpoint (``.npz``) there every ``checkpoint_every``
            seconds of training, at the end and when stopped.
        resume: continue from ``checkpoint_path`` if it exists (bit-identical to an
            uninterrupted fit; refused if the checkpoint is of another program, data or
            settings).
        checkpoint_every: seconds between checkpoints (``0``: after every chunk of steps).
        should_stop: polled after every chunk; ``True`` checkpoints and stops the fit.
        callback: ``callback(fitted_so_far)`` after every chunk; ``True`` stops the fit.

    Returns:
        The :class:`~msde_ppl.Fitted` model.

    Raises:
        FitStopped: a non-finite loss or gradient, or a stop request; ``err.fitted`` is the
            model at the last good step.
    """
    train = train or TrainConfig()
    if steps is not None:
        train = dataclasses.replace(train, steps=int(steps))
    _check_train(train)
    validate(ds)
    if train.shifts:
        raise ValueError("TrainConfig(shifts=True) rolls windows by whole coarse cells, so it "
                         "needs the built-in multiscale model (fit_multiscale); a program of "
                         "your own can augment its data before the fit")
    batch_fn, n_win = _training_windows(ds, train, split)
    if _accepts(model, "n_windows") and "n_windows" not in getattr(model, "keywords", {}):
        model = partial(model, n_windows=n_win)
        guide.model = model
    loop = _chunk_loop(train)
    checkpointing = Checkpointing(checkpoint_path, resume, checkpoint_every, should_stop)
    return _run(model, guide, ds, train, batch_fn, _objective(train, guide), loop=loop, recipe=None,
                parts=None, progress=progress, checkpointing=checkpointing, split=split,
                callback=callback)


class MultiscaleSetup(NamedTuple):
    """What a fit of the built-in model runs: the program pair, objective, optimiser, KL-weight
    schedule, the fixed-shape minibatch function ``batch_fn(key, step)``, the chunk loop kind
    and the program's recipe (benchmarks time its pieces)."""

    model: Callable
    guide: AutoAmortizedSDE
    elbo: SolverFreeELBO
    optimizer: optax.GradientTransformation
    beta_schedule: Callable | None
    batch_fn: Callable
    loop: str
    recipe: dict


def _chunk_loop(train: TrainConfig, config: MultiscaleConfig | None = None) -> str:
    """The chunk loop of this module's fits (the built-in model's, with its ``config``, and
    :func:`fit`'s): ``train.loop``, and for ``"auto"`` ``"python"`` (one dispatch per step)
    when the model has a CNN codec or a step takes several windows, ``"scan"`` otherwise.
    With 8 windows of 64 snapshots on a 256-point field, scanned chunks hung for good in JAX's
    CPU runtime in 9 runs out of 10 (within 100-1700 steps); one step per dispatch ran 11000
    steps in three runs without a hang, about 30% slower per step (docs/reliability.md)."""
    if train.loop != "auto":
        return train.loop
    cnn = config is not None and "cnn" in (config.encoder, config.decoder)
    return "python" if cnn or train.windows_per_step > 1 else "scan"


def multiscale_setup(ds: xr.Dataset, config: MultiscaleConfig, train: TrainConfig = TrainConfig(),
                     warm_start: WarmStart | None = None) -> MultiscaleSetup:
    """Validate ``ds`` against ``config`` and build the fit of its training split, from scratch
    or from ``warm_start``."""
    _check_train(train)
    validate(ds, coarse=config.coarse_shape)
    if tuple(grid_shape(ds)) != tuple(config.fine_shape):
        raise SchemaError(f"model fine grid {config.fine_shape} differs from the data's "
                          f"{grid_shape(ds)}")
    check_coarse(ds, config.coarse_shape)
    batch_fn, n_win = _training_windows(ds, train, shift_steps=shift_steps(ds, config, train))
    recipe = multiscale_recipe(config, n_win)
    if warm_start is None:
        model, guide = build_program(recipe, key=_seed_keys(train)[0])
    else:
        model, guide = build_program(recipe, warm_start.modules, warm_start.kernel,
                                     warm_start.global_values)
    loop = _chunk_loop(train, config)
    return MultiscaleSetup(model, guide, *_objective(train, guide, initial="drop"), batch_fn,
                           loop, recipe)


def shift_steps(ds: xr.Dataset, config: MultiscaleConfig, train: TrainConfig,
                 ) -> tuple[int, ...] | None:
    """The coarse cell in fine cells per axis when ``train.shifts``, else ``None``; a shift
    is refused where it would change the data's law for the model: a boundary that is not
    periodic, or a drift that reads the position."""
    if not train.shifts:
        return None
    if ds.attrs.get("boundary") != "periodic":
        raise ValueError(f"TrainConfig(shifts=True) rolls the fields around a periodic domain; "
                         f"the data's boundary is {ds.attrs.get('boundary')!r}")
    if config.positional:
        raise ValueError("TrainConfig(shifts=True) assumes dynamics that do not depend on "
                         "the position, but the model's drift reads it (positional=True)")
    return tuple(int(f) // int(c) for f, c in zip(config.fine_shape, config.coarse_shape,
                                                  strict=True))


def model_label(n_micro: int) -> str:
    """``"implicit-scale K=0"`` or ``"multiscale K=5"``: the model of a micro dimension."""
    return f"{'multiscale' if n_micro else 'implicit-scale'} K={n_micro}"


def fit_multiscale(
    ds: xr.Dataset,
    config: MultiscaleConfig,
    train: TrainConfig = TrainConfig(),
    *,
    progress: bool | str = True,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 60.0,
    should_stop: Callable[[], bool] | None = None,
    warm_start: WarmStart | None = None,
    callback: Callable[[Fitted], bool | None] | None = None,
    lr_factor: Callable[[], float] | None = None,
) -> Fitted:
    """Fit the built-in multiscale model ``config`` to the training split of ``ds``, from
    scratch or from ``warm_start``.

    ``callback(fitted_so_far)`` runs after every chunk of steps with the model fitted so far
    (its ``losses`` and ``wall_time_s`` up to that point); its own run time is not counted in
    any wall time, and returning ``True`` stops the fit there. ``lr_factor()``, polled after
    it, multiplies the learning rate of the steps that follow (:func:`msde_ppl.inference.fit`).
    Checkpoints, ``resume``, ``should_stop`` and :class:`FitStopped` are as in :func:`fit`.
    """
    setup = multiscale_setup(ds, config, train, warm_start)
    objective = (setup.elbo, setup.optimizer, setup.beta_schedule)
    checkpointing = Checkpointing(checkpoint_path, resume, checkpoint_every, should_stop)
    if progress is True:
        progress = model_label(config.n_micro)
    return _run(setup.model, setup.guide, ds, train, setup.batch_fn, objective, loop=setup.loop,
                recipe=setup.recipe, parts=latent_parts(config), progress=progress,
                checkpointing=checkpointing, split="train", callback=callback,
                lr_factor=lr_factor)


def _initial_fitted(ds: xr.Dataset, config: MultiscaleConfig, train: TrainConfig,
                    warm_start: WarmStart) -> Fitted:
    """The model a warm-started fit starts from (its step 0), as a :class:`Fitted`."""
    from msde_ppl.inference.fit import init

    setup = multiscale_setup(ds, config, train, warm_start)
    key_init, key_data0 = jax.random.split(_seed_keys(train)[1])  # as the fit loop does
    example = setup.batch_fn(key_data0, jax.numpy.zeros((), jax.numpy.int32))
    problem, state = init(key_init, setup.model, setup.guide, setup.elbo, setup.optimizer,
                          example, beta_schedule=setup.beta_schedule)
    params = jax.tree.map(np.asarray, problem.constrain(state.params))
    return Fitted(setup.model, setup.guide, params, losses=np.zeros(0), grid=grid_info(ds, "train"),
                  recipe=setup.recipe, train=train_dict(train), latent_parts=latent_parts(config))


@dataclasses.dataclass(frozen=True)
class BudgetDecay:
    r"""The learning-rate factor of a stage that a time budget may end (warmup-stable-decay):
    with :math:`p = (\text{now} - \text{begin}) / (\text{deadline} - \text{begin})` the
    fraction of the stage's time spent (``time.monotonic()``; from the stage's start to its
    deadline, which includes what earlier stages left of their shares),

    .. math:: f(p) = \text{floor}^{\,\mathrm{clip}((p - 1 + \phi) / \phi,\ 0,\ 1)},

    1 until the last fraction :math:`\phi` (``fraction``) of the time, then geometric down to
    ``floor`` at the deadline. A fit that the budget ends, rather than its steps or its val
    plateaus, would otherwise stop at its full learning rate, on an iterate as noisy as any
    along the way (a 2D fit of 64 x 64 data: 3500 + 8200 steps in 10 minutes, val scores
    0.43 then 1.28 at two evaluations 250 steps apart); the decay ends it at the small rate a
    fit gets from its schedule's plateau drops (the default floor is
    :class:`~msde_ppl.Validation`'s ``lr_drop_factor ** lr_drops``). A fit that ends before
    the decay starts is untouched."""

    begin: float
    deadline: float
    floor: float = Validation.lr_drop_factor ** Validation.lr_drops
    fraction: float = 0.25

    def __post_init__(self) -> None:
        if not (0.0 < self.floor <= 1.0 and 0.0 < self.fraction <= 1.0):  # also catches nan
            raise ValueError(f"BudgetDecay needs floor and fraction in (0, 1], got "
                             f"{self.floor} and {self.fraction}")

    def __call__(self) -> float:
        spent = (time.monotonic() - self.begin) / max(self.deadline - self.begin, 1e-9)
        ramp = min(max((spent - 1.0 + self.fraction) / self.fraction, 0.0), 1.0)
        return float(self.floor ** ramp)


class _Deadline:
    """A fit callback that stops the fit at a ``time.monotonic()`` deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, fitted: Fitted) -> bool:
        return time.monotonic() >= self.deadline


def _chain(*callbacks: Callable | None) -> Callable | None:
    """One fit callback running ``callbacks`` in order (all of them); ``True`` if any is."""
    active = [c for c in callbacks if c is not None]
    if not active:
        return None

    def run(fitted: Fitted) -> bool:
        return any([c(fitted) is True for c in active])

    return run


def grown_start(prev: Fitted, n_micro: int, seed: int, stage: int = 1,
                old_config: MultiscaleConfig | None = None) -> tuple[MultiscaleConfig, WarmStart]:
    """``(config, warm_start)`` of stage ``stage`` of a progressive fit grown from ``prev`` to
    ``n_micro`` micro coordinates (:func:`msde_ppl.multiscale.grow_modules`, new networks from
    the key ``seed + 1000 * stage``; global sites from ``prev``'s posterior medians).
    ``old_config``: ``prev``'s config with other settings for the networks it lacks (e.g.
    another micro codec when ``prev`` has no micro state); default ``prev.config``."""
    from msde_ppl.multiscale.surgery import grow_modules, grown_global_values

    old = prev.config if old_config is None else old_config
    config, modules = grow_modules(prev.modules, old, n_micro,
                                   key=jax.random.key(seed + 1000 * stage))
    return config, WarmStart(modules, prev.kernel,
                             grown_global_values(prev.global_medians(), old, n_micro))


def fit_progressive(
    ds: xr.Dataset,
    config: MultiscaleConfig,
    stages: list[tuple[int, TrainConfig]],
    *,
    progress: bool = True,
    callback: Callable[[Fitted], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 60.0,
    should_stop: Callable[[], bool] | None = None,
    validation: Validation | None = None,
    budget_s: float | None = None,
) -> list[Fitted]:
    """Fit with a growing micro dimension: ``stages = [(K_0, train_0), (K_1, train_1), ...]``,
    ``K`` non-decreasing; stage ``k`` starts from stage ``k - 1`` grown by
    :func:`msde_ppl.multiscale.grow_modules`. Returns every stage's fitted model.
    ``callback`` is passed to every stage's :func:`fit_multiscale`.

    With ``validation`` (:class:`~msde_ppl.pipeline.validation.Validation`), every stage is
    scored on the val split while it trains; it stops early when the score stops improving,
    and its result is the best-scoring checkpoint (its ``validation`` attribute records the
    history); a plateau lowers the learning rate first (``validation.lr_drops`` times). A
    grown stage delivers its best checkpoint only if it beats the stage's start again when both
    are scored with ``validation.confirm_samples`` members, else its start
    (:meth:`~msde_ppl.pipeline.validation.ValidationMonitor.confirm`).
    ``budget_s`` bounds the training wall time of the whole fit (seconds): stage ``k`` ends
    at its share of the budget (proportional to its steps; the shares are cumulative from the
    fit's start, so time a stage overruns, e.g. its confirmation's two forecasts, is taken
    from the next stages), its learning rate decays over the last quarter of its time
    (:class:`BudgetDecay`, to ``lr_drop_factor ** max(lr_drops, 1)`` of ``validation`` when
    validated, else to the default floor; the lower of that and the val plateaus' factor),
    and a stage that ends there keeps its best checkpoint when validated, else its last state.

    With ``checkpoint_dir``, stage ``k`` checkpoints to ``stage{k}.ckpt.npz`` there and, once
    complete, is saved as the model ``stage{k}/`` (its checkpoint then removed). With
    ``resume=True`` completed stages are loaded from there and the interrupted one continues
    from its checkpoint, so the result is bit-identical to an uninterrupted fit, unless the
    clock took part: a stage that ran into the last quarter of its time budget (its decay) or
    to its deadline.

    Raises:
        FitStopped: as :func:`fit_multiscale`, with ``.stage`` the stage that stopped.
        ValueError: a saved stage or checkpoint belongs to another fit.
    """
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        stale = sorted(p.name for p in folder.glob("stage*"))
        if stale and not resume:
            raise FileExistsError(f"{folder} already holds {', '.join(stale)} of an earlier fit; "
                                  "resume it (resume=True) or choose another checkpoint_dir")
    if budget_s is not None and not (np.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"the time budget must be a positive number of seconds, got {budget_s}")
    total_steps = sum(train.steps for _, train in stages)
    begin, steps_before = time.monotonic(), 0
    fitted: list[Fitted] = []
    for i, (n_micro, train) in enumerate(stages):
        steps_before += train.steps
        deadline = (None if budget_s is None
                    else begin + budget_s * steps_before / total_steps)
        done = None if folder is None else folder / f"stage{i}"
        if resume and done is not None and (done / "fitted.json").is_file():
            stage = Fitted.load(done)
            if (_resumable_train(stage.train) != _resumable_train(train)
                    or stage.config.n_micro != n_micro):
                raise ValueError(f"{done} was fitted with other settings than stage {i} of "
                                 "this fit; it cannot be resumed here")
            fitted.append(stage)
            continue
        stage_config, warm = dataclasses.replace(config, n_micro=n_micro), None
        if fitted:
            stage_config, warm = grown_start(fitted[-1], n_micro, train.seed, i)
        ckpt = None if folder is None else folder / f"stage{i}.ckpt.npz"
        record = None if folder is None else folder / f"stage{i}.validation"
        monitor = None
        if validation is not None:
            monitor = ValidationMonitor(validation, ds, deadline=deadline, record=record,
                                        snapshots_per_step=train.window * train.windows_per_step)
        elif deadline is not None:
            monitor = _Deadline(deadline)
        validated = isinstance(monitor, ValidationMonitor)
        start = None
        if validated and warm is not None and (not monitor.history
                                               or validation.confirm_samples is not None):
            # the grown model's start (the previous stage's drift and reconstruction, an idle
            # micro state) competes too: the stage never ends worse on val than it began
            start = _initial_fitted(ds, stage_config, train, warm)
            if not monitor.history:
                monitor.evaluate(start)
        stage_callback = _chain(callback, monitor)
        label = progress and f"stage {i + 1}/{len(stages)}, {model_label(n_micro)}"
        factors = []
        if deadline is not None:  # down to where the val plateaus' drops would take it
            floor = (BudgetDecay.floor if not validated
                     else validation.lr_drop_factor ** max(validation.lr_drops, 1))
            factors.append(BudgetDecay(time.monotonic(), deadline, floor))
        if validated:
            factors.append(lambda m=monitor: m.lr_factor)
        try:
            stage = fit_multiscale(ds, stage_config, train, progress=label, warm_start=warm,
                                   callback=stage_callback, checkpoint_path=ckpt,
                                   lr_factor=(lambda fs=tuple(factors): min(f() for f in fs))
                                   if factors else None,
                                   resume=resume, checkpoint_every=checkpoint_every,
                                   should_stop=should_stop)
        except FitStopped as err:
            err.stage = i
            raise
        if validated:
            monitor.evaluate(stage)  # the last state competes too
            if start is not None:  # the best must beat the start on a fresh key
                monitor.confirm(start, stage=i)
            stage = stage.replace(params=monitor.best.params, validation=monitor.summary())
        if done is not None:
            stage.save(done)
            ckpt.unlink(missing_ok=True)
            if record is not None and record.exists():
                shutil.rmtree(record)
        fitted.append(stage)
    return fitted
