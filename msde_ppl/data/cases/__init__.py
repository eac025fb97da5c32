"""Built-in test cases, each a seed-deterministic JAX solver following docs/method.md §7"""

from msde_ppl.data.cases._base import PDECase, split_counts
from msde_ppl.data.cases.burgers_1d import Burgers1D
from msde_ppl.data.cases.burgers_2d import Burgers2D
from msde_ppl.data.cases.cylinder_2d import Cylinder2D
from msde_ppl.data.cases.kdv_1d import KdV1D
from msde_ppl.data.cases.shallow_water_2d import ShallowWater2D
from msde_ppl.data.cases.wave_1d import Wave1D

CASES: dict[str, PDECase | Cylinder2D] = {
    case.name: case for case in (KdV1D(), Wave1D(), Burgers1D(), Burgers2D(), ShallowWater2D(),
                                 Cylinder2D())
}
DEFAULT_CASE = "kdv_1d"


def get_case(name: str) -> PDECase:
    """The built-in case called ``name``; the error lists the known names."""
    try:
        return CASES[name]
    except KeyError:
        known = ", ".join(sorted(CASES))
        raise ValueError(f"unknown case {name!r}; built-in cases are: {known}") from None


__all__ = [
    "CASES",
    "DEFAULT_CASE",
    "Burgers1D",
    "Burgers2D",
    "Cylinder2D",
    "KdV1D",
    "PDECase",
    "ShallowWater2D",
    "Wave1D",
    "get_case",
    "split_counts",
]
