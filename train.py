#!/usr/bin/env python3
"""Train a small dense network to recognise handwritten digits (MNIST).

    python train.py                        # download MNIST once, train, evaluate, save
    python train.py --data mnist.npz       # use a local copy instead of downloading
    python train.py --help                 # every option

The run loads MNIST, scales the pixels to [0, 1], holds out the last 20% of the
training images for validation, trains Flatten -> Dense(128, relu) ->
Dense(10, softmax) with Adam, prints the test accuracy, and writes
model.h5, model_architecture.png and metrics.json to the output folder.
predict.py reads your own pictures of digits with the model; serve.py lets you draw them.

TensorFlow is imported only after the options and the data have been checked,
so a mistake is reported at once instead of after several seconds of start-up.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gzip
import importlib.util
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

try:
    import fcntl  # file locks: how a run tells that another run's staging folder is in use
except ImportError:  # Windows, where a file held open cannot be deleted instead
    fcntl = None

# -----------------------------------------------------------------------------
# Defaults: every one of them can be changed on the command line.
# -----------------------------------------------------------------------------
EPOCHS = 10
BATCH_SIZE = 32
VALIDATION_SPLIT = 0.2
LEARNING_RATE = 1e-3  # Adam's own default, and the constant rate of the plain recipe
PEAK_LEARNING_RATE = 2e-3  # where the cosine starts: its mean over the run is LEARNING_RATE
SEED = 42
OUTPUT_DIR = "."

HIDDEN_UNITS = 128
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
LR_SCHEDULE = "cosine"

MODEL_FILE = "model.h5"
ONNX_FILE = "model.onnx"  # the same model for ONNX Runtime: what predict.py and serve.py run
DIAGRAM_FILE = "model_architecture.png"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")  # recorded per epoch
HISTORY_FIGURE = "training_history.png"
CONFUSION_FIGURE = "confusion_matrix.png"
MISTAKES_FIGURE = "misclassified.png"
TENSORBOARD_DIR = "logs"
OUTPUT_FILES = (MODEL_FILE, ONNX_FILE, DIAGRAM_FILE, METRICS_FILE, HISTORY_FILE, HISTORY_FIGURE, CONFUSION_FIGURE,
                MISTAKES_FIGURE)

TEMPERATURE_ATTRIBUTE = "confidence_temperature"  # in model.h5 (an attribute) and model.onnx (metadata): the calibration
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))  # all stop a run as Ctrl-C does

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own code
EXIT_INTERRUPTED = 130

# A log level the user set is kept, and TF_CPP_MIN_LOG_LEVEL=0 (every message) turns the filter
# of stderr off; otherwise TensorFlow logs warnings and errors only. Set before TensorFlow is imported.
ALL_TENSORFLOW_LOGS = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


class DataError(Exception):
    """The data is missing, unreadable or not MNIST-shaped; the message says which and why."""


class OutputError(Exception):
    """An output could not be written; the message names the folder and why."""


class Mnist(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


class Split(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# -----------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------
def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` (to `high`), or one line saying what is wrong."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:,}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, got {value}")
        return value
    return parse


def open_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with a pointer to --help, not the whole usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (python {self.prog} --help lists the options)\n")


MOVED_MODES = {"--predict": "python predict.py IMAGE...", "--serve": "python serve.py"}  # programs of their own now


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(
        prog="train.py",
        allow_abbrev=False,  # --epoch is a typo, not --epochs
        description="Train a digit classifier on MNIST and save it as model.h5 and model.onnx "
                    "(python predict.py reads your pictures with it, python serve.py lets you draw).")
    parser.add_argument("--data", type=Path, metavar="PATH",
                        help="local MNIST: a Keras-format mnist.npz, or a folder with the four "
                             "original IDX files (optionally .gz) (default: download with Keras)")
    parser.add_argument("--epochs", type=whole_number(1), default=EPOCHS, metavar="N",
                        help="passes over the training images (default: %(default)s)")
    parser.add_argument("--batch-size", type=whole_number(1), default=BATCH_SIZE, metavar="N",
                        help="images per training step (default: %(default)s)")
    parser.add_argument("--validation-split", type=open_fraction, default=VALIDATION_SPLIT, metavar="F",
                        help="fraction of the training images held out for validation, "
                             "the last ones (default: %(default)s)")
    parser.add_argument("--lr-schedule", choices=("cosine", "constant"), default=LR_SCHEDULE,
                        help="Adam's learning rate: cosine decay from 0.002 to 0 over the run, "
                             "or a constant 0.001 as in the plain recipe (default: %(default)s)")
    parser.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=SEED, metavar="N",
                        help="random seed: the same seed gives the same model on the same machine "
                             "(default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=Path(OUTPUT_DIR), metavar="DIR",
                        help="folder for the model, its diagram, figures and metrics; created if "
                             "missing (default: the current folder)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard logs to OUTPUT_DIR/logs")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the results, no training progress")
    for token in argv:
        option = token.split("=")[0]
        if option in MOVED_MODES:
            parser.exit(EXIT_USAGE, f"error: {option} is a program of its own now: {MOVED_MODES[option]}\n")
    args = parser.parse_args(argv)
    problem = output_dir_problem(args.output_dir)
    if problem:
        parser.error(f"argument --output-dir: {problem}")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        parser.error("argument --tensorboard: the tensorboard package is not installed "
                     "(pip install tensorboard)")
    logs = args.output_dir / TENSORBOARD_DIR
    if args.tensorboard and os.path.lexists(logs) and not logs.is_dir():  # never replace what the run did not make
        parser.error(f"argument --tensorboard: {logs} is not a folder; move it away, or choose another --output-dir")
    return args


def output_dir_problem(path: Path) -> str | None:
    """Say why outputs could not be written to `path`, before any time is spent training."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    for name in OUTPUT_FILES:  # never replace what the run did not make
        if (path / name).exists() and not (path / name).is_file():
            return f"{path / name} is not a file; move it away, or choose another --output-dir"
    return None


# -----------------------------------------------------------------------------
# Data
# -----------------------------------------------------------------------------
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


