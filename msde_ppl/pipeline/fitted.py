r"""A fitted model: everything after training, in one object (:class:`Fitted`).

A :class:`Fitted` owns

- the model **program** (a NumPyro callable ``model(y=..., times=...)``, its other arguments
  bound) and its amortized **guide** (:class:`~msde_ppl.inference.AutoAmortizedSDE`, set up);
- the fitted **parameters** (NumPyro's constrained parameter store: networks as equinox
  partitions, the guide's encoder and temporal kernel, the global sites' variational
  parameters). Networks with their fitted weights come from :meth:`Fitted.network` (or, for
  the built-in model, :attr:`Fitted.modules`); posterior draws of the global sites from
  :meth:`Fitted.sample_globals` (through ``guide.sample_posterior``);
- the training **log** (losses per step, wall time, the training settings) and the data's
  **grid** (shape, fields, dims, coordinates, time step, boundary).

``fitted.save(dir)`` writes ``fitted.json`` (the recipe, grid, log metadata), ``params.eqx``
(:func:`equinox.tree_serialise_leaves` of the parameters) and ``losses.npy`` into a temporary
directory next to ``dir`` and renames it into place, so a directory is either complete or
absent; nothing is pickled. ``Fitted.load(dir)`` rebuilds the program of a built-in model from
its recipe. Code is never stored: a user's program is found again by reference when it can be
(a function importable by module and name, bound only to JSON-able keyword arguments, whose
guide's encoder is a global of the same module; a program defined in a script or notebook,
``__main__``, is found again within the same session), else it is passed back in
(``Fitted.load(dir, model=..., guide=...)``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer.util import transform_fn

from msde_ppl.atomic import atomic_dir, atomic_file, write_text
from msde_ppl.data.blocks import trajectory_blocks
from msde_ppl.inference.autoguide import AutoAmortizedSDE
from msde_ppl.inference.fit import initial_params
from msde_ppl.inference.param_store import fitted_network

__all__ = ["Fitted", "grid_info"]

_FORMAT = "msde_ppl.Fitted"
_VERSION = 1


def grid_info(ds: xr.Dataset, split: str | None = None) -> dict:
    """The data's grid as JSON-able metadata: ``fine_shape``, ``n_channels``, ``dims`` (spatial),
    ``coords`` (per spatial dim), ``fields`` (names or ``None``), ``dt``, ``boundary`` and
    ``data_range`` (per field ``[min, max]`` of the observations of ``split``, all
    trajectories when ``None`` or when the data have no splits: what forecasts call diverged is
    derived from it, :func:`msde_ppl.predict.diverged_members`)."""
    dims = [d for d in ds["u"].dims if d not in ("traj", "time", "field")]
    times = np.asarray(ds["time"].values, np.float64)
    seen = ds["u"]
    if split is not None and "split" in ds.coords:  # trajectories or times (a split in time)
        labels = np.asarray(ds["split"].values).astype(str)
        seen = seen.isel({ds["split"].dims[0]: np.flatnonzero(labels == split)})
    n_fields = int(ds.sizes.get("field", 1))
    low, high = np.full(n_fields, np.inf), np.full(n_fields, -np.inf)
    for _, values in trajectory_blocks(seen):  # a lazily opened file is read by blocks
        if "field" in seen.dims:
            values = np.moveaxis(values, seen.dims.index("field"), 0)
        values = values.reshape(n_fields, -1)
        if values.size:
            with np.errstate(invalid="ignore"):
                low = np.fmin(low, np.nanmin(values, axis=1))
                high = np.fmax(high, np.nanmax(values, axis=1))
    data_range = [[float(lo), float(hi)] if np.isfinite(lo) and np.isfinite(hi) else None
                  for lo, hi in zip(low, high, strict=True)]
    return {
        "fine_shape": [int(ds.sizes[d]) for d in dims],
        "n_channels": int(ds.sizes.get("field", 1)),
        "dims": dims,
        "coords": {d: np.asarray(ds[d].values, np.float64).tolist() for d in dims},
        "fields": (None if "field" not in ds["u"].dims
                   else [str(f) for f in np.asarray(ds["field"].values)]),
        "dt": float(times[1] - times[0]) if times.size > 1 else None,
        "boundary": str(ds.attrs.get("boundary", "")),
        "data_range": data_range,
    }


def _example_batch(grid: dict) -> dict:
    """A one-window, two-snapshot batch of the grid's shapes (only shapes matter)."""
    shape = (1, 2, grid["n_channels"], *grid["fine_shape"])
    dt = grid.get("dt") or 1.0
    return {"y": jnp.zeros(shape, jnp.float32),
            "times": jnp.asarray([[0.0, dt]], jnp.float32)}


