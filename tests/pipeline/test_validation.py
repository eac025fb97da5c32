"""Validation-driven training: the best checkpoint is kept, the fit stops when the val score
stops improving or at its budget, and the record survives an interruption."""

import dataclasses
import json
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from helpers import TINY, tiny_dataset

from msde_ppl.pipeline.training import TrainConfig, fit_progressive
from msde_ppl.pipeline.validation import (
    SCORE_KIND,
    Validation,
    ValidationMonitor,
    carry_residual,
)


class Stub:
    """What the monitor reads of a model fitted so far: its loss log (and a tag)."""

    def __init__(self, step):
        self.losses = np.zeros(step)
        self.tag = step


class SavableStub(Stub):
    def save(self, path, into=False):  # the monitor's record of its best: nothing to save
        pass


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset(40, ("train", "train", "val", "test"))


def test_patience_keeps_the_best_and_stops(ds, monkeypatch):
    """Scores at steps 100, 200, ...: the best (step 300) is kept; after `patience`
    evaluations without a relative improvement of 1e-3 the monitor says stop."""
    scores = iter([0.5, 0.4, 0.3, 0.2999, 0.31, 0.35, 0.9])
    monkeypatch.setattr(ValidationMonitor, "score", lambda self, f: next(scores))
    monitor = ValidationMonitor(Validation(every=100, patience=3, lr_drops=0), ds)
    step = 0
    while not monitor(Stub(step := step + 50)):
        assert step < 1000
    assert step == 600 and monitor.stopped_by == "patience"
    assert monitor.best.tag == 300 and monitor.best_score == 0.3
    assert [s for s, _ in monitor.history] == [100, 200, 300, 400, 500, 600]
    summary = monitor.summary()
    assert summary["best_step"] == 300 and summary["settings"]["patience"] == 3


def test_patience_grows_with_the_steps_done(ds, monkeypatch):
    """The best at step 1000 of evaluations every 100 steps: 3 evaluations later (step 1300)
    it is only 300 steps old, less than half of the steps done, so the stage goes on until
    the best is half the steps old (step 2000); a stage whose best is its start stops after
    `patience` evaluations as before; the fraction is checked by name."""
    def run(scores, fraction):
        values = iter(scores)
        monkeypatch.setattr(ValidationMonitor, "score", lambda self, f: next(values))
        monitor = ValidationMonitor(Validation(every=100, patience=3, lr_drops=0,
                                               patience_fraction=fraction), ds)
        monitor.evaluate(Stub(0))  # a grown stage's start
        step = 0
        while not monitor(Stub(step := step + 100)):
            assert step < 5000
        return step, monitor.best_step

    improving = [1.0] + [0.9 - 0.01 * i for i in range(10)] + [0.95] * 40
    assert run(improving, 0.5) == (2000, 1000)
    assert run(improving, 0.0) == (1300, 1000)  # the fixed patience
    assert run([0.5] + [0.6] * 40, 0.5) == (300, 0)
    with pytest.raises(ValueError, match="patience_fraction"):
        Validation(patience_fraction=1.0)


def test_a_plateau_lowers_the_learning_rate_before_it_stops(ds, monkeypatch, tmp_path):
    """Patience 2, two drops of 0.5: the first two plateaus lower the factor (1 -> 0.5 ->
    0.25) and restart the count, the third stops; an improvement in between resets the count
    as before, and a resumed monitor restores the drops and the count since the later of the
    best and the last drop."""
    values = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.9]
    scores = iter(values)
    monkeypatch.setattr(ValidationMonitor, "score", lambda self, f: next(scores))
    validation = Validation(every=100, patience=2, patience_fraction=0.0, lr_drops=2,
                            lr_drop_factor=0.5)
    monitor = ValidationMonitor(validation, ds, record=tmp_path)
    factors, step = [], 0
    while not monitor(SavableStub(step := step + 100)):
        factors.append(monitor.lr_factor)
        assert step < 2000
    assert factors == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert step == 900 and monitor.stopped_by == "patience"
    assert monitor.lr_drop_steps == [400, 700] and monitor.best_step == 500
    assert monitor.summary()["lr_drop_steps"] == [400, 700]
    again = ValidationMonitor(validation, ds, record=tmp_path)  # a resumed fit's monitor
    assert again.lr_drop_steps == [400, 700] and again.lr_factor == 0.25
    assert again._since_best == 2  # steps 800 and 900, after the drop at 700
    with pytest.raises(ValueError, match="lr_drop_factor"):
        Validation(lr_drop_factor=1.0)


