"""--predict on pictures people take: ballpoint strokes, ruled paper, a box, canvases, folders, JSON."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

import predict
import train
from conftest import keras_answers, predict_here
from pen_photos import pen_photo
from test_predict import mnist_digits, similarity


def read(path) -> predict.Reading:
    return predict.read_digit(predict.load_picture(path))


def mnist_stroke_width(image: np.ndarray) -> float:
    """A 28x28 input's stroke width in 20x20-box pixels, measured as MNIST_STROKE was measured on MNIST."""
    ink = image > 0.5
    rows, columns = np.nonzero(ink)
    crop = image[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    scale = predict.STROKE_FRAME / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = np.asarray(Image.fromarray(crop.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR)) > 0.5
    return predict.width_in_box(big)


def issue_seven(path):
    """The reproduction from the issue: a ballpoint 7, 2% of its height wide, in a 2000x1500 photo."""
    picture = Image.new("L", (2000, 1500), 255)
    ImageDraw.Draw(picture).line([(860, 550), (1140, 550), (980, 950)], fill=0, width=8)
    picture.resize((500, 375), Image.Resampling.LANCZOS).save(path)
    return path


def answers(model_file, images: list[np.ndarray]) -> list[int]:
    recognizer = predict.Recognizer(model_file)
    return [int(recognizer.probabilities(image).argmax()) for image in images]


def test_mnist_stroke_range_is_the_middle_half_of_mnists_own(real_mnist):
    with np.load(real_mnist) as data:
        widths = [mnist_stroke_width(image / 255) for image in data["x_train"][:2000]]
    assert np.percentile(widths, 25) == pytest.approx(predict.MNIST_STROKE[0], abs=0.1)
    assert np.percentile(widths, 75) == pytest.approx(predict.MNIST_STROKE[1], abs=0.1)


def test_the_issues_thin_seven_gets_mnists_stroke_width(tmp_path):
    made = read(issue_seven(tmp_path / "seven.png")).image
    low, high = predict.MNIST_STROKE
    assert low - 0.5 <= mnist_stroke_width(made) <= high + 0.5


def test_the_issues_thin_seven_is_read_as_a_seven(real_mnist, model_file, tmp_path):
    path = issue_seven(tmp_path / "seven.png")
    done = predict_here(path, "--model", model_file)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path}: 7 (")


PENS = (0.015, 0.02, 0.06, 0.15)  # ballpoints, a felt pen, a marker: share of the digit's height
FRAME = 1200  # the photos' longer side: large enough for a 1.5% pen to be about a pixel wide


def photo_input(digit: np.ndarray, seed: int, **chosen) -> np.ndarray:
    """What the model sees of a pen photo, decoded as --predict decodes a file (here an uncompressed
    one in memory: reading files is tested elsewhere, and compressing photos takes time)."""
    picture, _ = pen_photo(digit, np.random.default_rng(seed), longer=FRAME, **chosen)
    file = io.BytesIO()
    picture.save(file, "BMP")
    file.seek(0)
    return predict.read_digit(predict.decode_picture(file)).image


@pytest.fixture(scope="module")
def pen_inputs() -> dict[float, list[np.ndarray]]:
    """What the model sees of each test digit written with each pen on plain paper."""
    return {pen: [photo_input(digit, index, pen_share=pen, ruled=False, boxed=False)
                  for index, digit in enumerate(mnist_digits())] for pen in PENS}


WIDTH_SLACK = 0.35  # the 28x28 input's width, measured again after anti-aliasing, strays this far at most


@pytest.mark.parametrize("pen", PENS)
def test_thin_and_bold_pens_come_back_with_mnists_stroke_width(pen, pen_inputs):
    low, high = predict.MNIST_STROKE
    for index, made in enumerate(pen_inputs[pen]):
        assert low - WIDTH_SLACK <= mnist_stroke_width(made) <= high + WIDTH_SLACK, (pen, index)


@pytest.mark.parametrize("pen", PENS)
def test_thin_and_bold_pens_get_the_models_answer_on_the_original(pen, pen_inputs, real_mnist, model_file):
    digits = mnist_digits()
    original = answers(model_file, [d / 255 for d in digits])
    same = sum(a == b for a, b in zip(answers(model_file, pen_inputs[pen]), original))
    assert same >= len(digits) - 1, f"{same} of {len(digits)}"


@pytest.mark.parametrize("ruled, boxed", [(True, False), (False, True), (True, True)])
def test_ruled_paper_and_a_drawn_box_do_not_change_what_the_model_sees(ruled, boxed, pen_inputs):
    for index, digit in enumerate(mnist_digits()[:5]):
        plain = pen_inputs[0.02][index]
        marked = photo_input(digit, index, pen_share=0.02, ruled=ruled, boxed=boxed)
        assert similarity(marked, plain) > 0.9, (ruled, boxed, index)


def canvas(colour, background=(0, 0, 0, 0)) -> Image.Image:
    """A drawing as a browser canvas exports it: strokes on a transparent background."""
    picture = Image.new("RGBA", (280, 280), background)
    ImageDraw.Draw(picture).line([(70, 60), (200, 60), (120, 230)], fill=colour, width=18, joint="curve")
    return picture


@pytest.mark.parametrize("colour", [(255, 255, 255, 255), (0, 0, 0, 255), (220, 40, 40, 255)])
def test_a_drawing_on_a_transparent_background_is_read_whatever_its_colour(colour, tmp_path):
    path = tmp_path / "drawing.png"
    canvas(colour).save(path)
    on_white = tmp_path / "on_white.png"
    canvas((0, 0, 0, 255), (255, 255, 255, 255)).convert("L").save(on_white)
    assert similarity(read(path).image, read(on_white).image) > 0.95


def test_two_digits_side_by_side_get_a_note(tmp_path):
    picture = Image.new("L", (1200, 600), 255)
    draw = ImageDraw.Draw(picture)
    draw.line([(200, 150), (400, 150), (280, 450)], fill=0, width=10)
    draw.line([(700, 150), (700, 450)], fill=0, width=10)
    picture.save(tmp_path / "two.png")
    assert read(tmp_path / "two.png").notes == ["several marks: used the largest"]
    picture = Image.new("L", (1200, 600), 255)
    ImageDraw.Draw(picture).line([(200, 150), (400, 150), (280, 450)], fill=0, width=10)
    picture.save(tmp_path / "one.png")
    assert read(tmp_path / "one.png").notes == []


def test_a_whole_picture_20_pixels_a_side_is_noted_small_once(tmp_path):
    """A clear 7 filling a 20x20 picture: it is small, and that is the note; not "almost no ink" as well."""
    small = Image.new("L", (20, 20), 255)
    ImageDraw.Draw(small).line([(3, 3), (16, 3), (8, 17)], fill=0, width=1)
    small.save(tmp_path / "small.png")
    [note] = read(tmp_path / "small.png").notes
    assert note.startswith("the digit is only")


def test_guesses_are_noted_a_tiny_digit_and_a_faint_one(tmp_path):
    tiny = Image.new("L", (1000, 800), 255)
    ImageDraw.Draw(tiny).line([(500, 400), (510, 400), (504, 412)], fill=0, width=2)
    tiny.save(tmp_path / "tiny.png")
    assert any(note.startswith("the digit is only") for note in read(tmp_path / "tiny.png").notes)
    faint = Image.new("L", (400, 400), 255)
    ImageDraw.Draw(faint).line([(100, 80), (300, 80), (180, 330)], fill=185, width=14)
    faint.save(tmp_path / "faint.png")
    assert "very faint" in read(tmp_path / "faint.png").notes


@pytest.mark.parametrize("above", [0, 2, 4])
def test_a_sevens_bar_written_on_a_pale_ruled_line_is_kept(above, tmp_path):
    def seven(ruled: bool) -> np.ndarray:
        page = Image.new("RGB", (600, 800), (250, 250, 245))
        draw = ImageDraw.Draw(page)
        for y in range(60, 800, 50) if ruled else ():
            draw.line([(0, y), (600, y)], fill=(170, 185, 205), width=2)
        draw.line([(200, 260 - above), (400, 260 - above), (300, 520)], fill=(30, 30, 60), width=2)
        page.save(tmp_path / "seven.png")
        return read(tmp_path / "seven.png").image
    assert similarity(seven(ruled=True), seven(ruled=False)) > 0.9


def test_a_dark_pen_digit_on_pale_ruled_lines_is_not_noted_faint(tmp_path):
    page = Image.new("RGB", (600, 800), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    for y in range(60, 800, 50):
        draw.line([(0, y), (600, y)], fill=(170, 185, 205), width=2)
    draw.line([(200, 252), (400, 252), (300, 510)], fill=(30, 30, 60), width=3)
    page.save(tmp_path / "ruled.png")
    assert "very faint" not in read(tmp_path / "ruled.png").notes  # the lines are pale, not the digit


def test_a_folder_is_read_in_order_skipping_what_is_not_a_picture(model_file, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    canvas((0, 0, 0, 255)).save(folder / "b.png")
    canvas((255, 255, 255, 255)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not a picture")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    done = predict_here(folder, "--model", model_file)
    assert done.returncode == 1  # a picture that could not be read
    assert [line.split(": ")[0] for line in done.stdout.splitlines()] == [str(folder / "a.png"), str(folder / "b.png")]
    assert done.stderr.splitlines() == [f"{folder / 'notes.txt'}: skipped: not a picture",
                                        f"{folder / 'broken.jpg'}: error: not a PNG, JPEG, GIF, BMP, TIFF or WebP image"]


def test_json_gives_one_object_per_picture_with_calibrated_probabilities(model_file, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    canvas((0, 0, 0, 255)).save(folder / "a.png")
    (folder / "broken.png").write_bytes(b"broken")
    done = predict_here(folder, "--model", model_file, "--format", "json")
    assert done.returncode == 1 and done.stderr == ""
    first, second = map(json.loads, done.stdout.splitlines())
    assert second == {"path": str(folder / "broken.png"), "error": "not a PNG, JPEG, GIF, BMP, TIFF or WebP image"}
    assert set(first) == {"path", "digit", "confidence", "probabilities", "notes"}
    assert first["path"] == str(folder / "a.png") and first["notes"] == []
    raw, temperature = keras_answers(model_file, read(folder / "a.png").image[np.newaxis])  # model.onnx ran
    expected = train.calibrated(raw[0], temperature)
    assert first["probabilities"] == pytest.approx(expected, abs=1e-4)
    assert first["digit"] == int(expected.argmax()) and first["confidence"] == pytest.approx(expected.max(), abs=1e-4)


def test_the_text_line_shows_the_calibrated_confidence_and_the_notes(model_file, tmp_path):
    picture = Image.new("L", (1200, 600), 255)
    draw = ImageDraw.Draw(picture)
    draw.line([(200, 150), (400, 150), (280, 450)], fill=0, width=10)
    draw.line([(700, 150), (700, 450)], fill=0, width=10)
    picture.save(tmp_path / "two.png")
    text = predict_here(tmp_path / "two.png", "--model", model_file).stdout.strip()
    data = json.loads(predict_here(tmp_path / "two.png", "--model", model_file, "--format", "json").stdout)
    assert text == f"{tmp_path / 'two.png'}: {data['digit']} ({100 * data['confidence']:.1f}%; several marks: used the largest)"
