r"""Temporal kernel interpolation of per-snapshot Gaussian encodings (docs/method.md §3.2).

Each snapshot :math:`y_i` of a window :math:`t_1 < \dots < t_M` is encoded into a Gaussian
:math:`\mathcal N(\mu_i, \operatorname{diag} v_i)`. A learned deep kernel smooths these into
a mean :math:`m(t)` and a log-variance :math:`\log S(t)` that are smooth functions of time:

.. math::

    m(t) = k(t, t_{1:M})^\top (K + \sigma_n^2 I)^{-1} [\mu_1, \dots, \mu_M]^\top, \qquad
    \log S(t) = k(t, t_{1:M})^\top (K + \sigma_n^2 I)^{-1} [\log v_1, \dots, \log v_M]^\top,

with the same kernel for every coordinate,

.. math::

    k(t, t') = a \exp\!\Big(-\frac{(w(\tilde\tau) - w(\tilde\tau'))^2}{2\ell^2}\Big), \quad
    \tilde\tau = \frac{t - t_c}{c}, \ c = \tfrac12 (t_M - t_1),\ t_c = t_1 + c, \quad
    w(\tilde\tau) = \tilde\tau + \mathrm{NN}(\tilde\tau),

:math:`\ell = \operatorname{softplus}(\rho_\ell) + 2/M`,
:math:`a = \operatorname{softplus}(\rho_a)`,
:math:`\sigma_n^2 = \operatorname{softplus}(\rho_n)`. The time derivatives :math:`\dot m(t)` and
:math:`\tfrac{d}{dt}\log S(t)` are exact, by forward-mode autodiff (``jax.jvp``) in :math:`t`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve
from jaxtyping import Array, Float

__all__ = ["TemporalKernel", "WindowMoments", "interpolate_window", "safe_cholesky"]

_JITTERS = (0.0, 1e-6, 1e-4, 1e-2, 1e-1)


def _softplus_inverse(x: float) -> float:
    return float(jnp.log(jnp.expm1(jnp.asarray(x))))


def safe_cholesky(
    matrix: Float[Array, "m m"], jitters: tuple[float, ...] = _JITTERS
) -> Float[Array, "m m"]:
    r"""Lower Cholesky factor of ``matrix + j * mean(diag) * I`` with the smallest safe jitter.

    All candidate jitters :math:`j \in` ``jitters`` are tried in parallel on a gradient-stopped
    copy; the smallest one whose factor is finite is then used for one differentiable
    factorisation. No Python retry loop, no ``while_loop`` (which would block reverse-mode
    autodiff), and no NaN from a failed candidate can leak into the gradient. If every candidate
    fails, the largest jitter is used (its factor is then non-finite and the caller's
    non-finite-loss guard catches it).

    Args:
        matrix: symmetric matrix, shape ``(m, m)``.
        jitters: relative jitters, increasing.

    Returns:
        Lower-triangular factor, shape ``(m, m)``.
    """
    eye = jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
    scale = jax.lax.stop_gradient(jnp.mean(jnp.diagonal(matrix)))
    candidates = jnp.asarray(jitters, dtype=matrix.dtype)
    frozen = jax.lax.stop_gradient(matrix)

    def finite(j: Array) -> Array:
        return jnp.all(jnp.isfinite(jnp.linalg.cholesky(frozen + j * scale * eye)))

    ok = jax.vmap(finite)(candidates)
    index = jnp.where(jnp.any(ok), jnp.argmax(ok), len(jitters) - 1)
    jitter = jax.lax.stop_gradient(candidates[index] * scale)
    return jnp.linalg.cholesky(matrix + jitter * eye)


class TemporalKernel(eqx.Module):
    r"""Deep squared-exponential kernel on the normalised window time (docs/method.md §3.2).

    :math:`k(\tilde\tau,\tilde\tau') = a\exp(-(w(\tilde\tau)-w(\tilde\tau'))^2/(2\ell^2))`, with
    warp :math:`w(u) = u + \mathrm{NN}(u)` (or :math:`w(u) = u` when ``hidden_size=0``).

    The warp MLP's last layer is zero-initialised, so :math:`w` starts as the identity (a choice:
    the reference code's default initialisation makes the initial warp a random perturbation).
    At initialisation :math:`\ell = 0.1 + 2/M`, :math:`a = 1`, :math:`\sigma_n^2 = 0.01`.

    Args:
        hidden_size: width of the warp MLP (``0`` disables the warp network).
        depth: number of hidden layers of the warp MLP.
        activation: hidden activation.
        step_gain: the three hyperparameters are stored as :math:`r / g` and used as
            :math:`\operatorname{softplus}(g \cdot \text{stored})`: the same values, but an
            optimiser step of a given size moves them :math:`g` times as far (Adam's steps
            are about its learning rate in the stored units).
        key: PRNG key (keyword-only).
    """

    warp_net: eqx.nn.MLP | None
    raw_lengthscale: Float[Array, ""]
    raw_amplitude: Float[Array, ""]
    raw_nugget: Float[Array, ""]
    step_gain: float = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int = 128,
        depth: int = 2,
        activation: Callable[[Array], Array] = jax.nn.leaky_relu,
        step_gain: float = 1.0,
        *,
        key: jax.Array,
    ) -> None:
        if hidden_size > 0:
            net = eqx.nn.MLP(1, 1, hidden_size, depth, activation=activation, key=key)
            last = net.layers[-1]
            net = eqx.tree_at(
                lambda n: (n.layers[-1].weight, n.layers[-1].bias),
                net,
                (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
            )
            self.warp_net = net
        else:
            self.warp_net = None
        if step_gain <= 0:
            raise ValueError(f"the step gain must be positive, got {step_gain}")
        self.step_gain = float(step_gain)
        self.raw_lengthscale = jnp.asarray(_softplus_inverse(0.1) / step_gain)
        self.raw_amplitude = jnp.asarray(_softplus_inverse(1.0) / step_gain)
        self.raw_nugget = jnp.asarray(_softplus_inverse(0.01) / step_gain)

    def warp(self, u: Float[Array, ""]) -> Float[Array, ""]:
        """Warped normalised time :math:`w(u) = u + NN(u)` for scalar ``u``."""
        if self.warp_net is None:
            return u
        return u + self.warp_net(jnp.reshape(u, (1,)))[0]

    def hyperparameters(self, window_size: int) -> tuple[Array, Array, Array]:
        """Return ``(lengthscale, amplitude, nugget_variance)`` for a window of ``M`` points."""
        g = self.step_gain
        lengthscale = jax.nn.softplus(g * self.raw_lengthscale) + 2.0 / window_size
        return (lengthscale, jax.nn.softplus(g * self.raw_amplitude),
                jax.nn.softplus(g * self.raw_nugget))


class WindowMoments(NamedTuple):
    r"""Moments of the variational Gauss–Markov process at query times.

    Attributes:
        mean: :math:`m(t)`, shape ``(Q,) + state``.
        var: :math:`S(t)`, shape ``(Q,) + state``.
        mean_dot: :math:`\dot m(t)`, shape ``(Q,) + state``.
        dlogvar_dt: :math:`\tfrac{d}{dt}\log S(t)`, shape ``(Q,) + state``.
    """

    mean: Array
    var: Array
    mean_dot: Array
    dlogvar_dt: Array


def interpolate_window(
    kernel: TemporalKernel,
    times: Float[Array, " m"],
    enc_mean: Array,
    enc_logvar: Array,
    query_times: Float[Array, " q"] | None = None,
    centred: bool = False,
) -> WindowMoments:
    r"""Kernel-interpolate encodings of one window into :math:`m, S, \dot m, \dot{\log S}`:
    Gaussian-process regression with a constant prior mean :math:`c`,

    .. math:: m(t) = c + k(t)^\top (K + \sigma_n^2 I)^{-1} (\mu - c),

    and the same for :math:`\log S` from the :math:`\log v_i`; :math:`c = 0` (the
    reference's), or with ``centred`` the window's average :math:`\bar\mu = \tfrac{1}{M}
    \sum_i \mu_i`. Centred, the interpolant reproduces constants, so encodings of data in
    other units (:math:`a\mu + b`, variances :math:`a^2 v`) give the moments in those units;
    a zero prior mean shrinks every window towards 0 (a field with a large offset, a
    temperature in kelvin, has its path pulled away from the data by about a thousandth of
    the offset), which a trend that should vanish (the Markov guide's) needs.

    Args:
        kernel: the temporal kernel.
        times: window times :math:`t_1 < \dots < t_M`, shape ``(M,)``, ``M >= 2``.
        enc_mean: encoder means :math:`\mu_i`, shape ``(M,) + state``.
        enc_logvar: encoder log-variances :math:`\log v_i`, shape ``(M,) + state``.
        query_times: where to evaluate, shape ``(Q,)``; defaults to ``times``.
        centred: the window's average as the prior mean (else 0).

    Returns:
        :class:`WindowMoments` at ``query_times``.
    """
    window_size = times.shape[0]
    if window_size < 2:
        raise ValueError("a window needs at least 2 times")
    state_shape = enc_mean.shape[1:]
    query_times = times if query_times is None else query_times
    lengthscale, amplitude, nugget = kernel.hyperparameters(window_size)
    half = 0.5 * (times[-1] - times[0])
    center = times[0] + half

    def warped(t: Array) -> Array:
        return kernel.warp((t - center) / half)

    w_data = jax.vmap(warped)(times)

    def kvec(t: Array) -> Array:
        return amplitude * jnp.exp(-((warped(t) - w_data) ** 2) / (2.0 * lengthscale**2))

    gram = amplitude * jnp.exp(
        -((w_data[:, None] - w_data[None, :]) ** 2) / (2.0 * lengthscale**2)
    )
    gram = gram + nugget * jnp.eye(window_size, dtype=gram.dtype)
    chol = safe_cholesky(gram)
    targets = jnp.concatenate(
        [jnp.reshape(enc_mean, (window_size, -1)), jnp.reshape(enc_logvar, (window_size, -1))],
        axis=1,
    )
    # the constant prior mean: 0, or centred the window's average of each target (the
    # interpolant then reproduces constants: data in other units get the path in those units)
    centre = (jnp.mean(targets, axis=0, keepdims=True) if centred
              else jnp.zeros_like(targets[:1]))
    alpha = cho_solve((chol, True), targets - centre)

    def value_and_rate(t: Array) -> tuple[Array, Array]:
        return jax.jvp(lambda u: kvec(u) @ alpha, (t,), (jnp.ones_like(t),))

    values, rates = jax.vmap(value_and_rate)(query_times)
    values = values + centre
    n = targets.shape[1] // 2
    shape = (query_times.shape[0],) + state_shape
    mean = jnp.reshape(values[:, :n], shape)
    logvar = jnp.reshape(values[:, n:], shape)
    return WindowMoments(
        mean=mean,
        var=jnp.exp(logvar),
        mean_dot=jnp.reshape(rates[:, :n], shape),
        dlogvar_dt=jnp.reshape(rates[:, n:], shape),
    )