def test_a_grown_stage_keeps_its_best_only_if_a_fresh_key_confirms_it(ds, monkeypatch,
                                                                       tmp_path):
    """The best of the evaluations on the selection's key (step 200) is scored again with
    max(confirm_samples, n_samples) members on the key folded with the stage, against the
    start (step 0): where it is not better by min_rel_improvement there, the start becomes
    the best, with its step-0 score; where it is, it stays; a start whose fresh score is not
    finite never wins; a start that is already the best, or confirm_samples None, confirms
    nothing."""
    def run(confirmed, validation, record=None, stage=1, sixteen=None):
        sixteen = sixteen or {0: 0.146, 100: 0.16, 200: 0.140, 300: 0.15}
        def score(self, f, n_samples=None, key=None):
            if n_samples is None:
                assert key is None  # the selection's key
                return sixteen[f.tag]
            assert n_samples == max(validation.confirm_samples, validation.n_samples)
            fresh = jax.random.fold_in(jax.random.key(validation.seed), stage)
            assert (jax.random.key_data(key) == jax.random.key_data(fresh)).all()
            return confirmed[f.tag]
        monkeypatch.setattr(ValidationMonitor, "score", score)
        monitor = ValidationMonitor(validation, ds, record=record)
        start = SavableStub(0)
        monitor.evaluate(start)
        for step in (100, 200, 300):
            monitor(SavableStub(step))
        return monitor, monitor.confirm(start, stage=stage)

    validation = Validation(every=100, confirm_samples=64)
    monitor, kept = run({0: 0.1445, 200: 0.1479}, validation, tmp_path)
    assert not kept and monitor.best.tag == 0 and monitor.best_step == 0
    assert monitor.best_score == 0.146
    assert monitor.summary()["confirmation"] == {
        "n_samples": 64, "best_step": 200, "best_score": 0.1479, "start_score": 0.1445,
        "kept": "start"}
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert saved["best_step"] == 0 and saved["confirmation"]["kept"] == "start"
    # a tie within the relative threshold keeps the start as well; stage 2 folds in 2
    monitor, kept = run({0: 0.1445, 200: 0.1445 * (1 - 0.5e-3)}, validation, stage=2)
    assert not kept and monitor.best_step == 0
    monitor, kept = run({0: 0.1445, 200: 0.1400}, Validation(every=100, n_samples=128))
    assert kept and monitor.best_step == 200 and monitor.best_score == 0.140
    assert monitor.confirmation["kept"] == "best" and monitor.confirmation["n_samples"] == 128
    inf = float("inf")  # what score() gives a forecast with a non-finite mean
    monitor, kept = run({0: 0.1445, 200: inf}, validation)
    assert not kept and monitor.confirmation["best_score"] is None
    monitor, kept = run({0: inf, 200: 0.15}, validation)
    assert kept and monitor.confirmation["start_score"] is None
    monitor, kept = run({0: inf, 200: inf}, validation)  # the selection decides
    assert kept and monitor.best_step == 200
    monitor, kept = run({}, dataclasses.replace(validation, confirm_samples=None))
    assert kept and monitor.best_step == 200 and monitor.confirmation is None
    monitor, kept = run({}, validation, sixteen={0: 0.1, 100: 0.2, 200: 0.2, 300: 0.2})
    assert kept and monitor.best_step == 0 and monitor.confirmation is None  # start is best
    with pytest.raises(ValueError, match="grown stage"):
        monitor.confirm(SavableStub(0), stage=0)
    with pytest.raises(ValueError, match="confirm_samples"):
        Validation(confirm_samples=0)


