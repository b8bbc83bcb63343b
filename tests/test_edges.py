"""The promises at the edges: signals, pipes, re-runs, one-line messages, words and numbers."""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train
from conftest import ROOT, TRAIN, Ran, run_here, run_train, synthetic_mnist
from test_training import OUTPUTS, previous_good_run, signal_during_epoch, snapshot


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


def replace_failing(at: int):
    """os.replace, whose `at`-th move fails as a locked file does: nothing moves."""
    real, calls = os.replace, []

    def replace(source, target):
        calls.append(target)
        if len(calls) == at:
            raise PermissionError(13, "Permission denied")  # a history.csv open in a spreadsheet
        real(source, target)
    return replace


def test_a_kill_during_the_final_move_waits_until_every_output_is_new(synthetic_npz, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = previous_good_run(out)
    monkeypatch.setattr(train.os, "replace", replace_then(lambda: os.kill(os.getpid(), signal.SIGTERM), after=3))
    done = quick_run(synthetic_npz, out)
    assert done.returncode == train.EXIT_INTERRUPTED  # the third move of seven and more
    assert done.stderr.strip() == f"Interrupted after every output was saved in {out}."
    after = snapshot(out)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)


def test_an_error_part_way_through_the_move_puts_every_old_output_back(synthetic_npz, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = previous_good_run(out)

    monkeypatch.setattr(train.os, "replace", replace_failing(at=5))
    done = quick_run(synthetic_npz, out)
    assert done.returncode == 1
    assert done.stderr == (f"error: could not write the outputs to {out}: Permission denied; "
                                       "the previous outputs are as they were\n")
    assert snapshot(out) == before


def test_a_closed_terminal_stops_cleanly_like_ctrl_c(synthetic_npz, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = previous_good_run(out)
    signal_during_epoch(monkeypatch, signal.SIGHUP)
    done = run_here("--data", synthetic_npz, "--epochs", "3", "--output-dir", out)
    assert done.returncode == 130 and done.stderr.strip() == f"Interrupted: nothing was saved; {out} is as it was."
    assert "Epoch 1/3: " in done.stdout and "Epoch 3/3: " not in done.stdout  # it came during epoch 2
    assert snapshot(out) == before


def test_staging_folders_of_dead_runs_are_removed_and_a_living_runs_kept(synthetic_npz, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name in (f".train-{dead.stdout.strip()}-abc", ".train-k2j3h4", f".train-{os.getpid()}-xyz"):
        (out / name).mkdir()
        (out / name / "model.h5").write_text("half written")
    assert quick_run(synthetic_npz, out).returncode == 0
    assert sorted(p.name for p in out.glob(".train-*")) == [f".train-{os.getpid()}-xyz"]


def test_tensorboard_logs_go_to_a_new_run_folder_keeping_the_earlier_runs(synthetic_npz, tmp_path):
    out = tmp_path / "out"
    (out / train.TENSORBOARD_DIR / "run-earlier").mkdir(parents=True)
    (out / train.TENSORBOARD_DIR / "run-earlier" / "events").write_text("earlier run")
    assert quick_run(synthetic_npz, out, "--tensorboard").returncode == 0
    new = [run for run in (out / train.TENSORBOARD_DIR).iterdir() if run.name != "run-earlier"]
    assert len(new) == 1 and new[0].name.startswith("run-")
    assert (out / "logs/run-earlier/events").read_text() == "earlier run"
    events = list(new[0].rglob("events.out.tfevents.*"))
    assert events and all(event.stat().st_size > 0 for event in events)


def test_a_folder_named_like_an_output_is_never_deleted(tmp_path, capsys):
    (tmp_path / "model.h5").mkdir()
    (tmp_path / "model.h5" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--output-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'model.h5'} is not a file" in capsys.readouterr().err
    assert (tmp_path / "model.h5" / "notes.txt").read_text() == "mine"


def test_replacing_a_more_accurate_model_is_said(synthetic_npz, tmp_path):
    out = tmp_path / "out"
    previous_good_run(out)
    (out / train.METRICS_FILE).write_text(json.dumps({"test_accuracy": 1.0}))
    done = run_here("--data", synthetic_npz, "--epochs", "1", "--batch-size", "480", "--output-dir", out)
    assert done.returncode == 0  # two steps: a poor model
    last = done.stdout.splitlines()[-1]
    assert last.startswith("Note: the model.h5 this replaced was more accurate on the test set (100.00% against ")


def test_an_interrupted_run_removes_every_folder_it_created(synthetic_npz, tmp_path, monkeypatch):
    top = tmp_path / "nest"
    signal_during_epoch(monkeypatch, signal.SIGTERM)
    done = run_here("--data", synthetic_npz, "--epochs", "3", "--output-dir", top / "a" / "b")
    assert done.returncode == 130 and not top.exists()


def test_a_closed_pipe_stops_the_printing_not_the_run(synthetic_npz, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(TRAIN), "--data", str(synthetic_npz), "--epochs", "1",
                                "--output-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()  # `| head -1`
    err = process.stderr.read().decode()
    process.wait(timeout=120)
    assert process.returncode == 0 and err == ""
    assert {p.name for p in out.iterdir()} >= OUTPUTS - {train.DIAGRAM_FILE}


def test_a_full_disk_while_hdf5_writes_is_one_line(synthetic_npz, tmp_path, monkeypatch):
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


def test_a_usage_error_is_one_line_with_a_pointer_to_help():
    done = run_train("--epochs", "0")
    assert done.returncode == 2
    assert done.stderr == "error: argument --epochs: must be at least 1, got 0 (python train.py --help lists the options)\n"


@pytest.mark.parametrize("argv, message", [
    (["--predict", "a.png", "--epochs", "3"], "argument --epochs: only when training"),
    (["--serve", "--data", "x.npz"], "argument --data: only when training"),
    (["--save-preprocessed", "seen"], "argument --save-preprocessed: only with --predict"),
    (["--format", "json"], "argument --format: only with --predict"),
    (["--model", "m.h5"], "argument --model: only with --predict or with --serve"),
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
])
def test_options_that_mean_nothing_in_the_mode_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_predict_does_not_need_a_writable_output_folder(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert train.parse_args(["--predict", "a.png", "--output-dir", str(a_file)]).mode == "predict"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir() or p, "a folder, not a model file"),
    (lambda p: p, "no such model file"),
])
def test_a_model_path_that_is_not_a_model_file_is_said_so(make, message, tmp_path):
    with pytest.raises(train.DataError, match=message):
        train.check_model_file(make(tmp_path / "model.h5"))


def test_an_hdf5_model_named_keras_is_said_so(model_file, tmp_path):
    renamed = tmp_path / "model.keras"
    renamed.write_bytes(model_file.read_bytes())
    with pytest.raises(train.DataError, match=r"an HDF5 model \(Keras's .h5 format\) named .keras; rename it"):
        train.load_trained_model(renamed)


def test_data_that_is_not_a_regular_file_is_said_so(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        with pytest.raises(train.DataError, match="not a regular file or folder"):
            train.load_mnist(path)


def test_a_huge_picture_is_refused_in_one_line_without_pillows_warning(tmp_path, recwarn):
    Image.new("1", (16000, 16000)).save(tmp_path / "huge.png")
    with pytest.raises(train.PictureError, match=r"too large to read safely \(16000x16000 pixels; at most 60 megapixels\)"):
        train.load_picture(tmp_path / "huge.png")
    assert not recwarn.list


def test_what_a_crashing_process_writes_to_stderr_still_arrives():
    code = ("import os, train\n"
            "with train.tensorflow_chatter_filtered():\n"
            "    os.write(2, b'I0000 00:00 chatter\\nlast words before the crash\\n')\n"
            "    os.abort()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr == "last words before the crash\n"


def test_tensorflows_own_messages_show_when_the_user_asks():
    # Without TF_CPP_MIN_LOG_LEVEL=0 they do not: test_training's smoke run has an empty stderr.
    code = "import train\nwith train.tensorflow_chatter_filtered():\n    train.start_tensorflow(1)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=120)
    assert done.returncode == 0
    assert "I0000" in done.stderr


def test_a_re_py_in_the_current_folder_breaks_neither_the_warnings_nor_the_run(model_file, tmp_path):
    for shadow in ("re.py", "enum.py"):  # a learner's own files, named like Python's modules
        (tmp_path / shadow).write_text("raise SystemExit('this is not the standard module')\n")
    (tmp_path / "pictures").mkdir()
    Image.new("L", (100, 100), 255).save(tmp_path / "pictures" / "blank.png")
    Image.fromarray(255 - np.eye(100, dtype=np.uint8) * 255).save(tmp_path / "pictures" / "one.png")
    (tmp_path / "pictures" / "notes.txt").write_text("not a picture")
    done = subprocess.run([sys.executable, str(TRAIN), "--predict", "pictures", "--model", str(model_file),
                           "--save-preprocessed", "seen"],
                          cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.stderr.splitlines() == [f"{Path('pictures', 'notes.txt')}: skipped: not a picture",
                                        f"{Path('pictures', 'blank.png')}: error: {train.BLANK_PICTURE}"]
    assert done.returncode == 1 and done.stdout.startswith(f"{Path('pictures', 'one.png')}: ")
    assert (tmp_path / "seen" / "one.png").is_file()


def started_alone(code: str, *args: str | Path) -> subprocess.Popen:
    """`python -c code args` in a session of its own, as a terminal starts a command: a signal to
    its process group reaches it and every process it started there."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def forwarder_of(pid: int) -> int:
    """The stderr forwarder, the one process that the process `pid` has started."""
    [child] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


def alive(pid: int) -> bool:
    """Whether the process `pid` still runs: not ended, and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_in_a_terminal_is_reported_and_loses_nothing(synthetic_npz, tmp_path):
    out = tmp_path / "out"
    before = previous_good_run(out)
    code = ("import sys, time, train\n"
            "def start_tensorflow(seed):  # where this run is when Ctrl-C comes\n"
            "    try:\n"
            "        print('started', flush=True)\n"
            "        time.sleep(60)\n"
            "    except KeyboardInterrupt:  # a clean-up that has something to say, once the signal has\n"
            "        print('interrupted', flush=True)  # reached the forwarder too (the test says when)\n"
            "        sys.stdin.readline()\n"
            "        train.warn('stopping')\n"
            "        raise\n"
            "train.start_tensorflow = start_tensorflow\n"
            "sys.exit(train.main(sys.argv[1:]))\n")
    run = started_alone(code, "--data", synthetic_npz, "--epochs", "1", "--output-dir", out, "--quiet")
    assert run.stdout.readline() == "started\n"
    forwarder = forwarder_of(run.pid)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does: to the whole foreground process group
    assert run.stdout.readline() == "interrupted\n"
    give_up = time.monotonic() + 0.5
    while alive(forwarder) and time.monotonic() < give_up:  # a forwarder the signal stops has stopped by then
        time.sleep(0.01)
    _, err = run.communicate("go on\n", timeout=30)
    assert run.returncode == train.EXIT_INTERRUPTED
    assert err == f"warning: stopping\n\nInterrupted: nothing was saved; {out} is as it was.\n"
    assert snapshot(out) == before


def test_if_the_stderr_forwarder_is_killed_stderr_still_reaches_the_terminal():
    code = ("import os, sys, train\n"
            "with train.tensorflow_chatter_filtered():\n"
            "    print('filtering', flush=True)\n"
            "    sys.stdin.readline()  # the test kills the forwarder meanwhile\n"
            "    train.warn('Graphviz not found')\n"
            "    os.write(2, b'I0000 00:00 chatter\\n')\n"
            "    print('still here', file=sys.stderr)\n")
    run = started_alone(code)
    assert run.stdout.readline() == "filtering\n"
    forwarder = forwarder_of(run.pid)
    os.kill(forwarder, signal.SIGKILL)
    while alive(forwarder):
        time.sleep(0.01)
    _, err = run.communicate("go on\n", timeout=30)
    assert run.returncode == 0
    assert err == "warning: Graphviz not found\nstill here\n"


def test_when_the_terminal_is_gone_writing_to_stderr_still_does_not_fail_the_run():
    code = ("import sys, train\n"
            "with train.tensorflow_chatter_filtered():\n"
            "    print('filtering', flush=True)\n"
            "    for line in sys.stdin:  # the test closes the terminal before the first line\n"
            "        train.warn(line.strip())\n"
            "        print('written', flush=True)\n"
            "print('done', flush=True)\n")
    run = started_alone(code)
    assert run.stdout.readline() == "filtering\n"
    forwarder = forwarder_of(run.pid)
    run.stderr.close()  # writing to a closed terminal fails, as to a pipe with no reader
    run.stdin.write("Graphviz not found\n")
    run.stdin.flush()
    assert run.stdout.readline() == "written\n"
    give_up = time.monotonic() + 0.5
    while alive(forwarder) and time.monotonic() < give_up:  # a forwarder that the failed write stops has stopped
        time.sleep(0.01)
    out, _ = run.communicate("a figure failed\n", timeout=30)
    assert run.returncode == 0 and out == "written\ndone\n"


@pytest.mark.parametrize("total, fraction, kept", [(60_000, 1 / 3, 40_000), (59_999, 0.2, 47_999), (60_000, 0.2, 48_000)])
def test_the_validation_split_is_exactly_keras(total, fraction, kept):
    labels = np.zeros(total, np.uint8)
    mnist = train.Mnist(np.zeros((total, 28, 28), np.uint8), labels, np.zeros((1, 28, 28), np.uint8), labels[:1], "x")
    assert len(train.split_validation(mnist, fraction).x_train) == kept


def test_the_report_speaks_in_words_and_percent(capsys):
    labels = np.array([0, 0, 1])
    probabilities = np.eye(10)[[0, 1, 1]]  # one 0 read as 1; no 2s to count at all
    history = {"accuracy": [0.5], "val_accuracy": [0.5]}
    train.print_results(history, train.test_report(probabilities, labels))
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "Most confused: 0 -> 1: 1 time"
    assert out[6].split() == ["2", "n/a", "n/a", "0"]


def test_the_history_figure_of_one_epoch_is_ticked_in_whole_epochs_and_percent():
    figure = train.history_figure({"loss": [0.3], "val_loss": [0.2], "accuracy": [0.9], "val_accuracy": [0.95]})
    loss, accuracy = figure.axes
    assert loss.get_xlim() == (0.5, 1.5) and list(loss.get_xticks()[(loss.get_xticks() >= 0.5) & (loss.get_xticks() <= 1.5)]) == [1]
    assert accuracy.get_ylabel() == "accuracy (%)" and accuracy.lines[0].get_ydata()[0] == pytest.approx(90)


def test_on_a_terminal_the_epoch_line_is_rewritten_in_words(synthetic_npz, tmp_path):
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


def test_the_diagram_shows_activations_and_what_is_trainable(monkeypatch, tmp_path):
    keras = pytest.importorskip("keras")
    asked = {}
    monkeypatch.setattr(train.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(keras.utils, "plot_model", lambda model, **options: asked.update(options))
    train.draw_architecture(train.build_model(), tmp_path / "diagram.png")
    assert asked["show_layer_activations"] and asked["show_trainable"] and asked["show_shapes"]
