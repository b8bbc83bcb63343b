"""--predict on the kinds of picture people take besides a page photo: a digit cropped to its ink,
bold and blurred and small, a page lying on a dark desk, and pages with no digit on them."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter

import predict
from test_predict import similarity

FOUR = [[(0.62, 0.05), (0.08, 0.68), (0.92, 0.68)], [(0.62, 0.05), (0.62, 0.95)]]  # strokes, as shares of the side
SEVEN = [[(0.15, 0.1), (0.85, 0.1), (0.45, 0.9)]]
EIGHT_LOOPS = [(0.25, 0.05, 0.75, 0.48), (0.2, 0.48, 0.8, 0.95)]  # an 8's two loops: ellipses' bounds


def drawn(strokes, side: int, pen: float, paper: int = 255, ink: int = 0, loops=()) -> Image.Image:
    """Strokes (and loops) drawn with a round pen `pen` of the side wide on a square page."""
    picture = Image.new("L", (side, side), paper)
    draw = ImageDraw.Draw(picture)
    width = max(1, round(pen * side))
    for stroke in strokes:
        draw.line([(x * side, y * side) for x, y in stroke], fill=ink, width=width, joint="curve")
        for x, y in (stroke[0], stroke[-1]):  # round ends
            half = width / 2
            draw.ellipse([x * side - half, y * side - half, x * side + half, y * side + half], fill=ink)
    for left, top, right, bottom in loops:
        draw.ellipse([left * side, top * side, right * side, bottom * side], outline=ink, width=width)
    return picture


def to_ink(picture: Image.Image, margin: int = 0) -> Image.Image:
    """The picture cropped to its ink (darker than the paper) and `margin` pixels around it."""
    grey = np.asarray(picture)
    rows, columns = np.nonzero(grey < (int(grey.max()) + int(grey.min())) / 2)
    return picture.crop((max(0, columns.min() - margin), max(0, rows.min() - margin),
                         min(picture.width, columns.max() + 1 + margin), min(picture.height, rows.max() + 1 + margin)))


def read(picture: Image.Image, fmt: str = "PNG") -> predict.Reading:
    """What --predict makes of the picture, saved in `fmt` and decoded as a file is."""
    file = io.BytesIO()
    picture.save(file, fmt)
    file.seek(0)
    return predict.read_digit(predict.decode_picture(file))


def clean(strokes, loops=()) -> np.ndarray:
    """The model's input for the digit drawn plainly: thin dark strokes on a white page with room around."""
    page = Image.new("L", (600, 600), 255)
    page.paste(drawn(strokes, 400, 0.04, loops=loops), (100, 100))
    return read(page).image


@pytest.mark.parametrize("side", [48, 150])
def test_a_bold_blurred_digit_cropped_to_its_ink_and_saved_small_is_read(side):
    """The issue's marker 4: a fifth of the picture wide, on light grey, blurred (3% of the side), cropped."""
    bold = drawn(FOUR, 400, 0.2, paper=215, ink=30)
    small = to_ink(bold.filter(ImageFilter.GaussianBlur(0.03 * 400))).resize((side, side), Image.Resampling.LANCZOS)
    assert similarity(read(small).image, clean(FOUR)) > 0.85  # where the bar crosses the upright is ink too


def test_a_bold_seven_cropped_to_its_ink_keeps_its_bar():
    """The bar runs along the top edge: no paper above it, and none along it, yet it is ink."""
    bold = drawn(SEVEN, 400, 0.25, paper=215, ink=30).filter(ImageFilter.GaussianBlur(12))
    small = to_ink(bold).resize((60, 60), Image.Resampling.LANCZOS)
    assert similarity(read(small).image, clean(SEVEN)) > 0.85


def test_a_marker_bar_over_a_thin_pen_stroke_keeps_both():
    """Thinned to MNIST's pen, each stroke keeps the same share of its own width: the thin one is not lost."""
    bar = np.asarray(drawn([[(0.15, 0.12), (0.85, 0.12)]], 400, 0.3, paper=215, ink=30))
    stroke = np.asarray(drawn([[(0.85, 0.12), (0.45, 0.9)]], 400, 0.08, paper=215, ink=30))
    page = Image.new("L", (600, 600), 215)
    page.paste(Image.fromarray(np.minimum(bar, stroke)), (100, 100))
    assert similarity(read(page).image, clean(SEVEN)) > 0.6