def test_a_resumed_stage_that_had_ended_delivers_the_same_checkpoint(ds, monkeypatch,
                                                                     tmp_path):
    """A stage stopped by its patience and confirmed, then killed before it was saved: the
    resumed monitor stops the fit at its first call, scores nothing more (a later, better
    checkpoint cannot win) and returns the recorded confirmation without scoring again."""
    scores = iter([0.146, 0.16, 0.140, 0.15, 0.15])
    monkeypatch.setattr(ValidationMonitor, "score",
                        lambda self, f, n_samples=None, key=None:
                        next(scores) if n_samples is None else {0: 0.1445, 200: 0.1479}[f.tag])
    validation = Validation(every=100, patience=2, patience_fraction=0.0, lr_drops=0)
    monitor = ValidationMonitor(validation, ds, record=tmp_path)
    start = SavableStub(0)
    monitor.evaluate(start)
    step = 0
    while not monitor(SavableStub(step := step + 100)):
        assert step < 1000
    assert step == 400 and monitor.stopped_by == "patience"
    assert not monitor.confirm(start) and monitor.best_step == 0

    def no_more_scores(self, f, n_samples=None, key=None):
        raise AssertionError("a stage that had ended was scored again")
    monkeypatch.setattr(ValidationMonitor, "score", no_more_scores)
    again = ValidationMonitor(validation, ds, record=tmp_path)  # the resumed fit's monitor
    assert again.stopped_by == "patience" and again(SavableStub(500)) is True
    assert again.evaluate(SavableStub(500)) == 0.15 and [s for s, _ in again.history][-1] == 400
    assert again.confirm(start) is False and again.confirmation == monitor.confirmation
    assert json.loads((tmp_path / "validation.json").read_text())["best_step"] == 0


def test_long_val_horizons_are_evaluated_less_often(ds, monkeypatch):
    """One evaluation forecasts N windows x H snapshots x S members; the interval is the
    smallest multiple of `every` whose training steps process at least as many snapshots
    (times cost_ratio); the monitor evaluates on that grid, and None keeps `every`."""
    from msde_ppl.pipeline.validation import evaluation_interval

    validation = Validation(every=10, n_samples=4)
    assert evaluation_interval(validation, (2, 40), 32) == 10  # 320 forecast <= 10 x 32 trained
    assert evaluation_interval(validation, (2, 40), 16) == 20  # 320 > 160: twice the interval
    assert evaluation_interval(validation, (2, 41), 16) == 30  # 328 > 320: thrice
    half = dataclasses.replace(validation, cost_ratio=0.5)
    assert evaluation_interval(half, (2, 40), 32) == 20
    assert evaluation_interval(dataclasses.replace(validation, cost_ratio=None), (2, 40), 1) == 10
    assert evaluation_interval(validation, (2, 40), None) == 10
    monkeypatch.setattr(ValidationMonitor, "score", lambda self, f: 1.0)
    monitor = ValidationMonitor(validation, ds, snapshots_per_step=1)
    n, h = monitor.windows.shape[:2]
    assert monitor.every == 10 * int(np.ceil(n * h * 4 / 10))
    for step in range(5, 3 * monitor.every + 1, 5):
        monitor(Stub(step))
    assert [s for s, _ in monitor.history] == [monitor.every * k for k in (1, 2, 3)]
    assert monitor.summary()["every"] == monitor.every
    with pytest.raises(ValueError, match="cost_ratio"):
        Validation(cost_ratio=0.0)


