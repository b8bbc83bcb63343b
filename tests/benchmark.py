#!/usr/bin/env python3
"""Benchmark train.py against the plain Keras recipe, side by side, on real MNIST.

    python tests/benchmark.py --data ../shared/data/mnist.npz     # or set MNIST_NPZ

Runs the two recipes alternately, each round in fresh processes with the same seed
(1, 2, 3, ...), and prints wall time, fit time, peak resident memory and test accuracy
for every run, then the speed ratio. Run by hand: pytest does not collect it, and it
asserts nothing, because timings on a shared machine are figures to read, not to test.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The design card's recipe written plainly, as a tutorial would: Keras's fit() with its
# defaults on float64 arrays, constant-rate Adam, validation_split, then diagram and save.
PLAIN_RECIPE = """
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import keras
data, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(seed)
with np.load(data) as f:
    x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
x_train, x_test = x_train / 255.0, x_test / 255.0
model = keras.Sequential([
    keras.Input(shape=(28, 28)),
    keras.layers.Flatten(),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
model.fit(x_train, y_train, epochs=10, batch_size=32, validation_split=0.2, verbose=0)
fit_seconds = time.perf_counter() - started
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"Test accuracy: {100 * accuracy:.2f}%")
keras.utils.plot_model(model, to_file=os.path.join(out, "model_architecture.png"), show_shapes=True)
model.save(os.path.join(out, "model.h5"))
print(json.dumps({"test_accuracy": accuracy, "fit_seconds": fit_seconds}))
"""


def plain_run(data: Path, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-c", PLAIN_RECIPE, str(data), str(seed), out]
        wall, peak, done = run_with_rusage(command)
    result = json.loads(done.stdout.splitlines()[-1])
    return {"wall": wall, "fit": result["fit_seconds"], "peak": peak, "accuracy": result["test_accuracy"]}


def train_py_run(data: Path, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--seed", str(seed),
                   "--output-dir", out, "--quiet"]
        wall, peak, _ = run_with_rusage(command)
        metrics = json.loads(Path(out, "metrics.json").read_text())
    return {"wall": wall, "fit": metrics["fit_seconds"], "peak": peak, "accuracy": metrics["test_accuracy"]}


def run_with_rusage(command: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds and peak resident memory (bytes) of one fresh process."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                   stdin=subprocess.DEVNULL, text=True)
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # wait4, unlike wait, gives this child's peak memory
        wall = time.perf_counter() - started
        process.stdout.close()
        process.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            stderr.seek(0)
            sys.exit(f"benchmark: {Path(command[1]).name} failed (exit {code}):\n{stderr.read()}")
    return wall, usage.ru_maxrss * 1024, subprocess.CompletedProcess(command, 0, stdout, "")


def row(round_: int, recipe: str, seed: int, result: dict) -> str:
    return (f"{round_:>5}  {recipe:<9} {seed:>4}  {result['wall']:>7.1f}  {result['fit']:>6.1f}"
            f"  {result['peak'] / 2**20:>8.0f}  {100 * result['accuracy']:>8.2f}%")


def summary(name: str, results: list[dict]) -> str:
    accuracies = [100 * r["accuracy"] for r in results]
    return (f"{name:<9} median wall {statistics.median(r['wall'] for r in results):.1f} s, "
            f"median fit {statistics.median(r['fit'] for r in results):.1f} s, "
            f"peak memory up to {max(r['peak'] for r in results) / 2**20:.0f} MiB, "
            f"test accuracy mean {statistics.mean(accuracies):.2f}% "
            f"(lowest {min(accuracies):.2f}%)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("MNIST_NPZ"),
                        help="real MNIST as a Keras-format .npz (default: $MNIST_NPZ)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of one run per recipe; round k uses seed k (at least 2)")
    args = parser.parse_args()
    if args.data is None or not Path(args.data).is_file():
        parser.error("--data: give the path of a real mnist.npz (or set MNIST_NPZ)")
    if args.rounds < 2:
        parser.error("--rounds: at least 2")

    print("round  recipe    seed   wall s   fit s  peak MiB  test acc", flush=True)
    plain, ours, ratios = [], [], []
    for round_ in range(1, args.rounds + 1):
        seed = round_
        plain.append(plain_run(args.data, seed))
        print(row(round_, "plain", seed, plain[-1]), flush=True)
        ours.append(train_py_run(args.data, seed))
        print(row(round_, "train.py", seed, ours[-1]), flush=True)
        ratios.append(plain[-1]["wall"] / ours[-1]["wall"])

    print()
    print(summary("plain", plain))
    print(summary("train.py", ours))
    print(f"speed ratio (plain wall / train.py wall, same round): "
          f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
