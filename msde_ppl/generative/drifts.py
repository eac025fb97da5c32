r"""Drift networks of the multiscale SDE (docs/method.md §2.1).

The latent state is :math:`z = [\zeta; \eta]`, a coarse field :math:`\zeta` of shape
``(C, *coarse)`` and a micro vector :math:`\eta` of length ``n_micro``; SDE code sees the flat
vector ``z`` of length ``C * prod(coarse) + n_micro``.

- :class:`StencilDrift`, the macro drift: at every coarse node :math:`j` the *same* MLP maps the
  periodic neighbourhood of radius :math:`r` (``(2r+1)^d`` nodes, all ``C`` fields) and the micro
  activation :math:`a_\eta(\eta)` to :math:`d\zeta_j/dt`. It is local and translation-equivariant
  (shifting :math:`\zeta` on the periodic grid shifts the drift), the "physics prior" of the method;
  with ``positional`` every node also reads its position (:func:`position_features`), for a
  flow that is not translation invariant (the cylinder wake).
- :class:`MicroDrift`: a global MLP :math:`[t, \zeta, \eta] \mapsto d\eta/dt` (non-autonomous:
  absolute time, as the reference), or :math:`[\zeta, \eta] \mapsto d\eta/dt` (autonomous).
- :class:`MultiscaleDrift`: both, on the flat state, with the ``drift(t, z, args)`` signature of
  :class:`~msde_ppl.generative.SDEPath`. With ``n_micro = 0`` it is the implicit-scale (closure)
  model's drift. With a known coarse PDE operator :math:`F`
  (:class:`~msde_ppl.generative.physics.CoarsePDE`) the macro drift is
  :math:`F(\zeta; \theta) + \mathrm{MLP}(\zeta_{N(j)}, \eta)`, the coefficient :math:`\theta`
  passed as ``args`` (a sample site of the model, so it is traced data).
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from msde_ppl.generative.networks import MLP
from msde_ppl.generative.physics import CoarsePDE
from msde_ppl.generative.units import (
    Units,
    check_unit,
    check_units,
    in_unit,
    rescale,
    standardise,
)

__all__ = [
    "Dissipation",
    "MicroDrift",
    "MultiscaleDrift",
    "StencilDrift",
    "neighbourhood_index",
    "position_features",
    "stencil_inputs",
]


def neighbourhood_index(coarse_shape: tuple[int, ...], radius: int) -> np.ndarray:
    """Flat indices of each node's periodic neighbourhood: ``(n_nodes, (2r+1)^d)``."""
    grids = np.meshgrid(*(np.arange(n) for n in coarse_shape), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)  # (n_nodes, d)
    span = range(-radius, radius + 1)
    offsets = np.array(list(itertools.product(span, repeat=len(coarse_shape))))
    neighbours = (nodes[:, None, :] + offsets[None, :, :]) % np.array(coarse_shape)
    return np.ravel_multi_index(tuple(np.moveaxis(neighbours, -1, 0)), coarse_shape)


def stencil_inputs(
    zeta: Float[Array, "C ..."], aux: Float[Array, " n_aux"], radius: int,
    positional: bool = False,
) -> Float[Array, "n_nodes n_in"]:
    """Per coarse node: its periodic neighbourhood (all fields), then ``aux``, then (with
    ``positional``) the node's position features :func:`position_features`.

    Returns ``(n_nodes, C * (2r+1)^d + n_aux [+ 2d])``, nodes in row-major order of the coarse
    grid.
    """
    coarse_shape = zeta.shape[1:]
    index = neighbourhood_index(coarse_shape, radius)  # trace-time constant
    patches = zeta.reshape(zeta.shape[0], -1)[:, index]  # (C, n_nodes, stencil)
    patches = jnp.moveaxis(patches, 0, 1).reshape(index.shape[0], -1)
    aux = jnp.broadcast_to(aux, (index.shape[0], aux.shape[0]))
    parts = [patches, aux]
    if positional:
        parts.append(jnp.asarray(position_features(coarse_shape), zeta.dtype))
    return jnp.concatenate(parts, axis=1)