def load_mnist(data: Path | None) -> Mnist:
    """MNIST as uint8 arrays, checked to be MNIST-shaped, from `data` or from Keras's download."""
    if data is None:
        arrays, where = download_mnist(), {name: name for name in ARRAY_NAMES}
        source = "keras.datasets.mnist"
    elif data.is_dir():
        arrays, where = read_idx_folder(data)
        source = str(data)
    elif data.is_file():
        arrays, where = read_npz(data), {name: f"{data}: {name}" for name in ARRAY_NAMES}
        source = str(data)
    elif data.exists():
        raise DataError(f"{data}: not a regular file or folder")
    else:
        raise DataError(f"{data}: no such file or folder")
    check_mnist(arrays, where)
    return Mnist(**arrays, source=source)


DOWNLOAD_TIMEOUT_SECONDS = 30


def download_mnist() -> dict[str, np.ndarray]:
    """Keras's own copy of MNIST: downloaded on first use, then read from ~/.keras/datasets."""
    import socket

    import keras

    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # a silent firewall fails fast too
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # Keras raises a bare Exception for network failures
        raise DataError(
            f"could not download MNIST ({error}); with no network, pass a local copy "
            "with --data PATH (a Keras mnist.npz or a folder of the IDX files)"
        ) from None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (wrong format or truncated)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ARRAY_NAMES if name not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; "
                    f"an MNIST .npz holds {', '.join(ARRAY_NAMES)}"
                )
            return {name: archive[name] for name in ARRAY_NAMES}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: unreadable .npz archive ({error})") from None


