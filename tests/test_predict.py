"""--predict: pictures of the user's own digits, made into MNIST-like inputs and classified."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import predict
import train
from conftest import ROOT, keras_answers, predict_here


def read(grey: np.ndarray) -> np.ndarray:
    return predict.read_digit(grey).image


def drawn_digit(size: int = 280, width: int = 24) -> np.ndarray:
    """A hand-drawn-looking 7: dark ink on white paper, as grey levels 0-255."""
    picture = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(picture)
    s = size / 280
    draw.line([(70 * s, 60 * s), (200 * s, 60 * s), (120 * s, 230 * s)], fill=0, width=round(width * s),
              joint="curve")
    return np.asarray(picture)


def mnist_digits() -> list[np.ndarray]:
    """A few real MNIST test digits when MNIST_NPZ is set, else digits drawn straight in MNIST's form."""
    path = os.environ.get("MNIST_NPZ")
    if path and Path(path).is_file():
        with np.load(path) as data:
            return [data["x_test"][i] for i in (0, 1, 2, 3, 4, 7, 11, 18, 61, 84)]
    return [mnist_form(strokes) for strokes in HAND_DRAWN]


# Digits as pen strokes in a 20x20 box (x, y), drawn without any of train.py's code.
HAND_DRAWN = [
    [[(2, 1), (18, 1), (8, 19)]],  # 7
    [[(10, 0), (10, 19)]],  # 1
    [[(2, 5), (8, 0), (15, 3), (12, 10), (2, 19), (18, 19)]],  # 2
    [[(14, 0), (2, 12), (18, 12)], [(13, 5), (13, 19)]],  # 4
    [[(17, 1), (3, 1), (3, 9), (14, 9), (17, 14), (13, 19), (2, 18)]],  # 5
]


def mnist_form(strokes) -> np.ndarray:
    """Strokes drawn 8 times larger, shrunk to fit 20x20 and centred in 28x28 by centre of mass (uint8)."""
    big = Image.new("L", (160, 160), 0)
    draw = ImageDraw.Draw(big)
    for stroke in strokes:
        draw.line([(8 * x, 8 * y) for x, y in stroke], fill=255, width=18, joint="curve")
    crop = big.crop(big.getbbox())
    scale = 20 / max(crop.size)
    box = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.LANCZOS)
    ink = np.asarray(box, np.float64)
    rows, columns = np.indices(ink.shape)
    top = round(14 - (rows * ink).sum() / ink.sum())
    left = round(14 - (columns * ink).sum() / ink.sum())
    field = np.zeros((28, 28), np.uint8)
    field[top:top + box.height, left:left + box.width] = box
    return field


def render(digit: np.ndarray, variant: str) -> bytes:
    """The digit as a user might photograph or scan it; encoded in the variant's file format."""
    ink = Image.fromarray(digit).resize((280, 280), Image.Resampling.LANCZOS)
    paper = Image.new("L", (600, 450), 0)
    paper.paste(ink, (40, 120))  # large and off-centre
    light_on_dark = paper
    dark_on_light = Image.fromarray(255 - np.asarray(paper))
    picture, fmt = {
        "png light on dark": (light_on_dark, "PNG"),
        "png dark on light": (dark_on_light, "PNG"),
        "jpeg dark on light": (dark_on_light, "JPEG"),
        "rgb blue ink on cream": (Image.merge("RGB", [
            Image.fromarray(np.uint8(250 - 0.8 * np.asarray(paper))),
            Image.fromarray(np.uint8(240 - 0.7 * np.asarray(paper))),
            Image.fromarray(np.uint8(220 - 0.2 * np.asarray(paper)))]), "JPEG"),
        "rgba ink on transparent": (Image.merge("RGBA", [Image.new("L", paper.size, 0)] * 3 + [paper]), "PNG"),
    }[variant]
    buffer = io.BytesIO()
    picture.save(buffer, fmt, quality=90) if fmt == "JPEG" else picture.save(buffer, fmt)
    return buffer.getvalue()


