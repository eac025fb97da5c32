r"""Linear two-scale Ornstein–Uhlenbeck model: a slow state driven by a fast one.

Generative model (Itô, diagonal noise), latent :math:`z = (x, y)`:

.. math::

    dx &= (-a\,x + c\,y)\,dt + s_x\,d\beta_x \qquad \text{(slow)}\\
    dy &= -\tfrac{1}{\varepsilon}\,y\,dt + s_y\,d\beta_y \qquad\ \text{(fast, } \varepsilon \ll 1)\\
    o_k &\sim \mathcal N\big(z(t_{k\cdot r}),\ \sigma_o^2 I_2\big), \qquad k = 0, 1, \dots

observed every :math:`r` = ``obs_every`` grid points. The prior path density is the
Euler–Maruyama density on the time grid (:class:`msde_ppl.generative.SDEPath`); windows of one
long trajectory are conditionally independent given the globals (``init_std=None``: no prior
density on a window's first state, docs/method.md §4.3), or a whole trajectory starts from
:math:`z(t_0) \sim \mathcal N(0, \operatorname{diag}(\text{init\_std}^2))`.

Priors: :math:`a \sim \mathrm{LogNormal}(0, 0.5)`, :math:`c \sim \mathcal N(0, 1)`,
:math:`s \sim \mathrm{LogNormal}(\log 0.5, 0.5)^{\otimes 2}`; :math:`\varepsilon` and
:math:`\sigma_o` are known. Everything is linear-Gaussian given :math:`(a, c, s)`, so the exact
log evidence (Kalman filter with exact transitions :math:`e^{F\Delta t}`, Van Loan covariance)
and exact simulation are available: the simulator is below, the Kalman filter is the tests'
oracle (``tests/oracles/kalman.py``).

Sample sites (``W`` windows in the batch, ``T`` grid times, ``T_o = ceil(T / r)``):

=========  ===============  =====================================================
site       shape            distribution
=========  ===============  =====================================================
``a``      ``()``           ``LogNormal(0, 0.5)`` (omitted when ``params`` given)
``c``      ``()``           ``Normal(0, 1)`` (omitted when ``params`` given)
``s``      ``(2,)``         ``LogNormal(log 0.5, 0.5)`` iid (omitted when given)
``z``      ``(W, T, 2)``    ``SDEPath`` in plate ``windows`` (latent path)
``obs``    ``(W, T_o, 2)``  ``Normal(z[:, ::r], obs_std)`` in plate ``windows``
=========  ===============  =====================================================

Run ``python models/ou_two_scale.py --steps 50 --n-time 64`` to simulate a trajectory and fit it
with the amortized guide and the solver-free ELBO.

References:
    1. Ilersich & Nair, Learning Stochastic Multiscale Models, NeurIPS 2025.
    2. Course & Nair, Amortized Reparametrization, NeurIPS 2023.
    3. Van Loan, Computing integrals involving the matrix exponential, IEEE TAC 1978.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array
from scipy.linalg import expm

from msde_ppl.generative import SDEPath

TRUE_PARAMS = {"a": 1.0, "c": 0.8, "s": (0.5, 1.0)}


class TwoScaleDrift(eqx.Module):
    r"""Drift :math:`F z` with :math:`F = [[-a, c], [0, -1/\varepsilon]]`; ``args = (a, c)``."""

    eps: float = eqx.field(static=True)

    def __call__(self, t: Array, z: Array, args: tuple[Array, Array]) -> Array:
        a, c = args
        return jnp.stack([-a * z[0] + c * z[1], -z[1] / self.eps])


def model(
    times: Array,
    obs: Array | None = None,
    *,
    eps: float = 0.1,
    obs_std: float = 0.1,
    obs_every: int = 1,
    params: dict[str, Any] | None = None,
    init_std: Array | None = None,
    n_windows: int | None = None,
) -> None:
    """Two-scale OU model over a batch of windows (see module docstring).

    Args:
        times: window time grids, shape ``(W, T)``.
        obs: observations, shape ``(W, T_o, 2)``, or ``None`` to simulate.
        eps: time-scale ratio of the fast state.
        obs_std: observation noise standard deviation.
        obs_every: observe every ``r``-th grid point.
        params: fixed ``{"a", "c", "s"}``; if given, no global sample sites are created.
        init_std: std of the Gaussian initial state (shape ``(2,)``), or ``None``.
        n_windows: total number of windows in the data set (plate scale ``n_windows / W``).
    """
    if params is None:
        a = numpyro.sample("a", dist.LogNormal(0.0, 0.5))
        c = numpyro.sample("c", dist.Normal(0.0, 1.0))
        s = numpyro.sample("s", dist.LogNormal(math.log(0.5), 0.5).expand([2]).to_event(1))
    else:
        a, c, s = (jnp.asarray(params[k]) for k in ("a", "c", "s"))
    n_batch = times.shape[0]
    init = None if init_std is None else dist.Normal(jnp.zeros(2), init_std).to_event(1)
    path = SDEPath(TwoScaleDrift(eps), s, times, init, drift_args=(a, c), state_shape=(2,))
    with numpyro.plate("windows", n_windows or n_batch, subsample_size=n_batch):
        z = numpyro.sample("z", path)
        numpyro.sample("obs", dist.Normal(z[:, ::obs_every], obs_std).to_event(2), obs=obs)


# ---------------------------------------------------------------------- exact oracle (numpy)
def drift_matrix(a: float, c: float, eps: float) -> np.ndarray:
    """Drift matrix ``F`` of the linear SDE ``dz = F z dt + diag(s) dW``."""
    return np.array([[-a, c], [0.0, -1.0 / eps]])


def exact_transition(
    f_matrix: np.ndarray, s: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact transition :math:`z' = \Phi z + w`, :math:`w \sim N(0, Q)` (Van Loan's method)."""
    n = f_matrix.shape[0]
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = -f_matrix
    block[:n, n:] = np.diag(np.asarray(s, float) ** 2)
    block[n:, n:] = f_matrix.T
    e = expm(block * dt)
    phi = e[n:, n:].T
    q = phi @ e[:n, n:]
    return phi, 0.5 * (q + q.T)


