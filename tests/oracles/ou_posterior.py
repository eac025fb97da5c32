r"""Exact posterior of the drift rate and diffusion of a scalar OU process observed with noise.

Model: :math:`dz = -\theta z\,dt + \sigma\,d\beta`, :math:`z(t_0)` stationary
(:math:`\mathcal N(0, \sigma^2/(2\theta))`), :math:`y_k = z(t_k) + \varepsilon_k`,
:math:`\varepsilon_k \sim \mathcal N(0, r^2)` at uniformly spaced times, priors
:math:`\theta, \sigma \sim` LogNormal. The log evidence :math:`\log p(y \mid \theta, \sigma)` is a
Kalman filter with exact transitions (for windows of a model with a flat density on each
window's first state, the sum of the windows' evidences); on a grid of
:math:`(\log\theta, \log\sigma)` it gives the posterior density, whose moments are the
reference (tests' oracle, NumPy only).
"""

from __future__ import annotations

import numpy as np


def ou_log_evidence(y: np.ndarray, dt: float, theta: np.ndarray, sigma: np.ndarray,
                    obs_std: float, init: str = "stationary") -> np.ndarray:
    """Exact :math:`\\log p(y_{0:N-1} \\mid \\theta, \\sigma)`, vectorised over parameter arrays.

    Args:
        y: observations, shape ``(N,)``, or ``(W, M)`` windows (their evidences add).
        dt: time step.
        theta, sigma: parameter arrays (broadcast together), shape ``G``.
        obs_std: observation noise standard deviation.
        init: ``"stationary"`` first state, or ``"flat"`` (an improper flat density: the
            evidence of the later observations given the first, as for a window of a model
            with ``init_dist=None``).

    Returns:
        Log evidence, shape ``G``.
    """
    y = np.asarray(y, float)
    if y.ndim == 2:
        return sum(ou_log_evidence(w, dt, theta, sigma, obs_std, init) for w in y)
    theta, sigma = np.broadcast_arrays(np.asarray(theta, float), np.asarray(sigma, float))
    phi = np.exp(-theta * dt)
    q = sigma**2 * -np.expm1(-2 * theta * dt) / (2 * theta)
    r2 = obs_std**2
    total = np.zeros_like(theta)
    if init == "flat":
        m, p, start = np.full_like(theta, y[0]), np.full_like(theta, r2), 1
    else:
        m, p, start = np.zeros_like(theta), sigma**2 / (2 * theta), 0
    for k in range(start, len(y)):
        if k:
            m, p = phi * m, phi * phi * p + q
        s = p + r2
        total += -0.5 * ((y[k] - m) ** 2 / s + np.log(2 * np.pi * s))
        gain = p / s
        m, p = m + gain * (y[k] - m), (1 - gain) * p
    return total


def ou_parameter_posterior(y: np.ndarray, dt: float, obs_std: float, *,
                           prior_theta: tuple[float, float], prior_sigma: tuple[float, float],
                           init: str = "stationary", n_grid: int = 201,
                           width: float = 9.0) -> dict[str, float]:
    """Posterior means and sds of :math:`\\theta` and :math:`\\sigma` on an adaptive log grid.

    A coarse pass finds the mode; the fine grid spans ``width`` posterior sds of the log
    parameters around it (checked: no mass at the edges).

    Args:
        y: observations, shape ``(N,)`` or ``(W, M)`` (windows, see :func:`ou_log_evidence`).
        dt: time step.
        obs_std: observation noise std.
        init: the first state's density (:func:`ou_log_evidence`).
        prior_theta, prior_sigma: ``(mu, sd)`` of the LogNormal priors (of the log parameter).

    Returns:
        ``{"theta_mean", "theta_sd", "sigma_mean", "sigma_sd"}``.
    """

    def log_post(lt: np.ndarray, ls: np.ndarray) -> np.ndarray:
        lp = ou_log_evidence(y, dt, np.exp(lt), np.exp(ls), obs_std, init)
        # LogNormal priors written on the log parameters (Jacobian included)
        lp += -0.5 * ((lt - prior_theta[0]) / prior_theta[1]) ** 2
        lp += -0.5 * ((ls - prior_sigma[0]) / prior_sigma[1]) ** 2
        return lp

    lt, ls = np.meshgrid(np.linspace(-3, 3, 61), np.linspace(-3, 3, 61), indexing="ij")
    for _ in range(3):  # zoom in around the mass
        lp = log_post(lt, ls)
        w = np.exp(lp - lp.max())
        w /= w.sum()
        mt, ms = (w * lt).sum(), (w * ls).sum()
        st = np.sqrt((w * (lt - mt) ** 2).sum())
        ss = np.sqrt((w * (ls - ms) ** 2).sum())
        st = max(st, 2 * (lt[1, 0] - lt[0, 0]) / width)
        ss = max(ss, 2 * (ls[0, 1] - ls[0, 0]) / width)
        lt, ls = np.meshgrid(np.linspace(mt - width * st, mt + width * st, n_grid),
                             np.linspace(ms - width * ss, ms + width * ss, n_grid), indexing="ij")
    lp = log_post(lt, ls)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    edge = w[0].sum() + w[-1].sum() + w[:, 0].sum() + w[:, -1].sum()
    if edge > 1e-6:
        raise RuntimeError(f"posterior grid too narrow (edge mass {edge:.2e})")
    theta, sigma = np.exp(lt), np.exp(ls)
    out = {}
    for name, x in (("theta", theta), ("sigma", sigma)):
        mean = (w * x).sum()
        out[f"{name}_mean"] = float(mean)
        out[f"{name}_sd"] = float(np.sqrt((w * (x - mean) ** 2).sum()))
    return out


def ou_smoother_mean(y: np.ndarray, dt: float, theta: float, sigma: float,
                     obs_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Kalman–RTS smoothed means and variances of the path at the observation times."""
    n = len(y)
    phi = np.exp(-theta * dt)
    q = sigma**2 * -np.expm1(-2 * theta * dt) / (2 * theta)
    r2 = obs_std**2
    mf, pf, mp, pp = (np.zeros(n) for _ in range(4))
    m, p = 0.0, sigma**2 / (2 * theta)
    for k in range(n):
        if k:
            m, p = phi * m, phi * phi * p + q
        mp[k], pp[k] = m, p
        g = p / (p + r2)
        m, p = m + g * (y[k] - m), (1 - g) * p
        mf[k], pf[k] = m, p
    ms, ps = mf.copy(), pf.copy()
    for k in range(n - 2, -1, -1):
        g = pf[k] * phi / pp[k + 1]
        ms[k] = mf[k] + g * (ms[k + 1] - mp[k + 1])
        ps[k] = pf[k] + g * g * (ps[k + 1] - pp[k + 1])
    return ms, ps
