r"""The DMD baseline (docs/method.md §7): exact DMD of one training trajectory, rolled out.

As the reference runs it: PyDMD's ``DMD(svd_rank=r, tikhonov_regularization=0.01)`` is fitted
on the snapshots of the **first training trajectory** at full resolution, ``X = [x_0 … x_{T-1}]``
(``n_features x T``), with ``r = n_macro + 5`` (the multiscale model's macro dimension plus 5:
25 for the 1D cases, 69 on an 8 x 8 coarse grid). It gives modes :math:`\Phi` (``n x r``) and
eigenvalues :math:`\lambda`, i.e. the one-step operator :math:`A = \Phi\,\mathrm{diag}(\lambda)
\,\Phi^+` (PyDMD's ``DMD.predict``). From each test trajectory's first (noisy) snapshot the
forecast is autoregressive, one step at a time, keeping the real part:
:math:`\hat x_{k+1} = \mathrm{Re}(A\,\hat x_k)`. :math:`\Phi^+` is computed once, and all test
trajectories step together, so a step costs two ``n x r`` products per trajectory.
"""

from __future__ import annotations

import time as _time
import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr

from msde_ppl.data.splits import select_split
from msde_ppl.predict._extras import require

TIKHONOV = 0.01  # the reference's regularisation


@dataclass(frozen=True)
class DMDModel:
    """A fitted DMD one-step operator in factored form: ``A = modes @ diag(eigs) @ pinv``."""

    modes: np.ndarray  # (n_features, r) complex
    eigs: np.ndarray  # (r,) complex
    pinv: np.ndarray  # (r, n_features) complex, the pseudo-inverse of ``modes``

    def step(self, x: np.ndarray) -> np.ndarray:
        """``Re(A x)`` for snapshots ``x`` of shape ``(n_features, B)``."""
        return (self.modes @ (self.eigs[:, None] * (self.pinv @ x))).real

    def rollout(self, x0: np.ndarray, n_steps: int) -> np.ndarray:
        """``(n_steps, B, n_features)`` from initial snapshots ``x0`` ``(B, n_features)``: the
        first is ``x0``, then one :meth:`step` at a time. A run that overflows goes ``inf``/NaN
        (and then scores as diverged), it is not stopped."""
        out = np.empty((n_steps,) + x0.shape, x0.dtype)
        x = np.asarray(x0, np.float64).T
        out[0] = x0
        with np.errstate(over="ignore", invalid="ignore"):
            for k in range(1, n_steps):  # numpy, not traced: one matrix product per step
                x = self.step(x)
                out[k] = x.T
        return out


def snapshot_matrix(u: xr.DataArray) -> np.ndarray:
    """``u`` ``(traj, time, ...)`` as ``(traj, time, n_features)`` (fields and grid flattened,
    in the dataset's order)."""
    values = np.asarray(u.values)
    return values.reshape(values.shape[0], values.shape[1], -1)


def fit_dmd(snapshots: np.ndarray, rank: int, tikhonov: float = TIKHONOV) -> DMDModel:
    """PyDMD's exact DMD of ``snapshots`` ``(time, n_features)`` (one trajectory)."""
    pydmd = require("pydmd", "DMD")
    if rank < 1 or rank > min(snapshots.shape):
        raise ValueError(f"the DMD rank must be in [1, {min(snapshots.shape)}] for "
                         f"{snapshots.shape[0]} snapshots of {snapshots.shape[1]} values, "
                         f"got {rank}")
    dmd = pydmd.DMD(svd_rank=int(rank), tikhonov_regularization=float(tikhonov))
    with warnings.catch_warnings():  # PyDMD's advice on ill-conditioned snapshots: the
        warnings.filterwarnings("ignore", "Input data condition number")  # Tikhonov term
        dmd.fit(np.asarray(snapshots, np.float64).T)
    modes = np.asarray(dmd.modes)
    return DMDModel(modes=modes, eigs=np.asarray(dmd.eigs), pinv=np.linalg.pinv(modes))


def dmd_forecast(ds: xr.Dataset, rank: int, *, split: str = "test",
                 n_steps: int | None = None, tikhonov: float = TIKHONOV
                 ) -> tuple[xr.DataArray, dict]:
    """Fit DMD on the first ``train`` trajectory of ``ds`` and forecast every trajectory of
    ``split`` from its first snapshot, over its first ``n_steps`` snapshots (all if ``None``).

    Returns ``(prediction, info)``: the prediction has the dims and coordinates of
    ``ds["u"]`` restricted to ``split`` (and to ``n_steps``); ``info`` holds the rank and the
    fit and prediction wall times.
    """
    start = _time.perf_counter()
    train = select_split(ds, "train")
    model = fit_dmd(snapshot_matrix(train["u"].isel(traj=[0]))[0], rank, tikhonov)
    fit_time = _time.perf_counter() - start
    start = _time.perf_counter()
    test = select_split(ds, split)
    u = test["u"] if n_steps is None else test["u"].isel(time=slice(0, int(n_steps)))
    x0 = snapshot_matrix(u.isel(time=[0]))[:, 0]
    path = model.rollout(x0, u.sizes["time"])  # (time, traj, n)
    pred = u.copy(data=np.moveaxis(path, 0, 1).reshape(u.shape).astype(u.dtype))
    info = {"rank": int(rank), "tikhonov": float(tikhonov), "fitted_on": "train trajectory 0",
            "fit_wall_time_s": fit_time, "predict_wall_time_s": _time.perf_counter() - start}
    return pred, info
