r"""Validation-driven training: a forecast score on the val split while a fit
runs, the best model kept, early stopping and a wall-clock budget (docs/reliability.md).

Every ``every`` steps the model fitted so far forecasts the val trajectories over ``horizon``
snapshots (default: the data's evaluation horizon, ``eval_steps`` or every snapshot: the task
the test split is scored on) from ``n_starts`` evenly spread starting snapshots per trajectory,
with ``n_samples`` members, and is scored by

.. math:: s = \frac{1}{N (H - 1)} \sum_{r=1}^{N} \sum_{i=1}^{H-1} \frac{\lVert y_{ri}
          - \bar y_{ri} - a_{i} e_{r} \rVert_2}{\lVert y_{ri} \rVert_2}
          + \text{(fraction of diverged members)},

over the :math:`N` val windows of :math:`H` snapshots: the test metric (the rel-L2 of the
ensemble mean, pooled over the lead times of every start) of the forecast as ``msde
forecast`` delivers it by default (calibrated on val, with residual persistence), plus the
fraction of members that diverged (:func:`~msde_ppl.predict.diverged_members`), so a model
that blows up late loses even where its mean still looks fine. The delivered forecast
carries the first snapshot's reconstruction residual :math:`e_r = y_{r0} - \bar y_{r0}`
forward with the least-squares gain :math:`a_i` (per lead time, and per field of :math:`e_r`)
fitted on the val forecast (residual persistence; for a model with a micro part, the
residual with respect to the macro part and the micro part weighted by a second fitted
coefficient, :func:`~msde_ppl.predict.calibration.fit_persistence`); the score fits them on
the very windows it scores (:func:`carry_residual`), as the delivered val forecast is. Scored
raw, a micro state that reconstructs the first snapshot better is credited at the first lead
times with a lead that the delivered forecast of its rival wins back from the residual: on
Kuramoto-Sivashinsky (docs/robustness.md, stop 62) the multiscale model led the
implicit-scale one by 0.106 at the first val lead time raw, and trailed it up to t = 6 once
both carried the residual. A forecast with a
non-finite mean scores :math:`+\infty`. Every evaluation uses the SAME
key (common random numbers): two checkpoints are compared on the same noise, so the
difference of their scores is not Monte Carlo noise, as long as they take the same
integrator steps (the forecast chooses them per snapshot interval from the drift's stiffness,
:mod:`msde_ppl.predict.stability`; an interval where two checkpoints take different numbers
of steps draws different noise). The forecast program is compiled once per
stage and called with each checkpoint's parameters.

The fit keeps the parameters of the best score and stops at the budget's deadline, or once
the best score is both ``patience`` evaluations and ``patience_fraction`` of the steps done in
the stage old (no improvement of at least ``min_rel_improvement``, relative, since): the score of a
checkpoint jumps by a factor of 2 or more from one evaluation to the next on some data
(forecast rel-L2 of long rollouts), so a fixed patience ends a stage that is still improving
between the jumps (KdV fitted as unlabelled data: its micro stage improved at step 6300 and
was stopped at 9300 by a patience of 12 evaluations, val 0.086, test 0.164 against the 0.041 of
``msde run``'s longer fit); the patience therefore grows with the steps done, while a stage that
never beats its start still stops after ``patience`` evaluations.

A plateau first lowers the learning rate: the first ``lr_drops`` times the patience runs out,
the fit goes on with its learning rate multiplied by ``lr_drop_factor`` once more (the
optimiser's own schedule continues under the factor; :attr:`ValidationMonitor.lr_factor`,
polled by the fit loop) and the patience counts afresh; the next time it runs out the stage
stops. A validated fit thus ends at a small learning rate, like a fixed recipe's decayed
schedule, without knowing in advance how many steps it will run (ReduceLROnPlateau). The
parameters are not reset to the best checkpoint at a drop; the best is kept apart anyway.

A grown stage's best checkpoint :math:`\theta^*` must then be confirmed against the stage's
start :math:`\theta_0` (the previous stage's model with an idle micro state,
:meth:`ValidationMonitor.confirm`): with :math:`s^{(M)}_{k'}` the score above with
:math:`M = \max(\text{confirm\_samples}, \text{n\_samples})` members drawn from the fresh key
:math:`k' = \text{fold\_in}(k, i)` (:math:`k` the validation's key, :math:`i \ge 1` the
stage), the stage delivers

.. math:: \theta^* \text{ if } s^{(M)}_{k'}(\theta^*) < (1 - \varepsilon)\, s^{(M)}_{k'}
          (\theta_0) \text{ or } s^{(M)}_{k'}(\theta_0) = \infty, \text{ else } \theta_0,

with :math:`\varepsilon` = ``min_rel_improvement``. The best of dozens of evaluations on one
key is partly a lucky draw of that key's Monte Carlo noise (the winner's curse), and a score
on a key that took no part in the selection is unbiased: on the robustness benchmark's fronts
the micro stage's best checkpoint scored 0.1400 against the start's 0.1458 on the selection's
key with 16 members, while over 7 fresh keys its advantage averaged 0.0011 with an sd of
0.0039. Where two checkpoints tie on val the decision is a coin flip by construction.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from msde_ppl.atomic import write_text
from msde_ppl.data.splits import observations
from msde_ppl.pipeline.fitted import Fitted
from msde_ppl.predict.stability import MAX_STEP_RATE

__all__ = ["Validation", "ValidationMonitor", "carry_residual", "evaluation_interval"]


# recorded with the history: what its scores measure
SCORE_KIND = f"delivered with the micro part weighted, adaptive steps (rate {MAX_STEP_RATE})"


def _finite_or_none(value: float) -> float | None:
    """A score for JSON: a non-finite one is ``None``."""
    return value if np.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class Validation:
    """Settings of the validation score and of early stopping (module docstring)."""

    split: str = "val"
    horizon: int | None = None
    n_starts: int = 1
    n_samples: int = 16
    every: int = 250
    cost_ratio: float | None = 1.0
    patience: int = 12
    patience_fraction: float = 0.5
    min_rel_improvement: float = 1e-3
    lr_drops: int = 3
    lr_drop_factor: float = 0.3
    seed: int = 0
    confirm_samples: int | None = 64

    def __post_init__(self) -> None:
        short = self.horizon is not None and self.horizon < 2
        if short or self.n_starts < 1 or self.n_samples < 1 or self.every < 1:
            raise ValueError("validation horizon must be >= 2 snapshots and n_starts, "
                             "n_samples, every positive")
        if self.patience < 1 or not self.min_rel_improvement >= 0:
            raise ValueError("patience must be positive and min_rel_improvement >= 0")
        if self.cost_ratio is not None and not self.cost_ratio > 0:  # also catches nan
            raise ValueError(f"cost_ratio must be positive or None, got {self.cost_ratio}")
        if self.lr_drops < 0 or not 0.0 < self.lr_drop_factor < 1.0:
            raise ValueError(f"lr_drops must be >= 0 and lr_drop_factor in (0, 1), got "
                             f"{self.lr_drops} and {self.lr_drop_factor}")
        if self.confirm_samples is not None and self.confirm_samples < 1:
            raise ValueError(f"confirm_samples must be positive or None, got "
                             f"{self.confirm_samples}")
        if not 0.0 <= self.patience_fraction < 1.0:  # also catches nan
            raise ValueError(f"patience_fraction must lie in [0, 1), got "
                             f"{self.patience_fraction}")


def _starting_windows(ds: xr.Dataset, validation: Validation) -> tuple[np.ndarray, np.ndarray]:
    """``(y, t0)``: windows ``(N, H, C, *fine)`` of the val trajectories at ``n_starts`` evenly
    spread starting snapshots each, and their start times ``(N,)``."""
    u, t = observations(ds, validation.split)
    horizon = int(ds.attrs.get("eval_steps", u.shape[1])) if validation.horizon is None \
        else validation.horizon
    horizon = min(horizon, u.shape[1])
    last = u.shape[1] - horizon
    starts = np.unique(np.linspace(0, last, validation.n_starts).round().astype(int))
    y = np.stack([u[r, s:s + horizon] for r in range(u.shape[0]) for s in starts])
    t0 = np.array([t[s] for _ in range(u.shape[0]) for s in starts])
    return y, t0


def carry_residual(mean: np.ndarray, y: np.ndarray, micro: np.ndarray | None = None
                   ) -> np.ndarray:
    r"""The forecast means ``mean`` as delivered: each window's first-snapshot residual
    :math:`e = y_0 - \bar y_0` carried forward, :math:`\bar y_i + a_i e`, with the gain
    :math:`a_i` fitted on these windows themselves (per field: what ``msde forecast`` fits on
    the val split and applies); with the micro part's ensemble means ``micro``, the residual
    with respect to the macro part and the micro part's weight instead
    (:func:`~msde_ppl.predict.calibration.fit_persistence`). ``mean``, ``micro`` and ``y``:
    ``(N, H, C, *fine)`` windows of ``H`` snapshots of ``C`` fields; ``mean`` finite, ``y``
    may have NaN."""
    from msde_ppl.predict.calibration import apply_persistence, fit_persistence

    shape = mean.shape
    fine = [f"axis{i}" for i in range(y.ndim - 3)]
    dims = ["traj", "time", "field", *fine]
    if y.shape[2] == 1:  # a forecast of one field has no field dim: one gain per lead time
        mean, y, dims = mean[:, :, 0], y[:, :, 0], dims[:2] + fine
        micro = None if micro is None else micro[:, :, 0]
    fc = xr.Dataset({"mean": (dims, mean), "obs": (dims, y)})
    if micro is not None:
        fc["micro"] = (dims, micro)
    carried = apply_persistence(fc, *fit_persistence(fc))["mean"]
    return np.asarray(carried.transpose(*dims).values, np.float64).reshape(shape)


def evaluation_interval(validation: Validation, windows: tuple[int, int],
                        snapshots_per_step: int | None) -> int:
    r"""Steps between two evaluations: ``validation.every`` times the smallest integer
    :math:`k \ge 1` such that one evaluation forecasts at most ``cost_ratio`` times as many
    member-snapshots as the :math:`k \cdot` ``every`` training steps between two evaluations
    process (``snapshots_per_step``: a step's windows times their length),

    .. math:: k = \max\Big(1, \Big\lceil \frac{N H S}{c\,\cdot\,\mathrm{every}
              \cdot W} \Big\rceil\Big)

    with :math:`N` val windows of :math:`H` snapshots, :math:`S` members, :math:`W`
    snapshots per step. So long val horizons do not take most of a fit's time (KdV with
    its 1000-snapshot horizon: an evaluation every 250 steps cost 3 times the 250 steps, and
    a 10-minute budget trained for 3 minutes). A pure function of the settings and the data's
    shapes: a resumed fit evaluates at the same steps. ``snapshots_per_step=None`` or
    ``cost_ratio=None``: ``every``."""
    if snapshots_per_step is None or validation.cost_ratio is None:
        return validation.every
    n_windows, horizon = windows
    budget = validation.cost_ratio * validation.every * snapshots_per_step
    k = max(1, int(np.ceil(n_windows * horizon * validation.n_samples / budget)))
    return validation.every * k


class ValidationMonitor:
    """Scores the checkpoints of ONE fit (a stage of a progressive fit) on the val split.

    Use it as the fit's ``callback``: called with the model fitted so far after every chunk, it
    scores it every :attr:`every` steps (:func:`evaluation_interval`), keeps the best, and
    returns ``True`` (stop) once the best is ``patience`` evaluations and ``patience_fraction``
    of the steps done old after ``lr_drops`` drops of the learning rate (:attr:`lr_factor`),
    or past ``deadline`` (``time.monotonic()``). With ``record`` (a path), the history is
    written there after every evaluation and the best model after every improvement, so an
    interrupted fit resumes with them.

    Attributes:
        best: the best-scoring :class:`~msde_ppl.Fitted` so far (``None`` before the first
            evaluation), or the start once :meth:`confirm` rejected the best;
        best_score, best_step: its score on the selection's key (the minimum of the history
            unless :meth:`confirm` rejected that minimum) and its step;
        history: ``[(step, score), ...]``;
        stopped_by: ``None``, ``"patience"`` or ``"budget"``; once set (and saved with the
            record) the stage is over: a resumed monitor stops the fit at its first call and
            scores nothing more, so a resumed stage delivers the same checkpoint;
        confirmation: ``None``, or the record of :meth:`confirm`.
    """

    def __init__(self, validation: Validation, ds: xr.Dataset, *, deadline: float | None = None,
                 record: str | Path | None = None, snapshots_per_step: int | None = None) -> None:
        self.validation = validation
        self.deadline = deadline
        self._ds = ds
        self.record = None if record is None else Path(record)
        self.windows, self.starts = _starting_windows(ds, validation)
        self.every = evaluation_interval(validation, self.windows.shape[:2], snapshots_per_step)
        self.best: Fitted | None = None
        self.best_score = float("inf")
        self.best_step = -1
        self.history: list[tuple[int, float]] = []
        self.stopped_by: str | None = None
        self._template: Fitted | None = None
        self._limits: tuple | None = None  # divergence bounds, from the first model scored
        self._since_best = 0  # evaluations since the best or the last drop, the later
        self.lr_drop_steps: list[int] = []
        self.confirmation: dict | None = None
        self._rescore_best = False
        if self.record is not None and (self.record / "validation.json").is_file():
            self._restore()

    def score(self, fitted: Fitted, n_samples: int | None = None, key=None) -> float:
        """The validation score of ``fitted`` (module docstring) with ``n_samples`` members
        (default: the validation's ``n_samples``) drawn from ``key`` (default: the
        validation's, the same for every checkpoint)."""
        from msde_ppl.predict.forecast import _training_range, trajectory_ensemble
        from msde_ppl.predict.metrics import diverged_members, divergence_limits

        if self._template is None:  # compile once for this fit's structure and data range
            self._template = fitted
            self._limits = divergence_limits(_training_range(fitted, self._ds))
        horizon = self.windows.shape[1]
        dt = float(fitted.grid["dt"])
        times = dt * np.arange(horizon)
        n_samples = self.validation.n_samples if n_samples is None else n_samples
        ensemble = trajectory_ensemble(self._template, times, n_samples, params=fitted.params)
        if key is None:
            key = jax.random.key(self.validation.seed)  # the same for every checkpoint (CRN)
        lower, upper = self._limits
        means, micros, diverged = [], [], []
        for y, t0 in zip(self.windows, self.starts, strict=True):
            _, blocks = ensemble.blocks(key, y, t0=float(t0))
            hit, parts, micro_parts = False, [], []
            for _, draws, summary in blocks:  # one block of fields in memory at a time
                hit = hit | diverged_members(draws, lower, upper)
                parts.append(summary["mean"])
                if "micro" in summary:
                    micro_parts.append(summary["micro"])
            diverged.append(hit)
            means.append(np.concatenate(parts).astype(np.float64))
            if micro_parts:
                micros.append(np.concatenate(micro_parts).astype(np.float64))
        mean = np.stack(means)
        if not np.isfinite(mean).all():
            return float("inf")
        y = np.asarray(self.windows, np.float64)
        micro = np.stack(micros) if micros else None
        diff = (carry_residual(mean, y, micro) - y).reshape(*y.shape[:2], -1)[:, 1:]
        norm = y.reshape(*y.shape[:2], -1)[:, 1:]
        with np.errstate(over="ignore", invalid="ignore"):
            errors = np.sqrt((diff**2).sum(-1)) / np.sqrt((norm**2).sum(-1))
        value = float(np.mean(errors)) + float(np.mean(diverged))
        return value if np.isfinite(value) else float("inf")

    def __call__(self, fitted: Fitted) -> bool:
        step = len(fitted.losses)
        if self.stopped_by is not None:
            return True  # a resumed stage that had already ended
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.evaluate(fitted)
            self.stopped_by = "budget"
            self._save(False)
            return True
        last = self.history[-1][0] if self.history else 0
        if step // self.every <= last // self.every:
            return False  # no multiple of `every` passed since the last evaluation
        self.evaluate(fitted)
        stale = step - self.best_step >= self.validation.patience_fraction * step
        if self._since_best >= self.validation.patience and stale:
            if len(self.lr_drop_steps) < self.validation.lr_drops:
                self.lr_drop_steps.append(step)  # a plateau: go on at a lower learning rate
                self._since_best = 0
                self._save(False)
                return False
            self.stopped_by = "patience"
            self._save(False)
            return True
        return False

    @property
    def lr_factor(self) -> float:
        """The factor on the fit's learning rate: ``lr_drop_factor`` to the number of drops
        so far (pass ``lambda: monitor.lr_factor`` as the fit's ``lr_factor``)."""
        return self.validation.lr_drop_factor ** len(self.lr_drop_steps)

    def evaluate(self, fitted: Fitted) -> float:
        """Score ``fitted`` once (skipped if its step was already scored) and keep it if
        best."""
        step = len(fitted.losses)
        if self.stopped_by is not None and self.history:
            return self.history[-1][1]  # the stage is over: nothing more competes
        if self.history and self.history[-1][0] == step:
            return self.history[-1][1]
        if self._rescore_best:  # a record of another score kind: rescore its best
            self._rescore_best = False
            self.best_score = self.score(self.best)
        value = self.score(fitted)
        self.history.append((step, value))
        threshold = self.best_score * (1 - self.validation.min_rel_improvement)
        improved = value < threshold or self.best is None
        if improved:
            self.best, self.best_score, self.best_step = fitted, value, step
            self._since_best = 0
        else:
            self._since_best += 1
        self._save(improved)
        return value

    def confirm(self, start: Fitted, stage: int = 1) -> bool:
        """Confirm the best checkpoint against ``start``, the checkpoint scored at step 0 (a
        grown stage's start), by the rule of the module docstring: both scored with
        ``max(confirm_samples, n_samples)`` members on the fresh key ``fold_in(key, stage)``
        (no part of the selection; another for every grown stage of a fit), the best kept only
        if it beats the start by ``min_rel_improvement`` there or the start's score is not
        finite; otherwise the start becomes the best (``best_step`` 0, ``best_score`` its
        step-0 score). Returns whether the best was kept. Nothing to confirm (``True``) when
        the start is already the best, was never scored, or ``confirm_samples`` is ``None``;
        a confirmation already recorded (a resumed stage) is not redone."""
        if stage < 1:
            raise ValueError(f"only a grown stage (stage >= 1) has a start, got stage {stage}")
        if self.confirmation is not None:
            return self.confirmation["kept"] == "best"
        scored_start = [v for s, v in self.history if s == 0]
        if (self.validation.confirm_samples is None or self.best is None
                or self.best_step == 0 or not scored_start):
            return True
        n = max(self.validation.confirm_samples, self.validation.n_samples)
        fresh = jax.random.fold_in(jax.random.key(self.validation.seed), stage)
        best, first = self.score(self.best, n, fresh), self.score(start, n, fresh)
        threshold = first * (1 - self.validation.min_rel_improvement)
        kept = bool(not np.isfinite(first) or best < threshold)
        self.confirmation = {"n_samples": n, "best_step": self.best_step,
                             "best_score": _finite_or_none(best),
                             "start_score": _finite_or_none(first),
                             "kept": "best" if kept else "start"}
        if not kept:
            self.best, self.best_step, self.best_score = start, 0, scored_start[0]
        self._save(not kept)
        return kept

    def summary(self) -> dict:
        """JSON-able record: best step and score, the history (a non-finite score is
        ``None``), why it stopped."""
        return {"best_step": self.best_step, "best_score": _finite_or_none(self.best_score),
                "stopped_by": self.stopped_by, "lr_drop_steps": list(self.lr_drop_steps),
                "history": [[s, _finite_or_none(v)] for s, v in self.history],
                "settings": dataclasses.asdict(self.validation), "every": self.every,
                "confirmation": self.confirmation, "score": SCORE_KIND}

    def _save(self, improved: bool) -> None:
        if self.record is None:
            return
        if improved:
            (self.record / "best").mkdir(parents=True, exist_ok=True)
            self.best.save(self.record / "best", into=True)
        write_text(self.record / "validation.json", json.dumps(self.summary()) + "\n")

    def _restore(self) -> None:
        meta = json.loads((self.record / "validation.json").read_text())
        if (self.record / "best" / "fitted.json").is_file():
            self.best = Fitted.load(self.record / "best")
            score = meta["best_score"]
            self.best_score = float("inf") if score is None else float(score)
            self.best_step = int(meta["best_step"])
        self.history = [(int(s), float("inf") if v is None else float(v))
                        for s, v in meta["history"]]
        self.lr_drop_steps = [int(s) for s in meta.get("lr_drop_steps", [])]
        self.confirmation = meta.get("confirmation")
        self.stopped_by = meta.get("stopped_by")
        # a stage scored by another kind (raw before stop 62, fixed steps before stop 63, steps
        # at the rate 0.5 before stop 64) and still running: its best is scored again before
        # the next checkpoint is compared
        self._rescore_best = (self.best is not None and self.stopped_by is None
                              and meta.get("score") != SCORE_KIND)
        since = max([self.best_step, *self.lr_drop_steps])
        self._since_best = sum(1 for s, _ in self.history if s > since)
