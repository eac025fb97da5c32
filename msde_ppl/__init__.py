"""msde_ppl: learning stochastic multiscale models from data.

A coarse-grid macroscale SDE state, a small microscale auxiliary state and a product-of-experts
likelihood, fitted by amortized, forward-solver-free variational inference in NumPyro
(Ilersich & Nair, *Learning Stochastic Multiscale Models*, NeurIPS 2025; the method in our words:
``docs/method.md``).

The stable public API is re-exported here::

    import msde_ppl as msde
    fitted = msde.fit(model, ds, guide, steps=N)          # any program with one SDEPath site
    fc = msde.forecast(rng_key, fitted, ds, split="test", n_samples=64)
    fitted.save(path); fitted = msde.Fitted.load(path)
    tree = msde.diagnostics.to_datatree(fitted, ds, fc)

Everything else is reachable through the subpackages (``data``, ``generative``, ``inference``,
``multiscale``, ``pipeline``, ``predict``, ``diagnostics``) and may change.
"""

import os

# JAX's CPU linear algebra calls OpenBLAS, whose spinning threads fight XLA's: one thread,
# set before jax is first imported
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

from msde_ppl import diagnostics  # noqa: E402
from msde_ppl.data import (  # noqa: E402
    SchemaError,
    from_arrays,
    load,
    make_dataset,
    observations,
    save,
    select_split,
    validate,
)
from msde_ppl.generative import CoarsePDE, ProductOfExpertsNormal, SDEPath  # noqa: E402
from msde_ppl.inference import AutoAmortizedSDE, SolverFreeELBO, tied_encoder  # noqa: E402
from msde_ppl.multiscale import MultiscaleConfig  # noqa: E402
from msde_ppl.pipeline import (  # noqa: E402
    Fitted,
    TrainConfig,
    Validation,
    fit,
    fit_multiscale,
    fit_progressive,
)
from msde_ppl.pipeline.run import fit_data  # noqa: E402
from msde_ppl.predict import forecast, forecast_metrics  # noqa: E402

try:
    __version__ = version("msde_ppl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AutoAmortizedSDE",
    "CoarsePDE",
    "Fitted",
    "MultiscaleConfig",
    "ProductOfExpertsNormal",
    "SDEPath",
    "SchemaError",
    "SolverFreeELBO",
    "TrainConfig",
    "Validation",
    "diagnostics",
    "fit",
    "fit_data",
    "fit_multiscale",
    "fit_progressive",
    "forecast",
    "forecast_metrics",
    "from_arrays",
    "load",
    "make_dataset",
    "observations",
    "save",
    "select_split",
    "tied_encoder",
    "validate",
]
