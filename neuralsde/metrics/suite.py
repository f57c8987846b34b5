"""Named metrics and the two entry points: ``cheap_metrics`` (no training) and ``full_metrics``.

Keys are bare names (``sig_mmd``, ``real_fake_acc``, ...); the caller adds ``val/`` or ``test/``.
A config names metrics from ``METRICS``; options (sizes, kernels, epochs) are the fields of
``MetricOptions`` and are passed as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable

import torch

from neuralsde.errors import ConfigError, bad_option
from neuralsde.metrics._paths import check_paths, make_generator, mask_like, seed_int
from neuralsde.metrics.classification import CDE_METHODS, CLASSIFIERS, real_fake_classification
from neuralsde.metrics.marginals import acf_error, cross_corr_error, marginal_distance
from neuralsde.metrics.prediction import tstr
from neuralsde.metrics.sig_mmd import KINDS, STATIC_KERNELS, signature_mmd


@dataclass(frozen=True)
class MetricOptions:
    """Every option of the suite, with defaults sized to run in seconds on CPU for a few hundred paths."""

    sig_kind: str = "truncated"  # "truncated" (paper: depth-5 signatures, linear kernel) or "pde"
    sig_depth: int = 5
    sig_dyadic_order: int = 1  # pde only
    sig_static_kernel: str = "linear"  # pde only: "linear" or "rbf"
    sig_rbf_sigma: float = 1.0
    sig_path_scale: float = 1.0
    sig_basepoint: bool = True
    n_boot: int = 200
    ci: float = 0.95
    max_lag: int | None = None  # acf; None = half the number of times
    classifier: str = "cde"  # "cde" or "gru"
    classifier_hidden: int = 16
    classifier_epochs: int = 10
    classifier_method: str = "rk4"
    forecast_hidden: int = 32
    forecast_epochs: int = 30
    horizon: float = 0.5  # fraction of the times forecast by TSTR/TRTR
    batch_size: int = 64
    lr: float = 1e-2


@dataclass(frozen=True)
class Metric:
    """One named metric: the keys it returns, whether it trains a model, and how to compute it.

    ``compute(real_train, real_test, fake_train, fake_test, options, seed) -> dict``; metrics that do not
    train use only the test sets (``real_test``, ``fake_test``).
    """

    keys: tuple[str, ...]
    trains: bool
    compute: Callable[..., dict]


def _sig_mmd(rtr, rte, ftr, fte, o: MetricOptions, seed: int) -> dict:
    # the fake paths get the real ones' missing values, so that both are filled alike (see mask_like)
    fte = mask_like(fte, rte, make_generator(seed))
    res = signature_mmd(
        rte,
        fte,
        kind=o.sig_kind,
        depth=o.sig_depth,
        dyadic_order=o.sig_dyadic_order,
        static_kernel=o.sig_static_kernel,
        rbf_sigma=o.sig_rbf_sigma,
        basepoint=o.sig_basepoint,
        path_scale=o.sig_path_scale,
        n_boot=o.n_boot,
        ci=o.ci,
        seed=seed,
    )
    return {"sig_mmd": res.mmd, "sig_mmd_ci_low": res.ci_low, "sig_mmd_ci_high": res.ci_high,
            "sig_mmd_biased": res.mmd_biased}


def _cross_corr(rtr, rte, ftr, fte, o, seed) -> dict:
    value = cross_corr_error(rte, fte)
    return {} if value is None else {"cross_corr_error": value}  # absent for a single data channel


def _real_fake(rtr, rte, ftr, fte, o: MetricOptions, seed: int) -> dict:
    return real_fake_classification(
        rtr,
        ftr,
        rte,
        fte,
        classifier=o.classifier,
        hidden_size=o.classifier_hidden,
        epochs=o.classifier_epochs,
        batch_size=o.batch_size,
        lr=o.lr,
        method=o.classifier_method,
        seed=seed,
    )


def _tstr(rtr, rte, ftr, fte, o: MetricOptions, seed: int) -> dict:
    return tstr(
        rtr,
        rte,
        ftr,
        horizon=o.horizon,
        hidden_size=o.forecast_hidden,
        epochs=o.forecast_epochs,
        batch_size=o.batch_size,
        lr=o.lr,
        seed=seed,
    )


METRICS: dict[str, Metric] = {
    "sig_mmd": Metric(("sig_mmd", "sig_mmd_ci_low", "sig_mmd_ci_high", "sig_mmd_biased"), False, _sig_mmd),
    "marginal_w1": Metric(
        ("marginal_w1",),
        False,
        lambda rtr, rte, ftr, fte, o, s: {"marginal_w1": marginal_distance(rte, fte, kind="w1")},
    ),
    "marginal_ks": Metric(
        ("marginal_ks",),
        False,
        lambda rtr, rte, ftr, fte, o, s: {"marginal_ks": marginal_distance(rte, fte, kind="ks")},
    ),
    "acf_error": Metric(
        ("acf_error",), False, lambda rtr, rte, ftr, fte, o, s: {"acf_error": acf_error(rte, fte, max_lag=o.max_lag)}
    ),
    "cross_corr_error": Metric(("cross_corr_error",), False, _cross_corr),
    "real_fake": Metric(("real_fake_acc", "real_fake_loss"), True, _real_fake),
    "tstr": Metric(("tstr_loss", "trtr_loss"), True, _tstr),
}
CHEAP_METRICS = tuple(name for name, m in METRICS.items() if not m.trains)


def check_metric_names(names: Iterable[str], *, allow_training: bool = True) -> tuple[str, ...]:
    """Return ``names`` as a tuple, or raise a ConfigError naming the unknown ones and the known ones."""
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    known = METRICS if allow_training else CHEAP_METRICS
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = "" if allow_training else " (metrics that train a model need full_metrics)"
        raise ConfigError(
            f"unknown metric(s) {unknown}: expected names from {sorted(known)}{hint}. "
            "Fix: correct the metric names in the config."
        )
    return names


_CHOICES = {"sig_kind": KINDS, "sig_static_kernel": STATIC_KERNELS, "classifier": CLASSIFIERS,
            "classifier_method": CDE_METHODS}
_COUNTS = {"sig_depth": 1, "sig_dyadic_order": 0, "n_boot": 1, "classifier_hidden": 1, "classifier_epochs": 1,
           "forecast_hidden": 1, "forecast_epochs": 1, "batch_size": 1}  # integer options and their least value
_FRACTIONS = ("ci", "horizon")  # strictly between 0 and 1
_POSITIVE = ("sig_rbf_sigma", "sig_path_scale", "lr")


def make_options(*, where: str = "options.", **options) -> MetricOptions:
    """``MetricOptions`` from keyword arguments, every name and value checked before any metric runs (a bad value
    would otherwise stop a run only once its test stage reaches that metric); errors name ``where + option``."""
    known = {f.name for f in fields(MetricOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown metric option(s) {[where + u for u in unknown]}: expected options from {sorted(known)}. "
            f"Fix: correct the names under {where.rstrip('.')}."
        )
    for name, value in options.items():
        _check_option(where + name, name, value)
    return MetricOptions(**options)


def _check_option(key: str, name: str, value) -> None:
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if name in _CHOICES and value not in _CHOICES[name]:
        raise bad_option(key, value, f"one of {_CHOICES[name]}", f"e.g. {key}={_CHOICES[name][0]}")
    if name in _COUNTS and not (is_int(value) and value >= _COUNTS[name]):
        raise bad_option(key, value, f"an integer >= {_COUNTS[name]}", f"e.g. {key}={getattr(MetricOptions, name)}")
    if name == "max_lag" and not (value is None or (is_int(value) and value >= 1)):
        raise bad_option(key, value, "a positive integer, or null for half the number of times", f"{key}=null")
    if name in _FRACTIONS and not (is_number(value) and 0 < value < 1):
        raise bad_option(key, value, "a number strictly between 0 and 1", f"e.g. {key}={getattr(MetricOptions, name)}")
    if name in _POSITIVE and not (is_number(value) and value > 0):
        raise bad_option(key, value, "a positive number", f"e.g. {key}={getattr(MetricOptions, name)}")
    if name == "sig_basepoint" and not isinstance(value, bool):
        raise bad_option(key, value, "true or false", f"{key}=true")


def compute_metrics(
    names: Iterable[str],
    real_train,
    real_test,
    fake_train,
    fake_test,
    *,
    seed: int | torch.Generator = 0,
    options: MetricOptions | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Compute the named metrics and merge their keys into one flat ``dict[str, float]``.

    Paths are ``(batch, time, channels)`` tensors (channel 0 time, real may hold NaN); ``real_train`` and
    ``fake_train`` may be None when no named metric trains a model. Every metric gets the same int seed.
    ``progress``: a bar over the metrics naming the one being computed (those that train a classifier or a
    forecaster take seconds to minutes).
    """
    from tqdm.auto import tqdm

    names = check_metric_names(names)
    options = options or MetricOptions()
    seed = seed_int(seed)
    out: dict[str, float] = {}
    # position 0: nested under Lightning's open test bar it wrote cursor-up codes into logs; it clears its line
    bar = tqdm(names, desc="metrics", unit="metric", disable=not progress, leave=False, dynamic_ncols=True, position=0)
    for name in bar:
        bar.set_postfix_str(name)
        metric = METRICS[name]
        if metric.trains and (real_train is None or fake_train is None):
            raise ConfigError(
                f"metric {name!r} trains a model but got no training split: expected real_train and "
                "fake_train. Fix: call full_metrics, or drop it from the metric names."
            )
        out.update(metric.compute(real_train, real_test, fake_train, fake_test, options, seed))
    return out


