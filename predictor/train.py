"""Training the length model (runs offline, or in a worker thread for a retrain)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.stats import norm, rankdata
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold

from predictor.data import Sample
from predictor.features import HASH_SIZE, featurize
from predictor.model import QUANTILES, LengthModel, QuantileTable, TargetScale, TextRidge
from predictor.trees import export

RIDGE_ALPHA = 3.0
QUANTILE_BINS = 8
SCALE_POINTS = 257


@dataclass(frozen=True)
class Baselines:
    """The two reference predictors evaluated beside the model."""

    train_mean: float
    length_slope: float
    length_intercept: float


def _design(samples: list[Sample]) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The hashed text counts (sparse) and dense features of every sample."""
    indptr: list[int] = [0]
    indices: list[int] = []
    counts: list[int] = []
    dense: list[np.ndarray] = []
    for sample in samples:
        text, numeric = featurize(sample.info)
        indices.extend(text.keys())
        counts.extend(text.values())
        indptr.append(len(indices))
        dense.append(numeric)
    matrix = sparse.csr_matrix(
        (np.asarray(counts, dtype=np.float64), np.asarray(indices), np.asarray(indptr)),
        shape=(len(samples), HASH_SIZE),
    )
    return matrix, np.vstack(dense)


def _tfidf(counts: sparse.csr_matrix, idf: np.ndarray) -> sparse.csr_matrix:
    weighted = counts.copy()
    weighted.data = 1.0 + np.log(weighted.data)
    weighted = sparse.csr_matrix(weighted.multiply(idf[np.newaxis, :]))
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sparse.csr_matrix(sparse.diags(1.0 / norms) @ weighted)


def _fit_ridge(
    text: sparse.csr_matrix, dense: np.ndarray, target: np.ndarray
) -> tuple[TextRidge, sparse.csr_matrix, np.ndarray]:
    df = np.asarray((text > 0).sum(axis=0)).ravel()
    idf = np.log((1.0 + text.shape[0]) / (1.0 + df)) + 1.0
    tfidf = _tfidf(text, idf)
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    scale[scale == 0] = 1.0
    design = sparse.hstack([tfidf, sparse.csr_matrix((dense - mean) / scale)]).tocsr()
    ridge = Ridge(alpha=RIDGE_ALPHA, solver="sparse_cg", tol=1e-4).fit(design, target)
    coef = np.asarray(ridge.coef_)
    model = TextRidge(
        idf=idf,
        coef=coef[:HASH_SIZE],
        dense_mean=mean,
        dense_scale=scale,
        dense_coef=coef[HASH_SIZE:],
        intercept=float(ridge.intercept_),
    )
    return model, tfidf, (dense - mean) / scale


def _ridge_scores(model: TextRidge, text: sparse.csr_matrix, dense: np.ndarray) -> np.ndarray:
    tfidf = _tfidf(text, model.idf)
    scaled = (dense - model.dense_mean) / model.dense_scale
    return np.asarray(tfidf @ model.coef + scaled @ model.dense_coef + model.intercept)


def normal_scores(tokens: np.ndarray) -> tuple[np.ndarray, TargetScale]:
    """Each reply's normal score of its rank (ties share one), and the map back to tokens."""
    scores = norm.ppf((rankdata(tokens) - 0.5) / len(tokens))
    levels = np.linspace(0.5, len(tokens) - 0.5, SCALE_POINTS) / len(tokens)
    return scores, TargetScale(norm.ppf(levels), np.log1p(np.quantile(tokens, levels)))


def fit(samples: list[Sample], *, seed: int = 0) -> tuple[LengthModel, Baselines, dict[str, Any]]:
    """Fit the model on ``samples``; conversations never straddle the internal splits."""
    started = time.monotonic()
    groups = np.asarray([s.group for s in samples])
    tokens = np.asarray([s.output_tokens for s in samples], dtype=np.float64)
    target, scale = normal_scores(tokens)
    text, dense = _design(samples)

    # Ridge scores for the trees come from out-of-fold fits, so the trees learn how far to
    # trust the score on text the ridge has not seen.
    folds = list(GroupKFold(n_splits=5).split(target, groups=groups))
    stacked = np.zeros_like(target)
    for fit_rows, score_rows in folds:
        ridge, _, _ = _fit_ridge(text[fit_rows], dense[fit_rows], target[fit_rows])
        stacked[score_rows] = _ridge_scores(ridge, text[score_rows], dense[score_rows])
    ridge, _, _ = _fit_ridge(text, dense, target)

    # One fold is kept back from the trees to measure their residuals for the quantiles.
    tree_rows, calibration_rows = folds[0]
    design = np.column_stack([dense, stacked])
    boosted = HistGradientBoostingRegressor(
        max_iter=200, learning_rate=0.07, max_leaf_nodes=31, max_depth=7, random_state=seed
    ).fit(design[tree_rows], target[tree_rows])
    residual = target[calibration_rows] - boosted.predict(design[calibration_rows])
    predicted = boosted.predict(design[calibration_rows])
    edges = np.quantile(predicted, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1])
    bins = np.searchsorted(edges, predicted)
    overall = np.quantile(residual, QUANTILES)
    table = np.vstack(
        [
            np.quantile(residual[bins == b], QUANTILES) if np.any(bins == b) else overall
            for b in range(QUANTILE_BINS)
        ]
    )
    model = LengthModel(ridge, export(boosted), QuantileTable(edges, table), scale)

    # Prompt-length baseline: log output against log prompt tokens (dense column 0).
    slope, intercept = np.polyfit(dense[:, 0], np.log1p(tokens), 1)
    baselines = Baselines(
        train_mean=float(np.mean([s.output_tokens for s in samples])),
        length_slope=float(slope),
        length_intercept=float(intercept),
    )
    metadata = {
        "samples": len(samples),
        "conversations": len(set(groups.tolist())),
        "target": "normal score of the output tokens' rank",
        "ridge_alpha": RIDGE_ALPHA,
        "trees": int(model.trees.feature.shape[0]),
        "tree_depth": model.trees.depth,
        "train_seconds": round(time.monotonic() - started, 1),
        "baselines": {
            "train_mean": baselines.train_mean,
            "length_slope": baselines.length_slope,
            "length_intercept": baselines.length_intercept,
        },
    }
    return model, baselines, metadata
