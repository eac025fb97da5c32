"""The notebooks execute end to end with the small-size switch (jupytext -> nbformat ->
nbclient, in a kernel of THIS interpreter registered in a temporary Jupyter path).

Each takes 35-55 s on the 2-core box (JIT compilation dominates), so they are ``slow``.
"""

import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.py"))
KERNEL = "msde-test-python3"


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A kernelspec for ``sys.executable`` (the venv) in a temporary Jupyter data dir, so no
    user-level ``ipykernel install`` is needed."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(path=root / "kernels" / KERNEL,
                      overrides={"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                          "{connection_file}"],
                                 "display_name": "msde test kernel"})
    return root


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.py", "02_write_a_model_variant.py",
                                           "03_diagnostics.py"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, kernel_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("MSDE_NOTEBOOK_SMALL", "1")
    # the notebooks' figures must show under Jupyter's own (inline) backend
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = jupytext.read(path)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("display_data", "execute_result") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "no figure was displayed (inline backend)"


def test_plots_leave_the_matplotlib_backend_alone():
    import subprocess

    code = ("import matplotlib; matplotlib.use('svg'); import msde_ppl.diagnostics.plots; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "svg"
