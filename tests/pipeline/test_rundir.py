"""The run directory's stop request as a stall watchdog: a process whose main thread stops
coming back is ended with every thread's stack, one that keeps polling is not."""

import subprocess
import sys
import time

SCRIPT = """
import sys, threading, time
from msde_ppl.pipeline.rundir import StopRequest

mode = sys.argv[1]
limit = None if mode == "off" else 0.5
with StopRequest(stall_limit_s=limit) as stop:
    if mode == "polling":  # polls every 0.2 s for 1.2 s: longer than the limit in all
        for _ in range(6):
            assert not stop()
            time.sleep(0.2)
    else:
        stop()
        if mode in ("stalled", "off"):
            # the main thread waits in C and never returns to the interpreter on its own
            threading.Event().wait(1.5)
time.sleep(0.8)  # the countdown is cancelled on exit
print("finished")
"""


def _run(mode: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         timeout=120)
    return out, time.monotonic() - start


def test_a_stalled_main_thread_ends_the_process_with_its_stack():
    out, _ = _run("stalled")
    assert out.returncode == 1 and "finished" not in out.stdout
    assert "Timeout (0:00:00.500000)!" in out.stderr and "wait" in out.stderr, out.stderr


def test_polls_restart_the_countdown_and_exit_cancels_it():
    for mode in ("polling", "off"):
        out, _ = _run(mode)
        assert out.returncode == 0, (mode, out.stderr)
        assert "finished" in out.stdout and "Timeout" not in out.stderr
