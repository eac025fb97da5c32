"""The MLP computes W_L phi(... phi(W_1 x + b_1) ...) + b_L, however the product is written."""

import jax
import jax.numpy as jnp
import numpy as np

from msde_ppl.generative.networks import MLP


def test_mlp_is_the_chain_of_its_linear_layers_also_under_vmap(rng_key):
    """``x W^T + b`` (the batch-leading form the MLP uses) is ``eqx.nn.Linear``'s ``W x + b``:
    checked in float64 on one input and on a vmapped batch (a forecast's members)."""
    with jax.enable_x64(True):
        net = MLP(5, (16, 32), 7, key=rng_key)
        net = jax.tree.map(lambda a: a.astype(jnp.float64) if hasattr(a, "dtype") else a, net)
        x = jax.random.normal(jax.random.fold_in(rng_key, 1), (4, 3, 5), jnp.float64)

        def by_layers(v):
            for layer in net.layers[:-1]:
                v = jax.nn.leaky_relu(layer(v))
            return net.layers[-1](v)

        expected = jax.vmap(jax.vmap(by_layers))(x)
        np.testing.assert_allclose(jax.vmap(jax.vmap(net))(x), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(net(x[0, 0]), expected[0, 0], rtol=1e-12, atol=1e-12)
