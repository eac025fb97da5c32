"""msde_ppl: learning stochastic multiscale models from data.

A coarse-grid macroscale SDE state, a small microscale auxiliary state and a product-of-experts
likelihood, fitted by amortized, forward-solver-free variational inference in NumPyro
(Ilersich & Nair, *Learning Stochastic Multiscale Models*, NeurIPS 2025).

The stable public API is re-exported here; everything else is private.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("msde_ppl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
