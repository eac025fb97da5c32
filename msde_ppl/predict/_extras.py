"""Optional dependencies of the reduced-order baselines (the ``baselines`` extra)."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install -e ".[baselines]"  (or: pip install pydmd pysindy)'


class MissingExtraError(ImportError):
    """An optional dependency of a baseline is not installed."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying which baseline needs it and
    how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"the {what} baseline needs the optional package {module!r}, which is not "
            f"installed ({err}); install the baselines extra: {INSTALL_HINT}") from err
