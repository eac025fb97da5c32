"""The test suite's switch to XLA's release compiler settings (tests/conftest.py turns most of
XLA's optimisation off for the default run)."""

import contextlib
import os

import jax

VARIABLE = "JAX_DISABLE_MOST_OPTIMIZATIONS"


def disabled_by_environment() -> bool:
    """Whether :data:`VARIABLE` turns most of XLA's optimisation off (JAX's reading of a
    boolean variable)."""
    return os.environ.get(VARIABLE, "0").lower() in ("1", "y", "yes", "t", "true", "on")


@contextlib.contextmanager
def release_compiler():
    """XLA's full optimisation inside, for this process and the subprocesses it starts; the
    suite's setting after. The setting is read when a program compiles and is not part of the
    in-memory cache's key, so the caches are cleared on the way in and out (the on-disk cache
    does key on it)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    env = os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0"
    try:
        yield
    finally:
        jax.clear_caches()
        jax.config.update("jax_disable_most_optimizations", previous)
        if env is None:
            del os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"]
        else:
            os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = env