def test_budget_stops_at_the_deadline_and_scores_that_state(ds, monkeypatch):
    monkeypatch.setattr(ValidationMonitor, "score", lambda self, f: 1.0 / len(f.losses))
    monitor = ValidationMonitor(Validation(every=1000), ds, deadline=time.monotonic() - 1)
    assert monitor(Stub(120)) is True and monitor.stopped_by == "budget"
    assert monitor.best.tag == 120
    with pytest.raises(ValueError, match="patience"):
        Validation(patience=0)


def test_a_diverged_checkpoint_never_wins(ds, monkeypatch):
    scores = iter([float("inf"), 0.7, float("inf")])  # what score() gives a diverged forecast
    monkeypatch.setattr(ValidationMonitor, "score", lambda self, f: next(scores))
    monitor = ValidationMonitor(Validation(every=1), ds)
    for step in (1, 2, 3):
        monitor(Stub(step))
    assert monitor.best.tag == 2 and monitor.summary()["history"][2] == [3, None]


@pytest.mark.slow  # ~80 s: a real progressive fit validated every 50 steps
def test_fit_returns_its_best_checkpoint_and_records_it(ds, tmp_path):
    """A real tiny fit with validation every 50 steps: the returned model scores exactly the
    recorded best score (same key: common random numbers), the record is saved with the model,
    and a resumed fit continues the record."""
    validation = Validation(every=50, patience=100, horizon=8, n_starts=2, n_samples=4)
    train = TrainConfig(steps=150, window=16, windows_per_step=2, chunk_size=50,
                        warmup_steps=50)
    stages = [(0, train), (2, dataclasses.replace(train, steps=100, warmup_steps=0))]
    fits = fit_progressive(ds, TINY, stages, progress=False, validation=validation,
                           checkpoint_dir=tmp_path / "stages")
    for i, fitted in enumerate(fits):
        record = fitted.validation
        start = [0] if i else []  # a grown stage's starting point is scored too
        assert [s for s, _ in record["history"]] == start + list(
            range(50, fitted.losses.size + 1, 50))
        best = min(v for _, v in record["history"])
        check = record["confirmation"]  # a grown stage's best scored again against its start
        assert i == 1 or check is None
        if check is not None and check["kept"] == "start":
            best = record["history"][0][1]
            assert record["best_step"] == 0 and check["best_step"] > 0
        assert record["best_score"] == best
        again = ValidationMonitor(validation, ds).score(fitted)
        assert again == pytest.approx(best, rel=1e-6)
    loaded = type(fits[-1]).load(tmp_path / "stages" / "stage1")
    assert loaded.validation == fits[-1].validation
    assert not (tmp_path / "stages" / "stage1.validation").exists()  # removed once complete


def test_budget_decay_holds_then_falls_geometrically_to_its_floor(monkeypatch):
    from msde_ppl.pipeline import training

    now = [0.0]  # the training module's clock only: nothing else sees a frozen time
    monkeypatch.setattr(training, "time", SimpleNamespace(monotonic=lambda: now[0]))
    decay = training.BudgetDecay(begin=100.0, deadline=200.0, floor=0.01, fraction=0.25)
    for t, want in ((100.0, 1.0), (150.0, 1.0), (175.0, 1.0), (187.5, 0.1), (200.0, 0.01),
                    (260.0, 0.01)):
        now[0] = t
        assert decay() == pytest.approx(want, rel=1e-12), t
    default = training.BudgetDecay(begin=0.0, deadline=1.0)
    assert default.floor == pytest.approx(Validation().lr_drop_factor ** Validation().lr_drops)
    for bad in (dict(floor=0.0), dict(floor=1.5), dict(fraction=0.0), dict(floor=float("nan"))):
        with pytest.raises(ValueError, match="floor and fraction"):
            training.BudgetDecay(0.0, 1.0, **bad)


