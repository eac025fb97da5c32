"""The suite's compiler settings (tests/conftest.py): most of XLA's optimisation off by
default, the release settings restored where a check asks for them."""

import os

import jax
import numpy as np
from xla_settings import disabled_by_environment, release_compiler

FLAG = "jax_disable_most_optimizations"


def test_the_default_run_follows_the_environment():
    assert jax.config.read(FLAG) is disabled_by_environment()


def test_release_settings_are_set_inside_and_restored_after():
    before, env = jax.config.read(FLAG), os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"]
    square = jax.jit(lambda x: x * x)
    with release_compiler():
        assert jax.config.read(FLAG) is False
        assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "0"  # for subprocesses too
        inside = square(np.float32(3.0))
    assert jax.config.read(FLAG) is before and os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == env
    assert square(np.float32(3.0)) == inside == 9.0  # same result, recompiled after the clear
