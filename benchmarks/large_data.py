"""Large data (issue: the paper's 2D cases, item 4): a dam-break dataset of the reference's size
(900 training trajectories, ~12 GB of float32 with the clean field) is written and trained on
with bounded memory.

1. ``msde data shallow_water_2d --n-traj 1000`` writes the file a batch of trajectories at a
   time (:func:`msde_ppl.data.io.save_batches`);
2. ``msde fit`` on it: the file is opened lazily (it exceeds ``LAZY_BYTES``), validated, hashed
   and ranged a block of trajectories at a time, and every training step reads its window
   from the file (:class:`msde_ppl.data.blocks.WindowReader`);

each in a fresh process whose peak resident memory (``ru_maxrss``) is recorded. Writes
``benchmarks/results/large_data.{json,md}``.

    python benchmarks/large_data.py --n-traj 1000 --steps 400
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(r.returncode)")


def measured(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process; its wall time, peak resident memory and output tail."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    peak = [int(line.split()[1]) for line in lines if line.startswith("PEAK_KB")]
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {"command": " ".join(cmd), "wall_s": wall, "peak_rss_gib": peak[-1] / 2**20,
            "output": [line for line in lines if not line.startswith("PEAK_KB")][-4:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-traj", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--work", default="/tmp/msde-large-data", help="scratch folder")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "shallow_water_2d_large.nc"
    msde = [sys.executable, "-m", "msde_ppl.cli"]
    out = {"n_traj": args.n_traj, "load_average": os.getloadavg()}
    out["data"] = measured([*msde, "data", "shallow_water_2d", "--n-traj", str(args.n_traj),
                            "--out", str(data), "--overwrite"])
    out["file_gib"] = data.stat().st_size / 2**30
    import xarray as xr

    with xr.open_dataset(data, engine="h5netcdf") as ds:
        out["u_gib_float32"] = ds["u"].nbytes / 2**30
        out["u_and_clean_gib_float32"] = (ds["u"].nbytes + ds["u_clean"].nbytes) / 2**30
        out["train_traj"] = int((ds["split"].values == "train").sum())
    fit_dir = work / "fit"
    if fit_dir.exists():
        import shutil

        shutil.rmtree(fit_dir)
    out["fit"] = measured([*msde, "fit", "--data", str(data), "--coarse", "8", "8", "--micro",
                           "5", "--steps", str(args.steps), "--no-validation", "--out",
                           str(fit_dir)])
    losses = __import__("numpy").load(fit_dir / "losses.npy")
    out["fit_losses_first_last"] = [float(losses[:20].mean()), float(losses[-20:].mean())]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "large_data.json").write_text(json.dumps(out, indent=2))
    md = [
        "# Large data: a dam-break file of the reference's size, bounded memory",
        "",
        f"`python benchmarks/large_data.py --n-traj {args.n_traj} --steps {args.steps}`; load "
        f"average at the start {out['load_average'][0]:.2f}.",
        "",
        f"- file: {args.n_traj} trajectories ({out['train_traj']} train) x 101 frames x "
        f"128 x 128; `u` {out['u_gib_float32']:.2f} GiB as float32, with `u_clean` "
        f"{out['u_and_clean_gib_float32']:.2f} GiB; {out['file_gib']:.2f} GiB on disk (zlib)",
        "",
        "| step | wall time | peak resident memory |",
        "|---|---|---|",
        f"| `msde data` (written a batch at a time) | {out['data']['wall_s']:.0f} s | "
        f"{out['data']['peak_rss_gib']:.2f} GiB |",
        f"| `msde fit --steps {args.steps}` (lazy file, windows read per step) | "
        f"{out['fit']['wall_s']:.0f} s | {out['fit']['peak_rss_gib']:.2f} GiB |",
        "",
        f"Loss (mean of the first / last 20 steps): {out['fit_losses_first_last'][0]:.3f} / "
        f"{out['fit_losses_first_last'][1]:.3f}.",
    ]
    (RESULTS / "large_data.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
