r"""Exact log evidence of the linear two-scale OU model (``models/ou_two_scale.py``) by Kalman
filtering with exact transitions (Van Loan): the closed-form oracle of the ELBO tests."""

from __future__ import annotations

import numpy as np


def kalman_log_evidence(
    times: np.ndarray,
    obs: np.ndarray,
    *,
    a: float,
    c: float,
    s: np.ndarray,
    eps: float,
    obs_std: float,
    obs_every: int = 1,
    init_cov: np.ndarray,
    model=None,
) -> float:
    r"""Exact :math:`\log p(o_{0:K})` of the continuous-time model (Kalman filter).

    Args:
        times: grid, shape ``(T,)``.
        obs: observations, shape ``(T_o, 2)`` at ``times[::obs_every]``.
        a, c, s, eps, obs_std: model parameters.
        obs_every: observation stride on the grid.
        init_cov: covariance of :math:`z(t_0)` (mean 0), shape ``(2, 2)``.
        model: the ``models/ou_two_scale.py`` module (its exact transition).
    """
    f_matrix = model.drift_matrix(a, c, eps)
    obs_times = np.asarray(times, float)[::obs_every]
    mean, cov = np.zeros(2), np.asarray(init_cov, float)
    r = obs_std**2 * np.eye(2)
    total = 0.0
    for k, t in enumerate(obs_times):
        if k > 0:
            phi, q = model.exact_transition(f_matrix, s, t - obs_times[k - 1])
            mean, cov = phi @ mean, phi @ cov @ phi.T + q
        innov_cov = cov + r
        resid = obs[k] - mean
        sol = np.linalg.solve(innov_cov, resid)
        total += -0.5 * (resid @ sol + np.linalg.slogdet(2 * np.pi * innov_cov)[1])
        gain = np.linalg.solve(innov_cov, cov).T
        mean, cov = mean + gain @ resid, cov - gain @ cov
    return float(total)
