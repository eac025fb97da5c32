"""`msde run`'s recipe per built-in case: the schedule and the training window reach the fit."""

import pytest

import msde_ppl.pipeline.run as run
from msde_ppl.pipeline.training import TrainConfig


@pytest.mark.parametrize("case, window", [("cylinder_2d", 32), ("burgers_2d", 64),
                                          ("wave_1d", 64)])
def test_run_builtin_trains_on_the_cases_window(monkeypatch, case, window):
    """Both stages of the progressive fit use the case's window (the cylinder's 32-snapshot
    windows keep its fit within the 45-minute budget) and the steps asked for."""
    seen = {}
    monkeypatch.setattr(run, "model_config", lambda ds, coarse, n_micro: "config")
    monkeypatch.setattr(run, "run_case", lambda ds, config, stages, **kw: seen.update(
        stages=stages))
    steps, micro_steps = run.run_schedule(case)
    run.run_builtin(None, case, steps=steps, micro_steps=micro_steps)
    (k0, first), (k1, second) = seen["stages"]
    assert (k0, k1) == (0, 5)
    assert first.window == second.window == window == run.run_window(case)
    assert (first.steps, second.steps) == (steps, micro_steps)
    assert TrainConfig.window == 64
