"""The edges only a process of its own shows: a closed pipe, a terminal's Ctrl-C to the whole
process group, the stderr forwarder, TensorFlow's start-up messages, a usage error before any import."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import predict
import train
from conftest import PREDICT, ROOT, TRAIN, run_train
from test_training import OUTPUTS, previous_good_run, snapshot


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


def test_a_usage_error_is_one_line_with_a_pointer_to_help():
    done = run_train("--epochs", "0")
    assert done.returncode == 2
    assert done.stderr == "error: argument --epochs: must be at least 1, got 0 (python train.py --help lists the options)\n"


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
    done = subprocess.run([sys.executable, str(PREDICT), "pictures", "--model", str(model_file),
                           "--save-preprocessed", "seen"],
                          cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.stderr.splitlines() == [f"{Path('pictures', 'notes.txt')}: skipped: not a picture",
                                        f"{Path('pictures', 'blank.png')}: error: {predict.BLANK_PICTURE}"]
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


def filtering(code: str) -> tuple[subprocess.Popen, int]:
    """`code` started alone, once it says its stderr is being filtered; the process and its forwarder's pid."""
    run = started_alone(code)
    assert run.stdout.readline() == "filtering\n"
    return run, forwarder_of(run.pid)


def test_if_the_stderr_forwarder_is_killed_stderr_still_reaches_the_terminal():
    code = ("import os, sys, train\n"
            "with train.tensorflow_chatter_filtered():\n"
            "    print('filtering', flush=True)\n"
            "    sys.stdin.readline()  # the test kills the forwarder meanwhile\n"
            "    train.warn('Graphviz not found')\n"
            "    os.write(2, b'I0000 00:00 chatter\\n')\n"
            "    print('still here', file=sys.stderr)\n")
    run, forwarder = filtering(code)
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
    run, forwarder = filtering(code)
    run.stderr.close()  # writing to a closed terminal fails, as to a pipe with no reader
    run.stdin.write("Graphviz not found\n")
    run.stdin.flush()
    assert run.stdout.readline() == "written\n"
    give_up = time.monotonic() + 0.5
    while alive(forwarder) and time.monotonic() < give_up:  # a forwarder that the failed write stops has stopped
        time.sleep(0.01)
    out, _ = run.communicate("a figure failed\n", timeout=30)
    assert run.returncode == 0 and out == "written\ndone\n"
