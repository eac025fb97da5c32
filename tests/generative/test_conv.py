"""Polyphase strided convolutions (1D and 2D) against their loop definitions, and the
reference CNN codec."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_ppl.generative.codec import ConvMicroDecoder, ConvMicroEncoder, MultiscaleEncoder
from msde_ppl.generative.conv import CircularConv, ConvTranspose
from msde_ppl.generative.operators import ScaleOperator


def _circular_loop(w, b, x, stride):
    """``y[o, n] = b[o] + sum_{i, k} w[o, i, k] x[i, (s n + k - p) mod L]`` over every axis."""
    kernel, pad = w.shape[-1], (w.shape[-1] - 1) // 2
    grid = x.shape[1:]
    out = np.zeros((w.shape[0], *(n // stride for n in grid)))
    for n in itertools.product(*(range(m // stride) for m in grid)):
        value = b.copy()
        for k in itertools.product(range(kernel), repeat=len(grid)):
            index = tuple((stride * a + c - pad) % m for a, c, m in zip(n, k, grid, strict=True))
            value += w[(slice(None), slice(None), *k)] @ x[(slice(None), *index)]
        out[(slice(None), *n)] = value
    return out


def _transposed_scatter(w, x, stride, pad, n_out):
    """PyTorch's ConvTranspose: input ``n``, tap ``k`` lands on output ``s n + k - p``."""
    kernel, grid = w.shape[-1], x.shape[1:]
    out = np.zeros((w.shape[1], *(n_out,) * len(grid)))
    for n in itertools.product(*(range(m) for m in grid)):
        for k in itertools.product(range(kernel), repeat=len(grid)):
            m = tuple(stride * a + c - pad for a, c in zip(n, k, strict=True))
            if all(0 <= v < n_out for v in m):
                out[(slice(None), *m)] += w[(slice(None), slice(None), *k)].T @ x[
                    (slice(None), *n)]
    return out


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "grid"),
                         [(1, 4, 25, 2, (40,)), (3, 2, 5, 2, (12,)), (2, 3, 7, 3, (18,)),
                          (2, 2, 5, 4, (16,)), (2, 3, 9, 2, (8, 12)), (1, 2, 3, 3, (6, 9))])
def test_circular_conv_matches_loop_definition(np_rng, c_in, c_out, kernel, stride, grid):
    conv = CircularConv(c_in, c_out, kernel, stride, len(grid), key=jax.random.key(1))
    conv = eqx.tree_at(lambda c: c.bias, conv, jnp.asarray(np_rng.normal(size=c_out)))
    x = np_rng.normal(size=(c_in, *grid))
    expected = _circular_loop(np.asarray(conv.weight, np.float64),
                              np.asarray(conv.bias, np.float64), x, stride)
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, atol=1e-4)


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "pad", "out_pad", "grid"),
                         [(8, 4, 9, 2, 4, 1, (10,)), (2, 3, 5, 2, 2, 1, (7,)),
                          (2, 1, 3, 3, 0, 0, (5,)), (1, 2, 7, 3, 2, 1, (6,)),
                          (3, 2, 9, 2, 4, 1, (5, 5)), (2, 2, 5, 3, 1, 0, (4, 4))])
def test_transposed_conv_matches_pytorch_definition(np_rng, c_in, c_out, kernel, stride, pad,
                                                    out_pad, grid):
    if kernel - 2 * pad + out_pad != stride:
        with pytest.raises(ValueError, match="output length"):
            ConvTranspose(c_in, c_out, kernel, stride, pad, out_pad, len(grid),
                          key=jax.random.key(2))
        return
    conv = ConvTranspose(c_in, c_out, kernel, stride, pad, out_pad, len(grid),
                         key=jax.random.key(2))
    x = np_rng.normal(size=(c_in, *grid))
    n_out = (grid[0] - 1) * stride - 2 * pad + kernel + out_pad
    expected = _transposed_scatter(np.asarray(conv.weight, np.float64), x, stride, pad, n_out)
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, atol=1e-4)


