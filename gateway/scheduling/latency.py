"""Per-backend latency models, fitted online from what the gateway observes.

Prefill: the time from dispatch to first token of a request, against the prompt tokens that
are waiting for prefill on that backend at dispatch (its own included):
    phi                  when tokens <= theta
    alpha * tokens + beta  otherwise.
Inter-token latency against the running batch B and its mean context length L (tokens):
    ITL(B, L) = a * B * L + b * B + c * L + d.
Both start from a configured prior and move to the data: each fit is a least-squares
solution pulled toward the prior by a fixed number of pseudo-observations, with Huber weights
so that a few stalls or network hiccups do not drag it. All times are in seconds.

Each model also keeps how far its predictions fall short: the ``ERROR_QUANTILE`` of observed
over predicted time, each observation against the fit in force when it was made, over the
last ``_ERROR_WINDOW`` (1 until ``_ERROR_MIN`` are in, clipped to [1, ``ERROR_CAP``]). The
arrival test of admission (``scheduling.admission``) stretches its cautious schedule by it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

_PRIOR_WEIGHT = 20.0  # the prior counts as this many observations
_HUBER_K = 1.5
_REFIT_EVERY = 25
_WINDOW = 2000
_ERROR_WINDOW = 400
_ERROR_MIN = 50
ERROR_QUANTILE = 0.9
ERROR_CAP = 4.0


class _Shortfall:
    """The recent ratios of observed to predicted time, and their upper quantile."""

    def __init__(self) -> None:
        self._ratios: deque[float] = deque(maxlen=_ERROR_WINDOW)
        self.factor = 1.0

    def add(self, observed: float, predicted: float) -> None:
        if predicted > 0:
            self._ratios.append(observed / predicted)

    def refresh(self, quantile: float = ERROR_QUANTILE) -> None:
        if len(self._ratios) < _ERROR_MIN:
            self.factor = 1.0
            return
        value = float(np.quantile(np.asarray(self._ratios), quantile))
        self.factor = min(max(value, 1.0), ERROR_CAP)


@dataclass(frozen=True, slots=True)
class PrefillParams:
    phi: float
    theta: float
    alpha: float
    beta: float

    def predict(self, tokens: float) -> float:
        if tokens <= self.theta:
            return self.phi
        return max(self.phi, self.alpha * tokens + self.beta)


@dataclass(frozen=True, slots=True)
class ItlParams:
    a: float
    b: float
    c: float
    d: float

    def predict(self, batch: float, mean_context: float) -> float:
        value = self.a * batch * mean_context + self.b * batch + self.c * mean_context + self.d
        return max(value, 1e-4)

    def max_batch(self, mean_context: float, limit: float) -> float:
        """The largest batch whose ITL stays within ``limit`` (can be below 1 or infinite)."""
        slope = self.a * mean_context + self.b
        room = limit - self.c * mean_context - self.d
        if slope <= 0:
            return float("inf") if room >= 0 else 0.0
        return room / slope


def _huber_weights(residuals: np.ndarray) -> np.ndarray:
    scale = 1.4826 * float(np.median(np.abs(residuals))) + 1e-9
    r = np.abs(residuals) / (_HUBER_K * scale)
    return np.where(r <= 1.0, 1.0, 1.0 / np.maximum(r, 1e-12))


def _regularised_fit(x: np.ndarray, y: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Weighted least squares, shrunk toward ``prior``; two Huber reweighting rounds."""
    weights = np.ones(len(y))
    # The prior weighs as much as _PRIOR_WEIGHT typical observations that agree with it.
    penalty = np.diag(_PRIOR_WEIGHT * (np.mean(x**2, axis=0) + 1e-12))
    coef = prior
    for _ in range(3):
        xw = x * weights[:, None]
        coef = np.linalg.solve(x.T @ xw + penalty, xw.T @ y + penalty @ prior)
        weights = _huber_weights(y - x @ coef)
    return coef


class PrefillModel:
    def __init__(self, prior: PrefillParams) -> None:
        self.prior = prior
        self.params = prior
        self._obs: deque[tuple[float, float]] = deque(maxlen=_WINDOW)
        self._since_fit = 0
        self.observations = 0
        self.shortfall = _Shortfall()

    @property
    def error(self) -> float:
        """How many times longer than predicted prefill may take (the upper quantile)."""
        return self.shortfall.factor

    def observe(self, tokens: float, seconds: float) -> None:
        if seconds <= 0 or tokens <= 0:
            return
        self.shortfall.add(seconds, self.params.predict(tokens))
        self._obs.append((tokens, seconds))
        self.observations += 1
        self._since_fit += 1
        if self._since_fit >= _REFIT_EVERY or self.observations < _REFIT_EVERY:
            self.refit()

    def refit(self) -> None:
        self._since_fit = 0
        self.shortfall.refresh()
        data = np.asarray(self._obs)
        prior = self.prior
        small = data[data[:, 0] <= prior.theta, 1]
        n = len(small)
        if n:
            phi = (prior.phi * _PRIOR_WEIGHT + float(np.median(small)) * n) / (_PRIOR_WEIGHT + n)
        else:
            phi = prior.phi
        large = data[data[:, 0] > prior.theta]
        if len(large):
            x = np.column_stack([large[:, 0], np.ones(len(large))])
            alpha, beta = _regularised_fit(x, large[:, 1], np.asarray([prior.alpha, prior.beta]))
            alpha = max(alpha, 0.0)
        else:
            alpha, beta = prior.alpha, prior.beta
        self.params = PrefillParams(phi, prior.theta, float(alpha), float(beta))


class ItlModel:
    def __init__(self, prior: ItlParams) -> None:
        self.prior = prior
        self.params = prior
        self._obs: deque[tuple[float, float, float]] = deque(maxlen=_WINDOW)
        self._since_fit = 0
        self.observations = 0
        self.shortfall = _Shortfall()

    @property
    def error(self) -> float:
        """How many times longer than predicted a token may take (the upper quantile)."""
        return self.shortfall.factor

    def observe(self, batch: float, mean_context: float, seconds: float) -> None:
        if seconds <= 0 or batch <= 0:
            return
        self.shortfall.add(seconds, self.params.predict(batch, mean_context))
        self._obs.append((batch, mean_context, seconds))
        self.observations += 1
        self._since_fit += 1
        if self._since_fit >= _REFIT_EVERY:
            self.refit()

    def refit(self) -> None:
        self._since_fit = 0
        self.shortfall.refresh()
        data = np.asarray(self._obs)
        batch, context, y = data[:, 0], data[:, 1], data[:, 2]
        x = np.column_stack([batch * context, batch, context, np.ones(len(y))])
        p = self.prior
        prior = np.asarray([p.a, p.b, p.c, p.d])
        a, b, c, d = _regularised_fit(x, y, prior)
        self.params = ItlParams(
            max(float(a), 0.0), max(float(b), 0.0), max(float(c), 0.0), max(float(d), 1e-4)
        )
