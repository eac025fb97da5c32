r"""A lattice Boltzmann solver of 2D incompressible flow past a circular cylinder in a channel.

The channel ``[x0, x0 + L] x [-H/2, H/2]`` holds a cylinder of diameter ``D`` centred at the
origin; a uniform stream ``U`` enters on the left. Lattice units: a square grid of cells of side
``dx = D / n_D`` (``n_D``: cells per diameter), populations at the cell centres, velocity
``U_lat = U dt / dx`` (below 0.1: Mach number ``U_lat / c_s``, ``c_s = 1/sqrt(3)``, at most
0.17), kinematic viscosity ``nu_lat = U_lat n_D / Re`` and relaxation time
``tau = 3 nu_lat + 1/2``.

Scheme (D2Q9, velocities ``c_i``, weights ``w_i``):

- **collision**: regularized BGK (Latt & Chopard, *Math. Comput. Simul.* 72, 2006): the
  populations are rebuilt from their equilibrium
  :math:`f^{eq}_i = w_i \rho (1 + 3 c_i\cdot u + \tfrac92 (c_i\cdot u)^2 - \tfrac32 u^2)` and
  the projection of their non-equilibrium part on the second-order Hermite tensor,
  :math:`f_i \leftarrow f^{eq}_i + (1 - 1/\tau)\,\tfrac92 w_i\,Q_i : \Pi^{neq}`,
  :math:`Q_i = c_i c_i - \tfrac13 I`, :math:`\Pi^{neq} = \sum_i c_i c_i (f_i - f^{eq}_i)`.
  Plain BGK is unstable at the ``tau`` close to 1/2 that Re = 160 needs on a grid that fits
  this CPU; the regularized operator damps the non-hydrodynamic (ghost) moments that blow up;
- **cylinder**: no-slip on the circle itself by linearly interpolated bounce-back (Bouzidi,
  Firdaouss & Lallemand, *Phys. Fluids* 13, 2001; ``wall="interpolated"``, the default): on
  every link from a fluid cell centre :math:`x` to a solid one :math:`x + c_i`, with the wall at
  the fraction :math:`q` of the link,
  :math:`f_{\bar\imath}(x) = 2q f^*_i(x) + (1 - 2q) f^*_i(x - c_i)` for :math:`q < 1/2` and
  :math:`f_{\bar\imath}(x) = f^*_i(x) / (2q) + (2q - 1) f^*_{\bar\imath}(x) / (2q)` otherwise
  (post-collision :math:`f^*`); ``wall="halfway"`` is plain half-way bounce-back
  (:math:`q = 1/2`: the staircase of cells whose centre lies inside the circle). The force on it
  by momentum exchange, :math:`F = \sum_{\text{links}} c_i (f^*_i(x) + f_{\bar\imath}(x))`;
- **walls** ``y = +-H/2`` (half-way between cell centres): slip, by specular reflection of the
  populations that cross them (the stream is uniform at the inlet, so free-slip walls keep it
  uniform up to the cylinder);
- **inlet** (first column): the velocity ``(U, 0)`` by non-equilibrium extrapolation (Guo, Zheng
  & Shi, *Chin. Phys.* 11, 2002): :math:`f = f^{eq}(\rho_1, U) + f_1 - f^{eq}(\rho_1, u_1)` from the
  second column;
- **outlet** (last column): convective, :math:`\partial_t f_i + U \partial_x f_i = 0` for the
  populations that enter the domain there, discretised implicitly upwind.

Everything is one ``lax.scan`` over output frames with a ``lax.fori_loop`` of lattice steps
inside: no Python loop over steps. Arrays are ``(9, Nx, Ny)``, axis 1 is ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["CylinderChannel", "shedding_frequency", "simulate"]

# D2Q9: rest, the four axis directions, the four diagonals
VELOCITIES = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [1, 1], [-1, 1], [-1, -1],
                       [1, -1]])
WEIGHTS = np.array([4 / 9] + [1 / 9] * 4 + [1 / 36] * 4)
OPPOSITE = np.array([0, 3, 4, 1, 2, 7, 8, 5, 6])
_UP = (2, 5, 6)  # c_y = +1
_DOWN = (4, 8, 7)  # c_y = -1, the mirror images of _UP (same c_x)
_LEFTWARD = (3, 6, 7)  # c_x = -1: unknown at the outlet


@dataclass(frozen=True)
class CylinderChannel:
    """The geometry and flow of the channel, in physical units, and its lattice.

    ``cells_per_diameter`` sets the lattice (``dx = diameter / cells_per_diameter``) and
    ``u_lattice`` the time step (``dt = u_lattice dx / inflow``).
    """

    reynolds: float = 160.0
    diameter: float = 0.125
    inflow: float = 1.0
    x_range: tuple[float, float] = (-0.5, 7.5)
    height: float = 1.0
    cells_per_diameter: int = 20
    u_lattice: float = 0.08
    wall: str = "interpolated"  # the cylinder's bounce-back: "interpolated" or "halfway"

    @property
    def dx(self) -> float:
        return self.diameter / self.cells_per_diameter

    @property
    def dt(self) -> float:
        """Physical time per lattice step."""
        return self.u_lattice * self.dx / self.inflow

    @property
    def shape(self) -> tuple[int, int]:
        nx = round((self.x_range[1] - self.x_range[0]) / self.dx)
        ny = round(self.height / self.dx)
        return nx, ny

    @property
    def tau(self) -> float:
        nu = self.u_lattice * self.cells_per_diameter / self.reynolds
        return 3.0 * nu + 0.5

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates ``(x, y)`` (float64)."""
        nx, ny = self.shape
        x = self.x_range[0] + (np.arange(nx) + 0.5) * self.dx
        y = -0.5 * self.height + (np.arange(ny) + 0.5) * self.dx
        return x, y

    def solid(self) -> np.ndarray:
        """``(Nx, Ny)``: cells whose centre lies inside the cylinder."""
        x, y = self.centres()
        return x[:, None] ** 2 + y[None, :] ** 2 < (0.5 * self.diameter) ** 2

    def links(self) -> tuple[np.ndarray, np.ndarray]:
        """``(links, q)``, both ``(9, Nx, Ny)``: ``links[i]`` marks the fluid cells whose
        neighbour along ``c_i`` is solid, ``q[i]`` (in ``(0, 1]``) the fraction of that link
        where it crosses the circle (1/2 everywhere for ``wall="halfway"``)."""
        if self.wall not in ("interpolated", "halfway"):
            raise ValueError(f"unknown wall {self.wall!r}; use 'interpolated' or 'halfway'")
        solid = self.solid()
        links = np.stack([np.roll(solid, tuple(-VELOCITIES[i]), axis=(0, 1))
                          for i in range(9)]) & ~solid[None]
        q = np.full(links.shape, 0.5)
        if self.wall == "interpolated":
            x, y = self.centres()
            radius2 = (0.5 * self.diameter) ** 2
            for i in range(1, 9):
                ix, iy = np.nonzero(links[i])
                px, py = x[ix], y[iy]
                dx, dy = VELOCITIES[i] * self.dx
                # |p + t d| = R, the root in (0, 1]: p is outside, p + d inside
                a, b, c = dx * dx + dy * dy, px * dx + py * dy, px * px + py * py - radius2
                q[i, ix, iy] = (-b - np.sqrt(b * b - a * c)) / a
        return links, q


