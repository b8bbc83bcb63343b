#!/usr/bin/env python3
"""Train a small dense network to recognise handwritten digits (MNIST).

    python train.py                        # download MNIST once, train, evaluate, save
    python train.py --data mnist.npz       # use a local copy instead of downloading
    python train.py --help                 # every option

The run loads MNIST, scales the pixels to [0, 1], holds out the last 20% of the
training images for validation, trains Flatten -> Dense(128, relu) ->
Dense(10, softmax) with Adam, prints the test accuracy, and writes
model.h5, model_architecture.png and metrics.json to the output folder.

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
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple

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

EVAL_BATCH_SIZE = 1024  # testing only: the batch size does not change the result

MODEL_FILE = "model.h5"
DIAGRAM_FILE = "model_architecture.png"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")  # recorded per epoch
HISTORY_FIGURE = "training_history.png"
CONFUSION_FIGURE = "confusion_matrix.png"
MISTAKES_FIGURE = "misclassified.png"
TENSORBOARD_DIR = "logs"
OUTPUT_FILES = (MODEL_FILE, DIAGRAM_FILE, METRICS_FILE, HISTORY_FILE, HISTORY_FIGURE, CONFUSION_FIGURE,
                MISTAKES_FIGURE)

WORK_SIZE = 1024  # a picture is shrunk to at most this many pixels a side before it is read
PICTURE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # what photos and drawings come in: only these
# are opened (Pillow would run Ghostscript on an EPS, and each format it reads is code exposed to the file)
NOT_A_PICTURE_FORMAT = "not a PNG, JPEG, GIF, BMP, TIFF or WebP image"
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a camera was held
MAX_PICTURE_PIXELS = 60_000_000  # larger pictures are refused: more than any phone's camera takes
DIGIT_BOX = 20  # MNIST digits were scaled to fit 20x20 ...
FIELD = 28  # ... and centred by centre of mass in 28x28
MNIST_STROKE = (1.7, 2.3)  # stroke width of the middle half of MNIST's digits, in 20x20-box pixels
STROKE_FRAME = 4 * DIGIT_BOX  # a small digit's longer side is enlarged to this before its width is set
STROKE_STEPS = 7  # halvings in the search for the pen width that matches MNIST's
MIN_INK_CONTRAST = 0.2  # strokes must stand out from the paper by this much (0-1) to count
FAINT_CONTRAST = 0.35  # ... and below this much they are noted as very faint
NOISE_LEVELS = 6  # ... and stand out from the paper's noise by this many of its standard deviations
MIN_INK_PIXELS = 10  # fewer pixels than this that stand out: a blank picture
BOLD_INK_SHARE = 0.25  # ink covering more than this share of the picture is left out when the paper is measured
PAGE_VIEW = 64  # a page lying on a desk is looked for on a copy this many pixels a side: ...
PAGE_RECTANGLE = 0.85  # ... it fills at least this share of the rectangle around it, ...
PAGE_PAPER = 0.5  # ... at least this share of it is paper, ...
PAGE_ROOM = 0.15  # ... a circle with this share of its size as radius fits in it, ...
FAR_DARKER = 0.5  # ... and what lies around it is less bright than this share of it (not a shadow)
PAGE_EDGE = 2  # ... and this many of the copy's pixels of its edge are left out
DARKEST_PAPER = 0.5  # shadows may make the paper this dark, relative to its brightest, and no darker
PAPER_REACH = 10  # a stroke has paper on both sides within this many pixels of a 48-pixel copy (a marker a fifth of it wide)
RULED_LINE = 0.8  # a line of ink across this share of the picture is ruled paper, not a digit ...
RULED_LINE_THICKNESS = 0.02  # ... if it is at most this thick, as a share of the picture's longer side,
RULED_LINE_GAP = 4  # ... and gaps of up to this many 64ths of the width do not break it (a pale line comes out dashed)
RULED_PAST = 0.1  # a single such line is ruled if it runs past the rest of the ink by this share of its length
LONE_LINE_SLOPE = 0.15  # ... and a line alone on the page, if it rises less than this over its length
MARGIN_CROSSES = 3  # a line alone down a page is its margin if it crosses this many ruled lines (a 1 crosses fewer)
SPECK = 0.02  # marks smaller than this share of the largest one are specks
MAX_MARKS = 50  # only the largest marks are considered
MARK_GAP = 0.1  # marks this close, as a share of the larger one's size, are parts of one digit ...
STACKED_GAP = 0.35  # ... and so are marks one above the other this close (a 5's flag)
SEVERAL_MARKS = 0.25  # another group of marks this large, relative to the digit's, is noted
FRAME_BAND = 0.1  # a box drawn around the digit: ink within this share of its size from each edge ...
FRAME_EDGE_SHARE = 0.9  # ... along at least this share of each of its four edges
SMALL_DIGIT = 16  # a digit fewer pixels tall than this is noted: its shape is a guess
GRAIN = 3  # ... and if as many other marks are at least half its size, it is the paper's grain
LITTLE_INK = 40  # ... and so is one of fewer ink pixels than this
BLANK_PICTURE = "no digit found (the image looks blank)"

TEMPERATURE_ATTRIBUTE = "confidence_temperature"  # model.h5's attribute holding the calibration
TEMPERATURE_RANGE = (0.25, 8.0)  # where the calibration's temperature is searched for ...
TEMPERATURE_STEPS = 40  # ... in this many golden-section steps
CALIBRATION_BINS = 15  # confidence bins of the expected calibration error (Guo et al. use 15)
CONFIDENT = 0.9  # a wrong answer above this confidence is believed: the calibration is judged by how many
VARY_TURN, VARY_SLANT, VARY_SCALE, VARY_SHIFT = 15, 0.1, 0.15, 2  # degrees, shear, share, pixels: how the
# digits the calibration is fitted on are varied, as digits read from pictures vary

PAGE_FILE = "draw.html"  # the drawing page --serve serves, beside this script
SERVE_HOST = "127.0.0.1"  # this computer only
SERVE_PORT = 8000
SERVE_MAX_BYTES = 20 * 2**20  # largest picture POST /predict takes: a phone photo fits
SERVE_MAX_PIXELS = 12_000_000  # largest picture it decodes (a JPEG counts at the reduced size it is decoded at)
SERVE_BODY_BYTES = 48 * 2**20  # pictures each process holds at once: two of the largest, and drawings beside them
SERVE_READERS = 2  # pictures decoded at once, at most, by each serving process
SERVE_CONNECTIONS = 200  # connections each process serves at once; more wait to be accepted
SERVE_IDLE_SECONDS = 10  # a connection with no request for this long is closed
SERVE_DEADLINE_SECONDS = 30  # a whole request, from its first byte: a 20 MiB photo at 1 MB/s arrives in time
SERVE_LINGER_SECONDS = 1  # after an early answer, what the client still sends is read until it is silent this long
USABLE_CORES = (os.process_cpu_count() if hasattr(os, "process_cpu_count")  # 3.13+: affinity and quotas
                else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
SERVE_PROCESSES = min(USABLE_CORES, 4)  # processes answering requests, each with its own model ...
MAX_SERVE_PROCESSES = 32  # ... and the most --processes takes (each holds its own TensorFlow)
SERVE_BACKLOG = 128  # connections waiting to be accepted: a classroom connecting at once is queued

STAGING_PREFIX = ".train-"  # + the owner's process id: the hidden folder a run writes into ...
STAGING_LOCK = ".lock"  # ... holding this file, locked by the run for as long as it runs,
STAGING_ASIDE = ".previous"  # ... and this folder, for the outputs the run replaces until they are replaced
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))  # all stop a run as Ctrl-C does

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own code
EXIT_INTERRUPTED = 130

MODE_NAMES = {"train": "when training", "predict": "with --predict", "serve": "with --serve"}
OPTION_MODES = {  # options that mean something in some modes only
    **{option: ("train",) for option in ("--data", "--epochs", "--batch-size", "--validation-split",
                                         "--lr-schedule", "--seed", "--tensorboard")},
    "--model": ("predict", "serve"),
    "--save-preprocessed": ("predict",),
    "--format": ("predict",),
    "--host": ("serve",),
    "--port": ("serve",),
    "--processes": ("serve",),
}

DOWNLOAD_TIMEOUT_SECONDS = 30
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {  # the names the original MNIST files are distributed under
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
GRAPHVIZ_INSTALL = "apt-get install graphviz, brew install graphviz or conda install graphviz"

# A log level the user set is kept, and TF_CPP_MIN_LOG_LEVEL=0 (every message) turns the filter
# below off; otherwise TensorFlow logs warnings and errors only. Set before TensorFlow is imported.
ALL_TENSORFLOW_LOGS = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

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


class DataError(Exception):
    """The data is missing, unreadable or not MNIST-shaped; the message says which and why."""


class OutputError(Exception):
    """An output could not be written; the message names the folder and why."""


class PictureError(Exception):
    """One picture given to --predict cannot be read as a digit; the message says why."""


class Mnist(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


class Picture(NamedTuple):
    """A picture as grey levels, and how many of the user's pixels one of its pixels stands for."""
    grey: np.ndarray  # in [0, 1], at most WORK_SIZE pixels a side
    scale: float  # the user's pixels per pixel of `grey`: above 1 when the picture was shrunk


