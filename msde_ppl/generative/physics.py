r"""Known coarse-grid PDE operators for a physics-informed macro drift (docs/method.md §2).

A physics-informed drift is :math:`f_\zeta(\zeta, \eta) = F(\zeta; \theta) + \mathrm{MLP}
(\zeta_{N(j)}, \eta)`: a finite-difference discretisation :math:`F` of a known PDE on the coarse
grid (periodic, spacing :math:`\Delta x` per axis), whose coefficient :math:`\theta` is a sample
site of the model, plus the learned local stencil correction. Operators (central differences):

- ``"burgers"``: :math:`F = -\zeta \sum_k D^{(1)}_k \zeta + \nu \sum_k D^{(2)}_k \zeta`
  (any dimension; :math:`\theta = \nu`, the viscosity);
- ``"kdv"``: :math:`F = -\zeta D^{(1)}\zeta - \delta D^{(3)}\zeta` (1D; :math:`\theta = \delta`, the
  dispersion coefficient), with :math:`D^{(3)} u_i = (u_{i+2} - 2u_{i+1} + 2u_{i-1} -
  u_{i-2})/(2\Delta x^3)`.

On a coarse grid :math:`\theta` is an *effective* coefficient: it absorbs the coarse
discretisation error and what the learned correction does not carry, so it need not equal the
value the data were generated with.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["PHYSICS", "CoarsePDE"]

#: operator -> (coefficient site name, prior median, prior log-sd, description)
PHYSICS = {
    "burgers": ("viscosity", 1e-3, 2.0, "u_t = -u (sum_k d_k u) + nu laplacian(u)"),
    "kdv": ("dispersion", 1e-2, 2.0, "u_t = -u u_x - delta u_xxx"),
}


def _d1(u: Array, h: float, axis: int) -> Array:
    return (jnp.roll(u, -1, axis) - jnp.roll(u, 1, axis)) / (2 * h)


def _d2(u: Array, h: float, axis: int) -> Array:
    return (jnp.roll(u, -1, axis) - 2 * u + jnp.roll(u, 1, axis)) / h**2


def _d3(u: Array, h: float, axis: int) -> Array:
    r = lambda k: jnp.roll(u, -k, axis)  # noqa: E731 - u_{i+k}
    return (r(2) - 2 * r(1) + 2 * r(-1) - r(-2)) / (2 * h**3)


class CoarsePDE(eqx.Module):
    r"""Finite-difference operator :math:`F(\zeta; \theta)` on a periodic coarse grid.

    Args:
        kind: ``"burgers"`` or ``"kdv"`` (module docstring).
        spacing: coarse grid spacing per axis.
    """

    kind: str = eqx.field(static=True)
    spacing: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, kind: str, spacing: tuple[float, ...]) -> None:
        if kind not in PHYSICS:
            raise ValueError(f"unknown physics {kind!r}; known: {', '.join(sorted(PHYSICS))}")
        if kind == "kdv" and len(spacing) != 1:
            raise ValueError("the KdV operator is one-dimensional")
        self.kind = kind
        self.spacing = tuple(float(h) for h in spacing)

    @property
    def coefficient(self) -> str:
        """Name of the coefficient's sample site."""
        return PHYSICS[self.kind][0]

    def __call__(self, zeta: Float[Array, "C ..."], coefficient: Array) -> Float[Array, "C ..."]:
        """:math:`F(\\zeta; \\theta)` for ``zeta`` of shape ``(C, *coarse)``, scalar ``theta``."""
        axes = range(1, zeta.ndim)
        advection = -zeta * sum(_d1(zeta, h, a) for a, h in zip(axes, self.spacing, strict=True))
        if self.kind == "burgers":
            diffusion = sum(_d2(zeta, h, a) for a, h in zip(axes, self.spacing, strict=True))
            return advection + coefficient * diffusion
        return advection - coefficient * _d3(zeta, self.spacing[0], 1)