def test_budget_ends_a_plain_fit_early(ds, monkeypatch):
    """The budget stops the fit, and the fit's learning-rate factor is the budget's decay,
    at its floor once the deadline has passed; a fit without a budget has no factor."""
    from msde_ppl.pipeline import training

    factors = []
    real = training.fit_multiscale

    def spy(*args, **kwargs):
        factors.append(kwargs.get("lr_factor"))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "fit_multiscale", spy)
    train = TrainConfig(steps=100000, window=16, windows_per_step=1, chunk_size=50,
                        warmup_steps=0)
    start = time.monotonic()
    fits = fit_progressive(ds, TINY, [(0, train)], progress=False, budget_s=3.0)
    assert fits[0].losses.size < 100000 and time.monotonic() - start < 60
    assert factors[0]() == pytest.approx(training.BudgetDecay(0.0, 1.0).floor, rel=1e-12)
    fit_progressive(ds, TINY, [(0, dataclasses.replace(train, steps=50))], progress=False)
    assert factors[1] is None
    with pytest.raises(ValueError, match="budget"):
        fit_progressive(ds, TINY, [(0, train)], progress=False, budget_s=-1.0)
    assert jax.devices()  # the fit left the backend usable


def test_msde_fit_says_whether_the_confirmation_kept_the_best():
    """msde fit's line per stage names the step that won on val and, for a grown stage, what
    the re-score on a fresh key decided."""
    from types import SimpleNamespace

    from msde_ppl.cli import _stage_outcome

    val = {"stopped_by": "patience", "best_step": 0, "best_score": 0.1458,
           "settings": {"min_rel_improvement": 1e-3},
           "history": [[0, 0.1458], [9000, 0.1400], [9250, 0.2]],
           "confirmation": {"n_samples": 64, "best_step": 9000, "best_score": 0.1496,
                            "start_score": 0.1457, "kept": "start"}}
    stage = SimpleNamespace(losses=np.zeros(21000), train={"steps": 48000}, validation=val)
    line = _stage_outcome(stage)
    assert line.startswith("21000 of 48000 steps (val score stopped improving); best val "
                           "score (forecast rel-L2) 0.1400 at step 9000; scored again with "
                           "64 members on a fresh key: 0.1496 against the start's 0.1457, "
                           "not better by 0.1%, so the stage's start")
    val["confirmation"].update(best_score=0.1300, kept="best")
    val.update(best_step=9000, best_score=0.1400)
    assert _stage_outcome(stage).endswith("0.1300 against the start's 0.1457, kept")
    val["confirmation"] = None
    assert _stage_outcome(stage).endswith("0.1400 at step 9000, kept")


def test_the_score_carries_the_first_residual_as_the_delivered_forecast_does():
    """``carry_residual`` (what the val score applies before its rel-L2) is the delivered
    forecast's residual persistence with the gain fitted on the windows themselves: a
    residual that persists whole, or decays like rho^t, is carried exactly (the windows'
    errors vanish); a later error orthogonal to the first residual gets gain 0 (the means
    stay); each field has its own gain; a missing observation is no error."""
    rng = np.random.default_rng(3)
    n, h, fine = 4, 6, (8, 8)
    mean = rng.normal(size=(n, h, 2, *fine))
    e0 = rng.normal(size=(n, 1, 2, *fine))
    decay = 0.7 ** np.arange(h).reshape(1, h, 1, 1, 1)
    y = mean + e0 * np.concatenate([np.ones_like(decay), decay], axis=2)
    np.testing.assert_allclose(carry_residual(mean, y), y, atol=1e-6)
    # field 1: later errors orthogonal to the first residual, in every window
    later = rng.normal(size=(n, h, *fine))
    later -= (later * e0[:, :, 1]).sum((-2, -1), keepdims=True) / (
        e0[:, :, 1] ** 2).sum((-2, -1), keepdims=True) * e0[:, :, 1]
    y[:, 1:, 1] = mean[:, 1:, 1] + later[:, 1:]
    carried = carry_residual(mean, y)
    np.testing.assert_allclose(carried[:, :, 0], y[:, :, 0], atol=1e-6)
    np.testing.assert_allclose(carried[:, 1:, 1], mean[:, 1:, 1], atol=1e-6)
    np.testing.assert_allclose(carried[:, 0], y[:, 0], atol=1e-6)  # a(0) = 1
    one = y[:, :, :1].copy()  # one field (no field dim), a missing observation
    one[0, 3, 0, 2] = np.nan
    out = carry_residual(mean[:, :, :1], one)
    assert out.shape == one.shape and np.isfinite(out).all()
    np.testing.assert_allclose(out, mean[:, :, :1] + e0[:, :, :1], atol=1e-6)
    # a 1D grid whose first observation is missing at one point: nothing to carry there
    m1 = rng.normal(size=(n, h, 1, 16))
    y1 = m1 + rng.normal(size=(n, 1, 1, 16))
    y1[0, 0, 0, 5] = np.nan
    out = carry_residual(m1, y1)
    np.testing.assert_allclose(out[0, :, 0, 5], m1[0, :, 0, 5], atol=1e-6)
    np.testing.assert_allclose(out[:, 1:, 0, 6:], y1[:, 1:, 0, 6:], atol=1e-6)


