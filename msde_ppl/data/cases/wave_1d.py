"""Wave 1D: linear advection ``u_t + c u_x = 0`` on the periodic ``[0, 1)`` (docs/method.md §7).

The data are the exact solution, a translating periodic Gaussian pulse
``u(x, t) = exp(-(d(x - c t, x0) / w)^2)``, ``d`` the periodic distance, ``c = 1``, ``x0 = 0.5``,
width ``w ~ U(0.01, 0.02)`` per trajectory. ``N = 1000`` nodes at ``x_i = i / N`` (the reference
used ``linspace(0, 1, 1000)``, which repeats the periodic end point; we use the periodic grid),
``t in [0, 1]``, 1001 snapshots, split 20/5/5, noise ``N(0, 0.001^2)``, coarse grid 20, and, as in
the reference, the error is evaluated on the first 201 steps (``t <= 0.2``) only.

The semi-discrete PDE (used by the coarse-DNS baseline) is the second-order central difference
``u_t = -c (u_{i+1} - u_{i-1}) / 2dx`` with RK4: checked against the exact solution of a smooth
profile in tests/data/test_solvers.py (second-order convergence under refinement).
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from msde_ppl.data.cases._base import PDECase, central_diff


@dataclass(frozen=True)
class Wave1D(PDECase):
    name = "wave_1d"
    boundary = "periodic"
    pde = "u_t + c u_x = 0 (linear advection), periodic; exact solution"

    domain: tuple[float, ...] = (1.0,)
    shape: tuple[int, ...] = (1000,)
    t_final: float = 1.0
    n_time: int = 1001
    split: tuple[int, int, int] = (20, 5, 5)
    noise_std: float = 0.001
    coarse: tuple[int, ...] = (20,)
    eval_steps: int = 201
    speed: float = 1.0
    center: float = 0.5

    def sample_ic_params(self, rng_key):
        return {"width": jax.random.uniform(rng_key, (), jnp.float64, 0.01, 0.02)}

    def pulse(self, width, x, t):
        """Exact solution ``exp(-(d/w)^2)`` at positions ``x`` and time(s) ``t``."""
        length = self.domain[0]
        d = jnp.mod(x - self.speed * t - self.center + 0.5 * length, length) - 0.5 * length
        return jnp.exp(-((d / width) ** 2))

    def initial_condition(self, params, coords):
        (x,) = coords
        return self.pulse(params["width"], x, 0.0)

    def clean_trajectories(self, keys):
        with jax.enable_x64(True):
            (x,) = (jnp.asarray(c) for c in self.coordinates())
            t = jnp.asarray(self.times())
            widths = jax.vmap(self.sample_ic_params)(keys)["width"]
            u = self.pulse(widths[:, None, None], x[None, None, :], t[None, :, None])
            return np.asarray(u)

    def rhs(self, u, spacing):
        (h,) = spacing
        return -self.speed * central_diff(u, h, -1)

    def stable_dt(self, spacing, u_max):
        (h,) = spacing
        # central-difference eigenvalues are imaginary, |z| <= c dt / h; RK4 reaches 2.8.
        return 2.5 * h / abs(self.speed)
