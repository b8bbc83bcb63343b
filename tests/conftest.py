"""Shared helpers: synthetic MNIST-format data, and running train.py, predict.py and serve.py as a user would."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "train.py"
PREDICT = ROOT / "predict.py"
SERVE = ROOT / "serve.py"
sys.path.insert(0, str(ROOT))


# The files whose tests take longest, longest first (test_browser.py goes with test_serve.py, see
# SAME_WORKER), in the order pytest-xdist's workers start them, so that the two workers finish together.
SLOWEST_FIRST = ("test_serve.py", "test_browser.py", "test_edges_processes.py", "test_training.py",
                 "test_predict.py", "test_edges.py", "test_pen_pictures.py", "test_training_recipe.py")
# Files that share a session fixture too costly to make on both workers (the server: a process
# that starts TensorFlow) run on one worker, as if they were one file.
SAME_WORKER = {"test_browser.py": "test_serve.py"}


def pytest_configure(config):
    # Keras's own NumPy 2 deprecation notice, raised inside Keras when it predicts: not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (-n 2): each file's tests to one worker, so that what they share (a smoke
    run, pen photos, a browser, a server) is made once; the files in the order collected."""
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            name = scope.rpartition("/")[2]
            return scope.removesuffix(name) + SAME_WORKER[name] if name in SAME_WORKER else scope

    config.option.loadscopereorder = False  # xdist would put the files with the most tests first
    return FileScheduling(config, log)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return SLOWEST_FIRST.index(item.path.name) if item.path.name in SLOWEST_FIRST else len(SLOWEST_FIRST)
    items.sort(key=rank)  # stable: within a file, and for the other files, the order stays