def test_the_score_weights_the_micro_part_as_the_delivered_forecast_does():
    """With the micro parts' means, ``carry_residual`` corrects as
    :func:`~msde_ppl.predict.fit_persistence`: truth that is the macro part plus the first
    snapshot's residual with respect to it, held (a micro forecast with no skill), is recovered
    exactly (gain 1, weight 0), where the residual persistence without the micro part leaves
    the micro forecast's error; truth that is the model's own mean plus that residual decaying
    is recovered too (weight 1)."""
    rng = np.random.default_rng(5)
    n, h, fine = 4, 6, (16,)
    macro = rng.normal(size=(n, h, 1, *fine))
    micro = 0.5 * rng.normal(size=(n, h, 1, *fine))  # a fresh micro forecast at every lead
    r0 = rng.normal(size=(n, 1, 1, *fine))
    y = macro + r0
    mean = macro + micro
    np.testing.assert_allclose(carry_residual(mean, y, micro), y, atol=1e-6)
    assert np.abs(carry_residual(mean, y) - y)[:, 1:].max() > 0.1
    skill = mean + r0 * 0.8 ** np.arange(h).reshape(1, h, 1, 1)
    skill[:, 0] = macro[:, 0] + r0[:, 0]  # r0 is the first residual w.r.t. the macro part
    np.testing.assert_allclose(carry_residual(mean, skill, micro), skill, atol=1e-6)


