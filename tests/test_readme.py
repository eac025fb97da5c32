"""The README's Quickstart runs as written (with fewer training steps) and stays short."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    """The first ```python block under the '## Quickstart' heading."""
    text = README.read_text()
    section = text.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quickstart_is_short_and_self_contained():
    code = quickstart_code()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 25
    assert "msde.from_arrays" in code and "msde.forecast" in code and ".savefig(" in code


def test_quickstart_runs_and_draws_its_figure(tmp_path):
    code = quickstart_code()
    # a smoke-size fit: the same calls, fewer steps (the figure and metrics are still made)
    small, n = re.subn(r"steps=\d+", "steps=80", code)
    assert n == 1
    script = tmp_path / "quickstart.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + small)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rel_l2_mean" in run.stdout
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000
    # progress is reported even though stderr is not a terminal
    assert "compiling" in run.stderr and "stage 2/2, multiscale K=2: step 60/60" in run.stderr


def test_results_table_is_the_output_of_msde_table():
    """The README's summary table is the paper-style table `msde table` wrote into
    benchmarks/results/table/table.md, copied verbatim (no hand-edited numbers)."""
    table_md = README.parent / "benchmarks" / "results" / "table" / "table.md"
    rows = table_md.read_text().split("(ours / the reference's):\n\n", 1)[1].split("\n\n")[0]
    assert rows.startswith("| case |") and rows.count("\n") >= 3
    results = README.read_text().split("\n## Results", 1)[1].split("\n## ", 1)[0]
    assert rows in results