VARIANTS = ["png light on dark", "png dark on light", "jpeg dark on light", "rgb blue ink on cream",
            "rgba ink on transparent"]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel correlation at the best alignment within one pixel: MNIST itself centred to whole pixels."""
    return max(float(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).ravel(), b.ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_rerendered_digit_comes_back_close_to_the_original(variant, tmp_path):
    for index, digit in enumerate(mnist_digits()):
        path = tmp_path / f"digit{index}.{'jpg' if 'jpeg' in variant or 'rgb' in variant else 'png'}"
        path.write_bytes(render(digit, variant))
        made = read(predict.load_picture(path))
        assert made.shape == (28, 28) and made.dtype == np.float32
        assert similarity(made, digit / 255) > 0.9, (variant, index)


def test_the_digit_fits_20x20_and_its_centre_of_mass_is_the_centre():
    made = read(drawn_digit() / 255)
    rows, columns = np.nonzero(made > 0.01)
    assert max(rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) <= 21
    r, c = np.indices(made.shape)
    assert (r * made).sum() / made.sum() == pytest.approx(14, abs=0.6)
    assert (c * made).sum() / made.sum() == pytest.approx(14, abs=0.6)
    assert made.max() == pytest.approx(1, abs=0.05) and made.min() >= 0


def test_uneven_lighting_and_pale_pencil_are_evened_out():
    clean = read(drawn_digit() / 255)
    ramp = np.linspace(0.55, 1.0, 280, dtype=np.float32)[None, :]  # a shadow across the page
    pale = 1 - 0.35 * (1 - drawn_digit() / 255)  # pale pencil: ink only 35% darker than paper
    noisy = np.clip(pale * ramp + np.random.default_rng(0).normal(0, 0.02, (280, 280)), 0, 1)
    assert similarity(read(noisy.astype(np.float32)), clean) > 0.9


def test_a_very_large_picture_is_read(tmp_path):
    path = tmp_path / "huge.png"
    Image.fromarray(drawn_digit(size=5000)).save(path)
    grey = predict.load_picture(path)
    assert max(grey.shape) == predict.WORK_SIZE
    assert similarity(read(grey), read(drawn_digit() / 255)) > 0.9


def test_a_blank_picture_has_no_digit():
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(np.full((200, 300), 0.97, np.float32))
    with pytest.raises(predict.PictureError, match="no digit found"):
        noise = np.random.default_rng(1).normal(0.9, 0.02, (200, 300)).astype(np.float32)
        read(np.clip(noise, 0, 1))


def test_bad_pictures_get_an_error_line_and_the_good_ones_an_answer(model_file, tmp_path):
    good = tmp_path / "seven.png"
    good.write_bytes(render(mnist_digits()[0], "png dark on light"))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    Image.new("L", (100, 100), 250).save(tmp_path / "blank.png")
    (tmp_path / "album").mkdir()
    names = ["seven.png", "missing.png", "empty.png", "notes.png", "cut.png", "blank.png", "album"]
    done = predict_here(*(tmp_path / name for name in names), "--model", model_file)
    assert done.returncode == 1
    answer = done.stdout.strip()
    assert answer.startswith(f"{good}: ") and answer.endswith("%)") and len(answer.splitlines()) == 1
    errors = dict(line.split(": error: ") for line in done.stderr.strip().splitlines())
    assert errors.pop(str(tmp_path / "cut.png")).startswith("unreadable image")
    assert errors == {
        str(tmp_path / "missing.png"): "no such file",
        str(tmp_path / "empty.png"): "file is empty",
        str(tmp_path / "notes.png"): "not a PNG, JPEG, GIF, BMP, TIFF or WebP image",
        str(tmp_path / "blank.png"): "no digit found (the image looks blank)",
        str(tmp_path / "album"): "a folder with no pictures",
    }


def test_all_good_pictures_exit_0_and_preprocessed_inputs_are_saved(model_file, tmp_path):
    paths = []
    for variant in ("png dark on light", "rgba ink on transparent"):
        path = tmp_path / f"{variant.split()[0]}.png"
        path.write_bytes(render(mnist_digits()[0], variant))
        paths.append(path)
    seen = tmp_path / "seen"
    done = predict_here(*paths, "--model", model_file, "--save-preprocessed", seen)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [str(p) for p in paths]
    for path in paths:
        with Image.open(seen / f"{path.stem}.png") as image:
            assert image.size == (28, 28) and image.mode == "L"


def test_a_missing_model_is_one_line(tmp_path):
    picture = tmp_path / "digit.png"
    Image.fromarray(drawn_digit()).save(picture)
    probe = ("import sys, predict\n"
             f"code = predict.main([{str(picture)!r}, '--model', {str(tmp_path / 'none.h5')!r}])\n"
             "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["1", "False"]
    assert done.stderr.strip() == f"error: {tmp_path / 'none.h5'}: no such model file; " \
                                  "train one first with: python train.py"


def test_a_file_that_is_not_a_model_is_one_line(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    picture = tmp_path / "digit.png"
    Image.fromarray(drawn_digit()).save(picture)
    done = predict_here(picture, "--model", fake)
    assert done.returncode == 1
    assert done.stderr == f"error: {fake}: not an ONNX model (train.py saves one as model.onnx)\n"


def test_a_model_h5_without_its_model_onnx_says_how_to_get_one(model_file, tmp_path):
    shutil.copy(model_file, tmp_path / "model.h5")  # as a model saved before train.py saved model.onnx
    Image.fromarray(drawn_digit()).save(tmp_path / "digit.png")
    done = predict_here(tmp_path / "digit.png", "--model", tmp_path / "model.h5")
    assert done.returncode == 1
    assert done.stderr == (f"error: {tmp_path / 'model.h5'}: no model.onnx beside it, which predict.py and serve.py "
                           "run; train again with: python train.py (it saves both)\n")


def test_either_file_of_the_pair_names_the_same_model(model_file, tmp_path):
    Image.fromarray(drawn_digit()).save(tmp_path / "digit.png")
    by_h5 = predict_here(tmp_path / "digit.png", "--model", model_file, "--format", "json")
    by_onnx = predict_here(tmp_path / "digit.png", "--model", model_file.with_suffix(".onnx"), "--format", "json")
    assert by_h5.returncode == 0 and by_h5.stdout == by_onnx.stdout


def test_reading_pictures_never_imports_tensorflow(model_file, tmp_path):
    Image.fromarray(drawn_digit()).save(tmp_path / "digit.png")
    probe = ("import sys, predict\n"
             f"code = predict.main([{str(tmp_path / 'digit.png')!r}, '--model', {str(model_file)!r}])\n"
             "print(code, sorted({'tensorflow', 'keras', 'onnxruntime'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "0 ['onnxruntime']", done.stderr


def test_model_onnx_gives_the_keras_models_answers_on_all_of_mnists_test_digits(model_file, real_mnist):
    with np.load(real_mnist) as data:
        images = (data["x_test"] / 255.0).astype(np.float32)
    raw, temperature = keras_answers(model_file, images)
    recognizer = predict.Recognizer(model_file)
    [onnx_raw] = recognizer.session.run(None, {recognizer.input_name: images})
    assert (onnx_raw.argmax(axis=1) == raw.argmax(axis=1)).all()
    np.testing.assert_allclose(onnx_raw, raw, rtol=0, atol=1e-5)
    assert recognizer.temperature == temperature
    printed = np.stack([recognizer.probabilities(image) for image in images])  # what predict.py and serve.py give
    np.testing.assert_allclose(printed, train.calibrated(raw, temperature), rtol=0, atol=1e-5)


def test_predictions_match_the_original_digits(model_file, real_mnist, tmp_path):
    import keras
    model = keras.models.load_model(model_file, compile=False)
    with np.load(real_mnist) as data:
        digits = data["x_test"][:40]
    originals = model(digits / 255.0).numpy()
    sure = [i for i in range(len(digits)) if originals[i].max() > 0.9]
    paths = []
    for i in sure:
        for variant in VARIANTS:
            path = tmp_path / f"{i}-{variant.replace(' ', '_')}.{'jpg' if 'jpeg' in variant or 'rgb' in variant else 'png'}"
            path.write_bytes(render(digits[i], variant))
            paths.append((path, originals[i].argmax()))
    done = predict_here(*(p for p, _ in paths), "--model", model_file)
    assert done.returncode == 0, done.stderr
    predicted = [int(line.rsplit(": ", 1)[1].split()[0]) for line in done.stdout.splitlines()]
    same = sum(p == expected for p, (_, expected) in zip(predicted, paths))
    assert same / len(paths) >= 0.95, f"{same} of {len(paths)} the same"


def damaged_jpeg() -> bytes:
    """A photo whose EXIF block is damaged in one byte (found by fuzzing): turning it upright, Pillow
    raises struct.error, none of its usual errors."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Camera maker"  # orientation: turned; the camera's maker
    buffer = io.BytesIO()
    Image.fromarray(drawn_digit()).save(buffer, "JPEG", exif=exif)
    data = bytearray(buffer.getvalue())
    data[41] = 3  # the maker's tag (0x010F) becomes Compression (0x0103), a number, holding text
    return bytes(data)


