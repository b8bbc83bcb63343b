#!/usr/bin/env python3
"""How well does predict.py read digits that are not MNIST's own 28x28 images?

    python tests/handwriting_check.py --data ../shared/data/mnist.npz --model model.onnx

Makes pictures the way users take them and scores predict.py's preprocessing on them. The digits
come from four sources:
  - MNIST test digits re-rendered: other sizes and positions, thinner or bolder strokes,
    either polarity, coloured ink and paper, noise, uneven lighting, slight rotation,
    saved as PNG, JPEG, BMP, GIF or TIFF;
  - the digits 0-9 typeset in the fonts this machine has (not handwriting, but not MNIST either);
  - MNIST test digits written again with a ballpoint pen (1-4% of the digit's height wide)
    and photographed (tests/pen_photos.py): plain or ruled paper, a box around some;
  - MNIST test digits drawn on the drawing page's canvas (serve.py), as the page sends them.
Each digit is then read as made, and in the kinds people make of it: cropped to the ink with no
margin and with a small one; drawn bold (a marker a fifth of its height wide), blurred and saved
small (48x48, 150x150), cropped to the ink; and photographed on a dark desk, the page 70-90% of
the frame's width and height. Blank pages (plain, ruled, squared, shaded, noisy, on a desk) must
give "no digit found". One table, kind by source; then how many wrong answers the printed
(calibrated) confidence puts above 90%, and the time the preprocessing takes.

The pictures are made once and kept in --pictures (delete the folder after changing how they are
made); later runs only read them, so the check is quick enough to run before every change to the
reading code. Run by hand; it prints figures and asserts nothing. Accuracy is against the true label.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import predict  # noqa: E402
import train  # noqa: E402
from pen_photos import BLANK_PAGES, blank_page, centre_line, noise_around_128, pen_photo, save, write_digit  # noqa: E402

FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF"]
TIMING_ROUNDS = 10
FONT_FOLDERS = [Path("/usr/share/fonts"), Path("/Library/Fonts"), Path("C:/Windows/Fonts")]
SOURCES = {"mnist": "re-rendered MNIST", "fonts": "fonts", "pen": "pen photos", "canvas": "canvas"}
KINDS = {
    "made": "as made (the page alone)",
    "tutorial": "  tutorial resize of the same",
    "margin": "cropped, a small margin (10%)",
    "tight": "cropped to the ink, no margin",
    "bold150": "bold, blurred, cropped: 150x150",
    "bold48": "bold, blurred, cropped: 48x48",
    "desk": "the page on a dark desk",
}
MARGIN = 0.1  # a small margin: this share of the ink's longer side on every side
BOLD_PEN = 0.2  # a marker's width as a share of the digit's height
BLUR = 0.03  # the Gaussian blur's radius as a share of the picture's side
DESK_SHARE = (0.7, 0.9)  # the page's share of the frame's width (and, drawn again, of its height)
CANVAS = 280  # the drawing page's canvas, its pen, and the size it sends the picture at
CANVAS_PEN = 20
CANVAS_SENT = 140


def photographed(digit: np.ndarray, rng: np.random.Generator, bold: bool = False) -> tuple[Image.Image, tuple]:
    """One MNIST digit as a user might photograph or scan it, and the bounds of its ink."""
    size = int(rng.integers(100, 1200))
    digit_size = int(size * rng.uniform(0.3, 0.85))
    ink = Image.fromarray(digit).resize((digit_size, digit_size), Image.Resampling.BICUBIC)
    ink = ink.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC)
    stroke = int(rng.integers(-1, 3)) * max(1, digit_size // 60) * 2 + 1  # thinner ... bolder
    if bold:  # MNIST's strokes are about 12% of the digit's height: widen them to BOLD_PEN
        stroke = 2 * round(0.05 * digit_size) + 1
    if stroke > 1:
        ink = ink.filter(ImageFilter.MaxFilter(stroke))
    elif stroke < -1:
        ink = ink.filter(ImageFilter.MinFilter(-stroke))
    canvas = Image.new("L", (size, int(size * rng.uniform(0.8, 1.3))), 0)
    left = int(rng.integers(0, canvas.width - digit_size + 1))
    top = int(rng.integers(0, max(1, canvas.height - digit_size + 1)))
    canvas.paste(ink, (left, top))
    amount = np.asarray(canvas, np.float32) / 255  # 1 where the pen was

    paper, pen = rng.uniform(0.75, 1.0, 3), rng.uniform(0.0, 0.45, 3)
    if rng.random() < 0.3:  # chalk on a blackboard, white pen on black paper
        paper, pen = pen * 0.6, paper
    across = rng.random() < 0.5  # a shadow falling across the page, or down it
    ramp = 1 - rng.uniform(0, 0.45) * np.linspace(0, 1, amount.shape[1 if across else 0]) ** rng.uniform(0.5, 2)
    light = ramp[None, :, None] if across else ramp[:, None, None]
    colour = paper[None, None, :] * (1 - amount[..., None]) + pen[None, None, :] * amount[..., None]
    colour = colour * light
    colour = colour + rng.normal(0, rng.uniform(0, 0.06), colour.shape)
    return Image.fromarray(np.uint8(np.clip(colour, 0, 1) * 255), "RGB"), ink_bounds(amount > 0.25)


def typeset(digit: int, font: Path, size: int, bold: bool = False) -> tuple[Image.Image, tuple]:
    """A digit typeset in a font, black on white, and the bounds of its ink."""
    picture = Image.new("L", (int(size * 1.4), int(size * 1.4)), 255)
    typeface = ImageFont.truetype(str(font), size)
    ImageDraw.Draw(picture).text((size * 0.2, size * 0.1), str(digit), font=typeface, fill=0,
                                 stroke_width=round(0.04 * size) if bold else 0, stroke_fill=0)
    return picture, ink_bounds(np.asarray(picture) < 128)


def drawn_on_canvas(digit: np.ndarray, rng: np.random.Generator, bold: bool = False) -> tuple[Image.Image, tuple]:
    """An MNIST digit drawn on the drawing page's canvas with its pen, as the page sends it; its ink's bounds."""
    height = CANVAS * rng.uniform(0.5, 0.8)
    left, top = rng.uniform(10, CANVAS - 0.8 * height - 10), rng.uniform(10, CANVAS - height - 10)
    pen = BOLD_PEN * height if bold else CANVAS_PEN
    picture = Image.new("RGB", (CANVAS, CANVAS), (251, 250, 246))
    write_digit(ImageDraw.Draw(picture), centre_line(digit), left, top, height, pen, (17, 17, 17))
    picture = picture.resize((CANVAS_SENT, CANVAS_SENT), Image.Resampling.BILINEAR)
    return picture, ink_bounds(np.asarray(picture.convert("L")) < 128)


def ink_bounds(ink: np.ndarray) -> tuple[int, int, int, int]:
    """Left, top, right and bottom of the ink (right and bottom exclusive)."""
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def cropped(picture: Image.Image, box: tuple, margin: float) -> Image.Image:
    """The picture cut down to the ink and `margin` of its longer side around it."""
    left, top, right, bottom = box
    extra = round(margin * max(right - left, bottom - top))
    return picture.crop((max(0, left - extra), max(0, top - extra),
                         min(picture.width, right + extra), min(picture.height, bottom + extra)))


def blurred_small(picture: Image.Image, box: tuple, side: int) -> Image.Image:
    """A square around the ink, blurred (radius BLUR of its side) and saved `side` pixels a side."""
    left, top, right, bottom = box
    square = max(right - left, bottom - top)
    x = int(np.clip((left + right - square) // 2, 0, max(0, picture.width - square)))
    y = int(np.clip((top + bottom - square) // 2, 0, max(0, picture.height - square)))
    reach = int(3 * BLUR * square) + 1  # blurred with the page around it, then cut
    outer = (max(0, x - reach), max(0, y - reach),
             min(picture.width, x + square + reach), min(picture.height, y + square + reach))
    region = picture.crop(outer).filter(ImageFilter.GaussianBlur(BLUR * square))
    region = region.crop((x - outer[0], y - outer[1], min(region.width, x - outer[0] + square),
                          min(region.height, y - outer[1] + square)))
    scale = side / max(region.size)
    return region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))),
                         Image.Resampling.LANCZOS)


def on_desk(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The page photographed lying on a dark wooden desk, slightly turned, the desk showing around it."""
    angle = rng.uniform(-4, 4)
    page = picture.convert("RGB").rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    outline = Image.new("L", picture.size, 255).rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    width, height = (round(side / rng.uniform(*DESK_SHARE)) for side in picture.size)
    width, height = max(width, page.width), max(height, page.height)
    base = rng.uniform(25, 90)  # the wood's brightness, and its grain along the planks
    grain = np.asarray(Image.fromarray(noise_around_128((max(1, height // 6), max(1, width // 48)), 12, rng)).resize(
        (width, height), Image.Resampling.BILINEAR), np.float32) - 128
    desk = np.stack([base * 1.3 + grain, base + 0.8 * grain, base * 0.6 + 0.5 * grain], axis=-1)
    frame = Image.fromarray(np.uint8(np.clip(desk, 0, 255)), "RGB")
    frame.paste(page, (int(rng.integers(0, width - page.width + 1)), int(rng.integers(0, height - page.height + 1))),
                outline)
    return frame


def save_picture(picture: Image.Image, path: Path, quality: int = 85) -> Path:
    """Saved in the format its name says: JPEG at `quality`, lossless ones quickly."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".tiff": "TIFF"}[path.suffix]
    options = {"JPEG": {"quality": quality}, "PNG": {"compress_level": 1}}.get(fmt, {})
    picture.save(path, fmt, **options)
    return path


class Pictures:
    """The pictures of the check as they are made: where each is, and what it is."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.rows = folder, []

    def add(self, picture: Image.Image, name: str, source: str, kind: str, label: int | None,
            suffix: str = ".png", quality: int = 85, **detail) -> None:
        path = save_picture(picture, self.folder / f"{name}{suffix}", quality)
        self.rows.append({"path": str(path), "source": source, "kind": kind, "label": label, **detail})

    def add_kinds(self, source: str, name: str, label: int, made: tuple, bold: tuple, suffix: str,
                  rng: np.random.Generator, **detail) -> None:
        """The digit as made, cropped, bold and blurred small, and on a desk."""
        (picture, box), (bold_picture, bold_box) = made, bold
        self.add(picture, f"{name}-made", source, "made", label, suffix, **detail)
        self.add(cropped(picture, box, 0), f"{name}-tight", source, "tight", label, suffix)
        self.add(cropped(picture, box, MARGIN), f"{name}-margin", source, "margin", label, suffix)
        for side in (150, 48):
            self.add(blurred_small(bold_picture, bold_box, side), f"{name}-bold{side}", source, f"bold{side}", label)
        self.add(on_desk(picture, rng), f"{name}-desk", source, "desk", label, ".jpg")


def made_pictures(folder: Path, data: Path, count: int, seed: int) -> list[dict]:
    """Every picture of the check, made into `folder` on the first run and listed in its pictures.json."""
    listing = folder / "pictures.json"
    if listing.exists():
        return json.loads(listing.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with np.load(data) as arrays:
        chosen = rng.choice(len(arrays["y_test"]), count, replace=False)
        digits, labels = arrays["x_test"][chosen], arrays["y_test"][chosen]
    pictures = Pictures(folder)
    for i, (digit, label) in enumerate(zip(digits, labels.tolist())):
        seed_here = int(rng.integers(2**31))
        pictures.add_kinds("mnist", f"mnist{i}", label, photographed(digit, np.random.default_rng(seed_here)),
                           photographed(digit, np.random.default_rng(seed_here), bold=True),
                           f".{FORMATS[i % len(FORMATS)].lower()}", rng)
        photo, kind = pen_photo(digit, np.random.default_rng(seed_here))
        bold, bold_kind = pen_photo(digit, np.random.default_rng(seed_here), pen_share=BOLD_PEN)
        pictures.add_kinds("pen", f"pen{i}", label, (photo, kind["box"]), (bold, bold_kind["box"]),
                           ".jpg" if i % 2 else ".png", rng,
                           pen=kind["pen"], ruled=kind["ruled"], boxed=kind["boxed"])
        pictures.add_kinds("canvas", f"canvas{i}", label, drawn_on_canvas(digit, np.random.default_rng(seed_here)),
                           drawn_on_canvas(digit, np.random.default_rng(seed_here), bold=True), ".png", rng)
    fonts = sorted({p for folder in FONT_FOLDERS if folder.is_dir() for p in folder.rglob("*.ttf")})
    for f, font in enumerate(fonts):
        for digit in range(10):
            size = int(rng.integers(60, 400))
            pictures.add_kinds("fonts", f"font{f}-{digit}", digit, typeset(digit, font, size),
                               typeset(digit, font, size, bold=True), ".png", rng)
    for kind in (*BLANK_PAGES, "on a desk"):
        for i in range(max(10, count // 5)):
            page = blank_page("plain" if kind == "on a desk" else kind, rng)
            page = on_desk(page, rng) if kind == "on a desk" else page
            pictures.add(page, f"blank-{kind.replace(' ', '-')}{i}", "blank", kind, None, ".jpg",
                         quality=40 if kind == "noisy" else 85)
    listing.write_text(json.dumps(pictures.rows))  # last: an interrupted run makes them all again
    return pictures.rows


def tutorial_input(path: Path) -> np.ndarray:
    """What most tutorials do: grey, shrink to 28x28, scale to [0, 1]."""
    with Image.open(path) as picture:
        return np.asarray(picture.convert("L").resize((28, 28)), np.float32) / 255


def our_inputs(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """predict.py's inputs for the pictures, and which it refused as blank (a blank input: a miss)."""
    inputs, refused = [], []
    for path in paths:
        try:
            inputs.append(predict.read_digit(predict.load_picture(path)).image)
            refused.append(False)
        except predict.PictureError:
            inputs.append(np.zeros((28, 28), np.float32))
            refused.append(True)
    return np.stack(inputs), np.array(refused)


def honesty(probabilities: np.ndarray, labels: np.ndarray) -> str:
    """How the printed confidence behaves: calibration error, overconfident mistakes, sure right answers."""
    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    sure_wrong = f"{int((confidence[~right] > 0.9).sum())} of {int((~right).sum())}"
    median_right = f"{100 * np.median(confidence[right]):.1f}%" if right.any() else "n/a"
    return (f"calibration error {100 * train.calibration_error(probabilities, labels):.1f}%, "
            f"mistakes above 90%: {sure_wrong}, median confidence when right {median_right}")


def print_table(rows: list[dict], right: np.ndarray, refused: np.ndarray, tutorial_right: dict) -> None:
    """Accuracy by kind of picture (rows) and source of digits (columns); (n): n refused as blank."""
    print(f"{'':<34}" + "".join(f"{name:>20}" for name in SOURCES.values()))
    for kind, title in KINDS.items():
        cells = []
        for source in SOURCES:
            if kind == "tutorial":
                chosen = tutorial_right.get(source, np.zeros(0, bool))
                cells.append(f"{100 * chosen.mean():5.1f}%" if len(chosen) else "")
                continue
            chosen = np.array([row["source"] == source and row["kind"] == kind for row in rows])
            blank = f" ({int(refused[chosen].sum())})" if refused[chosen].any() else ""
            cells.append(f"{100 * right[chosen].mean():5.1f}%{blank}" if chosen.any() else "")
        print(f"{title:<34}" + "".join(f"{cell:>20}" for cell in cells))
    counts = {source: sum(row["source"] == source and row["kind"] == "made" for row in rows) for source in SOURCES}
    print(f"{'(pictures of each kind)':<34}" + "".join(f"{counts[source]:>20}" for source in SOURCES))
    print("(n): refused as blank (\"no digit found\"), counted as wrong")


def pen_kinds(rows: list[dict], right: np.ndarray) -> str:
    """The pen photos as made, by pen width, paper and box."""
    groups = {"pen 1-2% of the height": lambda r: r["pen"] < 0.02, "2-3%": lambda r: 0.02 <= r["pen"] < 0.03,
              "3-4%": lambda r: r["pen"] >= 0.03, "ruled": lambda r: r["ruled"], "plain": lambda r: not r["ruled"],
              "boxed": lambda r: r["boxed"]}
    made = [i for i, row in enumerate(rows) if row["source"] == "pen" and row["kind"] == "made"]
    parts = []
    for name, holds in groups.items():
        chosen = [i for i in made if holds(rows[i])]
        parts.append(f"{name} {100 * right[chosen].mean():.1f}% ({len(chosen)})" if chosen else f"{name}: none")
    return "pen photos as made: " + ", ".join(parts)


def preprocessing_times(rng: np.random.Generator, digit: np.ndarray, folder: Path) -> None:
    """Seconds to read one picture and make the model's input: a 12-megapixel photo, a 280x280 drawing."""
    photo = folder / "photo.jpg"
    picture, _ = pen_photo(digit, rng, pen_share=0.02)
    save(picture.resize((4000, 3000)), photo)
    drawing = folder / "drawing.png"
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line([(70, 60), (200, 60), (120, 230)], fill=(0, 0, 0, 255), width=18, joint="curve")
    canvas.save(drawing)
    for name, path in (("12-megapixel JPEG photo (4000x3000)", photo), ("280x280 drawing (PNG)", drawing)):
        times = []
        for _ in range(TIMING_ROUNDS):
            started = time.perf_counter()
            predict.read_digit(predict.load_picture(path))
            times.append(time.perf_counter() - started)
        print(f"preprocessing a {name}: median {1000 * statistics.median(times):.0f} ms "
              f"over {TIMING_ROUNDS} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="real MNIST (.npz): its test digits")
    parser.add_argument("--model", type=Path, default=Path(train.ONNX_FILE),
                        help="the trained model, as predict.py takes it (model.onnx, or the model.h5 beside it)")
    parser.add_argument("--count", type=int, default=100,
                        help="MNIST test digits to re-render, write with a pen and draw on the canvas (each); "
                             "the fonts' digits are all used")
    parser.add_argument("--seed", type=int, default=0, help="seed for the pictures")
    parser.add_argument("--pictures", type=Path, help="where the pictures are made once and kept "
                        "(default: handwriting-check-SEED-COUNT in the temporary folder)")
    args = parser.parse_args()
    folder = args.pictures or Path(tempfile.gettempdir()) / f"handwriting-check-{args.seed}-{args.count}"

    started = time.perf_counter()
    rows = made_pictures(folder, args.data, args.count, args.seed)
    made_in = time.perf_counter() - started
    recognizer = predict.Recognizer(args.model)  # the model predict.py runs
    temperature = recognizer.temperature

    def model_own(images: np.ndarray) -> np.ndarray:
        """The model's own probabilities for many inputs at once (predict.py calibrates them)."""
        return recognizer.session.run(None, {recognizer.input_name: images.astype(np.float32)})[0]

    started = time.perf_counter()
    inputs, refused = our_inputs([Path(row["path"]) for row in rows])
    read_in = time.perf_counter() - started
    raw = model_own(inputs)
    probabilities = train.calibrated(raw, temperature)
    labels = np.array([-1 if row["label"] is None else row["label"] for row in rows])
    answered = ~refused
    right = answered & (probabilities.argmax(axis=1) == labels)
    made = [i for i, row in enumerate(rows) if row["kind"] == "made"]
    tutorial = model_own(np.stack([tutorial_input(Path(rows[i]["path"])) for i in made]))
    tutorial_right = {source: np.array([tutorial[n].argmax() == labels[i] for n, i in enumerate(made)
                                        if rows[i]["source"] == source]) for source in SOURCES}

    print(f"Reading {len(rows)} pictures (made in {made_in:.0f} s, read in {read_in:.0f} s; {folder})")
    print_table(rows, right, refused, tutorial_right)
    blank = np.array([row["source"] == "blank" for row in rows])
    kinds = dict.fromkeys(row["kind"] for row in rows if row["source"] == "blank")
    read_as_digit = [f"{kind} {sum(answered[i] for i, row in enumerate(rows) if row['kind'] == kind and blank[i])}"
                     f" of {sum(row['kind'] == kind and blank[i] for i, row in enumerate(rows))}" for kind in kinds]
    print(f"blank pages read as a digit: {int(answered[blank].sum())} of {int(blank.sum())} "
          f"({', '.join(read_as_digit)})")
    wrong = answered & ~blank & ~right
    for name, given in (("calibrated (as printed)", probabilities), ("the model's own", raw)):
        sure = int((given.max(axis=1)[wrong] > 0.9).sum())
        print(f"wrong answers above 90% confidence, {name}: {sure} of {int(wrong.sum())} "
              f"({100 * sure / max(1, int(wrong.sum())):.0f}%)")
    print(pen_kinds(rows, right))
    pen = np.array([row["source"] == "pen" and row["kind"] == "made" for row in rows])
    print(f"confidence on the pen photos as made, as the model gives it: {honesty(raw[pen], labels[pen])}; "
          f"calibrated (printed): {honesty(probabilities[pen], labels[pen])}")
    with np.load(args.data) as data:
        test = model_own(data["x_test"] / 255)
        print(f"MNIST test set (10,000 images): as the model gives it: {honesty(test, data['y_test'])}; "
              f"calibrated (temperature {temperature:.2f}): "
              f"{honesty(train.calibrated(test, temperature), data['y_test'])}")
        digit = data["x_test"][0]
    with tempfile.TemporaryDirectory() as scratch:
        preprocessing_times(np.random.default_rng(args.seed), digit, Path(scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
