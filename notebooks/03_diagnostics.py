# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Diagnostics: ArviZ posterior, calibration and convergence
#
# Fit a multiscale model, then: the posterior as an ArviZ `DataTree` (netCDF), an ArviZ summary
# of the physical parameters, the ELBO convergence check, interval coverage against nominal, the
# PIT histogram and the spread–skill ratio. For a run directory of `msde run`, the same is one
# command: `msde report RUN_DIR`.
#
# `MSDE_NOTEBOOK_SMALL=1` gives a smoke-size run (the numbers then mean little).

# %%
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt

import msde_ppl as msde
from msde_ppl.data.cases import KdV1D
from msde_ppl.diagnostics import arviz_io, checks, plots
from msde_ppl.multiscale import config_for

SMALL = os.environ.get("MSDE_NOTEBOOK_SMALL", "0") == "1"
if SMALL:
    N_TRAJ, N_TIME, STEPS, SAMPLES, DRAWS = 3, 101, 40, 16, 50
    SIZES = dict(macro_hidden=(32, 32), micro_hidden=(32,), codec_hidden=(32,))
else:
    N_TRAJ, N_TIME, STEPS, SAMPLES, DRAWS = 20, 1001, 6000, 64, 200
    SIZES = {}

# %%
case = dataclasses.replace(KdV1D(), n_time=N_TIME, t_final=(N_TIME - 1) * 1e-3)
ds = case.generate(N_TRAJ, seed=0)
config = config_for("kdv_1d", case.shape, n_micro=3, **SIZES)
train = msde.TrainConfig(steps=STEPS, window=min(64, N_TIME), chunk_size=min(STEPS, 100))
fitted = msde.fit_multiscale(ds, config, train, progress=not SMALL)
fc = msde.forecast(jax.random.key(0), fitted, ds, split="test", n_samples=SAMPLES,
                   levels=checks.DEFAULT_LEVELS, return_samples=True)

# %% [markdown]
# ## The posterior as an ArviZ DataTree
# Latent paths come from the amortized guide's posterior over a window of 64 snapshots of test
# trajectory 0; the forecast is stored next to it.

# %%
tree = arviz_io.to_datatree(fitted, ds, fc, split="test", traj=0, n_draws=DRAWS)
path = arviz_io.save_datatree(tree, Path(tempfile.mkdtemp()) / "posterior.nc")
tree = arviz_io.load_datatree(path)
tree  # noqa: B018 (notebook display)

# %%
arviz_io.summary(tree)

# %%
fig = plots.plot_forest(tree["posterior"].to_dataset())
plt.show()

# %%
fig = plots.plot_latent_paths(tree["posterior"].to_dataset())
plt.show()

# %% [markdown]
# ## Convergence of the ELBO

# %%
check = checks.elbo_convergence(fitted.losses)
print(check)
fig = plots.plot_elbo_trace(fitted.losses, check)
plt.show()

# %% [markdown]
# ## Calibration: coverage, PIT, spread–skill, CRPS

# %%
curve = checks.coverage_from_bounds(fc)
fig = plots.plot_coverage(curve)
plt.show()

# %% [markdown]
# Neighbouring grid points and lead times share their errors, so the coverage band uses
# batch-means standard errors over blocks (trajectories, or runs of lead times), and the PIT
# test a design-effect correction from 10 runs of consecutive lead times (lead time first).

# %%
pit = checks.pit_histogram(
    checks.pit_values(fc["samples"].transpose("sample", "time", ...),
                      fc["obs"].transpose("time", ...)),
    n_blocks=10,
)
print(f"PIT design effect {pit['design_effect']:.3g}, effective sample size {pit['n_eff']:.0f}")
fig = plots.plot_pit(pit)
plt.show()

# %%
fig = plots.plot_spread_skill(checks.spread_skill(fc))
plt.show()
checks.calibration_summary(fc)

# %%
fig = plots.plot_energy_spectrum(fc)
plt.show()
