"""The output-length model: a hashed-n-gram ridge score stacked into boosted trees, with
conditional quantiles from held-out residuals.

Both stages predict a normal score of the output length's rank among the training replies
(a rank-preserving target that weighs every part of the range alike, which ranks better
than log tokens); ``TargetScale`` maps a score back to tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.features import HASH_SIZE, PromptInfo, featurize
from predictor.trees import TreeEnsemble

QUANTILES = (0.1, 0.5, 0.9, 0.95)


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted output tokens: the point estimate and quantiles, each capped by max_tokens."""

    tokens: int
    p10: int
    p50: int
    p90: int
    p95: int


@dataclass(frozen=True)
class TextRidge:
    """Linear score over sublinear tf-idf (l2-normalised) text features and scaled dense ones."""

    idf: np.ndarray  # (HASH_SIZE,) float32
    coef: np.ndarray  # (HASH_SIZE,) float32
    dense_mean: np.ndarray
    dense_scale: np.ndarray
    dense_coef: np.ndarray
    intercept: float

    def text_vector(self, counts: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        index = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
        weights = tf * self.idf[index]
        norm = math.sqrt(float(weights @ weights))
        return index, weights / norm if norm > 0 else weights

    def score(self, counts: dict[int, int], dense: np.ndarray) -> float:
        index, weights = self.text_vector(counts)
        scaled = (dense - self.dense_mean) / self.dense_scale
        return float(weights @ self.coef[index] + scaled @ self.dense_coef + self.intercept)


@dataclass(frozen=True)
class QuantileTable:
    """Residual (log space) quantiles of held-out requests, by bin of the point prediction."""

    edges: np.ndarray  # (bins - 1,)
    residuals: np.ndarray  # (bins, len(QUANTILES))

    def offsets(self, mu: float) -> np.ndarray:
        row: np.ndarray = self.residuals[int(np.searchsorted(self.edges, mu))]
        return row


@dataclass(frozen=True)
class TargetScale:
    """Normal scores and the log1p(tokens) at the same training quantiles, both increasing:
    a score maps to tokens by interpolation (clamped to the training range)."""

    scores: np.ndarray
    log_tokens: np.ndarray

    def tokens(self, score: float) -> float:
        return math.expm1(float(np.interp(score, self.scores, self.log_tokens)))


@dataclass(frozen=True)
class LengthModel:
    ridge: TextRidge
    trees: TreeEnsemble
    quantiles: QuantileTable
    scale: TargetScale

    def score(self, info: PromptInfo) -> float:
        """The point prediction as a normal score (rank-preserving in tokens)."""
        counts, dense = featurize(info)
        ridge = self.ridge.score(counts, dense)
        return float(self.trees.predict(np.append(dense, ridge))[0])

    def predict(self, info: PromptInfo) -> Prediction:
        mu = self.score(info)
        q10, q50, q90, q95 = (mu + self.quantiles.offsets(mu)).tolist()
        cap = info.max_tokens

        def tokens(score: float) -> int:
            value = max(1, round(self.scale.tokens(score)))
            return min(value, cap) if cap is not None else value

        return Prediction(tokens(mu), tokens(q10), tokens(q50), tokens(q90), tokens(q95))

    def arrays(self) -> dict[str, np.ndarray]:
        r, q = self.ridge, self.quantiles
        return {
            "ridge_idf": r.idf,
            "ridge_coef": r.coef,
            "ridge_dense_mean": r.dense_mean,
            "ridge_dense_scale": r.dense_scale,
            "ridge_dense_coef": r.dense_coef,
            "ridge_intercept": np.asarray([r.intercept]),
            "quantile_edges": q.edges,
            "quantile_residuals": q.residuals,
            "scale_scores": self.scale.scores,
            "scale_log_tokens": self.scale.log_tokens,
            **self.trees.arrays(),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> LengthModel:
        ridge = TextRidge(
            idf=arrays["ridge_idf"],
            coef=arrays["ridge_coef"],
            dense_mean=arrays["ridge_dense_mean"],
            dense_scale=arrays["ridge_dense_scale"],
            dense_coef=arrays["ridge_dense_coef"],
            intercept=float(arrays["ridge_intercept"][0]),
        )
        if ridge.idf.shape != (HASH_SIZE,) or ridge.coef.shape != (HASH_SIZE,):
            raise ValueError("text weights do not match the feature hash size")
        quantiles = QuantileTable(arrays["quantile_edges"], arrays["quantile_residuals"])
        if quantiles.residuals.shape != (len(quantiles.edges) + 1, len(QUANTILES)):
            raise ValueError("quantile table has the wrong shape")
        scale = TargetScale(arrays["scale_scores"], arrays["scale_log_tokens"])
        if scale.scores.ndim != 1 or scale.scores.shape != scale.log_tokens.shape:
            raise ValueError("the target scale's two columns differ in shape")
        if scale.scores.size < 2 or np.any(np.diff(scale.scores) <= 0):
            raise ValueError("the target scale's scores must increase")
        return cls(ridge, TreeEnsemble.from_arrays(arrays), quantiles, scale)
