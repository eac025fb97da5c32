r"""Strided N-d convolutions in polyphase form (the reference's CNN encoder/decoder layers).

A stride-``s`` convolution is rewritten as a stride-1 convolution over the ``s^d`` phases of its
input (or output), which XLA's CPU backend runs several times faster than a strided or
input-dilated convolution (in 2D an input-dilated transposed convolution multiplies 3/4 zeros).
Written here for one axis; in ``d`` dimensions the same map acts on every axis (kernel
``K x ... x K``, the phases are the ``s^d`` combinations of per-axis phases).

- :class:`CircularConv`, stride ``s``, kernel ``K`` (odd), circular padding ``p = (K-1)/2``:

  .. math:: y_c[n] = b_c + \sum_{c', k} W_{c c' k}\, x_{c'}[(s n + k - p) \bmod L],
     \qquad n = 0 \dots L/s - 1.

  With :math:`k - p = s q + r` (:math:`0 \le r < s`) and the phases
  :math:`x^{(r)}[m] = x[s m + r]`, this is
  :math:`y[n] = \sum_{r, q} W^{(r)}_q\, x^{(r)}[n + q]`: one stride-1 circular correlation
  with ``s^d C_in`` input channels and ``max q - min q + 1`` taps per axis.
- :class:`ConvTranspose`, stride ``s``, kernel ``K``, padding ``p``, output padding ``o``
  (PyTorch's ``ConvTranspose1d``/``2d``: zero boundaries, output length
  ``(L-1)s - 2p + K + o``, required here to equal ``s L``):

  .. math:: y_c[m] = b_c + \sum_{c', n, k:\ s n + k - p = m} W_{c' c k}\, x_{c'}[n].

  With :math:`m = s a + r`, :math:`y^{(r)}[a] = \sum_e V^{(r)}_e\, x[a + e]` where
  :math:`V^{(r)}_e = W_{r + p - s e}`: one stride-1 zero-padded correlation with ``s^d C_out``
  output channels, whose phases are then interleaved.

Both act on ONE unbatched input ``(C_in, L_1, ..., L_d)`` (batch with ``jax.vmap``; XLA folds
the batch into the convolution's batch dimension). Weights use Xavier-normal initialisation
(PyTorch's fan computation: fan = channels x kernel volume) and zero biases, as the reference.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["CircularConv", "ConvTranspose"]

_LETTERS = "abcdefghijklmnopqrstuvwx"  # y, z name the channel axes


def _xavier(key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    """Xavier-normal ``(a, b, K, ..., K)`` weights: std ``sqrt(2 / ((a + b) K^d))``."""
    a, b, *kernel = shape
    return jnp.sqrt(2.0 / ((a + b) * math.prod(kernel))) * jax.random.normal(key, shape)


def _conv(x: Array, weight: Array) -> Array:
    """Stride-1 VALID correlation of ``x`` ``(C_in, *L)`` with ``weight`` ``(C_out, C_in, *J)``."""
    return jax.lax.conv_general_dilated(x[None], weight, (1,) * (x.ndim - 1), "VALID")[0]


def _per_axis(weight: Array, select: np.ndarray) -> Array:
    """Contract every spatial axis ``k_t`` of ``weight`` ``(A, B, K, ..., K)`` with
    ``select`` ``(K, s, J)``: ``(s, ..., s, A, B, J, ..., J)`` (phases first)."""
    d = weight.ndim - 2
    k, r, j = _LETTERS[:d], _LETTERS[d:2 * d], _LETTERS[2 * d:3 * d]
    operands = [f"yz{k}"] + [f"{k[t]}{r[t]}{j[t]}" for t in range(d)]
    spec = ",".join(operands) + f"->{r}yz{j}"
    return jnp.einsum(spec, weight, *([jnp.asarray(select)] * d))


def _to_phases(x: Array, s: int) -> Array:
    """``(C, s m_1, ..., s m_d) -> (s^d C, m_1, ..., m_d)``, phase ``(r_1..r_d)`` major."""
    c, *lengths = x.shape
    d = len(lengths)
    split = x.reshape(c, *(v for n in lengths for v in (n // s, s)))
    order = [2 + 2 * t for t in range(d)] + [0] + [1 + 2 * t for t in range(d)]
    return split.transpose(order).reshape(s ** d * c, *(n // s for n in lengths))


def _from_phases(x: Array, s: int, c: int) -> Array:
    """Inverse of :func:`_to_phases`: ``(s^d C, m_1..m_d) -> (C, s m_1, ..., s m_d)``."""
    lengths = x.shape[1:]
    d = len(lengths)
    split = x.reshape(*(s,) * d, c, *lengths)
    order = [d] + [v for t in range(d) for v in (d + 1 + t, t)]
    return split.transpose(order).reshape(c, *(s * n for n in lengths))


class CircularConv(eqx.Module):
    """Stride-``s`` circular convolution ``(C_in, *L) -> (C_out, *L/s)`` (module docstring)."""

    weight: Float[Array, "C_out C_in ..."]
    bias: Float[Array, " C_out"]
    stride: int = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 ndim: int = 1, *, key: PRNGKeyArray) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel size must be odd (centred), got {kernel_size}")
        self.weight = _xavier(key, (out_channels, in_channels, *(kernel_size,) * ndim))
        self.bias = jnp.zeros((out_channels,))
        self.stride = stride

    def _phase_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Per tap ``k``: phase offset ``q`` and phase ``r`` with ``k - p = s q + r``."""
        k = self.weight.shape[-1]
        offset = np.arange(k) - (k - 1) // 2
        return offset // self.stride, offset % self.stride

    def phase_weight(self) -> Float[Array, "C_out sC_in ..."]:
        """Weights of the equivalent stride-1 correlation over the input phases."""
        c_out, c_in, k, *_ = self.weight.shape
        d = self.weight.ndim - 2
        q, r = self._phase_offsets()
        select = np.zeros((k, self.stride, q.max() - q.min() + 1), np.float32)
        select[np.arange(k), r, q - q.min()] = 1.0
        phased = _per_axis(self.weight, select)  # (s.., C_out, C_in, J..)
        phased = jnp.moveaxis(phased, d, 0)  # (C_out, s.., C_in, J..)
        return phased.reshape(c_out, self.stride ** d * c_in, *phased.shape[-d:])

    def __call__(self, x: Float[Array, "C_in ..."]) -> Float[Array, "C_out ..."]:
        s = self.stride
        if x.ndim != self.weight.ndim - 1:
            raise ValueError(f"expected a ({self.weight.ndim - 2}D) input (C, *grid), got "
                             f"shape {x.shape}")
        if any(n % s for n in x.shape[1:]):
            raise ValueError(f"grid {x.shape[1:]} is not a multiple of the stride {s}")
        q, _ = self._phase_offsets()
        pads = ((0, 0),) + ((-q.min(), q.max()),) * (x.ndim - 1)
        padded = jnp.pad(_to_phases(x, s), pads, mode="wrap")
        bias = self.bias.reshape(-1, *(1,) * (x.ndim - 1))
        return _conv(padded, self.phase_weight()) + bias


