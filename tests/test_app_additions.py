"""The app with LoRAs and embeddings given at start-up: what the page lists, and each session's own LoRA weights."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import serve
from gradio_client import Client
from PIL import Image
from safetensors.torch import save_file
from tests_support import unet_lora_file

from ella_demo import generate, load_models
from ella_demo.app.additions_panel import HOW_TO_ADD, describe_additions
from ella_demo.app.handlers import ExplorerUI
from ella_demo.core.devices import Placement
from ella_demo.loading.additions import Additions
from ella_demo.loading.embeddings import EmbeddingSpec
from ella_demo.loading.lora import LoraSpec, load_loras

FAST = {"steps": 2, "width": 64, "height": 64, "seed": 5}


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    """Tiny models with one switchable LoRA, "style", at start-up weight 0.8."""
    folder = tmp_path_factory.mktemp("loras")
    models = load_models("tiny", device="cpu")
    load_loras(models, [LoraSpec(unet_lora_file(models, folder / "style.safetensors", seed=9), 0.8)])
    return models


def pixels(models, weight: float) -> dict[str, np.ndarray]:
    result = generate(models, "a red cat", num_inference_steps=2, seed=5, loras={"style": weight})
    return {"clip": result.clip_pixels, "ella": result.ella_pixels}


def test_two_browser_sessions_with_and_without_the_lora_each_get_their_own_images(styled):
    ui = ExplorerUI(styled)
    expected = {weight: pixels(styled, weight) for weight in (0.0, 1.0)}
    outputs = {}

    def session(weight: float) -> None:
        request = SimpleNamespace(session_hash=f"session-{weight}")  # what Gradio passes: one per browser tab
        views = ui.run_generate("a red cat", **FAST, lora_weights={"style": weight}, request=request)["session"]
        outputs[weight] = {"clip": views.result.clip_pixels, "ella": views.result.ella_pixels}

    threads = [threading.Thread(target=session, args=(weight,)) for weight in (0.0, 1.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for weight in (0.0, 1.0):
        for side in ("clip", "ella"):
            np.testing.assert_array_equal(outputs[weight][side], expected[weight][side])
    assert not np.array_equal(outputs[0.0]["ella"], outputs[1.0]["ella"])
    notes = ui.run_generate("a red cat", **FAST, lora_weights={"style": 0.0})["notes"]
    assert "LoRAs in this run: none (every weight 0)." in notes
    default = ui.run_generate("a red cat", **FAST)["session"].result  # no weights sent: the start-up weight
    assert default.settings.loras == (("style", 0.8),)
    np.testing.assert_array_equal(default.ella_pixels, pixels(styled, 0.8)["ella"])


def test_the_api_takes_each_requests_lora_weights(styled):
    server = serve(styled)
    try:
        client = Client(next(server), verbose=False)
        off = client.predict(prompt="a red cat", lora_weights={"style": 0.0}, api_name="/generate", **FAST)
        on = client.predict(prompt="a red cat", lora_weights={"style": 1.0}, api_name="/generate", **FAST)
    finally:
        server.close()
    # the first image of each side, as the page shows it: 64 px pictures enlarged 4 times
    shown = {weight: np.asarray(Image.open(images[1])) for weight, images in ((0.0, off), (1.0, on))}
    for weight, image in shown.items():
        expected = (pixels(styled, weight)["ella"][0] * 255).round().astype(np.uint8).repeat(4, 0).repeat(4, 1)
        np.testing.assert_array_equal(image, expected)


def test_the_panel_lists_the_start_up_loras_and_embeddings_by_file_name(tmp_path):
    path = unet_lora_file(load_models("tiny", device="cpu"), tmp_path / "ink wash.safetensors", seed=1)
    save_file({"emb_params": torch.zeros(2, 32)}, tmp_path / "glow.safetensors")
    additions = Additions(
        (LoraSpec(path, 0.6),), fuse_loras=True, embeddings=(EmbeddingSpec(tmp_path / "glow.safetensors"),)
    )
    text = describe_additions(load_models("tiny", device="cpu", additions=additions))
    assert "`ink_wash`: ink wash.safetensors (UNet; fused at start-up at weight 0.6, on in every run)" in text
    assert "`glow` (glow.safetensors, 2 vectors)" in text
    assert str(tmp_path) not in text  # never a server folder
    assert "**T5:** cpu (fp32, T5 in fp32)." in text


def test_without_additions_the_panel_says_how_to_add_them(tiny):
    assert HOW_TO_ADD in describe_additions(tiny)


def test_the_panel_shows_the_caveat_of_t5_on_the_cpu(tiny, monkeypatch):
    monkeypatch.setattr(
        tiny, "placement", Placement(torch.device("cuda"), torch.float16, torch.float32, torch.device("cpu"))
    )
    assert "⚠️ T5 runs on the CPU in fp32" in describe_additions(tiny)
