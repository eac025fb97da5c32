"""Shared fixtures for inference tests: the two-scale OU model file is the oracle."""

import importlib.util
import pathlib
import sys

import pytest

_MODEL_FILE = pathlib.Path(__file__).resolve().parents[2] / "models" / "ou_two_scale.py"


def load_ou_module():
    """Import ``models/ou_two_scale.py`` (not a package) by path."""
    spec = importlib.util.spec_from_file_location("ou_two_scale", _MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (equinox) look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ou():
    """The two-scale OU model module."""
    return load_ou_module()
