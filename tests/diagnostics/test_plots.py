"""Every plot function returns a labelled figure on small inputs, without warnings."""

import jax
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from msde_ppl.diagnostics import checks, plots


def _labelled(fig: Figure) -> None:
    """Every panel has an x label and a title (or the figure a suptitle); the figure has a y
    label (panels sharing y label the first one only)."""
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for ax in panels:
        assert ax.get_xlabel(), f"unlabelled x axis in {ax.get_title()!r}"
        assert ax.get_title() or fig._suptitle is not None
    assert any(ax.get_ylabel() for ax in panels)


def _figures(fc, tree):
    post = tree["posterior"].to_dataset()
    curve = checks.coverage_curve(fc["samples"], fc["obs"], (0.5, 0.9))
    pit = checks.pit_histogram(checks.pit_values(fc["samples"].transpose("sample", ...),
                                                 fc["obs"]))
    losses = tree["log"]["loss"].values
    return {
        "space_time": lambda: plots.plot_space_time(fc, 0, title="tiny"),
        "decomposition": lambda: plots.plot_decomposition(fc, 0, n_times=2),
        "time_slices": lambda: plots.plot_time_slices(fc, 0, n_times=3),
        "spectrum": lambda: plots.plot_energy_spectrum(fc),
        "latent_paths": lambda: plots.plot_latent_paths(post, n_nodes=3),
        "forest": lambda: plots.plot_forest(post),
        "elbo": lambda: plots.plot_elbo_trace(losses, checks.elbo_convergence(losses)),
        "elbo_no_check": lambda: plots.plot_elbo_trace(losses[:3]),
        "coverage": lambda: plots.plot_coverage(curve),
        "pit": lambda: plots.plot_pit(pit),
        "spread_skill": lambda: plots.plot_spread_skill(checks.spread_skill(fc)),
    }


NAMES = ["space_time", "decomposition", "time_slices", "spectrum", "latent_paths", "forest",
         "elbo", "elbo_no_check", "coverage", "pit", "spread_skill"]


def test_every_plot_is_covered():
    called = {"space_time", "decomposition", "time_slices", "energy_spectrum", "latent_paths",
              "forest", "elbo_trace", "coverage", "pit", "spread_skill",
              "field_maps", "radial_profile",  # the 2D ones: test_field_maps_and_radial...
              "vorticity"}  # test_vorticity_...
    assert set(plots.__all__) - {"vorticity"} == {f"plot_{n}" for n in called}


@pytest.mark.parametrize("name", NAMES)
def test_plot_returns_a_labelled_figure(name, tiny_fc, tiny_tree, tmp_path):
    fig = _figures(tiny_fc, tiny_tree)[name]()
    assert isinstance(fig, Figure) and fig.axes
    _labelled(fig)
    fig.savefig(tmp_path / f"{name}.png", dpi=60)  # drawing must not warn either
    plt.close(fig)


def test_forest_refuses_unknown_variables(tiny_tree):
    with pytest.raises(ValueError, match="none of"):
        plots.plot_forest(tiny_tree["posterior"].to_dataset(), var_names=["nope"])


def test_implicit_scale_latent_paths_have_one_panel(tiny_tree):
    post = tiny_tree["posterior"].to_dataset().drop_vars(["eta", "obs_var_micro", "micro_part",
                                                          "macro", "y_mean"])
    fig = plots.plot_latent_paths(post)  # one column of small multiples: the macro nodes
    fig.canvas.draw()
    assert len({round(ax.get_position().x0, 3) for ax in fig.axes}) == 1
    assert all("ζ" in ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)
    fig = plots.plot_forest(post)
    assert len(fig.axes[0].get_yticks()) == post.sizes["diffusion_dim_0"] + 1
    plt.close(fig)


def test_spectrum_of_a_single_mode():
    """A pure cosine of mode 3 with amplitude a has energy a^2/4 at k = 3 and ~0 elsewhere."""
    x = np.arange(32) / 32
    u = 0.8 * np.cos(2 * np.pi * 3 * x)
    power = plots._spectrum(u[None], axis=1)
    np.testing.assert_allclose(power[3], 0.8**2 / 4, rtol=1e-10)
    assert np.delete(power, 3).max() < 1e-20


def _forecast_2d(n: int = 16, n_time: int = 5):
    """A radially symmetric 2D 'forecast' on [-1, 1]^2: obs = r, mean = r + 0.1, std = 0.1."""
    import xarray as xr

    x = np.linspace(-1, 1, n)
    r = np.hypot(x[:, None], x[None, :])
    field = np.broadcast_to(r, (1, n_time, n, n))
    dims = ("traj", "time", "x", "y")
    data = {"obs": field, "obs_u_clean": field, "mean": field + 0.1,
            "std": 0.1 + 0 * field, "q05": field - 0.1, "q95": field + 0.3}
    return xr.Dataset({k: (dims, v) for k, v in data.items()},
                      coords={"time": np.arange(n_time) * 0.1, "x": x, "y": x})