class Reading(NamedTuple):
    """A picture made into the model's input, and what the preprocessing had to guess about it."""
    image: np.ndarray  # 28x28 float32 in [0, 1], light digit on black, as MNIST's
    notes: list[str]


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


def picture_path(text: str) -> Path:
    """A file or folder given to --predict: a web address is said not to be one, as it was typed."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", text):
        raise argparse.ArgumentTypeError(f"{text}: web addresses are not read; download the picture "
                                         "and give the file")
    return Path(text)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with a pointer to --help, not the whole usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (python train.py --help lists the options)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(
        allow_abbrev=False,  # --epoch is a typo, not --epochs
        description="Train a digit classifier on MNIST and save it as model.h5, "
                    "classify your own pictures of digits with --predict, or draw them with --serve.")
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
    recognizing = parser.add_argument_group("recognizing your own digits (no training)")
    recognizing.add_argument("--predict", nargs="+", type=picture_path, metavar="IMAGE",
                             help="classify these pictures of single digits (PNG, JPEG, GIF, BMP, "
                                  "TIFF or WebP), or every picture in a folder")
    recognizing.add_argument("--model", type=Path, metavar="PATH",
                             help="the model to use, with --predict or --serve (default: OUTPUT_DIR/model.h5)")
    recognizing.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                             help="also save each 28x28 input the model sees, as a PNG, in DIR")
    recognizing.add_argument("--format", choices=("text", "json"), default="text",
                             help="one line per picture in words, or one JSON object per picture "
                                  "(default: %(default)s)")
    serving = parser.add_argument_group("drawing digits in the browser (no training)")
    serving.add_argument("--serve", action="store_true",
                         help="serve a page where you draw digits and see the model read them")
    serving.add_argument("--host", metavar="ADDR",
                         help=f"address to serve on; 0.0.0.0 lets other computers in (default: {SERVE_HOST})")
    serving.add_argument("--port", type=whole_number(0, 65535), metavar="N",
                         help=f"port to serve on; 0 takes any free one (default: {SERVE_PORT})")
    serving.add_argument("--processes", type=whole_number(1, MAX_SERVE_PROCESSES), default=SERVE_PROCESSES,
                         metavar="N", help="processes answering requests, each with its own copy of the "
                                           "model (default: one per core, at most 4: %(default)s here)")
    args = parser.parse_args(argv)
    args.mode = "predict" if args.predict is not None else "serve" if args.serve else "train"
    if args.predict is not None and args.serve:
        parser.error("argument --serve: not with --predict")
    given = {token.split("=")[0] for token in argv if token.startswith("--")}
    for option, modes in OPTION_MODES.items():
        if option in given and args.mode not in modes:
            parser.error(f"argument {option}: only {' or '.join(MODE_NAMES[mode] for mode in modes)}")
    args.host = SERVE_HOST if args.host is None else args.host
    args.port = SERVE_PORT if args.port is None else args.port
    for option, folder in (("--output-dir", args.output_dir if args.mode == "train" else None),
                           ("--save-preprocessed", args.save_preprocessed)):
        problem = folder is not None and output_dir_problem(folder)
        if problem:
            parser.error(f"argument {option}: {problem}")
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
def classify(model, images: np.ndarray,
             prepare: Callable[[np.ndarray], np.ndarray] = normalize) -> np.ndarray:
    """The model's probabilities for each of the ten digits, one row per image.

    The images are prepared (by default: normalized) and classified in chunks, which keeps the
    peak of memory small; calling the model directly skips the set-up that predict() does.
    """
    chunks = range(0, len(images), EVAL_BATCH_SIZE)
    return np.concatenate([model(prepare(images[start:start + EVAL_BATCH_SIZE])).numpy() for start in chunks])


def test_report(probabilities: np.ndarray, labels: np.ndarray) -> dict:
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
        "per_class": {str(digit): {"precision": defined(precision[digit]), "recall": defined(recall[digit]),
                                   "f1": defined(f1[digit]), "support": int(support[digit])}
                      for digit in range(NUM_CLASSES)},
    }


def defined(value: float) -> float | None:
    """A figure, or None (null in metrics.json, n/a on screen) where it is undefined: no images to count."""
    return None if np.isnan(value) else float(value)


def percent_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


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
    the model's own ("raw") probabilities, and "calibrated" ones, those --predict and --serve give."""
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


