"""Small network building blocks shared by drifts, encoders and decoders.

All are :class:`equinox.Module` s on ONE unbatched input; batch with ``jax.vmap`` outside.
Linear layers use Xavier-normal weights and zero biases at initialisation, as the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["MLP", "xavier_linear"]


def xavier_linear(in_size: int, out_size: int, *, key: PRNGKeyArray) -> eqx.nn.Linear:
    """``eqx.nn.Linear`` with Xavier-normal weights, std ``sqrt(2 / (in + out))``, zero bias."""
    layer = eqx.nn.Linear(in_size, out_size, key=key)
    std = jnp.sqrt(2.0 / (in_size + out_size))
    weight = std * jax.random.normal(key, (out_size, in_size))
    layer = eqx.tree_at(lambda lin: lin.weight, layer, weight)
    return eqx.tree_at(lambda lin: lin.bias, layer, jnp.zeros((out_size,)))


class MLP(eqx.Module):
    r"""Multilayer perceptron :math:`x \mapsto W_L\,\phi(\dots\phi(W_1 x + b_1)\dots) + b_L`.

    Args:
        in_size: input size.
        hidden: hidden layer widths.
        out_size: output size.
        activation: :math:`\phi` (default leaky ReLU, slope 0.01, as the reference).
        key: PRNG key (keyword-only).
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        hidden: Sequence[int],
        out_size: int,
        activation: Callable = jax.nn.leaky_relu,
        *,
        key: PRNGKeyArray,
    ) -> None:
        sizes = (in_size, *hidden, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            xavier_linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        for layer in self.layers[:-1]:
            x = self.activation(_affine(layer, x))
        return _affine(self.layers[-1], x)


def _affine(layer: eqx.nn.Linear, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
    """:math:`W x + b` written as :math:`x W^\top + b`: the same numbers, but under ``vmap``
    the batch stays the leading (row) axis of XLA's matrix product. Written as ``W @ x`` (as
    ``eqx.nn.Linear`` does) the product comes out as ``(out, batch)`` and every elementwise
    consumer transposes it again: decoding 64 members of a 128 x 128 field took 6x longer."""
    return x @ layer.weight.T + layer.bias
