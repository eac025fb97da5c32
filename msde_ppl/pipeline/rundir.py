"""Run directories: their status file, and stopping cleanly on a signal (docs/reliability.md).

A run directory written by ``msde fit`` or ``msde run`` holds a ``status.json`` file, rewritten
atomically at every change of state::

    {"state": "running" | "failed" | "interrupted" | "complete", "reason": str | null,
     "command": "fit", "pid": 1234, "step": 2440, "stage": 1, "updated": "2026-12-01T21:30:00"}

- ``running``: the command is working on it, holding an exclusive lock on ``RUN_DIR/.lock``
  (:class:`RunLock`); if nobody holds the lock, the process was killed;
- ``failed``: a non-finite loss or another error; ``reason`` names it, and the model files
  hold the last good state;
- ``interrupted``: SIGINT/SIGTERM; the checkpoint and the model files hold the last state;
- ``complete``: every output is written.

:func:`require_complete` is what ``msde forecast`` and ``msde report`` ask before reading one.
:class:`StopRequest` turns SIGINT/SIGTERM into a flag that the fit loop polls between chunks of
steps (a Python exception raised in the middle of JAX tracing or XLA compilation is what made
Ctrl-C crash the process); a second signal ends the process at once, after marking the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from msde_ppl.atomic import write_text

__all__ = ["STATES", "RunIncompleteError", "RunLock", "StopRequest", "describe", "file_sha256",
           "read_status", "require_complete", "still_running", "write_status"]

STATUS_FILE = "status.json"
STATES = ("running", "failed", "interrupted", "complete")


class RunIncompleteError(ValueError):
    """A run directory whose status is not ``complete``."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex): how a run records the data it was fitted to."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_status(run_dir: str | os.PathLike, state: str, reason: str | None = None,
                 **info: object) -> dict:
    """Write the run's ``status.json`` atomically; returns what was written."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {STATES}")
    status = {"state": state, "reason": reason, "pid": os.getpid(),
              "updated": datetime.now().isoformat(timespec="seconds"), **info}
    write_text(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=2) + "\n")
    return status


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The run's status, or ``None`` if the directory has no status file (a model saved by
    :meth:`msde_ppl.Fitted.save`, which is complete by construction).

    Raises:
        ValueError: the status file is not valid.
    """
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        status = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid status file: {err}") from None
    if not isinstance(status, dict) or status.get("state") not in STATES:
        raise ValueError(f"{path} is not a valid status file (no known 'state')")
    return status


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock`` held while a command writes the run (the
    kernel releases it when the process ends, SIGKILL included), so a second writer is refused
    and a reader can tell a live run from a killed one without trusting a pid."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fh = None

    def __enter__(self) -> RunLock:
        import fcntl

        self._fh = open(self.path, "a")  # noqa: SIM115 - held for the lock's lifetime
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise RunIncompleteError(f"{self.path.parent} is being written by another "
                                     "process") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # releases the lock


def _locked(run_dir: str | os.PathLike) -> bool:
    """Whether another process holds the run's lock."""
    try:
        with RunLock(run_dir):
            return False
    except RunIncompleteError:
        return True
    except OSError:  # a read-only run directory: nobody writes it
        return False


def describe(status: dict, run_dir: str | os.PathLike) -> str:
    """One line saying what state a run is in."""
    state, reason = status["state"], status.get("reason")
    if state == "running" and not still_running(status, run_dir):
        return (f"'running', but its process ({status.get('pid')}) is gone: it was killed "
                "before it could mark the run")
    return f"{state!r}" + (f": {reason}" if reason else "")


def still_running(status: dict | None, run_dir: str | os.PathLike) -> bool:
    """Whether a ``running`` run is being written by a live process (it holds the lock)."""
    return status is not None and status["state"] == "running" and _locked(run_dir)


def require_complete(run_dir: str | os.PathLike, allow_incomplete: bool = False) -> dict | None:
    """Check that a run directory may be read: its status is ``complete`` (or it has no status
    file), or ``allow_incomplete`` and it is not still running.

    Raises:
        RunIncompleteError: naming the run's state and what to do.
    """
    status = read_status(run_dir)
    if status is None or status["state"] == "complete":
        return status
    if still_running(status, run_dir):
        raise RunIncompleteError(f"{run_dir} is still being written (process "
                                 f"{status.get('pid')} is running)")
    if not allow_incomplete:
        if status["state"] == "failed" and status.get("non_finite"):
            hint = "fit it again (another setting, e.g. a smaller --lr)"
        elif status.get("command") == "fit":
            hint = f"continue it with `msde fit --resume {run_dir}`"
        else:
            hint = "run it again"
        raise RunIncompleteError(
            f"{run_dir} is not complete: its status is {describe(status, run_dir)}; {hint}, or "
            "pass --allow-incomplete to use its last saved state")
    return status


class StopRequest:
    """While active (``with StopRequest(on_abort) as stop:``), SIGINT and SIGTERM set
    ``stop.signum`` instead of raising; ``stop()`` is ``True`` once one arrived (the fit loop
    polls it). A second signal calls ``on_abort(signum)`` (e.g. to mark the run) and ends the
    process at once with exit code ``128 + signum``. The previous handlers are restored on
    exit."""

    def __init__(self, on_abort: Callable[[int], None] | None = None) -> None:
        self.on_abort = on_abort
        self.signum: int | None = None
        self._previous: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            try:
                if self.on_abort is not None:
                    self.on_abort(signum)
            finally:
                os._exit(128 + signum)  # no interpreter teardown while XLA threads run
        self.signum = signum
        note = (f"\n{signal.Signals(signum).name}: stopping at the next safe point (send it "
                "again to abort now)\n")
        os.write(2, note.encode())  # not print: the signal may land inside another write

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
