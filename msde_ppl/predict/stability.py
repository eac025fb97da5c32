r"""Integrator steps that keep a learned drift's explicit integration stable.

The solver-free fit matches the drift along posterior paths in continuous time; nothing in it
knows the step a forecast will take. An advective or wave-like learned drift has Jacobian
eigenvalues :math:`\lambda \approx \pm i\omega` with :math:`\omega` up to a speed over the
coarse spacing, and an explicit step :math:`h` multiplies such a mode by the method's
stability function :math:`R(h\lambda)` per step (stochastic Heun: :math:`R(z) = 1 + z +
z^2/2`; Euler–Maruyama: :math:`R(z) = 1 + z`) where the SDE multiplies it by
:math:`e^{h\lambda}`: :math:`|R(i\omega h)| = \sqrt{1 + \omega^4 h^4 / 4}` for Heun, where the
SDE conserves the mode. On shallow-water-like data (:math:`\omega h \approx 1` at one step per
snapshot) the members left the data's range within a few wave periods (docs/robustness.md).

:func:`stable_substeps` picks the fewest inner steps per snapshot interval whose spurious
log-growth over the forecast horizon :math:`T`,

.. math::  G(h) = \frac{T}{h} \max_\lambda \big(\log|R(h\lambda)| - h \max(\operatorname{Re}
    \lambda, 0)\big),

is at most :data:`GROWTH_TOLERANCE` (no mode grows by more than 10% beyond what the SDE's own
growth allows), and :math:`h|\lambda| \le` :data:`MAX_STEP_RATE` (0.25) for every mode. The
second bound is about the modes the growth bound passes: a damped mode that a step barely
keeps stable loses its noise (stochastic Heun on :math:`f = -\theta z` multiplies the noise
increment by :math:`1 - \theta h / 2`, zero at :math:`\theta h = 2`, where :math:`R = 1`);
its stationary variance is 0.92 of the SDE's at :math:`\theta h = 0.5`, 0.98 at 0.25. And the
probed eigenvalues are those at the probed members' states: on the shallow-water probe the
outermost ones, about :math:`-9.5 \pm 55i`, pass the growth bound at one step per snapshot
(:math:`|R| = 0.92`), yet 116 of 256 members diverged with one step and none with two or
four. Ritz values lie inside the spectrum's hull, so they underestimate the outermost
:math:`|\lambda|` somewhat; the second bound's margin covers that too. The rate was 0.5 at
first (stop 63); on the robustness benchmark's shallow water (stop 64) the implicit-scale
model then took 3 steps per snapshot at the median and scored 0.0311 on val (0.0364 on
test, with 1 to 3 of 256 members diverged), against 0.0286 at 0.25 (5 steps; test 0.0312, no
member diverged) and 0.0305 on test with 16 fixed steps; the multiscale model 0.0248
against 0.0245 on val: at :math:`h|\lambda| \approx 0.5` the step still costs accuracy
where the snapshot-scale dynamics are wave-like. The eigenvalues are the Ritz
values of a few Arnoldi steps on the Jacobian at the current states (:class:`StiffnessProbe`),
which approximate its outermost eigenvalues, those the bound is about. Strongly damped modes
(negative real :math:`\lambda`, as diffusion gives) need :math:`h|\lambda| \le 0.25`, oscillatory
ones far more steps (:math:`h \propto |\lambda|^{-4/3}` for Heun): the bound tells them apart
where a norm would not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["GROWTH_TOLERANCE", "StiffnessProbe", "spurious_growth", "stable_substeps"]

GROWTH_TOLERANCE = 0.1  # spurious log-growth of any mode over the horizon (10%)
MAX_STEP_RATE = 0.25  # h |lambda| at most (module docstring)
PROBED_MEMBERS = 4  # members whose Jacobians are probed (the worst counts)
KRYLOV_DIM = 8  # Arnoldi steps per probe


def spurious_growth(eigenvalues: jax.Array, h: jax.Array, method: str) -> jax.Array:
    r""":math:`\log|R(h\lambda)| - h\max(\operatorname{Re}\lambda, 0)` per eigenvalue: the
    log-growth per step beyond the SDE's own (module docstring)."""
    z = h * eigenvalues
    a = z + z * z / 2 if method == "heun" else z  # R = 1 + a
    # log|R| = log(1 + 2 Re a + |a|^2) / 2, accurate for small steps
    log_r = 0.5 * jnp.log1p(jnp.maximum(2 * jnp.real(a) + jnp.abs(a) ** 2, -1.0))
    return log_r - jnp.maximum(jnp.real(z), 0.0)


