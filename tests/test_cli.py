"""Option checking: a bad value is one line on stderr and exit code 2, before TensorFlow starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import train
from conftest import ROOT, run_here

BAD_OPTIONS = {
    "epochs zero": (["--epochs", "0"], "--epochs: must be at least 1"),
    "epochs negative": (["--epochs", "-3"], "--epochs: must be at least 1"),
    "epochs not a number": (["--epochs", "ten"], "--epochs: expected a whole number, got 'ten'"),
    "batch size zero": (["--batch-size", "0"], "--batch-size: must be at least 1"),
    "split too large": (["--validation-split", "1.5"], "--validation-split: must be strictly between 0 and 1"),
    "split zero": (["--validation-split", "0"], "--validation-split: must be strictly between 0 and 1"),
    "seed not a number": (["--seed", "abc"], "--seed: expected a whole number"),
    "seed negative": (["--seed", "-1"], "--seed: must be from 0 to 4,294,967,295, got -1"),
    "seed too large": (["--seed", "4294967296"], "--seed: must be from 0 to 4,294,967,295, got 4294967296"),
    "unknown schedule": (["--lr-schedule", "step"], "--lr-schedule: invalid choice: 'step'"),
    "unknown option": (["--epochz", "3"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option_is_a_usage_error(case, capsys):
    argv, message = BAD_OPTIONS[case]
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_output_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--output-dir", str(a_file / "run1")])
    assert exit_.value.code == 2
    assert f"--output-dir: {a_file} is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="needs a non-root POSIX user: root may write to any folder")
def test_unwritable_output_dir_is_a_usage_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--output-dir", str(locked)])
    assert exit_.value.code == 2
    assert "is not writable" in capsys.readouterr().err


def test_usage_errors_answer_before_tensorflow_is_imported():
    probe = ("import sys, train\n"
             "try:\n    train.main(['--epochs', '0'])\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False", "False"]


def test_defaults_follow_the_design():
    args = train.parse_args([])
    assert (args.epochs, args.batch_size, args.validation_split) == (10, 32, 0.2)
    assert args.lr_schedule == "cosine"
    assert args.data is None and not args.quiet


def test_tensorboard_without_its_package_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--tensorboard"])
    assert exit_.value.code == 2
    assert "--tensorboard: the tensorboard package is not installed (pip install tensorboard)" in \
        capsys.readouterr().err


def test_a_python_without_the_packages_is_told_how_to_install_them_in_one_line(monkeypatch):
    find_spec = train.importlib.util.find_spec
    monkeypatch.setattr(train.importlib.util, "find_spec",
                        lambda name, *rest: None if name in ("tensorflow", "keras") else find_spec(name, *rest))
    done = run_here("--epochs", "1")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"error: tensorflow, keras are not installed in this Python ({sys.executable}): "
                           "pip install -r requirements.txt (in the virtual environment, if you made one)\n")