def test_a_damaged_photo_is_its_own_error_line_and_the_others_are_answered(model_file, tmp_path):
    import struct
    from PIL import ImageOps
    with pytest.raises(struct.error):  # what Pillow itself makes of it
        ImageOps.exif_transpose(Image.open(io.BytesIO(damaged_jpeg())))
    (tmp_path / "damaged.jpg").write_bytes(damaged_jpeg())
    Image.fromarray(drawn_digit()).save(tmp_path / "seven.png")
    done = predict_here(tmp_path / "damaged.jpg", tmp_path / "seven.png", "--model", model_file)
    assert done.returncode == 1
    assert done.stderr == f"{tmp_path / 'damaged.jpg'}: error: unreadable image (required argument is not an integer)\n"
    assert done.stdout.startswith(f"{tmp_path / 'seven.png'}: ") and len(done.stdout.splitlines()) == 1


def test_only_the_formats_photos_and_drawings_come_in_are_opened(model_file, tmp_path):
    folder = tmp_path / "scans"
    (folder / "older").mkdir(parents=True)
    Image.fromarray(drawn_digit()).save(folder / "seven.png")
    Image.fromarray(drawn_digit()).save(folder / "seven.eps")  # Pillow would need Ghostscript to read it
    Image.fromarray(drawn_digit()).save(tmp_path / "seven.eps")
    (tmp_path / "seven-eps.png").write_bytes((tmp_path / "seven.eps").read_bytes())  # named as a PNG
    done = predict_here(folder, tmp_path / "seven.eps", tmp_path / "seven-eps.png", "--model", model_file)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{folder / 'older'}: skipped: a folder (only the pictures directly in {folder} are read)",
        f"{folder / 'seven.eps'}: skipped: not a PNG, JPEG, GIF, BMP, TIFF or WebP image",
        f"{tmp_path / 'seven.eps'}: error: not a PNG, JPEG, GIF, BMP, TIFF or WebP image",
        f"{tmp_path / 'seven-eps.png'}: error: not a PNG, JPEG, GIF, BMP, TIFF or WebP image",
    ]
    assert [line.split(": ")[0] for line in done.stdout.splitlines()] == [str(folder / "seven.png")]