def stable_substeps(eigenvalues: jax.Array, dt: float, horizon: float, method: str,
                    at_least: int = 1, at_most: int = 64) -> jax.Array:
    r"""Inner steps per interval ``dt`` for a drift whose Jacobian has ``eigenvalues`` (any
    shape, complex): the fewest ``n`` in ``[at_least, at_most]`` with spurious log-growth
    (:func:`spurious_growth`) at most :data:`GROWTH_TOLERANCE` over ``horizon`` and
    :math:`h|\lambda| \le` :data:`MAX_STEP_RATE`, else
    ``at_most``; an int32 scalar (traceable). Non-finite eigenvalues are ignored."""
    lam = jnp.ravel(eigenvalues).astype(jnp.complex64)
    lam = jnp.where(jnp.isfinite(lam), lam, 0.0)
    horizon = max(float(horizon), float(dt))
    n = jnp.arange(at_least, at_most + 1)
    h = dt / n
    growth = spurious_growth(lam[None, :], h[:, None], method).max(axis=1) * (horizon / h)
    ok = (growth <= GROWTH_TOLERANCE) & (h * jnp.abs(lam).max() <= MAX_STEP_RATE)
    return jnp.where(ok.any(), n[jnp.argmax(ok)], at_most).astype(jnp.int32)