def test_field_maps_and_radial_profile_of_2d_forecasts():
    fc = _forecast_2d()
    fig = plots.plot_field_maps(fc, 0, n_times=3, title="maps")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 12 and panels[0].get_title() == "t = 0"
    # each row names its field, then the coordinate of its vertical axis
    assert [panels[3 * r].get_ylabel() for r in range(4)] == [
        "observed\ny", "forecast mean\ny", "forecast std\ny", "|error|\ny"]
    plt.close(fig)
    fig = plots.plot_radial_profile(fc, 0, n_times=2)
    _labelled(fig)
    line = [ln for ln in fig.axes[0].lines if ln.get_label() == "forecast mean"][0]
    radius, value = line.get_data()
    # the azimuthal average of r + 0.1 over a bin is its mean radius + 0.1 (within a bin)
    np.testing.assert_allclose(value[radius < 0.8], radius[radius < 0.8] + 0.1,
                               atol=float(fc["x"][1] - fc["x"][0]))
    plt.close(fig)
    with pytest.raises(ValueError, match="needs 2D data"):
        plots.plot_field_maps(fc.isel(y=0), 0)


def _velocity(u, v, x, y, times=(0.0,)):
    import xarray as xr

    data = np.stack([u, v])[None].repeat(len(times), 0)  # (time, field, x, y)
    return xr.DataArray(data, dims=("time", "field", "x", "y"),
                        coords={"time": list(times), "field": ["u", "v"], "x": x, "y": y})


def test_vorticity_of_solid_rotation_and_of_a_shear_wave():
    """Solid rotation u = -W y, v = W x has vorticity 2W (exact for central differences);
    u = sin(y), v = 0 has -cos(y), to O(h^2) inside and O(h) at the edges."""
    x, y = np.linspace(-1, 1, 21), np.linspace(-0.5, 0.5, 11)
    X, Y = np.meshgrid(x, y, indexing="ij")
    w = plots.vorticity(_velocity(-0.7 * Y, 0.7 * X, x, y))
    assert w.dims == ("time", "x", "y")
    np.testing.assert_allclose(w.values, 1.4, atol=1e-12)
    y = np.linspace(0, 2 * np.pi, 101)
    h = y[1] - y[0]
    U = np.sin(y)[None].repeat(x.size, 0)
    w = plots.vorticity(_velocity(U, 0 * U, x, y)).values[0]
    exact = np.broadcast_to(-np.cos(y[1:-1]), w[:, 1:-1].shape)  # error cos(y)(1 - sin h / h)
    np.testing.assert_allclose(w[:, 1:-1], exact, rtol=0, atol=h**2 / 6 * 1.01)
    with pytest.raises(ValueError, match="'u' and 'v'"):
        plots.vorticity(_velocity(X, Y, x, np.linspace(-0.5, 0.5, 11)).isel(field=[0]))


def test_vorticity_figure_rows_and_std_of_the_members():
    """Truth / mean / std rows at three times; members differing by a uniform rotation rate
    have a vorticity std of exactly 2 x the std of the rates."""
    import xarray as xr

    x, y = np.linspace(-1, 1, 21), np.linspace(-0.5, 0.5, 11)
    X, Y = np.meshgrid(x, y, indexing="ij")
    times = np.arange(5) * 0.1
    obs = _velocity(-Y, X, x, y, times)
    rates = np.array([0.5, 1.0, 1.5])
    samples = xr.concat([obs * r for r in rates], "sample")
    fig = plots.plot_vorticity(obs, samples, title="vorticity")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 9 and [ax.get_title() for ax in panels[:3]] == [
        "t = 0.1", "t = 0.2", "t = 0.4"]
    assert [panels[3 * r].get_ylabel().split("\n")[0] for r in range(3)] == [
        "truth", "forecast mean", "forecast std"]
    std = panels[6].collections[0].get_array()
    np.testing.assert_allclose(std, 2 * rates.std(), atol=1e-12)
    assert panels[6].get_xlabel() == "x" and panels[1].get_xlabel() == ""
    plt.close(fig)


def test_msde_run_draws_the_vorticity_of_a_velocity_forecast(tmp_path):
    """`msde run`'s vorticity figure for two-field (u, v) data, from a forecast that keeps its
    members (an untrained two-channel model: the figure's plumbing, not its accuracy)."""
    from helpers import untrained_fit

    from msde_ppl.cli import _is_velocity, _write_vorticity
    from msde_ppl.data import from_arrays
    from msde_ppl.multiscale import MultiscaleConfig

    x = y = np.linspace(-0.5, 0.5, 8)
    t = np.arange(10) * 0.1
    X, Y = np.meshgrid(x, y, indexing="ij")
    rate = np.exp(-t)[:, None, None]
    u = np.stack([-Y * rate, X * rate], axis=1)[None].repeat(3, 0)  # (traj, time, 2, x, y)
    ds = from_arrays(u.astype(np.float32), time=t, x=x, y=y, fields=["u", "v"],
                     split=["train", "val", "test"])
    assert _is_velocity(ds) and not _is_velocity(ds.isel(field=[0]))
    config = MultiscaleConfig(fine_shape=(8, 8), coarse_shape=(4, 4), n_micro=1, n_channels=2,
                              macro_hidden=(4,), micro_hidden=(4,), codec_hidden=(4,))
    fitted = untrained_fit(ds, config)
    # the scored forecast's horizon (eval_steps) may be shorter than the test split
    fc = xr.Dataset({"spread_factor": ("time", np.full(6, 2.0, np.float32))})
    path = _write_vorticity(fitted, ds, fc, tmp_path, "multiscale", jax.random.key(3))
    assert path.name == "multiscale_vorticity.png" and path.stat().st_size > 0
