"""Fixed-step explicit time integration of semi-discrete PDEs, written with ``lax.scan``.

The solution is advanced with the classical fourth-order Runge–Kutta scheme (or Heun's
second-order scheme) using ``substeps`` equal steps between consecutive output times, so the
output grid is the dataset's time grid and the inner step satisfies the scheme's stability limit.
All trajectories of a batch are advanced together (the right-hand side is vectorised over a
leading batch axis by construction: it acts on the trailing spatial axes only).
"""

from collections.abc import Callable
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Scheme = Literal["rk4", "heun"]


def _rk4_step(rhs: Callable, u: jax.Array, dt: float) -> jax.Array:
    k1 = rhs(u)
    k2 = rhs(u + 0.5 * dt * k1)
    k3 = rhs(u + 0.5 * dt * k2)
    k4 = rhs(u + dt * k3)
    return u + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _heun_step(rhs: Callable, u: jax.Array, dt: float) -> jax.Array:
    k1 = rhs(u)
    k2 = rhs(u + dt * k1)
    return u + 0.5 * dt * (k1 + k2)


_STEPPERS = {"rk4": _rk4_step, "heun": _heun_step}


@partial(jax.jit, static_argnames=("rhs", "n_out", "substeps", "scheme"))
def integrate(
    rhs: Callable[[jax.Array], jax.Array],
    u0: jax.Array,
    dt_out: float,
    n_out: int,
    substeps: int,
    scheme: Scheme = "rk4",
) -> jax.Array:
    """Integrate ``du/dt = rhs(u)`` and return the state at ``n_out`` equally spaced times.

    Args:
        rhs: semi-discrete right-hand side, autonomous, acting on arrays shaped like ``u0``.
        u0: initial state, shape ``(..., *space)``; the value at output index 0.
        dt_out: spacing of the output times.
        n_out: number of output times, including the initial one.
        substeps: equal inner steps per output interval (inner step ``dt_out / substeps``).
        scheme: ``"rk4"`` (order 4) or ``"heun"`` (order 2).

    Returns:
        Array of shape ``(n_out, ...)`` with ``out[k] = u(k * dt_out)``.
    """
    step = _STEPPERS[scheme]
    dt = dt_out / substeps

    def advance(u, _):
        u = lax.fori_loop(0, substeps, lambda _, v: step(rhs, v, dt), u)
        return u, u

    _, path = lax.scan(advance, u0, None, length=n_out - 1)
    return jnp.concatenate([u0[None], path], axis=0)


def substeps_for(dt_out: float, dt_stable: float) -> int:
    """Smallest number of equal substeps whose step does not exceed ``dt_stable``."""
    if dt_stable <= 0:
        raise ValueError(f"stable step must be positive, got {dt_stable}")
    return max(1, int(-(-dt_out // dt_stable)))