def _param_structure(model: Callable, guide: AutoAmortizedSDE, grid: dict) -> dict:
    """The parameter store's structure (shapes and dtypes, nothing computed) of (model, guide):
    what a saved store is loaded into. Sets the guide up as a side effect."""
    batch = _example_batch(grid)
    guide.setup(**batch)  # concretely: the guide keeps its prototype

    def constrained(key: jax.Array) -> dict:
        params, transforms = initial_params(key, model, guide, batch)
        return transform_fn(transforms, params)

    return jax.eval_shape(constrained, jax.random.key(0))  # the key's draws are never made


class Fitted:
    """A fitted model program with its guide, parameters, training log and data grid.

    Args:
        model: the NumPyro program, called as ``model(y=..., times=...)``.
        guide: its :class:`~msde_ppl.inference.AutoAmortizedSDE` (set up by the fit).
        params: constrained parameter store from the fit.
        losses: training loss per step.
        grid: :func:`grid_info` of the training data.
        wall_time_s: training wall time.
        recipe: how to rebuild ``model`` and ``guide`` without code (built-in models only):
            ``{"program": name, ...}``, see :mod:`msde_ppl.pipeline.builtin`.
        train: the training settings (JSON-able dict).
        latent_parts: optional named slices of the flat latent state,
            ``{name: {"start": i, "stop": j, "shape": [...], "dims": [...]}}`` (e.g. the
            macro field and the micro vector), used by diagnostics.
        validation: record of validation-driven training, if any (best step and score,
            history, why it stopped; :class:`~msde_ppl.pipeline.validation.ValidationMonitor`).
    """

    def __init__(
        self,
        model: Callable,
        guide: AutoAmortizedSDE,
        params: dict,
        *,
        losses: np.ndarray,
        grid: dict,
        wall_time_s: float = 0.0,
        recipe: dict | None = None,
        train: dict | None = None,
        latent_parts: dict | None = None,
        validation: dict | None = None,
    ) -> None:
        if guide.prototype_trace is None:
            raise ValueError("the guide has not been set up: fit it (or call it) first")
        if len(guide.path_sites) != 1:
            raise ValueError(f"a Fitted model needs exactly one SDEPath site, the program has "
                             f"{guide.path_sites}")
        self.model = model
        self.guide = guide
        self.params = params
        self.losses = np.asarray(losses)
        self.grid = grid
        self.wall_time_s = float(wall_time_s)
        self.recipe = recipe
        self.train = train
        self.latent_parts = latent_parts
        self.validation = validation
        self._compiled: dict = {}  # per-horizon compiled forecasts (msde_ppl.predict)

    def __repr__(self) -> str:
        func = getattr(self.model, "func", self.model)  # unwrap functools.partial
        program = (self.recipe or {}).get("program", getattr(func, "__name__", "model"))
        return (f"Fitted({program}, path site {self.path_site!r}, globals {self.global_sites}, "
                f"{self.losses.size} steps, {self.wall_time_s:.0f} s)")

    # ------------------------------------------------------------------ what it holds
    @property
    def path_site(self) -> str:
        """The program's SDE path site."""
        return self.guide.path_sites[0]

    @property
    def obs_site(self) -> str:
        """The program's observed site."""
        return self.guide.obs_site

    @property
    def global_sites(self) -> list[str]:
        """The program's global latent sites (diffusion, observation variances, physics...)."""
        return self.guide.global_sites

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one latent state of the path site."""
        return tuple(self.guide.prototype_trace[self.path_site]["fn"].state_shape)

    @property
    def config(self) -> Any:
        """The built-in model's config (``None`` for a user's program)."""
        if self.recipe is None:
            return None
        from msde_ppl.pipeline.builtin import recipe_config

        return recipe_config(self.recipe)

    @property
    def modules(self) -> Any:
        """The built-in model's networks with their fitted weights."""
        if self.recipe is None:
            raise AttributeError("modules exist for built-in models; use fitted.network(name, "
                                 "template) for the networks of your own program")
        from msde_ppl.multiscale.program import fitted_modules

        return fitted_modules(self.config, self.params)

    def network(self, name: str, template: eqx.Module) -> eqx.Module:
        """The program's network registered as ``name`` (``eqx_module(name, template)``) with
        its fitted weights."""
        return fitted_network(self.params, name, template)

    @property
    def encoder(self) -> eqx.Module:
        """The guide's fitted encoder of the path site."""
        return self.guide.encoder(self.params)

    @property
    def kernel(self) -> eqx.Module:
        """The guide's fitted temporal kernel of the path site."""
        return self.guide.kernel(self.params)

    # ------------------------------------------------------------------ posterior
    def sample_globals(self, rng_key: jax.Array, n: int) -> dict[str, jax.Array]:
        """``n`` joint posterior draws of the global sites (``guide.sample_posterior``), each
        ``(n, *site_shape)``. The globals' posterior does not depend on the data (mean field),
        so a placeholder window of the data's shape is passed to the amortized guide."""
        draws = self.guide.sample_posterior(rng_key, self.params, **_example_batch(self.grid),
                                            sample_shape=(n,))
        return {k: v for k, v in draws.items() if k in self.global_sites}

    def global_quantiles(self, quantiles) -> dict[str, jax.Array]:
        """Marginal posterior quantiles of the global sites (``(len(q), *site_shape)``)."""
        return self.guide.global_quantiles(self.params, quantiles)

    def global_medians(self) -> dict[str, np.ndarray]:
        """Posterior medians of the global sites."""
        return {k: np.asarray(v[0]) for k, v in self.global_quantiles([0.5]).items()}

    def stale_scales(self, rtol: float = 0.05) -> dict[str, float]:
        """Global sites whose variational scales are still within ``rtol`` of their initial
        value: ``{site: fraction of coordinates}``, only sites with such coordinates (a sign
        that the fit did not learn their uncertainty)."""
        out = {}
        for name in self.global_sites:
            now, start = (np.asarray(a) for a in self.guide.global_scale(self.params, name))
            stale = np.abs(now - start) <= rtol * np.abs(start)
            if stale.any():
                out[name] = float(stale.mean())
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, into: bool = False) -> Path:
        """Write the fitted model to directory ``path`` atomically (module docstring).

        ``path`` must not exist, or be an empty directory; raises ``FileExistsError``
        otherwise, and nothing is written then. With ``into=True`` ``path`` may be an existing
        directory holding other files (a run directory): the model's three files in it are
        written or replaced, each atomically (``fitted.json`` last), and nothing else is
        touched.
        """
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "recipe": self.recipe,
            "grid": self.grid,
            "train": self.train,
            "latent_parts": self.latent_parts,
            "program": None if self.recipe else _program_reference(self.model, self.guide),
            "wall_time_s": self.wall_time_s,
            "path_site": self.path_site,
            "global_sites": self.global_sites,
            # the scale the global posteriors started from (what stale_scales compares with)
            "init_scale": float(self.guide.init_scale),
            "n_steps": int(self.losses.size),
            "validation": self.validation,
            # kernel hyperparameters are stored in units of their step gain (TemporalKernel);
            # files written before the step gain existed lack this key and hold gain-1 units
            "kernel_step_gain": True,
        }
        if into:
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a directory")
            self._write_files(path, meta)
            return path
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"{path} already exists and is not an empty directory; "
                                  "choose another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(path) as tmp:
            self._write_files(tmp, meta)
        return path

    def _write_files(self, folder: Path, meta: dict) -> None:
        with atomic_file(folder / "losses.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.losses)
        with atomic_file(folder / "params.eqx") as tmp:
            eqx.tree_serialise_leaves(tmp, jax.device_get(self.params))
        write_text(folder / "fitted.json", json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Callable | None = None,
             guide: AutoAmortizedSDE | None = None) -> Fitted:
        """Read a model written by :meth:`save`.

        Built-in models are rebuilt from their recipe, a user's program is imported again by
        reference when it can be (module docstring); otherwise pass ``model`` and a fresh
        ``guide`` for it (the same code that was fitted); its ``init_scale`` is set to the one
        the fit started from (saved with it), which :meth:`stale_scales` compares with.

        Raises:
            FileNotFoundError: ``path`` is not a saved model.
            ValueError: the files are damaged or do not match the program.
        """
        path = Path(path)
        meta_file = path / "fitted.json"
        if not meta_file.is_file() or not (path / "params.eqx").is_file():
            raise FileNotFoundError(f"{path} is not a saved fitted model: fitted.json or "
                                    "params.eqx is missing")
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_file} is not valid JSON: {err}") from err
        _warn_if_incomplete(path)
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"{meta_file} is not a {_FORMAT} v{_VERSION} file")
        recipe = meta.get("recipe")
        if (model is None or guide is None) and recipe is None:
            if meta.get("program") is None:
                raise ValueError(f"{path} holds a fit of your own program, which cannot be "
                                 "imported by reference: pass the program and a new guide for "
                                 "it, Fitted.load(path, model=..., guide=...)")
            try:
                model, guide = _import_program(meta["program"])
            except (ImportError, AttributeError, TypeError) as err:
                ref = meta["program"]
                raise ValueError(f"{path}: cannot import the program {ref['module']}."
                                 f"{ref['function']} ({err}); pass it, Fitted.load(path, "
                                 "model=..., guide=...)") from err
        elif model is None or guide is None:
            from msde_ppl.pipeline.builtin import build_program

            try:
                model, guide = build_program(recipe)
            except (TypeError, KeyError, ValueError) as err:
                raise ValueError(f"{meta_file}: the model recipe is not valid ({err})") from err
        if meta.get("init_scale") is not None:  # a passed guide may have another default
            guide.init_scale = float(meta["init_scale"])
        template = _param_structure(model, guide, meta["grid"])
        try:
            params = eqx.tree_deserialise_leaves(path / "params.eqx", template)
        except Exception as err:  # equinox raises several kinds on a mismatch
            raise ValueError(f"{path / 'params.eqx'} does not match the model described by "
                             f"fitted.json (damaged, or from another model): {err}") from err
        if not meta.get("kernel_step_gain"):
            params = _from_unit_step_gain(params)
        try:
            losses = (np.load(path / "losses.npy", allow_pickle=False)
                      if (path / "losses.npy").is_file() else np.zeros(0))
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path / 'losses.npy'} is damaged: {err}") from None
        if "n_steps" in meta and losses.size != meta["n_steps"]:
            raise ValueError(f"{path / 'losses.npy'} holds {losses.size} steps where "
                             f"fitted.json records {meta['n_steps']}: the files are from "
                             "different saves (an interrupted write?)")
        return cls(model, guide, params, losses=losses, grid=meta["grid"],
                   wall_time_s=meta.get("wall_time_s", 0.0), recipe=recipe,
                   train=meta.get("train"), latent_parts=meta.get("latent_parts"),
                   validation=meta.get("validation"))

    def replace(self, **changes: Any) -> Fitted:
        """A copy with some fields changed (``losses``, ``wall_time_s``, ``params``, ...)."""
        fields = dict(model=self.model, guide=self.guide, params=self.params,
                      losses=self.losses, grid=self.grid, wall_time_s=self.wall_time_s,
                      recipe=self.recipe, train=self.train, latent_parts=self.latent_parts,
                      validation=self.validation)
        fields.update(changes)
        model, guide, params = fields.pop("model"), fields.pop("guide"), fields.pop("params")
        return Fitted(model, guide, params, **fields)


