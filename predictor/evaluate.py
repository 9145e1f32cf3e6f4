"""Scoring a length predictor on held-out requests, beside two baselines."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from predictor.data import Sample
from predictor.features import featurize
from predictor.model import LengthModel

BUCKET_TOKENS = 82  # SCORPIO's bucket width


def metrics(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, float]:
    p = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    tau = kendalltau(p, a).statistic if np.ptp(p) > 0 else 0.0
    error = np.abs(p - a)
    buckets = np.abs(np.floor(p / BUCKET_TOKENS) - np.floor(a / BUCKET_TOKENS))
    return {
        "kendall_tau": float(tau),
        "mae": float(error.mean()),
        "rmse": float(math.sqrt(float(np.mean((p - a) ** 2)))),
        "within_1_bucket": float(np.mean(buckets <= 1)),
        "within_50": float(np.mean(error <= 50)),
        "within_100": float(np.mean(error <= 100)),
    }


def timing(predict: Callable[[Sample], object], samples: Sequence[Sample]) -> dict[str, float]:
    """Microseconds per prediction, one request at a time."""
    for sample in samples[:50]:
        predict(sample)
    durations = []
    for sample in samples:
        start = time.perf_counter_ns()
        predict(sample)
        durations.append((time.perf_counter_ns() - start) / 1000)
    return {
        "predict_p50_us": float(np.percentile(durations, 50)),
        "predict_p99_us": float(np.percentile(durations, 99)),
    }


def evaluate(
    model: LengthModel,
    baselines: dict[str, float],
    samples: Sequence[Sample],
    *,
    timed: int = 2000,
) -> dict[str, Any]:
    actual = [s.output_tokens for s in samples]
    predicted = [model.predict(s.info).tokens for s in samples]
    result: dict[str, Any] = {"n": len(samples), **metrics(predicted, actual)}
    result.update(timing(lambda s: model.predict(s.info), samples[:timed]))
    quantile_cover = np.mean(
        [s.output_tokens <= model.predict(s.info).p90 for s in samples[:timed]]
    )
    result["p90_coverage"] = float(quantile_cover)
    mean = baselines["train_mean"]
    length_only = [
        math.expm1(
            baselines["length_intercept"] + baselines["length_slope"] * featurize(s.info)[1][0]
        )
        for s in samples
    ]
    result["baselines"] = {
        "train_mean": {"n": len(samples), **metrics([mean] * len(samples), actual)},
        "prompt_length_regression": {"n": len(samples), **metrics(length_only, actual)},
    }
    return result
