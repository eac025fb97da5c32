r"""Encoder/decoder networks of the multiscale model (docs/method.md §2.3, §2.1).

- :class:`MultiscaleEncoder` maps ONE snapshot ``y`` (``(C, *fine)``) to the Gaussian encoding
  ``(mean, logvar)`` of the flat latent state :math:`z = [\zeta; \eta]`:
  :math:`\mathbb E\zeta = R y` (the tied restriction of :class:`ScaleOperator`),
  :math:`\mathbb E\eta = \mathrm{net}(y - G \star y)` (the micro network reads only the residual
  the coarse grid cannot represent), and input-independent learned log-variances (one per latent
  coordinate, initialised at :math:`\log\mathrm{softplus}(-4)`, as the reference).
- :class:`MicroDecoder` maps :math:`\eta` to the fine-grid micro correction :math:`g(\eta)`
  (the reference's form, a global network of the micro state only);
- :class:`SplineMicroEncoder` and :class:`SplineMicroDecoder` are the MLPs on a coarser
  *spline grid*: the residual's least-squares coefficients in an open cubic B-spline basis with
  knots every ``spacing`` fine points (:func:`~msde_ppl.generative.operators.spline_basis`,
  separable over the axes), and :math:`g(\eta) = B\,\mathrm{MLP}(\eta)` decoded through
  the same basis. With ``spacing = 2`` in 2D the networks' widest layer has about 1/4 of the
  fine grid's size (and of the plain MLPs' parameters and work), and the decoded correction is
  a :math:`C^2` field;
- :class:`StencilMicroDecoder` is a translation-equivariant alternative
  :math:`g(\zeta, \eta)`: in every coarse cell the same MLP maps the cell's periodic
  neighbourhood of coarse values and :math:`\eta` to the cell's ``sigma^d`` fine values
  (super-resolution from the local coarse shape, conditioned on the micro state).

The micro networks are MLPs by default (one hidden layer of 256): on these grids an MLP costs
about 1% of the reference's convolutional stacks' FLOPs per snapshot. The reference's own
networks (1D and 2D) are :class:`ConvMicroEncoder` and :class:`ConvMicroDecoder`
(docs/method.md §2.3, §2.1), built from the polyphase layers of :mod:`msde_ppl.generative.conv`.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from msde_ppl.generative.conv import CircularConv, ConvTranspose
from msde_ppl.generative.drifts import stencil_inputs
from msde_ppl.generative.networks import MLP, xavier_linear
from msde_ppl.generative.operators import ScaleOperator, spline_basis
from msde_ppl.generative.units import Units, centred, check_units, standardise, uncentred

__all__ = [
    "ConvMicroDecoder",
    "ConvMicroEncoder",
    "MicroDecoder",
    "MultiscaleEncoder",
    "SplineMicroDecoder",
    "SplineMicroEncoder",
    "StencilMicroDecoder",
    "cnn_fits_grid",
]

_INIT_LOGVAR = float(math.log(math.log1p(math.exp(-4.0))))


#: The reference's CNN sizes per grid dimension (docs/method.md §1.3, §2.1): encoder
#: channels and kernel, decoder channels (head first) and kernel.
_CNN_SIZES = {1: ((4, 16, 64), 25, (64, 16, 4), 9), 2: ((64, 32, 16), 9, (16, 32, 64), 9)}


def cnn_fits_grid(fine: tuple[int, ...]) -> bool:
    """Whether the CNN micro codec exists for the grid ``fine``: 1D or 2D, and (three stride-2
    layers) every axis divisible by 8."""
    return len(fine) in _CNN_SIZES and not any(n % 8 for n in fine)


def _cnn_sizes(fine: tuple[int, ...]) -> tuple:
    """The reference's sizes for a ``len(fine)``-D grid (:func:`cnn_fits_grid`)."""
    if cnn_fits_grid(fine):
        return _CNN_SIZES[len(fine)]
    if len(fine) not in _CNN_SIZES:
        raise ValueError(f"the CNN micro codec is implemented for 1D and 2D grids, got a "
                         f"{len(fine)}D grid {tuple(fine)}")
    raise ValueError(f"the CNN micro codec needs every grid axis divisible by 8, got "
                     f"{tuple(fine)}")