def test_an_uploaded_eps_is_not_opened_either():
    buffer = io.BytesIO()
    Image.fromarray(drawn_digit()).save(buffer, "EPS")
    with pytest.raises(predict.PictureError, match="^not a PNG, JPEG, GIF, BMP, TIFF or WebP image$"):
        predict.decode_picture(io.BytesIO(buffer.getvalue()))


def test_a_model_that_is_not_a_model_is_one_line_of_our_own(tmp_path):
    Image.fromarray(drawn_digit()).save(tmp_path / "seven.png")
    readme = ROOT / "README.md"
    done = predict_here(tmp_path / "seven.png", "--model", readme)
    assert done.returncode == 1
    assert done.stderr == f"error: {readme}: not an ONNX model (train.py saves one as model.onnx)\n"


def test_a_web_address_is_said_not_to_be_read_as_it_was_typed(capsys):
    with pytest.raises(SystemExit) as stop:
        predict.parse_args(["https://host/seven.png"])
    assert stop.value.code == train.EXIT_USAGE
    assert capsys.readouterr().err == ("error: argument IMAGE: https://host/seven.png: web addresses are not "
                                       "read; download the picture and give the file (python predict.py --help "
                                       "lists the options)\n")


def test_an_empty_name_is_not_taken_for_the_current_folder(capsys):
    with pytest.raises(SystemExit) as stop:
        predict.parse_args([""])
    assert stop.value.code == train.EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: argument IMAGE: an empty name is not a picture")


