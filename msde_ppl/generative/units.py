r"""The units the networks read and write the fields in (``MultiscaleConfig.units``).

``units = ((m_1, ..., m_C), (s_1, ..., s_C))``: per field :math:`c` a centre :math:`m_c` and
a spread :math:`s_c > 0` (:func:`msde_ppl.multiscale.program.units_from_data`: the middle
of the training data's range and half its width). A network reads a field :math:`u_c` as
:math:`(u_c - m_c)/s_c` (:func:`standardise`), a difference of fields (a residual) as
:math:`d_c / s_c` (``centre=False``), and writes a field increment or rate as :math:`s_c`
times its output (:func:`rescale`). The scale operator (restriction, smoother,
prolongation) acts on the centred field :math:`u_c - m_c` (:func:`centred`), with its bias
stored in units of :math:`s_c`, so its learned kernel never sees the offset; the guide
interpolates paths around each window's average; every other part is linear in the fields
or has its scale set from the data (prior medians, the dissipative drift's bounds). So a
model of :math:`a\,u + b` starts, and trains, as the model of :math:`u` does, in units
:math:`a` times larger: the networks see the same numbers and the ELBO's gradients with
respect to their weights are the same. Without it (``None``, the built-in cases: the
reference's convention) the networks read the data's own numbers, and the first layers'
biases, which Adam moves by about the learning rate per step in the data's units, need
:math:`a` times more steps to place the networks' kinks where data of amplitude
:math:`a` lie (the fronts scaled by 50 scored 0.159-0.203 on val over 3 seeds, against
0.142-0.148 unscaled; docs/robustness.md, stop 59).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = ["Units", "centred", "check_unit", "check_units", "in_unit", "rescale", "standardise",
           "uncentred"]

#: ``((centre per field), (spread per field))``.
Units = tuple[tuple[float, ...], tuple[float, ...]]


def check_units(units: Units | None, n_channels: int) -> Units | None:
    """``units`` as tuples of floats, checked: one finite centre and one finite positive
    spread per field."""
    if units is None:
        return None
    centre, spread = (tuple(float(v) for v in part) for part in units)
    if len(centre) != n_channels or len(spread) != n_channels:
        raise ValueError(f"units need one centre and one spread per field ({n_channels}), got "
                         f"{len(centre)} and {len(spread)}")
    if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(spread))
            and min(spread) > 0):
        raise ValueError(f"units need finite centres and positive spreads, got {units}")
    return centre, spread


def check_unit(unit: tuple[float, ...] | None, size: int, what: str
               ) -> tuple[float, ...] | None:
    """``unit`` (the unit a learned parameter of ``size`` entries is stored in, e.g. the
    fields' spreads) as a tuple of floats, checked positive; ``None`` stays ``None``."""
    if unit is None:
        return None
    unit = tuple(float(u) for u in unit)
    if len(unit) != size or not min(unit) > 0:
        raise ValueError(f"the {what}'s unit needs {size} positive values, got {unit}")
    return unit


def in_unit(stored: Array, unit: tuple[float, ...] | None) -> Array:
    """A learned parameter ``stored`` in ``unit`` (:func:`check_unit`), in the data's units:
    ``stored * unit``; ``stored`` itself for ``None``."""
    return stored if unit is None else stored * jnp.asarray(unit, stored.dtype)


def _per_field(values: tuple[float, ...], u: Array) -> Array:
    return jnp.asarray(values, u.dtype).reshape((-1,) + (1,) * (u.ndim - 1))


def standardise(u: Array, units: Units | None, centre: bool = True) -> Array:
    """``u`` of shape ``(C, ...)`` read in the networks' units: :math:`(u_c - m_c)/s_c`, or
    :math:`u_c/s_c` with ``centre=False`` (a difference of fields); ``u`` itself for
    ``units=None``."""
    if units is None:
        return u
    return (centred(u, units) if centre else u) / _per_field(units[1], u)


def centred(u: Array, units: Units | None) -> Array:
    """``u`` of shape ``(C, ...)`` less its fields' centres, :math:`u_c - m_c` (the scale
    operator's input: its learned kernel then never sees the offset); ``u`` for ``None``."""
    return u if units is None else u - _per_field(units[0], u)


def uncentred(u: Array, units: Units | None) -> Array:
    """The inverse of :func:`centred`: :math:`u_c + m_c`."""
    return u if units is None else u + _per_field(units[0], u)


def rescale(v: Array, units: Units | None) -> Array:
    """A network's output ``v`` of shape ``(C, ...)`` (a field increment or rate) in the
    data's units: :math:`s_c v_c`; ``v`` itself for ``units=None``."""
    return v if units is None else v * _per_field(units[1], v)