def equilibrium(rho: jax.Array, ux: jax.Array, uy: jax.Array) -> jax.Array:
    """Second-order D2Q9 equilibrium ``(9, ...)`` of density and velocity fields."""
    usq = 1.5 * (ux**2 + uy**2)
    out = []
    for (cx, cy), w in zip(VELOCITIES.tolist(), WEIGHTS.tolist(), strict=True):
        cu = cx * ux + cy * uy
        out.append(w * rho * (1.0 + 3.0 * cu + 4.5 * cu**2 - usq))
    return jnp.stack(out)


def moments(f: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Density and velocity ``(rho, ux, uy)`` of populations ``(9, ...)`` (written out: a
    ``tensordot`` would keep XLA from fusing the step)."""
    rho = sum(f[i] for i in range(9))
    jx = f[1] - f[3] + f[5] - f[6] - f[7] + f[8]
    jy = f[2] - f[4] + f[5] + f[6] - f[7] - f[8]
    return rho, jx / rho, jy / rho


def _collide(f: jax.Array, omega: float) -> jax.Array:
    """Regularized BGK collision (module docstring)."""
    rho, ux, uy = moments(f)
    feq = equilibrium(rho, ux, uy)
    neq = [f[i] - feq[i] for i in range(9)]
    pxx = sum(neq[i] for i in (1, 3, 5, 6, 7, 8))
    pyy = sum(neq[i] for i in (2, 4, 5, 6, 7, 8))
    pxy = neq[5] - neq[6] + neq[7] - neq[8]
    out = []
    for i, ((cx, cy), w) in enumerate(zip(VELOCITIES.tolist(), WEIGHTS.tolist(), strict=True)):
        f1 = 4.5 * w * ((cx * cx - 1 / 3) * pxx + 2.0 * cx * cy * pxy + (cy * cy - 1 / 3) * pyy)
        out.append(feq[i] + (1.0 - omega) * f1)
    return jnp.stack(out)


def _stream(f: jax.Array) -> jax.Array:
    """Every population moves one cell along its velocity (periodic wrap; the boundaries then
    replace what wrapped)."""
    return jnp.stack([jnp.roll(f[i], tuple(VELOCITIES[i]), axis=(0, 1)) for i in range(9)])


def _step(f: jax.Array, links: jax.Array, q: jax.Array, box: tuple[int, int, int, int],
          u_in: float, omega: float):
    """One lattice step from pre-collision populations ``f``: ``(f_next, force)``, the force
    ``(Fx, Fy)`` on the cylinder in lattice units. ``links`` and ``q`` ``(9, bx, by)``: the
    cell-to-solid links and their wall fractions (:meth:`CylinderChannel.links`) inside the box
    ``(x0, y0, bx, by)`` that holds the cylinder and its neighbours."""
    x0, y0, bx, by = box
    outlet_before = f[jnp.array(_LEFTWARD), -1, :]
    post = _collide(f, omega)
    post_box = lax.dynamic_slice(post, (0, x0, y0), (9, bx, by))
    new = _stream(post)
    # the cylinder: interpolated bounce-back into f_opp(x) on every link x -> x + c_i; in the
    # arrays indexed by j = opp(i): post_box[OPPOSITE] is f*_i(x), streamed[OPPOSITE] is
    # f*_i(x - c_i) and post_box is f*_j(x)
    new_box = lax.dynamic_slice(new, (0, x0, y0), (9, bx, by))
    incoming, upstream, q_j = post_box[OPPOSITE], new_box[OPPOSITE], q[OPPOSITE]
    bounced = jnp.where(q_j < 0.5, 2.0 * q_j * incoming + (1.0 - 2.0 * q_j) * upstream,
                        (incoming + (2.0 * q_j - 1.0) * post_box) / (2.0 * q_j))
    hit = links[OPPOSITE]
    new_box = jnp.where(hit, bounced, new_box)
    new = lax.dynamic_update_slice(new, new_box, (0, x0, y0))
    # momentum exchange: c_i (f*_i + f_opp) per link, i.e. -c_j (f*_opp(j) + bounced_j)
    c = jnp.asarray(VELOCITIES, f.dtype)
    total = jnp.where(hit, incoming + bounced, 0.0).sum((1, 2))
    force = -jnp.stack([total @ c[:, 0], total @ c[:, 1]])
    # slip walls: specular reflection at the top (c_y: +1 -> -1) and the bottom (-1 -> +1)
    for up, down in zip(_UP, _DOWN, strict=True):
        cx = int(VELOCITIES[up, 0])
        new = new.at[down, :, -1].set(jnp.roll(post[up, :, -1], cx, axis=0))
        new = new.at[up, :, 0].set(jnp.roll(post[down, :, 0], cx, axis=0))
    # outlet: convective, (f(t+1) - f(t)) + U (f_N-1 - f_N-2)(t+1) = 0, upwind and implicit
    inner = new[jnp.array(_LEFTWARD), -2, :]
    new = new.at[jnp.array(_LEFTWARD), -1, :].set((outlet_before + u_in * inner) / (1.0 + u_in))
    # inlet: non-equilibrium extrapolation from the second column
    rho1, ux1, uy1 = moments(new[:, 1, :])
    known = equilibrium(rho1, jnp.full_like(rho1, u_in), jnp.zeros_like(rho1))
    new = new.at[:, 0, :].set(known + new[:, 1, :] - equilibrium(rho1, ux1, uy1))
    return new, force


@partial(jax.jit, static_argnames=("box", "steps_per_frame", "n_frames", "block", "n_columns"))
def _advance(f, links, q, box, solid, u_in, omega, steps_per_frame: int, n_frames: int, block: int,
             n_columns: int):
    """``n_frames`` frames of ``steps_per_frame`` lattice steps: the final populations, the
    velocity ``(frame, 2, Nx/block, Ny/block)`` averaged over ``block x block`` cells (zero in
    the cylinder) over the first ``n_columns`` output columns, and the force averaged over
    each frame's steps ``(frame, 2)``."""

    def frame(f, _):
        def body(_, carry):
            f, force = carry
            f, step_force = _step(f, links, q, box, u_in, omega)
            return f, force + step_force

        f, force = lax.fori_loop(0, steps_per_frame, body, (f, jnp.zeros(2, f.dtype)))
        _, ux, uy = moments(f)
        vel = jnp.where(solid, 0.0, jnp.stack([ux, uy]))[:, : n_columns * block]
        nx, ny = vel.shape[1] // block, vel.shape[2] // block
        vel = vel.reshape(2, nx, block, ny, block).mean((2, 4))
        return f, (vel, force / steps_per_frame)

    return lax.scan(frame, f, None, length=n_frames)


def simulate(channel: CylinderChannel, t_spinup: float, t_final: float, dt_out: float, *,
             output_dx: float = 0.0125, n_columns: int | None = None, perturbation: float = 0.1,
             initial_velocity: np.ndarray | None = None,
             dtype=jnp.float32) -> dict[str, np.ndarray]:
    """Run the channel flow from uniform flow (a small transverse kick behind the cylinder
    breaks the symmetry), or from ``initial_velocity`` (``(2, Nx, Ny)`` on the lattice, physical
    units; populations at equilibrium), for ``t_spinup`` (discarded), then ``[0, t_final]``
    saved every ``dt_out`` (the first frame one ``dt_out`` after the start).

    Returns, in physical units: ``u`` ``(time, 2, Nx_out, Ny_out)`` (``u``, ``v`` averaged
    onto cells of side ``output_dx``, first ``n_columns`` of them along x), ``time``, ``x``,
    ``y`` (output cell centres), ``drag`` and ``lift`` coefficients per frame
    (``F / (rho U^2 D / 2)``, averaged over the frame's steps), and the lattice facts
    (``dx``, ``dt``, ``tau``).
    """
    steps = dt_out / channel.dt
    if abs(steps - round(steps)) > 1e-9 * steps:
        raise ValueError(f"dt_out {dt_out} is not a whole number of lattice steps "
                         f"({channel.dt:g} each)")
    block = output_dx / channel.dx
    if abs(block - round(block)) > 1e-9:
        raise ValueError(f"output_dx {output_dx} is not a whole number of cells ({channel.dx:g})")
    steps, block = round(steps), round(block)
    nx, ny = channel.shape
    n_columns = nx // block if n_columns is None else int(n_columns)
    solid_np = channel.solid()
    links_np, q_np = channel.links()
    # the box of the cylinder's links (two cells of margin)
    hit = np.nonzero(links_np.any(0))
    x0, y0 = int(hit[0].min()) - 2, int(hit[1].min()) - 2
    box = (x0, y0, int(hit[0].max()) + 3 - x0, int(hit[1].max()) + 3 - y0)
    links = jnp.asarray(links_np[:, x0 : x0 + box[2], y0 : y0 + box[3]])
    q = jnp.asarray(q_np[:, x0 : x0 + box[2], y0 : y0 + box[3]], dtype)
    solid = jnp.asarray(solid_np)
    x, y = channel.centres()
    u_in = channel.u_lattice
    kick = perturbation * u_in * np.exp(-((x[:, None] - channel.diameter) ** 2
                                          + y[None, :] ** 2) / channel.diameter**2)
    if initial_velocity is None:
        initial = np.stack([np.full(solid_np.shape, u_in), kick])
    else:
        initial = np.asarray(initial_velocity, np.float64) * u_in / channel.inflow
        if initial.shape != (2, nx, ny):
            raise ValueError(f"initial_velocity must be (2, {nx}, {ny}) on the lattice, got "
                             f"{initial.shape}")
    ux0 = jnp.asarray(np.where(solid_np, 0.0, initial[0]), dtype)
    uy0 = jnp.asarray(np.where(solid_np, 0.0, initial[1]), dtype)
    f = equilibrium(jnp.ones_like(ux0), ux0, uy0)
    omega = 1.0 / channel.tau
    run = partial(_advance, links=links, q=q, box=box, solid=solid, u_in=u_in, omega=omega,
                  steps_per_frame=steps, block=block, n_columns=n_columns)
    n_spin = round(t_spinup / dt_out)
    if n_spin:
        f, _ = run(f, n_frames=n_spin)
    n_frames = round(t_final / dt_out) + 1
    f, (vel, force) = run(f, n_frames=n_frames)
    vel = np.asarray(vel, np.float64) * channel.inflow / u_in
    scale = 0.5 * u_in**2 * channel.cells_per_diameter  # rho U^2 D / 2 in lattice units
    force = np.asarray(force, np.float64) / scale
    xo = channel.x_range[0] + (np.arange(n_columns) + 0.5) * output_dx
    yo = -0.5 * channel.height + (np.arange(ny // block) + 0.5) * output_dx
    return {"u": vel, "time": np.arange(n_frames) * dt_out, "x": xo, "y": yo,
            "drag": force[:, 0], "lift": force[:, 1], "dx": channel.dx, "dt": channel.dt,
            "tau": channel.tau, "finite": bool(np.isfinite(np.asarray(f)).all())}


def shedding_frequency(signal: np.ndarray, dt: float) -> float:
    """Frequency of a periodic signal (a probe's transverse velocity, the lift) sampled every
    ``dt``: the number of its upward crossings of its mean, less one, over the time between
    the first and the last (linearly interpolated). Raises ``ValueError`` with fewer than
    three crossings."""
    s = np.asarray(signal, np.float64) - np.mean(signal)
    up = np.nonzero((s[:-1] < 0) & (s[1:] >= 0))[0]
    if up.size < 3:
        raise ValueError(f"the signal crosses its mean upwards {up.size} times: no period")
    times = (up + s[up] / (s[up] - s[up + 1])) * dt
    return (up.size - 1) / (times[-1] - times[0])