class ConvTranspose(eqx.Module):
    """Stride-``s`` transposed convolution ``(C_in, *L) -> (C_out, *s L)`` (module
    docstring)."""

    weight: Float[Array, "C_in C_out ..."]
    bias: Float[Array, " C_out"]
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, output_padding: int, ndim: int = 1, *,
                 key: PRNGKeyArray) -> None:
        if kernel_size - 2 * padding + output_padding != stride:
            raise ValueError(
                "output length must be stride * input length: need kernel_size - 2 padding + "
                f"output_padding == stride, got {kernel_size} - {2 * padding} + "
                f"{output_padding} != {stride}")
        self.weight = _xavier(key, (in_channels, out_channels, *(kernel_size,) * ndim))
        self.bias = jnp.zeros((out_channels,))
        self.stride, self.padding = stride, padding

    def _taps(self) -> tuple[np.ndarray, int]:
        """One-hot map ``(K, s, E)`` from kernel taps to (output phase, input offset e)."""
        s, p, k = self.stride, self.padding, self.weight.shape[-1]
        r, kk = np.meshgrid(np.arange(s), np.arange(k), indexing="ij")
        valid = (r + p - kk) % s == 0
        e = (r + p - kk) // s
        e_min, e_max = e[valid].min(), e[valid].max()
        select = np.zeros((k, s, e_max - e_min + 1), np.float32)
        select[kk[valid], r[valid], e[valid] - e_min] = 1.0
        return select, int(e_min)

    def phase_weight(self) -> tuple[Float[Array, "sC_out C_in ..."], int]:
        """Weights of the equivalent stride-1 correlation producing the output phases, and
        the smallest input offset ``e`` (per axis)."""
        c_in, c_out, *_ = self.weight.shape
        d = self.weight.ndim - 2
        select, e_min = self._taps()
        phased = _per_axis(self.weight, select)  # (s.., C_in, C_out, E..)
        phased = jnp.swapaxes(phased, d, d + 1)  # (s.., C_out, C_in, E..)
        return phased.reshape(self.stride ** d * c_out, c_in, *phased.shape[-d:]), e_min

    def __call__(self, x: Float[Array, "C_in ..."]) -> Float[Array, "C_out ..."]:
        if x.ndim != self.weight.ndim - 1:
            raise ValueError(f"expected a ({self.weight.ndim - 2}D) input (C, *grid), got "
                             f"shape {x.shape}")
        lengths = x.shape[1:]
        c_out = self.weight.shape[1]
        weight, e_min = self.phase_weight()
        e_max = e_min + weight.shape[-1] - 1
        padded = jnp.pad(x, ((0, 0),) + ((max(-e_min, 0), max(e_max, 0)),) * len(lengths))
        if e_min > 0:  # every tap reads ahead: drop the unused leading inputs
            padded = padded[(slice(None),) + (slice(e_min, None),) * len(lengths)]
        phases = _conv(padded, weight)[(slice(None),) + tuple(slice(0, n) for n in lengths)]
        bias = self.bias.reshape(-1, *(1,) * len(lengths))
        return _from_phases(phases, self.stride, c_out) + bias