def test_a_marker_eight_with_its_loops_nearly_filled_is_thinned_into_an_eight_not_a_one():
    """Thinned to MNIST's pen, a blob keeps its size: only what makes it bold is taken off, not its shape."""
    eight = drawn([], 300, 0.25, paper=220, ink=40, loops=EIGHT_LOOPS).filter(ImageFilter.GaussianBlur(8))
    image = read(to_ink(eight).resize((60, 80), Image.Resampling.LANCZOS)).image
    rows, columns = np.nonzero(image > 0.3)
    assert np.ptp(columns) + 1 >= 0.7 * (np.ptp(rows) + 1)  # as wide as an 8, for its height
    assert similarity(image, clean([], EIGHT_LOOPS)) > 0.45


def test_a_bold_digit_cropped_inside_its_box_is_dark_on_light():
    """Cropped to the digit's ink, the box drawn around it runs down both sides: half the border is dark,
    but most of the picture is the light paper, and so is the paper."""
    bold = to_ink(drawn(FOUR, 400, 0.2, paper=215, ink=30))
    draw = ImageDraw.Draw(bold)
    for x in (0, bold.width - 8):
        draw.rectangle([x, 0, x + 8, bold.height], fill=30)
    small = bold.filter(ImageFilter.GaussianBlur(0.03 * bold.height)).resize((150, 150), Image.Resampling.LANCZOS)
    assert similarity(read(small).image, clean(FOUR)) > 0.8


def test_a_blurry_medium_weight_eight_cropped_to_its_ink_is_one_digit_of_its_full_height():
    medium = drawn([], 300, 0.1, paper=225, ink=40, loops=EIGHT_LOOPS).filter(ImageFilter.GaussianBlur(0.03 * 300))
    small = to_ink(medium).resize((60, 80), Image.Resampling.LANCZOS)
    reading = read(small, "JPEG")
    assert reading.notes == []
    assert similarity(reading.image, clean([], EIGHT_LOOPS)) > 0.8


@pytest.mark.parametrize("margin", [10, 20])
def test_a_thin_seven_cropped_close_to_its_ink_keeps_its_bar(margin):
    """The bar of a 7 cropped to it crosses the whole picture, as a ruled line does, and is the digit's."""
    seven = to_ink(drawn(SEVEN, 400, 0.01), margin)
    assert similarity(read(seven).image, clean(SEVEN)) > 0.9