def cheap_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    seed: int | torch.Generator = 0,
    metrics: Iterable[str] | None = None,
    **options,
) -> dict[str, float]:
    """Metrics that train nothing, between real ``(m, T, C)`` and fake ``(n, T, C)`` paths.

    Default keys: ``sig_mmd``, ``sig_mmd_ci_low``, ``sig_mmd_ci_high``, ``sig_mmd_biased`` (see ``MMDResult``),
    ``marginal_w1``, ``marginal_ks``, ``acf_error`` and, with more than one data channel, ``cross_corr_error``.
    ``metrics`` picks names from ``CHEAP_METRICS``; ``options`` are ``MetricOptions`` fields (e.g. ``sig_depth=5``,
    ``n_boot=200``).
    """
    names = check_metric_names(CHEAP_METRICS if metrics is None else metrics, allow_training=False)
    real, fake = check_paths(real, "real"), check_paths(fake, "fake", allow_nan=False)
    return compute_metrics(names, None, real, None, fake, seed=seed, options=make_options(**options))


def full_metrics(
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    fake_train: torch.Tensor,
    fake_test: torch.Tensor,
    *,
    seed: int | torch.Generator = 0,
    metrics: Iterable[str] | None = None,
    **options,
) -> dict[str, float]:
    """Cheap metrics on (real_test, fake_test) plus ``real_fake_acc``, ``real_fake_loss`` (classifier trained on
    the train splits, scored on the test splits) and ``tstr_loss``, ``trtr_loss`` (forecasters trained on
    fake_train / real_train, scored on real_test).

    All inputs are ``(batch_i, T, C)`` on one time grid; real splits may hold NaN. ``metrics`` picks names
    from ``METRICS`` (default: all); ``options`` are ``MetricOptions`` fields (e.g. ``classifier_epochs``).
    """
    names = check_metric_names(tuple(METRICS) if metrics is None else metrics)
    return compute_metrics(
        names, real_train, real_test, fake_train, fake_test, seed=seed, options=make_options(**options)
    )