def _arnoldi(matvec: Callable, v0: jax.Array, k: int, fresh: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """``k`` Arnoldi steps (Gram–Schmidt applied twice) from the unit vector ``v0`` (``(n,)``):
    the Ritz values (``(k,)``, complex; zeros after a breakdown) and a unit start vector for
    the next call: the real and imaginary parts of every Ritz vector, each of unit norm, and
    the unit vector ``fresh``, summed (the imaginary parts of a conjugate pair cancel, so it is
    the real parts, a pair's twice). The Ritz vectors carry the directions found so far;
    ``fresh`` keeps the next space from collapsing onto an invariant subspace."""
    n = v0.shape[0]
    basis = jnp.zeros((k + 1, n), v0.dtype).at[0].set(v0)
    hess = jnp.zeros((k + 1, k), v0.dtype)

    def step(j, carry):
        basis, hess = carry
        w = matvec(basis[j])
        mask = (jnp.arange(k + 1) <= j).astype(w.dtype)
        c1 = (basis @ w) * mask
        w = w - c1 @ basis
        c2 = (basis @ w) * mask
        w = w - c2 @ basis
        norm = jnp.linalg.norm(w)
        alive = norm > 1e-6 * jnp.maximum(jnp.linalg.norm(c1 + c2), 1e-30)
        hess = hess.at[:, j].set((c1 + c2).at[j + 1].set(jnp.where(alive, norm, 0.0)))
        basis = basis.at[j + 1].set(jnp.where(alive, w / jnp.where(alive, norm, 1.0), 0.0))
        return basis, hess

    basis, hess = lax.fori_loop(0, k, step, (basis, hess))
    values, vectors = jnp.linalg.eig(hess[:k])
    ritz = vectors.T @ basis[:k].astype(vectors.dtype)  # (k, n)
    parts = jnp.concatenate([jnp.real(ritz), jnp.imag(ritz)]).astype(v0.dtype)
    part_norm = jnp.linalg.norm(parts, axis=1, keepdims=True)
    nxt = jnp.sum(parts / jnp.where(part_norm > 0, part_norm, 1.0), axis=0) + fresh
    nxt_norm = jnp.linalg.norm(nxt)
    nxt = jnp.where(nxt_norm > 0, nxt / jnp.where(nxt_norm > 0, nxt_norm, 1.0), v0)
    return values, nxt


class StiffnessProbe:
    r"""Outermost eigenvalues of the drift's Jacobian :math:`J = \partial f / \partial z` at
    the current states of the :data:`PROBED_MEMBERS` ensemble members farthest from the
    ensemble mean (Euclidean distance of the flattened states; non-finite members are never
    chosen while finite ones remain): :data:`KRYLOV_DIM` Arnoldi steps each (one
    Jacobian-vector product per step), started from the previous call's Ritz vectors plus a
    fresh random direction, so the probe follows the states as they move.

    The outliers are the members a spurious mode shows up in first: a mode that an explicit
    step amplifies by :math:`|R| > 1` carries its member away from the others geometrically,
    and where the learned drift is stiffer off the data's states, the members that wander
    farthest reach those states first. On the robustness benchmark's shallow water at stop 63
    (the rate bound 0.5, the first four members probed), two of 256 test members diverged,
    neither of them probed (docs/robustness.md; no run separates the two changes of stop 64).
    The start vectors belong to the ranks, not to the members: when the outliers change
    order, a member starts from another member's Ritz vectors (nearby states, nearby
    spectra; the fresh direction and the Arnoldi steps correct the rest).
    """

    def __init__(self, drift: Callable, args: Any, args_axes: Any, n_members: int):
        self._m = min(int(n_members), PROBED_MEMBERS)
        self._args, self._axes, self._drift = args, args_axes, drift

    def _members(self, index: jax.Array) -> Any:
        """The drift's ``args`` of the members ``index`` (``(m,)``): per-member subtrees (those
        with an axis in ``args_axes``, a prefix of ``args`` as vmap's ``in_axes``) gathered
        along their axis, shared ones as they are."""
        def take(axis, sub):
            if axis is None:
                return sub
            return jax.tree.map(lambda x: jnp.take(x, index, axis=axis), sub)

        if self._axes is None:
            return self._args
        return jax.tree.map(take, self._axes, self._args, is_leaf=lambda x: x is None)

    def start(self, key: jax.Array, z0: jax.Array) -> jax.Array:
        """Random unit start vectors, ``(m, n)`` (``n`` the flattened state size)."""
        v = jax.random.normal(key, (self._m, z0[0].size), z0.dtype)
        return v / jnp.linalg.norm(v, axis=1, keepdims=True)

    def outliers(self, z: jax.Array) -> jax.Array:
        """Indices ``(m,)`` of the members of ``z`` (``(S, *state)``) farthest from the
        ensemble mean (the mean of the finite members), farthest first."""
        flat = z.reshape(z.shape[0], -1)
        finite = jnp.all(jnp.isfinite(flat), axis=1)
        kept = jnp.where(finite[:, None], flat, 0.0)
        centre = jnp.sum(kept, axis=0, keepdims=True) / jnp.maximum(finite.sum(), 1)
        distance = jnp.sum((kept - centre) ** 2, axis=1)
        return lax.top_k(jnp.where(finite, distance, -1.0), self._m)[1]

    def eigenvalues(self, key: jax.Array, t: jax.Array, z: jax.Array, v: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
        """``(ritz (m, k) complex, next start vectors (m, n))`` at states ``z``
        (``(S, *state)``), probed at the members :meth:`outliers` picks; ``key`` draws the
        fresh directions."""
        shape = z.shape[1:]
        fresh = self.start(key, z)
        index = self.outliers(z)

        def one(z_one, v_one, fresh_one, a):
            f = lambda x: jnp.ravel(self._drift(t, x.reshape(shape), a))  # noqa: E731
            matvec = lambda u: jax.jvp(f, (jnp.ravel(z_one),), (u,))[1]  # noqa: E731
            return _arnoldi(matvec, v_one, min(KRYLOV_DIM, v_one.shape[0]), fresh_one)

        values, nxt = jax.vmap(one, in_axes=(0, 0, 0, self._axes))(
            jnp.take(z, index, axis=0), v, fresh, self._members(index))
        return values, lax.stop_gradient(nxt)
