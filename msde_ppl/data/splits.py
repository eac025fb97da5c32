"""Split selection and the model-facing view of a dataset (the one owner of both).

A dataset's optional ``split`` coordinate labels every trajectory ``"train"``, ``"val"`` or
``"test"``, or every snapshot (a split in time, :mod:`msde_ppl.data.schema`: one long record cut
into consecutive blocks). :func:`select_split` picks one split (trajectories, or a block of
times of every trajectory: either way a dataset of whole trajectories to window or forecast
from their first snapshot); :func:`observations` returns it as the arrays a
model program reads: ``u`` as ``(traj, time, C, *fine)`` float32 (``C = 1`` without a ``field``
dim) and the time stamps ``(time,)`` float32.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from msde_ppl.data.schema import SchemaError

__all__ = ["SPLIT_RULE", "SPLIT_RULE_TIME", "evenly_spread", "first_snapshots", "observations",
           "select_split", "split_names", "splits_in_time", "with_held_out_splits"]

#: How trajectories without labels are split (:func:`with_held_out_splits`), in words.
SPLIT_RULE = ("in their order: the last max(1, round(n/10)) trajectories are test, the same "
              "number before them val, the rest train")
#: ... and one or two trajectories: a split in time.
SPLIT_RULE_TIME = ("in time, as there are fewer than 3 trajectories: the last "
                   "max(2, round(T/10)) snapshots are test, the same number before them val, "
                   "the rest train")
#: The fewest snapshots a split in time is made from: train keeps at least 6.
_MIN_TIME_SPLIT = 10


def evenly_spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` distinct indices of ``range(n)``, evenly spread, the first and last
    included (all ``n`` when ``k >= n``): a sample of trajectories or snapshots."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def split_names(ds: xr.Dataset) -> set[str]:
    """The split labels present in ``ds`` (empty without a ``split`` coordinate)."""
    return set(np.asarray(ds["split"].values).astype(str).tolist()) if "split" in ds.coords \
        else set()


def with_held_out_splits(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a ``split`` coordinate by :data:`SPLIT_RULE`, or with one or two
    trajectories by :data:`SPLIT_RULE_TIME` (a split in time: the model is scored on the
    future of the trajectories it was trained on); deterministic (the same data always get the
    same labels), with the attribute ``split_rule`` saying which rule.

    Raises:
        SchemaError: ``ds`` already has labels, or fewer than 3 trajectories of fewer than
            10 snapshots (no honest held-out score).

    ``round`` is Python's (halves to even: 25 snapshots give blocks of 2, 35 of 4).
    """
    if "split" in ds.coords:
        raise SchemaError("the dataset already has a 'split' coordinate")
    n, n_time = ds.sizes["traj"], ds.sizes["time"]
    if n >= 3:
        return _labelled_tail(ds, "traj", max(1, round(n / 10)), SPLIT_RULE)
    if n_time < _MIN_TIME_SPLIT:
        raise SchemaError(
            f"the dataset has {n} trajectories of {n_time} snapshots and no 'split' labels: a "
            f"held-out score needs at least 3 trajectories (train, val, test) or "
            f"{_MIN_TIME_SPLIT} snapshots to split in time, or labels you give "
            "(from_arrays(..., split=[...]), per snapshot with split_over='time')")
    return _labelled_tail(ds, "time", max(2, round(n_time / 10)), SPLIT_RULE_TIME)


def _labelled_tail(ds: xr.Dataset, dim: str, k: int, rule: str) -> xr.Dataset:
    """``ds`` labelled along ``dim``: the last ``k`` test, the ``k`` before them val, the rest
    train; ``rule`` (in words) as the attribute ``split_rule``."""
    n = ds.sizes[dim]
    out = ds.assign_coords(split=(dim, np.asarray(["train"] * (n - 2 * k) + ["val"] * k
                                                   + ["test"] * k)))
    out.attrs["split_rule"] = rule
    return out


def splits_in_time(ds: xr.Dataset) -> bool:
    """Whether ``ds``'s ``split`` labels snapshots (a split in time), not trajectories."""
    return "split" in ds.coords and ds["split"].dims == ("time",)


def select_split(ds: xr.Dataset, split: str | None) -> xr.Dataset:
    """Trajectories of one split (with a split in time: the split's block of times of every
    trajectory); all of ``ds`` if ``split`` is ``None``.

    Raises:
        SchemaError: a split is requested but the dataset has no labels, or none in ``split``.
    """
    if split is None:
        return ds
    if "split" not in ds.coords:
        raise SchemaError(f"split {split!r} requested but the dataset has no 'split' coordinate")
    mask = np.asarray(ds["split"].values).astype(str) == split
    if not mask.any():
        what = "snapshot" if splits_in_time(ds) else "trajectory"
        raise SchemaError(f"the dataset has no {what} in split {split!r}")
    return ds.isel({ds["split"].dims[0]: np.flatnonzero(mask)})


def observations(ds: xr.Dataset, split: str | None = "train") -> tuple[np.ndarray, np.ndarray]:
    """``u`` of one split as ``(traj, time, C, *fine)`` float32, and the times ``(time,)``."""
    sel = select_split(ds, split) if split is not None and "split" in ds.coords else ds
    if split is not None and "split" not in ds.coords and split != "train":
        raise SchemaError(f"split {split!r} requested but the dataset has no 'split' coordinate")
    u = np.asarray(sel["u"].values, np.float32)
    if "field" not in sel["u"].dims:
        u = u[:, :, None]
    return u, np.asarray(sel["time"].values, np.float32)


def first_snapshots(ds: xr.Dataset, n_time: int) -> xr.Dataset:
    """The first ``n_time`` snapshots of every trajectory (the evaluation horizon
    ``eval_steps`` clipped to them)."""
    if n_time < 2:
        raise SchemaError(f"need at least 2 snapshots, got {n_time}")
    out = ds.isel(time=slice(0, n_time))
    if "eval_steps" in out.attrs:
        out.attrs["eval_steps"] = min(int(out.attrs["eval_steps"]), out.sizes["time"])
    return out
