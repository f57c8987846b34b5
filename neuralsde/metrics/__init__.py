"""Evaluation metrics for generated time series: signature MMD, real/fake classification, TSTR
forecasting, marginal and dependence errors, the ``cheap_metrics`` / ``full_metrics`` suite, and plots.

Plots live in ``neuralsde.metrics.plots`` and are not imported here, so that metrics need no matplotlib.
"""

from neuralsde.metrics.classification import real_fake_classification
from neuralsde.metrics.marginals import (
    acf_error,
    autocorrelation,
    cross_corr_error,
    cross_correlation,
    marginal_distance,
)
from neuralsde.metrics.prediction import tstr
from neuralsde.metrics.sig_mmd import MMDResult, signature_features, signature_mmd
from neuralsde.metrics.suite import (
    CHEAP_METRICS,
    METRICS,
    MetricOptions,
    cheap_metrics,
    check_metric_names,
    compute_metrics,
    full_metrics,
)

__all__ = [
    "CHEAP_METRICS",
    "METRICS",
    "MMDResult",
    "MetricOptions",
    "acf_error",
    "autocorrelation",
    "cheap_metrics",
    "check_metric_names",
    "compute_metrics",
    "cross_corr_error",
    "cross_correlation",
    "full_metrics",
    "marginal_distance",
    "real_fake_classification",
    "signature_features",
    "signature_mmd",
    "tstr",
]