def _from_unit_step_gain(params: dict) -> dict:
    """``params`` read from a file saved before kernels had a step gain: every
    :class:`~msde_ppl.inference.kernel.TemporalKernel` of gain ``g`` gets its stored
    hyperparameters divided by ``g`` (the file holds them in gain-1 units), so its
    hyperparameter values are the fitted ones."""
    from msde_ppl.inference.kernel import TemporalKernel

    def convert(node: Any) -> Any:
        if not isinstance(node, TemporalKernel) or node.step_gain == 1.0:
            return node
        g = node.step_gain
        return eqx.tree_at(lambda k: (k.raw_lengthscale, k.raw_amplitude, k.raw_nugget), node,
                           (node.raw_lengthscale / g, node.raw_amplitude / g,
                            node.raw_nugget / g))

    return jax.tree.map(convert, params, is_leaf=lambda x: isinstance(x, TemporalKernel))


def _warn_if_incomplete(path: Path) -> None:
    """Warn when ``path`` is a run directory whose status is not ``complete``."""
    from msde_ppl.pipeline.rundir import describe, read_status

    try:
        status = read_status(path)
    except ValueError:
        status = {"state": "failed", "reason": "its status file is damaged"}
    if status is not None and status["state"] != "complete":
        warnings.warn(f"{path} is a run that is not complete (status {describe(status, path)}); "
                      "this is its last saved state", UserWarning, stacklevel=3)


