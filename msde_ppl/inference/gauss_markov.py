r"""The variational posterior process: a diagonal Gauss–Markov path (docs/method.md §3.2).

Given marginals :math:`\mathcal N(m(t), \operatorname{diag} S(t))` with exact derivatives and
the prior's diffusion :math:`s`, the posterior process is the linear SDE

.. math::

    dz = f_q(z, t)\,dt + \operatorname{diag}(s)\,d\beta_t,\qquad
    f_q(z, t) = \dot m(t) - A(t)\,(z - m(t)),\qquad
    A(t) = \tfrac12\big(s^2 / S(t) - \tfrac{d}{dt}\log S(t)\big)

(elementwise), the unique diagonal linear SDE with diffusion :math:`s` whose marginals are
:math:`\mathcal N(m, S)`: :math:`A` solves :math:`\dot S = -2AS + s^2`.

On a time grid the process is exactly an AR(1) chain in the standardised coordinate
:math:`u = (z - m)/\sqrt S`:

.. math::

    u_{i+1} = \rho_i u_i + \sqrt{1-\rho_i^2}\,\varepsilon_i,\qquad
    \rho_i = \exp\!\Big(-\tfrac12 \int_{t_i}^{t_{i+1}} s^2/S(t)\,dt\Big),

because the transition of the SDE from :math:`t_i` to :math:`t_{i+1}` has multiplier
:math:`\Phi = \sqrt{S_{i+1}/S_i}\,\rho_i` and conditional variance
:math:`S_{i+1}(1-\rho_i^2)`. The integral is evaluated with the trapezoidal rule on the grid
(the only place this distribution approximates the continuous process). ``sample`` and
``log_prob`` therefore give joint paths (used by ``Predictive`` and by ``Trace_ELBO`` as a
path-sampling guide); the solver-free ELBO uses only the marginals and :math:`f_q`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float
from numpyro.distributions import Distribution, Normal, constraints
from numpyro.distributions.util import validate_sample

from msde_ppl.inference.kernel import WindowMoments

__all__ = ["GaussMarkovPath", "KLNodes"]


class KLNodes(NamedTuple):
    r"""Quadrature nodes of the KL-rate time integral of one path distribution.

    Attributes:
        times: node times, shape ``batch + (Q,)``.
        weights: quadrature weights, shape ``batch + (Q,)``
            (:math:`\int r(t)\,dt \approx \sum_j w_j r(t_j)`), or ``None`` for the grid
            times, reduced by the objective's own rule.
        moments: :class:`WindowMoments` at the nodes, arrays ``batch + (Q,) + state``.
    """

    times: Array
    weights: Array | None
    moments: WindowMoments


def _left_pad(x: Array, ndim: int) -> Array:
    return jnp.reshape(x, (1,) * (ndim - jnp.ndim(x)) + jnp.shape(x))


class GaussMarkovPath(Distribution):
    r"""Diagonal Gauss–Markov path with marginals :math:`\mathcal N(m(t_i), S(t_i))`.

    ``event_shape = (T,) + state_shape``, ``batch_shape`` = leading dims of ``mean`` before
    ``(T,) + state_shape``.

    Args:
        times: grid, shape ``batch + (T,)`` (or broadcastable).
        moments: :class:`WindowMoments` with arrays of shape ``batch + (T,) + state``.
        diffusion: the prior's diagonal diffusion :math:`s`, broadcastable to
            ``batch + state``.
        state_ndim: number of state dimensions (trailing dims after the time axis).
        validate_args: NumPyro argument validation flag.
    """

    arg_constraints = {}
    pytree_data_fields = ("times", "loc", "var", "mean_dot", "dlogvar_dt", "diffusion")
    pytree_aux_fields = ("state_ndim",)
    has_rsample = True
    reparametrized_params = ["loc", "var", "mean_dot", "dlogvar_dt", "diffusion"]

    def __init__(
        self,
        times: ArrayLike,
        moments: WindowMoments,
        diffusion: ArrayLike,
        state_ndim: int,
        *,
        validate_args: bool | None = None,
    ) -> None:
        self.state_ndim = int(state_ndim)
        self.loc, self.var, self.mean_dot, self.dlogvar_dt = (jnp.asarray(x) for x in moments)
        shape = jnp.shape(self.loc)
        for name, x in zip(("var", "mean_dot", "dlogvar_dt"), moments[1:], strict=True):
            if jnp.shape(x) != shape:
                raise ValueError(f"{name} shape {jnp.shape(x)} differs from mean shape {shape}")
        split = len(shape) - self.state_ndim - 1
        batch_shape, event_shape = shape[:split], shape[split:]
        self.times = jnp.broadcast_to(
            _left_pad(jnp.asarray(times), split + 1), batch_shape + (event_shape[0],)
        )
        state_shape = event_shape[1:]
        self.diffusion = jnp.broadcast_to(
            _left_pad(jnp.asarray(diffusion), len(batch_shape) + self.state_ndim),
            batch_shape + state_shape,
        )
        super().__init__(batch_shape=batch_shape, event_shape=event_shape,
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> constraints.Constraint:
        """Real-valued paths."""
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state."""
        return tuple(self.event_shape[1:])

    def _time_expanded(self, x: Array) -> Array:
        """``batch + state`` -> ``batch + (1,) + state``."""
        return jnp.expand_dims(x, len(self.batch_shape))

    @property
    def decay_rate(self) -> Float[Array, "*batch time *state"]:
        r""":math:`A(t_i) = \tfrac12(s^2/S(t_i) - \tfrac{d}{dt}\log S(t_i))`."""
        s2 = self._time_expanded(self.diffusion) ** 2
        return 0.5 * (s2 / self.var - self.dlogvar_dt)

    def drift_values(self, z: Float[Array, "*sample *batch time *state"]) -> Array:
        r"""Posterior drift :math:`f_q(z, t_i) = \dot m - A (z - m)` at the grid times."""
        rank = jnp.ndim(z)
        return _left_pad(self.mean_dot, rank) - _left_pad(self.decay_rate, rank) * (
            z - _left_pad(self.loc, rank)
        )

    def _rho(self) -> Array:
        """AR(1) coefficients, shape ``batch + (T-1,) + state``."""
        s2 = self._time_expanded(self.diffusion) ** 2
        inv = s2 / self.var
        t_axis = len(self.batch_shape)
        dt = jnp.diff(self.times, axis=-1)
        dt = jnp.reshape(dt, jnp.shape(dt) + (1,) * self.state_ndim)
        n = self.event_shape[0]
        integral = 0.5 * dt * (
            lax.slice_in_dim(inv, 0, n - 1, axis=t_axis) + lax.slice_in_dim(inv, 1, n, axis=t_axis)
        )
        return jnp.exp(-0.5 * integral)

    def kl_nodes(self, key: jax.Array) -> KLNodes:
        """Nodes of the KL-rate integral: the grid itself, with ``weights=None`` (the objective
        reduces grid values by its own rule, trapezoidal or the reference's mean). ``key`` is
        not used: the nodes are deterministic."""
        times = jnp.broadcast_to(self.times, self.batch_shape + (self.event_shape[0],))
        return KLNodes(times, None, WindowMoments(self.loc, self.var, self.mean_dot,
                                                  self.dlogvar_dt))

    def kl_draws(self, key: jax.Array) -> tuple[Array, Array | None, Array, Array]:
        r"""What the KL-rate integral needs: ``(times, weights, z, f_q)`` at the nodes
        (:meth:`kl_nodes`, drawn with a key folded from ``key``), one draw
        :math:`z \sim \mathcal N(m, S)` per node (from ``key`` itself) and its posterior drift
        :math:`f_q(z)`; arrays ``batch + (Q,)`` and ``batch + (Q,) + state``."""
        nodes = self.kl_nodes(jax.random.fold_in(key, 1))
        mom = nodes.moments
        eps = jax.random.normal(key, jnp.shape(mom.mean), dtype=mom.mean.dtype)
        z = mom.mean + jnp.sqrt(mom.var) * eps
        s2 = self._time_expanded(self.diffusion) ** 2
        f_q = mom.mean_dot - 0.5 * (s2 / mom.var - mom.dlogvar_dt) * (z - mom.mean)
        return nodes.times, nodes.weights, z, f_q

    def initial_marginal(self) -> Distribution:
        r"""The marginal :math:`q(z(t_1))`, batch shape ``batch``, event shape ``state``."""
        axis = len(self.batch_shape)
        return Normal(jnp.take(self.loc, 0, axis=axis),
                      jnp.sqrt(jnp.take(self.var, 0, axis=axis))).to_event(self.state_ndim)

    def sample_marginals(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Independent draws :math:`z_i \\sim N(m_i, S_i)` at every grid time (reparametrised)."""
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, dtype=self.loc.dtype)
        rank = len(shape)
        return _left_pad(self.loc, rank) + _left_pad(jnp.sqrt(self.var), rank) * eps

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Joint path samples via the AR(1) recursion (``lax.scan``), reparametrised."""
        sample_shape = tuple(sample_shape)
        lead = sample_shape + self.batch_shape
        t_axis = len(lead)
        eps = jax.random.normal(key, lead + self.event_shape, dtype=self.loc.dtype)
        eps_tm = jnp.moveaxis(eps, t_axis, 0)
        rho = _left_pad(self._rho(), t_axis + 1 + self.state_ndim)
        rho_tm = jnp.broadcast_to(jnp.moveaxis(rho, t_axis, 0),
                                  (self.event_shape[0] - 1,) + lead + self.state_shape)

        def body(u: Array, inputs: tuple[Array, Array]) -> tuple[Array, Array]:
            r, e = inputs
            u_next = r * u + jnp.sqrt(1.0 - r**2) * e
            return u_next, u_next

        _, us = lax.scan(body, eps_tm[0], (rho_tm, eps_tm[1:]))
        u = jnp.moveaxis(jnp.concatenate([eps_tm[:1], us], axis=0), 0, t_axis)
        rank = jnp.ndim(u)
        return _left_pad(self.loc, rank) + _left_pad(jnp.sqrt(self.var), rank) * u

    @validate_sample
    def log_prob(self, value: Float[Array, "*sample *batch time *state"]) -> Array:
        """Exact log density of the AR(1) chain (all transitions in parallel)."""
        rank = jnp.ndim(value)
        lead_ndim = rank - len(self.event_shape)
        t_axis = lead_ndim
        n = self.event_shape[0]
        var = _left_pad(self.var, rank)
        u = (value - _left_pad(self.loc, rank)) / jnp.sqrt(var)
        rho = _left_pad(self._rho(), rank)
        u0 = lax.slice_in_dim(u, 0, 1, axis=t_axis)
        u_prev = lax.slice_in_dim(u, 0, n - 1, axis=t_axis)
        u_next = lax.slice_in_dim(u, 1, n, axis=t_axis)
        cond_var = 1.0 - rho**2
        log2pi = jnp.log(2.0 * jnp.pi)
        lp_first = -0.5 * (u0**2 + log2pi)
        lp_trans = -0.5 * ((u_next - rho * u_prev) ** 2 / cond_var + jnp.log(cond_var) + log2pi)
        event_axes = tuple(range(lead_ndim, rank))
        jac = 0.5 * jnp.sum(jnp.log(var), axis=event_axes)
        return jnp.sum(lp_first, axis=event_axes) + jnp.sum(lp_trans, axis=event_axes) - jac

    @property
    def mean(self) -> Array:
        """Marginal means :math:`m(t_i)`."""
        return self.loc

    @property
    def variance(self) -> Array:
        """Marginal variances :math:`S(t_i)`."""
        return self.var
