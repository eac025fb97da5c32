"""Diagnostics: the ArviZ tree of a fit (:mod:`~msde_ppl.diagnostics.arviz_io`, the only module
importing ArviZ), calibration and convergence checks (:mod:`~msde_ppl.diagnostics.checks`),
figures (:mod:`msde_ppl.diagnostics.plots`, imported on its own: it loads matplotlib) and the
report of a run directory (:mod:`msde_ppl.diagnostics.report`)."""

from msde_ppl.diagnostics import checks
from msde_ppl.diagnostics.arviz_io import (
    global_sites,
    load_datatree,
    save_datatree,
    summary,
    to_datatree,
)

__all__ = ["checks", "global_sites", "load_datatree", "save_datatree", "summary", "to_datatree"]
