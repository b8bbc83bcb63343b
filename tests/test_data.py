"""Loading MNIST from a local copy: what is accepted, and the one-line reason for what is not."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import train
from conftest import synthetic_mnist, write_idx

ARRAYS = synthetic_mnist(n_train=50, n_test=20)


def save_npz(path: Path, **overrides) -> Path:
    arrays = {**ARRAYS, **overrides}
    np.savez(path, **{name: value for name, value in arrays.items() if value is not None})
    return path


def assert_same_as_source(mnist: train.Mnist) -> None:
    for name in train.ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(mnist, name), ARRAYS[name])


def test_npz_round_trip(tmp_path):
    mnist = train.load_mnist(save_npz(tmp_path / "mnist.npz"))
    assert_same_as_source(mnist)
    assert mnist.source == str(tmp_path / "mnist.npz")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_round_trip(tmp_path, suffix):
    for name, stem in train.IDX_FILES.items():
        write_idx(tmp_path / f"{stem}{suffix}", ARRAYS[name])
    assert_same_as_source(train.load_mnist(tmp_path))


def test_normalize_gives_float32_between_0_and_1():
    scaled = train.normalize(np.array([[0, 51, 255]], dtype=np.uint8))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 0.2, 1.0]])


def test_validation_split_holds_out_the_last_fifth():
    mnist = train.Mnist(**synthetic_mnist(n_train=100, n_test=10), source="test")
    split = train.split_validation(mnist, 0.2)
    assert (len(split.x_train), len(split.x_val)) == (80, 20)
    np.testing.assert_array_equal(split.y_val, mnist.y_train[80:])
    np.testing.assert_array_equal(split.x_val, mnist.x_train[80:])


def test_validation_split_of_60000_is_48000_and_12000():
    labels = np.zeros(60_000, dtype=np.uint8)
    mnist = train.Mnist(np.zeros((60_000, 28, 28), np.uint8), labels,
                        np.zeros((1, 28, 28), np.uint8), labels[:1], source="test")
    split = train.split_validation(mnist, 0.2)
    assert (len(split.x_train), len(split.x_val)) == (48_000, 12_000)


def test_too_few_images_to_split(tmp_path):
    mnist = train.Mnist(**synthetic_mnist(n_train=1, n_test=1), source="tiny.npz")
    with pytest.raises(train.DataError, match=r"tiny.npz: too few training images \(1\)"):
        train.split_validation(mnist, 0.2)


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_NPZ = {
    "missing file": (lambda p: p, "no such file or folder"),
    "empty file": (lambda p: written(p, b""), "file is empty"),
    "not an npz": (lambda p: written(p, b"hello"), "not an .npz archive"),
    "truncated": (lambda p: truncated(save_npz(p)), "not an .npz archive"),
    "wrong keys": (lambda p: np.savez(p, images=ARRAYS["x_train"]) or p,
                   r"missing array\(s\) x_train"),
    "wrong shape": (lambda p: save_npz(p, x_train=np.zeros((50, 28), np.uint8)),
                    r"x_train has shape \(50, 28\)"),
    "float pixels": (lambda p: save_npz(p, x_train=ARRAYS["x_train"] / 255),
                     "x_train has float64 pixels; expected uint8"),
    "labels out of range": (lambda p: save_npz(p, y_test=np.full(20, 10, np.uint8)),
                            "y_test has labels from 10 to 10"),
    "counts disagree": (lambda p: save_npz(p, y_train=ARRAYS["y_train"][:-1]),
                        "x_train has 50 images but .*y_train has 49 labels"),
    "no images": (lambda p: save_npz(p, x_test=np.zeros((0, 28, 28), np.uint8),
                                     y_test=np.zeros(0, np.uint8)), "x_test holds no images"),
    "float labels": (lambda p: save_npz(p, y_train=ARRAYS["y_train"].astype(float)),
                     "expected one integer label per image"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_is_refused_with_the_file_and_reason(tmp_path, case):
    make, reason = BAD_NPZ[case]
    path = make(tmp_path / "mnist.npz")
    with pytest.raises(train.DataError, match=reason) as error:
        train.load_mnist(path)
    assert str(path) in str(error.value)


def write_idx_folder(folder: Path) -> Path:
    for name, stem in train.IDX_FILES.items():
        write_idx(folder / stem, ARRAYS[name])
    return folder


BAD_IDX = {
    "missing file": (lambda f: (f / "t10k-labels-idx1-ubyte").unlink(), "no t10k-labels-idx1-ubyte"),
    "truncated": (lambda f: truncated(f / "train-images-idx3-ubyte"), "truncated or corrupt"),
    "bad magic": (lambda f: written(f / "train-labels-idx1-ubyte", b"\x12\x34\x56\x78" * 4),
                  "bad magic number"),
    "empty": (lambda f: written(f / "t10k-images-idx3-ubyte", b""), "file is empty"),
    "not gzipped": (lambda f: (f / "t10k-images-idx3-ubyte").rename(f / "t10k-images-idx3-ubyte.gz"),
                    "unreadable"),
}


@pytest.mark.parametrize("case", BAD_IDX)
def test_bad_idx_folder_is_refused_with_the_file_and_reason(tmp_path, case):
    folder = write_idx_folder(tmp_path)
    make, reason = BAD_IDX[case]
    make(folder)
    with pytest.raises(train.DataError, match=reason) as error:
        train.load_mnist(folder)
    assert str(folder) in str(error.value)


def test_truncated_gzip_idx_file_is_refused(tmp_path):
    folder = write_idx_folder(tmp_path)
    images = folder / "train-images-idx3-ubyte"
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images.read_bytes())[:200])
    images.unlink()
    with pytest.raises(train.DataError, match="train-images-idx3-ubyte.gz: unreadable"):
        train.load_mnist(folder)
