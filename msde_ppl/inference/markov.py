r"""The guide's path as the posterior of a reference Ornstein–Uhlenbeck process (Markov smoother).

Each snapshot of a window :math:`t_1 < \dots < t_M` is encoded into a Gaussian
*pseudo-observation* :math:`\mu_i \sim \mathcal N(z(t_i), \operatorname{diag} v_i)`. The
variational path is the posterior of the reference linear SDE

.. math::

    dz = -\lambda \odot z\,dt + \operatorname{diag}(s)\,d\beta_t,
    \qquad \lambda = \operatorname{softplus}(\rho) / (t_M - t_1) \ge 0,

with the **model's** diffusion :math:`s` (so the KL to the prior is finite) and a flat density
on :math:`z(t_1)`, given those pseudo-observations. Per coordinate this is a scalar Kalman
filter and Rauch–Tung–Striebel smoother with exact transitions

.. math::

    z(t+h) \mid z(t) \sim \mathcal N\big(\varphi(h) z(t),\ q(h)\big), \qquad
    \varphi(h) = e^{-\lambda h}, \quad q(h) = s^2 \frac{1 - e^{-2\lambda h}}{2\lambda},

giving the grid marginals :math:`\mathcal N(m_i, P_i)` and the lag-one covariances
:math:`C_i = \operatorname{Cov}(z_i, z_{i+1})` (a ``lax.scan`` over the window, no matrix
factorisation). Between two grid times the process is the bridge of the reference SDE,
:math:`z(\tau) \mid z_i, z_{i+1} \sim \mathcal N(a z_i + c z_{i+1}, V)` with
:math:`h_1 = \tau - t_i`, :math:`h_2 = t_{i+1} - \tau`, :math:`d = q(h_2) + \varphi(h_2)^2 q(h_1)`,

.. math::

    a = \varphi(h_1) q(h_2) / d, \quad c = \varphi(h_2) q(h_1) / d, \quad V = q(h_1) q(h_2) / d,

so :math:`m(\tau) = a m_i + c m_{i+1}` and :math:`S(\tau) = V + a^2 P_i + c^2 P_{i+1} + 2ac\,C_i`
in closed form, with exact :math:`\dot m, \dot S` by forward-mode autodiff in :math:`\tau`.

Why this family: for a linear-Gaussian model observed with noise it *contains the exact
posterior* (encoder :math:`\mu_i = y_i`, :math:`v_i` = the noise variance, :math:`\lambda` =
the drift rate), for every value of the diffusion :math:`s` the parameter posterior samples: the
path posterior follows :math:`s`, so the ELBO's dependence on the parameters is that of the
log evidence, not of a fixed path. Its mean has kinks and its variance dips at the
observation times (the shape of every smoother of a rough diffusion), which a smooth kernel
interpolant (:mod:`msde_ppl.inference.kernel`) cannot represent; that mismatch biases the
diffusion and drift parameters low (docs/calibration.md). The drift of the process jumps at
the grid times, so the KL-rate integral is taken at random times inside the intervals
(:meth:`MarkovBridgePath.kl_nodes`, an unbiased stratified Monte Carlo rule) rather than at
the grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from msde_ppl.inference.gauss_markov import GaussMarkovPath, KLNodes
from msde_ppl.inference.kernel import TemporalKernel, WindowMoments, interpolate_window

__all__ = ["TREND_STEP_GAIN", "MarkovBridgePath", "MarkovWindow", "OUSmoother", "bridge_moments",
           "condition_window", "nodes_and_trend", "window_posterior"]


#: Step gain of the trend's kernel hyperparameters (:class:`TemporalKernel`'s ``step_gain``):
#: Adam moves every raw parameter by about its learning rate per step, and the trend's three
#: hyperparameters have to travel several units (amplitude 1 → 0.01, 5 units of its inverse
#: softplus, where the exact posterior of a linear-Gaussian model needs no trend), which at
#: learning rates of 1e-3–1e-2 took thousands of steps; meanwhile the interpolating trend hands
#: the encodings' noise to the path and the ELBO reads that roughness as diffusion. On the
#: two-scale OU of tests/inference/test_recovery.py (1500 steps, 8 seeds) s_x = 0.5 came out at
#: 0.56–0.62 (7 of 16 scale intervals covering) with gain 1, 0.49–0.57 (14 of 16) with gain 10;
#: the nonlinear fit of notebook 02 is unchanged (docs/calibration.md).
TREND_STEP_GAIN = 10.0


def _softplus_inverse(x: float) -> float:
    return math.log(math.expm1(x))


class OUSmoother(eqx.Module):
    r"""Reference-OU smoother of the amortized guide (see the module docstring).

    Holds the reference rate in window units, :math:`\lambda (t_M - t_1) =
    \operatorname{softplus}(\rho)`, one per latent coordinate (``state_shape``) or shared
    (``state_shape=()``), and optionally a **trend**: a :class:`TemporalKernel` whose smooth
    interpolant :math:`m_0(t)` of the encoder means the reference relaxes to,
    :math:`dz = (\dot m_0 - \lambda (z - m_0))\,dt + \operatorname{diag}(s)\,d\beta`. Then
    :math:`w = z - m_0` is the plain reference OU process and the pseudo-observations it is
    conditioned on are the residuals :math:`\mu_i - m_0(t_i)`: the family holds both the smooth
    paths of a kernel interpolant (residuals near zero) and the exact posterior of a linear
    model (trend near zero, e.g. a large nugget).

    Args:
        state_shape: shape of the per-coordinate rates (``()``: one shared rate).
        rate: initial :math:`\lambda (t_M - t_1)`.
        trend: the trend's kernel, or ``None`` (:math:`m_0 = 0`).
    """

    raw_rate: Float[Array, "*state"]
    trend: TemporalKernel | None

    def __init__(self, state_shape: tuple[int, ...] = (), rate: float = 1.0,
                 trend: TemporalKernel | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"the initial reference rate must be positive, got {rate}")
        self.raw_rate = jnp.full(tuple(state_shape), _softplus_inverse(rate))
        self.trend = trend

    def rate(self, duration: Float[Array, ""]) -> Array:
        r"""Reference rate :math:`\lambda` for a window of length ``duration``."""
        return jax.nn.softplus(self.raw_rate) / duration


def _relaxation(x: Array) -> Array:
    """``(1 - exp(-x)) / x``, stable at ``x -> 0`` (value 1) and differentiable there."""
    small = x < 1e-4
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - 0.5 * x + x * x / 6.0, -jnp.expm1(-safe) / safe)


def _transition(rate: Array, s2: Array, h: Array) -> tuple[Array, Array]:
    r""":math:`(\varphi(h), q(h))` of the reference SDE, elementwise."""
    return jnp.exp(-rate * h), s2 * h * _relaxation(2.0 * rate * h)


class MarkovWindow(NamedTuple):
    r"""Smoothed reference-OU posterior of one window (or a batch of them).

    Attributes:
        times: grid :math:`t_1..t_M`, shape ``(M,)``.
        mean: :math:`m_i`, shape ``(M,) + state``.
        var: :math:`P_i`, shape ``(M,) + state``.
        cross: :math:`C_i = \operatorname{Cov}(z_i, z_{i+1})`, shape ``(M-1,) + state``.
        rate: :math:`\lambda`, shape ``state``.
        diffusion: :math:`s`, shape ``state``.
    """

    times: Array
    mean: Array
    var: Array
    cross: Array
    rate: Array
    diffusion: Array


def condition_window(
    smoother: OUSmoother,
    times: Float[Array, " m"],
    enc_mean: Array,
    enc_var: Array,
    diffusion: Array,
) -> MarkovWindow:
    r"""Filter and smooth one window's pseudo-observations under the reference OU process.

    Args:
        smoother: the :class:`OUSmoother` (its rates broadcast to ``state``).
        times: window times, shape ``(M,)``, strictly increasing, ``M >= 2``.
        enc_mean: pseudo-observations :math:`\mu_i`, shape ``(M,) + state``.
        enc_var: their variances :math:`v_i > 0`, shape ``(M,) + state``.
        diffusion: the model's diffusion :math:`s`, shape ``state``.

    Returns:
        :class:`MarkovWindow`.
    """
    n = times.shape[0]
    if n < 2:
        raise ValueError("a window needs at least 2 times")
    state_shape = enc_mean.shape[1:]
    rate = jnp.broadcast_to(smoother.rate(times[-1] - times[0]), state_shape)
    s2 = jnp.broadcast_to(diffusion, state_shape) ** 2
    dt = jnp.reshape(jnp.diff(times), (n - 1,) + (1,) * len(state_shape))
    phi, q = _transition(rate[None], s2[None], dt)

    def forward(carry: tuple[Array, Array], inputs: tuple[Array, ...]) -> tuple:
        m, p = carry
        f, qi, mu, v = inputs
        m_pred, p_pred = f * m, f * f * p + qi
        gain = p_pred / (p_pred + v)
        m_new, p_new = m_pred + gain * (mu - m_pred), p_pred * v / (p_pred + v)
        return (m_new, p_new), (m_new, p_new, m_pred, p_pred)

    (_, _), (m_f, p_f, m_pred, p_pred) = lax.scan(
        forward, (enc_mean[0], enc_var[0]), (phi, q, enc_mean[1:], enc_var[1:])
    )
    m_f = jnp.concatenate([enc_mean[:1], m_f], axis=0)
    p_f = jnp.concatenate([enc_var[:1], p_f], axis=0)

    def backward(carry: tuple[Array, Array], inputs: tuple[Array, ...]) -> tuple:
        m_next, p_next = carry
        mf, pf, f, qi, mp, pp = inputs
        gain = pf * f / pp
        m = mf + gain * (m_next - mp)
        # P_f q / P_pred + G^2 P_next: the RTS variance as a sum of non-negative terms
        p = pf * qi / pp + gain * gain * p_next
        return (m, p), (m, p, gain * p_next)

    _, (m_s, p_s, cross) = lax.scan(
        backward, (m_f[-1], p_f[-1]), (m_f[:-1], p_f[:-1], phi, q, m_pred, p_pred), reverse=True
    )
    mean = jnp.concatenate([m_s, m_f[-1:]], axis=0)
    var = jnp.concatenate([p_s, p_f[-1:]], axis=0)
    return MarkovWindow(times, mean, var, cross, rate, jnp.broadcast_to(diffusion, state_shape))


def bridge_moments(window: MarkovWindow, tau: Float[Array, " k"],
                   interval: Array) -> WindowMoments:
    r"""Moments :math:`m, S, \dot m, \tfrac{d}{dt}\log S` at times ``tau`` inside intervals.

    Args:
        window: one window's :class:`MarkovWindow`.
        tau: query times, shape ``(K,)``, ``t_i <= tau <= t_{i+1}`` for ``i = interval``.
        interval: interval index of each query time, shape ``(K,)`` (integers in ``[0, M-1)``).

    Returns:
        :class:`WindowMoments` of shape ``(K,) + state``.
    """
    s2 = window.diffusion**2

    def at(t: Array, i: Array) -> tuple[Array, Array]:
        h1, h2 = t - window.times[i], window.times[i + 1] - t
        phi1, q1 = _transition(window.rate, s2, h1)
        phi2, q2 = _transition(window.rate, s2, h2)
        den = q2 + phi2 * phi2 * q1
        a, c, v = phi1 * q2 / den, phi2 * q1 / den, q1 * q2 / den
        mean = a * window.mean[i] + c * window.mean[i + 1]
        var = v + a * a * window.var[i] + c * c * window.var[i + 1] + 2.0 * a * c * window.cross[i]
        return mean, var

    def with_rates(t: Array, i: Array) -> tuple[Array, ...]:
        (mean, var), (mean_dot, var_dot) = jax.jvp(lambda u: at(u, i), (t,), (jnp.ones_like(t),))
        return mean, var, mean_dot, var_dot / var

    return WindowMoments(*jax.vmap(with_rates)(tau, interval))


def nodes_and_trend(
    trend: TemporalKernel | None,
    times: Float[Array, " m"],
    enc_mean: Array,
    enc_logvar: Array,
    node_fraction: Float[Array, "m_1 k"],
) -> tuple[Array, Array, Array, Array, Array]:
    r"""KL nodes of a window and the trend at the grid and the nodes (both path families).

    Node ``j`` of interval ``i`` sits at :math:`t_i + (j + f_{ij})/k\,(t_{i+1} - t_i)` with
    weight :math:`\Delta t_i / k`. Returns ``(tau, interval, weights, trend_mean, trend_dot)``:
    node times, their interval indices and weights, shape ``((M-1) k,)``; the trend
    :math:`m_0` and :math:`\dot m_0` at ``concat(times, tau)``, shape ``(M + (M-1) k,) + state``
    (zeros without a trend).
    """
    n, k = times.shape[0], node_fraction.shape[1]
    dt = jnp.diff(times)
    frac = (jnp.arange(k, dtype=times.dtype)[None, :] + node_fraction) / k
    tau = jnp.reshape(times[:-1, None] + frac * dt[:, None], (-1,))
    interval = jnp.reshape(jnp.broadcast_to(jnp.arange(n - 1)[:, None], (n - 1, k)), (-1,))
    weights = jnp.reshape(jnp.broadcast_to(dt[:, None] / k, (n - 1, k)), (-1,))
    if trend is None:
        trend_mean = jnp.zeros((n + tau.shape[0],) + enc_mean.shape[1:], enc_mean.dtype)
        return tau, interval, weights, trend_mean, trend_mean
    moments = interpolate_window(trend, times, enc_mean, enc_logvar,
                                 jnp.concatenate([times, tau]))
    return tau, interval, weights, moments.mean, moments.mean_dot


def window_posterior(
    smoother: OUSmoother,
    times: Float[Array, " m"],
    enc_mean: Array,
    enc_logvar: Array,
    diffusion: Array,
    node_fraction: Float[Array, "m_1 k"],
) -> tuple[WindowMoments, Array, KLNodes]:
    r"""The guide's process on one window: grid moments, lag-one covariances and KL nodes.

    Args:
        smoother: the :class:`OUSmoother`.
        times: window times, shape ``(M,)``.
        enc_mean, enc_logvar: the encodings (pseudo-observations), shape ``(M,) + state``.
        diffusion: the model's diffusion, shape ``state``.
        node_fraction: where the KL nodes sit inside each interval, shape ``(M-1, k)`` in
            ``[0, 1)``; node ``j`` of interval ``i`` is at ``t_i + (j + f_ij)/k (t_{i+1} - t_i)``.

    Returns:
        ``(grid, cross, nodes)``: :class:`WindowMoments` at the grid (the time derivatives are
        right limits, the left limit at the last time), :math:`C_i` of shape
        ``(M-1,) + state``, and the :class:`KLNodes` (``(M-1) k`` nodes, weights
        :math:`\Delta t_i / k`).
    """
    n = times.shape[0]
    tau, interval, weights, trend_mean, trend_dot = nodes_and_trend(
        smoother.trend, times, enc_mean, enc_logvar, node_fraction)
    window = condition_window(smoother, times, enc_mean - trend_mean[:n], jnp.exp(enc_logvar),
                              diffusion)
    mean_dot, dlogvar_dt = _grid_rates(window)
    grid = WindowMoments(window.mean + trend_mean[:n], window.var, mean_dot + trend_dot[:n],
                         dlogvar_dt)
    node = bridge_moments(window, tau, interval)
    node = node._replace(mean=node.mean + trend_mean[n:], mean_dot=node.mean_dot + trend_dot[n:])
    return grid, window.cross, KLNodes(tau, weights, node)


class MarkovBridgePath(GaussMarkovPath):
    r"""The reference-OU posterior as a path distribution (see the module docstring).

    Grid marginals, joint samples and log density are exact (lag-one correlation
    :math:`\rho_i = C_i/\sqrt{P_i P_{i+1}}`); ``mean_dot`` and ``dlogvar_dt`` at the grid are
    right limits, since the drift jumps at every pseudo-observation. The KL-rate quadrature
    nodes (:meth:`kl_nodes`) are random times inside the intervals, drawn by the guide
    (:func:`window_posterior`): an unbiased estimate of the time integral.

    Args:
        times: grid, shape ``batch + (T,)``.
        moments: grid :class:`WindowMoments`, arrays ``batch + (T,) + state``.
        cross: lag-one covariances, shape ``batch + (T-1,) + state``.
        nodes: :class:`KLNodes` (arrays ``batch + (Q,)`` and ``batch + (Q,) + state``).
        diffusion: the model's diffusion, broadcastable to ``batch + state``.
        state_ndim: number of state dimensions.
    """

    pytree_data_fields = GaussMarkovPath.pytree_data_fields + ("cross", "nodes")

    def __init__(self, times: Array, moments: WindowMoments, cross: Array, nodes: KLNodes,
                 diffusion: Array, state_ndim: int, *,
                 validate_args: bool | None = None) -> None:
        self.cross = cross
        self.nodes = nodes
        super().__init__(times, moments, diffusion, state_ndim, validate_args=validate_args)

    def _rho(self) -> Array:
        """Exact lag-one correlations of the smoothed chain."""
        rho = self.cross / jnp.sqrt(_lag(self.var, self.state_ndim))
        return jnp.clip(rho, -1.0 + 1e-6, 1.0 - 1e-6)

    def kl_nodes(self, key: jax.Array) -> KLNodes:
        """The random nodes drawn with the process (``key`` is not used)."""
        return self.nodes


def _lag(var: Array, state_ndim: int) -> Array:
    r""":math:`P_i P_{i+1}` along the time axis (the one before the state axes)."""
    axis = jnp.ndim(var) - state_ndim - 1
    n = var.shape[axis]
    return lax.slice_in_dim(var, 0, n - 1, axis=axis) * lax.slice_in_dim(var, 1, n, axis=axis)


def _grid_rates(window: MarkovWindow) -> tuple[Array, Array]:
    r"""Right-limit :math:`\dot m, \tfrac{d}{dt}\log S` at the grid (left limit at the end)."""
    n = window.times.shape[0]
    right = bridge_moments(window, window.times[:-1], jnp.arange(n - 1))
    left = bridge_moments(window, window.times[-1:], jnp.array([n - 2]))
    return (jnp.concatenate([right.mean_dot, left.mean_dot], axis=0),
            jnp.concatenate([right.dlogvar_dt, left.dlogvar_dt], axis=0))
