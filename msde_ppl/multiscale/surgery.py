r"""Growing the micro dimension of a fitted model (progressive schedule, docs/method.md §5).

A model fitted with ``K_old`` micro coordinates becomes the initial point of one with
``K_new > K_old``: every old weight is copied; weights that *read* a new micro coordinate (the
stencil drift's micro inputs, the micro drift's and decoder's new input columns) start at zero,
and the rows that *produce* new coordinates (micro encoder and micro drift outputs) start from a
fresh Xavier-normal draw (the stencil drift's position features, which follow its micro
inputs, keep their weights). The decoder's output layer starts at zero when it is new. So, unlike
the reference (which Xavier-initialises the new drift inputs, docs/method.md §5), the grown model
computes exactly the old model's drift and reconstruction at its first step, and the new
coordinates are free to learn the correction.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msde_ppl.generative.codec import ConvMicroDecoder, SplineMicroEncoder
from msde_ppl.generative.drifts import position_features
from msde_ppl.generative.networks import MLP
from msde_ppl.multiscale.program import (
    MultiscaleConfig,
    MultiscaleModules,
    build_modules,
)

__all__ = ["grow_modules", "grown_global_values"]


def _grow_linear(new: eqx.nn.Linear, old: eqx.nn.Linear, zero_new_inputs: bool,
                 n_trailing: int = 0) -> eqx.nn.Linear:
    """Copy ``old`` into the leading rows of ``new``, its input columns to the same places
    except its last ``n_trailing``, which stay last (inputs after the grown block: the stencil
    drift's position features); optionally zero the new input columns."""
    n_out, n_in = old.weight.shape
    columns = np.r_[np.arange(n_in - n_trailing),
                    new.weight.shape[1] - n_trailing + np.arange(n_trailing)]
    weight = new.weight
    if zero_new_inputs:
        weight = weight.at[:, np.setdiff1d(np.arange(weight.shape[1]), columns)].set(0.0)
    weight = weight.at[:n_out, columns].set(old.weight)
    bias = new.bias.at[: old.bias.shape[0]].set(old.bias)
    return eqx.tree_at(lambda lay: (lay.weight, lay.bias), new, (weight, bias))


def _grow_mlp(new: MLP, old: MLP, zero_new_inputs: bool, n_trailing: int = 0) -> MLP:
    """Copy ``old`` into the leading blocks of ``new`` (layer by layer; ``n_trailing``: inputs
    of the first layer that follow the grown block)."""
    layers = tuple(_grow_linear(ln, lo, zero_new_inputs and i == 0, n_trailing if i == 0 else 0)
                   for i, (ln, lo) in enumerate(zip(new.layers, old.layers, strict=True)))
    return eqx.tree_at(lambda m: m.layers, new, layers)


def _grow_micro_encoder(new, old):
    """MLP (also on spline coefficients): grow every layer; CNN: keep the convolutions, grow
    the output rows of the head."""
    if isinstance(new, MLP):
        return _grow_mlp(new, old, False)
    if isinstance(new, SplineMicroEncoder):
        return eqx.tree_at(lambda e: e.net, new, _grow_mlp(new.net, old.net, False))
    grown = eqx.tree_at(lambda e: e.convs, new, old.convs)
    return eqx.tree_at(lambda e: e.head, grown, _grow_linear(new.head, old.head, False))


def _grow_micro_decoder(new, old):
    """MLP decoders: grow the network, new inputs at zero; CNN: keep the convolutions, grow the
    head's input columns (at zero)."""
    if isinstance(new, ConvMicroDecoder):
        grown = eqx.tree_at(lambda d: d.convs, new, old.convs)
        return eqx.tree_at(lambda d: d.head, grown, _grow_linear(new.head, old.head, True))
    return eqx.tree_at(lambda d: d.net, new, _grow_mlp(new.net, old.net, True))


def grow_modules(
    old: MultiscaleModules, old_config: MultiscaleConfig, n_micro: int, *, key: jax.Array
) -> tuple[MultiscaleConfig, MultiscaleModules]:
    """Networks for ``n_micro`` micro coordinates, initialised from the fitted ``old``."""
    if n_micro < old_config.n_micro:
        raise ValueError(
            f"cannot shrink the micro dimension from {old_config.n_micro} to {n_micro}"
        )
    config = dataclasses.replace(old_config, n_micro=n_micro)
    new = build_modules(config, key=key)
    n_macro = config.n_macro

    enc = eqx.tree_at(lambda e: e.scale, new.encoder, old.encoder.scale)
    logvar = new.encoder.logvar.at[:n_macro + old_config.n_micro].set(old.encoder.logvar)
    enc = eqx.tree_at(lambda e: e.logvar, enc, logvar)
    if old.encoder.micro is not None:
        enc = eqx.tree_at(lambda e: e.micro, enc,
                          _grow_micro_encoder(new.encoder.micro, old.encoder.micro))

    # the stencil drift reads [neighbourhood, micro, position]: the position stays last
    n_position = (position_features(config.coarse_shape).shape[1]
                  if old.drift.macro.positional else 0)
    drift = eqx.tree_at(lambda d: d.macro.mlp, new.drift,
                        _grow_mlp(new.drift.macro.mlp, old.drift.macro.mlp, True, n_position))
    if old.drift.macro.dissipation is not None:
        drift = eqx.tree_at(lambda d: d.macro.dissipation, drift, old.drift.macro.dissipation)
    if old.drift.micro is not None:
        drift = eqx.tree_at(lambda d: d.micro.mlp, drift,
                            _grow_mlp(new.drift.micro.mlp, old.drift.micro.mlp, True))
        if old.drift.micro.dissipation is not None:  # old coordinates keep theirs
            k = old_config.n_micro
            old_d, new_d = old.drift.micro.dissipation, new.drift.micro.dissipation
            grown = jax.tree.map(lambda n, o: n.at[:k].set(o), new_d, old_d)
            drift = eqx.tree_at(lambda d: d.micro.dissipation, drift, grown)

    decoder = new.decoder
    if old.decoder is not None:
        decoder = _grow_micro_decoder(new.decoder, old.decoder)
    return config, MultiscaleModules(enc, drift, decoder)


def grown_global_values(medians: dict, old_config: MultiscaleConfig, n_micro: int) -> dict:
    """Initial values (constrained) of the global sites of the grown model from the old model's
    posterior ``medians`` (``{site: value}``): the old medians, new diffusion coordinates at the
    old micro median (with no micro state yet: the micro prior's median of ``scales``, or the
    old macro median under the reference's constants), and the micro observation variance at
    the macro one when it is new."""
    diffusion = np.asarray(medians["diffusion"])
    if old_config.n_micro:
        start = float(np.median(diffusion[old_config.n_macro:]))
    elif old_config.scales is not None:  # the micro prior's median: the macro one has units
        start = float(old_config.scales[1][-1])
    else:  # the reference's constants: one number for both
        start = float(np.median(diffusion[:old_config.n_macro]))
    extra = np.full(n_micro - old_config.n_micro, start)
    values = {name: jnp.asarray(value) for name, value in medians.items()}
    values["diffusion"] = jnp.asarray(np.concatenate([diffusion, extra]), jnp.float32)
    values.setdefault("obs_var_micro", jnp.asarray(medians["obs_var_macro"]))
    return values
