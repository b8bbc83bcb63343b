"""The printed confidence: temperature scaling fitted on held-out digits, and its error measure."""
from __future__ import annotations

import json

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


def guesses(predicted: list[int], confidence: list[float]) -> np.ndarray:
    """Probability rows: each answer's confidence on its digit, the rest shared by the other nine."""
    rows = np.array([[(1 - sure) / 9] * 10 for sure in confidence], np.float32)
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows


# Three wrong answers: at 99% (63% calibrated at temperature 2.5), at 99.99999% (99.4%), at 60%.
LABELS = np.array([4, 1, 5, 2, 2])
GUESSES = guesses([9, 1, 3, 2, 7], [0.99, 0.9, 1 - 1e-7, 0.95, 0.6])


def test_confident_wrong_counts_the_wrong_answers_above_90_percent():
    assert train.confident_wrong(GUESSES, LABELS) == 2  # not the right ones at 90% and 95%, not the one at 60%
    assert train.confident_wrong(train.calibrated(GUESSES, 2.5), LABELS) == 1


def test_the_confidence_is_judged_with_and_without_the_calibration():
    honesty = train.confidence_honesty(GUESSES, LABELS, 2.5)
    assert (honesty["images"], honesty["wrong"]) == (5, 3)
    assert honesty["confident_wrong"] == {"raw": 2, "calibrated": 1}
    assert honesty["calibration_error"] == {
        "raw": pytest.approx(train.calibration_error(GUESSES, LABELS)),
        "calibrated": pytest.approx(train.calibration_error(train.calibrated(GUESSES, 2.5), LABELS))}


def test_the_printed_line_says_how_many_wrong_answers_it_was_sure_of_before_and_after(capsys):
    figures = {"images": 10_000, "calibration_error": {"raw": 0.007, "calibrated": 0.04}}
    train.print_calibration({
        "temperature": 2.4308, "confident_above": 0.9,
        "mnist_test": {**figures, "wrong": 178, "confident_wrong": {"raw": 61, "calibrated": 5}},
        "varied_test": {**figures, "wrong": 1980, "confident_wrong": {"raw": 842, "calibrated": 187}}})
    assert capsys.readouterr().out == (
        "Confidence calibrated for pictures (temperature 2.43): wrong answers above 90% confidence: "
        "61 of 178 -> 5 of 178 on MNIST's test digits, "
        "842 of 1,980 -> 187 of 1,980 on test digits varied as pictures vary\n")


def test_a_run_prints_the_calibration_it_saves(trained):
    done, out = trained
    saved = json.loads((out / train.METRICS_FILE).read_text())["calibration"]
    assert saved["confident_above"] == train.CONFIDENT
    for name in ("mnist_test", "varied_test"):
        figures = saved[name]
        assert figures["images"] == saved["mnist_test"]["images"] > 0
        assert all(0 <= count <= figures["wrong"] for count in figures["confident_wrong"].values())
    line = next(line for line in done.stdout.splitlines() if line.startswith("Confidence calibrated"))
    mnist, varied = saved["mnist_test"], saved["varied_test"]
    assert (f"{mnist['confident_wrong']['raw']:,} of {mnist['wrong']:,} -> "
            f"{mnist['confident_wrong']['calibrated']:,} of {mnist['wrong']:,} on MNIST's test digits") in line
    assert (f"{varied['confident_wrong']['raw']:,} of {varied['wrong']:,} -> "
            f"{varied['confident_wrong']['calibrated']:,} of {varied['wrong']:,} on test digits varied") in line