IDX_FILES = {  # the names the original MNIST files are distributed under
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx_folder(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, where = {}, {}
    for name, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"{folder}: no {stem} or {stem}.gz (a folder needs all four MNIST IDX files)")
        arrays[name], where[name] = read_idx(path), str(path)
    return arrays, where


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (LeCun's MNIST format): a 4-byte magic number, big-endian sizes, then bytes."""
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: unreadable ({error})") from None
    if len(raw) == 0:
        raise DataError(f"{path}: file is empty")
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(f"{path}: holds {len(raw) - header} bytes of data, but its header "
                        f"{shape} says {expected} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def check_mnist(arrays: dict[str, np.ndarray], where: dict[str, str]) -> None:
    """Refuse anything that is not uint8 28x28 images with one 0-9 label each."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        at_images, at_labels = where[f"x_{split}"], where[f"y_{split}"]
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{at_images} has shape {images.shape}; expected (N, 28, 28) images")
        if images.dtype != np.uint8:
            raise DataError(f"{at_images} has {images.dtype} pixels; expected uint8 (0-255)")
        if len(images) == 0:
            raise DataError(f"{at_images} holds no images")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{at_labels} has shape {labels.shape} and type {labels.dtype}; "
                            "expected one integer label per image")
        if len(labels) != len(images):
            raise DataError(f"{at_images} has {len(images):,} images but {at_labels} "
                            f"has {len(labels):,} labels")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= NUM_CLASSES:
            raise DataError(f"{at_labels} has labels from {low} to {high}; expected digits 0-9")


def image_count(count: int, kind: str = "training") -> str:
    """`count` images in words: '1 training image', '48,000 training images'."""
    return f"{count:,} {kind} image{'' if count == 1 else 's'}"


def normalize(images: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1], made in one pass with no float64 copy."""
    return np.divide(images, np.float32(255), dtype=np.float32)


def split_validation(mnist: Mnist, fraction: float) -> Split:
    """Hold out the last `fraction` of the training images, exactly as Keras's validation_split does."""
    total = len(mnist.x_train)
    cut = int(np.floor(total * (1 - fraction)))  # Keras: int(num_samples * (1 - validation_split))
    if cut == 0 or cut == total:
        raise DataError(f"{mnist.source}: too few training images ({total:,}) to hold out "
                        f"{fraction:g} of them for validation")
    return Split(mnist.x_train[:cut], mnist.y_train[:cut], mnist.x_train[cut:], mnist.y_train[cut:],
                 mnist.x_test, mnist.y_test)


# -----------------------------------------------------------------------------
# TensorFlow set-up
# -----------------------------------------------------------------------------
# The forwarder of stderr: a separate process, so that what a dying process wrote still arrives.
# The signals that stop a run do not stop it: it ends when the run closes the pipe. When the real
# stderr is gone (a closed terminal), it goes on reading, so that a write to stderr never fails.
FORWARD_STDERR = """
import re, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
chatter, target = re.compile(sys.argv[1]), sys.stdout.buffer
for line in sys.stdin.buffer:
    if target and not chatter.search(line.decode(errors="replace")):
        try:
            target.write(line)
            target.flush()
        except OSError:
            target = None
"""

# Messages TensorFlow's C++ core prints to stderr whatever TF_CPP_MIN_LOG_LEVEL says (its
# logging is not set up when they are printed). Anything else still gets through.
TENSORFLOW_CHATTER = re.compile(
    r"^[IW]\d{4} "  # INFO and WARNING records from the C++ runtime
    r"|absl::InitializeLog\(\)"
    r"|cuInit|cuda drivers|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning"
    r"|^To enable the following instructions|rebuild TensorFlow with the appropriate"
    r"|NodeDef mentions attribute .* which is not in the op definition"
)


@contextlib.contextmanager
def tensorflow_chatter_filtered() -> Iterator[None]:
    """Pass stderr through a filter that drops TensorFlow's C++ chatter and keeps everything else.

    The C++ runtime writes straight to file descriptor 2, so the filter sits on the descriptor:
    a pipe, read line by line by a small separate process that forwards what is worth reading.
    Being a process of its own, it forwards what is still in the pipe even when this one dies
    (a fatal error, an abort, faulthandler's traceback), then ends. A user who set
    TF_CPP_MIN_LOG_LEVEL=0 asked for all of TensorFlow's messages: then nothing is filtered.

    Nothing in the user's folder or terminal stops it: it runs isolated (-I: a re.py in the
    current folder is not imported instead of Python's), in a session of its own (Ctrl-C and a
    closed terminal reach the run, not it), ignoring the signals that stop a run. Killed all the
    same, it is succeeded by a thread of this process, which holds a read end of the pipe too:
    a write to stderr never fails for want of a reader.
    """
    if ALL_TENSORFLOW_LOGS:
        yield
        return
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    forwarder = subprocess.Popen([sys.executable, "-I", "-S", "-c", FORWARD_STDERR, TENSORFLOW_CHATTER.pattern],
                                 stdin=read_end, stdout=real_stderr, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    os.dup2(write_end, 2)
    os.close(write_end)
    successor = threading.Thread(target=forward_after, args=(forwarder, read_end, real_stderr), daemon=True)
    successor.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last write end: the forwarder sees the end
        successor.join()
        os.close(real_stderr)


def forward_after(forwarder: subprocess.Popen, read_end: int, real_stderr: int) -> None:
    """When the forwarder has ended, forward what comes through the pipe until its end, as it would have.

    The forwarder ends at the pipe's end, leaving nothing to forward: this thread takes over
    only from a forwarder that was killed.
    """
    forwarder.wait()
    with open(read_end, "rb") as pipe, open(os.dup(real_stderr), "wb", buffering=0) as target:
        for line in pipe:
            if not TENSORFLOW_CHATTER.search(line.decode(errors="replace")):
                with contextlib.suppress(OSError):  # the real stderr gone too: keep the pipe drained
                    target.write(line)


def start_tensorflow(seed: int) -> None:
    """Import TensorFlow (through Keras) and make every random choice follow `seed`."""
    import keras

    keras.utils.set_random_seed(seed)
    # The user asked for .h5 on purpose: Keras's "legacy format" notice is noise here.
    logging.getLogger("absl").addFilter(lambda record: "HDF5 file via" not in record.getMessage())


# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
def build_model():
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE, name="image"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax", name="digit"),
        ],
        name="mnist_dense",
    )


def architecture_lines(model) -> list[str]:
    """The layers, their output shapes and parameter counts, as model.summary() gives them, in plain lines."""
    lines = [f"Model {model.name}: {model.count_params():,} parameters"]
    for layer in model.layers:
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        kind = type(layer).__name__ + (f"({layer.units}, {activation})" if hasattr(layer, "units") else "")
        lines.append(f"  {layer.name:<8} {kind:<20} output {str(tuple(layer.output.shape)):<12} "
                     f"{layer.count_params():>7,} parameters")
    return lines


def make_optimizer(schedule: str, total_steps: int):
    """Adam; by default its learning rate falls along a cosine from 0.002 to 0 over the run.

    Constant-rate Adam starts to overfit after about five epochs; letting the rate decay
    settles the weights instead. Starting at twice the constant rate keeps the same mean
    rate, so a short run (one epoch) learns as much as with the constant rate.
    """
    import keras

    if schedule == "constant":
        return keras.optimizers.Adam(LEARNING_RATE)
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(PEAK_LEARNING_RATE, total_steps))


def compile_model(model, optimizer) -> None:
    """Attach the optimizer, loss and metric: what model.h5 records and evaluate() would use."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
def make_epoch_trainer(model, images: np.ndarray, labels: np.ndarray):
    """A compiled function that trains `model` for one epoch: one Adam step per mini-batch.

    Keras's fit() makes one compiled call per mini-batch, and for a model this small the
    call costs more than its arithmetic. Here the whole epoch is one call: a loop that XLA
    compiles into one program, handed only the epoch's order of the training images. The
    images stay uint8 and each mini-batch is normalized as it is taken, exactly as
    normalize() does, so no float copy of the training set is ever held.
    """
    import tensorflow as tf

    images, labels = tf.constant(images), tf.constant(labels)
    model.optimizer.build(model.trainable_variables)  # its state must exist before compiling

    @tf.function(jit_compile=True)
    def train_epoch(order):
        """Train on the mini-batches `order` lists (steps x batch size); mean loss and accuracy."""
        def one_step(step, loss_sum, correct):
            batch = order[step]
            x = tf.cast(tf.gather(images, batch), tf.float32) / 255
            y = tf.gather(labels, batch)
            with tf.GradientTape() as tape:
                loss, batch_correct = loss_and_correct(model(x, training=True), y)
            gradients = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply(gradients, model.trainable_variables)
            return step + 1, loss_sum + loss, correct + batch_correct

        steps = tf.shape(order)[0]
        _, loss_sum, correct = tf.while_loop(lambda step, *_: step < steps, one_step, [0, 0.0, 0])
        return loss_sum / tf.cast(steps, tf.float32), correct / tf.size(order)

    return train_epoch


def make_scorer(model):
    """A compiled function that gives `model`'s mean loss and accuracy on a whole set at once."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def score(images, labels):
        loss, correct = loss_and_correct(model(images), labels)
        return loss, correct / tf.size(labels)

    return score


def loss_and_correct(probabilities, labels):
    """The mean cross-entropy loss, as compile() defines it, and how many guesses are right."""
    import keras
    import tensorflow as tf

    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
    guesses = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return loss, tf.math.count_nonzero(guesses == tf.cast(labels, tf.int32), dtype=tf.int32)


def epoch_order(rng: np.random.Generator, count: int, batch_size: int) -> np.ndarray:
    """A new random order of the training images, as rows of mini-batches (steps x batch size).

    The last, partial mini-batch is left out: a different one each epoch.
    """
    steps = count // batch_size
    return rng.permutation(count)[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float) -> str:
    return (f"Epoch {epoch + 1:>{len(str(epochs))}}/{epochs}: "
            f"loss {logs['loss']:.4f}, accuracy {100 * logs['accuracy']:.2f}%, "
            f"validation loss {logs['val_loss']:.4f}, "
            f"validation accuracy {100 * logs['val_accuracy']:.2f}% ({seconds:.1f} s)")


def progress_reporter(epochs: int, quiet: bool) -> Callable[[int, dict, float], None]:
    """One line per epoch in logs and pipes; on a terminal the same line, rewritten in place."""
    if quiet:
        return lambda epoch, logs, seconds: None
    if sys.stdout.isatty():
        def rewrite(epoch: int, logs: dict, seconds: float) -> None:
            end = "\n" if epoch + 1 == epochs else ""
            print(f"\r\033[K{epoch_line(epoch, epochs, logs, seconds)}", end=end, flush=True)
        return rewrite
    return lambda epoch, logs, seconds: print(epoch_line(epoch, epochs, logs, seconds), flush=True)


def history_callbacks(args: argparse.Namespace, logs: Path):
    """Keras's writers of the per-epoch figures: history.csv, and TensorBoard's logs if asked for."""
    import keras

    callbacks = [keras.callbacks.CSVLogger(str(logs / HISTORY_FILE))]
    if args.tensorboard:
        run = time.strftime("run-%Y%m%d-%H%M%S")  # TensorBoard's convention: a sub-folder per run, all kept
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(logs / TENSORBOARD_DIR / run)))
    return callbacks


