"""Pictures of digits as people take them: MNIST digits rewritten with a pen and photographed.

Used by tests/handwriting_check.py (figures) and the test suite (checks). An MNIST digit is
thinned to its centre line, which is then drawn again with a round pen of any width, at any
size, anywhere in a frame, on plain or ruled paper, in blue or black ink, sometimes inside a
box, under uneven light, and saved as JPEG or PNG. And pages with no digit on them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))  # each pair of touching pixels once
INKS = {"black": (25, 25, 35), "blue": (25, 45, 140)}


def centre_line(digit: np.ndarray, scale: int = 4) -> np.ndarray:
    """The digit's strokes thinned to lines one pixel wide (Zhang and Suen, 1984), `scale` times enlarged."""
    size = digit.shape[0] * scale
    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)) > 100
    mask = big.astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            p = np.pad(mask, 1)
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            count = sum(n)
            turns = sum((n[i] == 0) & (n[(i + 1) % 8] == 1) for i in range(8))
            if step == 0:
                side = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                side = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            remove = (mask == 1) & (count >= 2) & (count <= 6) & (turns == 1) & side
            if remove.any():
                mask[remove] = 0
                changed = True
    return mask.astype(bool)


def write_digit(draw: ImageDraw.ImageDraw, line: np.ndarray, left: float, top: float, height: float,
                pen: float, colour) -> None:
    """Draw the centre line `line` as pen strokes `pen` pixels wide, scaled to `height` pixels at (left, top)."""
    rows, columns = np.nonzero(line)
    spread = max(np.ptp(rows), np.ptp(columns)) + 1
    scale = height / spread
    y0, x0 = rows.min(), columns.min()
    at = {(r, c) for r, c in zip(rows, columns)}
    radius = pen / 2
    for r, c in at:
        x, y = left + (c - x0) * scale, top + (r - y0) * scale
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        for dr, dc in NEIGHBOURS:
            if (r + dr, c + dc) in at:
                draw.line([(x, y), (x + dc * scale, y + dr * scale)], fill=colour, width=max(1, round(pen)))


