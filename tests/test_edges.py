"""The promises at the edges: signals, re-runs, one-line messages, words and numbers (those that
only a process of its own shows: test_edges_processes.py)."""
from __future__ import annotations

import importlib
import itertools
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict
import train
from conftest import Ran, run_here, synthetic_mnist
from test_training import FIGURES, OUTPUTS, previous_good_run, signal_during_epoch, snapshot


def quick_run(data: Path, out: Path, *extra: str) -> Ran:
    """train.py's main() in this process: one epoch on small data."""
    return run_here("--data", data, "--epochs", "1", "--output-dir", out, "--quiet", *extra)


def replace_then(action, after: int):
    """os.replace, which does `action` once, after its `after`-th move."""
    real, calls = os.replace, []

    def replace(source, target):
        real(source, target)
        calls.append(target)
        if len(calls) == after:
            action()
    return replace


def replace_failing(at: int, lasting: bool = False):
    """os.replace, whose `at`-th move fails as a locked file does: nothing moves; and if `lasting`,
    every later one too, as in a folder that became read-only."""
    real, calls = os.replace, []

    def replace(source, target):
        calls.append(target)
        if len(calls) == at or lasting and len(calls) > at:
            raise PermissionError(13, "Permission denied")  # a history.csv open in a spreadsheet
        real(source, target)
    return replace


def publish_new_outputs(out: Path, without: set[str] = set(), tensorboard: bool = False) -> None:
    """What a run does once it has made its outputs (all, or all but those `without`; and TensorBoard's
    logs): stage them, and move them into place."""
    with train.Staging(out) as staging, train.write_errors_named(out):
        for name in OUTPUTS - without:
            (staging.path / name).write_bytes(f"new {name}".encode())
        if tensorboard:
            (staging.path / train.TENSORBOARD_DIR / "run-new").mkdir(parents=True)
            (staging.path / train.TENSORBOARD_DIR / "run-new" / "events").write_text("new run")
        staging.publish()


def every_file(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in out.rglob("*") if path.is_file()}


def test_a_kill_during_the_final_move_waits_until_every_output_is_new(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)
    monkeypatch.setattr(train.os, "replace", replace_then(lambda: os.kill(os.getpid(), signal.SIGTERM), after=3))
    done = quick_run(synthetic_npz, out)
    assert done.returncode == train.EXIT_INTERRUPTED  # the third move of seven and more
    assert done.stderr.strip() == f"Interrupted after every output was saved in {out}."
    after = snapshot(out)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)


def test_an_error_part_way_through_the_move_puts_every_old_output_back(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)

    monkeypatch.setattr(train.os, "replace", replace_failing(at=5))
    done = quick_run(synthetic_npz, out)
    assert done.returncode == 1
    assert done.stderr == (f"error: could not write the outputs to {out}: Permission denied; "
                                       "the previous outputs are as they were\n")
    assert snapshot(out) == before


@pytest.mark.parametrize("without, tensorboard", [
    (set(), False),  # each output: the old one set aside, the new one moved in
    ({train.DIAGRAM_FILE}, True),  # ... and an old one this run did not make set aside, a new logs run moved in
])
def test_an_error_at_any_rename_of_the_move_puts_every_old_output_back(without, tensorboard, tmp_path, monkeypatch):
    for at in itertools.count(1):
        out = tmp_path / str(at)
        previous_good_run(out)
        (out / train.TENSORBOARD_DIR / "run-earlier").mkdir(parents=True)
        (out / train.TENSORBOARD_DIR / "run-earlier" / "events").write_text("earlier run")
        before = every_file(out)
        with monkeypatch.context() as patch:
            patch.setattr(train.os, "replace", replace_failing(at))
            try:
                publish_new_outputs(out, without, tensorboard)
            except train.OutputError as error:
                assert str(error).endswith("Permission denied; the previous outputs are as they were")
            else:
                break  # every rename of the move has failed once
        assert every_file(out) == before, f"rename {at}"  # every old output back, the staging folder removed
    assert at - 1 == 2 * len(OUTPUTS)


