"""Diagnostics: the ArviZ tree of a fit (:mod:`~msde_ppl.diagnostics.arviz_io`, the only module
importing ArviZ), calibration and convergence checks (:mod:`~msde_ppl.diagnostics.checks`),
figures (:mod:`msde_ppl.diagnostics.plots`, imported on first use: it loads matplotlib) and the
report of a run directory (:mod:`msde_ppl.diagnostics.report`)."""

import importlib

from msde_ppl.diagnostics import checks
from msde_ppl.diagnostics.arviz_io import (
    global_sites,
    load_datatree,
    save_datatree,
    summary,
    to_datatree,
)

__all__ = ["checks", "global_sites", "load_datatree", "plots", "report", "save_datatree", "summary",
           "to_datatree"]


def __getattr__(name: str):
    """``msde_ppl.diagnostics.plots`` / ``.report``: imported when first used (matplotlib)."""
    if name in ("plots", "report"):
        return importlib.import_module(f"msde_ppl.diagnostics.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
