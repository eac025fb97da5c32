"""Recipes of the built-in program: rebuild the multiscale model and its guide from JSON.

A recipe is ``{"program": "multiscale", "config": {...MultiscaleConfig...}, "n_windows": N}``.
It is what :meth:`msde_ppl.Fitted.save` stores instead of code, so :meth:`msde_ppl.Fitted.load`
can rebuild the program with no user code.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import equinox as eqx
import jax
import numpy as np
from numpyro.infer.initialization import init_to_median, init_to_value

from msde_ppl.inference import AutoAmortizedSDE, TemporalKernel
from msde_ppl.multiscale.program import (
    MultiscaleConfig,
    MultiscaleModules,
    build_modules,
    multiscale_model,
)

__all__ = ["BUILTIN_INIT_SCALE", "build_program", "latent_parts", "multiscale_recipe",
           "recipe_config"]

#: Initial scale of the built-in program's global posteriors (``AutoAmortizedSDE``'s default
#: is 0.01; the built-in recipe was tuned and measured with 0.1).
BUILTIN_INIT_SCALE = 0.1


def multiscale_recipe(config: MultiscaleConfig, n_windows: int) -> dict:
    """The recipe of the multiscale program of ``config`` over ``n_windows`` windows."""
    return {"program": "multiscale", "config": dataclasses.asdict(config),
            "n_windows": int(n_windows)}


def recipe_config(recipe: dict) -> MultiscaleConfig:
    """The :class:`MultiscaleConfig` of a recipe."""
    if recipe.get("program") != "multiscale":
        raise ValueError(f"unknown built-in program {recipe.get('program')!r}")
    def as_tuple(v):  # JSON lists back to the config's (nested) tuples
        return tuple(as_tuple(x) for x in v) if isinstance(v, list) else v

    return MultiscaleConfig(**{k: as_tuple(v) for k, v in recipe["config"].items()})


def build_program(
    recipe: dict,
    modules: MultiscaleModules | None = None,
    kernel: TemporalKernel | None = None,
    init_values: dict | None = None,
    *,
    key: jax.Array | None = None,
):
    """``(model, guide)`` of a recipe: the program bound to its config, networks and plate
    size, and its amortized guide (sharing the encoder). Fresh networks are drawn from ``key``
    unless ``modules`` are given (``key`` may then be ``None``); ``kernel`` and ``init_values``
    (constrained global-site values) warm-start the guide. With neither ``modules`` nor ``key``
    the networks have zero weights and give the program its structure only (to load a fit).
    """
    config = recipe_config(recipe)
    if modules is None and key is None:
        modules = _structure_only(config)
    elif modules is None:
        modules = build_modules(config, key=key)
    model = partial(multiscale_model, config=config, modules=modules,
                    n_windows=int(recipe["n_windows"]))
    init_loc = init_to_median if init_values is None else init_to_value(values=init_values)
    # the built-in recipe keeps the reference's kernel interpolation (its tuned default) and
    # the global sites' initial scale it was tuned and measured with (0.1; its 60k steps learn
    # the scales: KdV 1D's diffusion ends at 0.025, the observation variances at 1e-4)
    # a model of data in their own units (config.units: not a built-in case, fitted since
    # stop 59) interpolates its paths around each window's average, so an offset stays put
    guide = AutoAmortizedSDE(model, modules.encoder,
                             kernel="interpolation" if kernel is None else kernel,
                             init_loc_fn=init_loc, init_scale=BUILTIN_INIT_SCALE,
                             centred_interpolation=config.units is not None)
    return model, guide


def _structure_only(config: MultiscaleConfig) -> MultiscaleModules:
    """Networks of ``config`` with zero weights, built without running their initialisers:
    enough for a program whose weights are all substituted (e.g. loaded)."""
    shapes = eqx.filter_eval_shape(build_modules, config, key=jax.random.key(0))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype)
                        if isinstance(s, jax.ShapeDtypeStruct) else s, shapes)


def latent_parts(config: MultiscaleConfig) -> dict:
    """Named slices of the multiscale latent state: the macro field ``zeta`` and micro ``eta``."""
    parts = {"zeta": {"start": 0, "stop": config.n_macro,
                      "shape": [config.n_channels, *config.coarse_shape]}}
    if config.n_micro:
        parts["eta"] = {"start": config.n_macro, "stop": config.n_latent,
                        "shape": [config.n_micro]}
    return parts