def test_earlier_outputs_that_cannot_be_put_back_are_kept_where_the_error_says(tmp_path, monkeypatch):
    for at in range(1, 2 * len(OUTPUTS) + 1):
        out = tmp_path / str(at)
        before = previous_good_run(out)
        with monkeypatch.context() as patch, pytest.raises(train.OutputError) as error:
            patch.setattr(train.os, "replace", replace_failing(at, lasting=True))
            publish_new_outputs(out)
        train.remove_stale_staging(out)  # as the next run does first
        aside = list(out.glob(f".train-*/{train.STAGING_ASIDE}"))
        kept = {path.name: path.read_bytes() for folder in (out, *aside) for path in folder.iterdir() if path.is_file()}
        if at == 1:  # nothing moved
            assert str(error.value).endswith("Permission denied; the previous outputs are as they were")
            assert snapshot(out) == before
        else:
            assert aside, f"rename {at}: the earlier outputs set aside were deleted"
            assert str(error.value).endswith(f"Permission denied; some of the previous outputs could not be put "
                                             f"back: they are in {aside[0]}")
            assert {name: kept[name] for name in before} == before, f"rename {at}"


def ctrl_c_at_first_call(monkeypatch, module, name: str, armed=lambda: True, after: bool = False) -> None:
    """Replace train's `module`.`name` by one that, on its first call once `armed()`, has this process
    get a Ctrl-C: before the real call, or `after` it."""
    real, called = getattr(module, name), []

    def call(*args, **kwargs):
        first = armed() and not called
        if armed():
            called.append(name)
        if first and not after:
            os.kill(os.getpid(), signal.SIGINT)
        result = real(*args, **kwargs)
        if first and after:
            os.kill(os.getpid(), signal.SIGINT)
        return result
    monkeypatch.setattr(train, module.__name__, types.SimpleNamespace(**{**vars(module), name: call}))


def test_a_signal_while_the_move_is_being_prepared_saves_nothing_and_says_so(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)
    publishing, real_publish = [], train.Staging.publish
    monkeypatch.setattr(train.Staging, "publish", lambda staging: publishing.append(1) or real_publish(staging))
    ctrl_c_at_first_call(monkeypatch, signal, "signal", armed=lambda: bool(publishing))  # installing its handlers
    done = quick_run(synthetic_npz, out)
    assert done.returncode == 130
    assert done.stderr.strip() == f"Interrupted: nothing was saved; {out} is as it was."
    assert snapshot(out) == before


def test_a_signal_after_the_move_says_every_output_was_saved(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)
    ctrl_c_at_first_call(monkeypatch, shutil, "rmtree", after=True)  # as the staging folder is removed
    done = quick_run(synthetic_npz, out)
    assert done.returncode == 130
    assert done.stderr.strip() == f"Interrupted after every output was saved in {out}."
    after = snapshot(out)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)


def test_a_closed_terminal_stops_cleanly_like_ctrl_c(synthetic_npz, tmp_path, monkeypatch, no_learning):
    out = tmp_path / "out"
    before = previous_good_run(out)
    signal_during_epoch(monkeypatch, signal.SIGHUP)
    done = run_here("--data", synthetic_npz, "--epochs", "3", "--output-dir", out)
    assert done.returncode == 130 and done.stderr.strip() == f"Interrupted: nothing was saved; {out} is as it was."
    assert "Epoch 1/3: " in done.stdout and "Epoch 3/3: " not in done.stdout  # it came during epoch 2
    assert snapshot(out) == before


