"""Gradient-boosted trees as plain arrays, evaluated with numpy.

Training uses scikit-learn's HistGradientBoostingRegressor; ``export`` copies its trees into
padded arrays (no pickle), and ``TreeEnsemble.predict`` walks all trees at once, one level
per numpy step, so a single prediction costs tens of microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TreeEnsemble:
    feature: np.ndarray  # (trees, nodes) int32
    threshold: np.ndarray  # (trees, nodes) float64
    missing_left: np.ndarray  # (trees, nodes) bool
    left: np.ndarray  # (trees, nodes) int32
    right: np.ndarray  # (trees, nodes) int32
    leaf: np.ndarray  # (trees, nodes) bool
    value: np.ndarray  # (trees, nodes) float64
    baseline: float
    depth: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "tree_feature": self.feature,
            "tree_threshold": self.threshold,
            "tree_missing_left": self.missing_left,
            "tree_left": self.left,
            "tree_right": self.right,
            "tree_leaf": self.leaf,
            "tree_value": self.value,
            "tree_baseline": np.asarray([self.baseline, self.depth], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> TreeEnsemble:
        baseline, depth = arrays["tree_baseline"]
        return cls(
            feature=arrays["tree_feature"],
            threshold=arrays["tree_threshold"],
            missing_left=arrays["tree_missing_left"],
            left=arrays["tree_left"],
            right=arrays["tree_right"],
            leaf=arrays["tree_leaf"],
            value=arrays["tree_value"],
            baseline=float(baseline),
            depth=int(depth),
        )

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predictions for a (n, features) matrix (no missing values)."""
        rows = np.atleast_2d(rows)
        flat = self._flat
        out = np.empty(rows.shape[0])
        for r, x in enumerate(rows):
            node = flat.roots
            for _ in range(self.depth):
                go_left = x[flat.feature[node]] <= flat.threshold[node]
                node = np.where(go_left, flat.left[node], flat.right[node])
            out[r] = self.baseline + flat.value[node].sum()
        return out

    @cached_property
    def _flat(self) -> _FlatTrees:
        # Flat node ids; a leaf points to itself on both sides, so walking ``depth`` levels
        # lands every tree on its leaf without a per-level leaf test.
        trees, width = self.feature.shape
        roots = np.arange(trees, dtype=np.int64) * width
        base = np.repeat(roots, width)
        own = np.tile(np.arange(width), trees)
        leaf = self.leaf.ravel()
        return _FlatTrees(
            roots=roots,
            feature=self.feature.ravel().astype(np.int64),
            threshold=self.threshold.ravel(),
            left=np.where(leaf, own, self.left.ravel()) + base,
            right=np.where(leaf, own, self.right.ravel()) + base,
            value=self.value.ravel(),
        )


@dataclass(frozen=True)
class _FlatTrees:
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


def export(model: Any) -> TreeEnsemble:
    """Copy a fitted single-output HistGradientBoostingRegressor into a TreeEnsemble."""
    predictors = [p[0] for p in model._predictors]
    if any(p.nodes["is_categorical"].any() for p in predictors):
        raise ValueError("categorical splits are not supported")
    width = max(len(p.nodes) for p in predictors)
    shape = (len(predictors), width)
    feature = np.zeros(shape, dtype=np.int32)
    threshold = np.zeros(shape, dtype=np.float64)
    missing_left = np.zeros(shape, dtype=bool)
    left = np.zeros(shape, dtype=np.int32)
    right = np.zeros(shape, dtype=np.int32)
    leaf = np.ones(shape, dtype=bool)
    value = np.zeros(shape, dtype=np.float64)
    depth = 0
    for t, predictor in enumerate(predictors):
        nodes = predictor.nodes
        n = len(nodes)
        feature[t, :n] = nodes["feature_idx"]
        threshold[t, :n] = nodes["num_threshold"]
        missing_left[t, :n] = nodes["missing_go_to_left"].astype(bool)
        left[t, :n] = nodes["left"]
        right[t, :n] = nodes["right"]
        leaf[t, :n] = nodes["is_leaf"].astype(bool)
        value[t, :n] = nodes["value"]
        depth = max(depth, int(nodes["depth"].max()))
    baseline = float(np.ravel(model._baseline_prediction)[0])
    return TreeEnsemble(feature, threshold, missing_left, left, right, leaf, value, baseline, depth)