def simulate(
    rng_key: jax.Array,
    times: Array,
    *,
    a: float,
    c: float,
    s: tuple[float, float],
    eps: float,
    obs_std: float,
    init_cov: np.ndarray | None = None,
) -> tuple[Array, Array]:
    """Exact simulation on a uniform grid: returns ``(z, obs)``, each shape ``(T, 2)``.

    Starts from the stationary distribution unless ``init_cov`` is given.
    """
    times = np.asarray(times, float)
    dt = float(times[1] - times[0])
    f_matrix = drift_matrix(a, c, eps)
    phi, q = exact_transition(f_matrix, np.asarray(s), dt)
    if init_cov is None:  # stationary covariance: solve F P + P F^T + diag(s^2) = 0
        from scipy.linalg import solve_continuous_lyapunov

        init_cov = solve_continuous_lyapunov(f_matrix, -np.diag(np.asarray(s) ** 2))
    key_init, key_noise, key_obs = jax.random.split(rng_key, 3)
    n = len(times)
    z0 = jnp.linalg.cholesky(jnp.asarray(init_cov)) @ jax.random.normal(key_init, (2,))
    noise = jax.random.normal(key_noise, (n - 1, 2)) @ jnp.linalg.cholesky(jnp.asarray(q)).T
    phi = jnp.asarray(phi)

    def body(z: Array, w: Array) -> tuple[Array, Array]:
        z_next = phi @ z + w
        return z_next, z_next

    _, zs = jax.lax.scan(body, z0, noise)
    z = jnp.concatenate([z0[None], zs], axis=0)
    return z, z + obs_std * jax.random.normal(key_obs, z.shape)


def make_windows(series: Array, window: int) -> Array:
    """Cut a ``(N, ...)`` series into windows of ``window`` points overlapping by one point."""
    starts = np.arange(0, series.shape[0] - window + 1, window - 1)
    idx = starts[:, None] + np.arange(window)[None, :]
    return series[idx]


class SnapshotEncoder(eqx.Module):
    """Per-snapshot encoder ``obs (2,) -> (mean (2,), log-variance (2,))`` (affine mean)."""

    linear: eqx.nn.Linear
    logvar: Array

    def __init__(self, *, key: jax.Array) -> None:
        lin = eqx.nn.Linear(2, 2, key=key)
        self.linear = eqx.tree_at(lambda m: (m.weight, m.bias), lin,
                                  (jnp.eye(2), jnp.zeros(2)))
        self.logvar = jnp.full((2,), -4.0)

    def __call__(self, o: Array) -> tuple[Array, Array]:
        return self.linear(o), self.logvar


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Simulate one trajectory, fit windows by SVI, print posterior 90% intervals."""
    import optax

    from msde_ppl.inference import AutoAmortizedSDE, SolverFreeELBO, fit, window_batches

    rng_key = jax.random.key(args.seed)
    key_sim, key_fit, key_post, key_enc = jax.random.split(rng_key, 4)
    truth = TRUE_PARAMS
    times = jnp.arange(args.n_time) * args.dt
    _, obs = simulate(key_sim, times, a=truth["a"], c=truth["c"], s=truth["s"], eps=args.eps,
                      obs_std=args.obs_std)
    window = min(args.window, args.n_time)
    t_win, o_win = make_windows(times, window), make_windows(obs, window)
    kw = {"eps": args.eps, "obs_std": args.obs_std, "n_windows": t_win.shape[0]}

    def ou_model(times: Array, obs: Array | None = None) -> None:
        model(times, obs, **kw)

    guide = AutoAmortizedSDE(ou_model, SnapshotEncoder(key=key_enc))
    batch_fn = window_batches({"times": t_win, "obs": o_win},
                              min(args.batch_windows, t_win.shape[0]))
    optimizer = optax.adam(optax.exponential_decay(args.lr, 2000, 0.9))
    result = fit(key_fit, ou_model, guide, SolverFreeELBO(normalize=True), optimizer, batch_fn,
                 num_steps=args.steps, chunk_size=min(args.steps, 250), progress=False)
    q = guide.quantiles(result.params, [0.05, 0.5, 0.95], t_win[:1], o_win[:1])
    summary = {k: np.asarray(q[k]).tolist() for k in ("a", "c", "s")}
    print(f"final loss {float(result.losses[-1]):.4f} after {args.steps} steps")
    for k, v in summary.items():
        print(f"{k}: 5%/50%/95% = {v}   (truth {truth[k]})")
    return {"losses": np.asarray(result.losses), "quantiles": summary}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n-time", type=int, default=4001)
    p.add_argument("--dt", type=float, default=0.01)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--batch-windows", type=int, default=4)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--obs-std", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    main(_parser().parse_args())
