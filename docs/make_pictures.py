#!/usr/bin/env python3
"""Make README's pictures again: the drawing page in use, and a pen photo with what the model saw.

    python docs/make_pictures.py --model model.h5 --data mnist.npz

Needs a trained model, and for the screenshot Debian's chromium and chromium-driver and
selenium (pip install -r tests/requirements.txt). Writes docs/draw-page.png and
docs/pen-photo.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS.parent / "tests"))
import predict  # noqa: E402
import train  # noqa: E402
from conftest import start_server, stop_server  # noqa: E402
from pen_photos import pen_photo, save  # noqa: E402

SEVEN = [[(70, 60), (200, 60)], [(200, 60), (165, 130), (140, 180), (120, 230)]]


def page_screenshot(model: Path, path: Path) -> None:
    """The page after a 7 was drawn on it with the mouse, in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    server = start_server("--model", model, "--quiet")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=860,720",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(server.url)
        pad = browser.find_element(By.ID, "pad")
        width, height = pad.size["width"], pad.size["height"]
        for stroke in SEVEN:
            actions = ActionChains(browser)
            points = [(round((x / 280 - 0.5) * width), round((y / 280 - 0.5) * height)) for x, y in stroke]
            actions.move_to_element_with_offset(pad, *points[0]).click_and_hold()
            for point in points[1:]:
                actions.move_to_element_with_offset(pad, *point).pause(0.05)
            actions.release().perform()
        time.sleep(1)
        browser.save_screenshot(str(path))
    finally:
        browser.quit()
        stop_server(server)


def pen_figure(model: Path, data: Path, path: Path) -> None:
    """A ballpoint 7 on ruled paper in a box, and the 28x28 input predict.py made of it."""
    digit = np.load(data)["x_test"][0]
    picture, _ = pen_photo(digit, np.random.default_rng(4), pen_share=0.02, ruled=True, boxed=True, longer=2400)
    photo = save(picture, DOCS / "pen-photo-input.jpg")
    reading = predict.read_digit(predict.load_picture(photo))
    photo.unlink()
    row = predict.Recognizer(model).probabilities(reading.image)
    shown = picture.copy()
    shown.thumbnail((420, 420))
    seen = Image.fromarray(np.uint8(255 * reading.image)).resize((shown.height, shown.height), Image.Resampling.NEAREST)
    figure = Image.new("RGB", (shown.width + seen.width + 30, shown.height + 34), "white")
    figure.paste(shown, (0, 0))
    figure.paste(seen.convert("RGB"), (shown.width + 30, 0))
    font = ImageFont.load_default(size=16)
    draw = ImageDraw.Draw(figure)
    draw.text((4, shown.height + 8), "a ballpoint 7 on ruled paper, in a box", fill="black", font=font)
    draw.text((shown.width + 34, shown.height + 8), f"what the model saw: {row.argmax()} ({100 * row.max():.1f}%)",
              fill="black", font=font)
    figure.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(train.MODEL_FILE), help="the trained model")
    parser.add_argument("--data", type=Path, required=True, help="real MNIST (.npz): its first test digit is written with a pen")
    args = parser.parse_args()
    page_screenshot(args.model, DOCS / "draw-page.png")
    pen_figure(args.model, args.data, DOCS / "pen-photo.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
