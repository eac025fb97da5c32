"""The robustness benchmark's table says which checkpoint of the micro stage a fit delivered
(benchmarks/robustness.py), so a tie with the implicit-scale model reads as what it is."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import robustness  # noqa: E402
import unseen_pdes  # noqa: E402


def test_the_micro_stage_column_names_the_delivered_checkpoint():
    assert robustness.micro_stage(None) == "n/a (not validated)"
    assert robustness.micro_stage({"best_step": 0}) == "start (no step beat it)"
    assert robustness.micro_stage({"best_step": 4000, "confirmation": None}) == "step 4000"
    check = {"n_samples": 64, "best_step": 9000, "best_score": 0.1479, "start_score": 0.1445,
             "kept": "start"}
    assert robustness.micro_stage({"best_step": 0, "confirmation": check}) == (
        "start (step 9000 not confirmed: 0.1479 vs start 0.1445, 64 members)")
    check.update(best_score=0.1300, kept="best")
    assert robustness.micro_stage({"best_step": 9000, "confirmation": check}) == (
        "step 9000 (confirmed: 0.1300 vs start 0.1445, 64 members)")
    check.update(best_score=None)
    assert "n/a vs start" in robustness.micro_stage({"best_step": 9000, "confirmation": check})


def test_the_physics_reference_is_pooled_over_the_checked_lead_times():
    """Only 0 < t <= the decorrelation time counts; the delivered (calibrated) scores join the
    reference's own against the test data."""
    lead = [0.0, 1.0, 2.0, 3.0]
    ms = {"calibrated": {"lead_time": {"lead_time": lead, "rel_l2": [0.0, 0.1, 0.3, 9.0]}}}
    implicit = {"lead_time": {"lead_time": lead, "rel_l2": [0.0, 0.2, 0.2, 9.0]}}
    curves = {"drawn": {"physics": np.array([0.0, 0.15, 0.25, 0.5])},
              "expected": {"physics": np.array([0.0, 0.1, 0.2, 0.3]),
                           "multiscale": np.array([0.0, 0.3, 0.5, 0.7]),
                           "implicit_scale": np.array([0.0, 0.2, 0.4, 0.8]),
                           "one_speed": np.array([0.0, 0.1, 0.3, 0.3])},
              "speed_fit": {"multiscale": [0.35], "implicit_scale": [0.36]},
              "threshold": [0.2], "t_fit": 2.0, "n_thresholds": 32}
    out = robustness.reference_summary(curves, ms, implicit, t_dec=2.0)
    assert out["window_mean"]["drawn"] == pytest.approx(
        {"physics": 0.2, "multiscale": 0.2, "implicit_scale": 0.2})
    assert out["window_mean"]["expected"] == pytest.approx(
        {"physics": 0.15, "multiscale": 0.4, "implicit_scale": 0.3, "one_speed": 0.2})
    assert out["rel_l2"]["drawn"]["multiscale"] == [0.0, 0.1, 0.3, 9.0]
    # a shorter curve cuts every curve to its lead times
    short = {**curves, "expected": {k: v[:3] for k, v in curves["expected"].items()}}
    cut = robustness.reference_summary(short, ms, implicit, t_dec=5.0)
    assert cut["n_lead_times"] == 3 and cut["window_mean"]["drawn"]["multiscale"] == 0.2
    with pytest.raises(ValueError, match="other lead times"):
        robustness.reference_summary(curves, ms, {"lead_time": {"lead_time": [0, 2, 4, 6],
                                                                "rel_l2": [0.0] * 4}}, 2.0)
    row = {"pde": "bistable_fronts", "decorrelation_time": 2.0, "n_test_trajectories": 4,
           "physics_reference": out}
    text = robustness.REFERENCES["bistable_fronts"][1](row)
    assert "(0 < t ≤ 2): against the test data it scores 0.2000" in text
    assert "exact solves at 32 thresholds" in text
    assert "4 thresholds drawn) 0.1500, 0.4000 and 0.3000, and the exact solve at the " \
        "prior's mean threshold (one speed) 0.2000." in text
    assert "multiscale 0.35, implicit-scale 0.36; the test trajectories' own: 0.20." in text


def test_the_fronts_reference_scores_forecasts_in_expectation_over_the_threshold():
    """A forecast equal to the reference scores as it does; another (the solve at one
    threshold) scores the mean over the 32 thresholds' solves of its rel-L2, on which the
    reference is not guaranteed to win (it is the best in squared error: checked here)."""
    ds = unseen_pdes.make_bistable_fronts(n_traj=6, seed=0, n_fine=64, n_time=9, length=40.0)
    test = robustness.select_split(ds, "test")
    length, dt = 40.0, 0.5
    u0 = np.asarray(test["u_clean"].values[:, 0], np.float64)
    ref = np.stack([unseen_pdes.fronts_bayes_forecast(u, length, 1.0, dt, 9) for u in u0])
    one = np.stack([unseen_pdes.nagumo_solve(u, length, 1.0, 0.25, dt / 10, 80, 10) for u in u0])
    blown = np.full_like(one, np.nan)
    curves = robustness.fronts_reference(ds, {"same": ref, "one_threshold": one,
                                              "blown_up": blown}, t_fit=4.0)
    assert curves["speed_fit"]["blown_up"] == [None]  # no threshold matches a NaN forecast
    assert np.isnan(curves["expected"]["blown_up"]).all()  # and its scores are not finite
    expected = curves["expected"]
    np.testing.assert_allclose(expected["same"], expected["physics"], rtol=1e-12)
    solves = [unseen_pdes.fronts_threshold_solves(u, length, 1.0, dt, 9) for u in u0]
    direct = np.mean([robustness._rel_l2(s, o[None]).mean(0)
                      for s, o in zip(solves, one, strict=True)], axis=0)
    np.testing.assert_allclose(expected["one_threshold"], direct, rtol=1e-12)
    for s, r, o in zip(solves, ref, one, strict=True):
        assert np.all(((s - r) ** 2).sum((0, 2)) <= ((s - o) ** 2).sum((0, 2)) + 1e-12)
    assert curves["drawn"]["physics"].shape == (9,)
    # the solve at the prior's mean threshold is "one_speed"; its fronts fit that threshold
    np.testing.assert_allclose(expected["one_speed"], expected["one_threshold"], rtol=1e-12)
    # (to the nearest of the 32 midpoints, 0.3 / 32 apart)
    assert curves["t_fit"] == 4.0
    assert curves["speed_fit"]["one_threshold"] == pytest.approx([0.25], abs=0.3 / 64)
    assert curves["threshold"] == pytest.approx(test["threshold"].values.tolist())