def _program_reference(model: Callable, guide: AutoAmortizedSDE) -> dict | None:
    """How to import ``(model, guide)`` again (module docstring), or ``None`` if they cannot be
    found by reference."""
    func, kwargs = model, {}
    if isinstance(model, functools.partial):
        if model.args:
            return None
        func, kwargs = model.func, dict(model.keywords)
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    # a program of ``__main__`` (a script, a notebook) loads again in the same session only
    if module is None or "<locals>" in qualname or module not in sys.modules:
        return None
    try:
        json.dumps(kwargs)
    except TypeError:
        return None
    names = {id(obj): name for name, obj in vars(sys.modules[module]).items()}
    encoder = names.get(id(guide._encoder_arg))
    kernel = guide._kernel_arg
    if not isinstance(kernel, str):  # a module of the program's file, found by its name
        kernel = {"name": names.get(id(guide._kernel_arg))}
        if kernel["name"] is None:
            return None
    if encoder is None:
        return None
    return {"module": module, "function": qualname, "kwargs": kwargs, "encoder": encoder,
            "kernel": kernel, "obs_site": guide.obs_site, "prefix": guide.prefix,
            "encoder_output": guide.encoder_output, "init_scale": guide.init_scale,
            "kl_nodes_per_interval": guide.kl_nodes_per_interval,
            "centred_interpolation": guide.centred_interpolation}


