r"""The guide's path as the posterior of a *coupled* reference OU process (full covariance).

The diagonal family of :mod:`msde_ppl.inference.markov` smooths every latent coordinate on
its own, so its paths are independent across coordinates. When the model couples them (a slow
state forced by a fast one, :math:`dx = (-a x + c y)\,dt + \dots`) the exact posterior
correlates the coordinates' paths; without that correlation the forcing :math:`c\,y` of a path
drawn independently of :math:`x` is read as extra diffusion of :math:`x` (the diffusion scale
comes out biased high). This family lifts the restriction for small states
(:math:`d` coordinates, one axis): the reference SDE is

.. math::

    dw = F w\,dt + \operatorname{diag}(s)\,d\beta_t, \qquad
    F = -\Lambda / (t_M - t_1), \quad
    \Lambda = \operatorname{diag}(\operatorname{softplus}(\rho)) + K_{\text{off}},

with a learned off-diagonal coupling :math:`K_{\text{off}}` (zero at initialisation, where the
family is the diagonal one), the model's diffusion :math:`s` (:math:`\Sigma = \operatorname{diag}
s^2`), :math:`w = z - m_0(t)` around an optional kernel trend :math:`m_0`, a flat density on
:math:`w(t_1)`, and Gaussian pseudo-observations :math:`\mu_i \sim \mathcal N(w(t_i),
\operatorname{diag} v_i)` from the encoder. Exact transitions
:math:`w(t+h) \mid w(t) \sim \mathcal N(\Phi(h) w(t), Q(h))` come from Van Loan's block
exponential :math:`\exp\big(h\,[[F, \Sigma], [0, -F^\top]]\big) = [[\Phi, G], [0, \cdot]]`,
:math:`Q = G\Phi^\top`. A matrix Kalman filter (forward moments :math:`m^f_i, P^f_i`) and
Rauch–Tung–Striebel smoother give the grid marginals :math:`\mathcal N(m_i, P_i)` and the lag-one
covariances :math:`C_i = \operatorname{Cov}(w_i, w_{i+1})`. Inside an interval
(:math:`h_1 = \tau - t_i`, :math:`h_2 = t_{i+1} - \tau`) the process is the reference bridge,

.. math::

    D = \Phi_2 Q_1 \Phi_2^\top + Q_2, \quad K = Q_1 \Phi_2^\top D^{-1}, \quad
    A = (I - K\Phi_2)\Phi_1, \quad V = (I - K\Phi_2) Q_1,

    m(\tau) = A m_i + K m_{i+1}, \qquad
    S(\tau) = V + A P_i A^\top + K P_{i+1} K^\top + A C_i K^\top + K C_i^\top A^\top .

**The posterior drift in closed form.** The posterior of a linear SDE given observations is the
linear SDE with drift :math:`F w + \Sigma \nabla_w \log\beta(\tau, w)`, :math:`\beta` the
likelihood of the observations after :math:`\tau`. The smoothed density is the filtered one
times :math:`\beta`, and between observations the filtered density is the forward prediction
:math:`\mathcal N(a, A_f)`, :math:`a = \Phi_1 m^f_i`, :math:`A_f = \Phi_1 P^f_i \Phi_1^\top + Q_1`;
so

.. math::

    f_q(w, \tau) = \dot m(\tau) + B(\tau)\,(w - m(\tau)), \quad
    B = F + \Sigma\,(A_f^{-1} - S^{-1}), \quad
    \dot m = F m + \Sigma A_f^{-1} (m - a),

which is all the solver-free KL rate needs: :math:`\tfrac12\|(f_q - f_\theta)/s\|^2` at a draw
:math:`w \sim \mathcal N(m(\tau), S(\tau))` at random times inside the intervals (the drift jumps
at every pseudo-observation). For a linear model observed with Gaussian noise the family
contains the exact posterior (:math:`F` = the model's drift matrix, :math:`\mu_i = y_i`,
:math:`v_i` = the noise variance), whatever the diffusion the parameter posterior samples.

Cost: :math:`O(M d^3)` per window plus two :math:`2d \times 2d` matrix exponentials per KL node
(:func:`_expm`),
so it is meant for small states: ``AutoAmortizedSDE(..., kernel="coupled")`` uses it for a
state of one axis with at most :data:`COUPLED_MAX_STATE` coordinates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax
from jaxtyping import Array, Float

from msde_ppl.inference.gauss_markov import GaussMarkovPath, KLNodes, _left_pad
from msde_ppl.inference.kernel import TemporalKernel, WindowMoments
from msde_ppl.inference.markov import nodes_and_trend

__all__ = ["COUPLED_MAX_STATE", "CoupledMarkovPath", "CoupledMoments", "CoupledOUSmoother",
           "CoupledWindow", "coupled_bridge", "coupled_transition", "condition_window_coupled",
           "window_posterior_coupled"]

COUPLED_MAX_STATE = 8
"""Largest state (coordinates on one axis) the coupled guide accepts."""


def _softplus_inverse(x: float) -> float:
    return math.log(math.expm1(x))


def _sym(m: Array) -> Array:
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


# Small-matrix algebra in straight-line code (the state has at most COUPLED_MAX_STATE
# coordinates): LAPACK custom calls (solve, inv, cholesky, and expm, which solves) inside
# vmaps over thousands of KL nodes and particles have hung this CPU backend intermittently,
# at 0% CPU; unrolled elementwise code cannot, and is as fast at these sizes.
def _cholesky(a: Float[Array, "*b d d"]) -> Float[Array, "*b d d"]:
    """Lower Cholesky factor of symmetric positive-definite matrices (unrolled columns)."""
    d = a.shape[-1]
    rows = jnp.arange(d)
    cols = []
    for j in range(d):
        col = a[..., :, j] / jnp.sqrt(a[..., j:j + 1, j])
        col = jnp.where(rows >= j, col, 0.0)
        cols.append(col)
        a = a - col[..., :, None] * col[..., None, :]
    return jnp.stack(cols, axis=-1)


def _spd_solve(a: Float[Array, "*b d d"], rhs: Float[Array, "*b d k"]) -> Array:
    r""":math:`A^{-1} R` for symmetric positive-definite :math:`A` (Cholesky, two unrolled
    triangular substitutions)."""
    chol = _cholesky(a)
    d = a.shape[-1]
    y = []
    for i in range(d):
        acc = rhs[..., i, :]
        for k in range(i):
            acc = acc - chol[..., i, k, None] * y[k]
        y.append(acc / chol[..., i, i, None])
    x = [None] * d
    for i in reversed(range(d)):
        acc = y[i]
        for k in range(i + 1, d):
            acc = acc - chol[..., k, i, None] * x[k]
        x[i] = acc / chol[..., i, i, None]
    return jnp.stack(x, axis=-2)


def _spd_inverse(a: Float[Array, "*b d d"]) -> Float[Array, "*b d d"]:
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    return _sym(_spd_solve(a, eye))


def _solve_right(matrix: Array, rhs: Array) -> Array:
    r""":math:`X = R M^{-1}` for a symmetric positive-definite ``matrix`` :math:`M`."""
    return jnp.swapaxes(_spd_solve(matrix, jnp.swapaxes(rhs, -1, -2)), -1, -2)


class CoupledOUSmoother(eqx.Module):
    r"""Coupled reference-OU smoother of the amortized guide (see the module docstring).

    Args:
        size: number of latent coordinates :math:`d` (the state is ``(d,)``).
        rate: initial diagonal rate in window units, :math:`\Lambda_{jj}`.
        trend: the trend's kernel, or ``None`` (:math:`m_0 = 0`).
    """

    raw_rate: Float[Array, " d"]
    coupling: Float[Array, "d d"]
    trend: TemporalKernel | None

    def __init__(self, size: int, rate: float = 1.0, trend: TemporalKernel | None = None) -> None:
        if size < 1:
            raise ValueError(f"the state needs at least one coordinate, got size {size}")
        if rate <= 0:
            raise ValueError(f"the initial reference rate must be positive, got {rate}")
        self.raw_rate = jnp.full((size,), _softplus_inverse(rate))
        self.coupling = jnp.zeros((size, size))
        self.trend = trend

    def drift_matrix(self, duration: Float[Array, ""]) -> Float[Array, "d d"]:
        r"""Reference drift matrix :math:`F = -\Lambda / (t_M - t_1)`."""
        eye = jnp.eye(self.raw_rate.shape[0], dtype=self.raw_rate.dtype)
        rate = jnp.diag(jax.nn.softplus(self.raw_rate)) + self.coupling * (1.0 - eye)
        return -rate / duration


_TAYLOR_ORDER, _MAX_SQUARINGS = 12, 24


def _expm(x: Float[Array, "n n"]) -> Float[Array, "n n"]:
    r"""Matrix exponential by scaling and squaring of a Taylor polynomial, in straight-line code.

    :math:`e^X = (T_{12}(X / 2^k))^{2^k}` with :math:`k = \lceil\log_2(2\|X\|_1)\rceil^+` (so
    the scaled norm is at most 1/2 and the truncation error below :math:`0.5^{13}/13! \approx
    2\cdot 10^{-14}`); the squarings are a fixed chain of :data:`_MAX_SQUARINGS` selects, not a
    data-dependent loop. (``jax.scipy.linalg.expm`` under ``vmap`` over thousands of nodes has
    hung this CPU backend intermittently, at 0% CPU.)
    """
    norm = jnp.max(jnp.sum(jnp.abs(x), axis=0))
    k = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(2.0 * norm, 1e-30))), 0, _MAX_SQUARINGS)
    scaled = x / 2.0**k
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    term, out = eye, eye
    for order in range(1, _TAYLOR_ORDER + 1):
        term = term @ scaled / order
        out = out + term
    for i in range(_MAX_SQUARINGS):
        out = jnp.where(i < k, out @ out, out)
    return out


def coupled_transition(drift: Float[Array, "d d"], s2: Float[Array, " d"],
                       h: Float[Array, ""]) -> tuple[Array, Array]:
    r""":math:`(\Phi(h), Q(h))` of :math:`dw = F w\,dt + \operatorname{diag}(s)\,d\beta`
    (Van Loan's block exponential; ``h = 0`` gives :math:`(I, 0)`)."""
    d = drift.shape[0]
    top = jnp.concatenate([drift, jnp.diag(s2)], axis=1)
    bottom = jnp.concatenate([jnp.zeros_like(drift), -drift.T], axis=1)
    block = _expm(h * jnp.concatenate([top, bottom], axis=0))
    phi = block[:d, :d]
    return phi, _sym(block[:d, d:] @ phi.T)


class CoupledWindow(NamedTuple):
    r"""Filtered and smoothed coupled reference posterior of one window.

    Attributes:
        times: grid :math:`t_1..t_M`, shape ``(M,)``.
        mean, cov: smoothed :math:`m_i`, :math:`P_i`, shapes ``(M, d)``, ``(M, d, d)``.
        cross: :math:`C_i = \operatorname{Cov}(w_i, w_{i+1})`, shape ``(M-1, d, d)``.
        filt_mean, filt_cov: filtered :math:`m^f_i`, :math:`P^f_i`.
        drift: :math:`F`, shape ``(d, d)``.
        s2: :math:`s^2`, shape ``(d,)``.
    """

    times: Array
    mean: Array
    cov: Array
    cross: Array
    filt_mean: Array
    filt_cov: Array
    drift: Array
    s2: Array


class CoupledMoments(NamedTuple):
    r"""The coupled process at query times: :math:`m`, :math:`S`, :math:`\dot m` and the drift
    matrix :math:`B` of :math:`f_q(z) = \dot m + B(z - m)`; shapes ``(Q, d)``, ``(Q, d, d)``,
    ``(Q, d)``, ``(Q, d, d)`` (with leading batch axes when batched)."""

    mean: Array
    cov: Array
    mean_dot: Array
    drift: Array


def condition_window_coupled(
    smoother: CoupledOUSmoother,
    times: Float[Array, " m"],
    enc_mean: Float[Array, "m d"],
    enc_var: Float[Array, "m d"],
    diffusion: Float[Array, " d"],
) -> CoupledWindow:
    r"""Matrix Kalman filter and RTS smoother of one window's pseudo-observations.

    Args:
        smoother: the :class:`CoupledOUSmoother`.
        times: window times, shape ``(M,)``, strictly increasing, ``M >= 2``.
        enc_mean: pseudo-observations :math:`\mu_i`, shape ``(M, d)``.
        enc_var: their variances :math:`v_i > 0`, shape ``(M, d)``.
        diffusion: the model's diffusion :math:`s`, shape ``(d,)``.
    """
    n, d = enc_mean.shape
    if n < 2:
        raise ValueError("a window needs at least 2 times")
    drift = smoother.drift_matrix(times[-1] - times[0])
    s2 = jnp.broadcast_to(diffusion, (d,)) ** 2
    phi, q = jax.vmap(lambda h: coupled_transition(drift, s2, h))(jnp.diff(times))
    eye = jnp.eye(d, dtype=enc_mean.dtype)

    def forward(carry: tuple[Array, Array], inputs: tuple[Array, ...]) -> tuple:
        m, p = carry
        f, qi, mu, v = inputs
        m_pred, p_pred = f @ m, _sym(f @ p @ f.T + qi)
        gain = _solve_right(p_pred + jnp.diag(v), p_pred)
        rest = eye - gain
        m_new = m_pred + gain @ (mu - m_pred)
        p_new = _sym(rest @ p_pred @ rest.T + (gain * v[None, :]) @ gain.T)  # Joseph form
        return (m_new, p_new), (m_new, p_new, m_pred, p_pred)

    first = (enc_mean[0], jnp.diag(enc_var[0]))
    _, (m_f, p_f, m_pred, p_pred) = lax.scan(forward, first, (phi, q, enc_mean[1:], enc_var[1:]))
    m_f = jnp.concatenate([first[0][None], m_f], axis=0)
    p_f = jnp.concatenate([first[1][None], p_f], axis=0)

    def backward(carry: tuple[Array, Array], inputs: tuple[Array, ...]) -> tuple:
        m_next, p_next = carry
        mf, pf, f, mp, pp = inputs
        gain = _solve_right(pp, pf @ f.T)
        m = mf + gain @ (m_next - mp)
        p = _sym(pf - gain @ pp @ gain.T + gain @ p_next @ gain.T)
        return (m, p), (m, p, gain @ p_next)

    _, (m_s, p_s, cross) = lax.scan(backward, (m_f[-1], p_f[-1]),
                                    (m_f[:-1], p_f[:-1], phi, m_pred, p_pred), reverse=True)
    mean = jnp.concatenate([m_s, m_f[-1:]], axis=0)
    cov = jnp.concatenate([p_s, p_f[-1:]], axis=0)
    return CoupledWindow(times, mean, cov, cross, m_f, p_f, drift, s2)


def coupled_bridge(window: CoupledWindow, tau: Float[Array, " k"],
                   interval: Array) -> CoupledMoments:
    r""":class:`CoupledMoments` at times ``tau``, ``t_i <= tau <= t_{i+1}`` for ``i = interval``
    (at ``tau = t_i`` the right limit of the drift, at ``tau = t_{i+1}`` the left limit)."""

    def at(t: Array, i: Array) -> tuple[Array, ...]:
        h1, h2 = t - window.times[i], window.times[i + 1] - t
        phi1, q1 = coupled_transition(window.drift, window.s2, h1)
        phi2, q2 = coupled_transition(window.drift, window.s2, h2)
        gain = _solve_right(_sym(phi2 @ q1 @ phi2.T + q2), q1 @ phi2.T)
        rest = jnp.eye(phi1.shape[0], dtype=phi1.dtype) - gain @ phi2
        a_mat = rest @ phi1
        ac = a_mat @ window.cross[i] @ gain.T
        cov = _sym(rest @ q1 + a_mat @ window.cov[i] @ a_mat.T
                   + gain @ window.cov[i + 1] @ gain.T + ac + ac.T)
        mean = a_mat @ window.mean[i] + gain @ window.mean[i + 1]
        pred_mean = phi1 @ window.filt_mean[i]
        pred_cov = _sym(phi1 @ window.filt_cov[i] @ phi1.T + q1)
        sigma = jnp.diag(window.s2)
        pred_prec = _spd_inverse(pred_cov)
        mean_dot = window.drift @ mean + sigma @ (pred_prec @ (mean - pred_mean))
        drift = window.drift + sigma @ (pred_prec - _spd_inverse(cov))
        return mean, cov, mean_dot, drift

    return CoupledMoments(*jax.vmap(at)(tau, interval))


def window_posterior_coupled(
    smoother: CoupledOUSmoother,
    times: Float[Array, " m"],
    enc_mean: Float[Array, "m d"],
    enc_logvar: Float[Array, "m d"],
    diffusion: Float[Array, " d"],
    node_fraction: Float[Array, "m_1 k"],
) -> tuple[CoupledMoments, Array, KLNodes]:
    r"""The coupled guide process on one window: grid moments, lag-one covariances, KL nodes.

    As :func:`msde_ppl.inference.markov.window_posterior` (node ``j`` of interval ``i`` at
    :math:`t_i + (j + f_{ij})/k\,(t_{i+1} - t_i)`, weights :math:`\Delta t_i / k`); the nodes'
    ``moments`` are a :class:`CoupledMoments`. Grid drifts are right limits (left at the end).
    """
    n = times.shape[0]
    tau, interval, weights, trend_mean, trend_dot = nodes_and_trend(
        smoother.trend, times, enc_mean, enc_logvar, node_fraction)
    window = condition_window_coupled(smoother, times, enc_mean - trend_mean[:n],
                                      jnp.exp(enc_logvar), diffusion)
    grid_tau = jnp.concatenate([times[:-1], times[-1:]])
    grid_interval = jnp.concatenate([jnp.arange(n - 1), jnp.array([n - 2])])
    grid = coupled_bridge(window, grid_tau, grid_interval)
    grid = grid._replace(mean=window.mean + trend_mean[:n], cov=window.cov,
                         mean_dot=grid.mean_dot + trend_dot[:n])
    node = coupled_bridge(window, tau, interval)
    node = node._replace(mean=node.mean + trend_mean[n:], mean_dot=node.mean_dot + trend_dot[n:])
    return grid, window.cross, KLNodes(tau, weights, node)


def _mat_vec(m: Array, v: Array) -> Array:
    return jnp.einsum("...ij,...j->...i", m, v)


class CoupledMarkovPath(GaussMarkovPath):
    r"""The coupled reference posterior as a path distribution over ``batch + (T, d)``.

    Grid marginals :math:`\mathcal N(m_i, P_i)` with full covariance, exact joint samples and
    log density of the smoothed chain (:math:`w_{i+1} \mid w_i \sim \mathcal N(m_{i+1} +
    C_i^\top P_i^{-1}(w_i - m_i),\ P_{i+1} - C_i^\top P_i^{-1} C_i)`), and the KL-rate draws at
    random interior nodes with the closed-form drift (:meth:`kl_draws`). The inherited ``var``
    is the diagonal of :math:`P_i` (marginal variances, used by quantiles and summaries).

    Args:
        times: grid, shape ``batch + (T,)``.
        moments: grid :class:`CoupledMoments` (arrays ``batch + (T, d)`` / ``batch + (T, d, d)``).
        cross: lag-one covariances, shape ``batch + (T-1, d, d)``.
        nodes: :class:`KLNodes` whose ``moments`` is a :class:`CoupledMoments`.
        diffusion: the model's diffusion, broadcastable to ``batch + (d,)``.
    """

    pytree_data_fields = GaussMarkovPath.pytree_data_fields + ("cov", "drift", "cross", "nodes")

    def __init__(self, times: Array, moments: CoupledMoments, cross: Array, nodes: KLNodes,
                 diffusion: Array, *, validate_args: bool | None = None) -> None:
        self.cov, self.drift, self.cross, self.nodes = moments.cov, moments.drift, cross, nodes
        var = jnp.diagonal(moments.cov, axis1=-2, axis2=-1)
        s2 = jnp.broadcast_to(jnp.asarray(diffusion) ** 2, var.shape[:-2] + var.shape[-1:])
        # d/dt diag S from S' = B S + S B^T + Sigma (the marginal variances' log-rate)
        b_s = jnp.einsum("...ij,...jk->...ik", moments.drift, moments.cov)
        var_dot = 2.0 * jnp.diagonal(b_s, axis1=-2, axis2=-1) + jnp.expand_dims(s2, -2)
        super().__init__(times, WindowMoments(moments.mean, var, moments.mean_dot, var_dot / var),
                         diffusion, 1, validate_args=validate_args)

    def drift_values(self, z: Float[Array, "*sample *batch time d"]) -> Array:
        r"""Posterior drift :math:`f_q(z, t_i) = \dot m + B (z - m)` at the grid (right limits)."""
        rank = jnp.ndim(z)
        return _left_pad(self.mean_dot, rank) + _mat_vec(self.drift, z - _left_pad(self.loc, rank))

    def kl_nodes(self, key: jax.Array) -> KLNodes:
        """The random nodes drawn with the process (``key`` is not used)."""
        return self.nodes

    def kl_draws(self, key: jax.Array) -> tuple[Array, Array | None, Array, Array]:
        """One full-covariance draw per node and its posterior drift (see the base class)."""
        mom = self.nodes.moments
        eps = jax.random.normal(key, jnp.shape(mom.mean), dtype=mom.mean.dtype)
        z = mom.mean + _mat_vec(_cholesky(mom.cov), eps)
        return self.nodes.times, self.nodes.weights, z, mom.mean_dot + _mat_vec(mom.drift,
                                                                               z - mom.mean)

    def initial_marginal(self) -> dist.Distribution:
        r""":math:`\mathcal N(m_1, P_1)` with full covariance."""
        return dist.MultivariateNormal(self.loc[..., 0, :],
                                       scale_tril=_cholesky(self.cov[..., 0, :, :]))

    def sample_marginals(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Independent draws :math:`z_i \\sim N(m_i, P_i)` at every grid time (reparametrised)."""
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, dtype=self.loc.dtype)
        return _left_pad(self.loc, len(shape)) + _mat_vec(_cholesky(self.cov), eps)

    def _conditionals(self) -> tuple[Array, Array]:
        r"""Gains :math:`C_i^\top P_i^{-1}` and Cholesky factors of the conditional covariances,
        shapes ``batch + (T-1, d, d)``."""
        prev = self.cov[..., :-1, :, :]
        gain = _solve_right(prev, jnp.swapaxes(self.cross, -1, -2))
        cond = _sym(self.cov[..., 1:, :, :] - gain @ self.cross)
        return gain, _cholesky(cond)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Joint path samples of the smoothed chain (``lax.scan`` over time), reparametrised."""
        lead = tuple(sample_shape) + self.batch_shape
        t_axis = len(lead)
        eps = jnp.moveaxis(jax.random.normal(key, lead + self.event_shape, dtype=self.loc.dtype),
                           t_axis, 0)
        gain, chol = (jnp.moveaxis(x, -3, 0) for x in self._conditionals())
        u0 = _mat_vec(_cholesky(self.cov[..., 0, :, :]), eps[0])

        def body(u: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
            g, c, e = inputs
            u_next = _mat_vec(g, u) + _mat_vec(c, e)
            return u_next, u_next

        _, us = lax.scan(body, u0, (gain, chol, eps[1:]))
        u = jnp.moveaxis(jnp.concatenate([u0[None], us], axis=0), 0, t_axis)
        return _left_pad(self.loc, jnp.ndim(u)) + u

    def log_prob(self, value: Float[Array, "*sample *batch time d"]) -> Array:
        """Exact log density of the smoothed chain (all transitions in parallel)."""
        u = value - _left_pad(self.loc, jnp.ndim(value))
        gain, chol = self._conditionals()
        first = dist.MultivariateNormal(jnp.zeros_like(self.loc[..., 0, :]),
                                        scale_tril=_cholesky(self.cov[..., 0, :, :]))
        trans = dist.MultivariateNormal(jnp.zeros_like(self.loc[..., 1:, :]), scale_tril=chol)
        resid = u[..., 1:, :] - _mat_vec(gain, u[..., :-1, :])
        with jax.numpy_rank_promotion("allow"):  # sample dims in front of the batch
            return first.log_prob(u[..., 0, :]) + jnp.sum(trans.log_prob(resid), axis=-1)