def test_the_margin_over_the_implicit_scale_model_comes_with_its_standard_error():
    """Paired per-trajectory differences of rel-L2: their mean is the margin, their sd over
    sqrt(trajectories) its standard error; lead times beyond the decorrelation time (and lead
    0) are not counted; 'behind / ahead by > 2 SE' count the resolved lead times."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4, 5, 16)) + 3.0
    times = np.arange(5) * 0.5
    implicit = obs + 0.1 * rng.normal(size=obs.shape)
    # the multiscale mean: ahead at lead 1 on every trajectory, equal at lead 2, behind at 3
    ms = implicit.copy()
    ms[:, 1] = obs[:, 1] + 0.5 * (implicit[:, 1] - obs[:, 1])
    ms[:, 3] = obs[:, 3] + 1.5 * (implicit[:, 3] - obs[:, 3])
    ms[:, 4] = obs[:, 4] + 9.0 * (implicit[:, 4] - obs[:, 4])  # beyond t_dec: not counted
    out = robustness.margin_uncertainty({"multiscale": ms, "implicit_scale": implicit}, obs,
                                        times, t_dec=1.5)
    rel = lambda m: np.linalg.norm(m - obs, axis=-1) / np.linalg.norm(obs, axis=-1)  # noqa: E731
    d = rel(ms)[:, 3] - rel(implicit)[:, 3]
    assert out["worst"]["lead_time"] == 1.5 and out["n_lead_times"] == 3
    assert out["worst"]["margin"] == pytest.approx(d.mean())
    assert out["worst"]["standard_error"] == pytest.approx(d.std(ddof=1) / 2)
    assert out["behind_2se"] == 1 and out["ahead_2se"] == 1 and out["n_trajectories"] == 4


def test_the_extended_test_split_reports_its_own_verdict():
    """The targets on the grown test split (benchmarks/robustness.py extended_test) read as
    their own sentence: the multiscale model behind the implicit-scale one at one checked lead
    time is a miss, and the margin's standard error comes from the paired differences."""
    lead = [0.0, 1.0, 2.0, 3.0]
    base = {"persistence": [0.0, 0.5, 0.6, 0.7], "climatology": [1.0, 1.0, 1.0, 1.0]}
    ms = {"diverged_members": 0, "coverage_90": 0.5,
          "calibrated": {"coverage_90": 0.9, "diverged_members": 0, "rel_l2_mean": 0.3,
                         "lead_time": {"lead_time": lead, "rel_l2": [0.0, 0.2, 0.31, 0.4],
                                       **base}}}
    implicit = {"diverged_members": 0, "coverage_90": 0.5,
                "calibrated": {"rel_l2_mean": 0.32,
                               "lead_time": {"lead_time": lead, "rel_l2": [0.0, 0.25, 0.3, 0.5],
                                             **base}}}
    verdict = robustness.assess(ms, implicit, t_dec=2.0)
    assert verdict["beats"] == {"persistence": True, "climatology": True,
                                "implicit_scale": False}
    truth = np.ones((2, 4, 1))
    means = {"multiscale": truth + np.array([0.0, 0.2, 0.31, 0.4])[:, None],
             "implicit_scale": truth + np.array([0.0, 0.25, 0.3, 0.5])[:, None]}
    means["multiscale"][1, 2] += 0.02  # the two trajectories differ by 0.00 and 0.02 at t = 2
    margin = robustness.margin_uncertainty(means, truth, np.array(lead), t_dec=2.0)
    assert margin["worst"] == pytest.approx({"lead_time": 2.0, "margin": 0.02,
                                             "standard_error": 0.01})
    assert margin["by_lead_time"]["lead_time"] == [1.0, 2.0]
    assert margin["by_lead_time"]["margin"] == pytest.approx([-0.05, 0.02])
    row = {"pde": "kuramoto_sivashinsky", "decorrelation_time": 2.0, "extended_test": {
        "n_test_trajectories": 28, "n_extra": 24, "extra_seed": 10_000,
        "rel_l2": {"multiscale": 0.3, "implicit_scale": 0.32}, "implicit_margin": margin,
        **{k: verdict[k] for k in ("beats", "worst_margin", "coverage_90_calibrated", "met")}}}
    text = robustness.extended_summary(row)
    assert text.startswith("**kuramoto_sivashinsky, extended test split** (28 trajectories: "
                           "the standard test split plus 24 drawn with seed 10000")
    assert "yes (-0.290) / yes (-0.690) / no (+0.010)" in text
    assert "vs implicit at t = 2: +0.020 ± 0.010 SE" in text
    assert text.endswith("90% coverage 0.900; targets MISSED: beats_all.")
