r"""The multiscale model (Ilersich & Nair 2025) on KdV data, fitted and forecast end to end.

Generative model (latent :math:`z = [\zeta; \eta]`, coarse field :math:`\zeta`, micro vector
:math:`\eta \in \mathbb R^K`):

.. math::

    d\zeta &= f_\zeta(\zeta, \eta)\,dt + \operatorname{diag}(s_\zeta)\,d\beta_\zeta
        \qquad\text{(local stencil MLP, translation-equivariant)} \\
    d\eta &= f_\eta(t, \zeta, \eta)\,dt + \operatorname{diag}(s_\eta)\,d\beta_\eta
        \qquad\text{(global MLP)} \\
    y(t_i) \mid z(t_i) &\sim \mathcal N(P\zeta, \sigma_M^2) \cdot
        \mathcal N(P\zeta + g(\eta), \sigma_m^2)\quad\text{(product of experts)}

Sample sites (``B`` windows of ``M`` snapshots, ``n_z = C n + K``):

=================  =================================  ======================
site               distribution                       shape
=================  =================================  ======================
``diffusion``      LogNormal(log 0.1, 2)              ``(n_z,)``
``obs_var_macro``  LogNormal(log 1e-2, 3)             ``(C,)``
``obs_var_micro``  LogNormal(log 1e-2, 3)             ``(C,)``
``z``              SDEPath (plate windows)            ``(B, M, n_z)``
``y`` (observed)   ProductOfExpertsNormal             ``(B, M, C, *fine)``
=================  =================================  ======================

The program is :func:`msde_ppl.multiscale.multiscale_model` (its docstring has the priors and
the optional physics-informed drift). This script runs the package's pipeline
(:func:`msde_ppl.pipeline.run.run_case`): the built-in KdV 1D dataset, the implicit-scale model
grown into the multiscale model (progressive schedule), ensemble forecasts of the test split and
their scores. Run ``python models/multiscale.py --n-traj 3 --steps 20 --micro-steps 20
--n-time 101`` for a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import json

import msde_ppl as msde
from msde_ppl.pipeline.run import model_config, progressive_stages, run_case


def main(args: argparse.Namespace) -> dict:
    ds = msde.make_dataset("kdv_1d", n_traj=args.n_traj, seed=args.seed)
    ds = msde.data.first_snapshots(ds, args.n_time)
    first = msde.TrainConfig(steps=args.steps, window=min(64, args.n_time), seed=args.seed,
                             chunk_size=50)
    stages = progressive_stages(args.micro, first, args.micro_steps)
    result = run_case(ds, model_config(ds, n_micro=args.micro), stages,
                      n_samples=args.samples, seed=args.seed)
    report = {name: {k: v for k, v in m.items() if k.startswith(("rel_l2", "crps", "cov"))}
              for name, m in result["metrics"].items()}
    print(json.dumps(report, indent=2))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-traj", type=int, default=20, help="trajectories (split 10/5/5)")
    p.add_argument("--n-time", type=int, default=1001, help="snapshots per trajectory")
    p.add_argument("--micro", type=int, default=5, help="micro dimension")
    p.add_argument("--steps", type=int, default=3000, help="implicit-scale steps")
    p.add_argument("--micro-steps", type=int, default=6000, help="multiscale steps")
    p.add_argument("--samples", type=int, default=64, help="ensemble size")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
