"""NumPyro parameter-store names: the one place that knows how parameters are named.

- an equinox network registered with :func:`numpyro.contrib.module.eqx_module` under ``name`` is
  stored as its inexact-array partition under ``name + "$params"``;
- the amortized guide registers, per path site ``site``, its encoder as ``site + "_encoder"``
  and its temporal kernel as ``site + "_kernel"``;
- a global site ``site`` of the guide has a mean-field Normal with ``site_{prefix}_loc`` and
  ``site_{prefix}_scale`` (NumPyro's autoguide convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax

__all__ = [
    "encoder_name",
    "fitted_network",
    "global_param_names",
    "kernel_name",
    "network_param",
]


def network_param(name: str) -> str:
    """Store key of the network registered under ``name``."""
    return f"{name}$params"


def encoder_name(site: str) -> str:
    """Network name of the guide's encoder of path site ``site``."""
    return f"{site}_encoder"


def kernel_name(site: str) -> str:
    """Network name of the guide's temporal kernel of path site ``site``."""
    return f"{site}_kernel"


def global_param_names(site: str, prefix: str = "auto") -> tuple[str, str]:
    """``(loc, scale)`` store keys of the guide's mean-field Normal of global site ``site``."""
    return f"{site}_{prefix}_loc", f"{site}_{prefix}_scale"


def fitted_network(params: Mapping[str, Any], name: str, template: eqx.Module) -> eqx.Module:
    """``template`` with the fitted weights of network ``name`` from ``params``.

    Raises:
        KeyError: ``params`` holds no network ``name``.
        ValueError: the stored weights do not fit ``template`` (another architecture).
    """
    key = network_param(name)
    if key not in params:
        raise KeyError(f"no fitted network {name!r} in the parameters")
    arrays, static = eqx.partition(template, eqx.is_inexact_array)
    stored = params[key]
    want, got = jax.tree.structure(arrays), jax.tree.structure(stored)
    if want != got:
        raise ValueError(f"the fitted weights of {name!r} do not match its network "
                         f"({got.num_leaves} stored arrays, {want.num_leaves} expected)")
    for a, b in zip(jax.tree.leaves(arrays), jax.tree.leaves(stored), strict=True):
        if a.shape != b.shape:
            raise ValueError(f"the fitted weights of {name!r} do not match its network "
                             f"(an array of shape {b.shape} where {a.shape} is expected)")
    return eqx.combine(stored, static)