class ConvMicroEncoder(eqx.Module):
    r"""The reference's micro encoder: residual ``(C, *fine)`` :math:`\mapsto \eta`.

    Three circular stride-2 convolutions with leaky ReLU, flattened, then a linear map to
    ``n_micro``. 1D: ``C -> 4 -> 16 -> 64`` channels, kernel 25; 2D: ``C -> 64 -> 32 -> 16``,
    kernel 9x9 (4096 features on a 128x128 grid). Every grid axis must be a multiple of 8.
    """

    convs: tuple[CircularConv, ...]
    head: eqx.nn.Linear

    def __init__(self, n_channels: int, fine_shape: tuple[int, ...], n_micro: int, *,
                 key: PRNGKeyArray) -> None:
        fine = tuple(fine_shape)
        channels, kernel_size, _, _ = _cnn_sizes(fine)
        factor = 2 ** len(channels)
        keys = jax.random.split(key, len(channels) + 1)
        sizes = (n_channels, *channels)
        self.convs = tuple(CircularConv(a, b, kernel_size, 2, len(fine), key=k)
                           for a, b, k in zip(sizes[:-1], sizes[1:], keys[:-1], strict=True))
        n_features = channels[-1] * math.prod(n // factor for n in fine)
        self.head = xavier_linear(n_features, n_micro, key=keys[-1])

    def __call__(self, residual: Float[Array, "C ..."]) -> Float[Array, " n_micro"]:
        h = residual
        for conv in self.convs:
            h = jax.nn.leaky_relu(conv(h))
        return self.head(h.ravel())


def _along_axes(x: Array, matrices: tuple[np.ndarray, ...]) -> Array:
    """Apply ``matrices[a]`` (``(out_a, in_a)``) along spatial axis ``a`` of ``x``
    (``(C, in_1, ..., in_d)``): the separable product, ``(C, out_1, ..., out_d)``."""
    for axis, matrix in enumerate(matrices, start=1):
        x = jnp.moveaxis(jnp.tensordot(jnp.asarray(matrix, x.dtype), x, axes=(1, axis)), 0,
                         axis)
    return x


@functools.lru_cache(maxsize=32)
def _spline_bases(fine_shape: tuple[int, ...], spacing: int) -> tuple[np.ndarray, ...]:
    """Per axis: the basis ``(n_points, n_coeffs)`` (computed once per grid)."""
    return tuple(spline_basis(n, spacing) for n in fine_shape)


@functools.lru_cache(maxsize=32)
def _spline_analysis(fine_shape: tuple[int, ...], spacing: int) -> tuple[np.ndarray, ...]:
    """Per axis: the basis' pseudo-inverse ``(n_coeffs, n_points)`` (least squares)."""
    return tuple(np.linalg.pinv(b) for b in _spline_bases(fine_shape, spacing))


class SplineMicroEncoder(eqx.Module):
    r"""Residual ``(C, *fine)`` :math:`\mapsto \eta = \mathrm{MLP}(B^{+} r)`: the MLP reads
    the least-squares coefficients of the residual in the separable open cubic B-spline basis
    :math:`B = B_1 \otimes \dots \otimes B_d` with knots every ``spacing`` fine points
    (``B^+`` the pseudo-inverse, per axis; both are trace-time constants, not parameters)."""

    net: MLP
    fine_shape: tuple[int, ...] = eqx.field(static=True)
    spacing: int = eqx.field(static=True)

    def __init__(self, n_channels: int, fine_shape: tuple[int, ...], n_micro: int,
                 spacing: int = 2, hidden: tuple[int, ...] = (256,), *,
                 key: PRNGKeyArray) -> None:
        self.fine_shape, self.spacing = tuple(fine_shape), int(spacing)
        n_coeffs = math.prod(b.shape[1] for b in _spline_bases(self.fine_shape, self.spacing))
        self.net = MLP(n_channels * n_coeffs, hidden, n_micro, key=key)

    def __call__(self, residual: Float[Array, "C ..."]) -> Float[Array, " n_micro"]:
        analysis = _spline_analysis(self.fine_shape, self.spacing)
        return self.net(_along_axes(residual, analysis).ravel())


class SplineMicroDecoder(eqx.Module):
    r""":math:`\eta \mapsto g(\eta) = B\,\mathrm{MLP}(\eta)`, shape ``(C, *fine)``: the MLP
    gives spline coefficients ``(C, n_1, ..., n_d)`` in the basis of
    :class:`SplineMicroEncoder`. The output layer starts at zero (no correction at first)."""

    net: MLP
    out_shape: tuple[int, ...] = eqx.field(static=True)
    spacing: int = eqx.field(static=True)

    def __init__(self, n_micro: int, out_shape: tuple[int, ...], spacing: int = 2,
                 hidden: tuple[int, ...] = (256,), *, key: PRNGKeyArray) -> None:
        self.out_shape, self.spacing = tuple(out_shape), int(spacing)
        n_coeffs = math.prod(b.shape[1] for b in _spline_bases(self.out_shape[1:],
                                                                self.spacing))
        net = MLP(n_micro, hidden, self.out_shape[0] * n_coeffs, key=key)
        last = net.layers[-1]
        self.net = eqx.tree_at(lambda n: (n.layers[-1].weight, n.layers[-1].bias), net,
                               (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))

    def __call__(self, zeta: Array, eta: Float[Array, " n_micro"]) -> Float[Array, "C ..."]:
        """``g(eta)`` (``zeta`` is accepted for a common signature and ignored)."""
        bases = _spline_bases(self.out_shape[1:], self.spacing)
        coeffs = self.net(eta).reshape(self.out_shape[0], *(b.shape[1] for b in bases))
        return _along_axes(coeffs, bases)


class MultiscaleEncoder(eqx.Module):
    r"""``y -> (mean, logvar)`` of ``z = [R y; net(y - G*y)]`` (see module docstring); with
    ``units`` (:mod:`msde_ppl.generative.units`, centres :math:`m`, spreads :math:`s`) the
    scale operator acts on the centred field, :math:`\zeta = m + R(y - m)` and residual
    :math:`r = (y - m) - G*(y - m)` (so an offset passes through exactly, whatever sum the
    learned kernel's taps have), and the micro network reads :math:`r / s`.

    ``network`` is ``"mlp"`` (an MLP on the flattened residual), ``"spline"``
    (:class:`SplineMicroEncoder`, knots every ``spacing`` fine points) or ``"cnn"``
    (:class:`ConvMicroEncoder`, 1D and 2D).
    """

    scale: ScaleOperator
    micro: MLP | ConvMicroEncoder | SplineMicroEncoder | None
    logvar: Float[Array, " n_z"]
    n_micro: int = eqx.field(static=True)
    units: Units | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        scale: ScaleOperator,
        n_micro: int,
        hidden: tuple[int, ...] = (256,),
        network: str = "mlp",
        spacing: int = 2,
        macro_var: tuple[float, ...] | None = None,
        units: Units | None = None,
        *,
        key: PRNGKeyArray,
    ) -> None:
        self.scale = scale
        self.n_micro = n_micro
        self.units = check_units(units, scale.n_channels)
        n_fine = scale.n_channels * math.prod(scale.fine_shape)
        if network not in ("mlp", "cnn", "spline"):
            raise ValueError(f"unknown micro encoder {network!r}; use 'mlp', 'spline' or "
                             "'cnn'")
        self.micro = None
        if n_micro and network == "mlp":
            self.micro = MLP(n_fine, hidden, n_micro, key=key)
        elif n_micro and network == "spline":
            self.micro = SplineMicroEncoder(scale.n_channels, scale.fine_shape, n_micro, spacing,
                                            hidden, key=key)
        elif n_micro:
            self.micro = ConvMicroEncoder(scale.n_channels, scale.fine_shape, n_micro, key=key)
        n_macro = scale.n_channels * math.prod(scale.coarse_shape)
        logvar = np.full(n_macro + n_micro, _INIT_LOGVAR)
        if macro_var is not None:  # per field, in the data's units (MultiscaleConfig.scales)
            logvar[:n_macro] = np.repeat(np.log(np.asarray(macro_var, np.float64)),
                                         math.prod(scale.coarse_shape))
        self.logvar = jnp.asarray(logvar, jnp.float32)

    def __call__(self, y: Float[Array, "C ..."]) -> tuple[Array, Array]:
        y = centred(y, self.units)
        if self.micro is None:
            return uncentred(self.scale.restrict(y), self.units).ravel(), self.logvar
        coarse, smooth = self.scale.restrict_and_smooth(y)
        coarse = uncentred(coarse, self.units)
        residual = standardise(y - smooth, self.units, centre=False)
        if isinstance(self.micro, MLP):
            residual = residual.ravel()
        return jnp.concatenate([coarse.ravel(), self.micro(residual)]), self.logvar