@pytest.mark.parametrize("grid", [(32,), (16, 24)])
def test_circular_conv_commutes_with_shifts_by_the_stride(rng_key, grid):
    conv = CircularConv(2, 3, 9, 2, len(grid), key=rng_key)
    x = jax.random.normal(rng_key, (2, *grid))
    axes = tuple(range(1, 1 + len(grid)))
    np.testing.assert_allclose(conv(jnp.roll(x, (2,) * len(grid), axis=axes)),
                               jnp.roll(conv(x), (1,) * len(grid), axis=axes), atol=1e-5)


def test_conv_refuses_a_grid_of_the_wrong_dimension(rng_key):
    with pytest.raises(ValueError, match="2D"):
        CircularConv(1, 2, 3, 2, 2, key=rng_key)(jnp.ones((1, 8)))
    with pytest.raises(ValueError, match="multiple of the stride"):
        CircularConv(1, 2, 3, 2, 2, key=rng_key)(jnp.ones((1, 8, 9)))


def test_reference_cnn_codec_shapes_and_zero_start(rng_key):
    k_enc, k_dec, k_x = jax.random.split(rng_key, 3)
    encoder = ConvMicroEncoder(1, (1000,), 5, key=k_enc)
    assert [c.weight.shape for c in encoder.convs] == [(4, 1, 25), (16, 4, 25), (64, 16, 25)]
    assert encoder.head.weight.shape == (5, 8000)
    assert encoder(jax.random.normal(k_x, (1, 1000))).shape == (5,)
    decoder = ConvMicroDecoder(5, (1, 1000), key=k_dec)
    assert decoder.head.weight.shape == (8000, 5)
    assert [c.weight.shape for c in decoder.convs] == [(64, 16, 9), (16, 4, 9), (4, 1, 9)]
    out = decoder(None, jnp.ones(5))
    assert out.shape == (1, 1000) and float(jnp.abs(out).max()) == 0.0
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvMicroEncoder(1, (100,), 5, key=k_enc)
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvMicroDecoder(5, (1, 100), key=k_dec)


def test_reference_cnn_codec_in_2d(rng_key):
    """docs/method.md §1.3, §2.1: encoder C -> 64 -> 32 -> 16 (kernel 9), flattened 16 x H/8 x
    W/8; decoder head to 16 x H/8 x W/8, then 16 -> 32 -> 64 -> C; non-square grids."""
    k_enc, k_dec, k_x, k_last = jax.random.split(rng_key, 4)
    encoder = ConvMicroEncoder(2, (32, 64), 5, key=k_enc)
    assert [c.weight.shape for c in encoder.convs] == [(64, 2, 9, 9), (32, 64, 9, 9),
                                                        (16, 32, 9, 9)]
    assert encoder.head.weight.shape == (5, 16 * 4 * 8)
    assert encoder(jax.random.normal(k_x, (2, 32, 64))).shape == (5,)
    decoder = ConvMicroDecoder(5, (2, 32, 64), key=k_dec)
    assert decoder.head.weight.shape == (16 * 4 * 8, 5)
    assert [c.weight.shape for c in decoder.convs] == [(16, 32, 9, 9), (32, 64, 9, 9),
                                                        (64, 2, 9, 9)]
    assert float(jnp.abs(decoder(None, jnp.ones(5))).max()) == 0.0
    last = decoder.convs[-1]
    live = eqx.tree_at(lambda d: d.convs[-1].weight, decoder,
                       jax.random.normal(k_last, last.weight.shape))
    out = live(None, jnp.ones(5))
    assert out.shape == (2, 32, 64) and float(jnp.abs(out).max()) > 0.0
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvMicroDecoder(5, (1, 32, 60), key=k_dec)
    with pytest.raises(ValueError, match="1D and 2D"):
        ConvMicroEncoder(1, (8, 8, 8), 5, key=k_enc)


def test_multiscale_encoder_takes_the_cnn_in_2d(rng_key):
    scale = ScaleOperator((32, 32), (8, 8), n_channels=1)
    encoder = MultiscaleEncoder(scale, 3, network="cnn", key=rng_key)
    mean, logvar = encoder(jax.random.normal(rng_key, (1, 32, 32)))
    assert mean.shape == logvar.shape == (64 + 3,)
