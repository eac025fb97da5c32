"""The macro stencil network's width: the reference's 128, narrower by default for data that
are not a built-in case on a coarse grid of many nodes (a step's cost grows with them), and
recorded resolved by msde fit so a resume rebuilds the same network."""

import numpy as np
import pytest

from msde_ppl.data import from_arrays, save
from msde_ppl.pipeline.run import (
    FULL_WIDTH_MAX_NODES,
    NARROW_STENCIL_WIDTH,
    model_config,
    stencil_width_choice,
)

SPLIT = ["train", "train", "val", "test"]


def _field(shape: tuple[int, ...], n_time: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(len(SPLIT), n_time, *shape)).astype(np.float32)


def _data_2d(n: int = 32):
    x = np.arange(n) / n
    return from_arrays(_field((n, n)), time=np.arange(6) * 0.1, x=x, y=x, split=SPLIT)


def test_a_user_grid_of_many_coarse_nodes_gets_the_narrow_stencil_network():
    ds = _data_2d()
    assert 16 * 16 > FULL_WIDTH_MAX_NODES >= 8 * 8
    narrow = model_config(ds, (16, 16), 2, positional=False)
    assert narrow.macro_hidden == (NARROW_STENCIL_WIDTH,) * 3
    assert model_config(ds, (8, 8), 2, positional=False).macro_hidden == (128, 128, 128)
    # only the stencil network: the micro networks keep their widths
    wide = model_config(ds, (8, 8), 2, positional=False)
    assert (narrow.micro_hidden, narrow.codec_hidden) == (wide.micro_hidden, wide.codec_hidden)
    chosen = model_config(ds, (16, 16), 2, positional=False, stencil_width=128)
    assert chosen.macro_hidden == (128, 128, 128)
    assert model_config(ds, (8, 8), 2, positional=False,
                        stencil_width=32).macro_hidden == (32, 32, 32)
    for bad in (0, 64.5, True):
        with pytest.raises(ValueError, match=f"width must be a positive integer, got {bad}"):
            model_config(ds, (8, 8), 2, positional=False, stencil_width=bad)


def test_a_built_in_case_keeps_the_reference_width_on_any_grid():
    x = np.arange(512) / 512
    ds = from_arrays(_field((512,)), time=np.arange(6) * 0.1, x=x, split=SPLIT)
    assert stencil_width_choice(ds, (256,)) == NARROW_STENCIL_WIDTH
    assert stencil_width_choice(ds, (32,)) is None
    assert stencil_width_choice(ds, (FULL_WIDTH_MAX_NODES,)) is None
    assert stencil_width_choice(ds, (FULL_WIDTH_MAX_NODES + 1,)) == NARROW_STENCIL_WIDTH
    # the built-in case on the most nodes, the cylinder's 32 x 8
    assert stencil_width_choice(ds.assign_attrs(case="cylinder_2d"), (32, 8)) is None
    assert stencil_width_choice(ds.assign_attrs(case="kdv_1d"), (256,)) is None
    config = model_config(ds.assign_attrs(case="kdv_1d"), (256,), 2)
    assert config.macro_hidden == (128, 128, 128)


def test_msde_fit_records_the_width_it_chose(tmp_path):
    from msde_ppl import cli

    path = tmp_path / "grid.nc"
    save(_data_2d(), path)
    parser = cli.build_parser()
    base = ["fit", "--data", str(path), "--coarse", "16", "16", "--micro", "0",
            "--no-positional", "--out", str(tmp_path / "r")]
    args = parser.parse_args(base)
    assert cli._fit_plan(args)[1].macro_hidden == (64, 64, 64)
    assert args.stencil_width == 64  # run.json's value: a resume rebuilds the same network
    args = parser.parse_args([*base, "--stencil-width", "128"])
    assert cli._fit_plan(args)[1].macro_hidden == (128, 128, 128) and args.stencil_width == 128
    with pytest.raises(SystemExit):  # argparse: "expected a positive integer, got '0'"
        parser.parse_args([*base, "--stencil-width", "0"])
    assert not (tmp_path / "r").exists()
