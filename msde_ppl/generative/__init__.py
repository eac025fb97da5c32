"""Generative building blocks: the SDE path distribution, the product-of-experts likelihood, scale
operators, drifts (stencil, micro, physics operators) and micro codecs."""

from msde_ppl.generative.likelihood import ProductOfExpertsNormal as ProductOfExpertsNormal
from msde_ppl.generative.physics import CoarsePDE as CoarsePDE
from msde_ppl.generative.sde_path import SDEPath as SDEPath

__all__ = ["CoarsePDE", "ProductOfExpertsNormal", "SDEPath"]
