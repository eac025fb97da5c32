"""Shared tiny problem of the tests: a 64-point advected bump and an untrained (but complete)
multiscale model, built without compiling a training step."""

import jax
import numpy as np
import optax

from msde_ppl import Fitted
from msde_ppl.data import from_arrays, observations
from msde_ppl.inference import SolverFreeELBO, init
from msde_ppl.multiscale import MultiscaleConfig
from msde_ppl.pipeline.builtin import build_program, latent_parts, multiscale_recipe
from msde_ppl.pipeline.fitted import grid_info

TINY = MultiscaleConfig(fine_shape=(64,), coarse_shape=(8,), n_micro=2, macro_hidden=(8,),
                        micro_hidden=(8,), codec_hidden=(8,))
N_TIME = 24


def tiny_dataset(n_time: int = N_TIME, split=("train", "val", "test")) -> "xr.Dataset":  # noqa: F821
    """Advected periodic bumps on 64 points, one trajectory per ``split`` label."""
    x = np.arange(64) / 64
    t = np.arange(n_time) * 0.01
    rng = np.random.default_rng(0)
    shifts = rng.uniform(0, 1, len(split))
    clean = np.exp(-((np.mod(x[None, None] - t[None, :, None] - shifts[:, None, None] + 0.5, 1)
                      - 0.5) ** 2) / 0.01)
    noisy = clean + 0.01 * rng.normal(size=clean.shape)
    return from_arrays(noisy.astype(np.float32), time=t, x=x, u_clean=clean.astype(np.float32),
                       split=list(split), noise_std=0.01)


def untrained_fit(ds, config: MultiscaleConfig = TINY, n_losses: int = 60) -> Fitted:
    """A Fitted model at the initial parameters (the guide and model traced once, no jit),
    with a synthetic decaying loss trace."""
    recipe = multiscale_recipe(config, 4)
    model, guide = build_program(recipe, key=jax.random.key(0))
    y, t = observations(ds, "train")
    batch = {"y": y[:1, :8], "times": t[None, :8]}
    problem, state = init(jax.random.key(1), model, guide, SolverFreeELBO(normalize=True),
                          optax.adam(1e-3), batch)
    params = jax.tree.map(np.asarray, problem.constrain(state.params))
    losses = 1.0 + np.exp(-np.arange(n_losses) / 10.0)
    return Fitted(model, guide, params, losses=losses, grid=grid_info(ds), recipe=recipe,
                  latent_parts=latent_parts(config))


