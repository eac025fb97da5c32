"""The pipeline: the fitted-model object, the training recipe and the run pipeline
(``msde_ppl.pipeline.run``), used by the command line, the benchmarks and the examples."""

from msde_ppl.pipeline.fitted import Fitted
from msde_ppl.pipeline.training import TrainConfig, fit, fit_multiscale, fit_progressive
from msde_ppl.pipeline.validation import Validation, ValidationMonitor

__all__ = ["Fitted", "TrainConfig", "Validation", "ValidationMonitor", "fit", "fit_multiscale",
           "fit_progressive"]
