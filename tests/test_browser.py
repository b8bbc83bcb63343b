"""The drawing page in a real browser: headless Chromium, driven by Selenium with mouse and touch."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("no browser: install Debian's chromium and chromium-driver to run these",
                allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.interaction import POINTER_TOUCH  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SEVEN = [[(70, 60), (200, 60)], [(200, 60), (165, 130), (140, 180), (120, 230)]]  # two strokes, pad pixels
MOVE_MS = 60  # each pointer move takes this long (Selenium's default, 250 ms, only makes the tests slower)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,800", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    browser.get(server.url)
    return browser


def text(page, element: str) -> str:
    return page.find_element(By.ID, element).text


def wait_for(page, condition, seconds: float = 10):
    return WebDriverWait(page, seconds, poll_frequency=0.05).until(lambda _: condition())


def pad_point(page, x: float, y: float) -> tuple[int, int]:
    """A point of the 280x280 pad as an offset from the centre of the element on screen."""
    pad = page.find_element(By.ID, "pad")
    return round((x / 280 - 0.5) * pad.size["width"]), round((y / 280 - 0.5) * pad.size["height"])


def draw_with_mouse(page, strokes=SEVEN) -> None:
    pad = page.find_element(By.ID, "pad")
    for stroke in strokes:
        actions = ActionChains(page, duration=MOVE_MS).move_to_element_with_offset(pad, *pad_point(page, *stroke[0])).click_and_hold()
        for point in stroke[1:]:
            actions.move_to_element_with_offset(pad, *pad_point(page, *point)).pause(0.05)
        actions.release().perform()


def draw_with_finger(page, strokes=SEVEN) -> None:
    pad = page.find_element(By.ID, "pad")
    box = pad.rect
    for stroke in strokes:
        finger = PointerInput(POINTER_TOUCH, "finger")
        actions = ActionBuilder(page, mouse=finger, duration=MOVE_MS)
        where = [(box["x"] + x * box["width"] / 280, box["y"] + y * box["height"] / 280) for x, y in stroke]
        actions.pointer_action.move_to_location(*map(round, where[0])).pointer_down()
        for x, y in where[1:]:
            actions.pointer_action.move_to_location(round(x), round(y)).pause(0.05)
        actions.pointer_action.pointer_up()
        actions.perform()


def ink_on_pad(page) -> int:
    """Dark pixels on the drawing area."""
    return page.execute_script("""
        const c = document.getElementById('pad'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n;""")


def seen_brightness(page) -> int:
    return page.execute_script("""
        const c = document.getElementById('seen'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i]; return n;""")


def bar_widths(page) -> list[str]:
    return [bar.find_element(By.CLASS_NAME, "fill").get_attribute("style")
            for bar in page.find_element(By.ID, "probabilities").find_elements(By.XPATH, "./*")]


def bars_as_drawn(page) -> list[tuple[float, float]] | None:
    """Each bar's fill as a share of its track on screen, and the probability written beside it;
    None while a bar is still moving (read in one script, so no answer arrives in between)."""
    return page.execute_script("""
        if (document.getAnimations().length) return null;
        const width = (bar, part) => bar.querySelector(part).getBoundingClientRect().width;
        return [...document.querySelectorAll('#probabilities .bar')].map(bar => [
            width(bar, '.fill') / width(bar, '.track'), parseFloat(bar.querySelector('.value').textContent) / 100]);""")


def assert_answer_shown(page) -> None:
    wait_for(page, lambda: text(page, "digit") != "")
    assert text(page, "digit") in "0123456789" and len(text(page, "digit")) == 1
    assert text(page, "confidence").endswith("%")
    assert len(bar_widths(page)) == 10 and any("width: 0%" not in style for style in bar_widths(page))
    assert seen_brightness(page) > 0


def test_drawing_with_the_mouse_shows_the_digit_the_bars_and_what_the_model_saw(page):
    assert text(page, "digit") == "" and seen_brightness(page) == 0
    draw_with_mouse(page)
    assert_answer_shown(page)


def test_each_bar_is_filled_as_far_as_its_probability(page):
    draw_with_mouse(page)
    assert_answer_shown(page)
    bars = wait_for(page, lambda: bars_as_drawn(page))
    (winner_filled, winner_shown), *losers = sorted(bars, key=lambda bar: -bar[1])
    assert winner_filled == pytest.approx(winner_shown, abs=0.02), \
        f"the winning bar is {winner_filled:.1%} full beside {winner_shown:.1%}"
    for filled, shown in losers:
        assert filled == pytest.approx(shown, abs=0.02), f"a bar is {filled:.1%} full beside {shown:.1%}"


def test_the_real_model_reads_the_drawn_seven_as_you_draw(page, real_mnist):
    draw_with_mouse(page)
    wait_for(page, lambda: text(page, "digit") == "7")


def test_drawing_with_a_finger_works_too(page):
    draw_with_finger(page)
    assert ink_on_pad(page) > 1000
    assert_answer_shown(page)


def test_clear_and_escape_empty_the_answer_and_the_pad(page):
    for clear in (lambda: page.find_element(By.ID, "clear").click(),
                  lambda: page.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)):
        draw_with_mouse(page)
        assert_answer_shown(page)
        clear()
        wait_for(page, lambda: text(page, "digit") == "")
        assert text(page, "confidence") == "" and ink_on_pad(page) == 0 and seen_brightness(page) == 0
        assert all("width: 0%" in style for style in bar_widths(page))


def test_undo_takes_back_the_last_stroke(page):
    draw_with_mouse(page)
    assert_answer_shown(page)
    both = ink_on_pad(page)
    page.find_element(By.ID, "undo").click()
    one = ink_on_pad(page)
    assert 0 < one < both
    ActionChains(page).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    wait_for(page, lambda: text(page, "digit") == "")
    assert ink_on_pad(page) == 0


def test_an_uploaded_picture_is_answered(page, tmp_path):
    picture = Image.new("L", (900, 700), 235)
    ImageDraw.Draw(picture).line([(300, 200), (560, 200), (400, 560)], fill=30, width=14)
    picture.save(tmp_path / "seven.jpg")
    page.find_element(By.ID, "upload").send_keys(str(tmp_path / "seven.jpg"))
    assert_answer_shown(page)
    assert text(page, "message").startswith("read seven.jpg")
    assert "error" not in page.find_element(By.ID, "message").get_attribute("class")  # grey, not red


def test_an_unreadable_upload_shows_the_reason_and_no_stale_answer(page, tmp_path):
    draw_with_mouse(page)
    assert_answer_shown(page)
    Image.new("L", (300, 300), 255).save(tmp_path / "blank.png")
    page.find_element(By.ID, "upload").send_keys(str(tmp_path / "blank.png"))
    wait_for(page, lambda: text(page, "message") == "no digit found (the image looks blank)")
    assert text(page, "digit") == "" and seen_brightness(page) == 0
    assert "error" in page.find_element(By.ID, "message").get_attribute("class")  # red


def test_an_upload_too_large_shows_why_it_was_refused(page, tmp_path):
    import serve
    (tmp_path / "huge.jpg").write_bytes(bytes(serve.SERVE_MAX_BYTES + 1))  # refused from its length; sent whole
    page.find_element(By.ID, "upload").send_keys(str(tmp_path / "huge.jpg"))
    wait_for(page, lambda: text(page, "message") ==
             f"picture too large: {serve.SERVE_MAX_BYTES + 1:,} bytes; at most 20 MiB")