def train(model, data: Split, args: argparse.Namespace, logs: Path) -> dict[str, list[float]]:
    """Train `model` in place; the per-epoch history of loss and accuracy, also written to `logs`."""
    import keras
    import tensorflow as tf

    steps = len(data.x_train) // args.batch_size
    compile_model(model, make_optimizer(args.lr_schedule, total_steps=args.epochs * steps))
    train_epoch = make_epoch_trainer(model, data.x_train, data.y_train)
    score = make_scorer(model)
    x_val, y_val = tf.constant(normalize(data.x_val)), tf.constant(data.y_val)
    report_progress = progress_reporter(args.epochs, args.quiet)
    callbacks = keras.callbacks.CallbackList(history_callbacks(args, logs), model=model)
    rng = np.random.default_rng(args.seed)
    history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}

    callbacks.on_train_begin()
    for epoch in range(args.epochs):
        started = time.perf_counter()
        with signals_deferred():  # Ctrl-C stops the run between epochs, never inside TensorFlow's calls
            callbacks.on_epoch_begin(epoch + 1)
            learning_rate = float(model.optimizer.learning_rate)  # where this epoch starts
            loss, accuracy = train_epoch(epoch_order(rng, len(data.x_train), args.batch_size))
            val_loss, val_accuracy = score(x_val, y_val)
            results = dict(zip(HISTORY_KEYS, map(float, (loss, accuracy, val_loss, val_accuracy, learning_rate))))
            callbacks.on_epoch_end(epoch + 1, results)  # epochs count from 1 here as everywhere else
        for key, value in results.items():
            history[key].append(value)
        report_progress(epoch, results, time.perf_counter() - started)
    callbacks.on_train_end()
    return history


# -----------------------------------------------------------------------------
# Evaluation: one pass over the test set gives every figure of the report
# -----------------------------------------------------------------------------
EVAL_BATCH_SIZE = 1024  # testing only: the batch size does not change the result


def classify(model, images: np.ndarray,
             prepare: Callable[[np.ndarray], np.ndarray] = normalize) -> np.ndarray:
    """The model's probabilities for each of the ten digits, one row per image.

    The images are prepared (by default: normalized) and classified in chunks, which keeps the
    peak of memory small; calling the model directly skips the set-up that model.predict() does.
    """
    chunks = range(0, len(images), EVAL_BATCH_SIZE)
    return np.concatenate([model(prepare(images[start:start + EVAL_BATCH_SIZE])).numpy() for start in chunks])


