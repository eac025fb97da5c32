"""Every plot function returns a labelled figure on small inputs, without warnings."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
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
              "forest", "elbo_trace", "coverage", "pit", "spread_skill"}
    assert set(plots.__all__) == {f"plot_{n}" for n in called}


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
    fig = plots.plot_latent_paths(post)
    assert len(fig.axes) == 1
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
