"""The ``msde`` command line: the documented commands work, bad arguments are refused clearly."""

import json
import subprocess
import sys

import pytest

from msde_ppl.cli import main
from msde_ppl.data import load


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "msde_ppl.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_help_documents_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("data", "run"):
        assert command in out.stdout
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "--out" in sub.stdout and "--seed" in sub.stdout


def test_data_writes_a_valid_file_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "w.nc"
    assert main(["data", "wave_1d", "--out", str(out), "--n-traj", "3", "--seed", "2"]) == 0
    ds = load(out)
    assert ds.sizes["traj"] == 3 and ds.attrs["case"] == "wave_1d" and ds.attrs["seed"] == 2
    before = out.read_bytes()
    assert main(["data", "wave_1d", "--out", str(out), "--n-traj", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["data", "navier_stokes", "--out", "x.nc"], "unknown case 'navier_stokes'"),
    (["data", "kdv_1d", "--out", "x.nc", "--n-traj", "0"], "positive integer"),
    (["data", "kdv_1d", "--out", "x.nc", "--seed", "-1"], "integer >= 0"),
    (["data", "kdv_1d"], "--out"),
    (["run", "navier_stokes"], "unknown case 'navier_stokes'"),
])
def test_bad_arguments_are_refused(tmp_path, args, message):
    out = run_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_run_writes_report_and_refuses_existing_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("run", "burgers_1d", "--n-traj", "3", "--out", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert str(run_dir / "metrics.json") in out.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dns = metrics["coarse_dns"]
    for key in ("rel_l2_mean", "rel_l2_std", "rel_l2_clean_mean", "rel_l2_clean_std"):
        assert 0 < dns[key] < 2
    assert metrics["meta"]["dataset"] == "burgers_1d" and metrics["meta"]["grid"] == [1000]
    assert load(run_dir / "data.nc").sizes["traj"] == 3
    again = run_cli("run", "burgers_1d", "--out", str(run_dir))
    assert again.returncode == 2 and "already exists" in again.stderr
