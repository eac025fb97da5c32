r"""Amortized neural autoguide for SDE path models (docs/method.md §3.1–2.2).

For every latent **path site** of the model (a :class:`~msde_ppl.generative.SDEPath`) the guide

1. encodes each observed snapshot :math:`o_i` of the window with a user encoder (an
   :class:`equinox.Module` registered with :func:`numpyro.contrib.module.eqx_module`):
   :math:`o_i \mapsto (\mu_i, \log v_i)` (or :math:`(\mu_i, v_i)`);
2. turns the encodings into a Gauss–Markov process that shares the prior's diffusion
   :math:`s`: by default the posterior of a reference OU process conditioned on them as
   pseudo-observations around a smooth kernel trend (:mod:`msde_ppl.inference.markov`,
   :class:`~msde_ppl.inference.markov.MarkovBridgePath`); or, as the reference code, a
   smooth deep-kernel interpolation of means and log-variances
   (:func:`~msde_ppl.inference.kernel.interpolate_window`,
   :class:`~msde_ppl.inference.GaussMarkovPath`);
3. samples the path from that process.

Every other latent site (physical coefficients, diffusion scales, ...) gets an AutoNormal-style
mean-field Normal in unconstrained space pushed through ``biject_to(support)``:
:math:`\theta = T(u)`, :math:`u \sim \mathcal N(\text{loc}, \text{scale}^2)`.

To know the current time grid, diffusion, observations and plate sizes, the guide runs the
model once per call (all ``sample``/``plate`` messages blocked, latent values substituted, only
``param`` messages let through so model parameters take their current values). Under ``jit`` that
run costs only tracing: nothing it computes except the quantities used is kept by XLA. Plates
around path sites are re-created on every call with the model's *current* size, subsample size,
and subsample indices — unlike NumPyro's ``AutoGuide._create_plates``, which freezes the
subsample size seen when the prototype was traced, so a guide built on windows of one batch size
keeps working on another.

Requirements on the model: the observation site chosen by ``obs_site`` has value shape
``batch + (T,) + obs_shape`` aligned with the path site's ``batch + (T,)`` (one snapshot per
path time); non-path latent sites are not inside subsampled plates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array
from numpyro import handlers
from numpyro.contrib.module import eqx_module
from numpyro.distributions import biject_to, constraints
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.initialization import init_to_median

from msde_ppl.generative.sde_path import SDEPath
from msde_ppl.inference.gauss_markov import GaussMarkovPath
from msde_ppl.inference.kernel import TemporalKernel, WindowMoments, interpolate_window
from msde_ppl.inference.markov import (
    TREND_STEP_GAIN,
    MarkovBridgePath,
    OUSmoother,
    window_posterior,
)
from msde_ppl.inference.markov_coupled import (
    COUPLED_MAX_STATE,
    CoupledMarkovPath,
    CoupledOUSmoother,
    window_posterior_coupled,
)
from msde_ppl.inference.param_store import (
    encoder_name,
    fitted_network,
    global_param_names,
    kernel_name,
)

__all__ = ["AutoAmortizedSDE", "tied_encoder"]


def tied_encoder(site: str, encoder: eqx.Module) -> eqx.Module:
    """Register, inside a MODEL, the amortized guide's encoder of path site ``site``.

    The model and the guide then share one set of weights: e.g. a model whose prolongation
    :math:`P` is the adjoint of the guide's restriction :math:`R` reads both from the same
    scale operator. ``encoder`` must be the module the guide was built with (same structure).
    """
    return eqx_module(encoder_name(site), encoder)


def _is_real_support(support: constraints.Constraint) -> bool:
    return support is constraints.real or (
        isinstance(support, constraints.independent) and support.base_constraint is constraints.real
    )


def _seed_key() -> jax.Array | None:
    """A key from the seed handler around the call, or None when there is none (quietly:
    the callers fall back to something deterministic or refuse by name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Cannot generate JAX PRNG key")
        return numpyro.prng_key()


class AutoAmortizedSDE(AutoGuide):
    """Amortized encoder + temporal-kernel guide for path sites, mean-field Normal for globals.

    Args:
        model: NumPyro model with one or more :class:`SDEPath` latent sites.
        encoder: an :class:`equinox.Module` mapping ONE observation snapshot (shape
            ``obs_shape``) to ``(mean, logvar)`` of the latent state (each ``state_shape``); or a
            mapping ``{path_site: encoder}`` when the model has several path sites.
        kernel: how the encodings become a path process. ``"markov"`` (default): the
            posterior of a reference OU process that shares the model's diffusion, conditioned
            on the encodings as pseudo-observations, around a smooth kernel trend
            (:class:`~msde_ppl.inference.markov.OUSmoother`, one rate per latent coordinate;
            it contains the exact posterior of linear-Gaussian models whose coordinates are
            not coupled, docs/calibration.md); ``"coupled"``: the same with a full reference
            drift matrix and full-covariance paths
            (:class:`~msde_ppl.inference.markov_coupled.CoupledOUSmoother`, a state of one
            axis with at most :data:`~msde_ppl.inference.markov_coupled.COUPLED_MAX_STATE`
            coordinates), which holds the exact posterior of a linear model that couples
            them;
            ``"interpolation"``: the reference code's smooth kernel interpolation of means and
            log-variances (:class:`TemporalKernel`); or a module of either kind (or a mapping
            per path site). Default kernels' warp networks are drawn from ``kernel_key``
            (default: from the key the guide is set up with: ``setup``'s ``rng_key``, which
            ``inference.fit.init`` splits from its own key, or the first seeded call's, e.g.
            ``SVI.init``'s).
        obs_site: name of the observed site the encoder reads; default: the model's only observed
            site.
        encoder_output: ``"logvar"`` (default) or ``"var"`` for the encoder's second output.
        prefix: prefix of the global sites' parameter names (``{site}_{prefix}_loc/scale``).
        init_loc_fn: initialisation of global sites (default ``init_to_median``).
        init_scale: initial scale of the global sites' Normal posteriors in unconstrained space
            (default 0.01). A scale approaches its optimum faster from below: the entropy's
            gradient :math:`-1/s` is exact, while the data term's reparameterised gradient
            :math:`\\varepsilon\\,\\partial_\\theta \\log p` carries a noise that grows
            with :math:`s`, so a scale started above a narrow posterior shrinks slowly under
            minibatch noise. On an OU process observed with noise (posterior sd of
            :math:`\\log\\sigma` 0.022, 4000 Adam steps), the fitted sd was 1.07–1.34x the exact
            one from 0.1 and 0.96–0.99x from 0.01 (docs/calibration.md).
        kernel_key: PRNG key for the default kernels' warp networks.
        kl_nodes_per_interval: KL-rate quadrature nodes per interval of a ``"markov"`` path
            (stratified uniform random times).
        centred_interpolation: the ``"interpolation"`` kernel interpolates around each
            window's average instead of 0 (:func:`~msde_ppl.inference.kernel.interpolate_window`
            ``centred``: the path then follows the data's units, offsets included); default
            off, the reference's.
    """

    def __init__(
        self,
        model: Callable,
        encoder: eqx.Module | Mapping[str, eqx.Module],
        *,
        kernel: str | eqx.Module | Mapping[str, eqx.Module] | None = "markov",
        obs_site: str | None = None,
        encoder_output: Literal["logvar", "var"] = "logvar",
        prefix: str = "auto",
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.01,
        kernel_key: jax.Array | None = None,
        kl_nodes_per_interval: int = 1,
        centred_interpolation: bool = False,
    ) -> None:
        if kl_nodes_per_interval < 1:
            raise ValueError(f"kl_nodes_per_interval must be >= 1, got {kl_nodes_per_interval}")
        if encoder_output not in ("logvar", "var"):
            raise ValueError(f"encoder_output must be 'logvar' or 'var', got {encoder_output!r}")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)
        self._encoder_arg = encoder
        if kernel is None:
            kernel = "markov"
        if isinstance(kernel, str) and kernel not in ("markov", "coupled", "interpolation"):
            raise ValueError(f"kernel must be 'markov', 'coupled', 'interpolation' or a module, "
                             f"got {kernel!r}")
        self._kernel_arg = kernel
        self._kernel_key = kernel_key  # None: drawn from the seed of the first (set-up) call
        self.obs_site = obs_site
        self.encoder_output = encoder_output
        self.init_scale = init_scale
        self.kl_nodes_per_interval = int(kl_nodes_per_interval)
        self.centred_interpolation = bool(centred_interpolation)
        self._path_sites: list[str] = []
        self._global_sites: dict[str, dict[str, Any]] = {}
        self.encoders: dict[str, eqx.Module] = {}
        self.kernels: dict[str, eqx.Module] = {}

    # ------------------------------------------------------------------ prototype
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        init_loc_fn = self.init_loc_fn

        def substitute_fn(site: dict) -> Array | None:
            if site["type"] != "sample" or site["is_observed"]:
                return None
            if isinstance(site["fn"], SDEPath):
                return jnp.zeros(site["fn"].shape())
            return init_loc_fn(site)

        # The set-up's own seed and compile-time evaluation: the prototype (and the initial
        # values stored on the guide) must not hold tracers. A first call under jit has only a
        # traced key: its prototype's initial draws (init_to_median's prior samples) then come
        # from a fixed key, and the default kernels, which need a concrete one, are refused.
        setup_key = _seed_key()  # unseeded: None, refused below by name
        if setup_key is None:
            raise ValueError("the guide's set-up needs a concrete key: call setup(..., rng_key=) "
                             "or call the guide first under a seed outside jit (as SVI.init does)")
        with handlers.block(), jax.ensure_compile_time_eval():
            if isinstance(setup_key, jax.core.Tracer):
                key, default_kernel_key = jax.random.key(0), None
            else:
                key, default_kernel_key = jax.random.split(setup_key)
            trace = handlers.trace(
                handlers.substitute(handlers.seed(self.model, key), substitute_fn=substitute_fn)
            ).get_trace(*args, **kwargs)
        self.prototype_trace = trace
        observed = [n for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]]
        self._path_sites, self._global_sites = [], {}
        for name, site in trace.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if isinstance(site["fn"], SDEPath):
                self._path_sites.append(name)
                continue
            plates = {f.name: trace[f.name] for f in site["cond_indep_stack"]}
            for pname, plate_site in plates.items():
                size, subsample_size = plate_site["args"]
                if subsample_size is not None and subsample_size != size:
                    raise NotImplementedError(
                        f"global site {name!r} sits in subsampled plate {pname!r}; only path "
                        "sites may be local to subsampled plates in AutoAmortizedSDE"
                    )
            support = site["fn"].support
            value = site["value"]
            with jax.numpy_rank_promotion("allow"), jax.ensure_compile_time_eval():
                loc = biject_to(support).inv(value)
            if isinstance(loc, jax.core.Tracer):
                raise ValueError(
                    f"the initial value of {name!r} depends on traced model arguments; call the "
                    "guide once outside jit (or use an init_loc_fn that does not use the data)"
                )
            self._global_sites[name] = {
                "init_loc": loc,
                "event_dim": site["fn"].event_dim,
                "support": support,
                "frames": [(f.name, f.dim, trace[f.name]["args"][0])
                           for f in site["cond_indep_stack"]],
            }
        if self._path_sites:
            if self.obs_site is None:
                if len(observed) != 1:
                    raise ValueError(
                        f"the model has observed sites {observed}; pass obs_site= to choose the "
                        "one the encoder reads"
                    )
                self.obs_site = observed[0]
            elif self.obs_site not in observed:
                raise ValueError(f"obs_site {self.obs_site!r} is not an observed site {observed}")
        self.encoders = self._per_site(self._encoder_arg, "encoder")
        if isinstance(self._kernel_arg, str):
            kernel_key = default_kernel_key if self._kernel_key is None else self._kernel_key
            if kernel_key is None:
                raise ValueError("the default kernels need a concrete key: call setup(..., "
                                 "rng_key=), call the guide first under a seed outside jit (as "
                                 "SVI.init does), or pass kernel_key=")
            keys = jax.random.split(kernel_key, max(len(self._path_sites), 1))
            self.kernels = {}
            for name, k in zip(self._path_sites, keys, strict=False):
                if self._kernel_arg == "interpolation":
                    self.kernels[name] = TemporalKernel(key=k)
                else:
                    # the trend is a plain squared-exponential interpolant (no warp network:
                    # as good on val, ~30% cheaper per step than the deep kernel)
                    state_shape = trace[name]["fn"].state_shape
                    trend = TemporalKernel(hidden_size=0, step_gain=TREND_STEP_GAIN, key=k)
                    if self._kernel_arg == "coupled":
                        if len(state_shape) != 1 or state_shape[0] > COUPLED_MAX_STATE:
                            raise ValueError(
                                f"kernel='coupled' needs a state of one axis with at most "
                                f"{COUPLED_MAX_STATE} coordinates; path site {name!r} has "
                                f"state shape {state_shape}")
                        self.kernels[name] = CoupledOUSmoother(state_shape[0], trend=trend)
                    else:
                        self.kernels[name] = OUSmoother(state_shape, trend=trend)
        else:
            self.kernels = self._per_site(self._kernel_arg, "kernel")

    def _per_site(self, arg: Any, what: str) -> dict[str, Any]:
        if isinstance(arg, Mapping):
            missing = set(self._path_sites) - set(arg)
            if missing:
                raise ValueError(f"no {what} given for path sites {sorted(missing)}")
            return {n: arg[n] for n in self._path_sites}
        if len(self._path_sites) > 1:
            raise ValueError(
                f"the model has several path sites {self._path_sites}; pass a mapping of {what}s"
            )
        return {n: arg for n in self._path_sites}

    # ------------------------------------------------------------------ call
    def _trace_model(self, global_values: dict[str, Array], *args: Any, **kwargs: Any) -> dict:
        """Run the model with globals substituted and path values stubbed (no sampling)."""

        # every latent site is substituted, so nothing here draws but a subsampled plate's
        # indices; unseeded (posterior_paths without a key) they are the first windows, which
        # only set the plate's scale
        key = _seed_key()

        def substitute_fn(site: dict) -> Array | None:
            if site["type"] == "plate":
                subsample_size = site["args"][1]
                return (jnp.arange(subsample_size) if key is None and subsample_size is not None
                        else None)
            if site["type"] != "sample" or site["is_observed"]:
                return None
            if site["name"] in global_values:
                return global_values[site["name"]]
            if isinstance(site["fn"], SDEPath):
                return jnp.zeros(site["fn"].shape())
            return None

        model = self.model if key is None else handlers.seed(self.model, key)
        with handlers.block(hide_fn=lambda msg: msg["type"] != "param"):
            return handlers.trace(
                handlers.substitute(model, substitute_fn=substitute_fn)
            ).get_trace(*args, **kwargs)

    def _sample_globals(self) -> dict[str, Array]:
        result = {}
        for name, info in self._global_sites.items():
            with ExitStack() as stack:
                for pname, dim, size in info["frames"]:
                    stack.enter_context(numpyro.plate(pname, size, dim=dim))
                event_dim = info["event_dim"]
                loc_name, scale_name = global_param_names(name, self.prefix)
                loc = numpyro.param(loc_name, info["init_loc"], event_dim=event_dim)
                scale = numpyro.param(
                    scale_name,
                    jnp.full(jnp.shape(info["init_loc"]), self.init_scale),
                    constraint=constraints.softplus_positive,
                    event_dim=event_dim,
                )
                base = dist.Normal(loc, scale).to_event(event_dim)
                if _is_real_support(info["support"]):
                    result[name] = numpyro.sample(name, base)
                else:
                    transform = biject_to(info["support"])
                    result[name] = numpyro.sample(name, dist.TransformedDistribution(base,
                                                                                     transform))
        return result

    def _path_posterior(self, name: str, model_trace: dict) -> GaussMarkovPath:
        prior = model_trace[name]["fn"]
        if not isinstance(prior, SDEPath):
            raise TypeError(f"site {name!r} is no longer an SDEPath in the model")
        batch_shape, n_time = prior.batch_shape, prior.num_times
        obs = model_trace[self.obs_site]["value"]
        lead = batch_shape + (n_time,)
        if tuple(jnp.shape(obs)[: len(lead)]) != lead:
            raise ValueError(
                f"observations at {self.obs_site!r} have shape {jnp.shape(obs)}; the encoder needs "
                f"one snapshot per path time, i.e. leading shape {lead}"
            )
        obs_shape = jnp.shape(obs)[len(lead):]
        encoder = eqx_module(encoder_name(name), self.encoders[name])
        kernel = eqx_module(kernel_name(name), self.kernels[name])
        flat_obs = jnp.reshape(obs, (-1,) + tuple(obs_shape))
        enc_mean, enc_second = jax.vmap(encoder)(flat_obs)
        enc_logvar = enc_second if self.encoder_output == "logvar" else jnp.log(enc_second)
        state_shape = prior.state_shape
        n_flat = flat_obs.shape[0] // n_time
        window_shape = (n_flat, n_time) + state_shape
        if tuple(enc_mean.shape[1:]) != state_shape:
            raise ValueError(
                f"encoder returned states of shape {enc_mean.shape[1:]}, expected {state_shape}"
            )
        times = jnp.reshape(prior.batch_times(), (n_flat, n_time))
        if isinstance(self.kernels[name], OUSmoother | CoupledOUSmoother):
            diffusion = jnp.reshape(prior.batch_diffusion(), (n_flat,) + state_shape)
            # the KL nodes' positions inside the intervals (midpoints when run unseeded)
            key = _seed_key()
            frac_shape = (n_flat, n_time - 1, self.kl_nodes_per_interval)
            frac = (jnp.full(frac_shape, 0.5) if key is None
                    else jax.random.uniform(key, frac_shape))
            coupled = isinstance(self.kernels[name], CoupledOUSmoother)
            posterior = window_posterior_coupled if coupled else window_posterior
            grid, cross, nodes = jax.vmap(partial(posterior, kernel))(
                times, jnp.reshape(enc_mean, window_shape),
                jnp.reshape(enc_logvar, window_shape), diffusion, frac)
            unflat = partial(jax.tree.map, lambda x: jnp.reshape(x, batch_shape + x.shape[1:]))
            if coupled:
                return CoupledMarkovPath(prior.batch_times(), unflat(grid), unflat(cross),
                                         unflat(nodes), prior.batch_diffusion())
            return MarkovBridgePath(prior.batch_times(), unflat(grid), unflat(cross),
                                    unflat(nodes), prior.batch_diffusion(), len(state_shape))
        centred = self.centred_interpolation
        moments = jax.vmap(lambda t, m, lv: interpolate_window(kernel, t, m, lv,
                                                               centred=centred))(
            times, jnp.reshape(enc_mean, window_shape), jnp.reshape(enc_logvar, window_shape)
        )
        moments = WindowMoments(*(jnp.reshape(x, lead + state_shape) for x in moments))
        return GaussMarkovPath(prior.batch_times(), moments, prior.batch_diffusion(),
                               len(state_shape))

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Array]:
        """Sample globals, then every path site from its amortized Gauss–Markov posterior."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        result = self._sample_globals()
        if not self._path_sites:
            return result
        model_trace = self._trace_model(result, *args, **kwargs)
        for name in self._path_sites:
            posterior = self._path_posterior(name, model_trace)
            frames = model_trace[name]["cond_indep_stack"]
            # re-create the model's CURRENT plates, with its subsample indices
            indices = {f.name: model_trace[f.name]["value"] for f in frames}
            with ExitStack() as stack:
                stack.enter_context(handlers.substitute(data=indices))
                plates = [
                    numpyro.plate(f.name, model_trace[f.name]["args"][0],
                                  subsample_size=f.size, dim=f.dim)
                    for f in frames
                ]
            with ExitStack() as stack:
                for p in plates:
                    stack.enter_context(p)
                result[name] = numpyro.sample(name, posterior)
        return result

    # ------------------------------------------------------------------ fitted pieces
    @property
    def path_sites(self) -> list[str]:
        """Names of the model's SDE path sites (after the guide has been set up)."""
        return list(self._path_sites)

    @property
    def global_sites(self) -> list[str]:
        """Names of the model's other latent (global) sites (after set-up)."""
        return list(self._global_sites)

    def global_support(self, name: str) -> constraints.Constraint:
        """Support of global site ``name``."""
        return self._global_sites[name]["support"]

    def global_scale(self, params: dict[str, Array], name: str) -> tuple[Array, Array]:
        """``(current, initial)`` unconstrained scale of global site ``name``'s posterior."""
        scale = params[global_param_names(name, self.prefix)[1]]
        return scale, jnp.full(jnp.shape(scale), self.init_scale)

    def encoder(self, params: dict[str, Array], site: str | None = None) -> eqx.Module:
        """The fitted encoder of path site ``site`` (default: the only one): one snapshot
        ``obs_shape -> (mean, second)`` with ``second`` as set by ``encoder_output``."""
        site = self._only_path_site(site)
        return fitted_network(params, encoder_name(site), self.encoders[site])

    def kernel(self, params: dict[str, Array], site: str | None = None) -> TemporalKernel:
        """The fitted temporal kernel of path site ``site`` (default: the only one)."""
        site = self._only_path_site(site)
        return fitted_network(params, kernel_name(site), self.kernels[site])

    def encode(self, params: dict[str, Array], obs: Array, site: str | None = None,
               ) -> tuple[Array, Array]:
        """Per-snapshot posterior ``(mean, var)`` of path site ``site`` for ONE snapshot
        ``obs`` (shape ``obs_shape``): the amortized encoder's output, before the temporal
        kernel; it is the guide's distribution of a single state seen alone."""
        mean, second = self.encoder(params, site)(obs)
        var = jnp.exp(second) if self.encoder_output == "logvar" else second
        return mean, var

    def _only_path_site(self, site: str | None) -> str:
        if self.prototype_trace is None:
            raise RuntimeError("the guide has not been set up yet: call it (or fit) first")
        if site is None:
            if len(self._path_sites) != 1:
                raise ValueError(f"the model has path sites {self._path_sites}; name one")
            return self._path_sites[0]
        if site not in self._path_sites:
            raise ValueError(f"{site!r} is not a path site of the model {self._path_sites}")
        return site

    # ------------------------------------------------------------------ posterior API
    def setup(self, *args: Any, rng_key: jax.Array | None = None, **kwargs: Any) -> None:
        """Trace the model once on example arguments (concrete, outside ``jit``) to find its
        sites, unless done already; fitting or calling the guide does this too.

        ``rng_key`` draws the default kernels' initial networks (``inference.fit.init`` passes
        a key split from its own). Without it the set-up is for structure only (the kernels'
        values are then drawn from a fixed key and must be replaced by a parameter store, as
        ``Fitted.load`` does); a fit that needs fresh networks passes a key or lets the first
        seeded call of the guide (``SVI.init``'s) set it up.
        """
        self._ensure_setup(*args, _rng_key=rng_key, **kwargs)

    def _ensure_setup(self, *args: Any, _rng_key: jax.Array | None = None, **kwargs: Any,
                      ) -> None:
        """Set the guide up from the model's structure before a call that reads it. Without a
        key this is a structure-only set-up (see :meth:`setup`): the posterior accessors run
        it on a parameter store that replaces every value it draws."""
        if self.prototype_trace is None:
            key = jax.random.key(0) if _rng_key is None else _rng_key  # None: structure only
            with handlers.seed(rng_seed=key):
                self._setup_prototype(*args, **kwargs)

    def posterior_paths(
        self, params: dict[str, Array], *args: Any, rng_key: jax.Array | None = None,
        **kwargs: Any,
    ) -> dict[str, GaussMarkovPath]:
        """The variational path processes (with :math:`m, S, \\dot m, ...`) for given data.

        ``rng_key`` draws what the paths are conditioned on in a training step: the global
        sites from :math:`q` and the KL quadrature nodes. Without it nothing is random: the
        globals sit at their posterior medians and the nodes at the interval midpoints (what
        :meth:`quantiles` and :meth:`median` read).

        Traced as one compiled program (the path distributions are pytrees): op-by-op dispatch
        of the encoder and smoother took 5x longer than compiling them.
        """
        self._ensure_setup(*args, **kwargs)

        def path_value(site: dict) -> Array | None:  # the paths' draws are not needed
            if site["type"] == "sample" and site["name"] in self._path_sites:
                return jnp.zeros(site["fn"].shape())
            return None

        def paths(params: dict[str, Array], key: jax.Array | None) -> dict[str, GaussMarkovPath]:
            guide = handlers.substitute(self, substitute_fn=path_value)
            if key is None:
                medians = {n: q[0] for n, q in self.global_quantiles(params, [0.5]).items()}
                guide = handlers.substitute(guide, data={**params, **medians})
            else:
                guide = handlers.substitute(handlers.seed(guide, key), data=params)
            trace = handlers.trace(guide).get_trace(*args, **kwargs)
            return {n: trace[n]["fn"] for n in self._path_sites}

        return jax.jit(paths)(params, rng_key)

    def _global_transform(self, name: str, unconstrained: Array) -> Array:
        with jax.numpy_rank_promotion("allow"):
            return biject_to(self._global_sites[name]["support"])(unconstrained)

    def sample_posterior(
        self,
        rng_key: jax.Array,
        params: dict[str, Array],
        *args: Any,
        sample_shape: Sequence[int] = (),
        **kwargs: Any,
    ) -> dict[str, Array]:
        """Joint posterior draws of all latent sites, shape ``sample_shape + site_shape``."""
        self._ensure_setup(*args, **kwargs)
        sample_shape = tuple(sample_shape)
        n = 1
        for d in sample_shape:
            n *= d

        def one(key: jax.Array) -> dict[str, Array]:
            trace = handlers.trace(
                handlers.substitute(handlers.seed(self, key), data=params)
            ).get_trace(*args, **kwargs)
            return {
                name: site["value"]
                for name, site in trace.items()
                if site["type"] == "sample"
                and not site["is_observed"]
                and not site["infer"].get("is_auxiliary")
            }

        # one compiled program instead of op-by-op dispatch of the whole guide
        draws = jax.jit(jax.vmap(one))(jax.random.split(rng_key, n))
        return jax.tree.map(lambda x: jnp.reshape(x, sample_shape + x.shape[1:]), draws)

    def global_quantiles(self, params: dict[str, Array], quantiles: Sequence[float] | Array,
                         ) -> dict[str, Array]:
        """Marginal posterior quantiles of the global sites only (no data needed), shape
        ``(len(quantiles),) + site_shape``: the mean-field Normal's quantiles pushed through
        the support transform (monotone per coordinate)."""
        qs = jnp.asarray(quantiles)
        out = {}
        for name in self._global_sites:
            loc_name, scale_name = global_param_names(name, self.prefix)
            loc, scale = params[loc_name], params[scale_name]
            z = dist.Normal(0.0, 1.0).icdf(jnp.reshape(qs, (-1,) + (1,) * jnp.ndim(loc)))
            out[name] = self._global_transform(name, loc[None] + scale[None] * z)
        return out

    def median(self, params: dict[str, Array], *args: Any, **kwargs: Any) -> dict[str, Array]:
        """Posterior medians: transformed ``loc`` for globals, :math:`m(t_i)` for paths.

        Path sites need the model arguments (the guide is amortized over data).
        """
        return self.quantiles(params, [0.5], *args, **kwargs, _squeeze=True)

    def quantiles(
        self,
        params: dict[str, Array],
        quantiles: Sequence[float] | Array,
        *args: Any,
        _squeeze: bool = False,
        **kwargs: Any,
    ) -> dict[str, Array]:
        """Marginal posterior quantiles, shape ``(len(quantiles),) + site_shape``.

        Globals: quantiles of the mean-field Normal pushed through the support transform
        (monotone per coordinate). Paths: :math:`m(t_i) + \\sqrt{S(t_i)}\\,\\Phi^{-1}(q)`.
        """
        if self.prototype_trace is None:
            self._ensure_setup(*args, **kwargs)
        qs = jnp.asarray(quantiles)
        out = self.global_quantiles(params, qs)
        if self._path_sites:
            if not args and not kwargs:
                raise ValueError("path sites need the model arguments (the guide is amortized)")
            for name, q in self.posterior_paths(params, *args, **kwargs).items():
                z = dist.Normal(0.0, 1.0).icdf(jnp.reshape(qs, (-1,) + (1,) * jnp.ndim(q.loc)))
                out[name] = q.loc[None] + jnp.sqrt(q.var)[None] * z
        if _squeeze:
            out = {k: v[0] for k, v in out.items()}
        return out
