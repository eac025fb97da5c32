"""Progress lines when the output is not a terminal (a log file, a pipe)."""

import io
import time

from msde_ppl.progress import Progress, format_seconds


def test_plain_lines_with_stage_label_loss_rate_and_eta():
    out = io.StringIO()
    bar = Progress(300, "multiscale K=5", stream=out, min_interval=0.0)
    bar.compiling()
    for _ in range(3):
        time.sleep(0.01)
        bar.update(100, loss=-1.23456)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "multiscale K=5: compiling (the first step takes longer) ..."
    assert lines[1].startswith("multiscale K=5: step 100/300 (33%), loss -1.235")
    assert "steps/s" in lines[2] and "ETA" in lines[2]
    assert lines[-1].startswith("multiscale K=5: step 300/300 (100%)") and "ETA" not in lines[-1]


def test_lines_are_rate_limited_but_the_last_is_written():
    out = io.StringIO()
    bar = Progress(50, "fit", stream=out, min_interval=3600.0)
    for _ in range(50):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("fit: step 50/50")


def test_disabled_progress_is_silent_and_durations_read_well():
    out = io.StringIO()
    bar = Progress(5, "x", stream=out, enabled=False)
    bar.compiling()
    bar.update(5)
    assert out.getvalue() == ""
    assert (format_seconds(42), format_seconds(95), format_seconds(3700)) == ("42s", "1m35s",
                                                                             "1h01m")
