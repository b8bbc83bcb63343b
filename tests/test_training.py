"""The whole script, run as a user runs it: train, report, save, and never lose a good model."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import train
from conftest import TRAIN, is_png, run_here, run_train

OUTPUTS = {train.MODEL_FILE, train.ONNX_FILE, train.DIAGRAM_FILE, train.METRICS_FILE, train.HISTORY_FILE,
           train.HISTORY_FIGURE, train.CONFUSION_FIGURE, train.MISTAKES_FIGURE}
FIGURES = (train.HISTORY_FIGURE, train.CONFUSION_FIGURE, train.MISTAKES_FIGURE)
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed, so no diagram is drawn")


@pytest.fixture(scope="module")
def smoke(synthetic_npz, tmp_path_factory):
    """The CI smoke test of the design card: one epoch on small synthetic MNIST-format data."""
    out = tmp_path_factory.mktemp("smoke")
    done = run_train("--data", synthetic_npz, "--epochs", "1", "--output-dir", out)
    return done, out


def test_smoke_run_succeeds_and_reports_in_percent(smoke, synthetic_npz):
    done, _ = smoke
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"Data: {synthetic_npz}: 960 training, 240 validation and 300 test images"
    assert lines[1:5] == ["Model mnist_dense: 101,770 parameters",
                          "  flatten  Flatten              output (None, 784)        0 parameters",
                          "  hidden   Dense(128, relu)     output (None, 128)  100,480 parameters",
                          "  digit    Dense(10, softmax)   output (None, 10)     1,290 parameters"]
    assert lines[5].startswith("Epoch 1/1: loss ")  # one plain line per epoch when not a terminal
    for label in ("Training accuracy", "Validation accuracy", "Test accuracy"):
        assert any(line.startswith(f"{label}: ") and line.endswith("%") for line in lines), label


def test_smoke_run_output_is_free_of_framework_chatter(smoke):
    done, _ = smoke
    assert done.stderr == ""  # TensorFlow's start-up messages (absl, oneDNN, CUDA) go to stderr


def test_smoke_run_learns_the_synthetic_digits(smoke):
    done, out = smoke
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    assert metrics["test_accuracy"] > 0.9  # chance is 0.1
    assert f"Test accuracy: {100 * metrics['test_accuracy']:.2f}%" in done.stdout


def test_smoke_run_writes_exactly_the_outputs(smoke):
    _, out = smoke
    expected = OUTPUTS if shutil.which("dot") else OUTPUTS - {train.DIAGRAM_FILE}
    assert {p.name for p in out.iterdir()} == expected  # and no staging folder left behind


def test_metrics_json_records_the_run(smoke, synthetic_npz):
    _, out = smoke
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    assert metrics["epochs"] == 1 and metrics["batch_size"] == 32 and metrics["seed"] == train.SEED
    assert metrics["data_source"] == str(synthetic_npz)
    assert set(metrics["history"]) >= {"accuracy", "loss", "val_accuracy", "val_loss"}
    assert all(len(values) == 1 for values in metrics["history"].values())
    assert metrics["versions"]["tensorflow"] and metrics["versions"]["keras"]
    assert 0 < metrics["fit_seconds"] <= metrics["wall_seconds"]


def test_saved_model_reloads_and_reproduces_the_test_accuracy(smoke, synthetic_npz):
    import keras
    _, out = smoke
    model = keras.models.load_model(out / train.MODEL_FILE)
    test = np.load(synthetic_npz)
    predicted = model.predict(test["x_test"].astype(np.float32) / 255, verbose=0).argmax(axis=1)
    accuracy = float((predicted == test["y_test"]).mean())
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_smoke_run_prints_a_per_digit_table_and_the_most_confused_pairs(smoke):
    done, out = smoke
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    lines = done.stdout.splitlines()
    table = lines.index("Digit  precision  recall  support")
    for digit in range(10):
        figures = metrics["per_class"][str(digit)]
        assert lines[table + 1 + digit].split() == [
            str(digit), f"{100 * figures['precision']:.1f}%", f"{100 * figures['recall']:.1f}%",
            str(figures["support"])]


def test_report_in_metrics_json_is_consistent(smoke, synthetic_npz):
    _, out = smoke
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    y_test = np.load(synthetic_npz)["y_test"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == len(y_test)
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(y_test, minlength=10))
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["test_accuracy"])
    for digit in range(10):
        figures = metrics["per_class"][str(digit)]
        assert figures["support"] == confusion[digit].sum()
        assert figures["recall"] == pytest.approx(confusion[digit, digit] / confusion[digit].sum())


def test_history_csv_has_one_row_per_epoch(smoke):
    import csv
    _, out = smoke
    with open(out / train.HISTORY_FILE) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"  # epochs count from 1, as on screen
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.002)


def test_figures_are_pngs_of_a_sensible_size(smoke):
    from PIL import Image
    _, out = smoke
    for name in FIGURES:
        with Image.open(out / name) as figure:
            assert figure.format == "PNG" and 150 <= min(figure.size) and max(figure.size) <= 2000, name


def test_no_tensorboard_logs_by_default(smoke):  # with --tensorboard: test_edges's tensorboard run
    _, out = smoke
    assert not (out / train.TENSORBOARD_DIR).exists()


@needs_dot
def test_architecture_diagram_is_a_png(smoke):
    _, out = smoke
    assert is_png(out / train.DIAGRAM_FILE)


def test_without_graphviz_the_run_warns_once_and_still_saves(synthetic_npz, tmp_path, placeholder_figures):
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    out = tmp_path / "out"
    done = run_here("--data", synthetic_npz, "--epochs", "1", "--output-dir", out, env={"PATH": str(empty_path)})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: Graphviz's 'dot' program was not found")
    assert "apt-get install graphviz" in warnings[0]
    assert {p.name for p in out.iterdir()} == OUTPUTS - {train.DIAGRAM_FILE}


def test_without_tf2onnx_the_run_warns_and_saves_model_h5_but_no_earlier_model_onnx(synthetic_npz, tmp_path,
                                                                                   no_learning, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / train.ONNX_FILE).write_bytes(b"an earlier run's model.onnx")
    find_spec = train.importlib.util.find_spec
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name, *rest: None if name == "tf2onnx"
                        else find_spec(name, *rest))
    done = run_here("--data", synthetic_npz, "--epochs", "1", "--output-dir", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: model.onnx, which predict.py and serve.py run, was not saved (model.h5 was): "
        "tf2onnx is not installed; pip install -r requirements.txt",
        "warning: the earlier model.onnx was removed, as this run did not make one: the outputs are all one run's"]
    assert {p.name for p in out.iterdir()} == OUTPUTS - {train.ONNX_FILE}


def test_model_onnx_holds_the_temperature_model_h5_holds(smoke):
    import h5py
    import onnx

    _, out = smoke
    with h5py.File(out / train.MODEL_FILE, "r") as file:
        temperature = float(file.attrs[train.TEMPERATURE_ATTRIBUTE])
    properties = {entry.key: entry.value for entry in onnx.load(out / train.ONNX_FILE).metadata_props}
    assert float(properties[train.TEMPERATURE_ATTRIBUTE]) == temperature


def test_same_seed_gives_identical_results_and_another_seed_does_not(smoke, synthetic_npz, tmp_path,
                                                                      placeholder_figures):
    def results(out: Path) -> tuple[dict, bytes]:
        metrics = json.loads((out / train.METRICS_FILE).read_text())
        return {k: metrics[k] for k in ("test_accuracy", "test_loss", "history")}, weights(out)

    def run(seed: int) -> tuple[dict, bytes]:
        out = tmp_path / str(seed)
        done = run_here("--data", synthetic_npz, "--epochs", "1", "--seed", seed, "--output-dir", out)
        assert done.returncode == 0, done.stderr
        return results(out)

    first = results(smoke[1])  # the default seed, in a process of its own
    assert run(train.SEED) == first  # again, in another process
    assert run(train.SEED + 1)[1] != first[1]


def weights(out: Path) -> bytes:
    import h5py
    with h5py.File(out / train.MODEL_FILE) as file:
        arrays = []
        file["model_weights"].visititems(
            lambda name, item: arrays.append(item[()].tobytes()) if isinstance(item, h5py.Dataset) else None)
    return b"".join(arrays)


def previous_good_run(out: Path) -> dict[str, bytes]:
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_bytes(f"previous {name}".encode())
    return snapshot(out)


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_run_that_fails_while_saving_leaves_the_previous_model_untouched(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)

    def disk_full(path, content):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "write_json", disk_full)
    done = run_here("--data", synthetic_npz, "--epochs", "1", "--output-dir", out, "--quiet")
    assert done.returncode == 1
    assert done.stderr == f"error: could not write the outputs to {out}: the disk is full; the previous outputs are as they were\n"
    assert snapshot(out) == before


def test_bad_data_fails_with_one_line_and_keeps_the_previous_model(tmp_path):
    out = tmp_path / "out"
    before = previous_good_run(out)
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not an archive")
    done = run_train("--data", bad, "--output-dir", out)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {bad}: not an .npz archive (wrong format or truncated)"
    assert snapshot(out) == before


def signal_during_epoch(monkeypatch, number: int, epoch: int = 2, first: Callable[[], None] = lambda: None) -> None:
    """Have this process receive the signal `number` while training's epoch `epoch` runs, as a
    Ctrl-C, a `kill` or a closed terminal arrives (after calling `first`)."""
    real, calls = train.epoch_order, []

    def order(*args):
        calls.append(args)
        if len(calls) == epoch:
            first()
            os.kill(os.getpid(), number)
        return real(*args)
    monkeypatch.setattr(train, "epoch_order", order)


def test_ctrl_c_stops_cleanly_and_leaves_the_output_folder_as_it_was(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)
    during: list[Path] = []
    signal_during_epoch(monkeypatch, signal.SIGINT, first=lambda: during.extend(out.iterdir()))
    done = run_here("--data", synthetic_npz, "--epochs", "3", "--output-dir", out)
    assert len(during) == len(OUTPUTS) + 1  # the run's staging folder, hidden, beside the outputs
    assert done.returncode == 130
    assert done.stderr.strip() == f"Interrupted: nothing was saved; {out} is as it was."
    assert snapshot(out) == before


def test_ctrl_c_in_a_terminal_stops_a_starting_run_cleanly(synthetic_npz, tmp_path):
    """As a terminal sends it: SIGINT to the whole process group, the filter of stderr included; while
    TensorFlow starts, when a user waiting is likeliest to press it (during training: the tests above)."""
    out = tmp_path / "out"
    before = previous_good_run(out)
    process = subprocess.Popen([sys.executable, str(TRAIN), "--data", str(synthetic_npz), "--output-dir", str(out)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # a process group of its own, as in a terminal
    try:
        for line in process.stdout:
            if line.startswith("Data: "):  # printed just before TensorFlow starts
                os.killpg(process.pid, signal.SIGINT)
                break
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert err == f"\nInterrupted: nothing was saved; {out} is as it was.\n"
    assert snapshot(out) == before


def test_real_mnist_one_epoch_reaches_95_percent(real_mnist, trained):
    done, out = trained  # one epoch on real MNIST, as MNIST_NPZ is set
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    assert metrics["test_accuracy"] >= 0.95
    assert len(metrics["history"]["accuracy"]) == 1
    assert f"Test accuracy: {100 * metrics['test_accuracy']:.2f}%" in done.stdout