def test_the_score_is_the_delivered_forecasts_rel_l2_plus_the_diverged_fraction(ds, monkeypatch):
    """``ValidationMonitor.score`` on a stubbed ensemble whose means miss every window by a
    residual that persists: delivered (the residual carried forward) they are exact, so the
    score is the diverged fraction alone (one member of 4 in one of the windows), where the
    raw means would score the residual's relative size; a non-finite mean scores +inf."""
    import importlib

    forecast_module = importlib.import_module("msde_ppl.predict.forecast")  # not the function

    # three windows: the micro part's weight is kept only where it predicts held-out windows
    monitor = ValidationMonitor(Validation(horizon=6, n_samples=4, n_starts=3), ds)
    y = np.asarray(monitor.windows, np.float64)  # (N, H, C, *fine)
    residual = 0.3 * np.random.default_rng(0).normal(size=y[:, :1].shape)
    means = y - residual
    assert np.mean(np.linalg.norm((means - y).reshape(*y.shape[:2], -1), axis=-1)[:, 1:]
                   / np.linalg.norm(y.reshape(*y.shape[:2], -1), axis=-1)[:, 1:]) > 0.05

    class Ensemble:
        def __init__(self, means, bad_window, micros=None):
            self.means, self.bad, self.calls, self.micros = means, bad_window, 0, micros

        def blocks(self, key, window, t0):
            i, self.calls = self.calls, self.calls + 1
            draws = np.repeat(self.means[i][:, None], 4, axis=1)  # (H, S, C, *fine)
            if i == self.bad:
                draws[2, 1] = np.inf  # one member of this window leaves the bounds
            summary = {"mean": self.means[i]}
            if self.micros is not None:
                summary["micro"] = self.micros[i]
            return None, [(None, draws, summary)]

    def run(means, bad_window=0, micros=None):
        monkeypatch.setattr(forecast_module, "trajectory_ensemble",
                            lambda *a, **k: Ensemble(means, bad_window, micros))
        monkeypatch.setattr(forecast_module, "_training_range",
                            lambda f, d: [[-1e3, 1e3]] * y.shape[2])
        monitor._template = None
        return monitor.score(SimpleNamespace(grid={"dt": 1.0}, params=None))

    assert run(means) == pytest.approx(1 / 4 / y.shape[0], abs=1e-6)
    # a micro forecast without skill on top of the same macro part: the score reads the
    # micro parts, weights them 0 and holds the first residual w.r.t. the macro part (exact);
    # the residual persistence alone would keep the micro forecast's error
    micros = 0.2 * np.random.default_rng(1).normal(size=y.shape)
    assert run(means + micros, micros=micros) == pytest.approx(1 / 4 / y.shape[0], abs=1e-6)
    assert run(means + micros) > 1 / 4 / y.shape[0] + 0.01
    broken = means.copy()
    broken[0, 3] = np.nan
    assert run(broken) == float("inf")


@pytest.mark.parametrize("older_kind", [None, "delivered, adaptive steps",
                                        "delivered, adaptive steps (rate 0.25)"])
def test_a_record_of_another_score_kind_has_its_best_scored_again(ds, monkeypatch, tmp_path,
                                                                   older_kind):
    """A stage record from before the delivered score (no ``score`` kind) or from before the
    step rate 0.25 (stop 63's kind) or from before the micro part's weight (stop 64's)
    resumed while running: its best is scored again before
    the next checkpoint is compared with it, so scores of two kinds are never compared; the
    record then says its kind, and a record of this kind is not scored again."""
    import importlib

    validation_module = importlib.import_module("msde_ppl.pipeline.validation")
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "fitted.json").write_text("{}")
    meta = {"best_step": 200, "best_score": 0.10, "history": [[100, 0.2], [200, 0.10]],
            "stopped_by": None, "lr_drop_steps": [], "confirmation": None}
    if older_kind is not None:
        meta["score"] = older_kind
    (tmp_path / "validation.json").write_text(json.dumps(meta))
    monkeypatch.setattr(validation_module.Fitted, "load", lambda path: SavableStub(200))
    scores = {200: 0.13, 300: 0.12}
    monkeypatch.setattr(ValidationMonitor, "score",
                        lambda self, f, n_samples=None, key=None: scores.pop(f.tag))
    monitor = ValidationMonitor(Validation(every=100), ds, record=tmp_path)
    monitor(SavableStub(300))  # 0.12 beats the rescored 0.13, not the raw 0.10
    assert monitor.best_step == 300 and monitor.best_score == 0.12 and not scores
    assert json.loads((tmp_path / "validation.json").read_text())["score"] == SCORE_KIND
    assert SCORE_KIND == "delivered with the micro part weighted, adaptive steps (rate 0.25)"
    monkeypatch.setattr(validation_module.Fitted, "load", lambda path: SavableStub(300))
    scores[400] = 0.125  # scoring the best (step 300) again would fail: it is not in scores
    again = ValidationMonitor(Validation(every=100), ds, record=tmp_path)
    again(SavableStub(400))
    assert again.best_step == 300 and again.best_score == 0.12
