"""Polyphase strided convolutions against their loop definitions, and the reference CNN codec."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.generative.codec import ConvMicroDecoder, ConvMicroEncoder
from msde_ppl.generative.conv import CircularConv1d, ConvTranspose1d


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "length"),
                         [(1, 4, 25, 2, 40), (3, 2, 5, 2, 12), (2, 3, 7, 3, 18), (2, 2, 5, 4, 16)])
def test_circular_conv_matches_loop_definition(np_rng, c_in, c_out, kernel, stride, length):
    conv = CircularConv1d(c_in, c_out, kernel, stride, key=jax.random.key(1))
    conv = eqx.tree_at(lambda c: c.bias, conv, jnp.asarray(np_rng.normal(size=c_out)))
    x = np_rng.normal(size=(c_in, length))
    w, b, pad = np.asarray(conv.weight), np.asarray(conv.bias), (kernel - 1) // 2
    expected = np.tile(b[:, None], (1, length // stride))
    for n in range(length // stride):
        for k in range(kernel):
            expected[:, n] += w[:, :, k] @ x[:, (stride * n + k - pad) % length]
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, atol=1e-4)


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "pad", "out_pad", "length"),
                         [(8, 4, 9, 2, 4, 1, 10), (2, 3, 5, 2, 2, 1, 7), (2, 1, 3, 3, 0, 0, 5),
                          (1, 2, 7, 3, 2, 1, 6)])
def test_transposed_conv_matches_pytorch_definition(np_rng, c_in, c_out, kernel, stride, pad,
                                                    out_pad, length):
    if kernel - 2 * pad + out_pad != stride:
        with pytest.raises(ValueError, match="output length"):
            ConvTranspose1d(c_in, c_out, kernel, stride, pad, out_pad, key=jax.random.key(2))
        return
    conv = ConvTranspose1d(c_in, c_out, kernel, stride, pad, out_pad, key=jax.random.key(2))
    w = np.asarray(conv.weight)
    x = np_rng.normal(size=(c_in, length))
    n_out = (length - 1) * stride - 2 * pad + kernel + out_pad
    expected = np.zeros((c_out, n_out))
    for n in range(length):  # scatter form: input n, tap k lands on output s n + k - p
        for k in range(kernel):
            m = stride * n + k - pad
            if 0 <= m < n_out:
                expected[:, m] += w[:, :, k].T @ x[:, n]
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, atol=1e-4)


def test_circular_conv_commutes_with_shifts_by_the_stride(rng_key):
    conv = CircularConv1d(2, 3, 9, 2, key=rng_key)
    x = jax.random.normal(rng_key, (2, 32))
    np.testing.assert_allclose(conv(jnp.roll(x, 2, axis=1)), jnp.roll(conv(x), 1, axis=1),
                               atol=1e-5)


def test_reference_cnn_codec_shapes_and_zero_start(rng_key):
    k_enc, k_dec, k_x = jax.random.split(rng_key, 3)
    encoder = ConvMicroEncoder(1, 1000, 5, key=k_enc)
    assert [c.weight.shape for c in encoder.convs] == [(4, 1, 25), (16, 4, 25), (64, 16, 25)]
    assert encoder.head.weight.shape == (5, 8000)
    assert encoder(jax.random.normal(k_x, (1, 1000))).shape == (5,)
    decoder = ConvMicroDecoder(5, (1, 1000), key=k_dec)
    assert decoder.head.weight.shape == (8000, 5)
    assert [c.weight.shape for c in decoder.convs] == [(64, 16, 9), (16, 4, 9), (4, 1, 9)]
    out = decoder(None, jnp.ones(5))
    assert out.shape == (1, 1000) and float(jnp.abs(out).max()) == 0.0
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvMicroEncoder(1, 100, 5, key=k_enc)
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvMicroDecoder(5, (1, 100), key=k_dec)