def lock_held_elsewhere(lock: Path) -> subprocess.Popen:
    """Another process holding the lock on `lock`, as a run on another computer sharing the folder
    does; it lets go when its stdin is closed."""
    code = ("import fcntl, sys\n"
            "lock = open(sys.argv[1], 'a')\n"
            "fcntl.flock(lock, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_staging_folder_is_removed_when_its_lock_is_free_and_never_while_it_is_held(tmp_path):
    out = tmp_path / "out"
    held, free, unlocked, old = (out / f".train-{pid}-{name}" for pid, name in (
        (999_999_999, "held"),  # a live run elsewhere: its process id means nothing here
        (os.getpid(), "free"),  # a run killed outright, whose process id is now another process's
        (1, "new"),  # a run this instant between making its folder and locking it ...
        (1, "old")))  # ... or one killed then
    for folder in (held, free, unlocked, old):
        folder.mkdir(parents=True)
        (folder / train.MODEL_FILE).write_text("half written")
    (free / train.STAGING_LOCK).write_text("")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    holder = lock_held_elsewhere(held / train.STAGING_LOCK)
    try:
        with train.Staging(out) as staging:  # a run starts: it cleans up first
            train.remove_stale_staging(out)  # and so does another one, while the first runs
            assert set(out.glob(".train-*")) == {held, unlocked, staging.path}
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_tensorboard_logs_go_to_a_new_run_folder_keeping_the_earlier_runs_and_replacing_a_better_model_is_said(
        synthetic_npz, tmp_path, no_learning):
    out = tmp_path / "out"  # one run shows both: each costs a training run
    previous_good_run(out)
    (out / train.METRICS_FILE).write_text(json.dumps({"test_accuracy": 1.0}))
    (out / train.TENSORBOARD_DIR / "run-earlier").mkdir(parents=True)
    (out / train.TENSORBOARD_DIR / "run-earlier" / "events").write_text("earlier run")
    done = run_here("--data", synthetic_npz, "--epochs", "1", "--output-dir", out, "--tensorboard")
    assert done.returncode == 0  # a model that learned nothing: poorer than the earlier one
    new = [run for run in (out / train.TENSORBOARD_DIR).iterdir() if run.name != "run-earlier"]
    assert len(new) == 1 and new[0].name.startswith("run-")
    assert (out / "logs/run-earlier/events").read_text() == "earlier run"
    events = list(new[0].rglob("events.out.tfevents.*"))
    assert events and all(event.stat().st_size > 0 for event in events)
    last = done.stdout.splitlines()[-1]
    assert last.startswith("Note: the model.h5 this replaced was more accurate on the test set (100.00% against ")


def test_a_file_named_like_the_tensorboard_folder_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / train.TENSORBOARD_DIR).write_text("my notes")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--output-dir", str(tmp_path), "--tensorboard"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"error: argument --tensorboard: {tmp_path / 'logs'} is not a folder; move "
                                       "it away, or choose another --output-dir (python train.py --help lists the options)\n")
    assert (tmp_path / train.TENSORBOARD_DIR).read_text() == "my notes"


def test_a_folder_named_like_an_output_is_never_deleted(tmp_path, capsys):
    (tmp_path / "model.h5").mkdir()
    (tmp_path / "model.h5" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--output-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'model.h5'} is not a file" in capsys.readouterr().err
    assert (tmp_path / "model.h5" / "notes.txt").read_text() == "mine"


def test_an_interrupted_run_removes_every_folder_it_created(synthetic_npz, tmp_path, monkeypatch, no_learning):
    top = tmp_path / "nest"
    signal_during_epoch(monkeypatch, signal.SIGTERM)
    done = run_here("--data", synthetic_npz, "--epochs", "3", "--output-dir", top / "a" / "b")
    assert done.returncode == 130 and not top.exists()


def test_a_full_disk_while_hdf5_writes_is_one_line(synthetic_npz, tmp_path, monkeypatch, no_learning):
    def full(*args):
        raise OSError("Unable to synchronously create dataset (file write failed: time = Wed Nov 25, "
                      "filename = 'model.h5', file descriptor = 4, errno = 28, error message = "
                      "'No space left on device', buf = 0x5, total write size = 512)")

    monkeypatch.setattr(train, "save_model", full)
    out = tmp_path / "out"
    before = previous_good_run(out)
    done = quick_run(synthetic_npz, out)
    assert done.returncode == 1
    assert done.stderr == (f"error: could not write the outputs to {out}: the disk is full; "
                                       "the previous outputs are as they were\n")
    assert snapshot(out) == before


