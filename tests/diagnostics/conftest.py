"""Fixtures of the diagnostics tests: forecasts and the tree of the tiny untrained fit
(``tiny_ds``, ``tiny_fit``: ``tests/conftest.py``)."""

import jax
import pytest


@pytest.fixture(scope="session")
def tiny_fc(tiny_fit, tiny_ds):
    """Forecast of the test trajectory with members and two interval levels."""
    from msde_ppl.predict.forecast import forecast

    return forecast(jax.random.key(0), tiny_fit, tiny_ds, n_samples=8, levels=[0.5, 0.9],
                    return_samples=True)


@pytest.fixture(scope="session")
def tiny_tree(tiny_fit, tiny_ds, tiny_fc):
    from msde_ppl.diagnostics.arviz_io import to_datatree

    return to_datatree(tiny_fit, tiny_ds, tiny_fc, start=2, window=8, n_draws=400, seed=0)
