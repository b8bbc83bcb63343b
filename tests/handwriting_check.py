#!/usr/bin/env python3
"""How well does --predict read digits that are not MNIST's own 28x28 images?

    python tests/handwriting_check.py --data ../shared/data/mnist.npz --model model.h5

Makes pictures the way users take them and scores train.py's preprocessing on them,
next to the tutorial approach (shrink the picture to 28x28 and feed it in):
  - MNIST test digits re-rendered: other sizes and positions, thinner or bolder strokes,
    either polarity, coloured ink and paper, noise, uneven lighting, slight rotation,
    saved as PNG, JPEG, BMP, GIF or TIFF;
  - digits typeset in the fonts this machine has (not handwriting, but not MNIST either);
  - MNIST test digits written again with a ballpoint pen (1-4% of the digit's height wide)
    and photographed (tests/pen_photos.py), each next to the same digit drawn with a thick
    pen (12%) in the same photo, with how honest the printed confidence is on them;
  - the time --predict's preprocessing takes for a 12-megapixel photo and a 280x280 drawing.
Run by hand; it prints figures and asserts nothing. Accuracy is against the true label.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from pen_photos import pen_photo, save  # noqa: E402

FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF"]
THICK_PEN = 0.12  # a thick pen's width as a share of the digit's height: MNIST's own strokes
TIMING_ROUNDS = 10
FONT_FOLDERS = [Path("/usr/share/fonts"), Path("/Library/Fonts"), Path("C:/Windows/Fonts")]


def photographed(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One MNIST digit as a user might photograph or scan it."""
    size = int(rng.integers(100, 1200))
    digit_size = int(size * rng.uniform(0.3, 0.85))
    ink = Image.fromarray(digit).resize((digit_size, digit_size), Image.Resampling.BICUBIC)
    ink = ink.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC)
    stroke = int(rng.integers(-1, 3)) * max(1, digit_size // 60) * 2 + 1  # thinner ... bolder
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
    return Image.fromarray(np.uint8(np.clip(colour, 0, 1) * 255), "RGB")


def typeset(digit: int, font: Path, rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(60, 400))
    picture = Image.new("L", (int(size * 1.4), int(size * 1.4)), 255)
    typeface = ImageFont.truetype(str(font), size)
    ImageDraw.Draw(picture).text((size * 0.2, size * 0.1), str(digit), font=typeface, fill=0)
    return picture


def saved(picture: Image.Image, folder: Path, name: str, fmt: str) -> Path:
    path = folder / f"{name}.{fmt.lower()}"
    picture.save(path, fmt, **({"quality": 75} if fmt == "JPEG" else {}))
    return path


def tutorial_input(path: Path) -> np.ndarray:
    """What most tutorials do: grey, shrink to 28x28, scale to [0, 1]."""
    with Image.open(path) as picture:
        return np.asarray(picture.convert("L").resize((28, 28)), np.float32) / 255


def our_inputs(paths: list[Path]) -> tuple[np.ndarray, int]:
    """train.py's inputs for the pictures, and how many it refused as blank (a blank input: a miss)."""
    inputs, failed = [], 0
    for path in paths:
        try:
            inputs.append(train.read_digit(train.load_picture(path)).image)
        except train.PictureError:
            failed += 1
            inputs.append(np.zeros((28, 28), np.float32))
    return np.stack(inputs), failed


def score(model, paths: list[Path], labels: list[int]) -> tuple[float, float, int]:
    ours, failed = our_inputs(paths)
    ours_predicted = model.predict(ours, verbose=0).argmax(axis=1)
    tutorial_predicted = model.predict(np.stack([tutorial_input(p) for p in paths]), verbose=0).argmax(axis=1)
    labels = np.array(labels)
    return float((ours_predicted == labels).mean()), float((tutorial_predicted == labels).mean()), failed


def honesty(probabilities: np.ndarray, labels: np.ndarray) -> str:
    """How the printed confidence behaves: calibration error, overconfident mistakes, sure right answers."""
    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    sure_wrong = f"{int((confidence[~right] > 0.9).sum())} of {int((~right).sum())}"
    median_right = f"{100 * np.median(confidence[right]):.1f}%" if right.any() else "n/a"
    return (f"calibration error {100 * train.calibration_error(probabilities, labels):.1f}%, "
            f"mistakes above 90%: {sure_wrong}, median confidence when right {median_right}")


def pen_check(model, temperature: float, digits: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, folder: Path) -> None:
    """Each digit written with a ballpoint and with a thick pen in the same photo; accuracy by kind."""
    pen_paths, thick_paths, kinds = [], [], []
    for i, digit in enumerate(digits):
        seed, suffix = int(rng.integers(2**31)), (".jpg" if i % 2 else ".png")
        picture, kind = pen_photo(digit, np.random.default_rng(seed))
        pen_paths.append(save(picture, folder / f"pen{i}{suffix}"))
        picture, _ = pen_photo(digit, np.random.default_rng(seed), pen_share=THICK_PEN)
        thick_paths.append(save(picture, folder / f"thick{i}{suffix}"))
        kinds.append({**kind, "format": suffix[1:].upper()})
    results = {}
    for name, paths in (("pen", pen_paths), ("thick", thick_paths)):
        inputs, failed = our_inputs(paths)
        raw = model.predict(inputs, verbose=0)
        results[name] = (raw, train.calibrated(raw, temperature), failed)
    right = results["pen"][1].argmax(axis=1) == labels
    thick_right = results["thick"][1].argmax(axis=1) == labels
    print(f"MNIST test digits written with a ballpoint and photographed ({len(labels)} photos, "
          f"800-4000 px, digit 10-45% of the frame height): train.py --predict {100 * right.mean():.1f}%, "
          f"no digit found in {results['pen'][2]}; the same digits drawn thick: "
          f"{100 * thick_right.mean():.1f}%, no digit found in {results['thick'][2]}")
    groups = {
        "pen 1-2% of the digit's height": [k["pen"] < 0.02 for k in kinds],
        "pen 2-3%": [0.02 <= k["pen"] < 0.03 for k in kinds],
        "pen 3-4%": [k["pen"] >= 0.03 for k in kinds],
        "ruled paper": [k["ruled"] for k in kinds],
        "plain paper": [not k["ruled"] for k in kinds],
        "a box around the digit": [k["boxed"] for k in kinds],
        "blue ink": [k["ink"] == "blue" for k in kinds],
        "black ink": [k["ink"] == "black" for k in kinds],
        "JPEG": [k["format"] == "JPG" for k in kinds],
        "PNG": [k["format"] == "PNG" for k in kinds],
        "digit 10-25% of the frame": [k["digit_share"] < 0.25 for k in kinds],
        "digit 25-45% of the frame": [k["digit_share"] >= 0.25 for k in kinds],
    }
    for name, chosen in groups.items():
        chosen = np.array(chosen)
        print(f"  {name:<32} {100 * right[chosen].mean():5.1f}%  (thick {100 * thick_right[chosen].mean():5.1f}%, "
              f"{chosen.sum()} photos)")
    for name in ("pen", "thick"):
        raw, honest, _ = results[name]
        print(f"  confidence on the {name} photos, as the model gives it: {honesty(raw, labels)}")
        print(f"  confidence on the {name} photos, calibrated (printed): {honesty(honest, labels)}")


def preprocessing_times(rng: np.random.Generator, digit: np.ndarray, folder: Path) -> None:
    """Seconds to read one picture and make the model's input: a 12-megapixel photo, a 280x280 drawing."""
    from PIL import Image, ImageDraw

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
            train.read_digit(train.load_picture(path))
            times.append(time.perf_counter() - started)
        print(f"preprocessing a {name}: median {1000 * statistics.median(times):.0f} ms "
              f"over {TIMING_ROUNDS} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="real MNIST (.npz): its test digits")
    parser.add_argument("--model", type=Path, default=Path(train.MODEL_FILE), help="the trained model")
    parser.add_argument("--count", type=int, default=500, help="re-rendered MNIST digits to make")
    parser.add_argument("--pen-count", type=int, default=500, help="pen photos to make (and as many thick)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the renderings")
    args = parser.parse_args()

    train.start_tensorflow(args.seed)
    model = train.load_trained_model(args.model)
    temperature = train.model_temperature(args.model)
    rng = np.random.default_rng(args.seed)
    with np.load(args.data) as data:
        chosen = rng.choice(len(data["y_test"]), args.count, replace=False)
        digits, digit_labels = data["x_test"][chosen], data["y_test"][chosen]
        pen_chosen = rng.choice(len(data["y_test"]), args.pen_count, replace=False)
        pen_digits, pen_labels = data["x_test"][pen_chosen], data["y_test"][pen_chosen]
        test_probabilities = model.predict(data["x_test"] / 255, verbose=0)
        print(f"MNIST test set (10,000 images): "
              f"as the model gives it: {honesty(test_probabilities, data['y_test'])}; "
              f"calibrated (temperature {temperature:.2f}): "
              f"{honesty(train.calibrated(test_probabilities, temperature), data['y_test'])}")
    fonts = sorted({p for folder in FONT_FOLDERS if folder.is_dir() for p in folder.rglob("*.ttf")})

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = [saved(photographed(d, rng), folder, f"mnist{i}", FORMATS[i % len(FORMATS)])
                 for i, d in enumerate(digits)]
        ours, tutorial, failed = score(model, paths, list(digit_labels))
        print(f"MNIST test digits re-rendered ({args.count} pictures, 5 formats): "
              f"train.py --predict {100 * ours:.1f}%, tutorial resize {100 * tutorial:.1f}%, "
              f"no digit found in {failed}")
        for fmt in FORMATS:
            chosen = [i for i in range(len(paths)) if FORMATS[i % len(FORMATS)] == fmt]
            ours_fmt, _, _ = score(model, [paths[i] for i in chosen], [int(digit_labels[i]) for i in chosen])
            print(f"  {fmt:<5} {100 * ours_fmt:.1f}%")

        typeset_paths, typeset_labels = [], []
        for f, font in enumerate(fonts):
            for digit in range(10):
                typeset_paths.append(saved(typeset(digit, font, rng), folder, f"font{f}-{digit}", "PNG"))
                typeset_labels.append(digit)
        if typeset_paths:
            ours, tutorial, failed = score(model, typeset_paths, typeset_labels)
            print(f"digits typeset in {len(fonts)} fonts ({len(typeset_paths)} pictures): "
                  f"train.py --predict {100 * ours:.1f}%, tutorial resize {100 * tutorial:.1f}%, "
                  f"no digit found in {failed}")
        pen_check(model, temperature, pen_digits, pen_labels, rng, folder)
        preprocessing_times(rng, pen_digits[0], folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