def position_features(coarse_shape: tuple[int, ...]) -> np.ndarray:
    """``(n_nodes, 2d)``: per node ``i`` of the coarse grid, ``cos(2 pi i_k / N_k)`` and
    ``sin(2 pi i_k / N_k)`` for every axis ``k`` (the reference's inputs for a flow that is not
    translation invariant, the cylinder wake; nodes in row-major order)."""
    grids = np.meshgrid(*(np.arange(n) for n in coarse_shape), indexing="ij")
    angles = [2 * np.pi * g.ravel() / n for g, n in zip(grids, coarse_shape, strict=True)]
    return np.stack([f(a) for a in angles for f in (np.cos, np.sin)], axis=1)


class Dissipation(eqx.Module):
    r"""A dissipative structure around a raw drift :math:`g`, per coordinate group :math:`c`:

    .. math:: f(z)_c = -\lambda_c (z_c - m_c) + B_c \tanh(g(z)_c / B_c),

    with learned damping rate :math:`\lambda_c = \mathrm{softplus}(\rho_c) > 0`, centre
    :math:`m_c` and bound :math:`B_c = e^{b_c}`. For :math:`|g| \ll B` the raw drift passes
    unchanged (plus the linear relaxation, which :math:`g` can cancel on the data); off the
    data :math:`|f_c + \lambda_c(z_c - m_c)| \le B_c`, so
    :math:`\tfrac{d}{dt}|z_c - m_c|^2 \le -2\lambda_c |z_c - m_c|^2 + 2B_c|z_c - m_c|`:
    every path is drawn back into the ball :math:`|z_c - m_c| \le B_c/\lambda_c` (plus the
    noise), where a free piecewise-linear network may grow exponentially.

    With ``max_radius`` :math:`r`, the rate is :math:`\lambda_c = \max(\mathrm{softplus}
    (\rho_c), B_c / r)`, so the ball's radius :math:`B_c/\lambda_c` never exceeds :math:`r`
    however the parameters are learned (without it, a fit can grow :math:`B/\lambda` past the
    range where forecasts count as diverged).

    Args:
        size: number of groups (fields of the macro drift, micro coordinates).
        rate: initial :math:`\mathrm{softplus}(\rho)` (per unit time).
        bound: initial :math:`B` (per unit time, the data's units).
        centre: initial :math:`m` (the data's units).
        max_radius: :math:`r`, the largest radius of the ball (the data's units), or ``None``.
        centre_unit: per group, the unit the learned centre is stored in (the field's spread,
            :mod:`msde_ppl.generative.units`), so Adam moves it at a pace proportional to the
            data's scale; ``None``: 1.
    """

    rate_raw: Array
    centre: Array
    log_bound: Array
    max_radius: float | None = eqx.field(static=True)
    centre_unit: tuple[float, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, size: int, rate: float, bound: float, centre: float = 0.0,
                 max_radius: float | None = None,
                 centre_unit: tuple[float, ...] | None = None) -> None:
        if not (rate > 0 and bound > 0 and np.isfinite(rate) and np.isfinite(bound)):
            raise ValueError(f"damping rate and drift bound must be positive, got {rate}, "
                             f"{bound}")
        if max_radius is not None and not (np.isfinite(max_radius) and max_radius > 0):
            raise ValueError(f"the ball's largest radius must be positive, got {max_radius}")
        if not np.isfinite(centre):
            raise ValueError(f"the relaxation centre must be finite, got {centre}")
        self.centre_unit = check_unit(centre_unit, size, "centre")
        self.rate_raw = jnp.full((size,), float(np.log(np.expm1(rate))))
        unit = np.ones(size) if centre_unit is None else np.asarray(self.centre_unit)
        self.centre = jnp.asarray(float(centre) / unit)
        self.log_bound = jnp.full((size,), float(np.log(bound)))
        self.max_radius = None if max_radius is None else float(max_radius)

    def __call__(self, z: Array, raw: Array, axis: int = 0) -> Array:
        """``f`` from the state ``z`` and raw drift ``raw`` (same shape; groups along
        ``axis``)."""
        shape = [1] * z.ndim
        shape[axis] = -1
        rate = jax.nn.softplus(self.rate_raw).reshape(shape)
        bound = jnp.exp(self.log_bound).reshape(shape)
        if self.max_radius is not None:
            rate = jnp.maximum(rate, bound / self.max_radius)
        centre = in_unit(self.centre, self.centre_unit).reshape(shape)
        return -rate * (z - centre) + bound * jnp.tanh(raw / bound)


