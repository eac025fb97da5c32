r"""The multiscale model (and, with ``n_micro = 0``, the implicit-scale model) as a NumPyro program.

Generative model for a minibatch of ``B`` windows of ``M`` consecutive snapshots
(Ilersich & Nair 2025; docs/method.md §2):

.. math::

    z &= [\zeta; \eta], \quad \zeta \in \mathbb R^{C \times \text{coarse}},\ \eta \in \mathbb R^K \\
    d\zeta &= f_\zeta(\zeta, \eta)\,dt + \operatorname{diag}(s_\zeta)\,d\beta_\zeta
        \qquad\text{(local stencil MLP, translation-equivariant)} \\
    d\eta &= f_\eta(t, \zeta, \eta)\,dt + \operatorname{diag}(s_\eta)\,d\beta_\eta
        \qquad\text{(global MLP)} \\
    y(t_i) \mid z(t_i) &\sim \mathcal N(P\zeta,\ \sigma_M^2) \cdot
        \mathcal N(P\zeta + g(\eta),\ \sigma_m^2) \quad\text{(product of experts, normalised)}

with priors :math:`s \sim \mathrm{LogNormal}(\log 0.1, 2)` per latent coordinate and
:math:`\sigma_M^2, \sigma_m^2 \sim \mathrm{LogNormal}(\log 10^{-2}, 3)` per field (the reference's
medians; data that are not a built-in case get medians in their own units,
:func:`scales_from_data`). The path is an
Euler–Maruyama :class:`~msde_ppl.generative.SDEPath` conditional on its first state (windows start
mid-trajectory). ``K = 0`` gives the implicit-scale (closure) model
:math:`y \sim \mathcal N(P\zeta, \sigma_M^2)`.

Sample sites:

=================  =====================================  ==================================
site               distribution                           shape
=================  =====================================  ==================================
``diffusion``      LogNormal(log 0.1, 2) (or scales')     ``(n_z,)``, ``n_z = C*prod(coarse)+K``
``obs_var_macro``  LogNormal(log 1e-2, 3)                 ``(C,)``
``obs_var_micro``  LogNormal(log 1e-2, 3) (only ``K>0``)  ``(C,)``
``viscosity`` or   LogNormal(median, 2) (only with         ``()``
``dispersion``     ``physics``, :data:`PHYSICS`)
``z``              SDEPath (plate ``windows``)            ``(B, M, n_z)``
``y`` (observed)   ProductOfExpertsNormal, to_event(1)    ``(B, M, C, *fine)``
=================  =====================================  ==================================

With ``physics`` set (``"burgers"`` or ``"kdv"``), the macro drift is a known coarse
finite-difference operator plus the learned stencil correction,
:math:`f_\zeta = F(\zeta; \theta) + \mathrm{MLP}(\zeta_{N(j)}, \eta)`
(:class:`~msde_ppl.generative.physics.CoarsePDE`), and its coefficient :math:`\theta` is a sample
site with a LogNormal prior, so it gets a posterior like the other global sites.

Networks (``eqx_module``): the guide's encoder of the path site (the scale operator
:math:`G, b` and the micro encoder), registered here with
:func:`~msde_ppl.inference.autoguide.tied_encoder` so that the guide's restriction :math:`R` and
this program's prolongation :math:`P` share their weights; ``drift``; ``micro_decoder``.

Model variants are separate programs in the repository's ``models/`` folder.

References:
    1. A. Ilersich, P. Nair. Learning Stochastic Multiscale Models. NeurIPS 2025.
    2. K. Course, P. Nair. Amortized reparametrization: efficient and scalable variational
       inference for latent SDEs. NeurIPS 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module

from msde_ppl.generative.codec import (
    ConvMicroDecoder,
    MicroDecoder,
    MultiscaleEncoder,
    SplineMicroDecoder,
    StencilMicroDecoder,
)
from msde_ppl.generative.drifts import MultiscaleDrift
from msde_ppl.generative.likelihood import ProductOfExpertsNormal
from msde_ppl.generative.operators import ScaleOperator
from msde_ppl.generative.physics import PHYSICS, CoarsePDE
from msde_ppl.generative.sde_path import SDEPath
from msde_ppl.generative.units import centred, rescale, standardise, uncentred
from msde_ppl.inference.autoguide import tied_encoder
from msde_ppl.inference.param_store import encoder_name, fitted_network

PATH_SITE = "z"


@dataclass(frozen=True)
class MultiscaleConfig:
    r"""Sizes of a multiscale model.

    Attributes:
        fine_shape: fine grid shape.
        coarse_shape: coarse grid shape (divides ``fine_shape``).
        n_micro: micro dimension ``K`` (0: implicit-scale model).
        n_channels: fields ``C``.
        n_sigma: scale-kernel half-width in coarse cells (taps ``2 n_sigma sigma + 1``).
        radius: stencil radius of the macro drift.
        macro_hidden, micro_hidden: drift MLP widths.
        micro_time: the micro drift reads the absolute time :math:`t` (the reference), or not
            (autonomous dynamics).
        codec_hidden: micro encoder/decoder MLP widths.
        kernel_init: scale kernel initialisation, ``"bspline"`` or ``"gaussian"``.
        learn_kernel: learn the scale kernel :math:`G` (the reference), or hold it at its
            initial profile. A frozen kernel keeps :math:`\zeta` a smooth coarse field: a
            learned one may sharpen to fit narrow features with the macro expert alone, and a
            kernel narrower than the coarse spacing aliases them (see the wave 1D case).
        encoder: micro encoder, ``"mlp"``, ``"spline"`` (the MLP on the residual's spline
            coefficients, :class:`~msde_ppl.generative.codec.SplineMicroEncoder`) or ``"cnn"``
            (the reference's network, 1D or 2D; see
            :class:`~msde_ppl.generative.codec.ConvMicroEncoder`).
        decoder: micro decoder, ``"mlp"`` (:math:`g(\eta)`, the reference's form),
            ``"spline"`` (:math:`g(\eta)` through a spline basis,
            :class:`~msde_ppl.generative.codec.SplineMicroDecoder`), ``"cnn"``
            (:math:`g(\eta)` by the reference's network, 1D or 2D) or ``"stencil"``
            (translation-equivariant :math:`g(\zeta, \eta)`, see
            :class:`~msde_ppl.generative.codec.StencilMicroDecoder`).
        codec_spacing: knot spacing (fine points) of the ``"spline"`` codec's basis.
        physics: known coarse PDE operator of the macro drift (``"burgers"``, ``"kdv"``) or
            ``None`` (a purely learned drift); see :mod:`msde_ppl.generative.physics`.
        domain: domain lengths per axis (needed with ``physics``: the coarse spacing).
        dissipation: ``(rate, macro_bound, micro_bound[, macro_centre, macro_radius])``,
            the initial damping rate and drift bounds of the dissipative drift form
            (:class:`~msde_ppl.generative.drifts.Dissipation`: a learned linear relaxation
            plus the network's output saturated at a learned bound, so forecasts stay in a
            ball around the data), the macro fields' initial centre and the largest radius
            their ball may learn (the data's units; without them: centre 0, no cap), or
            ``None``: free
            networks (the reference's form, kept by the built-in cases it was tuned on).
            :func:`msde_ppl.pipeline.run.model_config` derives it from a dataset that is not a
            built-in case (:func:`dissipation_from_data`).
        positional: the macro drift also reads each coarse node's position (cos/sin of its
            grid indices, :func:`~msde_ppl.generative.drifts.position_features`): no longer
            translation-equivariant, for a flow that is not (the cylinder wake).
        scales: the data's scales, or ``None`` (the reference's constants, kept by the
            built-in cases): ``(time_scale, diffusion_medians, obs_var_medians)``, the time
            the micro drift's time input is divided by, the prior medians of the diffusion
            (one per field for the macro coordinates, then one for the micro ones) and of the
            observation variances (one per field). Without them: 1, 0.1 and 0.01, numbers in
            the data's units, so a model of data in other units (seconds against hours, K
            against mK) starts somewhere else. :func:`scales_from_data` derives them from a
            dataset that is not a built-in case (:func:`msde_ppl.pipeline.run.model_config`).
        units: ``(centres, spreads)``, one of each per field, in which every network reads
            and writes the fields (:mod:`msde_ppl.generative.units`), or ``None`` (the data's
            own numbers, the built-in cases). :func:`units_from_data` derives them from a
            dataset that is not a built-in case: with them and ``scales`` a model of
            :math:`a u + b` trains as the model of :math:`u` does.
    """

    fine_shape: tuple[int, ...]
    coarse_shape: tuple[int, ...]
    n_micro: int = 5
    n_channels: int = 1
    n_sigma: int = 2
    radius: int = 2
    macro_hidden: tuple[int, ...] = (128, 128, 128)
    micro_hidden: tuple[int, ...] = (128, 512, 128)
    micro_time: bool = True
    codec_hidden: tuple[int, ...] = field(default=(256,))
    kernel_init: str = "bspline"
    learn_kernel: bool = True
    encoder: str = "mlp"
    decoder: str = "mlp"
    codec_spacing: int = 2
    physics: str | None = None
    domain: tuple[float, ...] | None = None
    dissipation: tuple[float, ...] | None = None
    positional: bool = False
    scales: tuple[float, tuple[float, ...], tuple[float, ...]] | None = None
    units: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def n_macro(self) -> int:
        return self.n_channels * math.prod(self.coarse_shape)

    @property
    def n_latent(self) -> int:
        return self.n_macro + self.n_micro

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return (self.n_channels, *self.fine_shape)


#: Per-case sizes of the reference (docs/method.md §2.6), and our per-case choices. Wave 1D (a
#: pulse narrower than the coarse spacing, translating): a learned kernel sharpens below the
#: coarse spacing and aliases the pulse between coarse nodes (val rel-L2 0.44-0.61), so the
#: kernel is held at the reference's Gaussian and the micro decoder is the stencil one, which
#: super-resolves the pulse from the local coarse shape (val 0.037 after 4k + 100k steps).
#: KdV 1D and Burgers 1D keep the MLP micro encoder: the reference's CNN one trains 1.7x
#: slower for no gain on test (``benchmarks/results/val_encoder.md``).
CASE_CONFIGS = {
    "kdv_1d": dict(coarse_shape=(20,), n_sigma=2),
    "wave_1d": dict(coarse_shape=(20,), n_sigma=3, kernel_init="gaussian", learn_kernel=False,
                    decoder="stencil"),
    "burgers_1d": dict(coarse_shape=(20,), n_sigma=3),
    "burgers_2d": dict(coarse_shape=(8, 8), n_sigma=2),
    "shallow_water_2d": dict(coarse_shape=(8, 8), n_sigma=2),
    # two fields (u, v), 8 x 32 coarse (x first here), the reference's positional features and
    # autonomous micro dynamics (its micro drift reads no t)
    "cylinder_2d": dict(coarse_shape=(32, 8), n_sigma=2, positional=True, micro_time=False),
}


class MultiscaleModules(NamedTuple):
    """Initial networks of the model (and the guide's encoder)."""

    encoder: MultiscaleEncoder
    drift: MultiscaleDrift
    decoder: MicroDecoder | ConvMicroDecoder | SplineMicroDecoder | StencilMicroDecoder | None


def build_modules(config: MultiscaleConfig, *, key: jax.Array) -> MultiscaleModules:
    """Initialise the networks of ``config`` from ``key`` (one compiled program per config,
    instead of one dispatch per initialiser op)."""
    return _build_modules_jit(config, key)


@eqx.filter_jit
def _build_modules_jit(config: MultiscaleConfig, key: jax.Array) -> MultiscaleModules:
    k_enc, k_drift, k_dec = jax.random.split(key, 3)
    scale = ScaleOperator(config.fine_shape, config.coarse_shape, config.n_channels,
                          config.n_sigma, config.kernel_init, config.learn_kernel,
                          None if config.units is None else config.units[1])
    encoder = MultiscaleEncoder(scale, config.n_micro, config.codec_hidden, config.encoder,
                                config.codec_spacing,
                                None if config.scales is None else config.scales[2],
                                config.units, key=k_enc)
    physics = None
    if config.physics is not None:
        if config.domain is None:
            raise ValueError("a physics-informed drift needs the domain lengths (config.domain)")
        spacing = tuple(d / n for d, n in zip(config.domain, config.coarse_shape, strict=True))
        physics = CoarsePDE(config.physics, spacing)
    drift = MultiscaleDrift(config.coarse_shape, config.n_micro, config.n_channels,
                            config.radius, config.macro_hidden, config.micro_hidden,
                            config.micro_time, physics, config.dissipation,
                            config.positional, time_scale(config), config.units,
                            key=k_drift)
    if config.decoder not in ("mlp", "cnn", "stencil", "spline"):
        raise ValueError(f"unknown micro decoder {config.decoder!r}; use 'mlp', 'spline', "
                         "'cnn' or 'stencil'")
    decoder = None
    if config.n_micro and config.decoder == "mlp":
        decoder = MicroDecoder(config.n_micro, config.obs_shape, config.codec_hidden, key=k_dec)
    elif config.n_micro and config.decoder == "spline":
        decoder = SplineMicroDecoder(config.n_micro, config.obs_shape, config.codec_spacing,
                                     config.codec_hidden, key=k_dec)
    elif config.n_micro and config.decoder == "cnn":
        decoder = ConvMicroDecoder(config.n_micro, config.obs_shape, key=k_dec)
    elif config.n_micro:
        decoder = StencilMicroDecoder(config.n_micro, config.coarse_shape, scale.stride,
                                      config.n_channels, config.radius, config.codec_hidden,
                                      key=k_dec)
    return MultiscaleModules(encoder, drift, decoder)


def decode(
    encoder: MultiscaleEncoder, decoder: MicroDecoder | None, config: MultiscaleConfig,
    z: jax.Array,
) -> tuple[jax.Array, jax.Array | None]:
    r"""Macro and micro reconstructions :math:`(P\zeta, g(\eta))` of flat states
    ``z`` (``(..., n_z)``), each ``(..., C, *fine)``; with ``config.units`` (centres
    :math:`m`, spreads :math:`s`, :mod:`msde_ppl.generative.units`) the prolongation acts on
    the centred field, :math:`m + P(\zeta - m)`, and the decoder reads :math:`\zeta`
    standardised and its output is multiplied by :math:`s`."""
    lead = z.shape[:-1]
    flat = z.reshape(-1, config.n_latent)
    zeta = flat[:, : config.n_macro].reshape(-1, config.n_channels, *config.coarse_shape)
    units = config.units
    if units is None:
        macro = encoder.scale.prolong_many(zeta)
    else:
        macro = jax.vmap(partial(uncentred, units=units))(
            encoder.scale.prolong_many(jax.vmap(partial(centred, units=units))(zeta)))
    macro = macro.reshape(*lead, *config.obs_shape)
    if decoder is None:
        return macro, None

    def one(zeta_k, eta_k):
        return rescale(decoder(standardise(zeta_k, units), eta_k), units)

    micro = jax.vmap(one)(zeta, flat[:, config.n_macro :]).reshape(*lead, *config.obs_shape)
    return macro, micro


def multiscale_model(
    y: jax.Array | None,
    times: jax.Array,
    *,
    config: MultiscaleConfig,
    modules: MultiscaleModules,
    n_windows: int | None = None,
) -> None:
    """The NumPyro program (see the module docstring).

    Args:
        y: observed windows ``(B, M, C, *fine)``, or ``None`` to sample.
        times: window times ``(B, M)``.
        config: model sizes.
        modules: initial networks (their current values come from the parameter store).
        n_windows: number of windows in the full data set (plate size for the minibatch scale);
            defaults to ``B`` (no subsampling).
    """
    n_batch = times.shape[0]
    encoder = tied_encoder(PATH_SITE, modules.encoder)
    drift = eqx_module("drift", modules.drift)
    decoder = None if modules.decoder is None else eqx_module("micro_decoder", modules.decoder)

    c = config.n_channels
    diffusion_median, var_median = prior_medians(config)

    def log_normal(median, log_sd):
        return dist.LogNormal(jnp.log(median), log_sd).to_event(1)

    # a draw of a Normal with a vector location adds its batch shape to the sample shape
    # by broadcasting (an initialisation's draws: (S, n) noise times an (n,) location)
    with jax.numpy_rank_promotion("allow"):
        diffusion = numpyro.sample("diffusion", log_normal(diffusion_median, 2.0))
        var_macro = numpyro.sample("obs_var_macro", log_normal(var_median, 3.0))
        var_micro = None
        if config.n_micro:
            var_micro = numpyro.sample("obs_var_micro", log_normal(var_median, 3.0))

    coefficient = None
    if config.physics is not None:
        name, median, log_sd, _ = PHYSICS[config.physics]
        coefficient = numpyro.sample(name, dist.LogNormal(jnp.log(median), log_sd))

    n_space = len(config.fine_shape)
    per_field = (c,) + (1,) * n_space
    with numpyro.plate("windows", n_windows or n_batch, subsample_size=n_batch):
        z = numpyro.sample(
            PATH_SITE,
            SDEPath(drift, diffusion, times, None, drift_args=coefficient,
                    state_shape=(config.n_latent,)),
        )
        macro, micro = decode(encoder, decoder, config, z)
        likelihood = ProductOfExpertsNormal(
            macro,
            micro,
            jnp.reshape(var_macro, per_field),
            None if var_micro is None else jnp.reshape(var_micro, per_field),
            event_ndim=1 + n_space,
        ).to_event(1)
        numpyro.sample("y", likelihood, obs=y)


def fitted_modules(config: MultiscaleConfig, params: dict) -> MultiscaleModules:
    """The networks of ``config`` with their fitted weights from ``params``."""
    shapes = eqx.filter_eval_shape(build_modules, config, key=jax.random.key(0))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype)  # structure only
                            if isinstance(s, jax.ShapeDtypeStruct) else s, shapes)
    return MultiscaleModules(
        fitted_network(params, encoder_name(PATH_SITE), template.encoder),
        fitted_network(params, "drift", template.drift),
        None if template.decoder is None
        else fitted_network(params, "micro_decoder", template.decoder),
    )