def _import_program(ref: dict) -> tuple[Callable, AutoAmortizedSDE]:
    """``(model, guide)`` from :func:`_program_reference`'s record."""
    module = importlib.import_module(ref["module"])
    func = module
    for part in ref["function"].split("."):
        func = getattr(func, part)
    model = functools.partial(func, **ref["kwargs"]) if ref["kwargs"] else func
    kernel = ref["kernel"]
    if kernel is None:  # saved before the guide had a choice: the then default
        kernel = "interpolation"
    elif isinstance(kernel, str) and kernel not in ("markov", "coupled", "interpolation"):
        kernel = getattr(module, kernel)  # a module name: records from before this version
    elif isinstance(kernel, dict):
        kernel = getattr(module, kernel["name"])
    guide = AutoAmortizedSDE(model, getattr(module, ref["encoder"]), kernel=kernel,
                             obs_site=ref["obs_site"], prefix=ref["prefix"],
                             encoder_output=ref["encoder_output"], init_scale=ref["init_scale"],
                             kl_nodes_per_interval=ref.get("kl_nodes_per_interval", 1),
                             centred_interpolation=ref.get("centred_interpolation", False))
    return model, guide


def train_dict(train: Any) -> dict | None:
    """A training-settings dataclass (or dict) as a JSON-able dict."""
    if train is None or isinstance(train, dict):
        return train
    return dataclasses.asdict(train)