class StencilDrift(eqx.Module):
    r"""Local translation-equivariant macro drift :math:`f_\zeta(\zeta, a)_j = \mathrm{MLP}(
    \zeta_{N(j)}, a)`; with ``units`` (:mod:`msde_ppl.generative.units`) the MLP reads the
    neighbourhood standardised, :math:`(\zeta_c - m_c)/s_c`, and its output is multiplied by
    :math:`s_c`.

    Args:
        coarse_shape: coarse grid shape.
        n_channels: fields ``C``.
        n_aux: size of the global input :math:`a` appended at every node (the micro activation).
        radius: neighbourhood radius ``r`` (default 2, a 5-point / 5x5 stencil).
        hidden: hidden widths of the node MLP.
        units: the fields' centres and spreads, or ``None`` (the data's own numbers).
        key: PRNG key.
    """

    mlp: MLP
    dissipation: Dissipation | None
    radius: int = eqx.field(static=True)
    coarse_shape: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    positional: bool = eqx.field(static=True, default=False)
    units: Units | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        coarse_shape: tuple[int, ...],
        n_channels: int = 1,
        n_aux: int = 0,
        radius: int = 2,
        hidden: tuple[int, ...] = (128, 128, 128),
        dissipation: Dissipation | None = None,
        positional: bool = False,
        units: Units | None = None,
        *,
        key: PRNGKeyArray,
    ) -> None:
        self.coarse_shape = tuple(coarse_shape)
        self.n_channels = n_channels
        self.radius = radius
        self.positional = positional
        self.units = check_units(units, n_channels)
        n_in = n_channels * (2 * radius + 1) ** len(self.coarse_shape) + n_aux
        n_in += 2 * len(self.coarse_shape) if positional else 0
        self.mlp = MLP(n_in, hidden, n_channels, key=key)
        self.dissipation = dissipation

    def __call__(
        self, zeta: Float[Array, "C ..."], aux: Float[Array, " n_aux"]
    ) -> Float[Array, "C ..."]:
        inputs = stencil_inputs(standardise(zeta, self.units), aux, self.radius,
                                self.positional)
        out = jax.vmap(self.mlp)(inputs)  # (n_nodes, C)
        out = rescale(out.T.reshape(self.n_channels, *self.coarse_shape), self.units)
        return out if self.dissipation is None else self.dissipation(zeta, out)


