r"""Forward-solver-free ELBO (amortized reparametrisation; Course & Nair 2023; docs/method.md §4).

For a model whose latent path sites are :class:`~msde_ppl.generative.SDEPath` (prior SDE
:math:`dz = f_\theta dt + \operatorname{diag}(s) d\beta`) and a guide whose path sites are
:class:`~msde_ppl.inference.GaussMarkovPath` (posterior SDE
:math:`dz = f_q dt + \operatorname{diag}(s) d\beta`, marginals :math:`\mathcal N(m(t), S(t))`),
Girsanov's theorem gives

.. math::

    \mathrm{ELBO} = \sum_i \mathbb E_{q(z(t_i))}\big[\log p(y_i \mid z(t_i))\big]
        - \beta\Big[\int_{t_1}^{t_M} \tfrac12\,\mathbb E_{q(z(t))}
              \big\|(f_q(z,t) - f_\theta(z,t))/s\big\|^2 dt
        + \mathrm{KL}\big(q(z(t_1))\,\|\,p_0\big)
        + \mathbb E_q\big[\log q(\theta) - \log p(\theta)\big]\Big],

with :math:`f_q = \dot m - A(z - m)`, :math:`A = \tfrac12(s^2/S - \tfrac{d}{dt}\log S)`.
Every expectation is over Gaussian *marginals* at single times, so no SDE is ever solved:

- data term: one draw :math:`z_i \sim \mathcal N(m(t_i), S(t_i))` per time, independently
  (valid because the likelihood factorises over time given the path — a requirement on models
  used with this objective), pushed through the model's observed sites (with their plate scales);
- KL-rate integral: a fresh, independent draw :math:`z'` at the posterior's quadrature nodes
  (:meth:`~msde_ppl.inference.GaussMarkovPath.kl_nodes`): for the kernel-interpolation guide
  the path grid times, integrated over the window by the trapezoidal rule (default) or by
  :math:`T_B \cdot \mathrm{mean}_i` (``quadrature="mean"``, the reference code's Monte Carlo
  estimate, docs/method.md §4); for the Markov guide (:mod:`msde_ppl.inference.markov`), whose
  drift jumps at the grid times, random times inside every interval (unbiased);
- global sites: the usual score-free Monte Carlo term :math:`\log p(\theta) - \log q(\theta)`
  at the guide's sample (as in ``Trace_ELBO``);
- initial state: :math:`-\mathrm{KL}(q(z(t_1))\|p_0)` in closed form when NumPyro has it,
  else by Monte Carlo; only when the path site has an ``init_dist`` (see decisions below).

Decisions on the docs/method.md §4.3 ambiguities (documented here because they change numbers):

1. **Scaling** (§10.1). The estimator is the *un-averaged* log density: the sum over every
   observed scalar of the window(s), with NumPyro plate scales (``size/subsample_size``)
   applied, so with full data it is an unbiased estimate of the ELBO itself and bounds the log
   evidence. ``normalize=True`` divides the *loss* by the number of (scaled) observed scalars,
   i.e. reports ELBO/(N·n_y) as in the reference code; it does not change the optimum.
2. **Quadrature** (§10.3). The KL-rate integral is taken at the path's grid (= data) times.
   Trapezoid is the default: it is second-order for smooth integrands and windows that overlap
   by one point compose exactly into the full-trajectory rule, whereas
   :math:`T_B\cdot\mathrm{mean}_i` over-weights the two end points. ``quadrature="mean"``
   reproduces the reference.
3. **Independent samples** (§10.3). The KL draw is independent of the likelihood draw (as the
   reference); both use ``num_particles`` draws.
4. **Initial state** (§10.3). The path measure KL is
   :math:`\mathrm{KL}(q_0\|p_0) + \int \text{rate}`. When the model's :class:`SDEPath` carries an
   ``init_dist`` the initial term is included (this is what makes the bound tight, which the
   exact-posterior test checks). Windows cut from the middle of a trajectory have no tractable
   prior marginal at their first time; models then use ``init_dist=None``, a flat density on
   the first state, whose KL term is minus the entropy of :math:`q(z(t_1))` (``initial="flat"``,
   default: the ELBO of the program as written, a bound on its evidence; without it the
   objective rewards a too-narrow first marginal, which biases the diffusion low on an exactly
   solvable OU problem). ``initial="drop"`` drops the term, reproducing the reference code (the
   built-in model's recipe keeps it).
5. **Warm-up** (§2.3 item 5). ``beta`` multiplies the whole KL (path rate, initial state and the
   global sites), so ``beta=1`` is the ELBO; :func:`linear_beta_warmup` gives the reference ramp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array
from numpyro import handlers
from numpyro.distributions import kl_divergence
from numpyro.infer.elbo import ELBO

from msde_ppl.generative.sde_path import SDEPath
from msde_ppl.inference.gauss_markov import GaussMarkovPath

__all__ = ["SolverFreeELBO", "linear_beta_warmup", "path_kl_integral"]


def linear_beta_warmup(step: Array | int, n_transition: int, n_warmup: int = 0) -> Array:
    r"""KL warm-up weight :math:`\beta = \mathrm{clip}((\text{step} - n_w)/n_t, 0, 1)`."""
    return jnp.clip((jnp.asarray(step, jnp.float32) - n_warmup) / n_transition, 0.0, 1.0)


def path_kl_integral(
    prior: SDEPath,
    posterior: GaussMarkovPath,
    rng_key: jax.Array,
    quadrature: Literal["trapezoid", "mean"] = "trapezoid",
) -> Array:
    r"""Monte Carlo quadrature of the KL rate :math:`\tfrac12\|(f_q - f_\theta)/s\|^2` (a window).

    The nodes are the posterior's (:meth:`GaussMarkovPath.kl_nodes`): the grid times, reduced by
    ``quadrature``, for a process with smooth moments; random times inside every interval for
    one whose drift jumps at the grid (:class:`~msde_ppl.inference.markov.MarkovBridgePath`).
    At each node one state is drawn from the marginal :math:`\mathcal N(m, S)`.

    Args:
        prior: model path distribution (drift :math:`f_\theta`, diffusion :math:`s`, times).
        posterior: guide process over the same grid.
        rng_key: key of the node times (if random) and of the marginal draws.
        quadrature: rule for grid nodes, ``"trapezoid"`` or ``"mean"``
            (:math:`(t_M - t_1)\,\mathrm{mean}_i`).

    Returns:
        Integral per batch element, shape ``batch``.
    """
    if prior.batch_shape != posterior.batch_shape or prior.event_shape != posterior.event_shape:
        raise ValueError(
            f"guide path shape {posterior.batch_shape}+{posterior.event_shape} does not match "
            f"model path shape {prior.batch_shape}+{prior.event_shape}"
        )
    if quadrature not in ("trapezoid", "mean"):
        raise ValueError(f"unknown quadrature {quadrature!r}")
    times, weights, z, f_q = posterior.kl_draws(rng_key)
    n_batch = len(prior.batch_shape)
    s = jnp.expand_dims(prior.batch_diffusion(), n_batch)
    f_p = prior.drift_values(times, z)
    state_axes = tuple(range(n_batch + 1, jnp.ndim(z)))
    rate = 0.5 * jnp.sum(((f_q - f_p) / s) ** 2, axis=state_axes)
    if weights is not None:
        return jnp.sum(weights * rate, axis=-1)
    if quadrature == "trapezoid":
        dt = jnp.diff(times, axis=-1)
        return jnp.sum(0.5 * (rate[..., 1:] + rate[..., :-1]) * dt, axis=-1)
    return (times[..., -1] - times[..., 0]) * jnp.mean(rate, axis=-1)


def _scale(site: dict) -> Array | float:
    scale = site.get("scale")
    return 1.0 if scale is None else scale


def _site_log_prob(site: dict) -> Array:
    with jax.numpy_rank_promotion("allow"):  # third-party densities broadcast by rank
        return _scale(site) * jnp.sum(site["fn"].log_prob(site["value"]))


class SolverFreeELBO(ELBO):
    """Forward-solver-free ELBO for SDE path models (see the module docstring for the math).

    Args:
        num_particles: Monte Carlo particles (each: one guide draw, one marginal draw for the
            likelihood and an independent one for the KL rate).
        vectorize_particles: ``vmap`` particles (``True``), ``lax.map`` (``False``) or a callable.
        beta: KL weight (float or traced scalar); use :meth:`with_beta` inside a jitted step.
        quadrature: ``"trapezoid"`` (default) or ``"mean"`` for the KL-rate time integral.
        normalize: divide the loss by the number of (plate-scaled) observed scalars.
        initial: ``"flat"`` (default) or ``"drop"``: the first state's KL term for a path site
            without ``init_dist`` (module docstring, decision 4).
    """

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        *,
        beta: float | Array = 1.0,
        quadrature: Literal["trapezoid", "mean"] = "trapezoid",
        normalize: bool = False,
        initial: Literal["flat", "drop"] = "flat",
    ) -> None:
        if quadrature not in ("trapezoid", "mean"):
            raise ValueError(f"unknown quadrature {quadrature!r}")
        if initial not in ("flat", "drop"):
            raise ValueError(f"initial must be 'flat' or 'drop', got {initial!r}")
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.beta = beta
        self.quadrature = quadrature
        self.normalize = normalize
        self.initial = initial

    def with_beta(self, beta: float | Array) -> SolverFreeELBO:
        """A copy of this objective with a different KL weight (may be a traced scalar)."""
        return SolverFreeELBO(
            self.num_particles,
            self.vectorize_particles,
            beta=beta,
            quadrature=self.quadrature,
            normalize=self.normalize,
            initial=self.initial,
        )

    # ------------------------------------------------------------------ one particle
    def _particle_terms(
        self,
        rng_key: jax.Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict[str, Any],
    ) -> dict[str, Array]:
        key_guide, key_ll, key_kl, key_model = jax.random.split(rng_key, 4)
        guide_trace = handlers.trace(
            handlers.substitute(handlers.seed(guide, key_guide), data=param_map)
        ).get_trace(*args, **kwargs)
        posteriors = {
            name: site["fn"]
            for name, site in guide_trace.items()
            if site["type"] == "sample" and isinstance(site["fn"], GaussMarkovPath)
        }
        replay_trace = dict(guide_trace)
        keys_kl = {}
        for i, (name, q) in enumerate(posteriors.items()):
            z_ll = q.sample_marginals(jax.random.fold_in(key_ll, i))
            keys_kl[name] = jax.random.fold_in(key_kl, i)
            replay_trace[name] = {**guide_trace[name], "value": z_ll}
        model_trace = handlers.trace(
            handlers.replay(
                handlers.substitute(handlers.seed(model, key_model), data=param_map),
                trace=replay_trace,
            )
        ).get_trace(*args, **kwargs)

        zero = jnp.zeros(())
        log_lik, path_kl, init_kl, global_kl, n_obs = zero, zero, zero, zero, zero
        for name, site in model_trace.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                log_lik = log_lik + _site_log_prob(site)
                n_obs = n_obs + _scale(site) * jnp.size(site["value"])
                continue
            if name not in guide_trace:
                raise ValueError(f"latent site {name!r} of the model is missing from the guide")
            if name in posteriors:
                prior = site["fn"]
                if not isinstance(prior, SDEPath):
                    raise TypeError(
                        f"guide site {name!r} is a GaussMarkovPath but the model's site is "
                        f"{type(prior).__name__}, not an SDEPath"
                    )
                q = posteriors[name]
                scale = _scale(site)
                path_kl = path_kl + scale * jnp.sum(
                    path_kl_integral(prior, q, keys_kl[name], self.quadrature)
                )
                if prior.init_dist is not None:
                    init_kl = init_kl + scale * self._initial_kl(prior, q, site["value"])
                elif self.initial == "flat":
                    init_kl = init_kl - scale * self._initial_entropy(q)
            elif isinstance(site["fn"], SDEPath):
                raise TypeError(
                    f"model path site {name!r} needs a GaussMarkovPath in the guide, got "
                    f"{type(guide_trace[name]['fn']).__name__}"
                )
            else:
                global_kl = global_kl + _site_log_prob(guide_trace[name]) - _site_log_prob(site)
        for name, site in guide_trace.items():  # auxiliary guide-only sites
            if site["type"] == "sample" and name not in model_trace:
                global_kl = global_kl + _site_log_prob(site)
        elbo = log_lik - self.beta * (path_kl + init_kl + global_kl)
        return {
            "elbo": elbo,
            "log_lik": log_lik,
            "path_kl": path_kl,
            "init_kl": init_kl,
            "global_kl": global_kl,
            "n_obs": n_obs,
        }

    @staticmethod
    def _initial_entropy(q: GaussMarkovPath) -> Array:
        r"""Entropy of the first marginal (:math:`\tfrac12\sum\log(2\pi e S(t_1))` when
        diagonal), summed over the batch: minus the KL to a flat density on the first state."""
        return jnp.sum(q.initial_marginal().entropy())

    @staticmethod
    def _initial_kl(prior: SDEPath, q: GaussMarkovPath, z: Array) -> Array:
        q0 = q.initial_marginal()
        p0 = prior.init_dist.expand(q.batch_shape)
        with jax.numpy_rank_promotion("allow"):
            try:
                return jnp.sum(kl_divergence(q0, p0))
            except NotImplementedError:
                z0 = jnp.take(z, 0, axis=len(q.batch_shape))
                return jnp.sum(q0.log_prob(z0) - p0.log_prob(z0))

    # ------------------------------------------------------------------ public
    def loss_terms(
        self,
        rng_key: jax.Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Array]:
        """Particle-averaged ELBO and its components (``log_lik``, ``path_kl``, ...).

        Also returns ``"elbo_particles"``: the per-particle ELBO estimates, shape
        ``(num_particles,)`` (for Monte Carlo standard errors).
        """

        def one(key: jax.Array) -> dict[str, Array]:
            return self._particle_terms(key, param_map, model, guide, args, kwargs)

        if self.num_particles == 1:
            terms = jax.tree.map(lambda x: x[None], one(rng_key))
        else:
            terms = self.vectorize_particles_fn(
                one, jax.random.split(rng_key, self.num_particles)
            )
        out = {k: jnp.mean(v) for k, v in terms.items()}
        out["elbo_particles"] = terms["elbo"]
        return out

    def loss_with_mutable_state(
        self,
        rng_key: jax.Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Negative ELBO (``/ n_obs`` when ``normalize``); no mutable state is supported."""
        terms = self.loss_terms(rng_key, param_map, model, guide, *args, **kwargs)
        loss = -terms["elbo"]
        if self.normalize:
            loss = loss / terms["n_obs"]
        return {"loss": loss, "mutable_state": None}