def varied_like_pictures(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST digits (uint8) varied as the digits --predict reads from pictures vary from MNIST's.

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
    """The figures of the run; the mistakes with the calibrated confidence, the one --predict prints."""
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
    axes.set_title("Most confident mistakes on the test set\n(calibrated confidence, as --predict and --serve give it)")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


# -----------------------------------------------------------------------------
# Outputs: written to a hidden staging folder, moved into place only on success
# -----------------------------------------------------------------------------
@contextlib.contextmanager
def writing_to(output_dir: Path) -> Iterator[None]:
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
        with writing_to(self.output_dir):
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
# Recognizing the user's own digits (--predict)
# -----------------------------------------------------------------------------
def load_picture(path: Path) -> np.ndarray:
    """The picture in the file `path` as grey levels (see decode_picture)."""
    return open_picture(path).grey


def open_picture(path: Path) -> Picture:
    """The picture in the file `path`; what keeps it from being read is said in a PictureError."""
    if path.is_dir():
        raise PictureError("a folder with no pictures")
    if not path.exists():
        raise PictureError("no such file")
    if not path.is_file():
        raise PictureError("not a regular file")
    if path.stat().st_size == 0:
        raise PictureError("file is empty")
    try:
        with open(path, "rb") as file:
            return picture_from(file)
    except PermissionError:
        raise PictureError("permission denied") from None
    except OSError as error:  # a disk or network share failing under the file
        raise PictureError(f"cannot read the file ({error.strerror or error})") from None


def decode_picture(file: BinaryIO, max_pixels: int = MAX_PICTURE_PIXELS) -> np.ndarray:
    """Grey levels in [0, 1], at most WORK_SIZE pixels a side (see picture_from)."""
    return picture_from(file, max_pixels).grey


def picture_from(file: BinaryIO, max_pixels: int = MAX_PICTURE_PIXELS) -> Picture:
    """The picture in `file`, at most WORK_SIZE pixels a side, as grey levels in [0, 1]; one that
    would decode to more than `max_pixels` pixels is refused (a JPEG is decoded at a reduced size,
    and counted at it).

    Only PICTURE_FORMATS are opened. See-through parts are laid over the colour the marks stand
    out from: black under light strokes, white under dark ones, so a drawing exported from a
    canvas reads either way. Whatever goes wrong in decoding is this picture's PictureError: a
    damaged file can make Pillow raise nearly anything (struct.error, IndexError, ...).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # Pillow's own guard only warns; the limit below is said in words
    try:
        with Image.open(file, formats=PICTURE_FORMATS) as picture:
            width, height = picture.size
            picture.draft("L", (WORK_SIZE, WORK_SIZE))  # JPEG: decode at a reduced size already
            if picture.width * picture.height > max_pixels:
                raise PictureError(f"too large to read safely ({width}x{height} pixels; "
                                   f"at most {max_pixels // 10**6} megapixels)")
            picture.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS)
            if picture.getexif().get(EXIF_ORIENTATION, 1) != 1:  # photos: upright as the camera meant,
                picture = ImageOps.exif_transpose(picture)  # turned once shrunk: no full-size copy
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                grey = over_contrasting_background(picture.convert("RGBA"))
            else:
                grey = np.asarray(picture.convert("L"), dtype=np.float32) / 255
            return Picture(grey, max(width, height) / max(grey.shape))
    except PictureError:
        raise
    except UnidentifiedImageError:
        raise PictureError(NOT_A_PICTURE_FORMAT) from None
    except Exception as error:  # a broken file, whichever part of Pillow finds it broken
        raise PictureError(f"unreadable image ({str(error) or type(error).__name__})") from None


def over_contrasting_background(rgba) -> np.ndarray:
    """Grey levels of a picture with transparency, laid over black or white, whichever the marks are not."""
    alpha = np.asarray(rgba.getchannel("A"), np.float32) / 255
    grey = np.asarray(rgba.convert("L"), np.float32) / 255
    marks = alpha > 0.5
    light_marks = marks.any() and grey[marks].mean() > 0.5
    return grey * alpha + (0.0 if light_marks else 1.0) * (1 - alpha)


def read_digit(grey: np.ndarray, scale: float = 1.0) -> Reading:
    """The 28x28 input the model needs, made from a picture of one digit as MNIST's were made.

    MNIST's digits are pen strokes scanned in black and white, scaled to fit 20x20 with their
    aspect ratio kept (which anti-aliases them) and centred by centre of mass in 28x28. So the
    picture's ink is found and thresholded, ruled lines, specks and a box drawn around the
    digit are left out, the pen's width is brought within MNIST's, and then MNIST's own steps
    follow. Sizes in the notes are in the user's pixels, `scale` of them to each pixel of `grey`.
    """
    ink, between, enlarged = ink_map(grey)
    strokes, between_paper, strength = ink_strokes(ink, between)
    marks, several = digit_marks(without_shadow_edges(without_frames(without_ruled_lines(strokes)), between_paper),
                                 SMALL_DIGIT * enlarged)
    notes = []
    if several:
        notes.append("several marks: used the largest")
    height = marks.shape[0] / enlarged  # in the pixels read, which a large picture has fewer of than the user's
    if height * scale < SMALL_DIGIT:
        notes.append(f"the digit is only {round(height * scale)} pixels tall")
    elif height < SMALL_DIGIT:
        notes.append(f"the digit is small for so large a picture ({round(height * scale)} pixels tall): "
                     "crop closer to it")
    if marks.sum() * (scale / enlarged) ** 2 < LITTLE_INK:
        notes.append("almost no ink")
    if strength < FAINT_CONTRAST:
        notes.append("very faint")
    digit = fit_in_box(with_mnist_strokes(marks), DIGIT_BOX)
    return Reading(centre_by_mass(digit, FIELD), notes)


def ink_map(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """How much ink each pixel holds, 0 (paper) to 1, whatever the polarity, lighting and pencil.

    The first map measures it against the brightest paper near the pixel, the second against the
    paper on both sides of it (see paper_on_both_sides): a stroke is darker than both, the edge of
    a shadow only than the lit side. A tiny picture is enlarged first, so that its strokes are
    several pixels wide; the third value says by how much.
    """
    from PIL import Image
    from scipy import ndimage

    factor = 1
    if max(grey.shape) < 100:
        factor = -(-100 // max(grey.shape))
        grey = np.kron(grey, np.ones((factor, factor), np.float32))
    grey = on_the_page(grey)
    # The paper's brightness around each pixel: the brightest value in a window wider than a
    # stroke, taken on a small copy. Dividing by it evens out shadows and uneven lighting.
    height, width = grey.shape
    scale = 48 / max(height, width)
    small = Image.fromarray(np.uint8(grey * 255)).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    small = np.asarray(small)
    # Inside a stroke wider than the window (a marker, a blurred scan) the brightest value is ink:
    # the paper is never taken to be darker than this share of the page's own brightness.
    darkest = np.uint8(DARKEST_PAPER * np.percentile(small, 95))

    def ink_against(paper: np.ndarray) -> np.ndarray:
        paper = Image.fromarray(np.maximum(paper, darkest)).resize((width, height), Image.Resampling.BILINEAR)
        return np.clip(1 - grey / np.maximum(np.asarray(paper, np.float32) / 255, 1e-3), 0, 1)

    brightest = ndimage.maximum_filter(small, size=9, mode="nearest")
    return ink_against(brightest), ink_against(paper_on_both_sides(small, PAPER_REACH)), factor


def paper_on_both_sides(small: np.ndarray, reach: int) -> np.ndarray:
    """The paper's brightness beside each pixel as a stroke has it: the brightest value within `reach`
    pixels on each side, the darker of the two sides, along a row or down a column, whichever is brighter.

    A stroke has paper on both sides of it in some direction; a pixel just inside a shadow has the
    lit paper on one side only, and the shadow on the other. Beyond the picture's edge lies its
    mirror image, so that a stroke along the edge of a tight crop still has paper beyond it.
    """
    from scipy import ndimage

    def brightest(axis: int, side: int) -> np.ndarray:
        return ndimage.maximum_filter1d(small, size=reach + 1, axis=axis, mode="reflect", origin=side * (reach // 2))

    along_rows, down_columns = (np.minimum(brightest(axis, 1), brightest(axis, -1)) for axis in (1, 0))
    return np.maximum(along_rows, down_columns)


def on_the_page(grey: np.ndarray) -> np.ndarray:
    """The picture as dark ink on light paper, with whatever lies around the page (a desk) painted paper.

    A page lying on something far darker is light (see page_on_desk); otherwise the picture's
    border is paper (a digit cropped close, a blackboard).
    """
    from PIL import Image

    height, width = grey.shape
    scale = PAGE_VIEW / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(grey, "F").resize(size, Image.Resampling.BOX), np.float32)
    page = page_on_desk(small)
    if page is None:  # light ink on dark paper is turned over: a border dark, and on the dark side of the split
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        return 1 - grey if np.median(border) < min(0.5, otsu_threshold(small)) else grey
    paper = float(np.median(small[page]))
    inside = np.asarray(Image.fromarray(page.astype(np.float32), "F").resize(
        (width, height), Image.Resampling.BILINEAR)) > 0.5
    return np.where(inside, grey, paper).astype(np.float32)


def page_on_desk(small: np.ndarray) -> np.ndarray | None:
    """Where the page is, less its edge, if the picture shows a page lying on something far darker; else None.

    The page is the largest light region (the picture split into light and dark, Otsu's way)
    with the ink on it: a roomy rectangle, mostly paper, meeting less than half of the picture's border,
    while one region less than half as bright (not a shadow) meets more. A chalk digit on a
    blackboard is light and surrounded too, but is mostly the board between its strokes.
    """
    from scipy import ndimage

    light = small > otsu_threshold(small)
    labels, count = ndimage.label(light)
    if count == 0:
        return None
    largest = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    around, _ = ndimage.label(~light & (small < FAR_DARKER * np.median(small[largest])))
    edge, around_edge = (np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]) for a in (largest, around))
    if edge.mean() >= 0.5 or np.bincount(around_edge)[1:].max(initial=0) < 0.5 * len(edge):
        return None
    page = convex_hull(largest)  # with the ink on it, even where a stroke reaches its edge
    rows, columns = np.nonzero(page)
    room = ndimage.distance_transform_edt(np.pad(page, 1)).max()  # the widest circle's radius, + 1
    if (rectangle_share(page) < PAGE_RECTANGLE or largest.sum() < PAGE_PAPER * page.sum()
            or room < PAGE_ROOM * max(np.ptp(rows), np.ptp(columns)) + 1):
        return None
    page = ndimage.binary_erosion(page, iterations=PAGE_EDGE)
    return page if page.any() else None


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The smallest convex region holding the mask's pixels (the mask itself if they lie on a line)."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.argwhere(mask)
    try:
        hull = ConvexHull(points)
    except QhullError:
        return mask
    grid = np.indices(mask.shape).reshape(2, -1).T
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5).all(axis=1)
    return inside.reshape(mask.shape)


def rectangle_share(mask: np.ndarray) -> float:
    """How much of the smallest rectangle around the mask, turned any way (in 3-degree steps), it fills."""
    points = np.stack(np.nonzero(mask)).astype(np.float32)
    angles = np.radians(np.arange(0, 90, 3))
    turns = np.stack([np.stack([np.cos(angles), -np.sin(angles)], 1), np.stack([np.sin(angles), np.cos(angles)], 1)], 1)
    along = turns @ points  # each angle: the points in axes turned by it
    return points.shape[1] / float(np.min(np.prod(np.ptp(along, axis=2) + 1, axis=1)))


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level that splits the values into two classes as different as can be (Otsu, 1979)."""
    counts, edges = np.histogram(values, bins=64, range=(0, 1))
    below = np.cumsum(counts)[:-1]  # how many values lie below each candidate threshold ...
    below_sum = np.cumsum(counts * edges[:-1])[:-1]  # ... and their sum
    total, total_sum = counts.sum(), float((counts * edges[:-1]).sum())
    between = (total_sum * below - below_sum * total) ** 2 / np.maximum(below * (total - below), 1)
    return float(edges[1 + between.argmax()])


def ink_strokes(ink: np.ndarray, between: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The pixels that are pen strokes, those of them that stand out as much against the paper on
    both sides of them (`between`, see ink_map), and how strongly the strokes stand out from the paper (0-1).

    A pixel is a stroke where it holds at least half the strokes' full ink: the width at half
    strength is a stroke's true width, and paler marks (ruled lines, paper texture, noise) drop out.
    The paper is what is left of the picture without what clearly stands out (a bold digit may fill
    most of it); its noise is measured, so that a blank page is not read as strokes however the
    light falls.
    """
    sample, beside = ink[::2, ::2], between[::2, ::2]  # a quarter of the pixels tell the paper's grey as well
    if (sample > MIN_INK_CONTRAST).mean() > BOLD_INK_SHARE:  # the ink would skew the paper's grey and noise
        papery = sample <= MIN_INK_CONTRAST
        sample, beside = sample[papery], beside[papery]
    paper = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - paper)))  # the spread of the paper's grey, robustly
    standing_out = ink > paper + max(MIN_INK_CONTRAST, NOISE_LEVELS * noise)
    if standing_out.sum() < MIN_INK_PIXELS:
        raise PictureError(BLANK_PICTURE)
    strength = float(np.percentile(ink[standing_out], 90)) - paper
    above = max(strength / 2, NOISE_LEVELS * noise)  # above the paper's own level in each map
    return ink > paper + above, between > float(np.median(beside)) + above, strength


def without_shadow_edges(strokes: np.ndarray, between_paper: np.ndarray) -> np.ndarray:
    """The strokes less what is darker than the paper on one side only: the edge of a shadow.

    Taken off after the ruled lines, which are found whole in `strokes`, however faint in parts.
    """
    kept = strokes & between_paper
    if kept.sum() < MIN_INK_PIXELS:
        raise PictureError(BLANK_PICTURE)
    return kept


def without_ruled_lines(strokes: np.ndarray) -> np.ndarray:
    """The strokes less ruled lines: thin straight lines across most of the picture that repeat at a
    spacing (ruled or squared paper) or run well past the rest of the ink on both sides (a margin).

    Where the digit touches or crosses a line, the ink there is taller than the line and is kept.
    A single line that does neither is part of the digit (a 7's bar in a picture cropped to it), and
    so is a lone stroke that is all the ink, unless it lies flat (a 1 is never drawn lying down).
    A page with nothing but ruled lines on it is blank.
    """
    across = ruled_lines(strokes, lone_is_ruled=True)
    margin = line_count(across) >= MARGIN_CROSSES  # a line down a page ruled across is its margin
    lines = across | ruled_lines((strokes & ~across).T, lone_is_ruled=margin).T
    kept = strokes & ~lines
    if kept.sum() < MIN_INK_PIXELS:  # what the lines leave is specks, not a digit
        raise PictureError(BLANK_PICTURE)
    return kept


def ruled_lines(strokes: np.ndarray, lone_is_ruled: bool) -> np.ndarray:
    """The pixels of the nearly horizontal ruled lines (see without_ruled_lines); a single line
    that is all the ink counts if `lone_is_ruled` and it lies flat."""
    lines = thin_long_lines(strokes)
    if line_count(lines) != 1:
        return lines
    rows = np.flatnonzero(lines.any(axis=1))
    ends = np.flatnonzero(lines.any(axis=0))
    length = ends[-1] - ends[0] + 1
    rest = np.flatnonzero((strokes & ~lines).any(axis=0))
    if not len(rest):
        flat = rows[-1] - rows[0] + 1 <= LONE_LINE_SLOPE * length
        return lines if lone_is_ruled and flat else np.zeros_like(lines)
    past = RULED_PAST * length
    beyond = ends[0] + past <= np.percentile(rest, 2) and np.percentile(rest, 98) + past <= ends[-1]
    return lines if beyond else np.zeros_like(lines)


def line_count(lines: np.ndarray) -> int:
    """How many nearly horizontal lines the mask holds: they lie in rows of their own."""
    rows = np.flatnonzero(lines.any(axis=1))
    return len(rows) and 1 + int((np.diff(rows) > 1).sum())


def thin_long_lines(strokes: np.ndarray) -> np.ndarray:
    """The pixels of thin, nearly horizontal lines that run across most of the picture's width."""
    height, width = strokes.shape
    runs = vertical_run_lengths(strokes)
    thin = strokes & (runs <= RULED_LINE_THICKNESS * max(height, width))  # not the lines across them (squared paper)
    pool = max(1, width // 64)  # columns per step: a line may climb one row per step
    columns = width // pool
    pooled = thin[:, :columns * pool].reshape(height, columns, pool).any(axis=2)
    if bridged(pooled.any(axis=0)[np.newaxis], RULED_LINE_GAP).mean() < RULED_LINE:  # no line can cross this few columns
        return np.zeros_like(strokes)
    pooled = bridged(pooled, RULED_LINE_GAP)
    ahead, behind = path_lengths(pooled), path_lengths(pooled[:, ::-1])[:, ::-1]
    on_line = (ahead + behind - 1 >= RULED_LINE * columns)
    line = thin & expand_columns(on_line, pool, width)
    if not line.any():
        return line
    thickness = np.median(runs[line])
    return line & (runs <= 1.5 * thickness + 1)


def bridged(mask: np.ndarray, gap: int) -> np.ndarray:
    """The mask with, row by row, every gap of up to `gap` columns between ink filled in."""
    columns = np.arange(mask.shape[1])
    before = np.maximum.accumulate(np.where(mask, columns, -gap - 2), axis=1)  # the last ink up to each column
    after = np.minimum.accumulate(np.where(mask, columns, mask.shape[1] + gap + 1)[:, ::-1], axis=1)[:, ::-1]
    return mask | (after - before - 1 <= gap)  # ... and the next: the gap between them


def expand_columns(pooled: np.ndarray, pool: int, width: int) -> np.ndarray:
    """Undo the pooling of columns: each pooled column stands for `pool` columns (the last for the rest)."""
    wide = np.repeat(pooled, pool, axis=1)
    return np.pad(wide, ((0, 0), (0, width - wide.shape[1])), mode="edge")


def path_lengths(mask: np.ndarray) -> np.ndarray:
    """For each pixel, the longest run of ink ending there, moving one column right and at most one row each step."""
    lengths = np.zeros(mask.shape, np.int32)
    previous = np.zeros(mask.shape[0], np.int32)
    for column in range(mask.shape[1]):
        best = previous.copy()
        best[1:] = np.maximum(best[1:], previous[:-1])
        best[:-1] = np.maximum(best[:-1], previous[1:])
        previous = np.where(mask[:, column], best + 1, 0)
        lengths[:, column] = previous
    return lengths


def vertical_run_lengths(mask: np.ndarray) -> np.ndarray:
    """For each ink pixel, the height of the unbroken run of ink in its column."""
    from scipy import ndimage

    runs, _ = ndimage.label(mask, structure=[[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    sizes = np.bincount(runs.ravel())
    sizes[0] = 0
    return sizes[runs]


def without_frames(strokes: np.ndarray) -> np.ndarray:
    """The strokes less any box drawn around the digit: a mark whose ink runs along all four edges of its bounds.

    The box's edges are taken off; what it held, even where it touched the box, stays.
    """
    from scipy import ndimage

    labels, _ = ndimage.label(strokes, structure=np.ones((3, 3)))
    kept = strokes.copy()
    for number, (rows, columns) in enumerate(ndimage.find_objects(labels), start=1):
        mark = labels[rows, columns] == number
        band = max(2, round(FRAME_BAND * min(mark.shape)))
        if min(mark.shape) < 4 * band:
            continue
        edges = (mark[:band].any(axis=0), mark[-band:].any(axis=0),
                 mark[:, :band].any(axis=1), mark[:, -band:].any(axis=1))
        if all(edge.mean() >= FRAME_EDGE_SHARE for edge in edges):
            ring = np.ones(mark.shape, bool)
            ring[band:-band, band:-band] = False
            kept[rows, columns] &= ~(mark & ring)
    return kept if kept.any() else strokes


def digit_marks(strokes: np.ndarray, small: int) -> tuple[np.ndarray, bool]:
    """The marks that form the digit, cropped to them, and whether other digit-sized marks were left out.

    Marks close together (the parts of a broken pen stroke, a 5's flag) form one group; specks
    are left out; of several groups, the largest is the digit. If it is smaller than `small`
    pixels and several others are nearly as large, they are all grain (a noisy blank page).
    """
    from scipy import ndimage

    labels, count = ndimage.label(strokes, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    marks = [i for i in np.argsort(-areas)[:MAX_MARKS] if areas[i] >= SPECK * areas.max()]
    groups = group_marks(marks, boxes)
    size = {id(group): sum(areas[i] for i in group) for group in groups}
    groups.sort(key=lambda group: -size[id(group)])
    chosen = groups[0]
    top, bottom, left, right = bounds([boxes[i] for i in chosen])
    height = bottom - top
    several = any(size[id(group)] >= SEVERAL_MARKS * size[id(chosen)]
                  and bounds([boxes[i] for i in group])[1] - bounds([boxes[i] for i in group])[0] >= height / 2
                  for group in groups[1:])
    if max(height, right - left) < small and sum(size[id(g)] >= size[id(chosen)] / 2 for g in groups[1:]) >= GRAIN:
        raise PictureError(BLANK_PICTURE)
    crop = np.isin(labels[top:bottom, left:right], [i + 1 for i in chosen])
    return crop, several


def bounds(boxes: list[tuple[slice, slice]]) -> tuple[int, int, int, int]:
    """Top, bottom, left and right of the box around all these boxes."""
    return (min(b[0].start for b in boxes), max(b[0].stop for b in boxes),
            min(b[1].start for b in boxes), max(b[1].stop for b in boxes))


def group_marks(marks: list[int], boxes) -> list[list[int]]:
    """Marks close enough to be parts of one digit, as groups (single linkage)."""
    groups = [[mark] for mark in marks]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if any(close(boxes[i], boxes[j]) for i in groups[a] for j in groups[b]):
                    groups[a] += groups.pop(b)
                    merged = True
                    break
            if merged:
                break
    return groups


def close(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    """Whether two marks belong to one digit: nearly touching, or one above the other."""
    gap_rows = max(a[0].start, b[0].start) - min(a[0].stop, b[0].stop)
    gap_columns = max(a[1].start, b[1].start) - min(a[1].stop, b[1].stop)
    size = max(a[0].stop - a[0].start, b[0].stop - b[0].start, a[1].stop - a[1].start, b[1].stop - b[1].start)
    narrower = min(a[1].stop - a[1].start, b[1].stop - b[1].start)
    touching = max(gap_rows, gap_columns) <= max(2, MARK_GAP * size)
    stacked = -gap_columns >= narrower / 2 and gap_rows <= STACKED_GAP * size
    return touching or stacked


def stroke_width(mask: np.ndarray) -> float:
    """The strokes' mean width in pixels: their area over half the length of their outline."""
    padded = np.pad(mask, 1)
    outline = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    return 2 * mask.sum() / max(outline, 1)


def with_mnist_strokes(marks: np.ndarray) -> np.ndarray:
    """The digit's marks with the pen's width brought within MNIST's, at STROKE_FRAME pixels or more.

    A ballpoint's line is far thinner, relative to the digit, than the strokes MNIST was
    written with, and a marker's far bolder; the model only knows MNIST's.
    """
    from PIL import Image
    from scipy import ndimage

    height, width = marks.shape
    scale = STROKE_FRAME / max(height, width)
    if scale > 1:  # a small digit: enlarge it, so that the width can be set finely
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        marks = np.asarray(Image.fromarray(marks.astype(np.float32), "F").resize(
            size, Image.Resampling.BILINEAR)) > 0.5
    low, high = MNIST_STROKE
    if width_in_box(marks) < low:  # thicken: keep every pixel within some distance of the ink
        reach = max(marks.shape) * low / DIGIT_BOX  # more than the widest pen MNIST's range needs
        distance = ndimage.distance_transform_edt(~np.pad(marks, int(reach) + 2))
        marks = distance <= smallest(lambda r: width_in_box(distance <= r) >= low, reach)
    elif width_in_box(marks) > high:  # thin: keep only the pixels deeper inside the ink than some distance
        depth = ndimage.distance_transform_edt(np.pad(marks, 1))
        thinner = depth > smallest(lambda r: width_in_box(depth > r) <= high, depth.max())
        marks = thinner if thinner.any() else marks  # a blob with no strokes to thin
    rows, columns = np.nonzero(marks)
    return marks[rows.min():rows.max() + 1, columns.min():columns.max() + 1].astype(np.float32)


def width_in_box(marks: np.ndarray) -> float:
    """The strokes' width once the marks are scaled to fit the 20x20 box (0 if there are none)."""
    rows, columns = np.flatnonzero(marks.any(axis=1)), np.flatnonzero(marks.any(axis=0))
    if not len(rows):
        return 0.0
    return stroke_width(marks) * DIGIT_BOX / max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1)


def smallest(holds: Callable[[float], bool], upper: float) -> float:
    """The smallest value in [0, upper] for which `holds` is true, which it stays above it (bisection)."""
    low, high = 0.0, upper
    for _ in range(STROKE_STEPS):
        middle = (low + high) / 2
        low, high = (low, middle) if holds(middle) else (middle, high)
    return high


def fit_in_box(digit: np.ndarray, box: int) -> np.ndarray:
    """Scale so that the longer side is `box` pixels, keeping the aspect ratio, anti-aliased."""
    from PIL import Image

    height, width = digit.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(digit.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, np.float32), 0, 1)


def centre_by_mass(digit: np.ndarray, field: int) -> np.ndarray:
    """Place `digit` in a field x field square so that its centre of mass is the centre."""
    height, width = digit.shape
    rows, columns = np.indices(digit.shape)
    mass = digit.sum()
    centre_row, centre_column = (rows * digit).sum() / mass, (columns * digit).sum() / mass
    top = int(np.clip(round(field / 2 - centre_row), 0, field - height))
    left = int(np.clip(round(field / 2 - centre_column), 0, field - width))
    placed = np.zeros((field, field), np.float32)
    placed[top:top + height, left:left + width] = digit
    return placed


def load_trained_model(path: Path):
    import h5py
    import keras

    if path.suffix == ".keras" and h5py.is_hdf5(path):
        raise DataError(f"{path}: an HDF5 model (Keras's .h5 format) named .keras; rename it to end in .h5")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # h5py, Keras and zip all raise their own kinds
        raise DataError(f"{path}: not a readable Keras model ({error})") from None
    if model.input_shape != (None, *IMAGE_SHAPE) or model.output_shape != (None, NUM_CLASSES):
        raise DataError(f"{path}: this model takes {model.input_shape} and gives {model.output_shape}; "
                        "expected 28x28 images in and 10 digit probabilities out")
    return model


def chosen_model(args: argparse.Namespace) -> Path:
    """The model file --predict and --serve use, checked before seconds are spent starting TensorFlow."""
    if args.model is None and not (args.output_dir / MODEL_FILE).exists():
        raise DataError(f"no {MODEL_FILE} in {args.output_dir.resolve()}: train one first with: "
                        "python train.py, or name one with --model PATH")
    path = args.model or args.output_dir / MODEL_FILE
    check_model_file(path)
    return path


def check_model_file(path: Path) -> None:
    """Say what is wrong with the model file, if anything: in words of our own, not Keras's
    paragraph about its formats."""
    import h5py

    if path.is_dir():
        raise DataError(f"{path}: a folder, not a model file")
    if not path.is_file():
        raise DataError(f"{path}: no such model file; train one first with: python train.py")
    try:
        keras_format = h5py.is_hdf5(path) or zipfile.is_zipfile(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read the model file ({error.strerror or error})") from None
    if not keras_format:
        raise DataError(f"{path}: not a readable Keras model (a model is a .h5 or .keras file saved by Keras)")


class Recognizer:
    """A trained model and its confidence calibration: the answers --predict and --serve give.

    One instance serves every request thread of --serve. The model is called by one thread at a
    time, and a call costs about the same for one input as for dozens, so the thread that calls
    it takes every input waiting at that moment along (answer): under load, one call answers
    many requests.
    """

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        self.model = load_trained_model(model_path)
        self.temperature = model_temperature(model_path)
        if self.temperature is None:
            warn(f"{model_path} holds no confidence calibration (it was not trained by this script): "
                 "the confidence printed is the model's own, often too sure")
        self.model_lock = threading.Lock()
        self.waiting_lock = threading.Lock()
        self.waiting: list[dict] = []

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """The calibrated probabilities of the ten digits, one row per 28x28 input."""
        with self.model_lock:
            return self.classified(images)

    def answer(self, image: np.ndarray) -> np.ndarray:
        """The calibrated probabilities for one input, computed together with any others waiting."""
        request = {"image": image}
        with self.waiting_lock:
            self.waiting.append(request)
        with self.model_lock:
            if "row" not in request and "error" not in request:  # nobody has taken it along yet: take everything waiting
                with self.waiting_lock:
                    batch, self.waiting = self.waiting, []
                self.answer_together(batch)
        if "error" in request:
            raise request["error"]
        return request["row"]

    def answer_together(self, batch: list[dict]) -> None:
        """Each waiting request's row, in one call; if that call fails, each input alone, so that only
        the inputs that fail get the error."""
        try:
            rows = self.classified([waiting["image"] for waiting in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0]["error"] = error
                return
            for waiting in batch:
                self.answer_together([waiting])
            return
        for waiting, row in zip(batch, rows):
            waiting["row"] = row

    def classified(self, images: list[np.ndarray]) -> np.ndarray:
        """The model's call itself: only with model_lock held."""
        return calibrated(self.model.predict_on_batch(np.stack(images)), self.temperature or 1.0)


def model_temperature(path: Path) -> float | None:
    """The confidence calibration saved with the model by training; None for a model from elsewhere."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            value = file.attrs.get(TEMPERATURE_ATTRIBUTE)
    except OSError:  # not HDF5 (a .keras file): no calibration to read
        return None
    return None if value is None else float(value)


def pictures_in(paths: list[Path]) -> list[Path]:
    """The pictures to classify: the files named, and the pictures in the folders named, sorted.

    What a folder holds that is not a picture (a folder inside it, too) is skipped with a note;
    hidden files silently.
    """
    from PIL import Image

    known = {extension.lower(): kind for extension, kind in Image.registered_extensions().items()}
    kinds = {extension for extension, kind in known.items() if kind in PICTURE_FORMATS}
    pictures = []
    for path in paths:
        if not path.is_dir():
            pictures.append(path)
            continue
        found = [entry for entry in sorted(path.iterdir()) if not entry.name.startswith(".")]
        for entry in found:
            if entry.is_file() and entry.suffix.lower() in kinds:
                pictures.append(entry)
            elif entry.is_dir():
                print(f"{entry}: skipped: a folder (only the pictures directly in {path} are read)", file=sys.stderr)
            else:
                why = NOT_A_PICTURE_FORMAT if entry.suffix.lower() in known else "not a picture"
                print(f"{entry}: skipped: {why}", file=sys.stderr)
        if not any(entry.is_file() and entry.suffix.lower() in kinds for entry in found):
            pictures.append(path)  # reported as an error: a folder with no pictures
    return pictures


def save_preprocessed(reading: Reading, path: Path, folder: Path, used: set[str]) -> None:
    """The 28x28 input the model saw for the picture `path`, as DIR/<its name>.png (-2, -3, ... for a
    name already used in this run)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    name, copy = f"{path.stem}.png", 1
    while name in used:
        copy += 1
        name = f"{path.stem}-{copy}.png"
    used.add(name)
    Image.fromarray(np.uint8(np.round(reading.image * 255))).save(folder / name)


def answer_line(path: Path, row: np.ndarray, notes: list[str]) -> str:
    return f"{path}: {row.argmax()} ({'; '.join([f'{100 * row.max():.1f}%', *notes])})"


def answer_json(path: Path, row: np.ndarray | None, notes: list[str], error: str | None = None) -> str:
    if error is not None:
        return json.dumps({"path": str(path), "error": error})
    return json.dumps({"path": str(path), "digit": int(row.argmax()), "confidence": round(float(row.max()), 4),
                       "probabilities": [round(float(p), 4) for p in row], "notes": notes})


def predict(args: argparse.Namespace) -> int:
    """Classify each picture in order, saying each answer as soon as it is known (so a long folder
    shows its progress, and an interrupted one keeps what it said); 1 if any picture could not be read.

    TensorFlow starts with the first picture that holds a digit: a batch of bad files is told at once.
    """
    model_path = chosen_model(args)
    recognizer, failed, saved_names = None, False, set()
    for path in pictures_in(args.predict):
        try:
            reading = read_digit(*open_picture(path))
        except PictureError as error:
            failed = True
            if args.format == "json":
                print(answer_json(path, None, [], str(error)))
            else:
                print(f"{path}: error: {error}", file=sys.stderr)
            continue
        if recognizer is None:
            start_tensorflow(SEED)
            recognizer = Recognizer(model_path)
        [row] = recognizer.probabilities([reading.image])
        print(answer_json(path, row, reading.notes) if args.format == "json" else answer_line(path, row, reading.notes))
        if args.save_preprocessed is not None:
            with writing_to(args.save_preprocessed):
                save_preprocessed(reading, path, args.save_preprocessed, saved_names)
    return EXIT_ERROR if failed else 0


# -----------------------------------------------------------------------------
# Drawing digits in the browser (--serve): the page and one API, on the same model
# -----------------------------------------------------------------------------
class ServeError(Exception):
    """The server could not start; the message says why and what to do."""


def page_with_policy(model_path: Path) -> tuple[bytes, str]:
    """draw.html, with the model named in it, and a Content-Security-Policy that allows only its
    own inline script and style (by their hashes) and requests to this server."""
    import base64
    import hashlib
    import html

    path = Path(__file__).with_name(PAGE_FILE)
    try:
        page = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ServeError(f"{path}: cannot read the drawing page ({error.strerror})") from None
    metrics = model_path.with_name(METRICS_FILE)
    about = model_path.name
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        about += f" ({100 * json.loads(metrics.read_text())['test_accuracy']:.2f}% right on MNIST's test set)"
    page = page.replace("<!--model-->", html.escape(about))
    hashes = {kind: " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
                             for block in re.findall(rf"<{kind}>(.*?)</{kind}>", page, re.S))
              for kind in ("script", "style")}
    policy = (f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
              "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return page.encode(), policy


def answer_for_page(recognizer: Recognizer, body: bytes, kind: str, readers: threading.BoundedSemaphore) -> dict:
    """What POST /predict answers: the digit, its calibrated confidence, the ten probabilities,
    the 28x28 input the model saw, and the notes, exactly as --predict reads the same picture.
    `kind` is the request's Content-Type: a form upload (multipart/form-data) holds the picture."""
    import io

    if kind.lower().startswith("multipart/form-data"):
        body = uploaded_file(body, kind)
    if not body:
        raise PictureError("file is empty")  # as --predict says it
    with readers:  # a few pictures at a time, each of a bounded size: a burst of huge photos cannot exhaust memory
        reading = read_digit(*picture_from(io.BytesIO(body), SERVE_MAX_PIXELS))
    row = recognizer.answer(reading.image)
    return {"digit": int(row.argmax()), "confidence": round(float(row.max()), 4),
            "probabilities": [round(float(p), 4) for p in row],
            "input": np.round(reading.image.astype(np.float64), 3).tolist(),
            "notes": reading.notes}


def uploaded_file(body: bytes, kind: str) -> bytes:
    """The one file of a form upload (`curl -F file=@seven.png`), from the multipart body."""
    import email.message
    import email.parser

    header = email.message.Message()
    header["Content-Type"] = kind
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise PictureError("a form upload without its boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    files = []
    start = 0 if body.startswith(delimiter[2:]) else body.find(delimiter)  # where "--boundary" starts
    start += 2 if start > 0 else 0
    while start >= 0:
        head_start = body.find(b"\r\n", start + len(delimiter) - 2) + 2
        head_end = body.find(b"\r\n\r\n", head_start)
        end = body.find(delimiter, head_end)
        if head_start < 2 or head_end < 0 or end < 0:
            break
        part = email.parser.BytesHeaderParser().parsebytes(body[head_start:head_end + 4])
        if part.get_param("filename", header="Content-Disposition") is not None:
            files.append((head_end + 4, end))
        start = end + 2
    if len(files) != 1:
        raise PictureError(f"a form upload must hold one file; this one holds {len(files)}")
    return body[files[0][0]:files[0][1]]


class Refused(Exception):
    """A request answered with an error before its body is read: the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def body_length(headers) -> int:
    """The length of the picture a request declares, checked before anything is read."""
    values = headers.get_all("Content-Length") or []
    if not values or headers.get("Transfer-Encoding"):
        raise Refused(411, "send the picture with a Content-Length")
    text = values[0].strip()
    if len(set(values)) > 1:
        raise Refused(400, "two different Content-Lengths")
    if re.fullmatch(r"-[0-9]+", text):
        raise Refused(400, f"Content-Length is negative ({text[:20]})")
    if not re.fullmatch(r"[0-9]+", text):
        raise Refused(400, f"Content-Length must be a number of bytes, not {text[:20]!r}")
    if len(text) > 20:
        raise Refused(413, f"picture too large: a Content-Length of {len(text):,} digits; "
                           f"at most {SERVE_MAX_BYTES // 2**20} MiB")
    if int(text) > SERVE_MAX_BYTES:
        raise Refused(413, f"picture too large: {int(text):,} bytes; at most {SERVE_MAX_BYTES // 2**20} MiB")
    return int(text)


def unread_length(headers) -> int | None:
    """How much body a request still has to send, if that can be told (for draining it)."""
    if headers is None:
        return None
    text = (headers.get("Content-Length") or "").strip()
    if re.fullmatch(r"[0-9]{1,20}", text):
        return int(text)
    return None if text or headers.get("Transfer-Encoding") else 0


class ByteBudget:
    """The bytes of pictures a process holds at once: a request waits until its picture fits."""

    def __init__(self, total: int) -> None:
        self.free = total
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, count: int, deadline: float) -> Iterator[bool]:
        """True once `count` bytes are set aside for the request; False if they were not free by `deadline`."""
        with self.changed:
            fits = self.changed.wait_for(lambda: self.free >= count, timeout=deadline - time.monotonic())
            if fits:
                self.free -= count
        try:
            yield fits
        finally:
            if fits:
                with self.changed:
                    self.free += count
                    self.changed.notify_all()


def served_names(host: str) -> frozenset[str]:
    """The host names the server answers to (besides addresses): a page under any other name is
    refused, so that a page elsewhere cannot reach it by renaming itself (DNS rebinding)."""
    import socket

    names = {"localhost", host.lower().strip("[]")}  # as given to --host: an address or a name
    if is_wildcard(host):
        with contextlib.suppress(OSError):
            names |= {socket.gethostname().lower(), f"{socket.gethostname().lower()}.local",
                      socket.getfqdn().lower()}
    return frozenset(names)


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def foreign_request(headers, names: frozenset[str], local_address: str) -> str | None:
    """Why a request comes from a page elsewhere, if it does: a Host the server is not known by,
    or another page's Origin."""
    import ipaddress

    host = headers.get("Host")
    if host is not None:
        name = host.lower()
        name = name[1:name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            known = name in names
        else:
            here = ipaddress.ip_address(local_address.split("%")[0])
            here = getattr(here, "ipv4_mapped", None) or here
            known = address == here or address.is_loopback and here.is_loopback
        if not known:
            return f"this server is not known as {host!r}: open it at the address it printed"
    origin = headers.get("Origin")
    if origin is not None and (host is None or origin.lower() != f"http://{host.lower()}"):
        return f"requests from other pages ({origin[:100]}) are refused"
    return None


def make_handler(recognizer: Recognizer, page: bytes, policy: str, quiet: bool, names: frozenset[str],
                 deadline: float = SERVE_DEADLINE_SECONDS, body_bytes: int = SERVE_BODY_BYTES):
    """The request handler class: every request has `deadline` seconds from its first byte to its
    answer, and the pictures held at once take at most `body_bytes`."""
    import http.server
    import socket
    from http import HTTPStatus
    from urllib.parse import urlsplit

    readers = threading.BoundedSemaphore(SERVE_READERS)
    budget = ByteBudget(body_bytes)

    class DeadlineReader(socket.SocketIO):
        """A connection's reads, each allowed only the time left before `until` (a monotonic time):
        a client trickling a byte at a time is cut off all the same."""
        until = 0.0

        def readinto(self, buffer) -> int | None:
            left = self.until - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's deadline passed")
            self._sock.settimeout(left)
            return super().readinto(buffer)

    class Handler(http.server.BaseHTTPRequestHandler):
        """GET / is the page, POST /predict the API; anything else an error in JSON. Nothing on disk is served."""
        protocol_version = "HTTP/1.1"  # keep-alive: a drawing sends many requests
        disable_nagle_algorithm = True  # an answer's head and body go out at once, not 40 ms apart
        server_version = "train.py"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by one that keeps the request's deadline
            self.reader = DeadlineReader(self.connection, "rb")
            self.rfile = io.BufferedReader(self.reader)

        def handle_one_request(self) -> None:
            """Wait up to SERVE_IDLE_SECONDS for a request; from its first byte, it has `deadline` seconds."""
            self.reader.until = time.monotonic() + SERVE_IDLE_SECONDS
            try:
                waiting = self.rfile.peek(1)
            except OSError:  # silent for too long, or gone
                waiting = b""
            if not waiting:
                self.close_connection = True
                return
            self.started, self.answered = time.perf_counter(), False
            self.command, self.path, self.request_version, self.headers = None, "", "HTTP/1.1", None
            self.reader.until = time.monotonic() + deadline
            super().handle_one_request()
            if self.reader._timeout_occurred and not self.answered:
                self.refuse(HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive within {deadline:g} seconds")

        def parse_request(self) -> bool:
            """http.server's parsing, and then: only requests from the page itself or from scripts."""
            if not super().parse_request():
                return False
            problem = foreign_request(self.headers, names, self.connection.getsockname()[0])
            if problem:
                self.refuse(HTTPStatus.FORBIDDEN, problem)
            return not problem

        def handle_expect_100(self) -> bool:
            return True  # "100 Continue" is said by do_POST, once the picture's length is accepted

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/predict":
                return self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "use POST")
            if path != "/":
                return self.refuse(HTTPStatus.NOT_FOUND, "no such page")
            self.send(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": policy})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path != "/predict":
                return self.refuse(HTTPStatus.METHOD_NOT_ALLOWED if path == "/" else HTTPStatus.NOT_FOUND,
                                   "post pictures to /predict")
            try:
                length = body_length(self.headers)
            except Refused as refusal:
                return self.refuse(refusal.status, str(refusal))
            with budget.held(length, self.reader.until) as fits:
                if not fits:
                    return self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the server is busy: try again in a moment",
                                       {"Retry-After": "5"})
                if self.headers.get("Expect", "").lower() == "100-continue":
                    self.send_response_only(HTTPStatus.CONTINUE)
                    self.end_headers()
                body = self.rfile.read(length)  # past the deadline: TimeoutError, answered 408
                if len(body) < length:
                    return self.refuse(HTTPStatus.BAD_REQUEST,
                                       f"the picture ended after {len(body):,} of its {length:,} bytes")
                try:
                    answer = answer_for_page(recognizer, body, self.headers.get("Content-Type", ""), readers)
                except PictureError as error:
                    return self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            self.send_json(HTTPStatus.OK, answer)

        def not_allowed(self) -> None:
            self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here")

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = not_allowed

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own errors (a malformed request, an unknown method) as JSON too."""
            self.refuse(code, message or HTTPStatus(code).phrase)

        def refuse(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
            """An error answered before the request's body is read; then the connection is closed,
            after reading what the client still sends: closing with data unread would reset the
            connection, and the reset can overtake the answer."""
            self.close_connection = True
            self.send_json(status, {"error": reason}, headers)
            unread = unread_length(self.headers)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                until = max(self.reader.until, time.monotonic() + SERVE_LINGER_SECONDS)
                while unread is None or unread > 0:
                    left = min(until - time.monotonic(), SERVE_LINGER_SECONDS)
                    if left <= 0:
                        break
                    self.connection.settimeout(left)
                    chunk = self.connection.recv(2**16)
                    if not chunk:
                        break
                    unread = None if unread is None else unread - len(chunk)

        def send_json(self, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
            self.send(status, json.dumps(content).encode(), "application/json",
                      {"Cache-Control": "no-store", **(headers or {})})

        def send(self, status: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
            self.connection.settimeout(SERVE_IDLE_SECONDS)  # a client that reads nothing is dropped
            self.send_response_only(status)
            for name, value in {"Content-Type": kind, "Content-Length": str(len(body)),
                                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                                **headers}.items():
                self.send_header(name, value)
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", "POST" if urlsplit(self.path).path == "/predict" else "GET")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.answered = True
            self.log_line(status)

        def log_line(self, status: int) -> None:
            if not quiet:
                path = "".join(c if c.isprintable() else "?" for c in (self.path or "")[:200])
                elapsed = 1000 * (time.perf_counter() - self.started)
                sys.stderr.write(f"{self.command or '-'} {path or '-'} {int(status)} {elapsed:.0f} ms\n")

        def log_message(self, format: str, *args) -> None:  # http.server's own log: replaced by log_line
            pass

    return Handler


def serve(args: argparse.Namespace) -> int:
    """Serve the drawing page and the API until Ctrl-C or SIGTERM; 0 when stopped that way.

    Reading a picture is Python work, and one Python process answers on one core at a time
    (the interpreter's lock), so --processes processes share the listening socket, each with
    the model loaded once: the system hands each new connection to one that is waiting.
    """
    model_path = chosen_model(args)
    page, policy = page_with_policy(model_path)
    listener = listening_socket(args.host, args.port)
    announce(listener)  # before any process answers: whoever is answered has been told where
    names = served_names(args.host)
    # Helpers start before this process's stderr filter, so that none of them holds its pipe open.
    helpers = [start_helper(listener, model_path, page, policy, args.quiet, names)
               for _ in range(args.processes - 1)]
    stopped = False
    try:
        with tensorflow_chatter_filtered():
            answering_server(listener, model_path, page, policy, args.quiet, names).serve_forever()
    except KeyboardInterrupt:
        stopped = True
    finally:
        for helper in helpers:
            helper.terminate()
        for helper in helpers:
            helper.join()
        listener.close()
    if stopped:  # said last: no helper's log line can come after it
        print("Stopped.", file=sys.stderr)
    return 0


def announce(listener) -> None:
    """Say where the page is (for a server open to the network, at addresses other computers can
    use), and warn when other computers can reach it."""
    import ipaddress

    host, port = listener.getsockname()[:2]
    shown = "localhost" if is_wildcard(host) else f"[{host}]" if ":" in host else host
    print(f"Draw digits at http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
    if is_wildcard(host):
        found = [f"http://[{address}]:{port}/" if ":" in address else f"http://{address}:{port}/"
                 for address in own_addresses()]
        print(f"From other computers: {' or '.join(found) or f'http://<this computer address>:{port}/'}", flush=True)
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(host).is_loopback:
            warn(f"serving on {host}: anyone who can reach this computer on port {port} "
                 "can use the page and the API")


def own_addresses() -> list[str]:
    """This computer's network addresses, as far as the standard library can tell (it lists no interfaces)."""
    import ipaddress
    import socket

    found = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a documentation address: nothing is sent, the route is only looked up
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        for *_, address in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM):
            found.append(address[0])
    return [address for address in dict.fromkeys(found) if not ipaddress.ip_address(address).is_loopback]


def listening_socket(host: str, port: int):
    """The socket every serving process accepts connections on; a port in use is said in words."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=SERVE_BACKLOG)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} is already in use on {host}; stop what uses it, "
                             "or choose another with --port N (--port 0 takes any free port)") from None
        raise ServeError(f"cannot serve on {host} port {port}: {error.strerror or error}") from None
    listener.setblocking(False)  # a process that loses the race for a connection goes back to waiting
    return listener


def answering_server(listener, model_path: Path, page: bytes, policy: str, quiet: bool, names: frozenset[str]):
    """An HTTP server on the shared socket, with this process's own copy of the model, ready to answer."""
    start_tensorflow(SEED)
    recognizer = Recognizer(model_path)
    recognizer.probabilities([np.zeros(IMAGE_SHAPE, np.float32)])  # the first call compiles: do it now
    return http_server(listener, make_handler(recognizer, page, policy, quiet, names))


def http_server(listener, handler, connections: int = SERVE_CONNECTIONS):
    """A server on `listener` with a thread per connection, at most `connections` at once: at the
    cap it accepts no more, and they wait for a thread here or are taken by another process."""
    import http.server

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True  # a connection left open never keeps the server from stopping
        threads = threading.BoundedSemaphore(connections)

        def get_request(self):
            if not self.threads.acquire(timeout=0.5):  # the cap: look again after a while (and after a shutdown)
                raise BlockingIOError("every connection thread is busy")
            try:
                return super().get_request()
            except BaseException:
                self.threads.release()
                raise

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.threads.release()

        def handle_error(self, request, client_address) -> None:  # one line, never a traceback
            print(f"error: a request from {client_address[0]} failed: {sys.exc_info()[1]!r}", file=sys.stderr)

    server = Server(listener.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    return server


def start_helper(listener, model_path: Path, page: bytes, policy: str, quiet: bool, names: frozenset[str]):
    """Another serving process: a fresh interpreter (TensorFlow does not survive a fork).

    Ctrl-C reaches every process of the terminal; stopping is the first process's to do, so the
    helper starts with it blocked and then ignores it.
    """
    import multiprocessing

    helper = multiprocessing.get_context("spawn").Process(
        target=help_serving, args=(listener, model_path, page, policy, quiet, names), daemon=True)
    blockable = hasattr(signal, "pthread_sigmask")
    if blockable:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        helper.start()
    finally:
        if blockable:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return helper


def help_serving(listener, model_path: Path, page: bytes, policy: str, quiet: bool, names: frozenset[str]) -> None:
    """A helper's life: answer on the shared socket until the first process stops it, or is gone."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # Killed outright, the first process cannot stop its helpers: they leave as soon as it is gone.
    parent = multiprocessing.parent_process()
    threading.Thread(target=lambda: (parent.join(), os._exit(0)), daemon=True).start()
    with contextlib.suppress(DataError), tensorflow_chatter_filtered():  # a bad model: the first process says so
        answering_server(listener, model_path, page, policy, quiet, names).serve_forever()


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
            report = test_report(probabilities, data.y_test)
            print_results(history, report)
            calibration = calibration_report(model, data, probabilities, args.seed)
            print_calibration(calibration)

            with writing_to(args.output_dir):
                draw_architecture(model, staging.path / DIAGRAM_FILE)
                draw_figures(staging.path, history, report, data.x_test, data.y_test, probabilities,
                             calibration["temperature"])
                save_model(model, staging.path / MODEL_FILE, calibration["temperature"])
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
    """stdout that goes quiet when its reader has gone (`| head`), instead of losing the run."""

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


REQUIRED_PACKAGES = ("tensorflow", "keras", "h5py", "PIL", "scipy")  # imported where they are needed


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    missing = [package for package in REQUIRED_PACKAGES if importlib.util.find_spec(package) is None]
    if missing:  # most often: a virtual environment not activated
        print(f"error: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this Python "
              f"({sys.executable}): pip install -r requirements.txt (in the virtual environment, if you made one)",
              file=sys.stderr)
        return EXIT_ERROR
    for stopping in STOP_SIGNALS[1:]:  # `kill` and a closed terminal stop as cleanly as Ctrl-C
        if stopping is not None:
            signal.signal(stopping, signal.default_int_handler)
    try:
        if args.serve:
            return serve(args)  # each of its processes filters its own stderr
        with tensorflow_chatter_filtered():
            if args.predict:
                return predict(args)
            run(args, started)
    except (DataError, OutputError, ServeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except InterruptedAfterSaving:
        print(f"\nInterrupted after every output was saved in {args.output_dir}.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        done = "." if args.mode != "train" else f": nothing was saved; {args.output_dir} is as it was."
        print(f"\nInterrupted{done}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.stdout = ClosedPipeTolerant(sys.stdout)
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every output is closed and in place by now; TensorFlow's interpreter shutdown would
    # take most of a second more and do nothing for us.
    os._exit(exit_code)
