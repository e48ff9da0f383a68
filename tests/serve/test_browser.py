"""The web UI in a real browser: headless Chromium (Debian's ``chromium`` package) driven by Playwright against a
server on loopback, as a user meets the page: Enter runs the edit, the seed shown reproduces the image, and a
click on an example shows its image."""

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image
from serve_clients import LiveServer

from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService

CHROMIUM = "/usr/bin/chromium"
# No sandbox (tests may run as root in a container), no GPU, and nothing that reaches the network by itself.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# How long the page may take to show what a test waits for (milliseconds): the demo model edits in well under one.
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(demo_pipeline, tmp_path_factory):
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-browser"))
    try:
        with LiveServer(create_app(EditService(demo_pipeline), ui=True)) as live:
            yield live
    finally:
        if previous is None:
            del os.environ["GRADIO_TEMP_DIR"]
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server):
    """The web UI opened in a fresh browser context; ``page.failed`` lists the responses of 400 and above."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.failed = []
    page.on("response", lambda response: page.failed.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    page.goto(f"{server.url}/ui/")
    page.locator("#instruction textarea").wait_for()
    yield page
    context.close()


def shown_image(page, element_id: str) -> Image.Image:
    """The image the page shows in component ``element_id``, once it has loaded, as the browser received it."""
    image = page.locator(f"#{element_id} img").first
    image.wait_for()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    data = page.evaluate(
        """async image => {
            const bytes = new Uint8Array(await (await fetch(image.src)).arrayBuffer());
            let text = "";
            for (const byte of bytes) text += String.fromCharCode(byte);
            return btoa(text);
        }""",
        image.element_handle(),
    )
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def upload_and_type(page, image_path, instruction: str) -> None:
    page.locator("#source input[type=file]").set_input_files(str(image_path))
    page.locator("#source img").first.wait_for()
    page.locator("#instruction textarea").fill(instruction)


def test_enter_in_the_instruction_runs_the_edit(page, example):
    upload_and_type(page, example, "Make the background blue.")
    page.locator("#instruction textarea").press("Enter")
    page.locator("#details").get_by_text("seed").wait_for()
    assert shown_image(page, "result").size == Image.open(example).size
    assert page.locator("#instruction textarea").input_value() == "Make the background blue."
    assert page.failed == []


def test_the_random_seed_shown_on_the_page_reproduces_the_image(page, example, demo_pipeline):
    upload_and_type(page, example, "Make the background blue.")
    page.get_by_role("button", name="Edit", exact=True).click()
    details = page.locator("#details").get_by_text("seed")
    details.wait_for()
    edited = shown_image(page, "result")
    page.locator("#settings").get_by_text("Settings").click()
    shown_seed = page.locator("#seed input").input_value()
    assert f"seed {shown_seed}," in details.inner_text()  # the field holds the seed used, digit for digit
    again = EditService(demo_pipeline).edit(str(example), "Make the background blue.", seed=int(shown_seed))
    assert np.array_equal(np.asarray(edited), np.asarray(again.images[0].convert("RGB")))
    assert page.failed == []


def test_clicking_an_example_shows_its_image_and_instruction(page):
    page.get_by_text('Change the text "OPEN" to "CLOSED".').click()
    page.locator("#source img").first.wait_for()
    shown = shown_image(page, "source")
    assert shown.size == (256, 256)
    assert page.locator("#instruction textarea").input_value() == 'Change the text "OPEN" to "CLOSED".'
    assert page.failed == []