def evaluation_report(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, loss, confusion matrix (rows: true digit) and per-digit precision and recall."""
    import tensorflow as tf

    predicted = probabilities.argmax(axis=1)
    confusion = tf.math.confusion_matrix(labels, predicted, num_classes=NUM_CLASSES).numpy()
    loss, _ = loss_and_correct(probabilities, labels)
    hits, support, claimed = confusion.diagonal(), confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.full(NUM_CLASSES, np.nan), where=claimed > 0)
    recall = np.divide(hits, support, out=np.full(NUM_CLASSES, np.nan), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.full(NUM_CLASSES, np.nan), where=precision + recall > 0)
    return {
        "accuracy": float(hits.sum() / confusion.sum()),
        "loss": float(loss),
        "confusion_matrix": confusion.tolist(),
        "per_class": {str(digit): {"precision": none_if_nan(precision[digit]), "recall": none_if_nan(recall[digit]),
                                   "f1": none_if_nan(f1[digit]), "support": int(support[digit])}
                      for digit in range(NUM_CLASSES)},
    }


def none_if_nan(value: float) -> float | None:
    """A figure, or None (null in metrics.json, n/a on screen) where it is undefined: no images to count."""
    return None if np.isnan(value) else float(value)


def percent_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


CONFIDENT = 0.9  # a wrong answer above this confidence is believed: the calibration is judged by how many


def calibration_report(model, data: Split, probabilities: np.ndarray, seed: int) -> dict:
    """The temperature fitted on varied validation digits, and how honest the confidence is with
    and without it on MNIST's own test digits and on the test digits varied the same way."""
    vary = functools.partial(varied_like_pictures, rng=np.random.default_rng(seed))
    temperature = fit_temperature(classify(model, data.x_val, vary), data.y_val)
    varied = classify(model, data.x_test, vary)
    return {
        "temperature": temperature,
        "confident_above": CONFIDENT,
        "mnist_test": confidence_honesty(probabilities, data.y_test, temperature),
        "varied_test": confidence_honesty(varied, data.y_test, temperature),
    }


def confidence_honesty(raw: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """The wrong answers, how many of them come out above CONFIDENT and the calibration error: with
    the model's own ("raw") probabilities, and "calibrated" ones, those predict.py and serve.py give."""
    both = {"raw": raw, "calibrated": calibrated(raw, temperature)}
    return {
        "images": len(labels),
        "wrong": int((raw.argmax(axis=1) != labels).sum()),
        "confident_wrong": {name: confident_wrong(probabilities, labels) for name, probabilities in both.items()},
        "calibration_error": {name: calibration_error(probabilities, labels) for name, probabilities in both.items()},
    }


def confident_wrong(probabilities: np.ndarray, labels: np.ndarray) -> int:
    """Wrong answers given with a confidence above CONFIDENT: the mistakes a user would believe."""
    wrong = probabilities.argmax(axis=1) != labels
    return int((wrong & (probabilities.max(axis=1) > CONFIDENT)).sum())


TEMPERATURE_RANGE = (0.25, 8.0)  # where the calibration's temperature is searched for ...
TEMPERATURE_STEPS = 40  # ... in this many golden-section steps


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that makes the confidence honest on images the model was not trained on.

    Temperature scaling (Guo et al., 2017): a network trained to near 100% on its training
    images is overconfident elsewhere; dividing its log-probabilities by one number fitted to
    the validation set fixes most of that without changing any answer. The validation loss is
    convex in 1/temperature, so a golden-section search finds it.
    """
    def loss(inverse: float) -> float:
        chosen = calibrated(probabilities, 1 / inverse)[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.maximum(chosen, 1e-12))))

    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(TEMPERATURE_STEPS):
        a, b = high - golden * (high - low), low + golden * (high - low)
        low, high = (low, b) if loss(a) < loss(b) else (a, high)
    return float(2 / (low + high))


VARY_TURN, VARY_SLANT, VARY_SCALE, VARY_SHIFT = 15, 0.1, 0.15, 2  # degrees, shear, share, pixels: how the
# digits the calibration is fitted on are varied, as digits read from pictures vary


def varied_like_pictures(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST digits (uint8) varied as the digits predict.py reads from pictures vary from MNIST's.

    Turned, slanted, scaled and shifted a little, a quarter with bolder and a quarter with
    thinner strokes; as float32 in [0, 1]. The confidence is calibrated on these, since an
    honest confidence matters most on the user's own pictures, which MNIST never held.
    """
    import tensorflow as tf

    count = len(images)
    turn = np.deg2rad(rng.uniform(-VARY_TURN, VARY_TURN, count))
    scale = rng.uniform(1 - VARY_SCALE, 1 + VARY_SCALE, count)
    slant = rng.uniform(-VARY_SLANT, VARY_SLANT, count)
    shift = rng.uniform(-VARY_SHIFT, VARY_SHIFT, (count, 2))
    cos, sin = np.cos(turn) / scale, np.sin(turn) / scale
    xx, xy, yx, yy = cos, cos * slant - sin, sin, cos + sin * slant  # output pixel -> input pixel
    centre = (IMAGE_SHAPE[0] - 1) / 2
    transforms = np.stack([xx, xy, centre * (1 - xx - xy) + shift[:, 0], yx, yy, centre * (1 - yx - yy) + shift[:, 1],
                           np.zeros(count), np.zeros(count)], axis=1).astype(np.float32)
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(normalize(images)[..., None]), transforms=transforms, output_shape=IMAGE_SHAPE,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    stroke = rng.random(count)[:, None, None, None]
    bolder, thinner = tf.nn.max_pool2d(moved, 2, 1, "SAME"), -tf.nn.max_pool2d(-moved, 2, 1, "SAME")
    return tf.where(stroke < 0.25, bolder, tf.where(stroke < 0.5, thinner, moved)).numpy()[..., 0]


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities with their log divided by `temperature`: the same ranking, honest confidence."""
    logits = np.log(np.maximum(probabilities.astype(np.float64), 1e-12)) / temperature
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


CALIBRATION_BINS = 15  # confidence bins of the expected calibration error (Guo et al. use 15)


def calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over all answers.

    The answers are put in CALIBRATION_BINS bins by confidence; each bin counts by its size.
    """
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    gap = 0.0
    for b in np.unique(bins):
        members = bins == b
        gap += members.mean() * abs(right[members].mean() - confidence[members].mean())
    return float(gap)


def most_confused(confusion: list[list[int]], count: int = 3) -> list[tuple[int, int, int]]:
    """The `count` largest (true, predicted, times) mistakes, largest first."""
    mistakes = [(times, true, predicted) for true, row in enumerate(confusion)
                for predicted, times in enumerate(row) if true != predicted and times > 0]
    return [(true, predicted, times) for times, true, predicted in sorted(mistakes, reverse=True)[:count]]


def print_calibration(calibration: dict) -> None:
    """What the calibration buys, as a user meets it: fewer wrong answers given with high confidence."""
    def fewer(figures: dict) -> str:
        wrong, confident = f"{figures['wrong']:,}", figures["confident_wrong"]
        return f"{confident['raw']:,} of {wrong} -> {confident['calibrated']:,} of {wrong}"

    print(f"Confidence calibrated for pictures (temperature {calibration['temperature']:.2f}): wrong answers "
          f"above {100 * calibration['confident_above']:.0f}% confidence: {fewer(calibration['mnist_test'])} on "
          f"MNIST's test digits, {fewer(calibration['varied_test'])} on test digits varied as pictures vary")


def print_results(history: dict, report: dict) -> None:
    print(f"Training accuracy: {100 * history['accuracy'][-1]:.2f}%")
    print(f"Validation accuracy: {100 * history['val_accuracy'][-1]:.2f}%")
    print(f"Test accuracy: {100 * report['accuracy']:.2f}%")
    print("Digit  precision  recall  support")
    for digit, figures in report["per_class"].items():
        print(f"{digit:>5}  {percent_or_na(figures['precision']):>9}  {percent_or_na(figures['recall']):>6}"
              f"  {figures['support']:>7,}")
    pairs = most_confused(report["confusion_matrix"])
    if pairs:
        print("Most confused: " + ", ".join(f"{true} -> {predicted}: {times} time{'' if times == 1 else 's'}"
                                            for true, predicted, times in pairs))


# -----------------------------------------------------------------------------
# Figures: each one is a nice-to-have; one that fails is a warning, never a lost model
# -----------------------------------------------------------------------------
def draw_figures(folder: Path, history: dict, report: dict, images: np.ndarray,
                 labels: np.ndarray, probabilities: np.ndarray, temperature: float) -> None:
    """The figures of the run; the mistakes with the calibrated confidence, the one predict.py prints."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    figures = {
        HISTORY_FIGURE: lambda path: plot_history(history, path),
        CONFUSION_FIGURE: lambda path: plot_confusion(report["confusion_matrix"], path),
        MISTAKES_FIGURE: lambda path: plot_mistakes(images, labels, calibrated(probabilities, temperature), path),
    }
    for name, draw in figures.items():
        try:
            draw(folder / name)
        except Exception as error:  # any rendering failure: the model matters more than a picture
            (folder / name).unlink(missing_ok=True)  # a half-written figure is not saved
            warn(f"{name} was not drawn: {error}")


def plot_history(history: dict, path: Path) -> None:
    from matplotlib import pyplot as plt

    figure = history_figure(history)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def history_figure(history: dict):
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = range(1, len(history["loss"]) + 1)
    figure, panels = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for panel, metric, title, scale in zip(panels, ("loss", "accuracy"), ("Loss", "Accuracy"), (1, 100)):
        panel.plot(epochs, scale * np.array(history[metric]), "o-", label="training")
        panel.plot(epochs, scale * np.array(history[f"val_{metric}"]), "o-", label="validation")
        panel.set(title=title, xlabel="epoch", ylabel="accuracy (%)" if scale == 100 else metric)
        panel.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        panel.set_xlim(0.5, len(epochs) + 0.5)
        panel.grid(alpha=0.3)
        panel.legend()
    return figure


def plot_confusion(confusion: list[list[int]], path: Path) -> None:
    from matplotlib import pyplot as plt

    counts = np.array(confusion)
    figure, axes = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
    shown = axes.imshow(counts, cmap="Blues", norm="log" if counts.max() > 0 else None)
    figure.colorbar(shown, ax=axes, label="test images (log scale)")
    for true, predicted in np.ndindex(counts.shape):
        if counts[true, predicted]:
            dark = counts[true, predicted] > np.sqrt(max(counts.max(), 1))
            axes.text(predicted, true, counts[true, predicted], ha="center", va="center",
                      fontsize=8, color="white" if dark else "black")
    axes.set(title="Confusion matrix (test set)", xlabel="predicted digit", ylabel="true digit",
             xticks=range(NUM_CLASSES), yticks=range(NUM_CLASSES))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def worst_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` misclassified images, the most confident mistakes first."""
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:count]


def plot_mistakes(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                  path: Path, count: int = 25) -> None:
    """The mistakes as one mosaic image with a title over each tile: one axes draws fast."""
    from matplotlib import pyplot as plt

    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    shown = worst_mistakes(labels, probabilities, count)
    columns, tile, gap = 5, IMAGE_SHAPE[0], 12  # the gap leaves room for each tile's title
    rows = max(1, -(-len(shown) // columns))
    mosaic = np.zeros((rows * (tile + gap), columns * (tile + gap)), np.uint8)
    figure, axes = plt.subplots(figsize=(2 * columns, 2.2 * rows + 0.5))
    for place, index in enumerate(shown):
        top, left = (place // columns) * (tile + gap) + gap, (place % columns) * (tile + gap) + gap // 2
        mosaic[top:top + tile, left:left + tile] = images[index]
        axes.text(left + tile / 2, top - 2, f"true {labels[index]} -> {predicted[index]} "
                  f"({100 * confidence[index]:.0f}%)", ha="center", va="bottom", fontsize=9)
    axes.imshow(mosaic, cmap="gray_r")
    axes.axis("off")
    if not len(shown):
        axes.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "no mistakes on the test set",
                  ha="center", fontsize=12)
    axes.set_title("Most confident mistakes on the test set\n(calibrated confidence, as predict.py and serve.py give it)")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


# -----------------------------------------------------------------------------
# Outputs: written to a hidden staging folder, moved into place only on success
# -----------------------------------------------------------------------------
@contextlib.contextmanager
def write_errors_named(output_dir: Path) -> Iterator[None]:
    """Turn a failed write (disk full, no permission) into one line that names the folder."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"could not write the outputs to {output_dir}: {write_failure(error)}; "
                          "the previous outputs are as they were") from None


def write_failure(error: OSError) -> str:
    """Why a write failed, in a few words: a full disk is said so, whichever library noticed it."""
    if error.errno == errno.ENOSPC or "No space left on device" in str(error):  # h5py keeps errno in its text
        return "the disk is full"
    return error.strerror or str(error).splitlines()[0]


STAGING_PREFIX = ".train-"  # + the owner's process id: the hidden folder a run writes into ...
STAGING_LOCK = ".lock"  # ... holding this file, locked by the run for as long as it runs,
STAGING_ASIDE = ".previous"  # ... and this folder, for the outputs the run replaces until they are replaced


class Staging:
    """A hidden folder beside the outputs; a failed or interrupted run leaves the output folder as it was.

    The outputs are written into it and then moved into place as one set: all new or, if anything
    goes wrong part-way, all old again. Its run holds a lock on a file in it for as long as it runs,
    so that a folder left behind by a run that was killed outright is cleaned up by the next run,
    and a live run's is not, even by a run on another computer writing to the same shared folder.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.created: list[Path] = []  # folders this run made, deepest last
        self.path = output_dir
        self.lock: io.TextIOWrapper | None = None
        self.moved: list[tuple[Path, Path]] = []  # (from, to) of every rename of the move, to undo in reverse
        self.published = False  # every output is in place
        self.kept = False  # holds earlier outputs that could not be put back

    def __enter__(self) -> "Staging":
        with write_errors_named(self.output_dir):
            missing = [folder for folder in (self.output_dir, *self.output_dir.parents) if not folder.exists()]
            for folder in reversed(missing):
                folder.mkdir()
                self.created.append(folder)
            remove_stale_staging(self.output_dir)
            self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.output_dir))
            self.lock = held_lock(self.path / STAGING_LOCK)
        return self

    def publish(self) -> list[str]:
        """Move every staged output into place as one set; signals wait until it is done, errors undo it.

        An earlier output this run did not make (a figure not drawn this time) is set aside with the
        ones it replaces, so that the folder never holds a figure of one run beside another's model.
        """
        names = sorted(entry.name for entry in self.path.iterdir() if entry.name != STAGING_LOCK)
        not_made = [name for name in OUTPUT_FILES if name not in names and os.path.lexists(self.output_dir / name)]
        aside = self.path / STAGING_ASIDE
        aside.mkdir()
        with signals_deferred():
            try:
                for name in not_made:
                    self.rename(self.output_dir / name, aside / name)
                for name in names:
                    self.move_into_place(name, aside)
            except OSError as error:
                self.undo(error, aside)
                raise
            self.published = True
        for name in not_made:
            warn(f"the earlier {name} was removed, as this run did not make one: the outputs are all one run's")
        return names

    def move_into_place(self, name: str, aside: Path) -> None:
        """Move one staged output into the output folder, setting aside what it replaces."""
        source, target = self.path / name, self.output_dir / name
        if name == TENSORBOARD_DIR and target.is_dir():  # earlier runs' logs are kept beside this run's
            for run in source.iterdir():
                self.rename(run, target / run.name)
            return
        if os.path.lexists(target):
            self.rename(target, aside / name)
        self.rename(source, target)

    def rename(self, source: Path, target: Path) -> None:
        """One rename of the move, noted as soon as it is done: an error after it undoes it too."""
        os.replace(source, target)
        self.moved.append((source, target))

    def undo(self, error: OSError, aside: Path) -> None:
        """Put back every rename of the move, last first; if some cannot be, say where the earlier outputs are."""
        not_back = []
        for source, target in reversed(self.moved):
            try:
                os.replace(target, source)
            except OSError:
                not_back.append(target)
        if any(path.parent == aside for path in not_back):  # this folder is then kept, by this run and the next
            self.kept = True
            raise OutputError(f"could not write the outputs to {self.output_dir}: {write_failure(error)}; "
                              f"some of the previous outputs could not be put back: they are in {aside}") from None

    def __exit__(self, error_type, error, traceback) -> None:
        if self.lock is not None:
            self.lock.close()  # first: Windows deletes no file held open
        if not self.kept:
            shutil.rmtree(self.path, ignore_errors=True)
        if error_type is not None:
            for folder in reversed(self.created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


class InterruptedAfterSaving(KeyboardInterrupt):
    """Stopped by a signal that came once the outputs were moved into place: they are all saved."""


STAGING_UNLOCKED_SECONDS = 60  # a staging folder older than this without its lock file is stale


def held_lock(path: Path) -> io.TextIOWrapper:
    """A file at `path`, locked for as long as it is open: its folder is in use.

    It is locked before it gets its name, so that no other run ever finds it unlocked while its run lives.
    """
    if fcntl is None:
        return open(path, "w")  # Windows: a file held open cannot be deleted, which staging_in_use asks
    draft = path.with_name(f"{path.name}.new")
    lock = open(draft, "w")
    with contextlib.suppress(OSError):  # a file system without locks: other runs then leave the folder alone
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    draft.rename(path)
    return lock


def remove_stale_staging(output_dir: Path) -> None:
    """Remove staging folders whose run is gone (killed with SIGKILL, or a power cut), but never
    earlier outputs set aside in one: the run was stopped in the middle of its move, or could not undo it."""
    for folder in output_dir.glob(f"{STAGING_PREFIX}*"):
        if folder.is_dir() and not staging_in_use(folder) and not any(folder.glob(f"{STAGING_ASIDE}/*")):
            shutil.rmtree(folder, ignore_errors=True)


def staging_in_use(folder: Path) -> bool:
    """Whether a run may still write to this staging folder: its lock is held, by a process on this
    computer or on another one sharing the folder (a process id would tell neither the computer
    nor a new process that got the id of one that died)."""
    lock = folder / STAGING_LOCK
    try:
        if not lock.exists():  # its run is between making the folder and locking it, or was killed there
            return time.time() - folder.stat().st_mtime < STAGING_UNLOCKED_SECONDS
        if fcntl is None:
            lock.unlink()  # fails while its run holds it open
        else:
            with open(lock, "r+") as file:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held, or not ours to take: leave it
        return True
    return False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back Ctrl-C, kill and a closed terminal until the block is done; then stop as they asked.

    Their handlers only take note meanwhile (Python runs handlers in the main thread, whichever
    thread the signal reached), and a signal noted is raised as KeyboardInterrupt after the block.
    A signal while the handlers are being installed stops the run at once, before the block.
    """
    noted: list[int] = []
    previous = {}
    try:
        for sig in (sig for sig in STOP_SIGNALS if sig is not None):
            previous[sig] = signal.signal(sig, lambda number, frame: noted.append(number))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if noted:
        raise KeyboardInterrupt


GRAPHVIZ_INSTALL = "apt-get install graphviz, brew install graphviz or conda install graphviz"


def draw_architecture(model, path: Path) -> None:
    """The diagram is a nice-to-have: without a working Graphviz, warn once and carry on."""
    import keras

    if shutil.which("dot") is None:
        warn(f"Graphviz's 'dot' program was not found, so {path.name} was not drawn; "
             f"install Graphviz ({GRAPHVIZ_INSTALL}) to get it")
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pydot prints dot's whole output when dot fails
            keras.utils.plot_model(model, to_file=str(path), show_shapes=True, show_layer_names=True,
                                   show_layer_activations=True, show_trainable=True)
    except Exception as error:  # pydot missing, a Graphviz that does not run or cannot write PNG, ...
        path.unlink(missing_ok=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warn(f"{path.name} was not drawn: {reason}")


def previous_test_accuracy(output_dir: Path) -> float | None:
    """The test accuracy of the model already in `output_dir`, from the metrics.json beside it."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if (output_dir / MODEL_FILE).is_file():
            return float(json.loads((output_dir / METRICS_FILE).read_text())["test_accuracy"])
    return None


def save_model(model, path: Path, temperature: float) -> None:
    """model.h5 as Keras writes it, plus the confidence calibration as an HDF5 attribute (Keras ignores it)."""
    import h5py

    model.save(path)
    with h5py.File(path, "a") as file:
        file.attrs[TEMPERATURE_ATTRIBUTE] = temperature


def save_onnx(model, path: Path, temperature: float) -> None:
    """model.onnx, through Keras's own export, with the confidence calibration in its metadata: the
    model predict.py and serve.py run without TensorFlow. One that cannot be made is a warning
    that says why; model.h5 is saved all the same."""
    not_saved = f"{ONNX_FILE}, which predict.py and serve.py run, was not saved ({MODEL_FILE} was): "
    missing = [package for package in ("onnx", "tf2onnx") if importlib.util.find_spec(package) is None]
    if missing:
        warn(f"{not_saved}{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
             "pip install -r requirements.txt")
        return
    try:
        import onnx

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # tf2onnx's notices
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(path), format="onnx", verbose=False)
        exported = onnx.load(path)
        onnx.helper.set_model_props(exported, {TEMPERATURE_ATTRIBUTE: repr(temperature)})
        onnx.save(exported, path)
    except Exception as error:  # tf2onnx and onnx raise their own kinds
        path.unlink(missing_ok=True)
        warn(not_saved + (str(error).splitlines()[0] if str(error) else type(error).__name__))


def metrics_report(args: argparse.Namespace, source: str, history: dict, report: dict, calibration: dict,
                   wall_seconds: float, fit_seconds: float) -> dict:
    import keras
    import tensorflow as tf

    return {
        "test_accuracy": report["accuracy"],
        "test_loss": report["loss"],
        "confusion_matrix": report["confusion_matrix"],
        "per_class": report["per_class"],
        "calibration": calibration,
        "history": history,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "validation_split": args.validation_split,
        "learning_rate": ({"schedule": "cosine", "from": PEAK_LEARNING_RATE, "to": 0.0}
                          if args.lr_schedule == "cosine" else
                          {"schedule": "constant", "from": LEARNING_RATE, "to": LEARNING_RATE}),
        "seed": args.seed,
        "data_source": source,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "fit_seconds": round(fit_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
    }


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


# -----------------------------------------------------------------------------
# Main
# -----------------------------------------------------------------------------
def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")  # one write: a signal cannot split the line


def run(args: argparse.Namespace, started: float) -> None:
    mnist = load_mnist(args.data)
    data = split_validation(mnist, args.validation_split)
    if len(data.x_train) < args.batch_size:
        raise DataError(f"{mnist.source}: fewer training images ({len(data.x_train):,}, after holding out "
                        f"the validation images) than one batch (--batch-size {args.batch_size:,})")
    if not args.quiet:  # something to read while TensorFlow starts
        print(f"Data: {mnist.source}: {len(data.x_train):,} training, {len(data.x_val):,} validation "
              f"and {image_count(len(data.x_test), 'test')}", flush=True)
    start_tensorflow(args.seed)
    model = build_model()
    if not args.quiet:
        print("\n".join(architecture_lines(model)))

    staging = Staging(args.output_dir)
    try:
        with staging:
            fit_started = time.perf_counter()
            history = train(model, data, args, logs=staging.path)
            fit_seconds = time.perf_counter() - fit_started
            probabilities = classify(model, data.x_test)
            report = evaluation_report(probabilities, data.y_test)
            print_results(history, report)
            calibration = calibration_report(model, data, probabilities, args.seed)
            print_calibration(calibration)

            with write_errors_named(args.output_dir):
                draw_architecture(model, staging.path / DIAGRAM_FILE)
                draw_figures(staging.path, history, report, data.x_test, data.y_test, probabilities,
                             calibration["temperature"])
                save_model(model, staging.path / MODEL_FILE, calibration["temperature"])
                save_onnx(model, staging.path / ONNX_FILE, calibration["temperature"])
                wall_seconds = time.perf_counter() - started
                write_json(staging.path / METRICS_FILE,
                           metrics_report(args, mnist.source, history, report, calibration,
                                          wall_seconds, fit_seconds))
                previous = previous_test_accuracy(args.output_dir)
                written = staging.publish()
        print(f"Saved {', '.join(written)} in {args.output_dir.resolve()} "
              f"(training {fit_seconds:.1f} s, whole run {wall_seconds:.1f} s)")
        if previous is not None and previous > report["accuracy"]:
            print(f"Note: the {MODEL_FILE} this replaced was more accurate on the test set "
                  f"({100 * previous:.2f}% against {100 * report['accuracy']:.2f}% now)")
    except KeyboardInterrupt:
        if staging.published:  # it came during the move, or after it: every output is in place
            raise InterruptedAfterSaving from None
        raise


class ClosedPipeTolerant(io.TextIOBase):
    """stdout that goes quiet when its reader has gone (`| head`), instead of losing the run.

    Python's documented recipe for a closed stdout ends the program at the first failed write;
    here that would throw away a model trained for a minute, so the writes are dropped instead.
    """

    def __init__(self, stream) -> None:
        self.stream, self.reader_gone = stream, False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self.stream.write(text)
                if "\n" in text or self.stream.isatty():
                    self.stream.flush()
            except BrokenPipeError:
                self.reader_gone = True
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.reader_gone = True

    def isatty(self) -> bool:
        return self.stream.isatty()


def has_packages(packages: tuple[str, ...]) -> bool:
    """Whether this Python has `packages`; if not, say so in one line (most often: a virtual
    environment not activated). They are imported where they are needed, after this check."""
    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        print(f"error: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this Python "
              f"({sys.executable}): pip install -r requirements.txt (in the virtual environment, if you made one)",
              file=sys.stderr)
    return not missing


def stop_as_ctrl_c() -> None:
    """`kill` and a closed terminal stop as cleanly as Ctrl-C does."""
    for stopping in STOP_SIGNALS[1:]:
        if stopping is not None:
            signal.signal(stopping, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if not has_packages(("tensorflow", "keras", "h5py")):
        return EXIT_ERROR
    stop_as_ctrl_c()
    try:
        with tensorflow_chatter_filtered():
            run(args, started)
    except (DataError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except InterruptedAfterSaving:
        print(f"\nInterrupted after every output was saved in {args.output_dir}.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\nInterrupted: nothing was saved; {args.output_dir} is as it was.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run_as_program(main: Callable[[], int]) -> None:
    """Run `main` as the program: its exit code is the process's."""
    sys.stdout = ClosedPipeTolerant(sys.stdout)
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every output is closed and in place by now; TensorFlow's interpreter shutdown would
    # take most of a second more and do nothing for us.
    os._exit(exit_code)


if __name__ == "__main__":
    run_as_program(main)
