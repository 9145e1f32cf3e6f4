from __future__ import annotations

import numpy as np
import pytest

from gateway.scheduling.latency import ItlModel, ItlParams, PrefillModel, PrefillParams

TRUE_ITL = ItlParams(a=2e-7, b=4e-4, c=1e-6, d=0.012)


def test_itl_model_leaves_a_wrong_prior_for_the_data() -> None:
    rng = np.random.default_rng(0)
    model = ItlModel(ItlParams(a=0.0, b=0.006e-3, c=0.0, d=0.00575))  # 8B/H100, far too fast
    for _ in range(600):
        batch = float(rng.integers(1, 64))
        context = float(rng.uniform(100, 3000))
        noise = rng.lognormal(0, 0.05)
        model.observe(batch, context, TRUE_ITL.predict(batch, context) * noise)
    for batch, context in ((1, 500), (16, 1000), (48, 2500)):
        assert model.params.predict(batch, context) == pytest.approx(
            TRUE_ITL.predict(batch, context), rel=0.1
        )


def test_itl_outliers_do_not_drag_the_fit() -> None:
    rng = np.random.default_rng(1)
    model = ItlModel(TRUE_ITL)
    for i in range(500):
        batch, context = float(rng.integers(1, 32)), float(rng.uniform(100, 2000))
        value = TRUE_ITL.predict(batch, context)
        model.observe(batch, context, value * 20 if i % 25 == 0 else value)  # 4% stalls
    assert model.params.predict(16, 1000) == pytest.approx(TRUE_ITL.predict(16, 1000), rel=0.05)


def test_prefill_model_fits_both_pieces() -> None:
    truth = PrefillParams(phi=0.03, theta=512, alpha=5e-5, beta=0.02)
    model = PrefillModel(PrefillParams(phi=0.015, theta=512, alpha=1.7e-5, beta=0.006))
    rng = np.random.default_rng(2)
    for _ in range(400):
        small = rng.random() < 0.5
        tokens = float(rng.integers(10, 512) if small else rng.integers(513, 8000))
        model.observe(tokens, truth.predict(tokens) * rng.lognormal(0, 0.05))
    assert model.params.phi == pytest.approx(0.03, rel=0.1)
    assert model.params.predict(4000) == pytest.approx(truth.predict(4000), rel=0.1)


def test_no_data_keeps_the_prior_and_bad_samples_are_ignored() -> None:
    prior = PrefillParams(phi=0.015, theta=512, alpha=1.7e-5, beta=0.006)
    model = PrefillModel(prior)
    model.observe(0, 0.1)
    model.observe(100, -1.0)
    assert model.params == prior
    assert model.observations == 0


def test_max_batch() -> None:
    assert ItlParams(0, 0.001, 0, 0.01).max_batch(1000, 0.03) == pytest.approx(20)
    assert ItlParams(0, 0, 0, 0.01).max_batch(1000, 0.03) == float("inf")
    assert ItlParams(0, 0, 0, 0.05).max_batch(1000, 0.03) == 0.0