def desk(page: Image.Image, share: float, wood: int = 60) -> Image.Image:
    """The page photographed on a dark wooden desk, `wood` bright, that shows around it; the page `share`
    of the frame's side."""
    rng = np.random.default_rng(0)
    width, height = round(page.width / share), round(page.height / share)
    grain = wood + 12 * rng.standard_normal((height // 8, 1)) + 4 * rng.standard_normal((height // 8, width // 8))
    frame = Image.fromarray(np.uint8(np.clip(grain, 0, 255))).resize((width, height), Image.Resampling.BILINEAR)
    frame.paste(page.rotate(2, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=wood),
                (round(width * 0.05), round(height * 0.08)))
    return frame


@pytest.mark.parametrize("share", [0.7, 0.9])
def test_a_page_on_a_dark_desk_is_read_as_the_page_alone(share):
    page = Image.new("L", (600, 800), 235)
    page.paste(drawn(SEVEN, 300, 0.03, paper=235), (150, 250))
    assert similarity(read(desk(page, share), "JPEG").image, read(page, "JPEG").image) > 0.9


def test_a_page_on_a_desk_less_than_half_as_bright_is_read_as_the_page_alone():
    """A mid-brown desk, 47% as bright as the page: its lighter grain must not hide that it is far darker."""
    page = Image.new("L", (600, 800), 235)
    page.paste(drawn(SEVEN, 300, 0.03, paper=235), (150, 250))
    assert similarity(read(desk(page, 0.8, wood=110), "JPEG").image, read(page, "JPEG").image) > 0.9


def test_a_box_around_a_one_on_a_page_turned_a_little_is_left_out():
    """A tall box turned 4 degrees: its long sides lean out of a band a tenth of its width deep, and its
    corners are cut; it is still a box, and what it holds is read as if it were not there."""
    one = [[(0.55, 0.1), (0.45, 0.9)]]

    def photo(boxed: bool) -> Image.Image:
        page = Image.new("L", (600, 800), 235)
        page.paste(drawn(one, 300, 0.01, paper=235), (150, 250))
        if boxed:
            ImageDraw.Draw(page).rectangle([225, 220, 375, 580], outline=0, width=3)
        return page.rotate(4, resample=Image.Resampling.BILINEAR, fillcolor=235)

    assert similarity(read(photo(boxed=True), "JPEG").image, read(photo(boxed=False), "JPEG").image) > 0.9


def test_a_black_card_on_a_lighter_desk_is_read_as_the_card_alone():
    """A chalk 7 on a black card lying on a desk far lighter than it: the card is the page, and dark."""
    card = Image.new("L", (600, 800), 30)
    card.paste(drawn(SEVEN, 300, 0.03, paper=30, ink=230), (150, 250))
    assert similarity(read(desk(card, 0.8, wood=110), "JPEG").image, read(card, "JPEG").image) > 0.9


def test_a_black_card_parted_by_its_chalk_digits_loops_is_read_as_the_card_alone():
    """A chalk 8 filling the card: its loops part the card, and the card is still the page, and dark."""
    card = drawn([], 400, 0.04, paper=30, ink=230, loops=EIGHT_LOOPS).resize((300, 400))
    assert similarity(read(desk(card, 0.8, wood=110), "JPEG").image, read(card, "JPEG").image) > 0.9


def test_a_bold_blurred_digit_on_light_paper_is_not_taken_for_a_dark_card():
    """A marker 8, blurred: a roomy dark blob as full as a card with a digit on it, but rounder than any card."""
    eight = drawn([], 300, 0.25, paper=220, ink=40, loops=EIGHT_LOOPS).filter(ImageFilter.GaussianBlur(8))
    page = Image.new("L", (500, 500), 220)
    page.paste(eight, (100, 100))
    grey = np.asarray(page, np.float32) / 255
    assert np.array_equal(predict.on_the_page(grey), grey)  # dark ink on light paper, as it is


def ruled_page(squared: bool, margin: bool = False) -> Image.Image:
    """A blank page of ruled (or squared) paper, pale lines 50 pixels apart, photographed with a little noise;
    ruled paper may have its red margin line down the left."""
    page = Image.new("RGB", (800, 600), (240, 238, 230))
    draw = ImageDraw.Draw(page)
    for y in range(30, 600, 50):
        draw.line([(0, y), (800, y + 4)], fill=(150, 175, 215), width=2)
    for x in range(20, 800, 50) if squared else ():
        draw.line([(x, 0), (x - 3, 600)], fill=(150, 175, 215), width=2)
    if margin:
        draw.line([(90, 0), (90, 600)], fill=(220, 120, 120), width=2)
    noise = np.random.default_rng(0).normal(0, 4, (600, 800, 1))
    return Image.fromarray(np.uint8(np.clip(np.asarray(page) + noise, 0, 255)))


@pytest.mark.parametrize("squared", [False, True])
def test_a_blank_ruled_or_squared_page_has_no_digit(squared):
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(ruled_page(squared), "JPEG")


def test_a_blank_ruled_page_with_a_margin_line_has_no_digit():
    """The margin is a lone thin line down the page, as a 1 cropped to its ink is; but it crosses the ruled lines."""
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(ruled_page(squared=False, margin=True), "JPEG")


def test_a_blank_ruled_page_with_a_margin_line_and_a_few_specks_has_no_digit():
    """Specks of dust (or what a line's edge leaves) do not make the margin line a digit's stroke."""
    page = ruled_page(squared=False, margin=True)
    draw = ImageDraw.Draw(page)
    for x, y in ((300, 8), (520, 12), (700, 300)):
        draw.rectangle([x, y, x + 1, y], fill=(150, 175, 215))
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(page, "JPEG")


def shaded_page(shade: int = 140) -> Image.Image:
    """A blank page with a soft shadow across one corner (a hand or a phone held over it), a little noisy."""
    shadow = Image.new("L", (800, 600), 255)
    ImageDraw.Draw(shadow).rectangle([0, 0, 330, 260], fill=shade)
    shadow = shadow.filter(ImageFilter.GaussianBlur(18))
    page = ImageChops.multiply(Image.new("L", (800, 600), 235), shadow)
    noise = np.random.default_rng(0).normal(0, 3, (600, 800))
    return Image.fromarray(np.uint8(np.clip(np.asarray(page) + noise, 0, 255)))


@pytest.mark.parametrize("shade", [140, 70])
def test_a_blank_page_with_a_shadow_across_a_corner_has_no_digit(shade):
    """The shadow's edge is darker than the lit paper beside it, but it is no stroke: the shadow goes on beyond
    it. A deep shadow (70: under a third as bright as the paper) is as dark as some ink, and still no stroke."""
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(shaded_page(shade), "JPEG")


def test_a_blank_page_with_a_few_dots_on_it_has_no_digit():
    """Dust or ink spots, each 2% of the page's width: dots, not a digit, however dark."""
    page = Image.new("L", (800, 600), 235)
    draw = ImageDraw.Draw(page)
    for x, y in np.random.default_rng(0).uniform((0, 0), (800, 600), (10, 2)):
        draw.ellipse([x - 8, y - 8, x + 8, y + 8], fill=60)
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(page, "JPEG")


def test_a_blank_page_with_a_slanting_shadow_across_a_corner_has_no_digit():
    """A shadow's slanting edge is taken off but for a few specks of the paper's grain along it: grain, not a digit."""
    page = np.full((800, 1000, 3), (245, 243, 236), np.float32)
    rows, columns = np.mgrid[0:800, 0:1000]
    page[columns + rows < 450] *= 0.45
    page = np.asarray(Image.fromarray(np.uint8(page)).filter(ImageFilter.GaussianBlur(3)), np.float32)
    page *= (1 - 20 / 255 * (0.6 * columns / 1000 + 0.4 * rows / 800))[..., None]  # the light falling off
    page += np.random.default_rng(630).normal(0, 5, page.shape)  # a camera's colour noise
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(Image.fromarray(np.uint8(np.clip(page, 0, 255))), "JPEG")


def test_a_digit_beside_a_shadow_is_read_as_without_it():
    seven = Image.new("L", (800, 600), 255)
    seven.paste(drawn(SEVEN, 200, 0.03), (450, 300))
    with_shadow = ImageChops.darker(shaded_page(), seven)
    without = ImageChops.darker(Image.new("L", (800, 600), 235), seven)
    assert similarity(read(with_shadow, "JPEG").image, read(without, "JPEG").image) > 0.9


def test_a_digit_on_ruled_paper_is_still_read_without_its_lines():
    seven = Image.new("L", (800, 600), 255)
    seven.paste(drawn(SEVEN, 150, 0.03), (300, 180))
    on_ruled = ImageChops.darker(ruled_page(squared=False), seven.convert("RGB"))
    on_plain = ImageChops.darker(Image.new("RGB", (800, 600), (240, 238, 230)), seven.convert("RGB"))
    assert similarity(read(on_ruled, "JPEG").image, read(on_plain, "JPEG").image) > 0.9


@pytest.mark.parametrize("top, bottom", [((0.5, 0.0), (0.5, 0.99)), ((0.99, 0.0), (0.0, 0.99)),
                                         ((0.7, 0.05), (0.3, 0.95))], ids=["upright", "diagonal", "leaning"])
def test_a_thin_one_alone_in_its_picture_is_a_digit_not_a_ruled_line(top, bottom):
    """A single thin stroke that is all the ink, upright or leaning, is a 1, however tightly cropped."""
    one = drawn([[top, bottom]], 100, 0.01)
    assert similarity(read(one).image, clean([[top, bottom]])) > 0.9


def test_a_single_flat_line_alone_on_the_page_is_blank():
    page = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(page).line([(0, 150), (300, 153)], fill=0, width=2)
    with pytest.raises(predict.PictureError, match="no digit found"):
        read(page)
