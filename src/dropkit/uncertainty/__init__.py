"""dropkit.uncertainty: MC dropout, predictive summaries and calibration metrics.

Monte Carlo dropout (Gal & Ghahramani, ICML 2016) keeps dropout on at prediction time and
treats the ``T`` stochastic outputs as samples from an approximate posterior predictive.
"""

from dropkit.uncertainty._predict import mc_predict, mc_probs
from dropkit.uncertainty._switch import (
    TORCH_DROPOUT_TYPES,
    MCDropout,
    is_dropout_module,
    mc_dropout,
    unswitchable_modules,
)
from dropkit.uncertainty.calibration import (
    ReliabilityDiagram,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    plot_reliability_diagram,
    reliability_diagram,
)
from dropkit.uncertainty.summaries import (
    ClassificationSummary,
    RegressionSummary,
    classification_summary,
    gal_log_likelihood,
    gal_tau,
    regression_summary,
    weight_decay_for_tau,
)

__all__ = [
    "TORCH_DROPOUT_TYPES",
    "MCDropout",
    "is_dropout_module",
    "mc_dropout",
    "unswitchable_modules",
    "mc_predict",
    "mc_probs",
    "ClassificationSummary",
    "RegressionSummary",
    "classification_summary",
    "regression_summary",
    "gal_tau",
    "weight_decay_for_tau",
    "gal_log_likelihood",
    "ReliabilityDiagram",
    "expected_calibration_error",
    "negative_log_likelihood",
    "brier_score",
    "reliability_diagram",
    "plot_reliability_diagram",
]
