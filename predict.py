#!/usr/bin/env python3
"""Read your own pictures of digits with the model train.py saved.

    python predict.py seven.jpg                   # one picture: "seven.jpg: 7 (99.2%)"
    python predict.py my-digits/                  # every picture in a folder
    python predict.py seven.jpg --format json     # one JSON object per picture
    python predict.py --help                      # every option

A photo or a drawing is not an MNIST digit: each picture is made into one the way MNIST's
were made (the ink found on the paper, ruled lines, specks and frames left out, the pen's
width brought to MNIST's, scaled to fit 20x20 and centred by centre of mass in 28x28), and
the model's answer is given with the calibrated confidence train.py measured for it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO, Callable, NamedTuple

import numpy as np

from train import (EXIT_ERROR, EXIT_INTERRUPTED, IMAGE_SHAPE, NUM_CLASSES, ONNX_FILE, TEMPERATURE_ATTRIBUTE,
                   OneLineParser, OutputError, calibrated, has_packages, output_dir_problem,
                   stop_as_ctrl_c, warn, write_errors_named)

# -----------------------------------------------------------------------------
# What reading a picture gives, and what can stop it
# -----------------------------------------------------------------------------
class PictureError(Exception):
    """One picture cannot be read as a digit; the message says why."""


class ModelError(Exception):
    """The model file is missing or is not a digit model; the message names it and says why."""


class Picture(NamedTuple):
    """A picture as grey levels, and how many of the user's pixels one of its pixels stands for."""
    grey: np.ndarray  # in [0, 1], at most WORK_SIZE pixels a side
    scale: float  # the user's pixels per pixel of `grey`: above 1 when the picture was shrunk


class Reading(NamedTuple):
    """A picture made into the model's input, and what the preprocessing had to guess about it."""
    image: np.ndarray  # 28x28 float32 in [0, 1], light digit on black, as MNIST's
    notes: list[str]


# -----------------------------------------------------------------------------
# Pictures: opened safely, then made into MNIST's kind of input
# -----------------------------------------------------------------------------
def load_picture(path: Path) -> np.ndarray:
    """The picture in the file `path` as grey levels (see decode_picture)."""
    return open_picture(path).grey


def open_picture(path: Path) -> Picture:
    """The picture in the file `path`; what keeps it from being read is said in a PictureError."""
    if path.is_dir():
        raise PictureError("a folder with no pictures")
    if not path.exists():
        raise PictureError("no such file")
    if not path.is_file():
        raise PictureError("not a regular file")
    if path.stat().st_size == 0:
        raise PictureError("file is empty")
    try:
        with open(path, "rb") as file:
            return picture_from(file)
    except PermissionError:
        raise PictureError("permission denied") from None
    except OSError as error:  # a disk or network share failing under the file
        raise PictureError(f"cannot read the file ({error.strerror or error})") from None


MAX_PICTURE_PIXELS = 60_000_000  # larger pictures are refused: more than any phone's camera takes


def decode_picture(file: BinaryIO, max_pixels: int = MAX_PICTURE_PIXELS) -> np.ndarray:
    """Grey levels in [0, 1], at most WORK_SIZE pixels a side (see picture_from)."""
    return picture_from(file, max_pixels).grey


WORK_SIZE = 1024  # a picture is shrunk to at most this many pixels a side before it is read
PICTURE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # what photos and drawings come in: only these
# are opened (Pillow would run Ghostscript on an EPS, and each format it reads is code exposed to the file)
NOT_A_PICTURE_FORMAT = "not a PNG, JPEG, GIF, BMP, TIFF or WebP image"
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a camera was held


