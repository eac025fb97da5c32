"""Every example program in ``models/`` runs with tiny flags (in a subprocess, as a user would)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = {
    "ou_two_scale.py": ["--steps", "20", "--n-time", "64"],
    "multiscale.py": ["--n-traj", "3", "--n-time", "101", "--steps", "20",
                      "--micro-steps", "20", "--samples", "8"],
    "implicit_scale.py": ["--n-traj", "3", "--n-time", "101", "--steps", "20", "--samples", "8"],
    "physics_informed.py": ["--n-traj", "3", "--n-time", "101", "--steps", "20",
                            "--samples", "8"],
}


def test_every_example_has_tiny_flags():
    assert {p.name for p in (ROOT / "models").glob("*.py")} == set(TINY_FLAGS)


@pytest.mark.slow  # ~20-40 s each; the programs they drive are covered by the default tests
@pytest.mark.parametrize("name", sorted(TINY_FLAGS))
def test_example_runs(name):
    out = subprocess.run([sys.executable, str(ROOT / "models" / name), *TINY_FLAGS[name]],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
