"""Five PDEs that are NOT built-in cases, four 1D and one 2D, each with its own solver written
for it, for ``benchmarks/robustness.py``: data the package was never tuned on.

- ``kuramoto_sivashinsky``: :math:`u_t = -u u_x - u_{xx} - u_{xxxx}`, periodic on
  :math:`[0, L)`, chaotic; Fourier pseudo-spectral in space (2/3 de-aliased), exponential
  time differencing RK4 in time (ETDRK4; its phi-function coefficients by a contour integral).
- ``bistable_fronts``: the Nagumo reaction–diffusion equation
  :math:`u_t = D u_{xx} + u(1 - u)(u - a)`, periodic; second-order finite differences in space,
  Crank–Nicolson diffusion and second-order Adams–Bashforth reaction (CNAB2; the circulant
  Crank–Nicolson system diagonalised by the FFT). Fronts of width :math:`\\sqrt{2D}` travel at
  :math:`c = \\sqrt{D/2}(1 - 2a)` and annihilate when they meet.
- ``variable_advection``: :math:`u_t = -c(x) u_x + \\nu u_{xx}` with
  :math:`c(x) = 1 + \\tfrac12 \\sin 2\\pi x` on :math:`[0, 1)`; Fourier differentiation and
  classical RK4 (method of lines).
- ``allen_cahn_2d``: :math:`u_t = \\varepsilon^2 \\Delta u + u - u^3` on the periodic square
  :math:`[0, 2\\pi)^2`, coarsening domains of the phases :math:`\\pm 1`; Fourier Laplacian,
  stabilised semi-implicit Euler (energy-stable).
- ``shallow_water``: :math:`(h, hu)_t + (hu, hu^2/h + g h^2/2)_x = 0`, periodic, two fields;
  waves that steepen into bores; finite volumes with a minmod MUSCL reconstruction, the
  Rusanov flux and SSP-RK2 (conservative).

Each ``make_*`` returns a dataset in the package's schema (``msde_ppl.from_arrays``) with
noisy observations ``u`` (1% of the field's std), the clean field ``u_clean``, labelled
train/val/test splits and the domain length. ``tests/benchmarks/test_unseen_pdes.py`` checks
every solver against physics (exact solutions, growth rates, front speeds, convergence).
"""

from __future__ import annotations

import numpy as np

from msde_ppl import from_arrays

__all__ = ["FRONTS_THRESHOLDS", "PDES", "allen_cahn_energy", "allen_cahn_solve",
           "bistable_fronts_step", "etdrk4_coefficients",
           "fronts_bayes_forecast", "fronts_threshold_solves", "fronts_thresholds", "ks_solve",
           "make_allen_cahn_2d", "make_bistable_fronts",
           "make_kuramoto_sivashinsky", "make_shallow_water", "make_variable_advection",
           "nagumo_solve", "shallow_water_rhs", "shallow_water_solve",
           "variable_advection_solve"]


def _splits(n_traj: int) -> list[str]:
    """Labels in the proportion 8 : 2 : 2 (at least one val and one test trajectory)."""
    n_val = n_test = max(1, round(n_traj / 6))
    return ["train"] * (n_traj - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def _dataset(clean: np.ndarray, times: np.ndarray, x: np.ndarray, name: str, domain: float,
             rng: np.random.Generator, noise: float = 0.01, *, square: bool = False):
    """The schema dataset of clean trajectories ``(R, T, n)`` (``(R, T, n, n)`` on the square
    ``[0, domain)^2`` when ``square``, ``x`` along both axes) plus Gaussian noise of ``noise``
    times the field's std."""
    clean = clean.astype(np.float32)
    sigma = noise * float(clean.std())
    noisy = clean + sigma * rng.standard_normal(clean.shape).astype(np.float32)
    return from_arrays(noisy, time=times, x=x, y=x if square else None,
                       split=_splits(clean.shape[0]), u_clean=clean,
                       domain=[float(domain)] * (2 if square else 1), noise_std=sigma,
                       source=name)


# -- Kuramoto–Sivashinsky: pseudo-spectral ETDRK4 ------------------------------------------------

def etdrk4_coefficients(lin: np.ndarray, h: float, n_contour: int = 32) -> tuple:
    """ETDRK4 coefficients of the diagonal linear operator ``lin`` (Cox & Matthews; the
    phi-functions evaluated by the mean over a circle of radius 1 around ``h * lin``, which
    avoids their cancellation near 0, Kassam & Trefethen 2005)."""
    e, e2 = np.exp(h * lin), np.exp(h * lin / 2)
    roots = np.exp(1j * np.pi * (np.arange(1, n_contour + 1) - 0.5) / n_contour)
    lr = h * lin[:, None] + roots[None, :]
    q = h * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = h * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=1))
    f2 = h * np.real(np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr**3, axis=1))
    f3 = h * np.real(np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=1))
    return e, e2, q, f1, f2, f3


