r"""Strided 1D convolutions in polyphase form (the reference's CNN encoder/decoder layers).

A stride-``s`` convolution is rewritten as a stride-1 convolution over the ``s`` phases of its
input (or output), which XLA's CPU backend runs several times faster than a strided or
input-dilated convolution.

- :class:`CircularConv1d`, stride ``s``, kernel ``K`` (odd), circular padding ``p = (K-1)/2``:

  .. math:: y_c[n] = b_c + \sum_{c', k} W_{c c' k}\, x_{c'}[(s n + k - p) \bmod L],
     \qquad n = 0 \dots L/s - 1.

  With :math:`k - p = s q + r` (:math:`0 \le r < s`) and the phases
  :math:`x^{(r)}[m] = x[s m + r]`, this is
  :math:`y[n] = \sum_{r, q} W^{(r)}_q\, x^{(r)}[n + q]`: one stride-1 circular correlation
  with ``s C_in`` input channels and ``max q - min q + 1`` taps.
- :class:`ConvTranspose1d`, stride ``s``, kernel ``K``, padding ``p``, output padding ``o``
  (PyTorch's ``ConvTranspose1d``: zero boundaries, output length ``(L-1)s - 2p + K + o``,
  required here to equal ``s L``):

  .. math:: y_c[m] = b_c + \sum_{c', n, k:\ s n + k - p = m} W_{c' c k}\, x_{c'}[n].

  With :math:`m = s a + r`, :math:`y^{(r)}[a] = \sum_e V^{(r)}_e\, x[a + e]` where
  :math:`V^{(r)}_e = W_{r + p - s e}`: one stride-1 zero-padded correlation with ``s C_out``
  output channels, whose phases are then interleaved.

Both act on ONE unbatched input ``(C_in, L)`` (batch with ``jax.vmap``; XLA folds the batch
into the convolution's batch dimension). Weights use Xavier-normal initialisation and zero
biases, as the reference.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["CircularConv1d", "ConvTranspose1d"]


def _xavier(key: PRNGKeyArray, shape: tuple[int, int, int]) -> Array:
    """Xavier-normal ``(a, b, K)`` weights: std ``sqrt(2 / ((a + b) K))``."""
    a, b, k = shape
    return jnp.sqrt(2.0 / ((a + b) * k)) * jax.random.normal(key, shape)


def _conv(x: Array, weight: Array) -> Array:
    """Stride-1 VALID correlation of ``x`` ``(C_in, L)`` with ``weight`` ``(C_out, C_in, J)``."""
    return jax.lax.conv_general_dilated(x[None], weight, (1,), "VALID")[0]


class CircularConv1d(eqx.Module):
    """Stride-``s`` circular convolution ``(C_in, L) -> (C_out, L/s)`` (module docstring)."""

    weight: Float[Array, "C_out C_in K"]
    bias: Float[Array, " C_out"]
    stride: int = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 *, key: PRNGKeyArray) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel size must be odd (centred), got {kernel_size}")
        self.weight = _xavier(key, (out_channels, in_channels, kernel_size))
        self.bias = jnp.zeros((out_channels,))
        self.stride = stride

    def _phase_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Per tap ``k``: phase offset ``q`` and phase ``r`` with ``k - p = s q + r``."""
        k = self.weight.shape[-1]
        offset = np.arange(k) - (k - 1) // 2
        return offset // self.stride, offset % self.stride

    def phase_weight(self) -> Float[Array, "C_out sC_in J"]:
        """Weights of the equivalent stride-1 correlation over the input phases."""
        c_out, c_in, k = self.weight.shape
        q, r = self._phase_offsets()
        select = np.zeros((k, self.stride, q.max() - q.min() + 1), np.float32)
        select[np.arange(k), r, q - q.min()] = 1.0
        phased = jnp.einsum("oik,ksj->osij", self.weight, select)
        return phased.reshape(c_out, self.stride * c_in, -1)

    def __call__(self, x: Float[Array, "C_in L"]) -> Float[Array, "C_out L_out"]:
        c_in, length = x.shape
        s = self.stride
        if length % s:
            raise ValueError(f"input length {length} is not a multiple of the stride {s}")
        q, _ = self._phase_offsets()
        phases = x.reshape(c_in, length // s, s).transpose(2, 0, 1).reshape(s * c_in, -1)
        padded = jnp.pad(phases, ((0, 0), (-q.min(), q.max())), mode="wrap")
        return _conv(padded, self.phase_weight()) + self.bias[:, None]


class ConvTranspose1d(eqx.Module):
    """Stride-``s`` transposed convolution ``(C_in, L) -> (C_out, s L)`` (module docstring)."""

    weight: Float[Array, "C_in C_out K"]
    bias: Float[Array, " C_out"]
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, output_padding: int, *, key: PRNGKeyArray) -> None:
        if kernel_size - 2 * padding + output_padding != stride:
            raise ValueError(
                "output length must be stride * input length: need kernel_size - 2 padding + "
                f"output_padding == stride, got {kernel_size} - {2 * padding} + "
                f"{output_padding} != {stride}")
        self.weight = _xavier(key, (in_channels, out_channels, kernel_size))
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

    def phase_weight(self) -> tuple[Float[Array, "sC_out C_in E"], int]:
        """Weights of the equivalent stride-1 correlation producing the output phases, and
        the smallest input offset ``e``."""
        c_in, c_out, _ = self.weight.shape
        select, e_min = self._taps()
        phased = jnp.einsum("iok,kse->soie", self.weight, select)
        return phased.reshape(self.stride * c_out, c_in, -1), e_min

    def __call__(self, x: Float[Array, "C_in L"]) -> Float[Array, "C_out L_out"]:
        c_in, length = x.shape
        c_out = self.weight.shape[1]
        weight, e_min = self.phase_weight()
        e_max = e_min + weight.shape[-1] - 1
        padded = jnp.pad(x, ((0, 0), (max(-e_min, 0), max(e_max, 0))))
        if e_min > 0:  # every tap reads ahead: drop the unused leading inputs
            padded = padded[:, e_min:]
        phases = _conv(padded, weight)[:, :length]  # (s C_out, L)
        y = phases.reshape(self.stride, c_out, length).transpose(1, 2, 0)
        return y.reshape(c_out, self.stride * length) + self.bias[:, None]