def test_a_reader_that_has_gone_stops_the_reading(model_file, tmp_path):
    for index in range(30):
        Image.fromarray(drawn_digit()).save(tmp_path / f"{index:02}.png")
    reading = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), tmp_path, "--model", model_file,
                                "--save-preprocessed", tmp_path / "seen"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert reading.stdout.readline().startswith(str(tmp_path / "00.png").encode())
    reading.stdout.close()  # as `| head -1` does
    assert reading.wait(timeout=60) == train.EXIT_ERROR and reading.stderr.read() == b""
    assert len(list((tmp_path / "seen").iterdir())) < 5  # not the other 25 pictures


def digit_of_height(size: tuple[int, int], height: int) -> tuple[bytes, int]:
    """A PNG of `size` with a 7 drawn `height` pixels tall (without its pen's round ends), and the
    height of its ink, measured."""
    picture = Image.new("L", size, 255)
    x, y, pen = size[0] // 3, size[1] // 3, max(2, height // 6)
    ImageDraw.Draw(picture).line([(x, y), (x + 0.6 * height, y), (x + 0.25 * height, y + height)], fill=0, width=pen)
    rows = np.nonzero((np.asarray(picture) < 128).any(axis=1))[0]
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue(), int(rows[-1] - rows[0] + 1)


def size_note(data: bytes) -> tuple[str, int]:
    """The note on the digit's size, in words, and the number of pixels it says."""
    [note] = [note for note in predict.read_digit(*predict.picture_from(io.BytesIO(data))).notes if "pixels tall" in note]
    return re.sub(r"\d+", "N", note), int(re.search(r"\d+", note).group())


def test_the_size_notes_are_in_the_pictures_own_pixels_however_large_it_is():
    small, height = digit_of_height((200, 150), 12)
    large, same_height = digit_of_height((2048, 1536), 12)  # read at half its size
    assert height == same_height
    for picture in (small, large):
        words, pixels = size_note(picture)
        assert words == "the digit is only N pixels tall" and abs(pixels - height) <= 2, pixels
    photo, height = digit_of_height((4000, 3000), 45)  # read at a quarter of its size: 12 pixels tall
    words, pixels = size_note(photo)
    assert words == "the digit is small for so large a picture (N pixels tall): crop closer to it"
    assert abs(pixels - height) <= 2, pixels


def test_each_answer_is_said_as_soon_as_known_and_an_interrupted_batch_keeps_them(model_file, tmp_path,
                                                                                  monkeypatch):
    for name in ("a", "b", "c"):
        Image.fromarray(drawn_digit()).save(tmp_path / f"{name}.png")
    opened = predict.open_picture

    def ctrl_c_at_the_third(path: Path):
        if path.name == "c.png":  # by now the first two answers must be out, and their inputs saved
            assert sys.stdout.getvalue().count("\n") == 2 and len(list((tmp_path / "seen").iterdir())) == 2
            raise KeyboardInterrupt
        return opened(path)

    monkeypatch.setattr(predict, "open_picture", ctrl_c_at_the_third)
    done = predict_here(tmp_path, "--model", model_file, "--save-preprocessed", tmp_path / "seen")
    assert done.returncode == train.EXIT_INTERRUPTED
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert sorted(path.name for path in (tmp_path / "seen").iterdir()) == ["a.png", "b.png"]


def test_pictures_that_hold_no_digit_are_told_so(model_file, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    done = predict_here(tmp_path / "empty.png", tmp_path / "blank.png", "--model", model_file)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"{tmp_path / 'empty.png'}: error: file is empty",
                                        f"{tmp_path / 'blank.png'}: error: {predict.BLANK_PICTURE}"]


def test_without_a_model_in_the_folder_the_error_says_where_it_looked_and_how_to_name_one(tmp_path, monkeypatch):
    Image.fromarray(drawn_digit()).save(tmp_path / "seven.png")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    done = predict_here(tmp_path / "seven.png")
    assert done.returncode == 1
    assert done.stderr == (f"error: no model.onnx in {(tmp_path / 'elsewhere').resolve()}: train one first with: "
                           "python train.py, or name one with --model PATH\n")
