#!/usr/bin/env python3
"""How well does --predict read digits that are not MNIST's own 28x28 images?

    python tests/handwriting_check.py --data ../shared/data/mnist.npz --model model.h5

Makes pictures the way users take them and scores train.py's preprocessing on them,
next to the tutorial approach (shrink the picture to 28x28 and feed it in):
  - MNIST test digits re-rendered: other sizes and positions, thinner or bolder strokes,
    either polarity, coloured ink and paper, noise, uneven lighting, slight rotation,
    saved as PNG, JPEG, BMP, GIF or TIFF;
  - digits typeset in the fonts this machine has (not handwriting, but not MNIST either).
Run by hand; it prints figures and asserts nothing. Accuracy is against the true label.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402

FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF"]
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


def score(model, paths: list[Path], labels: list[int]) -> tuple[float, float, int]:
    ours, failed = [], 0
    for path in paths:
        try:
            ours.append(train.read_digit(train.load_picture(path)).image)
        except train.PictureError:
            failed += 1
            ours.append(np.zeros((28, 28), np.float32))  # counts as a miss
    ours_predicted = model.predict(np.stack(ours), verbose=0).argmax(axis=1)
    tutorial_predicted = model.predict(np.stack([tutorial_input(p) for p in paths]), verbose=0).argmax(axis=1)
    labels = np.array(labels)
    return float((ours_predicted == labels).mean()), float((tutorial_predicted == labels).mean()), failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="real MNIST (.npz): its test digits")
    parser.add_argument("--model", type=Path, default=Path(train.MODEL_FILE), help="the trained model")
    parser.add_argument("--count", type=int, default=500, help="re-rendered MNIST digits to make")
    parser.add_argument("--seed", type=int, default=0, help="seed for the renderings")
    args = parser.parse_args()

    train.start_tensorflow(args.seed)
    model = train.load_trained_model(args.model)
    rng = np.random.default_rng(args.seed)
    with np.load(args.data) as data:
        chosen = rng.choice(len(data["y_test"]), args.count, replace=False)
        digits, digit_labels = data["x_test"][chosen], data["y_test"][chosen]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
