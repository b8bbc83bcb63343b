"""The printed confidence: temperature scaling fitted on held-out digits, and its error measure."""
from __future__ import annotations

import numpy as np
import pytest

import train


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20_000, 10))
    labels = np.array([rng.choice(10, p=row) for row in softmax(logits / 2.5)])
    assert train.fit_temperature(softmax(logits), labels) == pytest.approx(2.5, rel=0.05)


def test_calibration_keeps_every_answer_and_gives_probabilities():
    probabilities = softmax(np.random.default_rng(1).normal(0, 5, (100, 10)))
    softer = train.calibrated(probabilities, 2.0)
    np.testing.assert_array_equal(softer.argmax(axis=1), probabilities.argmax(axis=1))
    np.testing.assert_allclose(softer.sum(axis=1), 1)
    assert (softer.max(axis=1) <= probabilities.max(axis=1) + 1e-12).all()
    np.testing.assert_allclose(train.calibrated(probabilities, 1.0), probabilities, atol=1e-9)


def test_calibration_error_is_the_gap_between_confidence_and_accuracy():
    sure = np.full((10, 10), 0.01 / 9)
    sure[:, 3] = 0.99
    labels = np.array([3] * 5 + [4] * 5)  # 99% sure, right half the time
    assert train.calibration_error(sure, labels) == pytest.approx(0.49)
    assert train.calibration_error(sure, np.full(10, 3)) == pytest.approx(0.01)


def test_varied_digits_stay_digits_and_follow_the_seed():
    pytest.importorskip("tensorflow")
    digits = np.zeros((50, 28, 28), np.uint8)
    digits[:, 8:20, 12:16] = 255
    first = train.varied_like_pictures(digits, np.random.default_rng(3))
    again = train.varied_like_pictures(digits, np.random.default_rng(3))
    assert first.shape == (50, 28, 28) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert 0 <= first.min() and first.max() <= 1
    ink = first.sum(axis=(1, 2)) / digits[0].sum() * 255
    assert (0.4 < ink).all() and (ink < 2.0).all()  # moved and reshaped, never lost
    assert not np.array_equal(first[0], first[1])