class MicroDecoder(eqx.Module):
    r""":math:`\eta \mapsto g(\eta)`, shape ``(C, *fine)``.

    The output layer starts at zero, so a new micro state starts as "no correction" and the
    macro state has to explain the field first (scale separation from the first step).
    """

    net: MLP
    out_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self, n_micro: int, out_shape: tuple[int, ...], hidden: tuple[int, ...] = (256,), *,
        key: PRNGKeyArray,
    ) -> None:
        self.out_shape = tuple(out_shape)
        net = MLP(n_micro, hidden, math.prod(self.out_shape), key=key)
        last = net.layers[-1]
        self.net = eqx.tree_at(lambda n: (n.layers[-1].weight, n.layers[-1].bias), net,
                               (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))

    def __call__(self, zeta: Array, eta: Float[Array, " n_micro"]) -> Float[Array, "C ..."]:
        """``g(eta)`` (``zeta`` is accepted for a common signature and ignored)."""
        return self.net(eta).reshape(self.out_shape)


class ConvMicroDecoder(eqx.Module):
    r"""The reference's micro decoder: :math:`\eta \mapsto g(\eta)`, shape ``(C, *fine)``.

    A linear map to ``c_0 x fine/8`` values and leaky ReLU, then three transposed convolutions
    (kernel 9, stride 2, padding 4, output padding 1, zero boundaries) with leaky ReLU between:
    1D ``64 -> 16 -> 4 -> C`` channels, 2D ``16 -> 32 -> 64 -> C``. The last layer's weights
    start at zero (no correction at first, as :class:`MicroDecoder`).
    """

    head: eqx.nn.Linear
    convs: tuple[ConvTranspose, ...]
    channels: tuple[int, ...] = eqx.field(static=True)
    head_grid: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, n_micro: int, out_shape: tuple[int, ...], *,
                 key: PRNGKeyArray) -> None:
        n_channels, *fine = out_shape
        _, _, channels, kernel_size = _cnn_sizes(tuple(fine))
        factor = 2 ** len(channels)
        keys = jax.random.split(key, len(channels) + 1)
        self.channels = tuple(channels)
        self.head_grid = tuple(n // factor for n in fine)
        self.head = xavier_linear(n_micro, channels[0] * math.prod(self.head_grid), key=keys[0])
        sizes = (*channels, n_channels)
        pad = (kernel_size - 1) // 2
        convs = [ConvTranspose(a, b, kernel_size, 2, pad, 2 - kernel_size + 2 * pad, len(fine),
                               key=k)
                 for a, b, k in zip(sizes[:-1], sizes[1:], keys[1:], strict=True)]
        convs[-1] = eqx.tree_at(lambda c: c.weight, convs[-1], jnp.zeros_like(convs[-1].weight))
        self.convs = tuple(convs)

    def __call__(self, zeta: Array, eta: Float[Array, " n_micro"]) -> Float[Array, "C ..."]:
        """``g(eta)`` (``zeta`` is accepted for a common signature and ignored)."""
        h = jax.nn.leaky_relu(self.head(eta)).reshape(self.channels[0], *self.head_grid)
        for conv in self.convs[:-1]:
            h = jax.nn.leaky_relu(conv(h))
        return self.convs[-1](h)


class StencilMicroDecoder(eqx.Module):
    r""":math:`(\zeta, \eta) \mapsto g(\zeta, \eta)`: per coarse cell, the same MLP maps the
    neighbourhood :math:`\zeta_{N(j)}` and :math:`\eta` to the cell's fine values.

    Cell ``j`` covers the fine points within half a coarse spacing of coarse node ``j`` (fine
    index ``j * sigma``). The output layer starts at zero.
    """

    net: MLP
    coarse_shape: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    radius: int = eqx.field(static=True)

    def __init__(
        self, n_micro: int, coarse_shape: tuple[int, ...], stride: tuple[int, ...],
        n_channels: int = 1, radius: int = 2, hidden: tuple[int, ...] = (256,), *,
        key: PRNGKeyArray,
    ) -> None:
        self.coarse_shape, self.stride = tuple(coarse_shape), tuple(stride)
        self.n_channels, self.radius = n_channels, radius
        n_in = n_channels * (2 * radius + 1) ** len(coarse_shape) + n_micro
        net = MLP(n_in, hidden, n_channels * math.prod(self.stride), key=key)
        last = net.layers[-1]
        self.net = eqx.tree_at(lambda n: (n.layers[-1].weight, n.layers[-1].bias), net,
                               (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))

    def __call__(self, zeta: Float[Array, "C ..."], eta: Float[Array, " n_micro"]) -> Array:
        cells = jax.vmap(self.net)(stencil_inputs(zeta, eta, self.radius))
        d = len(self.coarse_shape)
        cells = cells.reshape(*self.coarse_shape, self.n_channels, *self.stride)
        # (n_1..n_d, C, s_1..s_d) -> (C, n_1, s_1, ..., n_d, s_d) -> (C, *fine)
        order = [d] + [ax for i in range(d) for ax in (i, d + 1 + i)]
        fine_shape = tuple(n * s for n, s in zip(self.coarse_shape, self.stride, strict=True))
        fine = jnp.transpose(cells, order).reshape(self.n_channels, *fine_shape)
        # cell j starts half a cell left of its node
        return jnp.roll(fine, tuple(-(s // 2) for s in self.stride),
                        axis=tuple(range(1, 1 + d)))


