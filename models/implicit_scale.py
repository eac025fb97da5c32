r"""The implicit-scale (closure) model: the multiscale program with no micro state (``K = 0``).

Generative model on the coarse grid (``C`` fields, ``n`` coarse nodes):

.. math::

    d\zeta &= f_\zeta(\zeta)\,dt + \operatorname{diag}(s)\,d\beta
        \qquad\text{(local stencil MLP, translation-equivariant)} \\
    y(t_i) \mid \zeta(t_i) &\sim \mathcal N(P\zeta(t_i),\ \sigma_M^2)

with the learned tied restriction / prolongation :math:`R, P`,
:math:`s \sim \mathrm{LogNormal}(\log 0.1, 2)^{\otimes Cn}` and
:math:`\sigma_M^2 \sim \mathrm{LogNormal}(\log 10^{-2}, 3)` per field. It is what coarse-grid
closure models are: everything the coarse state cannot carry must be absorbed by the drift, so the
fine-grid field is predicted only as :math:`P\zeta` (method: ``docs/method.md``).

Sample sites (``B`` windows of ``M`` snapshots):

=================  =========================  =======================
site               distribution               shape
=================  =========================  =======================
``diffusion``      LogNormal(log 0.1, 2)      ``(C n,)``
``obs_var_macro``  LogNormal(log 1e-2, 3)     ``(C,)``
``z``              SDEPath (plate windows)    ``(B, M, C n)``
``y`` (observed)   Normal, to_event(1)        ``(B, M, C, *fine)``
=================  =========================  =======================

The program is :func:`msde_ppl.multiscale.multiscale_model` with ``n_micro = 0``. Run
``python models/implicit_scale.py --n-traj 3 --n-time 101 --steps 20`` for a smoke run.
"""

from __future__ import annotations

import argparse

import jax

import msde_ppl as msde
from msde_ppl.multiscale import config_for


def main(args: argparse.Namespace) -> dict:
    ds = msde.make_dataset(args.case, n_traj=args.n_traj, seed=args.seed)
    ds = msde.data.first_snapshots(ds, args.n_time)
    config = config_for(args.case, ds["u"].shape[2:], n_micro=0)
    train = msde.TrainConfig(steps=args.steps, window=min(64, args.n_time), seed=args.seed,
                             chunk_size=50)
    fitted = msde.fit_multiscale(ds, config, train, progress=False)
    fc = msde.forecast(jax.random.key(args.seed), fitted, ds, split="test",
                       n_samples=args.samples)
    metrics = msde.forecast_metrics(fc, ds.attrs["eval_steps"])
    print(f"implicit-scale model on {args.case}: test rel-L2 {metrics['rel_l2_mean']:.4f}, "
          f"90% coverage {metrics['coverage_90']:.2f}")
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="kdv_1d", help="built-in dataset")
    p.add_argument("--n-traj", type=int, default=20, help="trajectories")
    p.add_argument("--n-time", type=int, default=1001, help="snapshots per trajectory")
    p.add_argument("--steps", type=int, default=4000, help="optimisation steps")
    p.add_argument("--samples", type=int, default=64, help="ensemble size")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
