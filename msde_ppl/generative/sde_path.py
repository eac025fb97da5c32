r"""Distribution over a latent SDE path on a time grid (Euler–Maruyama transition density).

The prior over a latent path :math:`z(t_0), \dots, z(t_{T-1})` of the Itô SDE

.. math::

    dz = f_\theta(t, z)\,dt + \operatorname{diag}(s)\,d\beta_t

is discretised with the Euler–Maruyama scheme, whose transitions are Gaussian:

.. math::

    \log p(z_{0:T-1}) = \log p_0(z_0)
        + \sum_{i=0}^{T-2} \log \mathcal N\big(z_{i+1};\ z_i + f_\theta(t_i, z_i)\,\Delta t_i,\
                                                \operatorname{diag}(s^2)\,\Delta t_i\big),
    \qquad \Delta t_i = t_{i+1} - t_i .

All transitions are evaluated in parallel (one ``vmap`` over batch and time); ``sample`` runs
the recursion with ``lax.scan``.

Unlike :class:`numpyro.distributions.EulerMaruyama`, whose ``sde_fn`` is a static pytree field,
the drift here is split with :func:`equinox.partition` into traced array leaves (pytree *data*,
so network weights are traced across ``jit``) and a static remainder. The drift convention is
equinox/diffrax style, ``drift(t, z, args)`` on ONE unbatched state; batching is done here with
``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import validate_sample

__all__ = ["SDEPath"]


def _left_pad(x: Array, ndim: int) -> Array:
    """Reshape ``x`` to rank ``ndim`` by adding leading singleton axes (explicit, rank-safe)."""
    return jnp.reshape(x, (1,) * (ndim - jnp.ndim(x)) + jnp.shape(x))


class SDEPath(Distribution):
    r"""Euler–Maruyama path distribution of a diagonal-noise Itô SDE on a fixed time grid.

    .. math::

        p(z_{0:T-1}) = p_0(z_0)\prod_{i=0}^{T-2}
            \mathcal N\big(z_{i+1};\ z_i + f(t_i, z_i, \text{args})\Delta t_i,\
            \operatorname{diag}(s^2)\Delta t_i\big)

    ``event_shape = (T,) + state_shape``; ``batch_shape`` is the broadcast of the leading
    dimensions of ``times`` (``batch + (T,)``), of ``diffusion`` (``batch + state_shape``),
    and of ``init_dist.batch_shape``.

    With ``init_dist=None`` the density is that of the path *conditional on its first state*
    (an improper flat density on :math:`z_0`). That is the right choice for a window cut from the
    middle of a trajectory, where the marginal of :math:`z(t_0)` under the prior is unknown;
    such a distribution cannot be sampled (``sample`` raises ``NotImplementedError``, as
    NumPyro's ``ImproperUniform`` does, so initialisation strategies fall back gracefully).

    Args:
        drift: callable ``drift(t, z, args) -> dz/dt`` on one unbatched state ``z`` of shape
            ``state_shape`` and scalar ``t``. Array leaves of an :class:`equinox.Module` drift are
            traced data; arrays captured in a plain closure are compile-time constants, so pass
            traced quantities (e.g. sampled physical coefficients) through ``drift_args``.
        diffusion: diagonal diffusion :math:`s > 0`, shape broadcastable to
            ``batch + state_shape``.
        times: time grid, shape ``(T,)`` or ``batch + (T,)``, strictly increasing.
        init_dist: distribution of :math:`z(t_0)` with ``event_shape == state_shape``, or ``None``.
        drift_args: pytree passed as the third argument of ``drift`` (shared by the whole batch).
        state_shape: shape of one state; required when ``init_dist`` is ``None``.
        batch_shape: explicit batch shape (must be a broadcast of the inferred one).
        validate_args: NumPyro argument validation flag.
    """

    arg_constraints = {}
    pytree_data_fields = ("times", "diffusion", "init_dist", "drift_params", "drift_args")
    pytree_aux_fields = ("drift_static", "state_shape")

    def __init__(
        self,
        drift: Callable[[Array, Array, Any], Array],
        diffusion: ArrayLike,
        times: ArrayLike,
        init_dist: Distribution | None = None,
        *,
        drift_args: Any = None,
        state_shape: tuple[int, ...] | None = None,
        batch_shape: tuple[int, ...] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if init_dist is not None:
            init_event = tuple(init_dist.event_shape)
            if state_shape is not None and tuple(state_shape) != init_event:
                raise ValueError(
                    f"state_shape {state_shape} differs from init_dist.event_shape {init_event}"
                )
            state_shape = init_event
        elif state_shape is None:
            raise ValueError("state_shape is required when init_dist is None")
        self.state_shape = tuple(state_shape)
        self.times = jnp.asarray(times)
        self.diffusion = jnp.asarray(diffusion)
        self.init_dist = init_dist
        self.drift_params, self.drift_static = eqx.partition(drift, eqx.is_array)
        self.drift_args = drift_args
        if jnp.ndim(self.times) < 1 or jnp.shape(self.times)[-1] < 2:
            raise ValueError(f"times must have a trailing time axis of length >= 2, got "
                             f"shape {jnp.shape(self.times)}")
        n_state = len(self.state_shape)
        diff_shape = jnp.shape(self.diffusion)
        if len(diff_shape) < n_state:
            diff_shape = (1,) * (n_state - len(diff_shape)) + diff_shape
        try:
            jnp.broadcast_shapes(diff_shape[len(diff_shape) - n_state :], self.state_shape)
        except ValueError as err:
            raise ValueError(
                f"diffusion shape {jnp.shape(self.diffusion)} does not broadcast to state shape "
                f"{self.state_shape}"
            ) from err
        inferred = jnp.broadcast_shapes(
            jnp.shape(self.times)[:-1],
            diff_shape[: len(diff_shape) - n_state],
            () if init_dist is None else tuple(init_dist.batch_shape),
        )
        if batch_shape is None:
            batch_shape = inferred
        elif jnp.broadcast_shapes(tuple(batch_shape), inferred) != tuple(batch_shape):
            raise ValueError(f"batch_shape {batch_shape} is not a broadcast of {inferred}")
        event_shape = (jnp.shape(self.times)[-1],) + self.state_shape
        super().__init__(
            batch_shape=tuple(batch_shape), event_shape=event_shape, validate_args=validate_args
        )

    # ------------------------------------------------------------------ accessors
    @constraints.dependent_property(is_discrete=False)
    def support(self) -> constraints.Constraint:
        """Real-valued paths: ``independent(real, 1 + len(state_shape))``."""
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def num_times(self) -> int:
        """Number of grid times ``T``."""
        return self.event_shape[0]

    @property
    def drift(self) -> Callable[[Array, Array, Any], Array]:
        """The drift callable ``drift(t, z, args)`` (array leaves re-attached)."""
        return eqx.combine(self.drift_params, self.drift_static)

    def batch_times(self) -> Float[Array, "*batch time"]:
        """Time grid broadcast to ``batch_shape + (T,)``."""
        shape = self.batch_shape + (self.num_times,)
        return jnp.broadcast_to(_left_pad(self.times, len(shape)), shape)

    def batch_diffusion(self) -> Float[Array, "*batch *state"]:
        """Diffusion broadcast to ``batch_shape + state_shape``."""
        shape = self.batch_shape + self.state_shape
        return jnp.broadcast_to(_left_pad(self.diffusion, len(shape)), shape)

    def drift_values(self, t: Float[Array, "*lead"], z: Float[Array, "*lead *state"]) -> Array:
        r"""Evaluate :math:`f(t, z, \text{args})` for arbitrarily many leading dimensions.

        Args:
            t: times, shape ``lead``.
            z: states, shape ``lead + state_shape``.

        Returns:
            Drift values, shape ``lead + state_shape``.
        """
        lead = jnp.shape(t)
        n_state = len(self.state_shape)
        if tuple(jnp.shape(z)[: jnp.ndim(z) - n_state]) != tuple(lead):
            raise ValueError(f"times shape {lead} does not match states shape {jnp.shape(z)}")
        drift, args = self.drift, self.drift_args
        flat_t = jnp.reshape(t, (-1,))
        flat_z = jnp.reshape(z, (-1,) + self.state_shape)
        out = jax.vmap(lambda ti, zi: drift(ti, zi, args))(flat_t, flat_z)
        return jnp.reshape(out, jnp.shape(z))

    # ------------------------------------------------------------------ density
    @validate_sample
    def log_prob(self, value: Float[Array, "*sample *batch time *state"]) -> Array:
        """Euler–Maruyama log density, all transitions in parallel.

        Args:
            value: paths, shape ``sample_shape + batch_shape + (T,) + state_shape``.

        Returns:
            Log densities, shape ``sample_shape + batch_shape``.
        """
        n_state = len(self.state_shape)
        lead = jnp.shape(value)[: jnp.ndim(value) - n_state - 1]
        rank = len(lead) + 1 + n_state
        times = jnp.broadcast_to(
            _left_pad(self.batch_times(), len(lead) + 1), lead + (self.num_times,)
        )
        t0, dt = times[..., :-1], jnp.diff(times, axis=-1)
        time_axis = len(lead)
        z0 = lax.slice_in_dim(value, 0, self.num_times - 1, axis=time_axis)
        z1 = lax.slice_in_dim(value, 1, self.num_times, axis=time_axis)
        f = self.drift_values(t0, z0)
        dt_full = jnp.reshape(dt, jnp.shape(dt) + (1,) * n_state)
        s = self.batch_diffusion()
        s_full = _left_pad(jnp.expand_dims(s, len(self.batch_shape)), rank)
        var = s_full**2 * dt_full
        resid = z1 - z0 - f * dt_full
        lp = -0.5 * (resid**2 / var + jnp.log(2.0 * jnp.pi * var))
        lp = jnp.sum(lp, axis=tuple(range(len(lead), rank)))
        if self.init_dist is not None:
            # third-party densities broadcast by rank promotion; allow it locally
            with jax.numpy_rank_promotion("allow"):
                lp = lp + self.init_dist.log_prob(jnp.take(value, 0, axis=time_axis))
        return lp

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Simulate Euler–Maruyama paths with ``lax.scan``.

        Args:
            key: PRNG key.
            sample_shape: leading sample shape.

        Returns:
            Paths, shape ``sample_shape + batch_shape + (T,) + state_shape``.
        """
        if self.init_dist is None:
            # NotImplementedError, like ImproperUniform: NumPyro's init strategies fall back
            raise NotImplementedError(
                "SDEPath with init_dist=None has no density for its first state and cannot be "
                "sampled; give an init_dist (or substitute the path, e.g. from a guide)."
            )
        key_init, key_noise = jax.random.split(key)
        lead = tuple(sample_shape) + self.batch_shape
        n_state = len(self.state_shape)
        with jax.numpy_rank_promotion("allow"):
            z0 = self.init_dist.expand(self.batch_shape).sample(key_init, tuple(sample_shape))
        times = jnp.broadcast_to(_left_pad(self.batch_times(), len(lead) + 1),
                                 lead + (self.num_times,))
        times_tm = jnp.moveaxis(times, -1, 0)  # (T,) + lead
        eps = jax.random.normal(
            key_noise, (self.num_times - 1,) + lead + self.state_shape, dtype=z0.dtype
        )
        s = _left_pad(self.batch_diffusion(), len(lead) + n_state)

        def body(z: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
            t, t_next, e = inputs
            dt = jnp.reshape(t_next - t, lead + (1,) * n_state)
            z_next = z + self.drift_values(t, z) * dt + s * jnp.sqrt(dt) * e
            return z_next, z_next

        _, zs = lax.scan(body, z0, (times_tm[:-1], times_tm[1:], eps))
        path = jnp.concatenate([z0[None], zs], axis=0)
        return jnp.moveaxis(path, 0, len(lead))

    def expand(self, batch_shape: tuple[int, ...]) -> SDEPath:
        """Return the same path distribution with a broadcast ``batch_shape``."""
        batch_shape = tuple(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return SDEPath(
            self.drift,
            self.diffusion,
            self.times,
            self.init_dist,
            drift_args=self.drift_args,
            state_shape=self.state_shape,
            batch_shape=batch_shape,
            validate_args=self._validate_args,
        )
