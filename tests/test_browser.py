"""A real browser session: headless Debian Chromium, driven by playwright, against the app on the tiny preset and on
the pocket preset (the shipped trained world; tests/test_pocket_world.py checks its pictures).

Screenshots land in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 90_000


# Per preset: the server fixture, a prompt, what the banner says, and a word of the prompt to map.
CASES = {
    "tiny": ("server", "a red cat sitting on a blue chair next to a green lamp", "random weights", "lamp"),
    "pocket": (
        "pocket_server",
        "On a white background, a large red circle sits to the left of a small blue square, all filled.",
        "not Stable Diffusion",
        "circle",
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(preset, its server's address, prompt, banner text, word) of one preset."""
    server_fixture, prompt, banner, word = CASES[request.param]
    return request.param, request.getfixturevalue(server_fixture), prompt, banner, word


@pytest.fixture(scope="module")
def page(case):
    server = case[1]
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for the browser test (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        yield page
        browser.close()


def image_source(page, selector: str) -> str | None:
    return page.evaluate("(s) => document.querySelector(s + ' img')?.src ?? null", selector)


def wait_for_new_image(page, selector: str, old: str | None) -> None:
    page.wait_for_function(
        "([s, old]) => { const img = document.querySelector(s + ' img'); return img && img.src !== old; }",
        arg=[selector, old],
    )


def test_generate_scrub_pick_click_and_download(page, case, tmp_path):
    preset, _, prompt, banner, word = case
    page.wait_for_selector("#prompt textarea")
    assert banner in page.inner_text("#preset-banner")
    page.fill("#prompt textarea", prompt)
    page.press("#prompt textarea", "Enter")  # Enter generates (the button is driven by the API tests)
    for selector in ("#clip-image", "#ella-image", "#query-map", "#word-maps"):
        wait_for_new_image(page, selector, None)
    page.screenshot(path=ARTIFACTS / f"{preset}-01-generated.png", full_page=True)
    assert "Seed used: 0" in page.inner_text("#run-notes")

    # Scrub to the first (noisiest) step: the step views re-render from the cached trace.
    old_query_map = image_source(page, "#query-map")
    page.locator("#step input[type=range]").focus()
    page.keyboard.press("Home")
    wait_for_new_image(page, "#query-map", old_query_map)
    assert page.locator("#step input[type=number]").input_value() == "1"
    page.screenshot(path=ARTIFACTS / f"{preset}-02-scrubbed.png", full_page=True)

    # Pick a word for the maps.
    old_maps = image_source(page, "#word-maps")
    page.click("#word input")
    page.get_by_role("option", name=word, exact=True).click()
    wait_for_new_image(page, "#word-maps", old_maps)

    # Click a pixel of the ELLA image: the words there are ranked.
    page.click("#ella-image img")  # the centre: Gradio maps clicks assuming the image is not upscaled
    page.wait_for_selector("#pixel-probe :text('At pixel')")
    assert "ELLA (attention flow)" in page.inner_text("#pixel-probe")
    page.screenshot(path=ARTIFACTS / f"{preset}-03-probed.png", full_page=True)

    # Download the run as one zip.
    page.click("#download")
    link = page.wait_for_selector("#files a[download], #files a[href*='ella_run']")
    with page.expect_download() as download_info:
        link.click()
    archive = tmp_path / "run.zip"
    download_info.value.save_as(archive)
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"clip.png", "ella.png", "meta.json", "trace.npz", "figures/token_time_paper.png"} <= names


def test_stop_ends_a_long_run_between_steps(page, case):
    page.wait_for_selector("#prompt textarea")
    page.fill("#steps input[type=number]", "150")
    page.press("#steps input[type=number]", "Enter")
    page.fill("#prompt textarea", "three white birds above a dark forest")
    page.click("#generate")
    page.wait_for_selector("#stop")
    page.wait_for_timeout(1500)  # let a few steps run
    page.click("#stop")
    page.wait_for_selector("#run-notes :text('Stopped after step')")
    notes = page.inner_text("#run-notes")
    step = int(notes.split("Stopped after step ")[1].split(" ")[0])
    assert 0 < step < 150
    page.screenshot(path=ARTIFACTS / f"{case[0]}-04-stopped.png", full_page=True)


def test_the_learn_tab_runs_a_lesson_and_opens_a_block_of_its_diagram(page, case):
    """Run the pieces lesson in one click: its page, figures and live shapes appear; a block opens its view."""
    preset = case[0]
    page.get_by_role("tab", name="Learn").click()
    page.wait_for_selector("#lesson")
    page.get_by_label("How the pieces connect").check()
    page.fill("#lesson-prompt textarea", "")
    page.click("#run-lesson")
    page.wait_for_selector(
        "#lesson-page :text('Measured here')" if preset == "pocket" else "#lesson-page :text('noise')"
    )
    page.wait_for_selector("#lesson-figures img")
    page.wait_for_selector("#shapes-unet :text('latents (1, 4,')")  # the block shows this run's shapes
    page.click("#block-connector")
    page.wait_for_selector("#block-text :text('Connector queries at the last step')")
    page.click("#block-clip")
    page.wait_for_selector("#block-text :text('tokens')")
    page.screenshot(path=ARTIFACTS / f"{preset}-05-learn.png", full_page=True)
