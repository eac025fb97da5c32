"""Model programs (NumPyro) built from the generative pieces."""

from msde_ppl.models.multiscale import (
    CASE_CONFIGS,
    MultiscaleConfig,
    MultiscaleModules,
    build_modules,
    multiscale_model,
)

__all__ = ["CASE_CONFIGS", "MultiscaleConfig", "MultiscaleModules", "build_modules",
           "multiscale_model"]