class MicroDrift(eqx.Module):
    r"""Global micro drift :math:`f_\eta(t, \zeta, \eta) = \mathrm{MLP}([t / T, \zeta, \eta])`,
    or :math:`\mathrm{MLP}([\zeta, \eta])` with ``time_input=False`` (autonomous dynamics: the
    drift cannot key on the time since the data's start, only on the state). ``time_scale``
    :math:`T` is 1 for the reference (the time in the data's units); the data's time span
    makes the input unit-free. With ``units`` (:mod:`msde_ppl.generative.units`) it reads
    :math:`\zeta` (shape ``(C, ...)``) standardised."""

    mlp: MLP
    dissipation: Dissipation | None
    time_input: bool = eqx.field(static=True)
    time_scale: float = eqx.field(static=True)
    units: Units | None = eqx.field(static=True, default=None)

    def __init__(
        self, n_macro: int, n_micro: int, hidden: tuple[int, ...] = (128, 512, 128),
        time_input: bool = True, dissipation: Dissipation | None = None,
        time_scale: float = 1.0, units: Units | None = None, *, key: PRNGKeyArray,
    ) -> None:
        if not (np.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a positive time, got {time_scale}")
        self.time_input = time_input
        self.time_scale = float(time_scale)
        self.units = units  # checked by the caller, which knows the fields
        self.mlp = MLP(int(time_input) + n_macro + n_micro, hidden, n_micro,
                       activation=jax.nn.relu, key=key)
        self.dissipation = dissipation

    def __call__(self, t: Array, zeta: Array, eta: Array) -> Array:
        inputs = [standardise(zeta, self.units).ravel(), eta]
        if self.time_input:
            inputs.insert(0, jnp.reshape(t, (1,)) / self.time_scale)
        out = self.mlp(jnp.concatenate(inputs))
        return out if self.dissipation is None else self.dissipation(eta, out)


class MultiscaleDrift(eqx.Module):
    r"""The coupled drift :math:`f(t, z) = [f_\zeta(\zeta, \eta);\ f_\eta(t, \zeta, \eta)]` on the
    flat state ``z`` (``drift(t, z, args)``; ``args`` is unused). ``units``: the fields'
    centres and spreads both networks read and write them in, and the unit of the
    dissipative form's learned centre (:mod:`msde_ppl.generative.units`)."""

    macro: StencilDrift
    micro: MicroDrift | None
    physics: CoarsePDE | None
    n_micro: int = eqx.field(static=True)

    def __init__(
        self,
        coarse_shape: tuple[int, ...],
        n_micro: int,
        n_channels: int = 1,
        radius: int = 2,
        macro_hidden: tuple[int, ...] = (128, 128, 128),
        micro_hidden: tuple[int, ...] = (128, 512, 128),
        micro_time: bool = True,
        physics: CoarsePDE | None = None,
        dissipation: tuple[float, ...] | None = None,
        positional: bool = False,
        time_scale: float = 1.0,
        units: Units | None = None,
        *,
        key: PRNGKeyArray,
    ) -> None:
        key_macro, key_micro = jax.random.split(key)
        units = check_units(units, n_channels)
        self.physics = physics
        self.n_micro = n_micro
        # (rate, macro bound, micro bound[, macro centre, macro radius]) of the dissipative
        # form (MultiscaleConfig.dissipation), or None (free networks)
        macro_diss = micro_diss = None
        if dissipation is not None:
            rate, macro_bound, micro_bound, *ball = dissipation
            macro_diss = Dissipation(n_channels, rate, macro_bound, *ball,
                                     centre_unit=None if units is None else units[1])
            micro_diss = Dissipation(n_micro, rate, micro_bound) if n_micro else None
        self.macro = StencilDrift(coarse_shape, n_channels, n_micro, radius, macro_hidden,
                                  macro_diss, positional, units, key=key_macro)
        n_macro = n_channels * int(np.prod(coarse_shape))
        self.micro = None
        if n_micro:
            self.micro = MicroDrift(n_macro, n_micro, micro_hidden, micro_time, micro_diss,
                                    time_scale, units, key=key_micro)

    @property
    def n_macro(self) -> int:
        return self.macro.n_channels * int(np.prod(self.macro.coarse_shape))

    def split(self, z: Float[Array, " n_z"]) -> tuple[Array, Array]:
        """``z -> (zeta (C, *coarse), eta (n_micro,))``."""
        zeta = z[: self.n_macro].reshape(self.macro.n_channels, *self.macro.coarse_shape)
        return zeta, z[self.n_macro :]

    def __call__(self, t: Array, z: Float[Array, " n_z"], args: object = None) -> Array:
        """``dz/dt``; ``args`` is the physics coefficient (unused without physics)."""
        zeta, eta = self.split(z)
        d_zeta = self.macro(zeta, eta)
        if self.physics is not None:
            d_zeta = d_zeta + self.physics(zeta, args)
        d_zeta = d_zeta.ravel()
        if self.micro is None:
            return d_zeta
        return jnp.concatenate([d_zeta, self.micro(t, zeta, eta)])
