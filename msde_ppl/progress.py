"""Progress of long work, on a terminal or in a log file (the one owner of progress output).

On a terminal (``stream.isatty()``) a tqdm bar; in a Jupyter notebook with ``ipywidgets``,
tqdm's widget bar; anywhere else (a pipe, a log file, a notebook without widgets) plain lines,
at most one every ``min_interval`` seconds plus the last::

    multiscale K=5: step 2400/12000 (20%), loss -1.8421, 38.2 steps/s, ETA 4m11s

A ``compiling ...`` line comes before the first unit of work, whose time is mostly XLA's
compilation, so a silent minute is never a mystery.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``95 -> '1m35s'``, ``3700 -> '1h01m'``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """Progress of ``total`` units of work labelled ``label``.

    Args:
        total: number of units (steps, trajectories, figures, ...).
        label: what is running, e.g. ``"implicit-scale K=0"``.
        initial: units already done (a resumed fit).
        unit: name of a unit (``"step"``).
        enabled: ``False`` prints nothing.
        stream: where to write (default ``sys.stderr``).
        min_interval: seconds between two plain lines (the last one is always written).
    """

    def __init__(self, total: int, label: str, *, initial: int = 0, unit: str = "step",
                 enabled: bool = True, stream: TextIO | None = None,
                 min_interval: float = 5.0) -> None:
        self.total, self.label, self.unit = int(total), label, unit
        self.done = int(initial)
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.min_interval = min_interval
        self._start_done = self.done
        self._start = time.perf_counter()
        self._last_line = -float("inf")
        self._timing = False
        self._bar = None
        if enabled and _is_tty(self.stream):
            self._bar = tqdm(total=self.total, initial=self.done, desc=label, unit=unit,
                             file=self.stream, dynamic_ncols=True)
        elif enabled and _notebook_widgets():
            from tqdm.notebook import tqdm as notebook_tqdm

            self._bar = notebook_tqdm(total=self.total, initial=self.done, desc=label, unit=unit)

    def compiling(self) -> None:
        """Say that the first unit includes compilation (before it starts)."""
        if not self.enabled:
            return
        message = f"{self.label}: compiling (the first {self.unit} takes longer) ..."
        if self._bar is not None:
            self._bar.set_postfix_str("compiling ...")
        else:
            self._write(message)
        self._start = time.perf_counter()

    def update(self, n: int, **postfix: Any) -> None:
        """``n`` more units done; ``postfix`` values (e.g. ``loss=-1.8``) are shown."""
        if n <= 0:
            return
        self.done += int(n)
        if not self.enabled:
            return
        if not self._timing:  # the compile is behind us: measure the rate from here
            self._timing = True
            self._start, self._start_done = time.perf_counter(), self.done
        if self._bar is not None:
            self._bar.update(int(n))
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()})
            return
        now = time.perf_counter()
        if now - self._last_line >= self.min_interval or self.done >= self.total:
            self._last_line = now
            self._write(self._line(postfix, now))

    def _line(self, postfix: dict, now: float) -> str:
        pct = 100.0 * self.done / max(self.total, 1)
        parts = [f"{self.label}: {self.unit} {self.done}/{self.total} ({pct:.0f}%)"]
        parts += [f"{k} {_fmt(v)}" for k, v in postfix.items()]
        elapsed = now - self._start
        measured = self.done - self._start_done
        if measured > 0 and elapsed > 0:
            rate = measured / elapsed
            plural = self.unit[:-1] + "ies" if self.unit.endswith("y") else self.unit + "s"
            parts.append(f"{rate:.3g} {plural}/s")
            if self.done < self.total:
                parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def note(self, message: str) -> None:
        """A line about the work (e.g. an early stop), above the bar on a terminal."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(f"{self.label}: {message}", file=self.stream)
        else:
            self._write(f"{self.label}: {message}")

    def close(self) -> None:
        """End the bar (a terminal) or nothing (plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _notebook_widgets() -> bool:
    """A Jupyter kernel that can draw tqdm's widget bar (ipywidgets installed); without
    ipywidgets tqdm would warn ("IProgress not found"), so plain lines are used instead."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        if get_ipython() is None or "IPKernelApp" not in get_ipython().config:
            return False
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
