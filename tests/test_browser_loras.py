"""The LoRA panel in a real browser (Debian's chromium): its slider's weight reaches the run it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import serve
from playwright.sync_api import sync_playwright
from test_browser import CHROMIUM, FLAGS, TIMEOUT_MS
from tests_support import unet_lora_file

from ella_demo import load_models
from ella_demo.loading.lora import LoraSpec, load_loras


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    """The app on tiny models with one LoRA, "ink_wash", at start-up weight 0.7."""
    models = load_models("tiny", device="cpu")
    path = unet_lora_file(models, tmp_path_factory.mktemp("loras") / "ink-wash.safetensors", seed=2)
    load_loras(models, [LoraSpec(path, 0.7)])
    yield from serve(models)


def test_the_lora_slider_sets_the_weight_of_this_sessions_run(lora_server):
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for the browser test (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(lora_server)
        panel = page.locator("#additions-list")
        panel.wait_for()
        assert "ink-wash.safetensors (UNet; weight chosen per run)" in panel.inner_text()
        weight = page.locator("#lora-ink_wash input[type=number]")
        notes = page.locator("#run-notes")
        for typed, expected in (("1.3", "`ink_wash` at 1.3"), ("0", "none (every weight 0)")):
            weight.fill(typed)
            weight.press("Enter")
            page.locator("#prompt textarea").fill(f"a red cat, weight {typed}")
            page.locator("#generate").click()
            page.wait_for_function("(t) => document.querySelector('#run-notes').innerText.includes(t)",
                                   arg=f"LoRAs in this run: {expected.replace('`', '')}")  # fmt: skip
        assert "LoRAs in this run: none (every weight 0)." in notes.inner_text()
        browser.close()
