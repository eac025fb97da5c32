"""The built-in multiscale model: its NumPyro program and config, and progressive growth of its
micro dimension (parameter surgery)."""

from msde_ppl.multiscale.program import (
    CASE_CONFIGS,
    PATH_SITE,
    MultiscaleConfig,
    MultiscaleModules,
    build_modules,
    config_for,
    fitted_modules,
    multiscale_model,
)
from msde_ppl.multiscale.surgery import grow_modules, grown_global_values

__all__ = ["CASE_CONFIGS", "PATH_SITE", "MultiscaleConfig", "MultiscaleModules", "build_modules",
           "config_for", "fitted_modules", "grow_modules", "grown_global_values",
           "multiscale_model"]
