"""``Fitted``: what it holds, atomic save / load round trips, and named errors on damaged,
foreign or missing files (built-in model, untrained: no training step is compiled)."""

import json

import jax
import numpy as np
import pytest

import msde_ppl as msde
from msde_ppl.multiscale import MultiscaleConfig


def test_fitted_holds_program_guide_and_fitted_networks(tiny_fit):
    assert tiny_fit.path_site == "z" and tiny_fit.obs_site == "y"
    assert tiny_fit.global_sites == ["diffusion", "obs_var_macro", "obs_var_micro"]
    assert isinstance(tiny_fit.config, MultiscaleConfig)
    modules = tiny_fit.modules
    # the fitted networks are the parameter store's, not the initial templates
    stored = tiny_fit.params["drift$params"].macro.mlp.layers[0].weight
    np.testing.assert_array_equal(modules.drift.macro.mlp.layers[0].weight, stored)
    draws = tiny_fit.sample_globals(jax.random.key(0), 7)
    assert draws["diffusion"].shape == (7, 10) and set(draws) == set(tiny_fit.global_sites)
    assert np.all(np.asarray(draws["obs_var_macro"]) > 0)
    assert set(tiny_fit.stale_scales()) == set(tiny_fit.global_sites)  # untrained


def test_save_load_round_trip(tiny_fit, tmp_path):
    path = tiny_fit.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["fitted.json", "losses.npy", "params.eqx"]
    again = msde.Fitted.load(path)
    for a, b in zip(jax.tree.leaves(tiny_fit.params), jax.tree.leaves(again.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.losses, tiny_fit.losses)
    assert again.config == tiny_fit.config and again.grid == tiny_fit.grid
    assert again.latent_parts == tiny_fit.latent_parts
    with pytest.raises(FileExistsError, match="not an empty directory"):
        tiny_fit.save(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_damaged_or_foreign_files_are_named(tiny_fit, tmp_path):
    path = tiny_fit.save(tmp_path / "model")
    data = (path / "params.eqx").read_bytes()
    (path / "params.eqx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="params.eqx does not match"):
        msde.Fitted.load(path)
    other = tiny_fit.save(tmp_path / "edited")
    meta = json.loads((other / "fitted.json").read_text())
    meta["recipe"]["config"]["n_micro"] = 4
    (other / "fitted.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the model"):
        msde.Fitted.load(other)
    (other / "fitted.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        msde.Fitted.load(other)
    with pytest.raises(FileNotFoundError, match="not a saved fitted model"):
        msde.Fitted.load(tmp_path / "missing")


def test_a_user_program_needs_its_code_to_load(tiny_fit, tmp_path):
    user = tiny_fit.replace(recipe=None)
    path = user.save(tmp_path / "user")
    with pytest.raises(ValueError, match="pass the program"):
        msde.Fitted.load(path)
    again = msde.Fitted.load(path, model=tiny_fit.model,
                             guide=msde.AutoAmortizedSDE(tiny_fit.model,
                                                         tiny_fit.modules.encoder,
                                                         kernel="interpolation"))
    np.testing.assert_array_equal(again.params["diffusion_auto_loc"],
                                  tiny_fit.params["diffusion_auto_loc"])
    # the passed guide's default initial scale (0.01) gives way to the fit's (built-in: 0.1),
    # so stale_scales compares the scales with the value they really started from
    assert tiny_fit.guide.init_scale == 0.1 and again.guide.init_scale == 0.1
    assert again.stale_scales() == tiny_fit.stale_scales()


def test_recipe_gives_the_global_scales_larger_steps(tiny_fit):
    """Adam's first step moves every parameter by ~lr (sign of the gradient): the globals'
    posterior scales by global_lr_factor * lr, everything else (their locations included) by lr."""
    import dataclasses

    import jax.numpy as jnp

    from msde_ppl.inference.param_store import global_param_names
    from msde_ppl.pipeline.training import TrainConfig, _check_train, _objective

    train = dataclasses.replace(TrainConfig(), global_lr_factor=7.0)
    _, optimizer, _ = _objective(train, tiny_fit.guide)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in tiny_fit.params.items()
              if isinstance(v, jax.Array | np.ndarray)}  # the arrays (networks are modules)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    scales = {global_param_names(s)[1] for s in tiny_fit.global_sites}
    locs = {global_param_names(s)[0] for s in tiny_fit.global_sites}
    assert scales and locs
    for name, step in updates.items():
        expected = 7.0 * train.lr if name in scales else train.lr
        np.testing.assert_allclose(np.abs(np.asarray(step)), expected, rtol=1e-3, err_msg=name)
    with pytest.raises(ValueError, match="global_lr_factor"):
        _check_train(dataclasses.replace(train, global_lr_factor=0.0))


def test_fits_saved_before_the_trend_step_gain_load_with_their_hyperparameters():
    """Files written before kernels had a step gain hold the hyperparameters in gain-1 units;
    loading converts them, so the trend's lengthscale, amplitude and nugget are the fitted
    ones; a kernel of gain 1 (the built-in interpolation) is left as it is."""
    import equinox as eqx

    from msde_ppl.inference.kernel import TemporalKernel
    from msde_ppl.inference.markov import TREND_STEP_GAIN, OUSmoother
    from msde_ppl.pipeline.fitted import _from_unit_step_gain

    trend = TemporalKernel(hidden_size=0, step_gain=TREND_STEP_GAIN, key=jax.random.key(1))
    trend = eqx.tree_at(lambda k: k.raw_amplitude, trend, trend.raw_amplitude - 0.3)
    fitted = {"z_kernel$params": OUSmoother((3,), trend=trend),
              "other_kernel$params": TemporalKernel(hidden_size=0, key=jax.random.key(2))}
    g = TREND_STEP_GAIN
    old = {"z_kernel$params": eqx.tree_at(
        lambda s: (s.trend.raw_lengthscale, s.trend.raw_amplitude, s.trend.raw_nugget),
        fitted["z_kernel$params"], (g * trend.raw_lengthscale, g * trend.raw_amplitude,
                                    g * trend.raw_nugget)),
        "other_kernel$params": fitted["other_kernel$params"]}
    loaded = _from_unit_step_gain(old)
    np.testing.assert_allclose(loaded["z_kernel$params"].trend.hyperparameters(16),
                               trend.hyperparameters(16), rtol=1e-6)
    assert loaded["other_kernel$params"] is old["other_kernel$params"]
