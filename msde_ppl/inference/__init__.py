"""Inference: the amortized autoguide (Markov smoother or temporal kernel interpolation),
solver-free ELBO, fit loop."""

from msde_ppl.inference.autoguide import AutoAmortizedSDE as AutoAmortizedSDE
from msde_ppl.inference.autoguide import tied_encoder as tied_encoder
from msde_ppl.inference.elbo import SolverFreeELBO as SolverFreeELBO
from msde_ppl.inference.elbo import linear_beta_warmup as linear_beta_warmup
from msde_ppl.inference.elbo import path_kl_integral as path_kl_integral
from msde_ppl.inference.fit import FitInterrupted as FitInterrupted
from msde_ppl.inference.fit import FitResult as FitResult
from msde_ppl.inference.fit import FitState as FitState
from msde_ppl.inference.fit import NonFiniteLossError as NonFiniteLossError
from msde_ppl.inference.fit import StepInfo as StepInfo
from msde_ppl.inference.fit import checkpoint_record as checkpoint_record
from msde_ppl.inference.fit import fit as fit
from msde_ppl.inference.fit import init as init
from msde_ppl.inference.fit import load_checkpoint as load_checkpoint
from msde_ppl.inference.fit import make_chunk_runner as make_chunk_runner
from msde_ppl.inference.fit import save_checkpoint as save_checkpoint
from msde_ppl.inference.fit import step as step
from msde_ppl.inference.fit import window_batches as window_batches
from msde_ppl.inference.gauss_markov import GaussMarkovPath as GaussMarkovPath
from msde_ppl.inference.kernel import TemporalKernel as TemporalKernel
from msde_ppl.inference.kernel import WindowMoments as WindowMoments
from msde_ppl.inference.kernel import interpolate_window as interpolate_window
from msde_ppl.inference.kernel import safe_cholesky as safe_cholesky
from msde_ppl.inference.markov import MarkovBridgePath as MarkovBridgePath
from msde_ppl.inference.markov import OUSmoother as OUSmoother
from msde_ppl.inference.markov_coupled import CoupledMarkovPath as CoupledMarkovPath
from msde_ppl.inference.markov_coupled import CoupledOUSmoother as CoupledOUSmoother

__all__ = [
    "AutoAmortizedSDE",
    "CoupledMarkovPath",
    "CoupledOUSmoother",
    "FitInterrupted",
    "FitResult",
    "FitState",
    "GaussMarkovPath",
    "MarkovBridgePath",
    "NonFiniteLossError",
    "OUSmoother",
    "SolverFreeELBO",
    "StepInfo",
    "TemporalKernel",
    "WindowMoments",
    "checkpoint_record",
    "fit",
    "init",
    "interpolate_window",
    "linear_beta_warmup",
    "load_checkpoint",
    "make_chunk_runner",
    "path_kl_integral",
    "safe_cholesky",
    "save_checkpoint",
    "step",
    "tied_encoder",
    "window_batches",
]