def synthetic_mnist(n_train: int = 1200, n_test: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped data a small network learns in one epoch: digit k is a bright block in cell k."""
    rng = np.random.default_rng(seed)

    def images_for(labels: np.ndarray) -> np.ndarray:
        images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            images[i, 2 + 8 * row: 8 + 8 * row, 2 + 6 * col: 7 + 6 * col] = 255
        return images

    y_train = rng.integers(0, 10, n_train).astype(np.uint8)
    y_test = rng.integers(0, 10, n_test).astype(np.uint8)
    return {"x_train": images_for(y_train), "y_train": y_train,
            "x_test": images_for(y_test), "y_test": y_test}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        import gzip
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.fixture(scope="session")
def synthetic_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synthetic_mnist.npz"
    np.savez_compressed(path, **synthetic_mnist())
    return path


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    value = os.environ.get("MNIST_NPZ")
    if not value or not Path(value).is_file():
        pytest.skip("real MNIST not available: set MNIST_NPZ to a Keras-format mnist.npz to run this")
    return Path(value)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synthetic_npz) -> tuple[Ran, Path]:
    """One epoch of training, shared: on real MNIST when MNIST_NPZ is set, else on synthetic data
    (then the model is good for file handling only). Its output, and the folder it saved in.

    Made once for the whole run: with pytest-xdist's workers, the first to need it trains and
    the others wait for it and read it (the workers share the parent of their temporary folders).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out, record = shared / "trained", shared / "trained.json"
    with open(shared / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            real = os.environ.get("MNIST_NPZ")
            data = real if real and Path(real).is_file() else synthetic_npz
            record.write_text(json.dumps(run_here("--data", data, "--epochs", "1", "--output-dir", out)._asdict()))
    done = Ran(**json.loads(record.read_text()))
    assert done.returncode == 0, done.stderr
    return done, out


@pytest.fixture(scope="session")
def model_file(trained) -> Path:
    return trained[1] / "model.h5"


def keras_answers(model_h5: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    """What the Keras model in `model_h5` answers for `images` (N, 28, 28), its own probabilities,
    and the temperature train.py saved with it: what the model.onnx beside it must answer."""
    import h5py
    import keras

    import train

    model = keras.models.load_model(model_h5, compile=False)
    with h5py.File(model_h5, "r") as file:
        temperature = float(file.attrs[train.TEMPERATURE_ATTRIBUTE])
    return model.predict(images, verbose=0, batch_size=1024), temperature


@pytest.fixture
def placeholder_figures(monkeypatch) -> None:
    """For the tests about anything but the figures: they are placeholders, which spares the
    second that drawing them takes (tests/test_report.py tests the figures)."""
    import train

    def placeholders(folder: Path, *results) -> None:
        for name in (train.HISTORY_FIGURE, train.CONFUSION_FIGURE, train.MISTAKES_FIGURE):
            (folder / name).write_bytes(b"\x89PNG placeholder")

    monkeypatch.setattr(train, "draw_figures", placeholders)


@pytest.fixture
def no_learning(monkeypatch, placeholder_figures) -> None:
    """For the tests of what a run does around its learning: its epochs learn nothing (and its
    figures are placeholders), which spares the seconds that compiling an epoch takes; what these
    tests are about, main()'s staging, signals, messages and move, is the real thing."""
    import train

    monkeypatch.setattr(train, "make_epoch_trainer", lambda model, images, labels: lambda order: (0.0, 0.0))


class Server(NamedTuple):
    process: subprocess.Popen
    url: str
    port: int
    log: list[str]  # what it has written on stderr so far, read as it comes so that it never blocks on a full pipe
    reader: threading.Thread


def start_server(*args: str | Path) -> Server:
    """serve.py in a fresh process on a free port, returned once it says where it listens."""
    process = subprocess.Popen([sys.executable, str(SERVE), "--port", "0", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               start_new_session=True)  # a process group of its own, as in a terminal
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stderr), daemon=True)
    reader.start()
    line = process.stdout.readline()
    match = re.match(r"Draw digits at (http://[^/]+:(\d+)/) \(Ctrl-C to stop\)$", line.strip())
    if not match:
        process.kill()
        reader.join(timeout=30)
        raise AssertionError(f"the server did not start: {line!r} {''.join(log)}")
    return Server(process, match.group(1), int(match.group(2)), log, reader)


def wait_until_answering(server: Server, seconds: float = 120) -> None:
    """The address is printed before the model is loaded: wait until the server answers."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=seconds)
    connection.request("GET", "/")
    assert connection.getresponse().status == 200
    connection.close()


def helper_pids(pid: int) -> list[int]:
    """The serving processes a server started besides itself (Linux's /proc tells)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()]


def helper_processes(server: Server) -> int:
    return len(helper_pids(server.process.pid))


def stop_server(server: Server, how: int = signal.SIGINT) -> tuple[int, str]:
    """Stop the server with the signal `how`, sent as a terminal sends Ctrl-C (to the whole process
    group, helpers included) or as `kill` sends the others (to the process); its exit code and
    everything it wrote on stderr."""
    if how == signal.SIGINT:
        os.killpg(server.process.pid, how)
    else:
        server.process.send_signal(how)
    server.process.wait(timeout=30)
    server.reader.join(timeout=30)
    return server.process.returncode, "".join(server.log)


@pytest.fixture(scope="session")
def server(model_file):
    """One server for the tests that only send it requests: a single process, as every process
    answers alike (the tests that start and stop servers run the default, several)."""
    running = start_server("--model", model_file, "--processes", "1")
    wait_until_answering(running)
    yield running
    if running.process.poll() is None:
        stop_server(running, signal.SIGTERM)


def run_program(program: Path, *args: str | Path, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """One of the programs in a fresh process, output captured (not a terminal: one line per epoch)."""
    return subprocess.run(
        [sys.executable, str(program), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def run_train(*args: str | Path, **options) -> subprocess.CompletedProcess:
    return run_program(TRAIN, *args, **options)


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_here(*args: str | Path, env: dict[str, str] | None = None, terminal=None, program: str = "train") -> Ran:
    """The program's main() in this process, output captured (or written to `terminal`): what
    run_program does, without the seconds a fresh process takes to start TensorFlow. For what only
    a process of its own shows (a signal from outside, a closed pipe, TensorFlow's start-up
    messages), use run_program."""
    import importlib

    import train

    main = importlib.import_module(program).main
    stdout, stderr = terminal or io.StringIO(), io.StringIO()
    handlers = {number: signal.getsignal(number) for number in train.STOP_SIGNALS if number is not None}
    saved_env = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([str(arg) for arg in args])
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return Ran(code, "" if terminal else stdout.getvalue(), stderr.getvalue())


def predict_here(*args: str | Path, **options) -> Ran:
    """predict.py's main() in this process (see run_here)."""
    return run_here(*args, program="predict", **options)


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