@pytest.mark.parametrize("program, argv, message", [
    ("train", ["--model", "m.h5"], "unrecognized arguments: --model m.h5"),
    ("predict", ["a.png", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ("serve", ["--data", "x.npz"], "unrecognized arguments: --data x.npz"),
    ("train", ["--epoch", "3"], "unrecognized arguments: --epoch 3"),
])
def test_each_program_takes_only_its_own_options(program, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(program).parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {message} (python {program}.py --help lists the options)\n"


@pytest.mark.parametrize("argv, command", [
    (["--predict", "a.png", "--model", "m.h5"], "--predict is a program of its own now: python predict.py IMAGE..."),
    (["--epochs", "3", "--serve=yes"], "--serve is a program of its own now: python serve.py"),
])
def test_an_old_command_line_with_predict_or_serve_is_told_the_new_command(argv, command, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err == f"error: {command}\n"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir() or p, "a folder, not a model file"),
    (lambda p: p, "no such model file"),
])
def test_a_model_path_that_is_not_a_model_file_is_said_so(make, message, tmp_path):
    with pytest.raises(predict.ModelError, match=message):
        predict.onnx_model_path(make(tmp_path / "model.h5"))


def test_an_onnx_model_of_another_shape_is_refused_in_words(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Flatten", ["image"], ["flat"])], "flat",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28])],
                              [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", 784])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), tmp_path / "flat.onnx")
    with pytest.raises(predict.ModelError) as refused:
        predict.Recognizer(tmp_path / "flat.onnx")
    assert str(refused.value) == (f"{tmp_path / 'flat.onnx'}: this model takes Nx28x28 inputs and gives Nx784; "
                                  "expected 28x28 images in and 10 digit probabilities out")


def test_data_that_is_not_a_regular_file_is_said_so(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        with pytest.raises(train.DataError, match="not a regular file or folder"):
            train.load_mnist(path)


def test_a_huge_picture_is_refused_in_one_line_without_pillows_warning(tmp_path, recwarn):
    Image.new("1", (16000, 16000)).save(tmp_path / "huge.png")
    with pytest.raises(predict.PictureError, match=r"too large to read safely \(16000x16000 pixels; at most 60 megapixels\)"):
        predict.load_picture(tmp_path / "huge.png")
    assert not recwarn.list


@pytest.mark.parametrize("total, fraction, kept", [(60_000, 1 / 3, 40_000), (59_999, 0.2, 47_999), (60_000, 0.2, 48_000)])
def test_the_validation_split_is_exactly_keras(total, fraction, kept):
    labels = np.zeros(total, np.uint8)
    mnist = train.Mnist(np.zeros((total, 28, 28), np.uint8), labels, np.zeros((1, 28, 28), np.uint8), labels[:1], "x")
    assert len(train.split_validation(mnist, fraction).x_train) == kept


def test_the_report_speaks_in_words_and_percent(capsys):
    labels = np.array([0, 0, 1])
    probabilities = np.eye(10)[[0, 1, 1]]  # one 0 read as 1; no 2s to count at all
    history = {"accuracy": [0.5], "val_accuracy": [0.5]}
    train.print_results(history, train.evaluation_report(probabilities, labels))
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "Most confused: 0 -> 1: 1 time"
    assert out[6].split() == ["2", "n/a", "n/a", "0"]


def test_the_history_figure_of_one_epoch_is_ticked_in_whole_epochs_and_percent():
    figure = train.history_figure({"loss": [0.3], "val_loss": [0.2], "accuracy": [0.9], "val_accuracy": [0.95]})
    loss, accuracy = figure.axes
    assert loss.get_xlim() == (0.5, 1.5) and list(loss.get_xticks()[(loss.get_xticks() >= 0.5) & (loss.get_xticks() <= 1.5)]) == [1]
    assert accuracy.get_ylabel() == "accuracy (%)" and accuracy.lines[0].get_ydata()[0] == pytest.approx(90)


def test_on_a_terminal_the_epoch_line_is_rewritten_in_words(synthetic_npz, tmp_path, no_learning):
    leader, follower = pty.openpty()
    shown = []

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed
                break
            if not chunk:
                break
            shown.append(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    with open(follower, "w") as terminal:
        done = run_here("--data", synthetic_npz, "--epochs", "2", "--output-dir", tmp_path, terminal=terminal)
    reader.join(timeout=30)
    os.close(leader)
    text = b"".join(shown).decode()
    assert done.returncode == 0, done.stderr
    assert "\r\x1b[KEpoch 1/2: loss " in text and "\r\x1b[KEpoch 2/2: loss " in text
    assert "val_accuracy" not in text and "ETA" not in text


def test_a_batch_larger_than_the_training_set_is_one_line(tmp_path):
    data = tmp_path / "small.npz"
    np.savez(data, **synthetic_mnist(n_train=50, n_test=10))
    done = quick_run(data, tmp_path / "out", "--batch-size", "64")
    assert done.returncode == 1
    assert done.stderr == (f"error: {data}: fewer training images (40, after holding out the validation "
                                       "images) than one batch (--batch-size 64)\n")


def test_a_failed_download_points_to_data(monkeypatch):
    keras = pytest.importorskip("keras")

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(train.DataError, match=r"^could not download MNIST \(URL fetch failure .*\); with no network, "
                                              r"pass a local copy with --data PATH"):
        train.load_mnist(None)


def test_the_diagram_shows_activations_and_what_is_trainable(tmp_path):
    keras = pytest.importorskip("keras")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed, so no diagram is drawn")
    model = train.build_model()
    train.draw_architecture(model, tmp_path / "diagram.png")
    keras.utils.plot_model(model, to_file=str(tmp_path / "plain.png"), show_shapes=True, show_layer_names=True)
    with Image.open(tmp_path / "diagram.png") as diagram, Image.open(tmp_path / "plain.png") as plain:
        assert diagram.format == "PNG" and diagram.height >= plain.height
        assert diagram.width > plain.width + 100  # two more columns: the activation, and trainable or not


def failing_graphviz(folder: Path) -> Path:
    """A `dot` that runs but cannot write PNG, as a Graphviz built without its PNG plugin."""
    folder.mkdir()
    dot = folder / "dot"
    dot.write_text("#!/bin/sh\n"
                   "case \"$*\" in *-Tpng*) echo 'Format: \"png\" not recognized. Use one of: ps' >&2; exit 1;; esac\n"
                   "cat > /dev/null; echo '%!PS'\n")
    dot.chmod(0o755)
    return folder


def test_a_graphviz_that_fails_is_one_warning_and_no_diagram(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pydot")
    monkeypatch.setenv("PATH", f"{failing_graphviz(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    train.draw_architecture(train.build_model(), tmp_path / "diagram.png")
    printed = capsys.readouterr()
    assert printed.out == ""  # not pydot's dump of dot's output
    assert printed.err.startswith("warning: diagram.png was not drawn: ") and printed.err.count("\n") == 1
    assert "returned code: 1" in printed.err
    assert not (tmp_path / "diagram.png").exists()


def test_figures_this_run_did_not_make_go_with_the_earlier_set(tmp_path, capsys):
    out = tmp_path / "out"
    previous_good_run(out)
    publish_new_outputs(out, without={train.DIAGRAM_FILE, train.CONFUSION_FIGURE})  # no Graphviz; one that failed
    assert snapshot(out) == {name: f"new {name}".encode() for name in OUTPUTS - {train.DIAGRAM_FILE,
                                                                                   train.CONFUSION_FIGURE}}
    assert capsys.readouterr().err.splitlines() == [
        "warning: the earlier model_architecture.png was removed, as this run did not make one: the outputs are all one run's",
        "warning: the earlier confusion_matrix.png was removed, as this run did not make one: the outputs are all one run's"]


def test_a_figure_that_fails_half_drawn_is_not_kept(tmp_path, monkeypatch, capsys):
    def half_drawn(*args):
        args[-1].write_bytes(b"\x89PNG half")
        raise RuntimeError("the renderer ran out of memory")

    for plot in ("plot_history", "plot_confusion", "plot_mistakes"):
        monkeypatch.setattr(train, plot, half_drawn)
    train.draw_figures(tmp_path, {}, {"confusion_matrix": []}, np.zeros((1, 28, 28)), np.zeros(1), np.zeros((1, 10)), 1.0)
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err == "".join(f"warning: {name} was not drawn: the renderer ran out of memory\n"
                                              for name in FIGURES)