def picture_from(file: BinaryIO, max_pixels: int = MAX_PICTURE_PIXELS) -> Picture:
    """The picture in `file`, at most WORK_SIZE pixels a side, as grey levels in [0, 1]; one that
    would decode to more than `max_pixels` pixels is refused (a JPEG is decoded at a reduced size,
    and counted at it).

    Only PICTURE_FORMATS are opened. See-through parts are laid over the colour the marks stand
    out from: black under light strokes, white under dark ones, so a drawing exported from a
    canvas reads either way. Whatever goes wrong in decoding is this picture's PictureError: a
    damaged file can make Pillow raise nearly anything (struct.error, IndexError, ...).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # Pillow's own guard only warns; the limit below is said in words
    try:
        with Image.open(file, formats=PICTURE_FORMATS) as picture:
            width, height = picture.size
            picture.draft("L", (WORK_SIZE, WORK_SIZE))  # JPEG: decode at a reduced size already
            if picture.width * picture.height > max_pixels:
                raise PictureError(f"too large to read safely ({width}x{height} pixels; "
                                   f"at most {max_pixels // 10**6} megapixels)")
            picture.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS)
            if picture.getexif().get(EXIF_ORIENTATION, 1) != 1:  # photos: upright as the camera meant,
                picture = ImageOps.exif_transpose(picture)  # turned once shrunk: no full-size copy
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                grey = over_contrasting_background(picture.convert("RGBA"))
            else:
                grey = np.asarray(picture.convert("L"), dtype=np.float32) / 255
            return Picture(grey, max(width, height) / max(grey.shape))
    except PictureError:
        raise
    except UnidentifiedImageError:
        raise PictureError(NOT_A_PICTURE_FORMAT) from None
    except Exception as error:  # a broken file, whichever part of Pillow finds it broken
        raise PictureError(f"unreadable image ({str(error) or type(error).__name__})") from None


def over_contrasting_background(rgba) -> np.ndarray:
    """Grey levels of a picture with transparency, laid over black or white, whichever the marks are not."""
    alpha = np.asarray(rgba.getchannel("A"), np.float32) / 255
    grey = np.asarray(rgba.convert("L"), np.float32) / 255
    marks = alpha > 0.5
    light_marks = marks.any() and grey[marks].mean() > 0.5
    return grey * alpha + (0.0 if light_marks else 1.0) * (1 - alpha)


DIGIT_BOX = 20  # MNIST digits were scaled to fit 20x20 ...
FIELD = 28  # ... and centred by centre of mass in 28x28
MIN_INK_CONTRAST = 0.2  # strokes must stand out from the paper by this much (0-1) to count
FAINT_CONTRAST = 0.35  # ... and below this much they are noted as very faint
NOISE_LEVELS = 6  # ... and stand out from the paper's noise by this many of its standard deviations
SMALL_DIGIT = 16  # a digit fewer pixels tall than this is noted: its shape is a guess
LITTLE_INK = 40  # ... and so is one of fewer ink pixels than this


def read_digit(grey: np.ndarray, scale: float = 1.0) -> Reading:
    """The 28x28 input the model needs, made from a picture of one digit as MNIST's were made.

    MNIST's digits are pen strokes scanned in black and white, scaled to fit 20x20 with their
    aspect ratio kept (which anti-aliases them) and centred by centre of mass in 28x28. So the
    picture's ink is found and thresholded, ruled lines, specks and a box drawn around the
    digit are left out, the pen's width is brought within MNIST's, and then MNIST's own steps
    follow. Sizes in the notes are in the user's pixels, `scale` of them to each pixel of `grey`.
    """
    ink, between, enlarged = ink_map(grey)
    strokes, between_paper, paper = ink_strokes(ink, between)
    digit_ink = without_shadow_edges(without_frames(without_ruled_lines(strokes, ink)), between_paper)
    marks, several = digit_marks(digit_ink, SMALL_DIGIT * enlarged)
    notes = []
    if several:
        notes.append("several marks: used the largest")
    height = marks.shape[0] / enlarged  # in the pixels read, which a large picture has fewer of than the user's
    if height * scale < SMALL_DIGIT:
        notes.append(f"the digit is only {round(height * scale)} pixels tall")
    elif height < SMALL_DIGIT:
        notes.append(f"the digit is small for so large a picture ({round(height * scale)} pixels tall): "
                     "crop closer to it")
    elif marks.sum() * (scale / enlarged) ** 2 < LITTLE_INK:  # a small digit has little ink: said already
        notes.append("almost no ink")
    if float(np.percentile(ink[digit_ink], 90)) - paper < FAINT_CONTRAST:  # the digit's ink, not the ruled lines'
        notes.append("very faint")
    digit = fit_in_box(with_mnist_strokes(marks), DIGIT_BOX)
    return Reading(centre_by_mass(digit, FIELD), notes)


PAPER_WINDOW = 9  # the paper is the brightest value within a window this wide on a 48-pixel copy, ...
PAPER_REACH = 24  # ... or the paper on both sides of a stroke up to this many pixels away (a bold digit cropped close),
DARKEST_PAPER = 0.35  # ... and never darker than this share of the page's own brightness (ink is darker; a shadow
# seldom is)


def ink_map(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """How much ink each pixel holds, 0 (paper) to 1, whatever the polarity, lighting and pencil.

    The first map measures it against the brightest paper near the pixel, the second against the
    paper on both sides of it (see paper_on_both_sides): a stroke is darker than both, the edge of
    a shadow only than the lit side. A tiny picture is enlarged first, so that its strokes are
    several pixels wide; the third value says by how much.
    """
    from PIL import Image
    from scipy import ndimage

    factor = 1
    if max(grey.shape) < 100:
        factor = -(-100 // max(grey.shape))
        grey = np.kron(grey, np.ones((factor, factor), np.float32))
    grey = on_the_page(grey)
    # The paper's brightness around each pixel, taken on a small copy: the brightest value in a
    # window wider than a pen's stroke or, inside a wider one (a marker, a blurred scan), the paper
    # on both sides of it. Dividing by it evens out shadows and uneven lighting.
    height, width = grey.shape
    scale = 48 / max(height, width)
    small = Image.fromarray(np.uint8(grey * 255)).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    small = np.asarray(small)
    # Inside a bold bar along the edge of a tight crop no paper is found at all: a floor, then.
    darkest = np.uint8(DARKEST_PAPER * np.percentile(small, 95))

    def ink_against(paper: np.ndarray) -> np.ndarray:
        paper = Image.fromarray(np.maximum(paper, darkest)).resize((width, height), Image.Resampling.BILINEAR)
        return np.clip(1 - grey / np.maximum(np.asarray(paper, np.float32) / 255, 1e-3), 0, 1)

    both_sides = paper_on_both_sides(small, PAPER_REACH)
    brightest = np.maximum(ndimage.maximum_filter(small, size=PAPER_WINDOW, mode="nearest"), both_sides)
    return ink_against(brightest), ink_against(both_sides), factor


def paper_on_both_sides(small: np.ndarray, reach: int) -> np.ndarray:
    """The paper's brightness beside each pixel as a stroke has it: the brightest value within `reach`
    pixels on each side, the darker of the two sides, along a row or down a column, whichever is brighter.

    A stroke has paper on both sides of it in some direction; a pixel inside a shadow has the lit
    paper on one side only, and the shadow on the other. Beyond the picture's edge, the picture
    goes on as it is at the edge: a shadow across a corner has no lit paper beyond it.
    """
    from scipy import ndimage

    def brightest(axis: int, side: int) -> np.ndarray:
        return ndimage.maximum_filter1d(small, size=reach + 1, axis=axis, mode="nearest", origin=side * (reach // 2))

    along_rows, down_columns = (np.minimum(brightest(axis, 1), brightest(axis, -1)) for axis in (1, 0))
    return np.maximum(along_rows, down_columns)


PAGE_VIEW = 64  # a page lying on a desk is looked for on a copy this many pixels a side: ...
PAGE_RECTANGLE = 0.85  # ... it fills at least this share of the rectangle around it, ...
PAGE_PAPER = 0.5  # ... at least this share of it is paper, ...
DARK_PAGE_PAPER = 0.8  # ... (a dark page: this share, ...
DARK_PAGE_RECTANGLE = 0.9  # ... filling this share of its rectangle (a bold digit blurred is a roomy blob, but rounder)
DARK_PAGE_BORDER = 0.05  # ... and meeting less than this share of the border: not a shadow's corner)
PAGE_ROOM = 0.15  # ... a circle with this share of its size as radius fits in it, ...
FAR_DARKER = 0.6  # ... and what lies around it is less bright than this share of it (not a shadow; a desk's grain
# is lighter in places than its average)
PAGE_EDGE = 2  # ... and this many of the copy's pixels of its edge are left out


def on_the_page(grey: np.ndarray) -> np.ndarray:
    """The picture as dark ink on light paper, with whatever lies around the page (a desk) painted paper.

    A page lying on something far darker is light (see page_on_desk), and one lying on something
    far lighter is dark (a black card on a desk: the same, in the picture's darkness); otherwise
    the picture's border is paper (a digit cropped close, a blackboard).
    """
    from PIL import Image

    height, width = grey.shape
    scale = PAGE_VIEW / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(grey, "F").resize(size, Image.Resampling.BOX), np.float32)
    page, dark = page_on_desk(small), False
    if page is None:
        page, dark = dark_page_on_desk(small), True
    if page is None:
        return 1 - grey if light_on_dark(grey, small) else grey
    paper = float(np.median(small[page]))
    inside = np.asarray(Image.fromarray(page.astype(np.float32), "F").resize(
        (width, height), Image.Resampling.BILINEAR)) > 0.5
    on_page = np.where(inside, grey, paper).astype(np.float32)
    return 1 - on_page if dark else on_page


DARK_BORDER = 0.75  # a border this much dark is dark paper, however much of the picture is light (a chalk digit)


def light_on_dark(grey: np.ndarray, small: np.ndarray) -> bool:
    """Whether the picture is light ink on dark paper: most of its border is dark (below half and on
    the dark side of the split between light and dark, Otsu's way), and, unless nearly all of it
    is, so is most of the picture.

    A bold digit cropped to its ink meets the border along its strokes, and the box drawn around
    it may run down two of its edges: half the border is ink, but the paper is still most of
    the picture. A chalk digit cropped to its ink may cover most of the picture, but hardly any of
    the border.
    """
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    split = otsu_threshold(small)
    dark_border = float((border < min(0.5, split)).mean())
    return dark_border > 0.5 and (dark_border > DARK_BORDER or float((small < split).mean()) > 0.5)


def dark_page_on_desk(small: np.ndarray) -> np.ndarray | None:
    """Where the page is, less its edge, if the picture shows a dark page (a black card, a slate)
    lying on something far lighter; else None.

    It is page_on_desk on the picture's darkness (the darkest grey over each pixel's), in which
    far lighter is what far darker is in its brightness. The page must be mostly paper and nearly
    a rectangle (a bold digit blurred on light paper is a dark, roomy blob too, but rounder) and lie
    inside the picture (a shadow across a corner of a light page is dark and far darker than the page).
    """
    darkest = max(float(small.min()), 1 / 255)
    return page_on_desk(darkest / np.maximum(small, darkest), DARK_PAGE_PAPER, DARK_PAGE_RECTANGLE, DARK_PAGE_BORDER)


def page_on_desk(small: np.ndarray, paper_share: float = PAGE_PAPER, rectangle: float = PAGE_RECTANGLE,
                 border_share: float = 0.5) -> np.ndarray | None:
    """Where the page is, less its edge, if the picture shows a page lying on something far darker; else None.

    The page is the largest light region (the picture split into light and dark, Otsu's way)
    with the ink on it: a roomy rectangle (filling `rectangle` of the one around it), at least
    `paper_share` of it paper (what a digit's loops cut off of the page counted), meeting less than
    `border_share` of the picture's border, while one region less than FAR_DARKER as bright (not a
    shadow) meets more than half of it. A chalk digit on a blackboard is light and surrounded too,
    but is mostly the board between its strokes.
    """
    from scipy import ndimage

    light = small > otsu_threshold(small)
    labels, count = ndimage.label(light)
    if count == 0:
        return None
    largest = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    around, _ = ndimage.label(~light & (small < FAR_DARKER * np.median(small[largest])))
    edge, around_edge = (np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]) for a in (largest, around))
    if edge.mean() >= border_share or np.bincount(around_edge)[1:].max(initial=0) < 0.5 * len(edge):
        return None
    page = convex_hull(largest)  # with the ink on it, even where a stroke reaches its edge
    if (light & page).sum() < paper_share * page.sum() or rectangle_share(page) < rectangle:  # the quick tests first
        return None
    rows, columns = np.nonzero(page)
    room = ndimage.distance_transform_edt(np.pad(page, 1)).max()  # the widest circle's radius, + 1
    if room < PAGE_ROOM * max(np.ptp(rows), np.ptp(columns)) + 1:
        return None
    page = ndimage.binary_erosion(page, iterations=PAGE_EDGE)
    return page if page.any() else None


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The smallest convex region holding the mask's pixels (the mask itself if they lie on a line)."""
    from scipy.spatial import ConvexHull, QhullError

    rows = np.flatnonzero(mask.any(axis=1))
    first, last = mask.argmax(axis=1), mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    points = np.concatenate([np.stack([rows, first[rows]], 1), np.stack([rows, last[rows]], 1)])  # each row's ends
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):  # in a line, or no pixels at all
        return mask
    (top, left), (bottom, right) = points.min(axis=0), points.max(axis=0)
    grid = np.indices((bottom - top + 1, right - left + 1)).reshape(2, -1).T + (top, left)  # the hull's box
    inside = np.zeros_like(mask)
    inside[top:bottom + 1, left:right + 1] = (
        grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5 + 1e-9).all(axis=1).reshape(bottom - top + 1, -1)
    return inside


def rectangle_share(mask: np.ndarray) -> float:
    """How much of the smallest rectangle around the mask, turned any way (in 3-degree steps), it fills."""
    points = np.stack(np.nonzero(mask)).astype(np.float32)
    angles = np.radians(np.arange(0, 90, 3))
    turns = np.stack([np.stack([np.cos(angles), -np.sin(angles)], 1), np.stack([np.sin(angles), np.cos(angles)], 1)], 1)
    along = turns @ points  # each angle: the points in axes turned by it
    return points.shape[1] / float(np.min(np.prod(np.ptp(along, axis=2) + 1, axis=1)))


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level that splits the values into two classes as different as can be (Otsu, 1979)."""
    counts, edges = np.histogram(values, bins=64, range=(0, 1))
    below = np.cumsum(counts)[:-1]  # how many values lie below each candidate threshold ...
    below_sum = np.cumsum(counts * edges[:-1])[:-1]  # ... and their sum
    total, total_sum = counts.sum(), float((counts * edges[:-1]).sum())
    between = (total_sum * below - below_sum * total) ** 2 / np.maximum(below * (total - below), 1)
    return float(edges[1 + between.argmax()])


MIN_INK_PIXELS = 10  # fewer pixels than this that stand out: a blank picture
BOLD_INK_SHARE = 0.25  # ink covering more than this share of the picture is left out when the paper is measured
BLANK_PICTURE = "no digit found (the image looks blank)"


def ink_strokes(ink: np.ndarray, between: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The pixels that are pen strokes, those of them that stand out as much against the paper on
    both sides of them (`between`, see ink_map), and the paper's own level in the ink map.

    A pixel is a stroke where it holds at least half the strokes' full ink: the width at half
    strength is a stroke's true width, and paler marks (ruled lines, paper texture, noise) drop out.
    The paper is what is left of the picture without what clearly stands out (a bold digit may fill
    most of it); its noise is measured, so that a blank page is not read as strokes however the
    light falls.
    """
    sample, beside = ink[::2, ::2], between[::2, ::2]  # a quarter of the pixels tell the paper's grey as well
    if (sample > MIN_INK_CONTRAST).mean() > BOLD_INK_SHARE:  # the ink would skew the paper's grey and noise
        papery = sample <= MIN_INK_CONTRAST
        sample, beside = sample[papery], beside[papery]
    paper = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - paper)))  # the spread of the paper's grey, robustly
    standing_out = ink > paper + max(MIN_INK_CONTRAST, NOISE_LEVELS * noise)
    if standing_out.sum() < MIN_INK_PIXELS:
        raise PictureError(BLANK_PICTURE)
    strength = float(np.percentile(ink[standing_out], 90)) - paper
    above = max(strength / 2, NOISE_LEVELS * noise)  # above the paper's own level in each map
    return ink > paper + above, between > float(np.median(beside)) + above, paper


