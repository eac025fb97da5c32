"""Strict numerics for the whole suite.

- rank promotion raises: silent broadcasting between macro and micro grids is exactly the bug
  this catches;
- float64 is switched on with ``MSDE_TEST_X64=1`` (finite-difference gradient tests switch it on
  locally with ``jax.enable_x64``);
- every test gets a fresh, explicit PRNG key and a reseeded NumPy generator;
- compiled programs are cached on disk for the session (JAX's persistent compilation cache in
  a temporary folder made once, by pytest's main process, and inherited by its xdist workers
  and the command-line subprocesses; every program, however fast it compiled): the same
  program compiled again, e.g. by a resumed fit, by another worker or by a subprocess's eager
  operations, is loaded instead;
- compiled with most of XLA's optimisation off (``JAX_DISABLE_MOST_OPTIMIZATIONS``, inherited
  by the subprocesses too): compiling, not running, is most of a test's time here, and the
  optimisation passes are most of a compile (the default run on 2 cores: 577 s with them in
  stop 55's CI, 448 s without on the same machine, the same tests passing); they change how
  fast a program runs, and its results only by rounding (fusion, order of reductions).
  A module whose cost is running asks for :func:`optimized_xla`;
  ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest`` (e.g. with ``-m slow``, whose long fits and
  statistical loops cost more in running than in compiling) runs everything with the release
  settings. One setting per run: a fit and its resume must compile alike to agree to the bit.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="msde-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from xla_settings import disabled_by_environment, release_compiler  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# read again here: a plugin may have imported jax before this file set the variable
jax.config.update("jax_disable_most_optimizations", disabled_by_environment())
if os.environ.get("MSDE_TEST_X64", "0") == "1":
    jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng_key():
    """A fresh typed PRNG key for every test."""
    return jax.random.key(0)


@pytest.fixture
def np_rng():
    """A NumPy generator reseeded for every test."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_ds():
    """The 64-point advected-bump dataset of ``tests/helpers.py``."""
    from helpers import tiny_dataset

    return tiny_dataset()


@pytest.fixture(scope="session")
def tiny_fit(tiny_ds):
    """An untrained, complete multiscale :class:`~msde_ppl.Fitted` (``tests/helpers.py``)."""
    from helpers import untrained_fit

    return untrained_fit(tiny_ds)


@pytest.fixture(scope="module")
def optimized_xla():
    """XLA's full optimisation for the rest of a module whose cost is running long programs
    (a fine PDE solve), not compiling them (:func:`xla_settings.release_compiler`)."""
    with release_compiler():
        yield
