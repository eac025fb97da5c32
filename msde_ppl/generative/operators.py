r"""Tied, learnable scale operators between the fine grid and the coarse grid (docs/method.md §2.2).

One learnable depthwise kernel :math:`G` (``2 n_\sigma \sigma + 1`` taps per axis) and a bias
:math:`b` per field define three operators on fields ``y`` of shape ``(C, *fine)``:

- smoother :math:`\bar y = G \star y` (circular cross-correlation, stride 1), used for the micro
  encoder's input :math:`y - \bar y`;
- restriction :math:`R y = (G \star y)[\,::\sigma] + b`, the macro encoder mean; coarse node
  :math:`k` is centred at fine index :math:`k\sigma`;
- prolongation :math:`P \zeta = \sigma^d\, S^\top \zeta + b`, where :math:`S = (\,::\sigma) \circ
  (G\star\cdot)` is the linear part of :math:`R` and :math:`S^\top` its exact transpose (taken with
  :func:`jax.linear_transpose`, so no hand-written transposed convolution can drift from it).

The factor :math:`\sigma^d` makes :math:`P` the adjoint of :math:`R`'s linear part in the
*grid-weighted* inner products :math:`\langle u, v\rangle_h = h^d\sum u v` of the two grids
(coarse spacing :math:`\sigma h`). The reference ties :math:`P = S^\top` without the factor, so
its :math:`\zeta` must first learn a scale of about :math:`\sqrt\sigma`.

Initialisation (``init``): ``"bspline"`` (default) sets :math:`G_k = B(k/\sigma)/\sigma`, the
cubic B-spline of support :math:`[-2\sigma, 2\sigma]` (exactly the ``n_sigma = 2`` taps); it is a
partition of unity, so at initialisation :math:`R` is a local average that maps constants to
themselves, and :math:`P` is cubic B-spline approximation, which reproduces constants and linear
fields exactly: :math:`\zeta` is a coarse field in the units of the data from the first step.
``"gaussian"`` is the reference's :math:`\exp(-k^2/2\sigma^2)` normalised to unit sum; cut off at
:math:`\pm n_\sigma\sigma` its prolongation jumps by up to ~5% between coarse nodes.

Boundaries: circular padding on every axis, as the reference (also for Dirichlet data).
Convolutions are done by FFT: :math:`O(N\log N)` whatever the kernel length.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from msde_ppl.generative.units import check_unit, in_unit

__all__ = ["MATRIX_COST", "ScaleOperator", "cubic_bspline", "spline_basis"]

#: On grids of two or more dimensions :math:`S` is applied as its matrix when the coarse grid
#: has at most ``MATRIX_COST * log2(fine points)`` nodes per channel: a matrix product costs
#: about ``n_nodes`` multiply-adds per fine point, an FFT pair about this many times
#: ``log2(fine points)`` (measured on the Burgers 2D, 64 nodes on 128 x 128, and cylinder,
#: 256 nodes on 320 x 80, training steps: the matrix is faster for the first, FFTs for the
#: second).
MATRIX_COST = 8


def cubic_bspline(u: np.ndarray) -> np.ndarray:
    """Cubic B-spline on ``[-2, 2]``: a C^2 partition of unity under integer shifts."""
    a = np.abs(u)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def spline_basis(n_points: int, spacing: int) -> np.ndarray:
    r"""Open (non-periodic) cubic B-spline basis on ``n_points`` uniform grid points,
    ``(n_points, n_knots + 2)``.

    ``n_knots = ceil((n_points - 1) / spacing) + 1`` knots span the grid with the first and
    last point on a knot (knot spacing at most ``spacing`` grid points), plus one spline
    centred beyond each end, so the basis reproduces cubic polynomials up to the boundary
    (no wrap-around: a field that is not periodic is represented as well as a periodic one).
    """
    if n_points < 2 or spacing < 1:
        raise ValueError(f"a spline basis needs >= 2 points and spacing >= 1, got {n_points}, "
                         f"{spacing}")
    n_knots = -(-(n_points - 1) // spacing) + 1
    x = np.arange(n_points) * (n_knots - 1) / (n_points - 1)
    return cubic_bspline(x[:, None] - (np.arange(n_knots + 2)[None, :] - 1))


_INIT_PROFILES = {
    "bspline": cubic_bspline,
    "gaussian": lambda u: np.exp(-(u**2) / 2),
}


class ScaleOperator(eqx.Module):
    """Learnable tied restriction/prolongation between grids of shapes ``fine`` and ``coarse``.

    The kernel is stored as ``weight * gain`` with ``gain`` the largest initial tap, so the
    trained array ``weight`` is of order one: an optimiser step of size ``lr`` then changes the
    kernel by a fraction ``lr`` of its size whatever ``sigma`` (stored raw, taps of ``~1/sigma``
    would be rewritten by Adam's first few steps).

    Attributes:
        weight: ``(C, *taps)`` normalised kernel, taps ``2 * n_sigma * sigma + 1`` per axis.
        bias: ``(C,)`` bias per field.
        gain: kernel scale (static).
        fine_shape: fine grid shape (static).
        stride: ``sigma`` per axis, ``fine // coarse`` (static).
        learn_kernel: if ``False`` the kernel is held at its initial value (gradients to
            ``weight`` are stopped; the bias stays learnable) (static).
        bias_unit: per field, the unit the bias is stored in (the field's spread,
            :mod:`msde_ppl.generative.units`: Adam moves it at a pace proportional to the
            data's scale), or ``None`` (1) (static).
    """

    weight: Float[Array, "C ..."]
    bias: Float[Array, " C"]
    gain: float = eqx.field(static=True)
    fine_shape: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    learn_kernel: bool = eqx.field(static=True)
    bias_unit: tuple[float, ...] | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        fine_shape: tuple[int, ...],
        coarse_shape: tuple[int, ...],
        n_channels: int = 1,
        n_sigma: int = 2,
        init: str = "bspline",
        learn_kernel: bool = True,
        bias_unit: tuple[float, ...] | None = None,
    ) -> None:
        fine_shape, coarse_shape = tuple(fine_shape), tuple(coarse_shape)
        if len(fine_shape) != len(coarse_shape):
            raise ValueError(
                f"fine shape {fine_shape} and coarse shape {coarse_shape} differ in rank"
            )
        for n, m in zip(fine_shape, coarse_shape, strict=True):
            if m < 1 or n % m:
                raise ValueError(f"coarse size {m} does not divide the fine size {n}")
        stride = tuple(n // m for n, m in zip(fine_shape, coarse_shape, strict=True))
        taps = tuple(min(2 * n_sigma * s + 1, n - (1 - n % 2)) for s, n in zip(stride, fine_shape,
                                                                                 strict=True))
        if init not in _INIT_PROFILES:
            raise ValueError(f"unknown kernel init {init!r}; use one of {sorted(_INIT_PROFILES)}")
        kernel = np.ones(())
        for s, t in zip(stride, taps, strict=True):
            u = (np.arange(t) - t // 2) / s
            kernel = np.multiply.outer(kernel, _INIT_PROFILES[init](u))
        kernel = kernel / kernel.sum()
        self.gain = float(kernel.max())
        weight = np.broadcast_to(kernel / self.gain, (n_channels, *taps))
        self.weight = jnp.asarray(weight, jnp.float32)
        self.bias = jnp.zeros((n_channels,), jnp.float32)
        self.fine_shape = fine_shape
        self.stride = stride
        self.learn_kernel = learn_kernel
        self.bias_unit = check_unit(bias_unit, n_channels, "bias")

    @property
    def coarse_shape(self) -> tuple[int, ...]:
        return tuple(n // s for n, s in zip(self.fine_shape, self.stride, strict=True))

    @property
    def kernel(self) -> Float[Array, "C ..."]:
        """The kernel :math:`G`, ``(C, *taps)``."""
        weight = self.weight if self.learn_kernel else jax.lax.stop_gradient(self.weight)
        return self.gain * weight

    @property
    def n_channels(self) -> int:
        return self.weight.shape[0]

    def _wrapped_kernel(self) -> Float[Array, "C ..."]:
        """The kernel wrapped onto the fine grid, centre tap at index 0: ``(C, *fine)`` with
        entry ``[c, m mod N]`` the tap of offset ``m``."""
        c, *taps = self.kernel.shape
        padded = jnp.zeros((c, *self.fine_shape), self.kernel.dtype)
        padded = padded.at[(slice(None), *(slice(0, t) for t in taps))].set(self.kernel)
        shift = tuple(-(t // 2) for t in taps)
        return jnp.roll(padded, shift, axis=tuple(range(1, 1 + len(taps))))

    def _kernel_spectrum(self) -> Array:
        """rFFT of the kernel wrapped onto the fine grid with its centre tap at index 0."""
        return jnp.fft.rfftn(self._wrapped_kernel(), axes=self._axes)

    @property
    def uses_matrix(self) -> bool:
        """Whether :meth:`restrict` and :meth:`prolong_many` apply :math:`S` as its matrix
        (grids of two or more dimensions with at most :data:`MATRIX_COST` ``* log2(fine
        points)`` coarse nodes)."""
        n_fine = math.prod(self.fine_shape)
        return (len(self.fine_shape) >= 2
                and math.prod(self.coarse_shape) <= MATRIX_COST * math.log2(n_fine))

    def columns(self) -> Float[Array, "n C F"]:
        r"""The rows of :math:`S` as fine fields, ``(n_nodes, C, prod(fine))``, nodes in
        row-major order: since :math:`(S y)_k = \sum_m G_m\, y_{k\sigma + m}`, row :math:`k`
        is the wrapped kernel shifted by :math:`k\sigma`,
        :math:`S_{k,i} = G_{(i - k\sigma) \bmod N}` (built by one gather, no FFT)."""
        wrapped = self._wrapped_kernel()
        shifts = [(np.arange(n)[None, :] - np.arange(m)[:, None] * s) % n
                  for n, m, s in zip(self.fine_shape, self.coarse_shape, self.stride,
                                     strict=True)]
        # index arrays broadcast to (m_1..m_d, N_1..N_d): axis a uses m_a and N_a
        index = tuple(
            idx.reshape(tuple(m if b == a else 1 for b, m in enumerate(self.coarse_shape))
                        + tuple(n if b == a else 1 for b, n in enumerate(self.fine_shape)))
            for a, idx in enumerate(shifts))
        rows = wrapped[(slice(None), *index)]  # (C, m_1..m_d, N_1..N_d)
        n_nodes = math.prod(self.coarse_shape)
        rows = rows.reshape(self.n_channels, n_nodes, -1)
        return jnp.swapaxes(rows, 0, 1)

    @property
    def _axes(self) -> tuple[int, ...]:
        return tuple(range(-len(self.fine_shape), 0))

    def smooth(self, y: Float[Array, "C ..."]) -> Float[Array, "C ..."]:
        r"""Circular cross-correlation :math:`(G\star y)_j = \sum_m G_m\, y_{j+m}` (no bias)."""
        spec = jnp.fft.rfftn(y, axes=self._axes) * jnp.conj(self._kernel_spectrum())
        return jnp.fft.irfftn(spec, s=self.fine_shape, axes=self._axes).astype(y.dtype)

    def _subsample(self, y: Array) -> Array:
        return y[(slice(None), *(slice(None, None, s) for s in self.stride))]

    def restrict(self, y: Float[Array, "C ..."]) -> Float[Array, "C ..."]:
        r""":math:`R y = (G\star y)[::\sigma] + b`; by the matrix :meth:`columns` when
        :attr:`uses_matrix` (its rows do not depend on ``y``, so under ``vmap`` they are built
        once), else by FFT. The two agree to rounding."""
        bias = self._bias_like(len(self.stride))
        if not self.uses_matrix:
            return self._subsample(self.smooth(y)) + bias
        coarse = jnp.einsum("ncf,cf->cn", self.columns(), y.reshape(self.n_channels, -1))
        return coarse.reshape(self.n_channels, *self.coarse_shape) + bias

    def restrict_and_smooth(self, y: Float[Array, "C ..."]) -> tuple[Array, Array]:
        r"""``(R y, G * y)`` from one FFT pair (the micro encoder needs both)."""
        smooth = self.smooth(y)
        return self._subsample(smooth) + self._bias_like(len(self.stride)), smooth

    def prolong(self, zeta: Float[Array, "C ..."]) -> Float[Array, "C ..."]:
        r""":math:`P\zeta = \sigma^d S^\top\zeta + b` with :math:`S^\top` the exact transpose."""
        template = jax.ShapeDtypeStruct((self.n_channels, *self.fine_shape), zeta.dtype)
        (fine,) = jax.linear_transpose(lambda y: self._subsample(self.smooth(y)), template)(zeta)
        return float(np.prod(self.stride)) * fine + self._bias_like(len(self.stride))

    def prolong_many(self, zeta: Float[Array, "B C ..."]) -> Float[Array, "B C ..."]:
        r""":math:`P\zeta` of a batch of coarse fields.

        When :attr:`uses_matrix`, :math:`P` is applied as its matrix
        :math:`\sigma^d S^\top` (:meth:`columns`, one gather of the kernel) and one matrix
        product for the batch, instead of one FFT pair per field; the matrix does not depend
        on the batch, so under ``vmap`` (a forecast's ensemble members) it is built once.
        Otherwise (and always in 1D, where the FFTs are cheap) field by field. The two agree
        to rounding.
        """
        if not self.uses_matrix:
            return jax.vmap(self.prolong)(zeta)
        c, n_nodes = self.n_channels, math.prod(self.coarse_shape)
        bias = self._bias_like(len(self.stride))[None]  # (1, C, 1, ...)
        coarse, columns = zeta.reshape(zeta.shape[0], c, n_nodes), self.columns()
        # a plain (batch, nodes) x (nodes, fine) product per channel: the batch stays the
        # leading axis of the product under vmap (a channel-batched einsum came out as
        # (fine, batch), and every elementwise consumer transposed it again)
        fine = jnp.stack([coarse[:, k] @ columns[:, k] for k in range(c)], axis=1)
        scale = float(np.prod(self.stride))
        return scale * fine.reshape(zeta.shape[0], c, *self.fine_shape) + bias

    def _bias_like(self, n_space: int) -> Array:
        return jnp.reshape(in_unit(self.bias, self.bias_unit), (-1,) + (1,) * n_space)