def without_shadow_edges(strokes: np.ndarray, between_paper: np.ndarray) -> np.ndarray:
    """The strokes less what is darker than the paper on one side only: the edge of a shadow.

    Taken off after the ruled lines, which are found whole in `strokes`, however faint in parts.
    """
    kept = strokes & between_paper
    if kept.sum() < MIN_INK_PIXELS:
        raise PictureError(BLANK_PICTURE)
    return kept


DARKER_THAN_LINES = 2  # ink this many times the ruled lines' own, where they run, is the digit's
MARGIN_CROSSES = 3  # a line alone down a page is its margin if it crosses this many ruled lines (a 1 crosses fewer)


def without_ruled_lines(strokes: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The strokes less ruled lines: thin straight lines across most of the picture that repeat at a
    spacing (ruled or squared paper) or run well past the rest of the ink on both sides (a margin).

    Where the digit touches or crosses a line, the ink there is taller than the line and is kept.
    A single line that does neither is part of the digit (a 7's bar in a picture cropped to it), and
    so is a lone stroke that is all the ink, unless it lies flat (a 1 is never drawn lying down).
    A page with nothing but ruled lines on it is blank.
    """
    across = ruled_lines(strokes, lone_is_ruled=True)
    margin = line_count(across) >= MARGIN_CROSSES  # a line down a page ruled across is its margin
    lines = across | ruled_lines((strokes & ~across).T, lone_is_ruled=margin).T
    if lines.any():  # ink far darker than the lines' own is the digit's, lying on a line (a 7's bar)
        lines &= ink < DARKER_THAN_LINES * float(np.median(ink[lines]))
    kept = strokes & ~lines
    if kept.sum() < MIN_INK_PIXELS:  # what the lines leave is specks, not a digit
        raise PictureError(BLANK_PICTURE)
    return kept


RULED_PAST = 0.1  # a single such line is ruled if it runs past the rest of the ink by this share of its length
LONE_LINE_SLOPE = 0.15  # ... and a line alone on the page, if it rises less than this over its length


def ruled_lines(strokes: np.ndarray, lone_is_ruled: bool) -> np.ndarray:
    """The pixels of the nearly horizontal ruled lines (see without_ruled_lines); a single line
    that is all the ink (but specks) counts if `lone_is_ruled` and it lies flat."""
    from scipy import ndimage

    lines = thin_long_lines(strokes)
    if line_count(lines) != 1:
        return lines
    rows = np.flatnonzero(lines.any(axis=1))
    ends = np.flatnonzero(lines.any(axis=0))
    length = ends[-1] - ends[0] + 1
    others, _ = ndimage.label(strokes & ~lines, np.ones((3, 3)))
    sizes = np.bincount(others.ravel())
    sizes[0] = 0
    rest = np.flatnonzero((sizes >= SPECK * lines.sum())[others].any(axis=0))  # the other ink, less specks
    if not len(rest):
        flat = rows[-1] - rows[0] + 1 <= LONE_LINE_SLOPE * length
        return lines if lone_is_ruled and flat else np.zeros_like(lines)
    past = RULED_PAST * length
    beyond = ends[0] + past <= np.percentile(rest, 2) and np.percentile(rest, 98) + past <= ends[-1]
    return lines if beyond else np.zeros_like(lines)


def line_count(lines: np.ndarray) -> int:
    """How many nearly horizontal lines the mask holds: they lie in rows of their own."""
    rows = np.flatnonzero(lines.any(axis=1))
    return len(rows) and 1 + int((np.diff(rows) > 1).sum())


RULED_LINE = 0.8  # a line of ink across this share of the picture is ruled paper, not a digit ...
RULED_LINE_THICKNESS = 0.02  # ... if it is at most this thick, as a share of the picture's longer side,
RULED_LINE_GAP = 6  # ... and gaps of up to this many 64ths of the width do not break it (a pale line comes out dashed)


def thin_long_lines(strokes: np.ndarray) -> np.ndarray:
    """The pixels of thin, nearly horizontal lines that run across most of the picture's width."""
    height, width = strokes.shape
    pool = max(1, width // 64)  # columns per step: a line may climb one row per step
    columns = width // pool

    def pooled_columns(mask: np.ndarray) -> np.ndarray:
        return mask[:, :columns * pool].reshape(height, columns, pool).any(axis=2)

    def too_few_columns(pooled: np.ndarray) -> bool:
        return bridged(pooled.any(axis=0)[np.newaxis], RULED_LINE_GAP).mean() < RULED_LINE

    if too_few_columns(pooled_columns(strokes)):  # no line can cross them (most pictures: a quick no)
        return np.zeros_like(strokes)
    runs = vertical_run_lengths(strokes)
    thin = strokes & (runs <= RULED_LINE_THICKNESS * max(height, width))  # not the lines across them (squared paper)
    pooled = pooled_columns(thin)
    if too_few_columns(pooled):
        return np.zeros_like(strokes)
    near = pooled.copy()  # a slanting line may climb a row in a gap: the rows beside a dash bridge it too
    near[1:] |= pooled[:-1]
    near[:-1] |= pooled[1:]
    pooled = bridged(near, RULED_LINE_GAP)
    ahead, behind = path_lengths(pooled), path_lengths(pooled[:, ::-1])[:, ::-1]
    on_line = (ahead + behind - 1 >= RULED_LINE * columns)
    line = thin & expand_columns(on_line, pool, width)
    if not line.any():
        return line
    thickness = np.median(runs[line])
    return line & (runs <= 1.5 * thickness + 1)


def bridged(mask: np.ndarray, gap: int) -> np.ndarray:
    """The mask with, row by row, every gap of up to `gap` columns between ink filled in."""
    columns = np.arange(mask.shape[1])
    before = np.maximum.accumulate(np.where(mask, columns, -gap - 2), axis=1)  # the last ink up to each column
    after = np.minimum.accumulate(np.where(mask, columns, mask.shape[1] + gap + 1)[:, ::-1], axis=1)[:, ::-1]
    return mask | (after - before - 1 <= gap)  # ... and the next: the gap between them


def expand_columns(pooled: np.ndarray, pool: int, width: int) -> np.ndarray:
    """Undo the pooling of columns: each pooled column stands for `pool` columns (the last for the rest)."""
    wide = np.repeat(pooled, pool, axis=1)
    return np.pad(wide, ((0, 0), (0, width - wide.shape[1])), mode="edge")


def path_lengths(mask: np.ndarray) -> np.ndarray:
    """For each pixel, the longest run of ink ending there, moving one column right and at most one row each step."""
    lengths = np.zeros(mask.shape, np.int32)
    previous = np.zeros(mask.shape[0], np.int32)
    for column in range(mask.shape[1]):
        best = previous.copy()
        best[1:] = np.maximum(best[1:], previous[:-1])
        best[:-1] = np.maximum(best[:-1], previous[1:])
        previous = np.where(mask[:, column], best + 1, 0)
        lengths[:, column] = previous
    return lengths


def vertical_run_lengths(mask: np.ndarray) -> np.ndarray:
    """For each ink pixel, the height of the unbroken run of ink in its column."""
    from scipy import ndimage

    runs, _ = ndimage.label(mask, structure=[[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    sizes = np.bincount(runs.ravel())
    sizes[0] = 0
    return sizes[runs]


FRAME_BAND = 0.1  # a box drawn around the digit: ink within this share of its width from its top and bottom, and
# of its height from its sides (a box turned a little leans out by a share of its length), a quarter deep at most ...
FRAME_EDGE_SHARE = 0.8  # ... along at least this share of each of its four edges (a turned box's corners are cut)


def without_frames(strokes: np.ndarray) -> np.ndarray:
    """The strokes less any box drawn around the digit: a mark whose ink runs along all four edges of its bounds.

    The box's edges are taken off; what it held, even where it touched the box, stays.
    """
    from scipy import ndimage

    labels, _ = ndimage.label(strokes, structure=np.ones((3, 3)))
    kept = strokes.copy()
    for number, (rows, columns) in enumerate(ndimage.find_objects(labels), start=1):
        mark = labels[rows, columns] == number
        height, width = mark.shape
        band = max(2, round(FRAME_BAND * min(height, width)))
        if min(height, width) < 4 * band:
            continue
        across = min(max(band, round(FRAME_BAND * width)), height // 4)  # rows deep, for the top and bottom edges
        down = min(max(band, round(FRAME_BAND * height)), width // 4)  # columns deep, for the sides
        edges = (mark[:across].any(axis=0), mark[-across:].any(axis=0),
                 mark[:, :down].any(axis=1), mark[:, -down:].any(axis=1))
        if all(edge.mean() >= FRAME_EDGE_SHARE for edge in edges):
            ring = np.ones(mark.shape, bool)
            ring[across:-across, down:-down] = False
            kept[rows, columns] &= ~(mark & ring)
    return kept if kept.any() else strokes


SPECK = 0.02  # marks smaller than this share of the largest one are specks
MAX_MARKS = 50  # only the largest marks are considered
SEVERAL_MARKS = 0.25  # another group of marks this large, relative to the digit's, is noted
DOT = 0.03  # a digit smaller than SMALL_DIGIT, or within a square this share of the picture's longer side, is a dot


def digit_marks(strokes: np.ndarray, small: int) -> tuple[np.ndarray, bool]:
    """The marks that form the digit, cropped to them, and whether other digit-sized marks were left out.

    Marks close together (the parts of a broken pen stroke, a 5's flag) form one group; specks
    are left out; of several groups, the largest is the digit. If it is a dot (smaller than `small`
    pixels or than DOT of the picture) and another is a quarter its size or more, they are all
    grain (a noisy blank page, what squared paper's lines or a shadow's edge leave); a dot alone
    is a tiny digit.
    """
    from scipy import ndimage

    labels, count = ndimage.label(strokes, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    marks = [i for i in np.argsort(-areas)[:MAX_MARKS] if areas[i] >= SPECK * areas.max()]
    groups = group_marks(marks, boxes)
    size = {id(group): sum(areas[i] for i in group) for group in groups}
    groups.sort(key=lambda group: -size[id(group)])
    chosen = groups[0]
    top, bottom, left, right = bounds([boxes[i] for i in chosen])
    height = bottom - top
    several = any(size[id(group)] >= SEVERAL_MARKS * size[id(chosen)]
                  and bounds([boxes[i] for i in group])[1] - bounds([boxes[i] for i in group])[0] >= height / 2
                  for group in groups[1:])
    dot = max(height, right - left) < max(small, DOT * max(strokes.shape))  # grain is dots
    if dot and any(size[id(g)] >= size[id(chosen)] / 4 for g in groups[1:]):  # dots: the paper's grain
        raise PictureError(BLANK_PICTURE)
    crop = np.isin(labels[top:bottom, left:right], [i + 1 for i in chosen])
    return crop, several


def bounds(boxes: list[tuple[slice, slice]]) -> tuple[int, int, int, int]:
    """Top, bottom, left and right of the box around all these boxes."""
    return (min(b[0].start for b in boxes), max(b[0].stop for b in boxes),
            min(b[1].start for b in boxes), max(b[1].stop for b in boxes))


def group_marks(marks: list[int], boxes) -> list[list[int]]:
    """Marks close enough to be parts of one digit, as groups (single linkage)."""
    groups = [[mark] for mark in marks]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if any(parts_of_one_digit(boxes[i], boxes[j]) for i in groups[a] for j in groups[b]):
                    groups[a] += groups.pop(b)
                    merged = True
                    break
            if merged:
                break
    return groups


MARK_GAP = 0.1  # marks this close, as a share of the larger one's size, are parts of one digit ...
STACKED_GAP = 0.35  # ... and so are marks one above the other this close (a 5's flag)


def parts_of_one_digit(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    """Whether two marks belong to one digit: nearly touching, or one above the other."""
    gap_rows = max(a[0].start, b[0].start) - min(a[0].stop, b[0].stop)
    gap_columns = max(a[1].start, b[1].start) - min(a[1].stop, b[1].stop)
    size = max(a[0].stop - a[0].start, b[0].stop - b[0].start, a[1].stop - a[1].start, b[1].stop - b[1].start)
    narrower = min(a[1].stop - a[1].start, b[1].stop - b[1].start)
    touching = max(gap_rows, gap_columns) <= max(2, MARK_GAP * size)
    stacked = -gap_columns >= narrower / 2 and gap_rows <= STACKED_GAP * size
    return touching or stacked


def stroke_width(mask: np.ndarray) -> float:
    """The strokes' mean width in pixels: their area over half the length of their outline."""
    padded = np.pad(mask, 1)
    outline = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    return 2 * mask.sum() / max(outline, 1)


MNIST_STROKE = (1.7, 2.3)  # stroke width of the middle half of MNIST's digits, in 20x20-box pixels
STROKE_FRAME = 4 * DIGIT_BOX  # a small digit's longer side is enlarged to this before its width is set
THINNED_EXTENT = 0.85  # thinning a bold digit stops where it would keep less of its height or width (a blob's shape)


def with_mnist_strokes(marks: np.ndarray) -> np.ndarray:
    """The digit's marks with the pen's width brought within MNIST's, at STROKE_FRAME pixels or more.

    A ballpoint's line is far thinner, relative to the digit, than the strokes MNIST was
    written with, and a marker's far bolder; the model only knows MNIST's.
    """
    from PIL import Image
    from scipy import ndimage

    height, width = marks.shape
    scale = STROKE_FRAME / max(height, width)
    if scale > 1:  # a small digit: enlarge it, so that the width can be set finely
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        marks = np.asarray(Image.fromarray(marks.astype(np.float32), "F").resize(
            size, Image.Resampling.BILINEAR)) > 0.5
    low, high = MNIST_STROKE
    if width_in_box(marks) < low:  # thicken: keep every pixel within some distance of the ink
        reach = max(marks.shape) * low / DIGIT_BOX  # more than the widest pen MNIST's range needs
        distance = ndimage.distance_transform_edt(~np.pad(marks, int(reach) + 2))
        marks = distance <= least_that_holds(lambda r: width_in_box(distance <= r) >= low, reach)
    elif width_in_box(marks) > high:  # thin: keep the middle of each stroke, the same share of its own width
        depth = ndimage.distance_transform_edt(np.pad(marks, 1))
        # Each pixel's depth as a share of its stroke's half-width: the greatest depth within the
        # thick strokes' width of it. Eroding every stroke by one distance would wipe out the thin
        # ones and leave the blobs where a blurred marker's strokes meet.
        thick = 2 * int(np.ceil(np.percentile(depth[depth > 0], 90))) + 1
        share = depth / np.maximum(ndimage.maximum_filter(depth, size=thick), 1)
        extent = np.ptp(np.nonzero(marks), axis=1)

        def thin_enough(s: float) -> bool:  # bold no more, or thinner still would lose the digit's size
            kept = np.nonzero(share > s)
            shrunk = not len(kept[0]) or bool((np.ptp(kept, axis=1) < THINNED_EXTENT * extent).any())
            return shrunk or width_in_box(share > s) <= high

        thinner = share > least_that_holds(thin_enough, 1.0)
        marks = thinner if thinner.any() else marks  # a blob with no strokes to thin
    rows, columns = np.nonzero(marks)
    return marks[rows.min():rows.max() + 1, columns.min():columns.max() + 1].astype(np.float32)


def width_in_box(marks: np.ndarray) -> float:
    """The strokes' width once the marks are scaled to fit the 20x20 box (0 if there are none)."""
    rows, columns = np.flatnonzero(marks.any(axis=1)), np.flatnonzero(marks.any(axis=0))
    if not len(rows):
        return 0.0
    return stroke_width(marks) * DIGIT_BOX / max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1)


STROKE_STEPS = 7  # halvings in the search for the pen width that matches MNIST's


def least_that_holds(holds: Callable[[float], bool], upper: float) -> float:
    """The smallest value in [0, upper] for which `holds` is true, which it stays above it (bisection)."""
    low, high = 0.0, upper
    for _ in range(STROKE_STEPS):
        middle = (low + high) / 2
        low, high = (low, middle) if holds(middle) else (middle, high)
    return high


def fit_in_box(digit: np.ndarray, box: int) -> np.ndarray:
    """Scale so that the longer side is `box` pixels, keeping the aspect ratio, anti-aliased."""
    from PIL import Image

    height, width = digit.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(digit.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, np.float32), 0, 1)


def centre_by_mass(digit: np.ndarray, field: int) -> np.ndarray:
    """Place `digit` in a field x field square so that its centre of mass is the centre."""
    height, width = digit.shape
    rows, columns = np.indices(digit.shape)
    mass = digit.sum()
    centre_row, centre_column = (rows * digit).sum() / mass, (columns * digit).sum() / mass
    top = int(np.clip(round(field / 2 - centre_row), 0, field - height))
    left = int(np.clip(round(field / 2 - centre_column), 0, field - width))
    placed = np.zeros((field, field), np.float32)
    placed[top:top + height, left:left + width] = digit
    return placed


# -----------------------------------------------------------------------------
# The model: model.onnx, run by ONNX Runtime (no TensorFlow), with its calibration
# -----------------------------------------------------------------------------
def onnx_model_path(path: Path) -> Path:
    """The model.onnx that `path` names: itself, or the one train.py saved beside a model.h5. What is
    wrong with it, if anything, in one line of our own."""
    if path.is_dir():
        raise ModelError(f"{path}: a folder, not a model file")
    onnx_path = path.with_suffix(".onnx") if path.suffix == ".h5" else path
    if path.is_file() and not onnx_path.is_file():  # a model.h5 saved before train.py saved model.onnx beside it
        raise ModelError(f"{path}: no {onnx_path.name} beside it, which predict.py and serve.py run; "
                         "train again with: python train.py (it saves both)")
    if not onnx_path.is_file():
        if path == Path(ONNX_FILE):  # the default: say where it was looked for
            raise ModelError(f"no {ONNX_FILE} in {Path.cwd()}: train one first with: python train.py, "
                             "or name one with --model PATH")
        raise ModelError(f"{path}: no such model file; train one first with: python train.py")
    return onnx_path


class Recognizer:
    """A trained model and its confidence calibration: the answers predict.py and serve.py give.

    One instance serves every request thread of serve.py: ONNX Runtime runs a session from several
    threads at once. Each call uses one thread: serve.py runs a process per core, and one 28x28 input
    is far too little work to share out.
    """

    def __init__(self, model: Path) -> None:
        import onnxruntime

        path = onnx_model_path(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its notices are not the user's business
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # ONNX Runtime raises its own kinds, with a paragraph, for a file that is not a model
            raise ModelError(f"{path}: not an ONNX model (train.py saves one as {ONNX_FILE})") from None
        [given], [answered] = self.session.get_inputs(), self.session.get_outputs()
        if given.shape[1:] != list(IMAGE_SHAPE) or answered.shape[1:] != [NUM_CLASSES]:
            shapes = ["x".join(str(size) if isinstance(size, int) else "N" for size in tensor.shape)
                      for tensor in (given, answered)]
            raise ModelError(f"{path}: this model takes {shapes[0]} inputs and gives {shapes[1]}; "
                             "expected 28x28 images in and 10 digit probabilities out")
        self.input_name = given.name
        temperature = self.session.get_modelmeta().custom_metadata_map.get(TEMPERATURE_ATTRIBUTE)
        self.temperature = 1.0 if temperature is None else float(temperature)
        if temperature is None:
            warn(f"{path} holds no confidence calibration (it was not trained by train.py): "
                 "the confidence printed is the model's own, often too sure")

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of the ten digits for one 28x28 input."""
        [raw] = self.session.run(None, {self.input_name: image[np.newaxis].astype(np.float32)})
        return calibrated(raw[0], self.temperature)


def answer(row: np.ndarray, notes: list[str]) -> dict:
    """The answer for one picture, as JSON gives it: the digit, its calibrated confidence, the ten
    probabilities and what the reading had to guess."""
    return {"digit": int(row.argmax()), "confidence": round(float(row.max()), 4),
            "probabilities": [round(float(p), 4) for p in row], "notes": notes}


def answer_line(path: Path, row: np.ndarray, notes: list[str]) -> str:
    """The answer for one picture in words: `seven.jpg: 7 (99.2%; notes)`."""
    return f"{path}: {row.argmax()} ({'; '.join([f'{100 * row.max():.1f}%', *notes])})"


# -----------------------------------------------------------------------------
# Command line: the pictures named, read in order, each answer said as soon as it is known
# -----------------------------------------------------------------------------
def picture_path(text: str) -> Path:
    """A file or folder to read: a web address is said not to be one, as it was typed."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", text):
        raise argparse.ArgumentTypeError(f"{text}: web addresses are not read; download the picture "
                                         "and give the file")
    if not text:  # Path("") is the current folder
        raise argparse.ArgumentTypeError("an empty name is not a picture")
    return Path(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="predict.py",
        allow_abbrev=False,
        description="Read pictures of single handwritten digits with the model train.py saved.")
    parser.add_argument("pictures", nargs="+", type=picture_path, metavar="IMAGE",
                        help="pictures of single digits (PNG, JPEG, GIF, BMP, TIFF or WebP), "
                             "or folders: every picture directly in them")
    parser.add_argument("--model", type=Path, default=Path(ONNX_FILE), metavar="PATH",
                        help="the model train.py saved: its model.onnx, or the model.h5 beside it "
                             "(default: %(default)s, in the current folder)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="one line per picture in words, or one JSON object per picture "
                             "(default: %(default)s)")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                        help="also save each 28x28 input the model sees, as a PNG, in DIR")
    args = parser.parse_args(argv)
    problem = args.save_preprocessed is not None and output_dir_problem(args.save_preprocessed)
    if problem:
        parser.error(f"argument --save-preprocessed: {problem}")
    return args


def pictures_in(paths: list[Path]) -> list[Path]:
    """The pictures to read: the files named, and the pictures in the folders named, sorted.

    What a folder holds that is not a picture (a folder inside it, too) is skipped with a note;
    hidden files silently.
    """
    from PIL import Image

    known = {extension.lower(): kind for extension, kind in Image.registered_extensions().items()}
    kinds = {extension for extension, kind in known.items() if kind in PICTURE_FORMATS}
    pictures = []
    for path in paths:
        if not path.is_dir():
            pictures.append(path)
            continue
        found = [entry for entry in sorted(path.iterdir()) if not entry.name.startswith(".")]
        for entry in found:
            if entry.is_file() and entry.suffix.lower() in kinds:
                pictures.append(entry)
            elif entry.is_dir():
                print(f"{entry}: skipped: a folder (only the pictures directly in {path} are read)", file=sys.stderr)
            else:
                why = NOT_A_PICTURE_FORMAT if entry.suffix.lower() in known else "not a picture"
                print(f"{entry}: skipped: {why}", file=sys.stderr)
        if not any(entry.is_file() and entry.suffix.lower() in kinds for entry in found):
            pictures.append(path)  # reported as an error: a folder with no pictures
    return pictures


def save_preprocessed(reading: Reading, path: Path, folder: Path, used: set[str]) -> None:
    """The 28x28 input the model saw for the picture `path`, as DIR/<its name>.png (-2, -3, ... for a
    name already used in this run)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    name, copy = f"{path.stem}.png", 1
    while name in used:
        copy += 1
        name = f"{path.stem}-{copy}.png"
    used.add(name)
    Image.fromarray(np.uint8(np.round(reading.image * 255))).save(folder / name)


def predict(args: argparse.Namespace) -> int:
    """Read each picture in order, saying each answer as soon as it is known (so a long folder
    shows its progress, and an interrupted one keeps what it said); 1 if any picture could not be read."""
    recognizer, failed, saved_names = Recognizer(args.model), False, set()
    for path in pictures_in(args.pictures):
        try:
            reading = read_digit(*open_picture(path))
        except PictureError as error:
            failed = True
            if args.format == "json":
                print(json.dumps({"path": str(path), "error": str(error)}), flush=True)
            else:
                print(f"{path}: error: {error}", file=sys.stderr)
            continue
        row = recognizer.probabilities(reading.image)
        if args.format == "json":
            print(json.dumps({"path": str(path), **answer(row, reading.notes)}), flush=True)
        else:
            print(answer_line(path, row, reading.notes), flush=True)
        if args.save_preprocessed is not None:
            with write_errors_named(args.save_preprocessed):
                save_preprocessed(reading, path, args.save_preprocessed, saved_names)
    return EXIT_ERROR if failed else 0


PACKAGES = ("onnxruntime", "PIL", "scipy")  # what reading digits needs (requirements-predict.txt): no TensorFlow


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not has_packages(PACKAGES):
        return EXIT_ERROR
    stop_as_ctrl_c()
    try:
        return predict(args)
    except (ModelError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    try:
        exit_code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader has gone (`| head -1`): stop reading pictures, as Python's documentation says
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        exit_code = EXIT_ERROR
    sys.exit(exit_code)
