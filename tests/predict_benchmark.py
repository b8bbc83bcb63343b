#!/usr/bin/env python3
"""How long does reading one photo take, and how much memory: predict.py (ONNX Runtime) against
the same reading with TensorFlow, side by side.

    python tests/predict_benchmark.py --model model.h5     # the model.onnx beside it is what predict.py runs

Makes a 12-megapixel JPEG of a ballpoint digit on ruled paper, then alternately runs, each in a
fresh process: `python predict.py photo.jpg`, and a process that reads the photo the same way
(predict.read_digit) but classifies it with TensorFlow and Keras loading model.h5, as predict.py
did before it ran model.onnx. Prints wall time and peak resident memory of every run, the medians
and their ratios; then what one call of the model costs with one thread and with ONNX Runtime's
default thread pool (with a process per core, more threads per call only compete). Run by hand: it asserts nothing, because timings on a shared machine are
figures to read, not to test.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from benchmark import run_with_rusage  # noqa: E402

# What reading one photo cost with TensorFlow: predict.py's own reading, then Keras's model.
WITH_TENSORFLOW = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[3])
from pathlib import Path
import h5py, keras
import predict, train
reading = predict.read_digit(*predict.open_picture(Path(sys.argv[1])))
model = keras.models.load_model(sys.argv[2], compile=False)
with h5py.File(sys.argv[2], "r") as file:
    temperature = float(file.attrs[train.TEMPERATURE_ATTRIBUTE])
row = train.calibrated(model.predict_on_batch(reading.image[None])[0], temperature)
print(f"{sys.argv[1]}: {row.argmax()} ({100 * row.max():.1f}%)")
"""


MAKE_PHOTO = """
import sys
from pathlib import Path
import numpy as np
from pen_photos import pen_photo, save
digit = np.zeros((28, 28), np.uint8)
digit[5:8, 6:22] = 255
for row in range(8, 24):
    digit[row, 21 - (row - 8) // 2: 24 - (row - 8) // 2] = 255
picture, _ = pen_photo(digit, np.random.default_rng(0), pen_share=0.02, ruled=True, boxed=False, longer=4000)
save(picture, Path(sys.argv[1]))
"""


def one_photo(folder: Path) -> Path:
    """A 4000x3000 JPEG of a ballpoint 7 on ruled paper, a phone's photo, made in a process of its own:
    a child forked from a process that holds it would start with that memory counted as its peak."""
    path = folder / "one-photo.jpg"
    subprocess.run([sys.executable, "-c", MAKE_PHOTO, str(path)], check=True, cwd=ROOT / "tests")
    return path


def microseconds_per_input(model: Path, threads: int, calls: int = 5000) -> tuple[float, float]:
    """Wall and CPU microseconds per call of a session on one input, with `threads` threads (0: its default)."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    image = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 28, 28), np.float32)}
    for _ in range(200):  # warm up
        session.run(None, image)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        session.run(None, image)
    return 1e6 * (time.perf_counter() - wall) / calls, 1e6 * (time.process_time() - cpu) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model.h5"),
                        help="the model.h5 train.py saved, with its model.onnx beside it (default: model.h5)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each (default: 5)")
    args = parser.parse_args()
    if not args.model.is_file() or not args.model.with_suffix(".onnx").is_file():
        parser.error(f"--model: {args.model} and the model.onnx beside it are needed; train with: python train.py")

    with tempfile.TemporaryDirectory() as folder:
        photo = one_photo(Path(folder))
        commands = {
            "predict.py (ONNX Runtime)": [sys.executable, str(ROOT / "predict.py"), str(photo), "--model",
                                          str(args.model.with_suffix(".onnx"))],
            "with TensorFlow": [sys.executable, "-c", WITH_TENSORFLOW, str(photo), str(args.model), str(ROOT)],
        }
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        print(f"{'round':>5}  {'reading one 12-megapixel photo':<28} {'wall s':>7} {'peak MiB':>9}  answer")
        for round_ in range(1, args.rounds + 1):
            for name, command in commands.items():
                wall, peak, done = run_with_rusage(command)
                runs[name].append((wall, peak))
                answer = done.stdout.strip().rpartition(": ")[2]
                print(f"{round_:>5}  {name:<28} {wall:>7.2f} {peak / 2**20:>9.0f}  {answer}", flush=True)
    medians = {name: (statistics.median(w for w, _ in done), statistics.median(p for _, p in done) / 2**20)
               for name, done in runs.items()}
    for name, (wall, peak) in medians.items():
        print(f"{name}: median wall {wall:.2f} s, median peak {peak:.0f} MiB")
    (ours_wall, ours_peak), (tf_wall, tf_peak) = medians.values()
    print(f"predict.py against TensorFlow: {tf_wall / ours_wall:.1f}x faster, {tf_peak / ours_peak:.1f}x less memory")
    for threads, name in ((1, "one thread (as predict.py and serve.py run it)"), (0, "ONNX Runtime's default threads")):
        wall, cpu = microseconds_per_input(args.model.with_suffix(".onnx"), threads)
        print(f"one 28x28 input, {name}: {wall:.1f} us, {cpu:.1f} us of CPU")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
