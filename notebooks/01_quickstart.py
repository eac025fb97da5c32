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
# # Quickstart: a stochastic multiscale model of KdV data
#
# Generate the built-in Korteweg–de Vries dataset, fit the implicit-scale model and grow it into
# the multiscale model (coarse-grid latent SDE + micro state + product-of-experts likelihood),
# then forecast the test trajectories with an ensemble and look at the uncertainty.
#
# Set `MSDE_NOTEBOOK_SMALL=1` for a seconds-long smoke run (3 trajectories, 101 snapshots,
# tens of steps); the full size takes tens of minutes on a 2-core CPU.

# %%
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses

import jax
import matplotlib.pyplot as plt

import msde_ppl as msde
from msde_ppl.data.cases import KdV1D
from msde_ppl.diagnostics import plots
from msde_ppl.multiscale import config_for

SMALL = os.environ.get("MSDE_NOTEBOOK_SMALL", "0") == "1"
if SMALL:
    N_TRAJ, N_TIME, STEPS, MICRO_STEPS, SAMPLES = 3, 101, 20, 20, 16
    SIZES = dict(macro_hidden=(32, 32), micro_hidden=(32,), codec_hidden=(32,))
else:
    N_TRAJ, N_TIME, STEPS, MICRO_STEPS, SAMPLES = 20, 1001, 3000, 6000, 64
    SIZES = {}

# %% [markdown]
# ## Data
# `u` has dims `(traj, time, x)`, noisy observations; `u_clean` is the noise-free field.

# %%
case = dataclasses.replace(KdV1D(), n_time=N_TIME, t_final=(N_TIME - 1) * 1e-3)
ds = case.generate(N_TRAJ, seed=0)
ds  # noqa: B018 (notebook display)

# %% [markdown]
# ## Fit: implicit-scale stage, then the multiscale model (micro dimension 5)

# %%
config = config_for("kdv_1d", case.shape, n_micro=5, **SIZES)
window = min(64, N_TIME)
stages = [
    (0, msde.TrainConfig(steps=STEPS, window=window, chunk_size=min(STEPS, 100))),
    (5, msde.TrainConfig(steps=MICRO_STEPS, window=window, warmup_steps=0,
                         chunk_size=min(MICRO_STEPS, 100))),
]
implicit, multiscale = msde.fit_progressive(ds, config, stages, progress=not SMALL)
multiscale  # noqa: B018 (notebook display: a msde.Fitted)
print(f"final loss {multiscale.losses[-1]:.4f} after {STEPS} + {MICRO_STEPS} steps")

# %% [markdown]
# ## Forecast the test trajectories from their first snapshot

# %%
fc = msde.forecast(jax.random.key(0), multiscale, ds, split="test", n_samples=SAMPLES)
msde.forecast_metrics(fc, ds.attrs.get("eval_steps"))

# %% [markdown]
# ## Uncertainty: space-time panels, time slices with 5–95% bands, macro/micro decomposition

# %%
fig = plots.plot_space_time(fc, 0, title="multiscale model, test trajectory 0")
plt.show()

# %%
fig = plots.plot_time_slices(fc, 0)
plt.show()

# %%
fig = plots.plot_decomposition(fc, 0)
plt.show()
