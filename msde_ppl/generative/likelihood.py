r"""Product-of-experts observation model (docs/method.md §2.4).

A macro-only expert and a macro+micro expert, each a diagonal Gaussian with one learned variance
per field:

.. math::

    \mathcal N(y;\ P\zeta,\ \sigma_M^2)\ \cdot\ \mathcal N(y;\ P\zeta + g(\eta),\ \sigma_m^2)
    \;=\; \mathcal N(y;\ \mu_y,\ \sigma_y^2)\ \cdot\
          \mathcal N\big(g(\eta);\ 0,\ \sigma_M^2 + \sigma_m^2\big),

    \sigma_y^2 = (\sigma_M^{-2} + \sigma_m^{-2})^{-1}, \qquad
    \mu_y = P\zeta + \frac{\sigma_y^2}{\sigma_m^2}\, g(\eta).

The macro expert must explain :math:`y` on its own, which pushes the bulk of the signal into
:math:`\zeta`; the micro part enters as a correction shrunk by
:math:`\sigma_y^2/\sigma_m^2 = \sigma_M^2/(\sigma_M^2+\sigma_m^2) \in (0, 1)`.

**Normalisation.** By default (``agreement=False``) the likelihood is the *normalised* product
:math:`\mathcal N(y; \mu_y, \sigma_y^2)`, exactly what the reference code computes; the second
factor, which does not depend on :math:`y` and acts as a Gaussian penalty on the micro correction,
is dropped (docs/method.md §2.4). ``agreement=True`` keeps it, giving the unnormalised product of
the two expert densities. Either way sampling draws :math:`y \sim \mathcal N(\mu_y, \sigma_y^2)`.
With no micro state the likelihood is :math:`\mathcal N(y; P\zeta, \sigma_M^2)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike
from numpyro.distributions import Distribution, Normal, constraints
from numpyro.distributions.util import validate_sample

__all__ = ["ProductOfExpertsNormal"]


class ProductOfExpertsNormal(Distribution):
    r"""Product of a macro-only and a macro+micro diagonal Gaussian expert.

    Args:
        macro: macro reconstruction :math:`P\zeta`, shape ``batch + event``.
        micro: micro reconstruction :math:`g(\eta)`, same shape, or ``None`` (no micro state).
        macro_var: :math:`\sigma_M^2`, broadcastable to ``batch + event``.
        micro_var: :math:`\sigma_m^2`, broadcastable (ignored without ``micro``).
        event_ndim: how many trailing axes form one observation (e.g. 2 for ``(C, x)``).
        agreement: keep the :math:`y`-free factor (the unnormalised product), see module doc.
    """

    arg_constraints = {}
    pytree_data_fields = ("macro", "micro", "macro_var", "micro_var")
    pytree_aux_fields = ("agreement", "event_ndim")

    def __init__(
        self,
        macro: ArrayLike,
        micro: ArrayLike | None,
        macro_var: ArrayLike,
        micro_var: ArrayLike | None = None,
        *,
        event_ndim: int = 1,
        agreement: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        self.macro = jnp.asarray(macro)
        self.micro = None if micro is None else jnp.asarray(micro)
        with jax.numpy_rank_promotion("allow"):
            self.macro_var = jnp.broadcast_to(jnp.asarray(macro_var), jnp.shape(self.macro))
            self.micro_var = (
                None if micro is None
                else jnp.broadcast_to(jnp.asarray(micro_var), jnp.shape(self.macro))
            )
        if self.micro is not None and jnp.shape(self.micro) != jnp.shape(self.macro):
            raise ValueError(f"micro shape {jnp.shape(self.micro)} differs from macro shape "
                             f"{jnp.shape(self.macro)}")
        self.agreement = agreement
        self.event_ndim = event_ndim
        shape = jnp.shape(self.macro)
        super().__init__(batch_shape=shape[: len(shape) - event_ndim],
                         event_shape=shape[len(shape) - event_ndim :],
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self.event_ndim)

    @property
    def variance(self) -> Array:
        r""":math:`\sigma_y^2`."""
        if self.micro is None:
            return self.macro_var
        return 1.0 / (1.0 / self.macro_var + 1.0 / self.micro_var)

    @property
    def micro_weight(self) -> Array:
        r""":math:`\sigma_y^2/\sigma_m^2`, the shrinkage of the micro correction."""
        if self.micro is None:
            return jnp.zeros_like(self.macro)
        return self.macro_var / (self.macro_var + self.micro_var)

    @property
    def micro_part(self) -> Array:
        r"""The micro reconstruction as it enters the mean, :math:`(\sigma_y^2/\sigma_m^2) g`."""
        if self.micro is None:
            return jnp.zeros_like(self.macro)
        return self.micro_weight * self.micro

    @property
    def mean(self) -> Array:
        return self.macro + self.micro_part

    def _normal(self) -> Normal:
        return Normal(self.mean, jnp.sqrt(self.variance))

    @validate_sample
    def log_prob(self, value: Array) -> Array:
        axes = tuple(range(-self.event_ndim, 0))
        with jax.numpy_rank_promotion("allow"):
            lp = jnp.sum(self._normal().log_prob(value), axis=axes)
        if self.agreement and self.micro is not None:
            pen = Normal(0.0, jnp.sqrt(self.macro_var + self.micro_var)).log_prob(self.micro)
            lp = lp + jnp.sum(pen, axis=axes)
        return lp

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Array:
        with jax.numpy_rank_promotion("allow"):  # NumPyro's Normal broadcasts by promotion
            return self._normal().sample(key, sample_shape)


