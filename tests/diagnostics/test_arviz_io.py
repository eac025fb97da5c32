"""The ArviZ tree of a fit: groups, dims and coords, consistency with the guide, netCDF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from msde_ppl.data import observations
from msde_ppl.diagnostics import arviz_io

START, WINDOW, N_DRAWS = 2, 8, 400
N_MACRO, N_MICRO = 8, 2  # tests/diagnostics/conftest.py::TINY


def test_groups_dims_and_coords(tiny_tree, tiny_ds, tiny_fit):
    tree = tiny_tree
    assert {"posterior", "posterior_predictive", "observed_data", "log", "forecast"} <= set(
        tree.children)
    post = tree["posterior"].to_dataset()
    expected = {
        "diffusion": ("chain", "draw", "diffusion_dim_0"),
        "obs_var_macro": ("chain", "draw", "obs_var_macro_dim_0"),
        "obs_var_micro": ("chain", "draw", "obs_var_micro_dim_0"),
        "zeta": ("chain", "draw", "time", "coarse_x"),
        "eta": ("chain", "draw", "time", "micro"),
        "y_mean": ("chain", "draw", "time", "x"),
        "macro": ("chain", "draw", "time", "x"),
        "micro_part": ("chain", "draw", "time", "x"),
    }
    assert {k: post[k].dims for k in expected} == expected
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == N_DRAWS
    np.testing.assert_array_equal(post["time"], tiny_ds["time"].values[START:START + WINDOW]
                                  .astype(np.float32))
    np.testing.assert_array_equal(post["x"], tiny_ds["x"].values)
    np.testing.assert_array_equal(post["coarse_x"], tiny_ds["x"].values[::8])  # node k at 8k
    np.testing.assert_array_equal(post["micro"], [0, 1])
    assert post.sizes["coarse_x"] == N_MACRO and post.sizes["micro"] == N_MICRO
    pp = tree["posterior_predictive"].to_dataset()
    assert pp["y"].dims == ("chain", "draw", "time", "x")
    obs = tree["observed_data"].to_dataset()
    y, _ = observations(tiny_ds, "test")
    np.testing.assert_array_equal(obs["y"].values, y[0, START:START + WINDOW, 0])
    assert obs["y"].dims == ("time", "x") and "y_clean" in obs
    np.testing.assert_array_equal(tree["log"]["loss"].values, tiny_fit.losses)
    assert tree.attrs["window_start"] == START and tree.attrs["window_length"] == WINDOW
    assert arviz_io.global_sites(tree) == ["diffusion", "obs_var_macro", "obs_var_micro"]


def test_latent_split_and_decoding_are_consistent(tiny_tree, tiny_fit, tiny_ds):
    """zeta is the first n_macro coordinates (P zeta reproduces ``macro`` draw by draw), and the
    draws' mean is the guide's posterior median m(t) within Monte Carlo error."""
    post = tiny_tree["posterior"].to_dataset()
    encoder = tiny_fit.modules.encoder
    zeta = jnp.asarray(post["zeta"].values[0, :5])  # (5, T, 8)
    macro = jax.vmap(jax.vmap(lambda z: encoder.scale.prolong(z[None])[0]))(zeta)
    np.testing.assert_allclose(macro, post["macro"].values[0, :5], rtol=1e-5, atol=1e-6)
    # the decoded mean is the macro part plus the weighted micro part (product of experts)
    np.testing.assert_allclose(post["y_mean"].values, post["macro"] + post["micro_part"],
                               rtol=1e-5, atol=1e-6)

    guide, params = tiny_fit.guide, tiny_fit.params
    y, t = observations(tiny_ds, "test")
    window = slice(START, START + WINDOW)
    median = guide.median(params, y=jnp.asarray(y[:1, window]), times=jnp.asarray(t[None, window]))
    m = np.asarray(median["z"])[0]  # (T, n_z)
    draws = np.concatenate([post["zeta"].values[0], post["eta"].values[0]], axis=-1)
    sd = draws.std(0)
    assert np.all(np.abs(draws.mean(0) - m) < 5 * sd / np.sqrt(N_DRAWS))


def test_global_parameter_summary_matches_lognormal_posterior(tiny_tree, tiny_fit):
    table = arviz_io.summary(tiny_tree, warn=False)
    assert len(table) == (N_MACRO + N_MICRO) + 2  # diffusion per latent coordinate, 2 obs variances
    assert {"mean", "sd"} <= set(table.columns)
    # LogNormal(loc, scale) moments from the guide's own quantiles (median = exp(loc), the
    # 84% quantile = exp(loc + scale))
    q = tiny_fit.global_quantiles([0.5, 0.8413447])["diffusion"]
    loc, scale = np.log(np.asarray(q[0])), np.log(np.asarray(q[1] / q[0]))
    mean = np.exp(loc + scale**2 / 2)
    sd = mean * np.sqrt(np.expm1(scale**2))
    got = table["mean"].to_numpy()[: (N_MACRO + N_MICRO)]
    assert np.all(np.abs(got - mean) < 5 * sd / np.sqrt(N_DRAWS))


def test_summary_flags_scales_left_at_their_initial_value(tiny_tree, tiny_fit):
    stale = tiny_fit.stale_scales()
    assert stale, "a few-step fit leaves some scales at their initial value"
    with pytest.warns(UserWarning, match="initial value") as record:
        table = arviz_io.summary(tiny_tree)
    assert all(name in str(record[0].message) for name in stale)
    site = table.index.map(lambda i: str(i).split("[")[0])
    np.testing.assert_array_equal(table["scale_at_init"].to_numpy(), site.isin(list(stale)))


def test_netcdf_round_trip(tiny_tree, tmp_path):
    path = arviz_io.save_datatree(tiny_tree, tmp_path / "posterior.nc")
    again = arviz_io.load_datatree(path)
    assert set(again.children) == set(tiny_tree.children)
    for name in tiny_tree.children:
        xr.testing.assert_identical(again[name].to_dataset(), tiny_tree[name].to_dataset())
    assert again.attrs["window_length"] == WINDOW
    with pytest.raises(FileExistsError):
        arviz_io.save_datatree(tiny_tree, path)


def test_window_out_of_range_is_refused(tiny_fit, tiny_ds):
    with pytest.raises(ValueError, match="does not fit"):
        arviz_io.to_datatree(tiny_fit, tiny_ds, start=20, window=8)
    with pytest.raises(ValueError, match="out of range"):
        arviz_io.to_datatree(tiny_fit, tiny_ds, traj=3)
