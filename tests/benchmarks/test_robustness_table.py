"""The robustness benchmark's table says which checkpoint of the micro stage a fit delivered
(benchmarks/robustness.py), so a tie with the implicit-scale model reads as what it is."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import robustness  # noqa: E402


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


def test_the_physics_reference_is_compared_over_the_checked_lead_times():
    """Only 0 < t <= the decorrelation time counts, on the delivered (calibrated) scores."""
    lead = [0.0, 1.0, 2.0, 3.0]
    ms = {"calibrated": {"lead_time": {"lead_time": lead, "rel_l2": [0.0, 0.1, 0.3, 9.0]}}}
    implicit = {"lead_time": {"lead_time": lead, "rel_l2": [0.0, 0.2, 0.2, 9.0]}}
    out = robustness.reference_summary([0.0, 0.15, 0.25, 0.5], ms, implicit, t_dec=2.0)
    assert out["window_mean"] == 0.2
    assert out["window_mean_models"] == {"multiscale": 0.2, "implicit_scale": 0.2}
    assert out["max_excess"]["multiscale"] == 0.3 - 0.25
    assert out["max_excess"]["implicit_scale"] == 0.2 - 0.15
    row = {"pde": "p", "decorrelation_time": 2.0, "physics_reference": out}
    assert "0.2000 over the lead times checked (0 < t ≤ 2)" in robustness.reference_paragraph(row)