def time_scale(config: MultiscaleConfig) -> float:
    """The time the micro drift's time input is divided by (``config.scales``; 1: none)."""
    return 1.0 if config.scales is None else float(config.scales[0])


def prior_medians(config: MultiscaleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Prior medians of the diffusion, shape ``(n_latent,)``, and of the observation
    variances, shape ``(C,)``: the reference's 0.1 and 0.01, or ``config.scales``'
    per-field values (each macro coordinate takes its field's, the micro ones the last)."""
    c = config.n_channels
    if config.scales is None:
        return np.full(config.n_latent, 0.1, np.float32), np.full(c, 1e-2, np.float32)
    _, diffusion, var = config.scales
    if len(diffusion) != c + 1 or len(var) != c:
        raise ValueError(f"config.scales needs {c + 1} diffusion and {c} variance medians, got "
                         f"{len(diffusion)} and {len(var)}")
    per_coordinate = np.r_[np.repeat(np.asarray(diffusion[:c], np.float64),
                                     math.prod(config.coarse_shape)),
                           np.full(config.n_micro, float(diffusion[c]))]
    return per_coordinate.astype(np.float32), np.asarray(var, np.float32)


#: :func:`scales_from_data`'s prior medians, in the data's own units: the macro diffusion a
#: half of the RMS change between snapshots per square root of their spacing, the micro
#: coordinates' (order one) 0.05 per square root of the spacing, the observation noise's
#: standard deviation a tenth of the field's.
DIFFUSION_SHARE, MICRO_DIFFUSION, NOISE_SHARE = 0.5, 0.05, 0.1


class DataStatistics(NamedTuple):
    """One pass over training observations (:func:`data_statistics`): per field ``c``, the
    RMS change between snapshots, the standard deviation and the range (``field_low``,
    ``field_high``); over every value, the largest change between snapshots and the range; and
    the trajectories' number of snapshots. A statistic with no finite value is NaN or
    infinite (the fallbacks are the readers')."""

    rms_change: np.ndarray
    std: np.ndarray
    field_low: np.ndarray
    field_high: np.ndarray
    fastest: float
    low: float
    high: float
    n_time: int


def data_statistics(u, n_channels: int = 1) -> DataStatistics:
    """:class:`DataStatistics` of training observations ``u`` (``(traj, time, [field,] ...)``,
    or an iterable of such blocks of trajectories: data read from a file block by block), read
    once."""
    blocks = [u] if isinstance(u, np.ndarray) else u
    c = int(n_channels)
    sq_change, n_change, total, sq_total, n_total = (np.zeros(c) for _ in range(5))
    fastest, n_time, shift = 0.0, 0, None
    field_low, field_high = np.full(c, np.inf), np.full(c, -np.inf)
    for block in blocks:
        block = np.asarray(block, np.float64)
        if not block.size:
            continue
        if c == 1 and (block.ndim < 3 or block.shape[2] != 1):
            block = block[:, :, None]  # no field dim
        n_time = max(n_time, block.shape[1])
        axes = tuple(a for a in range(block.ndim) if a != 2)
        finite = np.isfinite(block)
        field_low = np.minimum(field_low, np.where(finite, block, np.inf).min(axis=axes))
        field_high = np.maximum(field_high, np.where(finite, block, -np.inf).max(axis=axes))
        change = np.diff(block, axis=1)
        if shift is None:  # the moments about the first block's means: no cancellation
            shift = np.nan_to_num(np.nanmean(block, axis=axes))
        block = block - np.expand_dims(shift, axes)
        if change.size:
            fastest = max(fastest, float(np.nanmax(np.abs(change))))
        sq_change += np.nansum(change**2, axis=axes)
        n_change += np.sum(np.isfinite(change), axis=axes)
        total += np.nansum(block, axis=axes)
        sq_total += np.nansum(block**2, axis=axes)
        n_total += np.sum(np.isfinite(block), axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms_change = np.sqrt(sq_change / n_change)
        mean = total / n_total
        std = np.sqrt(np.maximum(sq_total / n_total - mean**2, 0.0))
    # the range over every value: the fields' finite ranges together (the data are finite
    # once validated; no finite value leaves it infinite, as it was)
    low, high = float(np.min(field_low)), float(np.max(field_high))
    return DataStatistics(rms_change, std, field_low, field_high, fastest, low, high, n_time)


def scales_from_data(u, dt: float, n_channels: int = 1
                     ) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    r"""``MultiscaleConfig.scales`` of training observations ``u`` (``(traj, time, [field,]
    ...)``, or an iterable of such blocks of trajectories, or their :class:`DataStatistics`)
    ``dt`` apart, so that the model's starting point does not depend on the data's units:

    - time scale: the span of a trajectory, :math:`(n_t - 1)\Delta t`;
    - diffusion medians :math:`0.5\,\mathrm{RMS}(\Delta u_c)/\sqrt{\Delta t}` per field
      (the snapshots' changes as if they were all noise, halved), and
      :math:`0.05/\sqrt{\Delta t}` for the micro coordinates;
    - observation-variance medians :math:`(0.1\,\mathrm{std}(u_c))^2` per field.

    The reference's diffusion and variance (0.1, 0.01) are what these give for a field of
    standard deviation 1 whose snapshots change by 0.1 at :math:`\Delta t = 0.25`: the
    built-in and benchmark data span learned diffusions of 0.013-0.11 and RMS changes of
    0.016-0.54 per unit square-root time (docs/robustness.md, stop 58). A field that does not
    vary falls back to the reference's value for it.
    """
    stats = u if isinstance(u, DataStatistics) else data_statistics(u, n_channels)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"the snapshots' spacing must be a positive time, got {dt}")
    rms_change, std = stats.rms_change, stats.std
    diffusion = np.where(np.isfinite(rms_change) & (rms_change > 0),
                         DIFFUSION_SHARE * rms_change / np.sqrt(dt), 0.1)
    var = np.where(np.isfinite(std) & (std > 0), (NOISE_SHARE * std) ** 2, 1e-2)
    span = (stats.n_time - 1) * dt if stats.n_time > 1 else 1.0
    micro = float(MICRO_DIFFUSION / np.sqrt(dt))
    return (float(span), tuple(float(d) for d in diffusion) + (micro,),
            tuple(float(v) for v in var))


def units_from_data(u, n_channels: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    r"""``MultiscaleConfig.units`` of training observations ``u`` (as :func:`scales_from_data`,
    or their :class:`DataStatistics`): per field the middle of its range and half its width,
    :math:`m_c = (\max u_c + \min u_c)/2`, :math:`s_c = (\max u_c - \min u_c)/2`, so the
    networks read every field in :math:`[-1, 1]` (as the dissipative form, which draws paths
    back towards the middle of the range). A field that does not vary: centre its value,
    spread 1; no finite value: 0 and 1.

    The range rather than the mean and standard deviation: on the bistable fronts (values in
    [0, 1], mostly at one of the two stable states) the mean and standard deviation put the
    states at -1.6 and +0.7, and the implicit-scale stage scored 0.156-0.164 on val against
    0.137-0.143 with the range (two seeds each; 0.142-0.148 with the raw numbers;
    docs/robustness.md, stop 59)."""
    stats = u if isinstance(u, DataStatistics) else data_statistics(u, n_channels)
    low = np.asarray(stats.field_low, np.float64)
    high = np.asarray(stats.field_high, np.float64)
    finite = np.isfinite(low) & np.isfinite(high)
    centre = np.where(finite, 0.5 * (low + high), 0.0)
    half = np.where(finite, 0.5 * (high - low), 0.0)
    spread = np.where(half > 0, half, 1.0)
    return tuple(float(m) for m in centre), tuple(float(v) for v in spread)


def dissipation_from_data(u, dt: float) -> tuple[float, float, float, float, float]:
    r"""Initial ``(rate, macro_bound, micro_bound, macro_centre, macro_radius)`` of the
    dissipative drift form for training observations ``u`` (``(traj, time, ...)``, or an
    iterable of such blocks of trajectories: data read from a file block by block; or their
    :class:`DataStatistics`) ``dt`` apart, with :math:`R` the data's range (max - min):

    - macro bound :math:`B = 4 \max |\Delta u| / \Delta t`, four times the fastest change
      between snapshots, so the saturation does not bite on the data at the start;
    - macro centre :math:`m` the middle of the data's range, and the macro ball's largest
      radius :math:`R`: every macro path is drawn back into :math:`|\zeta - m| \le
      B/\lambda \le R`, half a range beyond the data on either side, inside the bounds
      where a forecast member counts as diverged (a range beyond,
      :func:`msde_ppl.predict.metrics.divergence_limits`) whatever the fit learns; the macro
      rate thus starts at :math:`B/R` (the network cancels the relaxation on the data, where
      :math:`\lambda|\zeta - m| \le B/2`);
    - rate :math:`B / (2R)`, the micro coordinates' (and the macro fields' floor under the
      cap), and micro bound :math:`4 / \Delta t` (the micro coordinates are of order one).

    All are learned from there but the radius.
    """
    stats = u if isinstance(u, DataStatistics) else data_statistics(u)
    fastest, low, high = stats.fastest, stats.low, stats.high
    spread = high - low if np.isfinite(low) and np.isfinite(high) else 0.0
    if not (np.isfinite(fastest) and fastest > 0 and dt > 0):
        fastest = 1.0
    if not (np.isfinite(spread) and spread > 0):
        spread = 1.0
    centre = 0.5 * (low + high) if np.isfinite(low) and np.isfinite(high) else 0.0
    bound = 4.0 * fastest / dt
    return (bound / (2.0 * spread), bound, 4.0 / dt, centre, spread)


def config_for(case: str | None, fine_shape, coarse_shape=None, **overrides) -> MultiscaleConfig:
    """A config for a built-in case's sizes (or generic defaults), with ``overrides``; an
    override of ``None`` keeps the case's (or the default) value."""
    base = dict(CASE_CONFIGS.get(case, {})) if case else {}
    if coarse_shape is not None:
        base["coarse_shape"] = tuple(coarse_shape)
    if "coarse_shape" not in base:
        raise ValueError("a coarse grid size is needed for data that is not a built-in case")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return MultiscaleConfig(fine_shape=tuple(fine_shape), **base)


