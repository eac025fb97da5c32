"""Generative building blocks: the SDE path distribution (grids and operators live alongside)."""

from msde_ppl.generative.sde_path import SDEPath as SDEPath

__all__ = ["SDEPath"]