def pen_photo(digit: np.ndarray, rng: np.random.Generator, pen_share: float | None = None,
              ruled: bool | None = None, boxed: bool | None = None, longer: int | None = None
              ) -> tuple[Image.Image, dict]:
    """One MNIST digit written again with a pen and photographed; what was chosen, as a dict.

    pen_share is the pen's width as a share of the digit's height (a ballpoint: 1-4%); longer
    the photo's longer side in pixels (800-4000). Each left out is drawn at random.
    """
    drawn_longer = int(rng.integers(800, 4001))
    longer = drawn_longer if longer is None else longer
    width, height = (longer, longer * 3 // 4) if rng.random() < 0.5 else (longer * 3 // 4, longer)
    digit_height = height * rng.uniform(0.10, 0.45)
    drawn = rng.uniform(0.01, 0.04), rng.random() < 0.5, rng.random() < 0.25  # drawn whatever is given,
    pen_share, ruled, boxed = (drawn[0] if pen_share is None else pen_share,  # so the rest of the photo
                               drawn[1] if ruled is None else ruled,  # stays the same
                               drawn[2] if boxed is None else boxed)
    ink = "blue" if rng.random() < 0.5 else "black"
    line = centre_line(digit)
    rows, columns = np.nonzero(line)
    digit_width = digit_height * (np.ptp(columns) + 1) / (max(np.ptp(rows), np.ptp(columns)) + 1)
    margin = digit_height * 0.5
    left = rng.uniform(margin, max(margin + 1, width - digit_width - margin))
    top = rng.uniform(margin, max(margin + 1, height - digit_height - margin))

    paper = tuple(int(v) for v in rng.integers(215, 256, 3))
    picture = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(picture)
    spacing, tilt, gap = digit_height * rng.uniform(0.9, 1.4), rng.uniform(-0.01, 0.01) * width, rng.uniform(0.15, 0.35)
    if ruled:  # pale blue lines about a digit's height apart, slightly tilted
        thickness = max(1, round(height * 0.0015))
        for y in np.arange(rng.uniform(0, spacing), height + abs(tilt), spacing):
            draw.line([(0, y), (width, y + tilt)], fill=(150, 175, 215), width=thickness)
    pen = max(1.0, pen_share * digit_height)
    colour = tuple(int(v) for v in np.clip(np.array(INKS[ink]) + rng.integers(-15, 16, 3), 0, 255))
    write_digit(draw, line, left, top, digit_height, pen, colour)
    if boxed:
        gap = digit_height * gap + pen
        draw.rectangle([left - gap, top - gap, left + digit_width + gap, top + digit_height + gap],
                       outline=colour, width=max(1, round(pen)))
    reach = pen / 2 + 1  # the ink's bounds: the centre line's, and half the pen around it
    box = (max(0, int(left - reach)), max(0, int(top - reach)),
           min(width, int(left + digit_width + reach) + 1), min(height, int(top + digit_height + reach) + 1))
    return lit(picture, rng), {"pen": pen_share, "ruled": ruled, "boxed": boxed, "ink": ink,
                               "frame": f"{width}x{height}", "digit_share": digit_height / height, "box": box}


def lit(picture: Image.Image, rng: np.random.Generator, falloff: tuple[float, float] = (0.05, 0.45),
        grain: tuple[float, float] = (2, 10)) -> Image.Image:
    """The page as a camera sees it: light falling off across it in some direction, and sensor noise."""
    width, height = picture.size
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:1:32j, 0:1:32j]
    along = x * np.cos(angle) + y * np.sin(angle)
    light = 1 - rng.uniform(*falloff) * (along - along.min()) / np.ptp(along)
    shade = Image.fromarray(np.uint8(255 * light)).resize((width, height), Image.Resampling.BILINEAR)
    picture = ImageChops.multiply(picture, Image.merge("RGB", [shade] * 3))
    noise = Image.fromarray(noise_around_128((height // 4, width // 4), rng.uniform(*grain), rng)).resize((width, height))
    return ImageChops.add(picture, Image.merge("RGB", [noise] * 3), scale=1.0, offset=-128)


def noise_around_128(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise as a uint8 picture, grey 128 on average: Pillow's effect_noise, but following
    the seed (Pillow's does not, and a test of pictures made with it passed only sometimes)."""
    return np.uint8(np.clip(np.round(128 + rng.normal(0, sigma, shape)), 0, 255))


BLANK_PAGES = ("plain", "ruled", "squared", "shaded", "noisy")


def blank_page(kind: str, rng: np.random.Generator, longer: int | None = None) -> Image.Image:
    """A photo of a page with no digit on it: plain, ruled (sometimes with a margin line), squared,
    strongly shaded (light falling off, a shadow across a corner) or noisy (a dim room's grain)."""
    longer = int(rng.integers(800, 2001)) if longer is None else longer
    width, height = (longer, longer * 3 // 4) if rng.random() < 0.5 else (longer * 3 // 4, longer)
    picture = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(picture)
    thickness = max(1, round(height * 0.0015))
    if kind in ("ruled", "squared"):
        spacing = height * (rng.uniform(0.04, 0.12) if kind == "ruled" else rng.uniform(0.025, 0.06))
        colour = (150, 175, 215) if kind == "ruled" else (165, 180, 200)
        for y in np.arange(rng.uniform(0, spacing), height, spacing):
            draw.line([(0, y), (width, y)], fill=colour, width=thickness)
        for x in np.arange(rng.uniform(0, spacing), width, spacing) if kind == "squared" else ():
            draw.line([(x, 0), (x, height)], fill=colour, width=thickness)
        if kind == "ruled" and rng.random() < 0.5:  # the margin's red line
            x = width * rng.uniform(0.05, 0.2)
            draw.line([(x, 0), (x, height)], fill=(220, 120, 120), width=thickness)
    if kind == "shaded":
        shadow = Image.new("L", (width, height), 255)
        corner = rng.uniform(0.3, 0.6, 2) * (width, height)
        ImageDraw.Draw(shadow).rectangle([-width, -height, *corner], fill=int(rng.integers(110, 170)))
        shadow = shadow.filter(ImageFilter.GaussianBlur(height * 0.03)).convert("RGB")
        picture = ImageChops.multiply(picture, shadow)
    return lit(picture, rng, falloff=(0.3, 0.6) if kind == "shaded" else (0.05, 0.45),
               grain=(20, 35) if kind == "noisy" else (2, 10))


def save(picture: Image.Image, path: Path) -> Path:
    picture.save(path, quality=85) if path.suffix == ".jpg" else picture.save(path, compress_level=1)  # quick, as lossless
    return path
