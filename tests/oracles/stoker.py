"""Exact solution of the 1D dam break on a wet bed (Stoker 1957): a left rarefaction and a
right shock between still water of depths ``h_l > h_r``."""

import numpy as np
from scipy.optimize import brentq


def stoker(x: np.ndarray, t: float, h_l: float = 2.0, h_r: float = 1.0, g: float = 1.0,
           x0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Depth and velocity ``(h, u)`` at positions ``x`` and time ``t > 0``.

    The middle depth ``h_m`` solves ``2 (c_l - c_m) = (h_m - h_r) sqrt(g (h_m + h_r) /
    (2 h_m h_r))`` (the rarefaction's and the shock's velocity behind them agree); the shock
    moves at ``h_m u_m / (h_m - h_r)``; inside the fan ``c = (2 c_l - xi) / 3``, ``u = 2 (c_l
    - c)``, ``xi = (x - x0) / t``.
    """
    c_l = np.sqrt(g * h_l)

    def mismatch(h_m: float) -> float:
        return 2 * (c_l - np.sqrt(g * h_m)) - (h_m - h_r) * np.sqrt(
            g * (h_m + h_r) / (2 * h_m * h_r))

    h_m = brentq(mismatch, h_r, h_l, xtol=1e-14)
    c_m = np.sqrt(g * h_m)
    u_m = 2 * (c_l - c_m)
    shock = h_m * u_m / (h_m - h_r)
    xi = (np.asarray(x, np.float64) - x0) / t
    c_fan = (2 * c_l - xi) / 3
    h = np.select([xi <= -c_l, xi <= u_m - c_m, xi <= shock],
                  [h_l, c_fan**2 / g, h_m], h_r)
    u = np.select([xi <= -c_l, xi <= u_m - c_m, xi <= shock], [0.0, 2 * (c_l - c_fan), u_m], 0.0)
    return h, u