def ks_solve(u0: np.ndarray, length: float, h: float, n_steps: int, every: int) -> np.ndarray:
    """KS from ``u0`` (``(n,)``, periodic on ``[0, length)``), ``n_steps`` ETDRK4 steps of size
    ``h``; returns the states every ``every`` steps, ``u0`` first: ``(n_steps // every + 1, n)``.
    """
    n = u0.size
    k = 2 * np.pi * np.fft.rfftfreq(n, length / n)
    lin = k**2 - k**4
    dealias = k < (2 / 3) * k.max()
    e, e2, q, f1, f2, f3 = etdrk4_coefficients(lin, h)

    def nonlinear(v):  # -(u^2 / 2)_x in Fourier, de-aliased
        u = np.fft.irfft(v, n)
        return -0.5j * k * np.fft.rfft(u * u) * dealias

    v = np.fft.rfft(u0)
    out = [u0.copy()]
    for step in range(1, n_steps + 1):
        nv = nonlinear(v)
        a = e2 * v + q * nv
        na = nonlinear(a)
        b = e2 * v + q * na
        nb = nonlinear(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlinear(c)
        v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
        if step % every == 0:
            out.append(np.fft.irfft(v, n))
    return np.asarray(out)


def make_kuramoto_sivashinsky(n_traj: int = 12, seed: int = 0, n_fine: int = 256,
                              length: float = 32 * np.pi, dt: float = 0.25,
                              n_time: int = 161, spin_up: float = 100.0):
    """Chaotic KS trajectories on ``[0, 32 pi)`` (about 11 cells of wavelength 2 pi sqrt 2, the
    fastest-growing one, so the 32-point coarse grid has under 3 points per cell): random smooth
    initial states, ``spin_up`` time units discarded
    (onto the attractor), then ``n_time`` snapshots ``dt`` apart (ETDRK4 step ``dt / 4``)."""
    rng = np.random.default_rng(seed)
    x = np.arange(n_fine) * length / n_fine
    every, h = 4, dt / 4
    skip = int(round(spin_up / dt))
    trajs = []
    for _ in range(n_traj):
        u0 = sum(rng.normal() * np.cos(2 * np.pi * m * x / length + rng.uniform(0, 2 * np.pi))
                 for m in range(1, 6))
        path = ks_solve(u0 - u0.mean(), length, h, (skip + n_time - 1) * every, every)
        trajs.append(path[skip:])
    return _dataset(np.asarray(trajs), np.arange(n_time) * dt, x, "kuramoto_sivashinsky",
                    length, rng)


# -- Nagumo bistable fronts: finite differences, CNAB2 ------------------------------------------

def nagumo_solve(u0: np.ndarray, length: float, diff: float, a: float, h: float,
                 n_steps: int, every: int) -> np.ndarray:
    """Nagumo from ``u0`` on a periodic grid: second-order central differences, Crank–Nicolson
    diffusion, Adams–Bashforth 2 reaction (forward Euler on the first step); states every
    ``every`` steps, ``u0`` first."""
    n = u0.size
    dx = length / n
    # eigenvalues of the periodic second-difference matrix (circulant): (2 cos(k dx) - 2) / dx^2
    lap = (2 * np.cos(2 * np.pi * np.fft.rfftfreq(n)) - 2) / dx**2
    lhs, rhs = 1 - 0.5 * h * diff * lap, 1 + 0.5 * h * diff * lap

    def reaction(u):
        return u * (1 - u) * (u - a)

    u, f_old = u0.astype(np.float64).copy(), None
    out = [u.copy()]
    for step in range(1, n_steps + 1):
        f = reaction(u)
        explicit = f if f_old is None else 1.5 * f - 0.5 * f_old
        u = np.fft.irfft((rhs * np.fft.rfft(u) + h * np.fft.rfft(explicit)) / lhs, n)
        f_old = f
        if step % every == 0:
            out.append(u.copy())
    return np.asarray(out)


def bistable_fronts_step(x: np.ndarray, length: float, rng: np.random.Generator,
                         width: float) -> np.ndarray:
    """A random initial state: 2–4 plateaus of ``u = 1`` (random centres and lengths) on
    ``u = 0``, with tanh edges of ``width``."""
    u = np.zeros_like(x)
    for _ in range(rng.integers(2, 5)):
        centre, half = rng.uniform(0, length), rng.uniform(0.03, 0.1) * length
        dist = np.abs((x - centre + length / 2) % length - length / 2)
        u = np.maximum(u, 0.5 * (1 - np.tanh((dist - half) / width)))
    return u


FRONTS_THRESHOLDS = (0.1, 0.4)  # the prior of the Nagumo threshold: uniform on this range
_FRONTS_SUBSTEPS = 10  # CNAB2 steps per snapshot


def make_bistable_fronts(n_traj: int = 12, seed: int = 0, n_fine: int = 256,
                         length: float = 100.0, diff: float = 1.0, dt: float = 0.5,
                         n_time: int = 161):
    """Nagumo fronts with a random threshold ``a`` uniform on :data:`FRONTS_THRESHOLDS` per
    trajectory (front speeds 0.14–0.57): plateaus of the stable state 1 invade 0 and merge;
    CNAB2 step ``dt / 10``. Each trajectory's ``a`` is kept as the variable ``threshold``
    (``traj``) and ``D`` as the attribute ``diffusivity``, for :func:`fronts_bayes_forecast`;
    a model sees neither."""
    rng = np.random.default_rng(seed)
    x = np.arange(n_fine) * length / n_fine
    every = _FRONTS_SUBSTEPS
    trajs, thresholds = [], []
    for _ in range(n_traj):
        a = rng.uniform(*FRONTS_THRESHOLDS)
        u0 = bistable_fronts_step(x, length, rng, np.sqrt(2 * diff))
        trajs.append(nagumo_solve(u0, length, diff, a, dt / every, (n_time - 1) * every, every))
        thresholds.append(a)
    ds = _dataset(np.asarray(trajs), np.arange(n_time) * dt, x, "bistable_fronts", length, rng)
    ds["threshold"] = ("traj", np.asarray(thresholds, np.float32))
    ds.attrs["diffusivity"] = float(diff)
    return ds


def fronts_thresholds(n_thresholds: int) -> np.ndarray:
    """The midpoints of ``n_thresholds`` equal parts of :data:`FRONTS_THRESHOLDS` (a mean over
    them is the midpoint rule for an expectation under the uniform prior)."""
    lo, hi = FRONTS_THRESHOLDS
    return lo + (hi - lo) * (np.arange(n_thresholds) + 0.5) / n_thresholds


def fronts_threshold_solves(u0: np.ndarray, length: float, diff: float, dt: float,
                            n_time: int, n_thresholds: int = 32) -> np.ndarray:
    """Nagumo from one fine initial state ``u0`` at the :func:`fronts_thresholds` (the
    generator's uniform prior, so a mean over them is an expectation over the threshold):
    ``(n_thresholds, n_time, n)``, ``u0`` first, snapshots ``dt`` apart."""
    every = _FRONTS_SUBSTEPS
    return np.asarray([nagumo_solve(u0, length, diff, a, dt / every, (n_time - 1) * every, every)
                       for a in fronts_thresholds(n_thresholds)])


def fronts_bayes_forecast(u0: np.ndarray, length: float, diff: float, dt: float, n_time: int,
                          n_thresholds: int = 32) -> np.ndarray:
    r"""The forecast of Nagumo fronts from an exactly known fine initial state ``u0`` when the
    threshold is unknown: :math:`\mathbb E[u(t) \mid u_0] = \int u(t; u_0, a)\,p(a)\,da`,
    the mean of :func:`fronts_threshold_solves` (``u0`` was drawn independently of ``a``, so
    the posterior of ``a`` given ``u0`` is the prior ``p``); ``(n_time, n)``, ``u0`` first.

    In expectation over ``a`` no forecast from ``u0`` has a smaller squared error at any lead
    time (the models are scored by the rel-L2, the square root of it per snapshot, for which
    the mean is close to the best but not provably so): the benchmark's physics reference.
    One snapshot does not reveal ``a``: the traveling front's profile does not depend on it."""
    return fronts_threshold_solves(u0, length, diff, dt, n_time, n_thresholds).mean(axis=0)


# -- advection with a spatially varying speed: Fourier differentiation, RK4 ----------------------

def variable_advection_solve(u0: np.ndarray, speed: np.ndarray, nu: float, h: float,
                             n_steps: int, every: int) -> np.ndarray:
    """``u_t = -c(x) u_x + nu u_xx`` on ``[0, 1)`` (periodic): spectral derivatives, RK4
    steps of size ``h``; states every ``every`` steps, ``u0`` first."""
    n = u0.size
    ik = 2j * np.pi * np.fft.rfftfreq(n, 1 / n)

    def rhs(u):
        v = np.fft.rfft(u)
        return -speed * np.fft.irfft(ik * v, n) + nu * np.fft.irfft(ik**2 * v, n)

    u = u0.astype(np.float64).copy()
    out = [u.copy()]
    for step in range(1, n_steps + 1):
        k1 = rhs(u)
        k2 = rhs(u + 0.5 * h * k1)
        k3 = rhs(u + 0.5 * h * k2)
        k4 = rhs(u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if step % every == 0:
            out.append(u.copy())
    return np.asarray(out)


def make_variable_advection(n_traj: int = 12, seed: int = 0, n_fine: int = 128,
                            nu: float = 2e-3, dt: float = 0.01, n_time: int = 161):
    """Random 4-mode initial states advected by ``c(x) = 1 + sin(2 pi x) / 2`` (they steepen
    where the speed drops) and damped by ``nu``; RK4 step ``dt / 10``."""
    rng = np.random.default_rng(seed)
    x = np.arange(n_fine) / n_fine
    speed = 1.0 + 0.5 * np.sin(2 * np.pi * x)
    every = 10
    trajs = []
    for _ in range(n_traj):
        u0 = sum(rng.normal() / m * np.sin(2 * np.pi * m * x + rng.uniform(0, 2 * np.pi))
                 for m in range(1, 5))
        trajs.append(variable_advection_solve(u0, speed, nu, dt / every, (n_time - 1) * every,
                                              every))
    return _dataset(np.asarray(trajs), np.arange(n_time) * dt, x, "variable_advection", 1.0,
                    rng)


# -- 2D Allen–Cahn: Fourier Laplacian, stabilised semi-implicit Euler ---------------------------

def _wavenumbers(n: int, length: float) -> np.ndarray:
    """Angular wavenumbers of ``n`` points on ``[0, length)``, in ``np.fft.fft`` order."""
    return 2 * np.pi * np.fft.fftfreq(n, length / n)


def allen_cahn_solve(u0: np.ndarray, length: float, eps: float, h: float, n_steps: int,
                     every: int, stabiliser: float = 2.0) -> np.ndarray:
    """``u_t = eps^2 (u_xx + u_yy) + u - u^3`` on the periodic square ``[0, length)^2``:

    .. math:: (1 + h s - h \\varepsilon^2 \\Delta)\\, u^{n+1} = u^n + h\\,(s u^n + u^n - (u^n)^3),

    the Laplacian and the stabiliser ``s`` implicit (diagonal in Fourier space), the reaction
    explicit: first order, and its free energy never grows for ``s >= 1`` while ``|u| <= 1``
    (Shen & Yang 2010). States every ``every`` steps, ``u0`` first: ``(T, n, n)``."""
    k = _wavenumbers(u0.shape[0], length)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    lhs = 1 + h * (eps**2 * k2 + stabiliser)
    u = u0.astype(np.float64).copy()
    out = [u.copy()]
    for step in range(1, n_steps + 1):
        u = np.fft.ifft2(np.fft.fft2(u + h * ((1 + stabiliser) * u - u**3)) / lhs).real
        if step % every == 0:
            out.append(u.copy())
    return np.asarray(out)


def allen_cahn_energy(u: np.ndarray, length: float, eps: float) -> np.ndarray:
    """The Allen–Cahn free energy per unit area, :math:`\\langle \\tfrac{\\varepsilon^2}{2}
    |\\nabla u|^2 + \\tfrac14 (1 - u^2)^2 \\rangle`, of states ``(..., n, n)`` (spectral
    gradient)."""
    k = _wavenumbers(u.shape[-1], length)
    uh = np.fft.fft2(u)
    grad2 = (np.abs(np.fft.ifft2(1j * k[:, None] * uh)) ** 2
             + np.abs(np.fft.ifft2(1j * k[None, :] * uh)) ** 2)
    return (0.5 * eps**2 * grad2 + 0.25 * (1 - u**2) ** 2).mean(axis=(-2, -1))


_ALLEN_CAHN_SUBSTEPS = 100  # semi-implicit steps per snapshot


def make_allen_cahn_2d(n_traj: int = 12, seed: int = 0, n_fine: int = 64, eps: float = 0.15,
                       dt: float = 0.5, n_time: int = 81):
    """2D Allen–Cahn on ``[0, 2 pi)^2`` from smooth random fields (Fourier modes of radius
    <= 5, rms 0.5): phases +-1 separate within a few time units, then their interfaces (width
    ``sqrt(2) eps``, about two fine cells) move by curvature and the domains coarsen. Step
    ``dt / 100``; 1% noise."""
    rng = np.random.default_rng(seed)
    length = 2 * np.pi
    x = np.arange(n_fine) * length / n_fine
    kk = np.fft.fftfreq(n_fine, 1 / n_fine)
    low = np.hypot(kk[:, None], kk[None, :]) <= 5
    every = _ALLEN_CAHN_SUBSTEPS
    trajs = []
    for _ in range(n_traj):
        noise = rng.standard_normal((n_fine, n_fine)) + 1j * rng.standard_normal((n_fine, n_fine))
        u0 = np.fft.ifft2(low * noise).real
        trajs.append(allen_cahn_solve(0.5 * u0 / u0.std(), length, eps, dt / every,
                                      (n_time - 1) * every, every))
    return _dataset(np.asarray(trajs), np.arange(n_time) * dt, x, "allen_cahn_2d", length, rng,
                    square=True)


# -- shallow water: finite volumes, Rusanov flux, MUSCL minmod, SSP-RK2 ---------------------------

def shallow_water_rhs(state: np.ndarray, dx: float, g: float = 1.0) -> np.ndarray:
    """Semi-discrete 1D shallow water ``(h, hu)_t + (hu, hu^2/h + g h^2/2)_x = 0`` on a periodic
    grid of cell averages ``state`` (``(2, n)``): minmod-limited linear reconstruction (MUSCL)
    and the Rusanov (local Lax–Friedrichs) flux at every interface; conservative, so the sums
    of ``h`` and ``hu`` are constant."""
    def flux(s):
        h, q = s
        return np.stack([q, q * q / h + 0.5 * g * h * h])

    left_diff = state - np.roll(state, 1, -1)
    right_diff = np.roll(state, -1, -1) - state
    slope = np.where(left_diff * right_diff > 0,
                     np.sign(left_diff) * np.minimum(np.abs(left_diff), np.abs(right_diff)), 0.0)
    inner = state + 0.5 * slope  # left of interface i + 1/2
    outer = np.roll(state - 0.5 * slope, -1, -1)  # right of it

    def speed(s):
        return np.abs(s[1] / s[0]) + np.sqrt(g * s[0])

    c = np.maximum(speed(inner), speed(outer))
    interface = 0.5 * (flux(inner) + flux(outer)) - 0.5 * c * (outer - inner)
    return -(interface - np.roll(interface, 1, -1)) / dx


def shallow_water_solve(state0: np.ndarray, length: float, h: float, n_steps: int,
                        every: int, g: float = 1.0) -> np.ndarray:
    """Shallow water from cell averages ``state0`` (``(2, n)``: depth and discharge) on
    ``[0, length)``: :func:`shallow_water_rhs` with SSP-RK2 (Heun) steps of size ``h``; states
    every ``every`` steps, ``state0`` first: ``(T, 2, n)``."""
    dx = length / state0.shape[-1]
    s = state0.astype(np.float64).copy()
    out = [s.copy()]
    for step in range(1, n_steps + 1):
        s1 = s + h * shallow_water_rhs(s, dx, g)
        s = 0.5 * (s + s1 + h * shallow_water_rhs(s1, dx, g))
        if step % every == 0:
            out.append(s.copy())
    return np.asarray(out)


_SHALLOW_WATER_SUBSTEPS = 32  # SSP-RK2 steps per snapshot (CFL about 0.35 on the 512 cells)


def make_shallow_water(n_traj: int = 12, seed: int = 0, n_fine: int = 256,
                       length: float = 1.0, dt: float = 0.02, n_time: int = 161):
    """Shallow water (g = 1, mean depth 1, so waves travel at about 1 and circle the domain in
    one time unit): random smooth depth perturbations of 8% (four Fourier modes) and a uniform
    random discharge; the waves steepen into bores within about two time units. Solved on
    ``2 n_fine`` cells and averaged in pairs (cell averages of the ``n_fine`` grid), 32
    SSP-RK2 steps per snapshot. Two fields, ``h`` and ``hu``; noise 1% of their pooled
    standard deviation (the same for both)."""
    rng = np.random.default_rng(seed)
    n_sim = 2 * n_fine
    xs = (np.arange(n_sim) + 0.5) * length / n_sim
    trajs = []
    for _ in range(n_traj):
        bump = sum(rng.normal() * np.cos(2 * np.pi * m * xs / length + rng.uniform(0, 2 * np.pi))
                   / m for m in range(1, 5))
        state0 = np.stack([1 + 0.08 * bump / np.abs(bump).max(),
                           np.full(n_sim, 0.03 * rng.normal())])
        path = shallow_water_solve(state0, length, dt / _SHALLOW_WATER_SUBSTEPS,
                                   (n_time - 1) * _SHALLOW_WATER_SUBSTEPS,
                                   _SHALLOW_WATER_SUBSTEPS)
        trajs.append(path.reshape(n_time, 2, n_fine, 2).mean(-1))
    clean = np.asarray(trajs, np.float32)  # (traj, time, field, x)
    sigma = 0.01 * float(np.sqrt(clean.var(axis=(0, 1, 3)).mean()))
    noisy = clean + sigma * rng.standard_normal(clean.shape).astype(np.float32)
    x = (np.arange(n_fine) + 0.5) * length / n_fine
    return from_arrays(noisy, time=np.arange(n_time) * dt, x=x, split=_splits(n_traj),
                       u_clean=clean, fields=["h", "hu"], domain=[float(length)],
                       noise_std=sigma, source="shallow_water")


PDES = {  # name -> (dataset maker, coarse grid per spatial axis)
    "kuramoto_sivashinsky": (make_kuramoto_sivashinsky, (32,)),
    "bistable_fronts": (make_bistable_fronts, (32,)),
    "variable_advection": (make_variable_advection, (32,)),
    "allen_cahn_2d": (make_allen_cahn_2d, (16, 16)),
    "shallow_water": (make_shallow_water, (32,)),
}
