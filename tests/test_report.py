"""The test-set report: confusion matrix, per-digit figures, the worst mistakes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
import train  # noqa: E402


def one_hot_guesses(predicted: list[int], confidence: list[float]) -> np.ndarray:
    probabilities = np.full((len(predicted), 10), 0.0, np.float32)
    for row, (digit, sure) in enumerate(zip(predicted, confidence)):
        probabilities[row] = (1 - sure) / 9
        probabilities[row, digit] = sure
    return probabilities


LABELS = np.array([0, 0, 1, 1, 1, 2, 4, 4, 9, 9])
PREDICTED = [0, 6, 1, 1, 7, 2, 9, 9, 9, 4]
CONFIDENCE = [0.9, 0.6, 0.8, 0.9, 0.95, 0.7, 0.99, 0.5, 0.9, 0.8]


@pytest.fixture(scope="module")
def report():
    return train.evaluation_report(one_hot_guesses(PREDICTED, CONFIDENCE), LABELS)


def test_confusion_matrix_has_true_digits_on_rows(report):
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (10, 10)
    assert confusion.sum() == len(LABELS)
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(LABELS, minlength=10))
    assert confusion[4, 9] == 2 and confusion[9, 4] == 1 and confusion[0, 6] == 1


def test_accuracy_is_the_trace_over_the_total(report):
    confusion = np.array(report["confusion_matrix"])
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum()) == 0.5


def test_per_class_figures_agree_with_the_matrix(report):
    one = report["per_class"]["1"]
    assert (one["precision"], one["recall"], one["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert one["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))
    nine = report["per_class"]["9"]
    assert (nine["precision"], nine["recall"]) == (pytest.approx(1 / 3), 0.5)
    assert report["per_class"]["3"] == {"precision": None, "recall": None, "f1": None, "support": 0}  # n/a


def test_loss_is_the_mean_cross_entropy(report):
    probabilities = one_hot_guesses(PREDICTED, CONFIDENCE)
    expected = -np.mean(np.log(probabilities[np.arange(len(LABELS)), LABELS]))
    assert report["loss"] == pytest.approx(expected, rel=1e-5)


def test_most_confused_pairs_come_largest_first(report):
    # 4 -> 9 twice; then once each, ties broken by the larger true digit first
    assert train.most_confused(report["confusion_matrix"]) == [(4, 9, 2), (9, 4, 1), (1, 7, 1)]
    assert train.most_confused(report["confusion_matrix"], count=5) == [(4, 9, 2), (9, 4, 1), (1, 7, 1), (0, 6, 1)]


def test_worst_mistakes_are_only_mistakes_most_confident_first():
    shown = train.worst_mistakes(LABELS, one_hot_guesses(PREDICTED, CONFIDENCE), count=25)
    assert list(shown) == [6, 4, 9, 1, 7]  # confidences 0.99, 0.95, 0.8, 0.6, 0.5
    assert all(PREDICTED[i] != LABELS[i] for i in shown)
    assert list(train.worst_mistakes(LABELS, one_hot_guesses(PREDICTED, CONFIDENCE), count=2)) == [6, 4]


def test_figures_are_drawn_even_with_no_mistakes(tmp_path):
    from PIL import Image
    images = np.zeros((3, 28, 28), np.uint8)
    labels = np.array([1, 2, 3])
    probabilities = one_hot_guesses([1, 2, 3], [0.9, 0.9, 0.9])
    history = {"loss": [0.5, 0.3], "accuracy": [0.8, 0.9], "val_loss": [0.4, 0.35], "val_accuracy": [0.85, 0.88]}
    train.draw_figures(tmp_path, history, train.evaluation_report(probabilities, labels), images, labels, probabilities,
                       temperature=2.0)
    for name in (train.HISTORY_FIGURE, train.CONFUSION_FIGURE, train.MISTAKES_FIGURE):
        with Image.open(tmp_path / name) as figure:
            assert figure.format == "PNG" and min(figure.size) >= 150


def test_the_mistakes_are_titled_with_the_calibrated_confidence_that_predict_prints(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    written = {}
    save = Figure.savefig

    def save_and_read(figure, path, **options):
        written[Path(path).name] = [text.get_text() for axes in figure.axes for text in axes.texts]
        save(figure, path, **options)

    monkeypatch.setattr(Figure, "savefig", save_and_read)
    history = {"loss": [0.5], "accuracy": [0.8], "val_loss": [0.4], "val_accuracy": [0.85]}
    labels = np.array([4, 1, 5])
    probabilities = one_hot_guesses([9, 1, 3], [0.99, 0.9, 0.6])  # 99% sure of a wrong 9: 63% calibrated
    train.draw_figures(tmp_path, history, train.evaluation_report(probabilities, labels),
                       np.zeros((3, 28, 28), np.uint8), labels, probabilities, temperature=2.5)
    assert written[train.MISTAKES_FIGURE] == ["true 4 -> 9 (63%)", "true 5 -> 3 (24%)"]


def test_a_figure_that_fails_is_a_warning(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(train, "plot_confusion", broken)
    history = {"loss": [0.5], "accuracy": [0.8], "val_loss": [0.4], "val_accuracy": [0.85]}
    probabilities = one_hot_guesses(PREDICTED, CONFIDENCE)
    train.draw_figures(tmp_path, history, train.evaluation_report(probabilities, LABELS),
                       np.zeros((10, 28, 28), np.uint8), LABELS, probabilities, temperature=2.0)
    assert capsys.readouterr().err.strip() == f"warning: {train.CONFUSION_FIGURE} was not drawn: no fonts"
    assert (tmp_path / train.HISTORY_FIGURE).exists() and (tmp_path / train.MISTAKES_FIGURE).exists()
